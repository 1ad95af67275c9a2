"""Test 9: big manifest PUTs and the event loop (issue 8) — how long ``/healthz`` waits meanwhile.

Before the fix one anonymous 4 MB manifest with 36,000 descriptors took 2.1 s of Wharf's event
loop, and three at once held ``/healthz`` for 6.3 s. Each target is started empty for each kind of
manifest, then ``ROUNDS`` times ``CONCURRENT`` clients (signed in to Wharf) PUT one at once (a new tag each,
distinct random digests) to the local repository ``REPO``, while a probe on its own keep-alive
connection asks for ``/healthz`` (distribution: ``/v2/``) every 10 ms. Kinds:

- ``36k``: 36,000 random layer digests (~4 MB; layers carry no ``mediaType``, the only way 36,000
  fit in the 4 MiB a manifest may have) — over Wharf's ``limits.max_manifest_descriptors``;
- ``9k``: 9,000 random digests, none stored — Wharf answers at the first unknown one;
- ``9k-last``: 9,000 descriptors naming one blob pushed beforehand, all but the last (random):
  every descriptor is checked before the answer (``MANIFEST_BLOB_UNKNOWN``), the per-descriptor path.

Figures per round: the slowest and the 99th-percentile probe among those in flight during the
PUTs, the slowest PUT; per kind, Wharf's ``wharf_event_loop_lag_max_seconds`` (worst of the last
minute) right after the rounds. distribution's proxy may refuse pushes: then what it answers is
measured; ``distribution-registry`` is distribution without ``proxy:``, which takes pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections import Counter

import aiohttp

from .profile import HOST
from .scenarios import Bench
from .servers import Target, Wharf

ROUNDS = 5
CONCURRENT = 3
PROBE_EVERY = 0.010
PROBE_TIMEOUT = 30.0
PUT_TIMEOUT = 60.0
REPO = "bench/manifest-lag"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024      # what Wharf (and distribution 3) accept
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
KINDS = {"36k": "36,000 descriptors (over the cap)", "9k": "9,000 descriptors, no blob stored",
         "9k-last": "9,000 descriptors, only the last blob missing"}
GOAL_MS = 50.0


def _digest(rng: random.Random) -> str:
    return "sha256:" + rng.randbytes(32).hex()


def manifest(kind: str, rng: random.Random, stored: str | None) -> bytes:
    """A valid OCI image manifest (compact JSON) of ``kind``; ``stored`` is a blob the target holds."""
    count = 36_000 if kind == "36k" else 9_000
    if kind == "9k-last":
        assert stored is not None
        config = {"mediaType": OCI_CONFIG, "digest": stored, "size": 2}
        digests = [stored] * (count - 1) + [_digest(rng)]
    else:
        config = {"mediaType": OCI_CONFIG, "digest": _digest(rng), "size": 2}
        digests = [_digest(rng) for _ in range(count)]
    with_type = kind != "36k"
    layers = [{"mediaType": OCI_LAYER, "digest": d, "size": 2 if d == stored else rng.randrange(10**6, 10**7)}
              if with_type else {"digest": d, "size": rng.randrange(10**6, 10**7)} for d in digests]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers},
                      separators=(",", ":")).encode()
    assert len(body) <= MAX_MANIFEST_BYTES, len(body)
    return body


class Probe:
    """GET ``path`` every ``PROBE_EVERY`` s on one keep-alive connection; (sent, seconds or None, status)."""

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path
        self.samples: list[tuple[float, float | None, int]] = []
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _once(self) -> int:
        if self._conn is None:
            self._conn = await asyncio.open_connection(HOST, self.port)
        reader, writer = self._conn
        writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nUser-Agent: probe\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        return status

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn[1].transport.abort()
            self._conn = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                sent = time.monotonic()
                try:
                    status = await asyncio.wait_for(self._once(), PROBE_TIMEOUT)
                    self.samples.append((sent, time.monotonic() - sent, status))
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
                    self.samples.append((sent, None, 0))
                    self._drop()
                next_at += PROBE_EVERY
                now = loop.time()
                if next_at < now:          # a slow answer: the next probe goes at once, none are queued
                    next_at = now
                await asyncio.sleep(next_at - now)
        finally:
            self._drop()

    def during(self, start: float, end: float) -> list[float]:
        """Latencies of the probes in flight at some time in [start, end] (a failed one counts as the bound)."""
        out = []
        for sent, seconds, _ in self.samples:
            took = PROBE_TIMEOUT if seconds is None else seconds
            if sent <= end and sent + took >= start:
                out.append(took)
        return out


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))]


async def _put(session: aiohttp.ClientSession, t: Target, tag: str, body: bytes) -> tuple[str, float]:
    """'<status> <first error code>' and seconds for one manifest PUT."""
    started = time.monotonic()
    try:
        async with session.put(f"{t.base}/v2/{REPO}/manifests/{tag}", data=body,
                               headers={"Content-Type": OCI_MANIFEST}) as resp:
            text = await resp.read()
            code = ""
            with contextlib.suppress(Exception):
                code = json.loads(text)["errors"][0]["code"]
            return f"{resp.status} {code}".strip(), time.monotonic() - started
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return f"failed {type(exc).__name__}", time.monotonic() - started


async def _push_blob(session: aiohttp.ClientSession, t: Target, data: bytes) -> str:
    """Push ``data`` as a blob of ``REPO`` (POST, then PUT with the digest); its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with session.post(f"{t.base}/v2/{REPO}/blobs/uploads/") as resp:
        if resp.status != 202:
            raise RuntimeError(f"upload start answered {resp.status}: {(await resp.text())[:200]}")
        location = resp.headers["Location"]
    url = location if location.startswith("http") else t.base + location
    async with session.put(url, params={"digest": digest}, data=data,
                           headers={"Content-Type": "application/octet-stream"}) as resp:
        if resp.status != 201:
            raise RuntimeError(f"blob PUT answered {resp.status}: {(await resp.text())[:200]}")
    return digest


async def _wharf_lag(t: Target) -> dict[str, float]:
    """``wharf_event_loop_lag_max_seconds`` and how many lag readings passed 50 ms (empty: not Wharf)."""
    await asyncio.sleep(1.5)   # workers publish their samples every second
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(f"{t.base}/metrics") as resp:
                text = await resp.text() if resp.status == 200 else ""
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "wharf_event_loop_lag_max_seconds":
            found["lag_max_s"] = float(value)
        elif name == 'wharf_event_loop_lag_seconds_bucket{le="0.05"}':
            found["under_50ms"] = float(value)
        elif name == "wharf_event_loop_lag_seconds_count":
            found["readings"] = float(value)
    if "readings" in found and "under_50ms" in found:
        found["over_50ms"] = found["readings"] - found.pop("under_50ms")
    return found


async def _kind(b: Bench, key: str, t: Target, kind: str) -> None:
    r = b.results
    if not await b.start(key, t, b.upstream.url):
        return
    try:
        timeout = aiohttp.ClientTimeout(total=PUT_TIMEOUT)
        headers = {}
        if isinstance(t, Wharf):  # pushes to Wharf need an account (issue 9); distribution takes them as they come
            from .local import open_account
            headers["Authorization"] = (await open_account(t))[0]
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0),
                                         headers=headers) as session:
            rng = random.Random(f"9-{kind}")
            stored = None
            if kind == "9k-last":
                try:
                    stored = await _push_blob(session, t, b"{}")
                except (RuntimeError, aiohttp.ClientError, asyncio.TimeoutError, KeyError) as exc:
                    # distribution's proxy refuses pushes: the same manifest, measured for what it answers
                    r.note(key, f"{t.name} {kind}: cannot push the blob ({exc}"[:300] + "); PUTs sent anyway")
                    stored = _digest(rng)
            rounds = [[manifest(kind, rng, stored) for _ in range(CONCURRENT)] for _ in range(ROUNDS)]
            probe = Probe(t.port, "/healthz" if t.name.startswith("wharf") else "/v2/")
            task = asyncio.ensure_future(probe.run())
            answers: Counter[str] = Counter()
            all_during: list[float] = []
            try:
                await asyncio.sleep(1.0)   # idle probes first: the baseline
                idle = [s for _, s, _ in probe.samples if s is not None]
                for n, bodies in enumerate(rounds):
                    start = time.monotonic()
                    done = await asyncio.gather(*(_put(session, t, f"r{n}-{i}", body) for i, body in enumerate(bodies)))
                    end = time.monotonic()
                    await asyncio.sleep(0.2)   # let the probe in flight come back
                    during = probe.during(start, end)
                    all_during += during
                    answers.update(a for a, _ in done)
                    r.add(key, f"healthz_max_ms_{kind}", t.name, 1000 * max(during) if during else None, "ms",
                          probes=len(during))
                    r.add(key, f"healthz_p99_ms_{kind}", t.name, 1000 * _p99(during) if during else None, "ms")
                    r.add(key, f"put_s_{kind}", t.name, max(s for _, s in done), "s",
                          answers=[a for a, _ in done], each_s=[round(s, 3) for _, s in done])
                    await asyncio.sleep(0.3)
            finally:
                # Python 3.11's wait_for can swallow a cancel that lands as its inner call ends
                # (the probe then runs on forever): cancel until the task has really stopped
                while not task.done():
                    task.cancel()
                    await asyncio.wait([task], timeout=0.1)
                await asyncio.gather(task, return_exceptions=True)
        lag = await _wharf_lag(t)
        if "lag_max_s" in lag:
            r.add(key, f"loop_lag_max_ms_{kind}", t.name, 1000 * lag["lag_max_s"], "ms",
                  readings_over_50ms=lag.get("over_50ms"), readings=lag.get("readings"))
        bodies = rounds[0]
        r.note(key, f"{t.name} {kind} ({len(bodies[0]) / 1e6:.2f} MB each): PUT answers "
                    + ", ".join(f"{a} ×{c}" for a, c in sorted(answers.items()))
                    + f"; probes during the PUTs {len(all_during)}, p99 {1000 * (_p99(all_during) or 0):.1f} ms"
                    + f"; idle probe median {1000 * sorted(idle)[len(idle) // 2] if idle else 0:.2f} ms")
    finally:
        t.stop()


async def manifest_lag(b: Bench) -> None:
    key = "9_manifest_lag"
    r = b.results
    r.test(key, f"{CONCURRENT} concurrent PUTs of a big OCI manifest, {ROUNDS} rounds, "
                f"/healthz (distribution: /v2/) probed every {PROBE_EVERY * 1000:.0f} ms on its own connection")
    for kind in KINDS:
        for t in b.pick("WHARF", "distribution", "distribution-registry"):
            await _kind(b, key, t, kind)
    for kind, what in KINDS.items():
        refs = {}
        for ref in ("distribution", "distribution-registry"):
            samples = _samples(r, key, f"healthz_max_ms_{kind}", ref)
            refs[ref] = max(samples) if samples else None
        for w in b.wharfs:
            samples = _samples(r, key, f"healthz_max_ms_{kind}", w)
            worst = max(samples) if samples and len(samples) == ROUNDS else None
            r.check(key, f"slowest /healthz during the PUTs, {what} (ms)", f"< {GOAL_MS:.0f}", worst,
                    None if worst is None else worst < GOAL_MS, refs, w)


def _samples(r, key: str, metric: str, target: str) -> list[float]:
    try:
        found = r.data["tests"][key]["metrics"][metric]["targets"][target]["samples"]
    except KeyError:
        return []
    return [s for s in found if s is not None]
