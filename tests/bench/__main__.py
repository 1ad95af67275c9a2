"""Benchmark driver: ``PYTHONPATH=tests python -m bench [--quick] [--only 1,2,...]``.

Starts the upstream and every target on 127.0.0.1, runs the scenarios in an order that reuses
warm caches, prints each figure as it is measured, writes results/latest.json (or
results/quick.json with --quick), REPORT.md and chart.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from . import fleet, imagegen, local, mirror, report, scenarios
from .imagegen import Store
from .profile import FULL, PROJECT, QUICK, RESULTS, SHM, WORK
from .results_model import Results
from .manifestlag import manifest_lag
from .servers import Upstream
from .slowloris import slowloris


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception:
        return "?"


def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    tools = "; ".join([
        _version(["nginx", "-v"]).replace("nginx version: ", ""),
        _version(["docker-registry", "--version"]),
        _version(["skopeo", "--version"]),
        _version(["wrk", "--version"]).split(" Copyright")[0],
        "ab " + _version(["ab", "-V"]).split("Version ")[-1].split()[0],
    ])
    try:
        commit = subprocess.run(["git", "-C", str(PROJECT), "log", "-1", "--format=%h %<(60,trunc)%s", "--", "proxy"],
                                capture_output=True,
                                text=True, timeout=10).stdout.strip()[:100]
        dirty = subprocess.run(["git", "-C", str(PROJECT), "status", "--porcelain", "--", "proxy"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += " (+ uncommitted changes in proxy/)" if dirty else ""
    except Exception:
        commit = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(), "tools": tools,
            "hostname": platform.node(), "wharf_commit": commit}


ALL = ["2", "1", "4", "5", "3", "6", "7", "8", "9", "10", "11", "12", "13", "14"]


async def main(args: argparse.Namespace) -> int:
    profile = QUICK if args.quick else FULL
    if args.reps:
        profile = type(profile)(**{**profile.__dict__, "reps": args.reps})
    only = args.only.split(",") if args.only else ALL
    work = WORK / profile.name
    data_dir = work / "upstream"
    t0 = time.monotonic()
    images = imagegen.generate(profile, data_dir)
    print(f"images ready in {time.monotonic() - t0:.1f} s: " +
          ", ".join(f"{k} {v.pull_bytes / 2**20:.1f} MiB" for k, v in images.items()), flush=True)
    store = Store(data_dir / "store")
    results = Results(profile.name, machine())
    results.data["config"] = {"reps": profile.reps, "load_seconds": profile.load_seconds,
                              "throttle_bytes_per_s": profile.throttle_bps, "clients": profile.clients,
                              "wharf_workers": args.wharf_workers,
                              "wharf_upstream_name": "upstream.local",
                              "images": {k: {"repo": v.repo, "digest": v.digest, "pull_bytes": v.pull_bytes,
                                             "layers": len(v.layers)} for k, v in images.items()}}
    upstream = Upstream(work / "servers", store.root, profile.throttle_bps)
    await upstream.start()
    workers = tuple(int(w) for w in args.wharf_workers.split(",") if w.strip())
    bench = scenarios.Bench(profile, results, upstream, store, images, work / "targets", wharf_workers=workers)
    bench.py_spy = args.py_spy
    if args.skip_wharf:
        bench.skip.update(bench.wharfs)
    steps = {
        "2": scenarios.cold_pull,
        "1": scenarios.warm_blob,
        "4": scenarios.manifests_by_digest,
        "5": scenarios.manifests_by_tag,
        "3": scenarios.thundering_herd,
        "6": scenarios.memory_flat,
        "7": scenarios.upstream_outage,
        "8": slowloris,
        "9": manifest_lag,
        "10": local.local_manifests,
        "11": local.pushes,
        "12": mirror.mirroring,
        "13": fleet.replicas_vs_one,
        "14": fleet.s3_backend,
    }
    out = Path(args.out) if args.out else RESULTS / ("latest.json" if profile is FULL else "quick.json")
    try:
        for step in ALL:
            if step not in only:
                continue
            await steps[step](bench)
            if step == "5":
                await scenarios.tag_revalidation(bench)
            results.finish(out, args.merge)    # keep what we have if a later step dies
    finally:
        bench.stop_all()
        bench.clean()
        upstream.stop()
        shutil.rmtree(SHM, ignore_errors=True)
    results.finish(out, args.merge)
    if out.name == "latest.json" or args.report:
        md, png = report.write(out)
        print(f"\nwrote {out}, {md}, {png}")
    else:
        print(f"\nwrote {out} (REPORT.md and chart.png are written for full runs, or with --report)")
    print(f"total {time.monotonic() - t0:.0f} s")
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small blobs, 2 repetitions, short loads (development)")
    p.add_argument("--only", help="comma-separated test numbers to run, e.g. 1,4 (order is fixed)")
    p.add_argument("--reps", type=int, help="override the number of interleaved repetitions")
    p.add_argument("--wharf-workers", default="1,2",
                   help="comma-separated `workers:` settings; each is a Wharf target (default 1,2: wharf, wharf-2w)")
    p.add_argument("--skip-wharf", action="store_true", help="measure only the references")
    p.add_argument("--py-spy", action="store_true",
                   help="sample Wharf with py-spy in each test's first repetition (raw stacks under "
                        "results/tmp/<profile>/py-spy/, top functions in the JSON; slows Wharf a little)")
    p.add_argument("--out", help="results JSON path (default results/latest.json, quick.json with --quick)")
    p.add_argument("--report", action="store_true", help="write REPORT.md and chart.png next to --out")
    p.add_argument("--merge", action="store_true",
                   help="keep the other tests already in the results JSON (e.g. --only 10,11 into latest.json); "
                        "each test records when and at which commit it ran")
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
