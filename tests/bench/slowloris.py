"""Test 8: slow and greedy clients (issue 8) — what a slowloris attack holds, and who is still answered.

Every target is started with a 1,024 open-file limit (as a shell gives; Go's runtime raises its
own soft limit to the hard one, Python's does not), then attacked at once, all on 127.0.0.1:

- 20 connections that send half a request head and stop;
- 20 that trickle one header line every 5 s, never ending the head;
- 10 that send a request head announcing a 1 MiB body, 1 KiB of it, and stop;
- after 5 s, a flood of 1,100 connections with half-sent heads (more than the file limit).

Meanwhile a normal client opens a new connection every 2 s and asks for ``/v2/`` (bounded at
5 s): answered (any status but 503), refused (503) or failed (no answer). After ``HOLD`` seconds
(more than Wharf's default 60 s body idle limit) the attacking connections still open are counted.
The targets are attacked one after another (the attack costs almost no CPU; the 1,100-connection
flood would otherwise exhaust the driver's own descriptors).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import time

from .profile import HOST
from .scenarios import Bench

HOLD = 75.0                 # seconds the attack lasts before connections are counted
FLOOD = 1100
TARGET_FILE_LIMIT = 1024
KINDS = ("head_stalled", "trickling", "body_stalled", "flood")


class Attacker:
    """One attacking connection and when (if ever) the server closed it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.writer: asyncio.StreamWriter | None = None
        self.closed_at: float | None = None
        self.watch: asyncio.Task | None = None

    async def open(self, port: int, first: bytes, started: float) -> None:
        try:
            reader, self.writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
            self.writer.write(first)
        except (OSError, asyncio.TimeoutError):
            self.closed_at = time.monotonic() - started  # never got in: counts as not held
            return
        self.watch = asyncio.ensure_future(self._watch(reader, started))

    async def _watch(self, reader: asyncio.StreamReader, started: float) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass
        self.closed_at = time.monotonic() - started

    @property
    def open_now(self) -> bool:
        return self.writer is not None and self.closed_at is None

    def close(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
        if self.writer is not None:
            self.writer.transport.abort()


def _head(host: str, path: str = "/v2/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: slowloris\r\n".encode()


def _body_head(host: str) -> bytes:
    zero = "sha256:" + "0" * 64
    return (f"POST /v2/bench/slowloris/blobs/uploads/?digest={zero} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {2**20}\r\n\r\n").encode() + b"x" * 1024


async def _normal_client(port: int) -> str:
    """'answered', 'refused' (503) or 'failed' for one GET /v2/ on a new connection."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
    except (OSError, asyncio.TimeoutError):
        return "failed"
    try:
        writer.write(f"GET /v2/ HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 5)
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            return "failed"
        return "refused" if parts[1] == b"503" else "answered"
    except (OSError, asyncio.TimeoutError):
        return "failed"
    finally:
        writer.transport.abort()


async def _metrics(port: int) -> dict[str, float]:
    """Wharf's connection counters (empty for other targets)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        text = (await asyncio.wait_for(reader.read(), 10)).decode("latin-1")
        writer.transport.abort()
    except (OSError, asyncio.TimeoutError):
        return {}
    found = {}
    for line in text.splitlines():
        if line.startswith(("wharf_connections_", "wharf_event_loop_lag_max")) and "_created" not in line:
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


async def _attack(port: int) -> dict:
    host = f"{HOST}:{port}"
    started = time.monotonic()
    attackers: list[Attacker] = []

    async def opened(kind: str, first: bytes) -> Attacker:
        a = Attacker(kind)
        await a.open(port, first, started)
        attackers.append(a)
        return a

    for _ in range(20):
        await opened("head_stalled", _head(host) + b"X-Half: ")
    tricklers = [await opened("trickling", _head(host)) for _ in range(20)]
    for _ in range(10):
        await opened("body_stalled", _body_head(host))

    async def trickle() -> None:
        n = 0
        while True:
            await asyncio.sleep(5)
            n += 1
            for a in tricklers:
                if a.open_now:
                    with contextlib.suppress(Exception):
                        a.writer.write(f"X-Trickle-{n}: {'y' * 10}\r\n".encode())

    async def flood() -> None:
        await asyncio.sleep(5)
        gate = asyncio.Semaphore(100)

        async def one() -> None:
            async with gate:
                await opened("flood", _head(host))

        await asyncio.gather(*(one() for _ in range(FLOOD)))

    normal: list[tuple[float, str]] = []

    async def probe() -> None:
        while True:
            normal.append((round(time.monotonic() - started, 1), await _normal_client(port)))
            await asyncio.sleep(2)

    tasks = [asyncio.ensure_future(c) for c in (trickle(), flood(), probe())]
    try:
        await asyncio.sleep(HOLD)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    held = {k: sum(1 for a in attackers if a.kind == k and a.open_now) for k in KINDS}
    cut_after = {}
    for k in KINDS:
        times = sorted(a.closed_at for a in attackers if a.kind == k and a.closed_at is not None)
        cut_after[k] = times[len(times) // 2] if times else None
    flood_sent = sum(1 for a in attackers if a.kind == "flood")
    metrics = await _metrics(port)
    for a in attackers:
        a.close()
    await asyncio.sleep(1)  # let the aborted transports close their sockets
    outcomes = [o for _, o in normal]
    return {"held": held, "cut_after_median_s": cut_after, "flood_opened": flood_sent,
            "normal": {o: outcomes.count(o) for o in ("answered", "refused", "failed")},
            "normal_timeline": normal, "wharf_metrics": metrics}


@contextlib.contextmanager
def _file_limit(soft: int):
    """Processes started inside inherit this open-file soft limit (the driver's own descriptors
    must fit under it meanwhile)."""
    in_use = len(os.listdir("/proc/self/fd"))
    if in_use > soft - 64:
        raise RuntimeError(f"the driver holds {in_use} descriptors; cannot start a target under {soft}")
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, old[1]), old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


async def slowloris(b: Bench) -> None:
    key = "8_slowloris"
    r = b.results
    r.test(key, f"Slowloris: 20 half heads, 20 trickling heads, 10 stalled bodies, then {FLOOD} half heads; "
                f"targets at a {TARGET_FILE_LIMIT}-file limit; counted after {HOLD:.0f} s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the driver holds every attacking socket
    try:
        for t in b.pick("WHARF", "distribution"):
            with _file_limit(TARGET_FILE_LIMIT):
                ok = await b.start(key, t, b.upstream.url)
            if not ok:
                continue
            found = await _attack(t.port)
            t.stop()
            normal = found["normal"]
            tried = sum(normal.values())
            for kind in KINDS:
                r.add(key, f"held_{kind}", t.name, found["held"][kind], "conns",
                      cut_after_median_s=found["cut_after_median_s"][kind])
            r.add(key, "normal_answered_pct", t.name, 100.0 * normal["answered"] / max(1, tried), "%",
                  refused=normal["refused"], failed=normal["failed"], tried=tried)
            if found["wharf_metrics"]:
                r.note(key, f"{t.name} metrics at the end: " + json.dumps(found["wharf_metrics"], sort_keys=True))
            r.note(key, f"{t.name} normal client timeline (s, outcome): " +
                   " ".join(f"{s}:{o[0]}" for s, o in found["normal_timeline"]))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    refs = {}
    for kind in ("held_head_stalled", "held_trickling", "held_body_stalled", "held_flood", "normal_answered_pct"):
        refs[kind] = r.med(key, kind, "distribution")
    for w in b.wharfs:
        held = [r.med(key, f"held_{k}", w) for k in KINDS]
        total = None if any(h is None for h in held) else sum(held)
        r.check(key, f"attacking connections still open after {HOLD:.0f} s", "0", total,
                None if total is None else total == 0, refs, w)
        answered = r.med(key, "normal_answered_pct", w)
        r.check(key, "normal clients answered during the attack (%)", "100", answered,
                None if answered is None else answered >= 100.0, {"distribution": refs["normal_answered_pct"]}, w)
