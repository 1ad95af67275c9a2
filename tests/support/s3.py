"""moto's S3 server (``moto_server``) as a child process, and a bucket per test.

Blob bytes are checked through botocore's own client, as an operator would with ``aws s3``.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from support.servers import START_TIMEOUT, ServerProcess, _spawn, _start, _wait_ready

KEY_ID, SECRET = "wharf-test-key", "wharf-test-secret"  # moto accepts any pair


def _moto_server() -> str:
    beside = Path(sys.executable).parent / "moto_server"
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]'")
    return found


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def start_moto(workdir: Path) -> ServerProcess:
    """``moto_server -H 127.0.0.1 -p PORT``: an S3 endpoint at ``server.url``."""
    return _start("moto_server", workdir,
                  lambda port: ([_moto_server(), "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}"),
                  _answers)


def restart_moto(server: ServerProcess) -> ServerProcess:
    """Start a stopped moto again at the same address: an empty server (moto keeps buckets in
    memory; ``Bucket.create`` makes one again)."""
    server.stop()
    again = ServerProcess(name=server.name, port=server.port, url=server.url, workdir=server.workdir,
                          process=_spawn([_moto_server(), "-H", "127.0.0.1", "-p", str(server.port)],
                                         server.workdir))
    _wait_ready(again, lambda: _answers(server.port), START_TIMEOUT)
    return again


@dataclass
class Bucket:
    """A fresh bucket on the moto server, and what Wharf's ``storage.s3`` needs to use it."""

    endpoint_url: str
    name: str
    key_files: tuple[Path, Path]
    client: Any  # a botocore S3 client

    def s3_config(self, **extra) -> dict:
        return {"bucket": self.name, "prefix": "wharf/", "endpoint_url": self.endpoint_url,
                "access_key_id_file": str(self.key_files[0]), "secret_access_key_file": str(self.key_files[1]),
                **extra}

    def create(self) -> None:
        """Make the bucket (again, on a restarted moto)."""
        self.client.create_bucket(Bucket=self.name)

    def key(self, digest: str) -> str:
        algorithm, _, hex_part = digest.partition(":")
        return f"wharf/blobs/{algorithm}/{hex_part}"

    def head(self, digest: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.name, Key=self.key(digest))
        except ClientError:
            return None

    def checksum(self, digest: str) -> str | None:
        """The object's whole-object SHA-256 checksum as the server reports it (None: it has none)."""
        try:
            return self.client.head_object(Bucket=self.name, Key=self.key(digest),
                                           ChecksumMode="ENABLED").get("ChecksumSHA256")
        except ClientError:
            return None

    def plant(self, digest: str, data: bytes, checksum: bool = True, **extra) -> None:
        """Write an object under a blob's key as another writer to the bucket would (``checksum``: with
        the server's SHA-256 of ``data``, which is honest about ``data``, not about the digest)."""
        if checksum:
            extra["ChecksumAlgorithm"] = "SHA256"
        self.client.put_object(Bucket=self.name, Key=self.key(digest), Body=data, **extra)

    def read(self, digest: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=self.key(digest))["Body"].read()

    async def wait_for(self, digest: str, timeout: float = 15) -> dict:
        """The object once Wharf's background write-through put it there (the loop keeps running)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = await asyncio.to_thread(self.head, digest)
            if found is not None:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"{digest} never reached the bucket")

    async def wait_gone(self, digest: str, timeout: float = 15) -> None:
        """Return once the object is no longer in the bucket (deleted through in the background)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self.head, digest) is None:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{digest} is still in the bucket")

    def uploads_in_progress(self) -> list:
        return self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])


def new_bucket(endpoint_url: str, workdir: Path) -> Bucket:
    key_id, secret = workdir / "s3-key-id", workdir / "s3-secret"
    key_id.write_text(KEY_ID + "\n")
    secret.write_text(SECRET + "\n")
    client = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=endpoint_url, aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET, config=BotoConfig(s3={"addressing_style": "path"}))
    bucket = Bucket(endpoint_url, f"wharf-{uuid.uuid4().hex[:12]}", (key_id, secret), client)
    bucket.create()
    return bucket


class FakeS3:
    """An S3 endpoint for faults moto will not produce: HEAD answers that every object exists with
    ``size`` bytes (or hangs, ``hang_head``), GET fails with 503 (a bucket that answers lookups but
    not reads), PUT takes ``put_seconds``; it records every request and the most PUTs it had in
    flight at once."""

    def __init__(self, size: int = 0, hang_head: bool = False, put_seconds: float = 0.0) -> None:
        self.size, self.hang_head, self.put_seconds = size, hang_head, put_seconds
        self.requests: list[tuple[str, str]] = []
        self.puts_in_flight = self.most_puts_in_flight = 0
        self.url = ""
        self._released = asyncio.Event()  # set at stop: hung requests end

    async def start(self) -> "FakeS3":
        from aiohttp import web

        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests.append((request.method, request.path))
            if request.method == "HEAD":
                if self.hang_head:
                    await self._released.wait()
                if not self.size:
                    return web.Response(status=404)
                return web.Response(headers={"Content-Length": str(self.size), "ETag": '"x"'})
            if request.method == "PUT":
                self.puts_in_flight += 1
                self.most_puts_in_flight = max(self.most_puts_in_flight, self.puts_in_flight)
                try:
                    await request.read()
                    await asyncio.sleep(self.put_seconds)
                finally:
                    self.puts_in_flight -= 1
                return web.Response(headers={"ETag": '"x"'})
            return web.Response(status=503, text="<Error><Code>ServiceUnavailable</Code></Error>")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._runner = runner
        return self

    async def stop(self) -> None:
        self._released.set()
        await self._runner.cleanup()

    def count(self, method: str) -> int:
        return sum(1 for seen, _ in self.requests if seen == method)
