"""Tests 13 and 14 (issue 12): one replica against three behind nginx, and the S3 backend against the disk.

13. Targets, interleaved, each started empty for each repetition: ``wharf`` (one ``wharf serve``,
    one worker, its own disk; clients talk to it directly), ``wharf-x3-nginx`` (three replicas of
    one config on one shared ``storage.root`` and one Redis, behind nginx round-robin with
    ``proxy_buffering off``) and ``wharf-x1-nginx`` (one replica of that config behind the same
    nginx: what the balancer's hop and Redis cost, without the two other replicas). Cold fan-out:
    ``CLIENTS`` clients at once pull the big image, uncached (manifest by tag, config, layer; the
    upstream front throttled per connection, as in test 3, so the fill lasts and the followers on
    the other replicas read it as it grows); each layer body is compared byte for byte with the
    upstream's file. First-byte time of the layer and whole-pull time from the common start
    (p50/max), upstream bytes from the front's access log as a multiple of the image. Then, warm:
    ``wrk -t2 -c32`` GETs of the manifest by digest (req/s) and ``wrk -t2 -c8`` GETs of the big
    layer (MB/s).
14. ``wharf`` (disk) and ``wharf-s3`` (``storage.backend: s3`` on moto's server, a new bucket each
    repetition), interleaved: cold ``skopeo copy`` of the big image, and the time until its layer
    is in the bucket (Wharf writes through in the background). Then, on the last bucket, the layer
    GET from a Wharf with an empty ``storage.root`` (restarted empty for each GET): ``wharf-s3``
    (``redirect: false``: Wharf streams it from the bucket, filling its store) and
    ``wharf-s3-redirect`` (``redirect: true``: a 307 to a presigned URL the client follows to moto),
    and for reference the warm local-disk GET (``wharf``, and ``wharf-s3`` once it has its copy).
    One client, 4 MiB reads, every body compared with the upstream's file; upstream requests during
    the bucket GETs are counted (none is needed).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import mmap
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from support.s3 import Bucket, new_bucket

from . import measure
from .imagegen import Image
from .profile import DOCKER_ACCEPT, MiB, PORTS
from .results_model import ratio
from .scenarios import Bench, guarded, rotate
from .servers import ConfiguredWharf, Moto, Redis, Target, WharfReplicas, summarize

REPLICAS_KEY = "13_replicas"
S3_KEY = "14_s3"
CLIENTS = 30
MB = 1e6


# ----------------------------------------------------------------------------- clients

@dataclass
class Pull:
    manifest_s: float | None = None   # from the common start to the manifest's whole body
    first_byte_s: float | None = None  # ... to the first byte of the first layer
    total_s: float | None = None       # ... to the last byte of the last layer
    correct: bool = False
    error: str = ""


async def crowd_pull(target: Target, img: Image, files: dict[str, Path], n: int, timeout: float) -> list[Pull]:
    """``n`` clients pull ``img`` at the same instant, each on its own keep-alive connection:
    the manifest by tag, the config, the layers; every layer compared byte for byte with ``files``."""
    maps = {}
    for digest, path in files.items():
        with open(path, "rb") as f:
            maps[digest] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    start = asyncio.Event()
    pulls = [Pull() for _ in range(n)]
    t_start = 0.0

    async def layer(session: aiohttp.ClientSession, res: Pull, digest: str) -> bool:
        mm = maps[digest]
        async with session.get(target.url(img.repo, "blobs", digest)) as r:
            if r.status != 200:
                res.error = f"layer: status {r.status}"
                return False
            off, same = 0, True
            async for chunk in r.content.iter_any():
                if res.first_byte_s is None:
                    res.first_byte_s = time.monotonic() - t_start
                k = len(chunk)
                if same and (off + k > len(mm) or mm[off:off + k] != chunk):
                    same = False
                off += k
        if not same or off != len(mm):
            res.error = f"layer: {off} of {len(mm)} bytes" + ("" if same else ", content differs")
            return False
        return True

    async def one(res: Pull) -> None:
        tmo = aiohttp.ClientTimeout(total=timeout, sock_read=timeout)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=tmo,
                                         auto_decompress=False) as session:
            await start.wait()
            try:
                async with session.get(target.url(img.repo, "manifests", img.tag),
                                       headers={"Accept": DOCKER_ACCEPT}) as r:
                    body = await r.read()
                    if r.status != 200 or r.headers.get("Docker-Content-Digest") != img.digest:
                        res.error = f"manifest: status {r.status}, digest {r.headers.get('Docker-Content-Digest')}"
                        return
                res.manifest_s = time.monotonic() - t_start
                manifest = json.loads(body)
                async with session.get(target.url(img.repo, "blobs", manifest["config"]["digest"])) as r:
                    cfg = await r.read()
                    if r.status != 200 or len(cfg) != manifest["config"]["size"]:
                        res.error = f"config: status {r.status}, {len(cfg)} bytes"
                        return
                for item in manifest["layers"]:
                    if not await layer(session, res, item["digest"]):
                        return
                res.total_s = time.monotonic() - t_start
                res.correct = True
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError) as exc:
                res.error = f"{type(exc).__name__}: {exc}"[:200]

    try:
        tasks = [asyncio.create_task(one(p)) for p in pulls]
        await asyncio.sleep(0.2)   # every session made before the start
        t_start = time.monotonic()
        start.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout + 10)
    finally:
        for mm in maps.values():
            mm.close()
    return pulls


@dataclass
class Get:
    seconds: float
    first_byte_s: float
    size: int
    statuses: list[int]
    correct: bool


def _get_blob(url: str, expected: Path, bufsize: int = 4 * MiB) -> Get:
    """One GET of ``url`` read with ``bufsize`` reads, following one redirect (a 307 to the bucket)
    on a new connection, as registry clients do; the body compared with ``expected``."""
    buf = bytearray(bufsize)
    view = memoryview(buf)
    statuses: list[int] = []
    t0 = time.monotonic()
    with open(expected, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for _ in range(2):
            u = urllib.parse.urlsplit(url)
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            try:
                conn.request("GET", u.path + (f"?{u.query}" if u.query else ""))
                resp = conn.getresponse()
                statuses.append(resp.status)
                if resp.status in (301, 302, 303, 307, 308):
                    url = urllib.parse.urljoin(url, resp.getheader("Location"))
                    resp.read()
                    continue
                off, same, first = 0, resp.status == 200, None
                while n := resp.readinto(view):
                    if first is None:
                        first = time.monotonic() - t0
                    # bytes against bytearray: memcmp (a memoryview compares item by item, ~1 GB/s)
                    if same and (off + n > len(mm) or mm[off:off + n] != (buf if n == bufsize else buf[:n])):
                        same = False
                    off += n
                return Get(time.monotonic() - t0, first or 0.0, off, statuses, same and off == len(mm))
            finally:
                conn.close()
    raise RuntimeError(f"redirected more than once: {statuses}")


async def get_blob(url: str, expected: Path) -> Get:
    return await asyncio.to_thread(_get_blob, url, expected)


def _pct(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


# ----------------------------------------------------------------------------- test 13

async def replicas_vs_one(b: Bench) -> None:
    key = REPLICAS_KEY
    r = b.results
    img = b.images["big"]
    layer = img.largest_layer
    r.test(key, f"One Wharf vs three replicas behind nginx (one shared root, one Redis): {CLIENTS} clients "
                f"pull the uncached {img.pull_bytes / MiB:.0f} MiB image at once, then warm GETs")
    b.stop_all()   # what earlier tests left running would share the 2 cores
    work = b.work / "fleet"
    redis = Redis(work)
    await redis.start()
    single = ConfiguredWharf(work, "wharf", PORTS.fleet_wharf)
    fleet, lb1 = WharfReplicas(work, redis, 3), WharfReplicas(work, redis, 1)
    targets = [single, fleet, lb1]
    files = {x.digest: b.blob_file(x.digest) for x in img.layers}
    try:
        for rep in range(b.profile.reps):
            for t in rotate(targets, rep):
                if not await b.start(key, t, b.upstream.throttled_url):
                    continue
                try:
                    await _fan_out(b, key, t, img, files)
                    await _warm(b, key, t, img, layer.digest)
                finally:
                    t.stop()
    finally:
        for t in targets:
            t.stop()
        redis.stop()
    r.note(key, f"upstream throttled to {b.profile.throttle_bps / 1e6:.0f} MB/s per connection during the "
                f"fan-out (as test 3); each client on its own keep-alive connection; first byte = of the layer")
    r.note(key, "all of it on 2 cores: three replicas, nginx, wrk and the clients share them, so warm "
                "throughput cannot scale with replicas here; the ratio shows what the balancer's hop costs")
    refs = ("wharf", "wharf-x1-nginx")
    x3 = fleet.name
    copies = r.med(key, "upstream_copies", x3)
    r.check(key, "upstream bytes / image, 3 replicas", "1 (<= 1.01)", copies,
            None if copies is None else copies <= 1.01, {n: r.med(key, "upstream_copies", n) for n in refs}, x3)
    done = r.med(key, "clients_complete", x3)
    r.check(key, "clients with the complete, correct image, 3 replicas", f"{CLIENTS}", done,
            None if done is None else done == CLIENTS, {n: r.med(key, "clients_complete", n) for n in refs}, x3)
    fb = r.med(key, "first_byte_max_s", x3)
    r.check(key, "slowest client's first layer byte (s), 3 replicas", "<= 0.5", fb,
            None if fb is None else fb <= 0.5 and done == CLIENTS,
            {n: r.med(key, "first_byte_max_s", n) for n in refs}, x3)
    for metric, what in (("manifest_rps", "warm manifest GET req/s"), ("blob_MB_per_s", "warm layer GET MB/s")):
        one = r.med(key, metric, "wharf")
        r.check(key, f"{what}, 3 replicas behind nginx / 1 replica", "context (2 cores)",
                ratio(r.med(key, metric, x3), one), None,
                {"wharf-x1-nginx / 1 replica": ratio(r.med(key, metric, "wharf-x1-nginx"), one)}, x3)


async def _fan_out(b: Bench, key: str, t: Target, img: Image, files: dict[str, Path]) -> None:
    r = b.results
    await b.upstream.wait_idle()
    mark = b.upstream.mark()
    pulls = await guarded(b, key, t, crowd_pull(t, img, files, CLIENTS, b.profile.fill_timeout))
    await b.upstream.wait_idle(b.profile.fill_timeout)
    if pulls is None:
        return
    up = b.upstream.requests_since(mark)
    layer_gets = sum(q.method == "GET" and img.largest_layer.digest in q.uri for q in up)
    summary = summarize(up)
    firsts = [p.first_byte_s for p in pulls if p.first_byte_s is not None]
    totals = [p.total_s for p in pulls if p.total_s is not None]
    manifests = [p.manifest_s for p in pulls if p.manifest_s is not None]
    r.add(key, "upstream_copies", t.name, summary["bytes_sent"] / img.pull_bytes, "x",
          layer_gets=layer_gets, requests=summary["by_method"])
    r.add(key, "clients_complete", t.name, sum(p.correct for p in pulls), f"of {CLIENTS}")
    r.add(key, "manifest_p50_s", t.name, _pct(manifests, 0.5), "s")
    r.add(key, "first_byte_p50_s", t.name, _pct(firsts, 0.5), "s")
    r.add(key, "first_byte_max_s", t.name, max(firsts) if firsts else None, "s")
    r.add(key, "pull_p50_s", t.name, _pct(totals, 0.5), "s")
    r.add(key, "pull_max_s", t.name, max(totals) if totals else None, "s")
    errors = sorted({p.error for p in pulls if p.error})
    if errors:
        r.error(key, t.name, "; ".join(errors[:3]))


async def _warm(b: Bench, key: str, t: Target, img: Image, layer: str) -> None:
    r = b.results
    seconds = b.profile.load_seconds
    manifest = t.url(img.repo, "manifests", img.digest)
    await guarded(b, key, t, measure.fetch_status(manifest, "GET", DOCKER_ACCEPT))
    for what, url, connections in (("manifest", manifest, 32), ("blob", t.url(img.repo, "blobs", layer), 8)):
        load = await guarded(b, key, t, measure.wrk(url, seconds, connections, 2, DOCKER_ACCEPT))
        if not load:
            continue
        if load.errors:   # a run with failed answers is no figure
            r.error(key, t.name, f"{what}: {load.errors} of {load.requests} answers failed or were not 2xx")
        if what == "manifest":
            r.add(key, "manifest_rps", t.name, None if load.errors else load.rps, "req/s", errors=load.errors)
            r.add(key, "manifest_p99_ms", t.name, load.p99_ms, "ms")
        else:
            r.add(key, "blob_MB_per_s", t.name, None if load.errors else load.bytes_per_s / MB, "MB/s",
                  errors=load.errors)


# ----------------------------------------------------------------------------- test 14

def _s3(bucket: Bucket, redirect: bool) -> dict:
    return {"storage": {"backend": "s3", "s3": {**bucket.s3_config(), "region": "us-east-1", "redirect": redirect}}}


def _empty(bucket: Bucket) -> None:
    """Delete every object of ``bucket`` (moto keeps them in memory)."""
    for obj in bucket.client.list_objects_v2(Bucket=bucket.name).get("Contents", []):
        bucket.client.delete_object(Bucket=bucket.name, Key=obj["Key"])


async def s3_backend(b: Bench) -> None:
    key = S3_KEY
    r = b.results
    img = b.images["big"]
    layer = img.largest_layer
    expected = b.blob_file(layer.digest)
    r.test(key, f"S3 backend (moto) against the local disk: cold pull of the {img.pull_bytes / MiB:.0f} MiB "
                f"image, GET of its {layer.size / MiB:.0f} MiB layer held only by the bucket")
    b.stop_all()
    work = b.work / "fleet"
    moto = Moto(work)
    await moto.start()
    keys = work / "s3-keys"
    keys.mkdir(parents=True, exist_ok=True)
    disk = ConfiguredWharf(work, "wharf", PORTS.fleet_wharf)
    bucket: Bucket | None = None
    try:
        for rep in range(b.profile.reps):
            if bucket is not None:
                await asyncio.to_thread(_empty, bucket)
            bucket = await asyncio.to_thread(new_bucket, moto.url, keys)
            s3 = ConfiguredWharf(work, "wharf-s3", PORTS.fleet_wharf + 1, _s3(bucket, False))
            for t in rotate([disk, s3], rep):
                await _cold(b, key, t, img, bucket if t is s3 else None)
        if bucket is not None:
            await _bucket_only(b, key, bucket, img, expected, disk)
    finally:
        disk.stop()
        moto.stop()
    r.note(key, "moto keeps objects in memory and serves them from one Python process; with redirect the "
                "client's bytes come from moto, so the redirect figures are moto's as much as Wharf's")
    r.note(key, "a bucket-only GET is one GET from a Wharf started with an empty storage.root on the bucket "
                "(redirect off: that GET fills its local copy; the next GET is local)")
    disk_s = r.med(key, "cold_pull_s", "wharf")
    refs = {"wharf (disk) s": disk_s, "wharf-s3 s": r.med(key, "cold_pull_s", "wharf-s3")}
    r.check(key, "cold pull time, S3 / disk", "context", ratio(r.med(key, "cold_pull_s", "wharf-s3"), disk_s),
            None, refs, "wharf-s3")
    local = r.med(key, "local_get_MB_per_s", "wharf")
    for name in ("wharf-s3", "wharf-s3-redirect"):
        mbs = r.med(key, "bucket_get_MB_per_s", name)
        r.check(key, "bucket-only layer GET MB/s / warm local disk", "context", ratio(mbs, local), None,
                {"bucket MB/s": mbs, "local disk MB/s": local}, name)
        up = r.med(key, "bucket_get_upstream_requests", name)
        r.check(key, "upstream requests for a blob the bucket holds", "0", up, None if up is None else up == 0, {},
                name)


async def _cold(b: Bench, key: str, t: ConfiguredWharf, img: Image, bucket: Bucket | None) -> None:
    r = b.results
    if not await b.start(key, t, b.upstream.url):
        return
    try:
        await b.upstream.wait_idle()
        mark = b.upstream.mark()
        ok, secs, err = await measure.skopeo_pull(t.ref(img.repo, img.tag), b.profile.fill_timeout)
        t_done = time.monotonic()
        if not ok:
            r.error(key, t.name, f"cold pull failed after {secs:.1f} s: {err}")
        r.add(key, "cold_pull_s", t.name, secs if ok else None, "s")
        if bucket is not None and ok:
            try:
                await bucket.wait_for(img.largest_layer.digest, b.profile.fill_timeout)
                r.add(key, "in_bucket_after_pull_s", t.name, time.monotonic() - t_done, "s")
            except AssertionError as exc:
                r.error(key, t.name, str(exc))
        await b.upstream.wait_idle(b.profile.fill_timeout)
        r.add(key, "cold_upstream_bytes", t.name, summarize(b.upstream.requests_since(mark))["bytes_sent"], "B")
    finally:
        if bucket is not None:
            t.stop()   # the disk Wharf stays up, warm, for the local GETs


async def _bucket_only(b: Bench, key: str, bucket: Bucket, img: Image, expected: Path,
                       disk: ConfiguredWharf) -> None:
    r = b.results
    layer = img.largest_layer.digest
    work = disk.work.parent
    fresh = [ConfiguredWharf(work, "wharf-s3", PORTS.fleet_wharf + 1, _s3(bucket, False)),
             ConfiguredWharf(work, "wharf-s3-redirect", PORTS.fleet_wharf + 2, _s3(bucket, True))]
    if disk.pid is None and not await b.start(key, disk, b.upstream.url):
        return
    await guarded(b, key, disk, measure.fetch_status(disk.url(img.repo, "blobs", layer)))   # warm, if not yet
    for rep in range(b.profile.reps):
        for t in rotate(fresh, rep):
            if not await b.start(key, t, b.upstream.url):
                continue
            try:
                await b.upstream.wait_idle()
                mark = b.upstream.mark()
                got = await guarded(b, key, t, get_blob(t.url(img.repo, "blobs", layer), expected))
                await b.upstream.wait_idle()
                if got is None:
                    continue
                if not got.correct:
                    r.error(key, t.name, f"bucket GET: {got.size} bytes, statuses {got.statuses}, not the blob")
                r.add(key, "bucket_get_MB_per_s", t.name, got.size / got.seconds / MB if got.correct else None,
                      "MB/s", statuses=got.statuses)
                r.add(key, "bucket_get_first_byte_ms", t.name, got.first_byte_s * 1e3, "ms")
                r.add(key, "bucket_get_upstream_requests", t.name, len(b.upstream.requests_since(mark)), "")
                if t.name == "wharf-s3":
                    await _local_gets(b, key, t, img, expected)   # it has its own copy now
            finally:
                t.stop()
        await _local_gets(b, key, disk, img, expected)


async def _local_gets(b: Bench, key: str, t: Target, img: Image, expected: Path, count: int = 3) -> None:
    """The warm local-disk reference: ``count`` GETs of the layer, the best reading of them."""
    best = None
    for _ in range(count):
        got = await guarded(b, key, t, get_blob(t.url(img.repo, "blobs", img.largest_layer.digest), expected))
        if got is not None and got.correct and got.statuses == [200]:
            best = max(best or 0.0, got.size / got.seconds / MB)
    b.results.add(key, "local_get_MB_per_s", t.name, best, "MB/s")
