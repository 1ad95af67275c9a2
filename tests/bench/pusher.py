"""Pushing the generated images: a skopeo ``dir:`` layout made of hard links to the upstream's blob
files, skopeo itself, and the harness's own pusher that sends each blob in fixed-size PATCH chunks.

What skopeo 1.9 sends for a blob (containers/image's docker destination): ``HEAD`` of the blob,
``POST /blobs/uploads/``, then ONE ``PATCH`` streaming the whole blob (``Content-Length`` set when the
size is known, as it is from a ``dir:`` layout), then ``PUT ?digest=`` with an empty body. It has no
way to send a blob in several PATCHes, so chunked uploads come from ``http_push`` below.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import aiohttp

from .imagegen import Image, Store
from .measure import run

DIR_VERSION = "Directory Transport Version: 1.1\n"


def skopeo_dir(store: Store, image: Image, dest: Path) -> Path:
    """A skopeo ``dir:`` layout of ``image`` (manifest.json, version, one file per blob named by its
    hex digest), every blob a link to the store's file: no copy of the 512 MiB layer."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copyfile(store.blob_path(image.digest), dest / "manifest.json")
    for blob in [image.config, *image.layers]:
        src, link = store.blob_path(blob.digest), dest / blob.digest.split(":", 1)[1]
        try:
            os.link(src, link)
        except OSError:      # another file system (/dev/shm): a symbolic link, which skopeo follows
            link.symlink_to(src)
    (dest / "version").write_text(DIR_VERSION)
    return dest


async def skopeo_push(src: Path, ref: str, creds: str | None, timeout: float) -> tuple[bool, float, str]:
    """``skopeo copy dir:src docker://ref`` (plain HTTP, digests kept: no recompression); (ok, seconds, error)."""
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "--retry-times", "0",
            "--preserve-digests"]
    argv += ["--dest-creds", creds] if creds else ["--dest-no-creds"]
    code, out, secs = await run(argv + [f"dir:{src}", f"docker://{ref}"], timeout)
    if code is None:
        return False, secs, f"no answer in {timeout:.0f} s"
    if code != 0:
        return False, secs, (out.strip().splitlines() or [f"exit {code}"])[-1][-300:]
    return True, secs, ""


class PushError(RuntimeError):
    pass


def _absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


async def _expect(resp: aiohttp.ClientResponse, status: int, what: str) -> None:
    if resp.status != status:
        raise PushError(f"{what}: {resp.status} {(await resp.text())[:200]}")


async def _file_pieces(path: Path, size: int):
    with open(path, "rb") as f:
        while piece := await asyncio.to_thread(f.read, size):
            yield piece


async def _push_blob(session: aiohttp.ClientSession, base: str, repo: str, path: Path, digest: str,
                     chunk: int | None) -> None:
    """POST, then the bytes, then ``PUT ?digest=`` with an empty body. With ``chunk``: PATCHes of
    ``chunk`` bytes with ``Content-Range`` (the OCI distribution spec's chunked upload); without:
    one PATCH streaming the file with ``Transfer-Encoding: chunked`` (what docker push sends)."""
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        await _expect(resp, 202, "upload start")
        location = _absolute(base, resp.headers["Location"])
    if chunk is None:
        async with session.patch(location, data=_file_pieces(path, 1 * 2**20),
                                 headers={"Content-Type": "application/octet-stream"}) as resp:
            await _expect(resp, 202, "streamed PATCH")
            location = _absolute(base, resp.headers["Location"])
    else:
        offset = 0
        async for data in _file_pieces(path, chunk):
            end = offset + len(data) - 1
            async with session.patch(location, data=data, headers={
                    "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{end}"}) as resp:
                await _expect(resp, 202, f"PATCH {offset}-{end}")
                location = _absolute(base, resp.headers["Location"])
            offset = end + 1
    sep = "&" if "?" in location else "?"
    async with session.put(f"{location}{sep}digest={digest}", headers={"Content-Length": "0"}) as resp:
        await _expect(resp, 201, "upload close")


async def http_push(base: str, repo: str, tag: str, store: Store, image: Image, auth: str | None,
                    chunk: int | None, timeout: float) -> tuple[bool, float, str]:
    """Push ``image`` as ``repo:tag``, one blob at a time (``_push_blob``: ``chunk`` bytes per PATCH,
    or one streamed PATCH), then the manifest; (ok, seconds, error)."""
    headers = {"Authorization": auth} if auth else {}
    t0 = time.monotonic()
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            for blob in [image.config, *image.layers]:
                async with s.head(f"{base}/v2/{repo}/blobs/{blob.digest}") as resp:
                    if resp.status == 200:
                        continue
                await _push_blob(s, base, repo, store.blob_path(blob.digest), blob.digest, chunk)
            body = store.blob_path(image.digest).read_bytes()
            async with s.put(f"{base}/v2/{repo}/manifests/{tag}", data=body,
                             headers={"Content-Type": image.media_type}) as resp:
                await _expect(resp, 201, "manifest PUT")
    except (PushError, aiohttp.ClientError, asyncio.TimeoutError, OSError, KeyError) as exc:
        return False, time.monotonic() - t0, f"{type(exc).__name__}: {exc}"[:300]
    return True, time.monotonic() - t0, ""
