"""Big-store benchmark (issue 12): ``PYTHONPATH=tests python -m bench.bigstore [--blobs N]``.

Writes a synthetic store with ``scripts/make_big_store.py`` (reused while its counts are unchanged),
then runs ``wharf serve`` (one worker) on it and on a small store of the same shape, and measures:
- start-up: until ``/healthz`` answers, on the first start (the blob index is missing and is built in
  the background: how long that build took) and on a start with the index present;
- hit latency p50/p99 of a manifest GET by digest and a blob GET by digest (sequential, one client);
- eviction of 10 % of the store (a budget 1 byte under the store's cached bytes, so the start-up
  finds it over and evicts down to 90 %), and a gc pass (every blob is cached: gc sweeps the whole index);
- the event loop's lag during each, from a client: ``/healthz`` every 10 ms, the worst answer time
  (and the server's own probe, ``wharf_event_loop_lag_max_seconds``: the worst of the last 60 s);
- RSS of the server after the hits, and after eviction and gc.
Prints one JSON document and writes it to ``results/bigstore.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from support.wharf_serve import WharfProcess, start_wharf

from .profile import PROJECT, RESULTS, WORK

UPSTREAM = "upstream.local"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(root: Path, blobs: int, manifests: int, tags: int) -> dict:
    """The store at ``root`` with these counts (written now unless it is there already)."""
    summary_path = root / "big-store.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if (summary["blobs"], summary["manifests"], summary["tags"]) == (blobs, manifests, tags):
            return summary
    shutil.rmtree(root, ignore_errors=True)  # another shape, or a store a run changed: anew
    subprocess.run([sys.executable, str(PROJECT / "scripts" / "make_big_store.py"), str(root), "--blobs", str(blobs),
                    "--manifests", str(manifests), "--tags", str(tags), "--upstream", UPSTREAM], check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads(summary_path.read_text())


def _config(root: Path, port: int, budget: int, gc_seconds: float = 0) -> dict:
    return {"listen": f"127.0.0.1:{port}", "workers": 1, "default_upstream": None,
            "storage": {"root": str(root), "max_cache_bytes": budget, "min_free_bytes": 0},
            "upstreams": [{"name": UPSTREAM, "url": "http://127.0.0.1:9", "tag_ttl": 3600}],
            "gc": {"interval_seconds": gc_seconds},
            "log": {"level": "info", "access_log": False}}


def _start(root: Path, work: Path, budget: int, gc_seconds: float = 0) -> tuple[WharfProcess, float]:
    started = time.monotonic()
    wharf = start_wharf(work, _config(root, _port(), budget, gc_seconds))
    return wharf, time.monotonic() - started


async def _metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    text = await (await session.get(url + "/metrics")).text()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def _latencies(session: aiohttp.ClientSession, urls: list[str], rounds: int) -> dict:
    times = []
    for _ in range(rounds):
        for url in urls:
            started = time.perf_counter()
            async with session.get(url) as resp:
                await resp.read()
                assert resp.status == 200, (url, resp.status)
            times.append(time.perf_counter() - started)
    times.sort()
    return {"n": len(times), "p50_ms": round(times[len(times) // 2] * 1000, 2),
            "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 2)}


async def _lag_while(session: aiohttp.ClientSession, url: str, done) -> dict:
    """Ping ``/healthz`` every 10 ms until ``done()`` is true: the worst and p99 answer times."""
    times = []
    started = time.monotonic()
    while not await done():
        t0 = time.perf_counter()
        async with session.get(url + "/healthz") as resp:
            await resp.read()
        times.append(time.perf_counter() - t0)
        await asyncio.sleep(0.01)
        if time.monotonic() - started > 1800:
            break
    times.sort()
    server_max = await _metric(session, url, "wharf_event_loop_lag_max_seconds")  # its own probe, last 60 s
    return {"seconds": round(time.monotonic() - started, 2), "pings": len(times),
            "max_ms": round(times[-1] * 1000, 1) if times else None,
            "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 1) if times else None,
            "server_lag_max_ms_last_60s": round(server_max * 1000, 1)}


def _rss_mib(wharf: WharfProcess) -> float:
    """RSS of the server and its children (from /proc: the harness needs no psutil here)."""
    pids, total = [wharf.process.pid], 0
    while pids:
        pid = pids.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                pids.extend(int(c) for c in children.read_text().split())
        except OSError:
            continue
        total += int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024
    return round(total / 2**20, 1)


async def measure(root: Path, work: Path, summary: dict, rounds: int) -> dict:
    figures: dict = {"blobs": summary["blobs"], "manifests": summary["manifests"], "tags": summary["tags"]}
    huge = 2**50
    total = summary["blob_bytes"] + summary["manifest_bytes"]
    async with aiohttp.ClientSession() as session:
        # first start: no index yet
        wharf, figures["start_s_without_index"] = _start(root, work / "first", huge)
        try:
            built = time.monotonic()

            async def indexed() -> bool:
                return await _metric(session, wharf.url, 'wharf_store_bytes{kind="cached"}') >= total

            figures["index_build"] = await _lag_while(session, wharf.url, indexed)
            figures["index_build_s"] = round(time.monotonic() - built, 1)
        finally:
            wharf.stop()
        # start with the index: hits
        wharf, figures["start_s"] = _start(root, work / "hits", huge)
        try:
            blobs = [f"{wharf.url}/v2/{UPSTREAM}/big/r0/blobs/{d}" for d in summary["sample"]["blobs"]]
            manifests = [f"{wharf.url}/v2/{UPSTREAM}/{repo}/manifests/{d}" for d, repo in summary["sample"]["manifests"]]
            figures["blob_hit"] = await _latencies(session, blobs, rounds)
            figures["manifest_hit"] = await _latencies(session, manifests, rounds)
            figures["rss_mib"] = _rss_mib(wharf)
        finally:
            wharf.stop()
        # eviction of 10 %: a budget just under what is cached
        wharf, _ = _start(root, work / "evict", total - 1)
        try:
            async def evicted() -> bool:
                return await _metric(session, wharf.url, 'wharf_store_bytes{kind="cached"}') <= (total - 1) * 0.9

            figures["eviction"] = await _lag_while(session, wharf.url, evicted)
            figures["eviction"]["evicted_blobs"] = await _metric(session, wharf.url, "wharf_evictions_total")
            figures["rss_mib_after_eviction"] = _rss_mib(wharf)
        finally:
            wharf.stop()
        # gc: a pass one second after start sweeps every row of the index
        wharf, _ = _start(root, work / "gc", huge, gc_seconds=1)
        try:
            async def collected() -> bool:
                return "gc: {" in wharf.output()

            figures["gc"] = await _lag_while(session, wharf.url, collected)
            report = re.search(r"gc: (\{.*\})", wharf.output())
            figures["gc"]["pass_s"] = float(re.search(r"'seconds': ([\d.]+)", report.group(1)).group(1))
            figures["rss_mib_after_gc"] = _rss_mib(wharf)
        finally:
            wharf.stop()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blobs", type=int, default=1_000_000)
    parser.add_argument("--manifests", type=int, default=None, help="default: blobs / 5")
    parser.add_argument("--tags", type=int, default=None, help="default: blobs / 10")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the 100 sampled digests")
    parser.add_argument("--out", type=Path, default=RESULTS / "bigstore.json")
    args = parser.parse_args(argv)
    manifests = args.manifests if args.manifests is not None else args.blobs // 5
    tags = args.tags if args.tags is not None else args.blobs // 10
    base = WORK / "bigstore"
    results = {}
    for label, counts in (("small", (1000, 200, 100)), ("big", (args.blobs, manifests, tags))):
        root = base / f"store-{label}"
        started = time.monotonic()
        summary = generate(root, *counts)
        generated = round(time.monotonic() - started, 1)
        for suffix in ("", "-wal", "-shm"):
            (root / f"blob-index.sqlite{suffix}").unlink(missing_ok=True)
        work = base / f"work-{label}"
        shutil.rmtree(work, ignore_errors=True)
        results[label] = asyncio.run(measure(root, work, summary, args.rounds))
        results[label]["generate_s"] = generated
        (root / "big-store.json").unlink()  # eviction and gc changed it: the next run writes it anew
        print(json.dumps({label: results[label]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
