"""The measuring instruments: wrk (GET load), ApacheBench (HEAD load: wrk waits for a body that
never comes), skopeo (real pulls), an aiohttp crowd of clients, and an RSS sampler."""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

from .profile import BENCH_DIR, SHM

WRK_LUA = BENCH_DIR / "wrk_report.lua"


async def run(argv: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str, float]:
    """Run a command with a hard time bound; returns (exit code or None on timeout, output, seconds)."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT,
                                                env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        return proc.returncode, out.decode(errors="replace"), time.monotonic() - t0
    except asyncio.TimeoutError:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        await proc.wait()
        return None, "", time.monotonic() - t0


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    bytes_per_s: float = 0.0
    non_2xx: int = 0      # answers with a status of 400 and up (wrk's "status" errors; part of errors)


async def wrk(url: str, seconds: int, connections: int, threads: int, accept: str | None = None,
              headers: dict[str, str] | None = None) -> Load:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK_LUA)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    code, out, _ = await run(argv, seconds + 30, env={"BENCH_ACCEPT": accept or ""})
    m = re.search(r"^JSON(\{.*\})$", out, re.M)
    if code != 0 or not m:
        raise RuntimeError(f"wrk failed ({code}): {out[-500:]}")
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6
    errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
    return Load(rps=d["requests"] / secs, p50_ms=d["p50_us"] / 1e3, p99_ms=d["p99_us"] / 1e3,
                requests=d["requests"], errors=errors, bytes_per_s=d["bytes"] / secs, non_2xx=d["status"])


async def ab_head(url: str, seconds: int, connections: int, accept: str | None = None) -> Load:
    argv = ["ab", "-q", "-k", "-i", "-c", str(connections), "-t", str(seconds), "-n", "100000000", "-s", "10"]
    if accept:
        argv += ["-H", f"Accept: {accept}"]
    code, out, _ = await run(argv + [url], seconds + 30)
    rps = re.search(r"Requests per second:\s+([\d.]+)", out)
    if code is None or not rps:
        raise RuntimeError(f"ab failed ({code}): {out[-500:]}")
    complete = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    pct = dict((int(a), float(b)) for a, b in re.findall(r"^\s+(\d+)%\s+(\d+)", out, re.M))
    return Load(rps=float(rps.group(1)), p50_ms=pct.get(50, float("nan")), p99_ms=pct.get(99, float("nan")),
                requests=complete, errors=failed + (int(non2xx.group(1)) if non2xx else 0))


async def skopeo_pull(ref: str, timeout: float) -> tuple[bool, float, str]:
    """Pull ``ref`` (host:port/repo:tag, plain HTTP) into a dir: layout in RAM; (ok, seconds, error)."""
    dest = SHM / f"pull-{os.getpid()}-{time.monotonic_ns()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", "--retry-times", "0",
            f"docker://{ref}", f"dir:{dest}"]
    try:
        code, out, secs = await run(argv, timeout)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if code is None:
        return False, secs, f"no answer in {timeout:.0f} s"
    if code != 0:
        last = out.strip().splitlines()[-1] if out.strip() else f"exit {code}"
        msg = re.search(r'msg="(.*)"', last)
        return False, secs, (msg.group(1).split(": ", 1)[-1] if msg else last)[-300:]
    return True, secs, ""


def _pss(pid: int) -> int:
    """Proportional set size: shared pages (a forked worker's copy-on-write image) counted once overall."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Peak of the summed RSS (and PSS) of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int | None, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.peak_pss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def tree_rss(pid: int) -> int:
        try:
            root = psutil.Process(pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    @staticmethod
    def tree_pss(pid: int) -> int:
        try:
            root = psutil.Process(pid)
            pids = [root.pid] + [p.pid for p in root.children(recursive=True)]
        except psutil.Error:
            return 0
        return sum(_pss(p) for p in pids)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree_rss(self.pid))
            if self.samples % 4 == 0:
                self.peak_pss = max(self.peak_pss, self.tree_pss(self.pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@dataclass
class ClientResult:
    status: int = 0
    ttfb: float | None = None      # seconds from the common start to the first body byte
    total: float | None = None
    size: int = 0
    correct: bool = False
    error: str = ""


@dataclass
class Crowd:
    clients: list[ClientResult] = field(default_factory=list)

    @property
    def complete(self) -> int:
        return sum(1 for c in self.clients if c.correct)

    def ttfbs(self) -> list[float]:
        return sorted(c.ttfb for c in self.clients if c.ttfb is not None)

    def totals(self) -> list[float]:
        return sorted(c.total for c in self.clients if c.total is not None)


async def crowd_get(url: str, n: int, expected: Path, timeout: float) -> Crowd:
    """``n`` clients GET ``url`` at the same instant, each on its own connection; every body is
    compared byte for byte with ``expected`` (memcmp against an mmap: far cheaper than hashing)."""
    size = expected.stat().st_size
    with open(expected, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    tmo = aiohttp.ClientTimeout(total=timeout, sock_read=timeout)
    results = [ClientResult() for _ in range(n)]
    start = asyncio.Event()

    async def one(res: ClientResult, session: aiohttp.ClientSession) -> None:
        await start.wait()
        t0 = t_start
        ok = True
        try:
            async with session.get(url) as r:
                res.status = r.status
                if r.status != 200:
                    res.error = f"status {r.status}"
                    return
                off = 0
                async for chunk in r.content.iter_any():
                    if res.ttfb is None:
                        res.ttfb = time.monotonic() - t0
                    n_ = len(chunk)
                    if ok and (off + n_ > size or mm[off:off + n_] != chunk):
                        ok = False
                    off += n_
                res.size = off
                res.total = time.monotonic() - t0
                res.correct = ok and off == size
                if not res.correct:
                    res.error = f"got {off} of {size} bytes" + ("" if ok else ", content differs")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            res.error = f"{type(exc).__name__}: {exc}"[:200]

    async with aiohttp.ClientSession(connector=connector, timeout=tmo, auto_decompress=False) as session:
        tasks = [asyncio.create_task(one(r, session)) for r in results]
        await asyncio.sleep(0.05)
        t_start = time.monotonic()
        start.set()
        await asyncio.gather(*tasks)
    mm.close()
    return Crowd(results)


async def fetch_status(url: str, method: str = "GET", accept: str | None = None, timeout: float = 15,
                       auth: str | None = None) -> tuple[int, dict]:
    headers = {"Accept": accept} if accept else {}
    if auth:
        headers["Authorization"] = auth
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        async with s.request(method, url, headers=headers) as r:
            await r.read()
            return r.status, dict(r.headers)


def _raw_get_loop(host: str, port: int, path: str, seconds: float, bufsize: int = 4 * 2**20) -> tuple[float, int, int]:
    """GET ``path`` again and again on one keep-alive connection for ``seconds``, reading with a big
    buffer (wrk reads 8 KiB at a time and becomes the bottleneck for big blobs); whole responses only.
    Returns (bytes per second over complete responses, responses, errors)."""
    import socket
    buf = bytearray(bufsize)
    view = memoryview(buf)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: wharf-bench\r\n\r\n".encode()
    done_bytes, responses, errors = 0, 0, 0
    t0 = time.monotonic()
    sock = socket.create_connection((host, port), timeout=30)
    try:
        while time.monotonic() - t0 < seconds:
            sock.sendall(req)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed in headers")
                head += chunk
            header, _, rest = head.partition(b"\r\n\r\n")
            status = int(header.split(b" ", 2)[1])
            length = None
            for line in header.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            if status != 200 or length is None:
                errors += 1
                break
            got = len(rest)
            while got < length:
                n = sock.recv_into(view, min(bufsize, length - got))
                if not n:
                    raise ConnectionError("closed in body")
                got += n
            done_bytes += length
            responses += 1
    finally:
        sock.close()
    elapsed = time.monotonic() - t0
    return done_bytes / elapsed, responses, errors


async def big_get(url: str, seconds: float) -> Load:
    u = __import__("urllib.parse").parse.urlsplit(url)
    bps, n, errors = await asyncio.to_thread(_raw_get_loop, u.hostname, u.port, u.path, seconds)
    return Load(rps=n / seconds, p50_ms=float("nan"), p99_ms=float("nan"), requests=n, errors=errors, bytes_per_s=bps)


class PySpy:
    """``py-spy record`` on a process tree while a block runs; summarised into top functions.

    Sampling costs the target a little CPU, so runs with ``--py-spy`` are for finding causes,
    not for the figures."""

    def __init__(self, pid: int | None, out: Path, rate: int = 100):
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "PySpy":
        exe = Path(sys.executable).parent / "py-spy"
        exe = str(exe) if exe.exists() else (shutil.which("py-spy") or "")
        if self.pid and exe:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.proc = await asyncio.create_subprocess_exec(
                exe, "record", "--format", "raw", "-r", str(self.rate), "--nonblocking", "--subprocesses",
                "--pid", str(self.pid), "-o", str(self.out),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await asyncio.sleep(0.5)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.proc:
            self.proc.send_signal(2)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def top(self, n: int = 12) -> dict[str, list[tuple[str, float]]]:
        """The functions with most samples on top of the stack (self) and anywhere in it (inclusive)."""
        incl: dict[str, int] = {}
        own: dict[str, int] = {}
        total = 0
        try:
            lines = self.out.read_text().splitlines()
        except OSError:
            return {}
        for line in lines:
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            k = int(count)
            total += k
            frames = [f for f in stack.split(";") if not f.startswith("process ")]
            names = []
            for f in frames:   # "func (path/to/file.py:123)" -> "func (file.py:123)"
                m = re.match(r"^(.*) \((.*)\)$", f)
                names.append(f"{m.group(1)} ({m.group(2).rsplit('/', 1)[-1]})" if m else f)
            for name in set(names):
                incl[name] = incl.get(name, 0) + k
            if names:
                own[names[-1]] = own.get(names[-1], 0) + k
        if not total:
            return {}
        pick = lambda d: [(name, round(100 * v / total, 1)) for name, v in sorted(d.items(), key=lambda x: -x[1])[:n]]
        return {"samples": total, "self": pick(own), "inclusive": pick(incl)}
