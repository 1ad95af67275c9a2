"""Test 12 (issue 10): mirroring — ``wharf mirror sync`` next to ``skopeo sync``, and bundle throughput.

Sync. One mirror list names the 20-layer image and the multi-arch index (every platform), under the
upstream name Wharf's targets use (``upstream.local/bench/layers``, ``upstream.local/bench/multi``);
one ``skopeo sync --src yaml --dest dir --all`` YAML names the same repositories and tags on the
upstream front. Each repetition, in alternating order: ``python -m proxy mirror sync`` into an empty
store (no server: the command is the store's only process) and skopeo into an empty directory on
the same filesystem, then each once more onto what it has (the warm sync: Wharf's tags are stale,
``tag_ttl: 0``, so they are revalidated with HEAD, as a scheduled sync finds them). Wall time of the
command (process start included), the sync's own time from Wharf's summary, and what the upstream
front's access log saw between two marks: bytes sent and requests by method.

Bundles. On the synced store, a second list adds the 4 GiB image of test 6 (so the bundle's time
is not all command start-up), then ``wharf mirror export LIST -o bundle.tar`` (uncompressed), a
``cp`` of that bundle to a new file on the same filesystem (coreutils cp: copy_file_range), and ``wharf mirror import``
into a fresh store with ``offline: true``. Throughput = bundle bytes / seconds. Two readings of
each, from the same runs: as the command returns (what it made durable itself: cp leaves its copy
in the page cache, an export that fsyncs its bundle has done so), and "flushed": plus the
``sync -f`` (syncfs) that makes the rest durable, timed right after — the like-for-like reading. Every timed step starts after an untimed ``sync -f``, so no step pays for an earlier
one's writes; the reads are warm (what was just written). The fixed cost of one ``wharf mirror``
command (interpreter, imports, the app started and stopped: ``wharf mirror status``) is measured
too, and the throughput without it.

When ``wharf mirror export`` / ``import`` are not in this commit the bundle part is recorded as not
available and the sync part still runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import yaml

from . import measure
from .imagegen import Image, Store
from .profile import HOST, PORTS, PROJECT, WHARF_UPSTREAM_NAME, MiB
from .results_model import ratio
from .scenarios import Bench, rotate
from .servers import summarize

KEY = "12_mirror"
SYNCED = ("layers", "multi")           # the list compared with skopeo sync
BUNDLED = ("layers", "multi", "mem_large")   # the list exported and imported (GiBs: throughput, not start-up)
WHARF, SKOPEO, CP = "wharf", "skopeo-sync", "cp"
MB = 1e6
# the source tree whose proxy/ the commands run (default: this checkout; another one to measure a branch)
TREE = Path(os.environ.get("BENCH_WHARF_TREE") or PROJECT)


def content_of(store: Store, digest: str) -> tuple[int, int]:
    """(manifests, blobs) the image or index ``digest`` names in the upstream's store, each once:
    what a complete copy of it transfers at the least."""
    manifests: set[str] = set()
    blobs: dict[str, int] = {}

    def walk(d: str) -> None:
        if d in manifests:
            return
        manifests.add(d)
        doc = json.loads(store.blob_path(d).read_bytes())
        for child in doc.get("manifests", []):
            walk(child["digest"])
        for blob in ([doc["config"]] if "config" in doc else []) + doc.get("layers", []):
            blobs[blob["digest"]] = blob["size"]

    walk(digest)
    return len(manifests), sum(store.blob_path(m).stat().st_size for m in manifests) + sum(blobs.values())


def _wharf_config(path: Path, root: Path, upstream_url: str, offline: bool = False) -> Path:
    """A Wharf config for the commands: the harness's upstream name, tags always stale (a warm sync
    revalidates them with HEAD, as a scheduled one finds them), no listener is ever opened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "listen": f"{HOST}:{PORTS.wharf + 9}",
        "storage": {"root": str(root), "max_cache_bytes": "50GiB"},
        "log": {"access_log": False},
        "offline": offline,
        "default_upstream": None,
        "upstreams": [{"name": WHARF_UPSTREAM_NAME, "url": upstream_url, "tag_ttl": 0}],
    }, sort_keys=False))
    return path


def _mirror_list(path: Path, name: str, images: list[Image]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": name, "images": [
        {"name": f"{WHARF_UPSTREAM_NAME}/{img.repo}", "tags": [img.tag]} for img in images]}, sort_keys=False))
    return path


def _skopeo_list(path: Path, images: list[Image]) -> Path:
    """skopeo sync's YAML source: the same repositories and tags, on the upstream front."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({f"{HOST}:{PORTS.front}": {
        "images": {img.repo: [img.tag] for img in images}, "tls-verify": False}}, sort_keys=False))
    return path


async def wharf(*args: str, timeout: float) -> tuple[int | None, str, float]:
    """``python -m proxy …`` from ``TREE`` (only it on sys.path: ``-P``), as a user runs ``wharf``."""
    return await measure.run([sys.executable, "-P", "-m", "proxy", *args], timeout, env={"PYTHONPATH": str(TREE)})


async def skopeo_sync(source: Path, dest: Path, timeout: float) -> tuple[int | None, str, float]:
    return await measure.run(["skopeo", "--insecure-policy", "sync", "--src", "yaml", "--dest", "dir", "--all",
                              "--preserve-digests", "--retry-times", "0", str(source), str(dest)], timeout)


async def flush(path: Path) -> float:
    """``sync -f``: the filesystem holding ``path`` written out (syncfs); its seconds."""
    _, _, secs = await measure.run(["sync", "-f", str(path)], 120)
    return secs


def _tail(out: str) -> str:
    lines = [line for line in out.strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-300:] if lines else ""


def _own_seconds(out: str) -> float | None:
    """The seconds Wharf's sync summary states (``… synced in 1.2s; …``)."""
    m = re.search(r"images synced in ([\d.]+)s", out)
    return float(m.group(1)) if m else None


async def available(verb: str) -> bool:
    code, _, _ = await wharf("mirror", verb, "--help", timeout=60)
    return code == 0


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


async def _measured(b: Bench, label: str, target: str, argv_coro, timeout_what: str) -> tuple[bool, float, str, dict]:
    """Run one sync with the upstream idle before and after; (ok, seconds, output, upstream summary)."""
    await b.upstream.wait_idle()
    mark = b.upstream.mark()
    code, out, secs = await argv_coro
    await b.upstream.wait_idle(b.profile.fill_timeout)
    up = summarize(b.upstream.requests_since(mark))
    ok = code == 0
    if not ok:
        why = f"no answer in {b.profile.fill_timeout:.0f} s" if code is None else f"exit {code}: {_tail(out)}"
        b.results.error(KEY, target, f"{label} {timeout_what} failed after {secs:.1f} s: {why}")
    return ok, secs, out, up


async def _sync_wharf(b: Bench, work: Path, listing: Path) -> tuple[Path, float | None] | None:
    """Cold then warm ``wharf mirror sync`` into an empty store, then the fixed cost of one command
    on that store (``wharf mirror status``: interpreter, imports, the app started and stopped);
    (the synced store's config, that cost)."""
    r = b.results
    t = b.profile.fill_timeout
    config = _wharf_config(work / "wharf.yaml", work / "store", b.upstream.url)
    walls = {}
    for phase in ("cold", "warm"):
        await flush(work)
        ok, secs, out, up = await _measured(b, phase, WHARF, wharf("mirror", "sync", str(listing), "--config",
                                                                   str(config), timeout=t), "mirror sync")
        pre = "" if phase == "cold" else "warm_"
        summary = [line for line in out.splitlines() if line.startswith("mirror list")]
        r.add(KEY, f"{pre}sync_s", WHARF, secs if ok else None, "s", summary=summary[-1:] or _tail(out))
        r.add(KEY, f"{pre}sync_own_s", WHARF, _own_seconds(out) if ok else None, "s")
        r.add(KEY, f"{pre}upstream_bytes", WHARF, float(up["bytes_sent"]) if ok else None, "B", requests=up["by_method"])
        r.add(KEY, f"{pre}upstream_requests", WHARF, up["requests"] if ok else None, "", by_method=up["by_method"])
        if not ok:
            return None
        walls[pre] = secs
    code, out, startup = await wharf("mirror", "status", "--config", str(config), timeout=60)
    if code != 0:
        r.error(KEY, WHARF, f"wharf mirror status failed: {_tail(out)}")
        return config, None
    r.add(KEY, "command_startup_s", WHARF, startup, "s")
    for pre, secs in walls.items():
        r.add(KEY, f"{pre}sync_net_s", WHARF, max(0.0, secs - startup), "s")
    return config, startup


async def _sync_skopeo(b: Bench, work: Path, source: Path, warm: bool) -> None:
    """skopeo sync into an empty directory; with ``warm``, once more onto it (what a second sync
    does with what is there)."""
    r = b.results
    dest = work / "dir"
    dest.mkdir(parents=True, exist_ok=True)
    await flush(work)
    ok, secs, out, up = await _measured(b, "cold", SKOPEO, skopeo_sync(source, dest, b.profile.fill_timeout),
                                        "skopeo sync")
    r.add(KEY, "sync_s", SKOPEO, secs if ok else None, "s")
    r.add(KEY, "upstream_bytes", SKOPEO, float(up["bytes_sent"]) if ok else None, "B", requests=up["by_method"])
    r.add(KEY, "upstream_requests", SKOPEO, up["requests"] if ok else None, "", by_method=up["by_method"])
    if not (ok and warm):
        return
    await b.upstream.wait_idle()
    mark = b.upstream.mark()
    code, out, secs = await skopeo_sync(source, dest, b.profile.fill_timeout)
    await b.upstream.wait_idle(b.profile.fill_timeout)
    up = summarize(b.upstream.requests_since(mark))
    if code == 0:
        r.add(KEY, "warm_sync_s", SKOPEO, secs, "s")
        r.add(KEY, "warm_upstream_bytes", SKOPEO, float(up["bytes_sent"]), "B", requests=up["by_method"])
        r.add(KEY, "warm_upstream_requests", SKOPEO, up["requests"], "", by_method=up["by_method"])
        return
    refused = re.search(r'msg="(Refusing to overwrite[^"]*)', out)
    r.note(KEY, "skopeo sync onto its own earlier result (--dest dir): exit "
                f"{code}, {refused.group(1).split(' destination')[0] + ' the destination directory' if refused else _tail(out)}"
                f" ({up['requests']} upstream requests, {up['bytes_sent']} B): dir: has no incremental sync, "
                "a second run needs an empty directory and fetches everything again")


async def _bundle(b: Bench, work: Path, config: Path, startup: float | None, listing: Path, content: int) -> None:
    """Export the bundle list from the synced store, cp the bundle, import it into a fresh store."""
    r = b.results
    t = b.profile.fill_timeout
    code, out, _ = await wharf("mirror", "sync", str(listing), "--config", str(config), timeout=t)
    if code != 0:
        r.error(KEY, WHARF, f"sync of the bundle list failed: {_tail(out)}")
        return
    bundle, copy = work / "bundle.tar", work / "copy.tar"
    await flush(work)
    code, out, export_s = await wharf("mirror", "export", str(listing), "-o", str(bundle), "--compress", "none",
                                      "--config", str(config), timeout=t)
    export_flush = await flush(bundle)
    if code != 0 or not bundle.exists():
        r.error(KEY, WHARF, f"mirror export failed after {export_s:.1f} s: {_tail(out)}")
        r.add(KEY, "export_s", WHARF, None, "s", error=_tail(out)[-160:])
        return
    size = bundle.stat().st_size
    r.add(KEY, "bundle_bytes", WHARF, float(size), "B", content_bytes=content)
    if size < content:
        r.error(KEY, WHARF, f"the bundle ({size} B) is smaller than the content it must carry ({content} B)")
    await flush(work)
    code, out, copy_s = await measure.run(["cp", str(bundle), str(copy)], t)
    copy_flush = await flush(copy)
    if code != 0:
        r.error(KEY, CP, f"cp failed: {_tail(out)}")
    copy.unlink(missing_ok=True)
    gapped = _wharf_config(work / "gapped.yaml", work / "gapped-store", b.upstream.url, offline=True)
    await flush(work)
    code, out, import_s = await wharf("mirror", "import", str(bundle), "--config", str(gapped), timeout=t)
    import_flush = await flush(work / "gapped-store")
    stored = _du(work / "gapped-store") if (work / "gapped-store").exists() else 0
    if code != 0:
        r.error(KEY, WHARF, f"mirror import failed after {import_s:.1f} s: {_tail(out)}")
    elif stored < content:
        r.error(KEY, WHARF, f"after the import the store holds {stored} B, less than the bundle's content "
                            f"({content} B)")
        code = 1
    ok_export, ok_import = True, code == 0
    for metric, target, ok, secs, flushed in (("export", WHARF, ok_export, export_s, export_flush),
                                              ("copy", CP, True, copy_s, copy_flush),
                                              ("import", WHARF, ok_import, import_s, import_flush)):
        r.add(KEY, f"{metric}_s", target, secs if ok else None, "s", flush_s=round(flushed, 3))
        r.add(KEY, f"{metric}_MB_per_s", target, size / secs / MB if ok else None, "MB/s")
        r.add(KEY, f"{metric}_flushed_MB_per_s", target, size / (secs + flushed) / MB if ok else None, "MB/s")
        if target == WHARF and ok and startup and secs > startup:
            r.add(KEY, f"{metric}_net_MB_per_s", target, size / (secs - startup) / MB, "MB/s")


async def mirroring(b: Bench) -> None:
    r = b.results
    synced = [b.images[n] for n in SYNCED]
    bundled = [b.images[n] for n in BUNDLED]
    manifests, content = zip(*(content_of(b.store, img.digest) for img in synced))
    sync_content = sum(content)
    bundle_content = sync_content + content_of(b.store, b.images["mem_large"].digest)[1]
    r.test(KEY, f"Mirror sync of {' and '.join(f'{img.repo}:{img.tag}' for img in synced)} "
                f"({sync_content / MiB:.1f} MiB, every platform): wharf mirror sync vs skopeo sync; "
                f"export / import of a {bundle_content / MiB:.0f} MiB bundle vs cp")
    work = b.work / "mirror"
    shutil.rmtree(work, ignore_errors=True)
    listing = _mirror_list(work / "lists" / "bench-sync.yaml", "bench-sync", synced)
    bundle_list = _mirror_list(work / "lists" / "bench-bundle.yaml", "bench-bundle", bundled)
    skopeo_source = _skopeo_list(work / "lists" / "skopeo-sync.yaml", synced)
    bundles = await available("export") and await available("import")
    if not bundles:
        r.note(KEY, "wharf mirror export / import are not in this commit: bundle throughput not measured")
    for rep in range(b.profile.reps):
        for tool in rotate([WHARF, SKOPEO], rep):
            run_dir = work / f"{tool}-{rep}"
            try:
                if tool == SKOPEO:
                    await _sync_skopeo(b, run_dir, skopeo_source, warm=rep == 0)
                    continue
                synced_store = await _sync_wharf(b, run_dir, listing)
                if synced_store and bundles:
                    await _bundle(b, run_dir, *synced_store, bundle_list, bundle_content)
            except Exception as exc:   # reported, the run goes on
                r.error(KEY, tool, f"{type(exc).__name__}: {exc}"[:800])
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
    r.note(KEY, f"mirror list: {', '.join(f'{WHARF_UPSTREAM_NAME}/{i.repo}:{i.tag}' for i in synced)}, every "
                f"platform ({sum(manifests)} manifests, {sync_content:,} B of manifests and blobs upstream); "
                f"skopeo sync --src yaml --dest dir --all --preserve-digests of the same repositories and tags; "
                f"both write to the same ext4 work disk, neither syncs to disk; Wharf's mirror.concurrency is the "
                f"default (4 blobs at once), skopeo copies layers in parallel as containers/image does")
    r.note(KEY, "sync_s: wall time of the command, process start included (Wharf: Python, imports, the app "
                "started and stopped); sync_net_s: minus command_startup_s (wharf mirror status on the synced "
                "store, the same start and stop); sync_own_s: the seconds Wharf's summary states (0.1 s "
                "steps); warm: the same command again onto what it has (tag_ttl 0: every tag is stale and "
                "revalidated, as a scheduled sync finds them)")
    if bundles:
        r.note(KEY, f"bundle: {', '.join(f'{i.repo}:{i.tag}' for i in bundled)} ({bundle_content:,} B of "
                    f"content), uncompressed; MB/s = bundle bytes / seconds (1 MB = 10^6 B); _flushed: plus the "
                    f"sync -f after it (the like-for-like reading: flush_s in the JSON shows what each command "
                    f"left unwritten); _net: minus command_startup_s; cp is coreutils cp of the bundle file "
                    f"to a new file beside it; the import goes into a fresh store with offline: true")
    _checks(b, sync_content, bundles)
    _meaning(b, sync_content, bundles)


def _checks(b: Bench, content: int, bundles: bool) -> None:
    r = b.results
    skopeo = r.med(KEY, "sync_s", SKOPEO)
    refs = {"skopeo sync s": skopeo, "Wharf s": r.med(KEY, "sync_s", WHARF),
            "Wharf start-up s": r.med(KEY, "command_startup_s", WHARF),
            "without start-up": ratio(r.med(KEY, "sync_net_s", WHARF), skopeo),
            "Wharf's own seconds": ratio(r.med(KEY, "sync_own_s", WHARF), skopeo)}
    s = ratio(r.med(KEY, "sync_s", WHARF), skopeo)
    r.check(KEY, "cold sync time / skopeo sync (wall, process start included)", "reported (no goal)", s, None,
            refs)
    wb = r.med(KEY, "upstream_bytes", WHARF)
    sb = r.med(KEY, "upstream_bytes", SKOPEO)
    once = ratio(wb, content)
    r.check(KEY, "cold sync upstream bytes / content (each blob once)", "<= 1.01", once,
            None if once is None else once <= 1.01,
            {"skopeo sync": ratio(sb, content), "Wharf / skopeo sync": ratio(wb, sb), "content B": content})
    warm = r.data["tests"][KEY]["metrics"].get("warm_upstream_requests", {}).get("targets", {})
    w = warm.get(WHARF)
    gets = None
    if w and w["details"]:
        gets = max(d["by_method"].get("GET", 0) for d in w["details"])
    sk = warm.get(SKOPEO)
    r.check(KEY, "warm sync: upstream GETs (every tag revalidated with HEAD)", "0", gets,
            None if gets is None else gets == 0,
            {"Wharf requests": w["details"][-1]["by_method"] if w and w["details"] else None,
             "Wharf warm s": r.med(KEY, "warm_sync_s", WHARF),
             "skopeo sync requests": sk["details"][-1]["by_method"] if sk and sk["details"] else None,
             "skopeo warm s": r.med(KEY, "warm_sync_s", SKOPEO),
             "skopeo warm B": r.med(KEY, "warm_upstream_bytes", SKOPEO)})
    if not bundles:
        for what in ("export MB/s / cp MB/s", "import MB/s / cp MB/s"):
            r.check(KEY, what, "reported (no goal)", None, None,
                    {"status": "wharf mirror export/import not available at this commit"})
        return
    cp, cp_f = r.med(KEY, "copy_MB_per_s", CP), r.med(KEY, "copy_flushed_MB_per_s", CP)
    for op in ("export", "import"):
        mbs = r.med(KEY, f"{op}_MB_per_s", WHARF)
        r.check(KEY, f"{op} MB/s / cp MB/s", "reported (no goal)", ratio(mbs, cp), None,
                {f"{op} MB/s": mbs, "cp MB/s": cp,
                 "flushed ratio": ratio(r.med(KEY, f"{op}_flushed_MB_per_s", WHARF), cp_f),
                 "without start-up": ratio(r.med(KEY, f"{op}_net_MB_per_s", WHARF), cp)})


def _f(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _meaning(b: Bench, content: int, bundles: bool) -> None:
    """What the figures say, from this run's medians (a note, so it stays true on a rerun)."""
    r = b.results
    med = lambda metric, target=WHARF: r.med(KEY, metric, target)  # noqa: E731
    warm = r.data["tests"][KEY]["metrics"].get("warm_upstream_requests", {}).get("targets", {}).get(WHARF)
    warm_by = warm["details"][-1]["by_method"] if warm and warm["details"] else {}
    r.note(KEY, f"sync: Wharf {_f(med('sync_s'))} s wall, of which {_f(med('command_startup_s'))} s is the fixed "
                f"cost of any wharf mirror command; without it {_f(med('sync_net_s'))} s, "
                f"{_f(ratio(med('sync_net_s'), med('sync_s', SKOPEO)))}x skopeo sync's "
                f"{_f(med('sync_s', SKOPEO))} s. Upstream bytes: Wharf {_f(ratio(med('upstream_bytes'), content), '.3f')}x "
                f"the content, skopeo {_f(ratio(med('upstream_bytes', SKOPEO), content), '.3f')}x: both fetch every "
                f"blob once ({_f(med('upstream_requests'), '.0f')} and {_f(med('upstream_requests', SKOPEO), '.0f')} "
                f"requests)")
    r.note(KEY, f"warm resync: Wharf asks upstream {warm_by or 'n/a'} ({_f(med('warm_upstream_bytes'), '.0f')} B), "
                f"{_f(med('warm_sync_s'))} s wall, {_f(med('warm_sync_net_s'))} s more than the start-up (its spread "
                f"is larger than the work); skopeo sync "
                f"--dest dir cannot resync into its own result: a second sync starts from an empty directory "
                f"and costs the cold figures again")
    if bundles:
        cp_f = med("copy_flushed_MB_per_s", CP)
        r.note(KEY, f"bundles, flushed: export {_f(med('export_flushed_MB_per_s'), '.0f')} MB/s "
                    f"({_f(ratio(med('export_flushed_MB_per_s'), cp_f))}x cp's {_f(cp_f, '.0f')} MB/s), import "
                    f"{_f(med('import_flushed_MB_per_s'), '.0f')} MB/s "
                    f"({_f(ratio(med('import_flushed_MB_per_s'), cp_f))}x); of each command's time "
                    f"{_f(med('command_startup_s'))} s is start-up (without it: export "
                    f"{_f(med('export_net_MB_per_s'), '.0f')}, import {_f(med('import_net_MB_per_s'), '.0f')} MB/s, "
                    f"as the command returns); cp moves bytes in the kernel (copy_file_range), the import "
                    f"also hashes every byte (sha256) before anything becomes visible")
