"""The servers of a run: the upstream (docker-registry behind a logging nginx front), a relay that can
go down or hang, and the targets compared: Wharf, distribution's proxy, an nginx cache configured like
the popular nginx registry caches, and nginx serving the upstream's blob files with sendfile.

Every process is started in its own session and stopped by its own process-group id.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from .profile import HOST, PORTS, PROJECT, WHARF_UPSTREAM_NAME

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


class Proc:
    """One started command, in its own process group, output to a log file."""

    def __init__(self, argv: list[str], log: Path, cwd: Path | None = None, env: dict | None = None):
        self.argv, self.log = argv, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(log, "ab")
        self.popen = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, cwd=cwd,
                                      env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        else:
            # workers may outlive a dead parent: clean the group anyway
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._out.close()

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


async def wait_port_free(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_free(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} still in use; stop whatever listens on {HOST}:{port}")
        await asyncio.sleep(0.1)


async def wait_http(url: str, proc: Proc | None, timeout: float = 20.0, accept_any: bool = True) -> None:
    """Wait until ``url`` answers HTTP at all (any status below 500 when accept_any)."""
    deadline = time.monotonic() + timeout
    last = ""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.argv[0]} exited with {proc.popen.returncode}:\n{proc.tail()}")
            try:
                async with session.get(url) as r:
                    if r.status < 500 or accept_any:
                        return
                    last = f"status {r.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s ({last})" + (f":\n{proc.tail()}" if proc else ""))


def nginx_main(prefix: Path, http_body: str, workers: str = "auto") -> str:
    return f"""
worker_processes {workers};
user root;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  default_type application/octet-stream;
  client_body_temp_path {prefix}/client_temp;
  proxy_temp_path {prefix}/proxy_temp;
  fastcgi_temp_path {prefix}/fastcgi_temp;
  uwsgi_temp_path {prefix}/uwsgi_temp;
  scgi_temp_path {prefix}/scgi_temp;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
{http_body}
}}
"""


def start_nginx(prefix: Path, conf: str) -> Proc:
    if prefix.exists():
        shutil.rmtree(prefix)
    prefix.mkdir(parents=True)
    (prefix / "nginx.conf").write_text(conf)
    return Proc([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], prefix / "stdout.log")


# --------------------------------------------------------------------------- the upstream

FRONT_LOG_FORMAT = "$msec\\t$server_port\\t$request_method\\t$request_uri\\t$status\\t$bytes_sent\\t$request_time\\t$http_accept"


@dataclass
class UpstreamRequest:
    port: int
    method: str
    uri: str
    status: int
    bytes_sent: int


class Upstream:
    """Debian's docker-registry, and an nginx front that logs every request with the bytes it sent.

    The front listens twice: plain, and with ``limit_rate`` (a per-connection limit: one 512 MiB
    fill at 40 MB/s takes ~13 s; a cache that opens N upstream connections gets N × 40 MB/s).
    """

    def __init__(self, work: Path, store: Path, throttle_bps: int):
        self.work, self.store, self.throttle_bps = work, store, throttle_bps
        self.access_log = work / "front" / "access.log"
        self.registry: Proc | None = None
        self.front: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{PORTS.front}"

    @property
    def throttled_url(self) -> str:
        return f"http://{HOST}:{PORTS.front_throttled}"

    async def start(self) -> None:
        for port in (PORTS.registry, PORTS.front, PORTS.front_throttled, PORTS.front_status):
            await wait_port_free(port)
        cfg = self.work / "registry.yml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(f"""version: 0.1
log: {{level: warn, accesslog: {{disabled: true}}}}
storage:
  filesystem: {{rootdirectory: {self.store}}}
  cache: {{blobdescriptor: inmemory}}
  maintenance: {{uploadpurging: {{enabled: false}}, readonly: {{enabled: true}}}}
http: {{addr: "{HOST}:{PORTS.registry}"}}
""")
        self.registry = Proc([REGISTRY, "serve", str(cfg)], self.work / "registry.log")
        proxy = f"""
    location / {{
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 600s;
    }}"""
        body = f"""
  log_format front "{FRONT_LOG_FORMAT}";
  access_log {self.access_log} front;
  upstream registry {{ server {HOST}:{PORTS.registry}; keepalive 64; }}
  server {{ listen {HOST}:{PORTS.front}; {proxy} }}
  server {{
    listen {HOST}:{PORTS.front_throttled};
    # limit_rate is not applied to unbuffered proxying: buffer in memory only, never to disk
    limit_rate {self.throttle_bps};
    {proxy.replace("proxy_buffering off;", "proxy_buffering on; proxy_max_temp_file_size 0;")}
  }}
  server {{ listen {HOST}:{PORTS.front_status}; access_log off; location / {{ stub_status; }} }}
"""
        self.front = start_nginx(self.work / "front", nginx_main(self.work / "front", body))
        await wait_http(f"http://{HOST}:{PORTS.registry}/v2/", self.registry)
        await wait_http(f"{self.url}/v2/", self.front)

    def stop(self) -> None:
        for p in (self.front, self.registry):
            if p:
                p.stop()

    def mark(self) -> int:
        try:
            return self.access_log.stat().st_size
        except FileNotFoundError:
            return 0

    async def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until the front is serving no request (fills finish in the background after clients)."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                async with session.get(f"http://{HOST}:{PORTS.front_status}/") as r:
                    text = await r.text()
                # "Reading: 0 Writing: 1 Waiting: 3" - Writing counts this status request itself
                writing = int(text.split("Writing:")[1].split()[0])
                if writing <= 1:
                    await asyncio.sleep(0.15)   # the access log line is written at the end of the request
                    return
                await asyncio.sleep(0.1)

    def requests_since(self, mark: int) -> list[UpstreamRequest]:
        out = []
        with open(self.access_log, "rb") as f:
            f.seek(mark)
            for line in f.read().decode(errors="replace").splitlines():
                parts = line.split("\t")
                if len(parts) < 6:
                    continue
                out.append(UpstreamRequest(int(parts[1]), parts[2], parts[3], int(parts[4]), int(parts[5])))
        return out


def summarize(requests: list[UpstreamRequest]) -> dict:
    by_method: dict[str, int] = {}
    for r in requests:
        by_method[r.method] = by_method.get(r.method, 0) + 1
    return {"requests": len(requests), "by_method": by_method, "bytes_sent": sum(r.bytes_sent for r in requests)}


# --------------------------------------------------------------------------- relay (test 7)

class Relay:
    """A TCP relay to the upstream front that can be switched to down (refuses) or hung (accepts, never answers)."""

    def __init__(self, port: int, target_port: int):
        self.port, self.target_port = port, target_port
        self.mode = "forward"
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def set_mode(self, mode: str) -> None:
        assert mode in ("forward", "down", "hung")
        await self._close()
        self.mode = mode
        if mode != "down":
            self._server = await asyncio.start_server(self._handle, HOST, self.port, reuse_address=True)

    async def _close(self) -> None:
        if self._server:
            self._server.close()
            self._server = None
        for w in list(self._conns):
            w.transport.abort()
        self._conns.clear()

    async def stop(self) -> None:
        await self._close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        if self.mode == "hung":
            return   # keep the connection open, never read, never answer
        try:
            ureader, uwriter = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._conns.add(uwriter)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(256 * 1024):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    w.write_eof()
                except (OSError, RuntimeError):
                    pass

        await asyncio.gather(pipe(reader, uwriter), pipe(ureader, writer))
        for w in (writer, uwriter):
            w.close()
            self._conns.discard(w)


# --------------------------------------------------------------------------- targets

class Target:
    """A server under test. ``prefix`` is what comes between /v2/ and the upstream repo name."""

    name = "?"
    port = 0
    prefix = ""
    is_cache = True

    def __init__(self, work: Path):
        self.work = work / self.name
        self.proc: Proc | None = None
        self.error: str | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def repo(self, repo: str) -> str:
        return self.prefix + repo

    def ref(self, repo: str, tag: str) -> str:
        return f"{HOST}:{self.port}/{self.repo(repo)}:{tag}"

    def url(self, repo: str, kind: str, ref: str) -> str:
        return f"{self.base}/v2/{self.repo(repo)}/{kind}/{ref}"

    async def start(self, upstream_url: str, tag_ttl: float = 60, fresh: bool = True) -> None:
        self.stop()
        await wait_port_free(self.port)
        if fresh and self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.proc = self._spawn(upstream_url, tag_ttl)
        await self._ready()

    async def _ready(self) -> None:
        await wait_http(f"{self.base}/v2/", self.proc, timeout=30)

    def _spawn(self, upstream_url: str, tag_ttl: float) -> Proc:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.alive() else None


class Wharf(Target):
    """``wharf serve``; one target per ``workers:`` setting compared (wharf, wharf-2w, ...)."""

    prefix = WHARF_UPSTREAM_NAME + "/"

    def __init__(self, work: Path, workers: int = 1, index: int = 0):
        self.workers = workers
        self.name = "wharf" if workers == 1 else f"wharf-{workers}w"
        self.port = PORTS.wharf + index
        super().__init__(work)

    def _spawn(self, upstream_url: str, tag_ttl: float) -> Proc:
        cfg = self.work / "wharf.yaml"
        cfg.write_text(f"""listen: "{HOST}:{self.port}"
workers: {self.workers}
storage: {{root: {self.work / 'data'}, max_cache_bytes: 50GiB}}
default_upstream: null
upstreams:
  - {{name: "{WHARF_UPSTREAM_NAME}", url: "{upstream_url}", tag_ttl: {tag_ttl}}}
""")
        return Proc(wharf_argv("serve", "--config", str(cfg)), self.work / "wharf.log", cwd=PROJECT)


def wharf_argv(*args: str) -> list[str]:
    """The ``wharf`` command of this checkout (run from ``PROJECT``)."""
    exe = PROJECT / ".venv" / "bin" / "wharf"
    return ([str(exe)] if exe.exists() else [sys.executable, "-m", "proxy"]) + list(args)


def _merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def wharf_config(root: Path, upstream_url: str, tag_ttl: float, **extra) -> dict:
    """The harness's usual Wharf settings (one worker, the one upstream) with ``extra`` merged in."""
    base = {"workers": 1, "storage": {"root": str(root), "max_cache_bytes": 50 * 2**30}, "default_upstream": None,
            "upstreams": [{"name": WHARF_UPSTREAM_NAME, "url": upstream_url, "tag_ttl": tag_ttl}]}
    return _merged(base, extra)


class ConfiguredWharf(Wharf):
    """``wharf serve`` with more settings than the usual target (``storage.backend: s3``, Redis, ...)."""

    def __init__(self, work: Path, name: str, port: int, settings: dict | None = None):
        self.name, self.port, self.workers = name, port, 1
        self.settings = settings or {}
        Target.__init__(self, work)

    def _spawn(self, upstream_url: str, tag_ttl: float) -> Proc:
        cfg = self.work / "wharf.yaml"
        config = wharf_config(self.work / "data", upstream_url, tag_ttl, listen=f"{HOST}:{self.port}",
                              **self.settings)
        cfg.write_text(yaml.safe_dump(config))
        return Proc(wharf_argv("serve", "--config", str(cfg)), self.work / "wharf.log", cwd=PROJECT)


class Redis:
    """``redis-server`` on 127.0.0.1 without persistence, for the replicas to share (test 13)."""

    def __init__(self, work: Path, port: int = PORTS.redis):
        self.work, self.port = work / "redis", port
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _command(self, command: bytes) -> bytes:
        with socket.create_connection((HOST, self.port), timeout=2) as s:
            s.sendall(command + b"\r\n")
            return s.recv(256)

    async def start(self) -> None:
        await wait_port_free(self.port)
        self.work.mkdir(parents=True, exist_ok=True)
        self.proc = Proc([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port),
                          "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(self.work),
                          "--daemonize", "no"], self.work / "redis.log")
        deadline = time.monotonic() + 10
        while True:
            try:
                if self._command(b"PING").startswith(b"+PONG"):
                    return
            except OSError:
                pass
            if not self.proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.proc.tail()}")
            await asyncio.sleep(0.05)

    def flush(self) -> None:
        """Forget every tag, lock and cached answer: the next replicas start as a cold cluster."""
        if not self._command(b"FLUSHALL").startswith(b"+OK"):
            raise RuntimeError("redis FLUSHALL failed")

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


class Moto:
    """moto's S3 server (``moto_server``, in memory) on 127.0.0.1 (test 14)."""

    def __init__(self, work: Path, port: int = PORTS.moto):
        self.work, self.port = work / "moto", port
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> None:
        await wait_port_free(self.port)
        beside = Path(sys.executable).parent / "moto_server"
        exe = str(beside) if beside.exists() else (shutil.which("moto_server") or "moto_server")
        self.proc = Proc([exe, "-H", HOST, "-p", str(self.port)], self.work / "moto.log")
        await wait_http(f"{self.url}/", self.proc, timeout=30)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


class WharfReplicas(Target):
    """``count`` ``wharf serve`` processes of ONE config (one shared ``storage.root``, one Redis,
    SQLite in the shared root: one host), each told its port by ``WHARF_LISTEN``, started one after
    the other (the first creates the schema), behind nginx: round-robin, unbuffered, the next
    replica when one refuses the connection (docs/replicas.md; tests/support/replicas.py)."""

    prefix = WHARF_UPSTREAM_NAME + "/"

    def __init__(self, work: Path, redis: Redis, count: int = 3):
        self.name = f"wharf-x{count}-nginx"
        self.port = PORTS.balancer
        self.redis, self.count = redis, count
        self.replicas: list[Proc] = []
        super().__init__(work)

    @property
    def root(self) -> Path:
        return self.work / "shared-volume"

    def backend(self, index: int) -> str:
        return f"http://{HOST}:{PORTS.replicas + index}"

    async def start(self, upstream_url: str, tag_ttl: float = 60, fresh: bool = True) -> None:
        self.stop()
        for port in [self.port] + [PORTS.replicas + i for i in range(self.count)]:
            await wait_port_free(port)
        if fresh and self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.redis.flush()
        cfg = self.work / "wharf.yaml"
        cfg.write_text(yaml.safe_dump(wharf_config(self.root, upstream_url, tag_ttl, listen=f"{HOST}:0",
                                                   redis={"url": self.redis.url})))
        for i in range(self.count):
            env = {**os.environ, "WHARF_LISTEN": f"{HOST}:{PORTS.replicas + i}"}
            proc = Proc(wharf_argv("serve", "--config", str(cfg)), self.work / f"replica{i}.log", cwd=PROJECT,
                        env=env)
            self.replicas.append(proc)
            await wait_http(f"{self.backend(i)}/healthz", proc, timeout=30, accept_any=False)
        prefix = self.work / "nginx"
        servers = "\n".join(f"    server {HOST}:{PORTS.replicas + i} max_fails=1 fail_timeout=2s;"
                            for i in range(self.count))
        body = f"""
  access_log off;
  upstream wharf {{
{servers}
    keepalive 64;
  }}
  server {{
    listen {HOST}:{self.port};
    location / {{
      proxy_pass http://wharf;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_request_buffering off;
      client_max_body_size 0;
      proxy_connect_timeout 2s;
      proxy_read_timeout 600s;
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 3;
    }}
  }}
"""
        self.proc = start_nginx(prefix, nginx_main(prefix, body))
        await self._ready()

    def stop(self) -> None:
        super().stop()
        for proc in self.replicas:
            proc.stop()
        self.replicas = []

    @property
    def pid(self) -> int | None:
        return self.replicas[0].pid if self.replicas and self.replicas[0].alive() else None


class Distribution(Target):
    name = "distribution"
    port = PORTS.distribution
    proxied = True       # `proxy: remoteurl:` (pull-through; pushes refused)

    def _spawn(self, upstream_url: str, tag_ttl: float) -> Proc:
        cfg = self.work / "config.yml"
        proxy = f'proxy: {{remoteurl: "{upstream_url}"}}\n' if self.proxied else ""
        cfg.write_text(f"""version: 0.1
log: {{level: warn, accesslog: {{disabled: true}}}}
storage:
  filesystem: {{rootdirectory: {self.work / 'data'}}}
  cache: {{blobdescriptor: inmemory}}
  delete: {{enabled: true}}
http: {{addr: "{HOST}:{self.port}"}}
{proxy}""")
        return Proc([REGISTRY, "serve", str(cfg)], self.work / "registry.log")


class DistributionRegistry(Distribution):
    """distribution as a plain registry (no ``proxy:``): the reference for pushes (test 9)."""

    name = "distribution-registry"
    port = PORTS.distribution_registry
    proxied = False


class NginxCache(Target):
    """nginx as the popular nginx registry caches configure it (rpardini/docker-registry-proxy style)."""

    name = "nginx-cache"
    port = PORTS.nginx_cache
    lock_age = None   # nginx default (5 s): another request goes upstream when a fill is older

    def _spawn(self, upstream_url: str, tag_ttl: float) -> Proc:
        prefix = self.work / "nginx"
        up = upstream_url.removeprefix("http://")
        lock_age = f"proxy_cache_lock_age {self.lock_age};" if self.lock_age else ""
        ttl = f"{max(1, int(tag_ttl))}s"
        body = f"""
  access_log {prefix}/access.log;
  sendfile on;
  tcp_nopush on;
  proxy_cache_path {prefix}/cache levels=1:2 keys_zone=cache:32m max_size=64g inactive=60d use_temp_path=off;
  upstream registry {{ server {up}; keepalive 32; }}
  server {{
    listen {HOST}:{self.port};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_read_timeout 900s;
    proxy_max_temp_file_size 0;
    proxy_cache cache;
    proxy_cache_methods GET HEAD;
    proxy_cache_convert_head off;
    proxy_cache_lock on;
    proxy_cache_lock_timeout 880s;
    {lock_age}
    proxy_cache_revalidate on;
    proxy_cache_use_stale error timeout invalid_header http_500 http_502 http_503 http_504 http_429;
    proxy_ignore_headers X-Accel-Expires Expires Cache-Control Set-Cookie;
    proxy_ignore_client_abort on;
    proxy_force_ranges on;
    location = /v2/ {{ proxy_cache off; proxy_pass http://registry; }}
    location ~ ^/v2/.*/blobs/sha256: {{
      proxy_cache_key $request_method$uri;
      proxy_cache_valid 200 206 60d;
      proxy_pass http://registry;
    }}
    location ~ ^/v2/.*/manifests/sha256: {{
      proxy_cache_key $request_method$uri$http_accept;
      proxy_cache_valid 200 60d;
      proxy_pass http://registry;
    }}
    location ~ ^/v2/.*/manifests/ {{
      proxy_cache_key $request_method$uri$http_accept;
      proxy_cache_valid 200 {ttl};
      proxy_pass http://registry;
    }}
    location / {{ proxy_cache off; proxy_pass http://registry; }}
  }}
"""
        return start_nginx(prefix, nginx_main(prefix, body))


class NginxCacheTuned(NginxCache):
    name = "nginx-cache-tuned"
    port = PORTS.nginx_cache_tuned
    lock_age = "880s"


class NginxSendfile(Target):
    """nginx serving the upstream's blob files straight from its store: the sendfile limit."""

    name = "nginx-sendfile"
    port = PORTS.nginx_sendfile
    is_cache = False

    def __init__(self, work: Path, store: Path):
        super().__init__(work)
        self.store = store

    def _spawn(self, upstream_url: str, tag_ttl: float) -> Proc:
        prefix = self.work / "nginx"
        blobs = self.store / "docker" / "registry" / "v2" / "blobs" / "sha256"
        body = f"""
  access_log {prefix}/access.log;
  sendfile on;
  tcp_nopush on;
  server {{
    listen {HOST}:{self.port};
    location = /v2/ {{ return 200 "{{}}"; }}
    location ~ "^/v2/.+/blobs/sha256:(([0-9a-f]{{2}})[0-9a-f]{{62}})$" {{
      alias {blobs}/$2/$1/data;
    }}
  }}
"""
        return start_nginx(prefix, nginx_main(prefix, body))


class BareAiohttp(Target):
    """Not a cache: bare aiohttp serving the big image's manifest from memory (tests 4 and 5 only)."""

    name = "aiohttp-bare"
    port = PORTS.aiohttp_bare
    is_cache = False

    def __init__(self, work: Path, manifest_file: Path, media_type: str, tag: str):
        super().__init__(work)
        self.manifest_file, self.media_type, self.tag = manifest_file, media_type, tag

    def _spawn(self, upstream_url: str, tag_ttl: float) -> Proc:
        script = Path(__file__).with_name("bare_aiohttp.py")
        return Proc([sys.executable, str(script), str(self.port), str(self.manifest_file), self.media_type,
                     self.tag], self.work / "stdout.log")


class Direct(Target):
    """Pulling straight from the upstream (through its logging front): the baseline for test 2."""

    name = "upstream"
    port = PORTS.front
    is_cache = False

    async def start(self, upstream_url: str, tag_ttl: float = 60, fresh: bool = True) -> None:
        pass

    def stop(self) -> None:
        pass
