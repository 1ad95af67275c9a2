"""The seven measurements of issue 3, each interleaving the targets and repeating ``profile.reps`` times.

Every scenario records raw samples and medians in ``Results`` and then its checks: the figure for
Wharf against the goal, with the references' figures alongside.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from . import measure
from .imagegen import Image, Store
from .profile import ACCEPT_VARIANTS, DOCKER_ACCEPT, MiB, PORTS, HOST, Profile
from .results_model import Results, ratio
from .servers import (BareAiohttp, Direct, Distribution, DistributionRegistry, NginxCache, NginxCacheTuned,
                      NginxSendfile, Relay, Target, Upstream, Wharf, summarize)


@dataclass
class Bench:
    profile: Profile
    results: Results
    upstream: Upstream
    store: Store
    images: dict[str, Image]
    work: Path
    wharf_workers: tuple[int, ...] = (1,)
    targets: dict[str, Target] = field(default_factory=dict)
    skip: set[str] = field(default_factory=set)      # targets that failed to start: not retried
    py_spy: bool = False                             # profile Wharf in the first repetition of each test

    def __post_init__(self) -> None:
        for i, workers in enumerate(self.wharf_workers):
            w = Wharf(self.work, workers=workers, index=i)
            self.targets[w.name] = w
        for cls in (Distribution, DistributionRegistry, NginxCache, NginxCacheTuned, Direct):
            t = cls(self.work)
            self.targets[t.name] = t
        self.targets["nginx-sendfile"] = NginxSendfile(self.work, self.store.root)
        big = self.images["big"]
        self.targets["aiohttp-bare"] = BareAiohttp(self.work, self.store.blob_path(big.digest), big.media_type, big.tag)

    @property
    def wharfs(self) -> list[str]:
        """Names of the Wharf variants (one per ``workers`` setting), whether or not they started."""
        return [t.name for t in self.targets.values() if isinstance(t, Wharf)]

    def pick(self, *names: str) -> list[Target]:
        """Targets by name; ``WHARF`` stands for every Wharf variant."""
        expanded = [w for n in names for w in (self.wharfs if n == "WHARF" else [n])]
        return [self.targets[n] for n in expanded if n not in self.skip]

    def blob_file(self, digest: str) -> Path:
        return self.store.blob_path(digest)

    async def start(self, key: str, target: Target, upstream_url: str, tag_ttl: float = 60) -> bool:
        try:
            await target.start(upstream_url, tag_ttl=tag_ttl)
            return True
        except Exception as exc:   # a target that cannot start is reported, the run goes on
            self.results.error(key, target.name, f"cannot start: {exc}"[:800])
            if isinstance(target, Wharf):
                self.skip.add(target.name)
            return False

    def stop_all(self) -> None:
        for t in self.targets.values():
            t.stop()

    def clean(self) -> None:
        """Drop the targets' stores (GiBs of cached blobs); their configs and logs stay for reading."""
        for t in self.targets.values():
            for sub in ("data", "nginx/cache"):
                shutil.rmtree(t.work / sub, ignore_errors=True)


@contextlib.asynccontextmanager
async def profiled(b: Bench, key: str, label: str, target: Target, rep: int = 0):
    """With ``--py-spy``, sample Wharf's processes during the block (first repetition only)."""
    if not (b.py_spy and rep == 0 and isinstance(target, Wharf) and target.pid):
        yield
        return
    spy = measure.PySpy(target.pid, b.work.parent / "py-spy" / f"{key}-{label}-{target.name}.txt")
    async with spy:
        yield
    top = spy.top()
    b.results.data["tests"][key].setdefault("profiles", {})[f"{label} {target.name}"] = top
    if top:
        print(f"  [{key}] py-spy {target.name} {label}: {top['samples']} samples; self: " +
              ", ".join(f"{n} {p}%" for n, p in top["self"][:8]), flush=True)


def rotate(items: list, n: int) -> list:
    n %= max(1, len(items))
    return items[n:] + items[:n]


async def guarded(b: Bench, key: str, target: Target, coro) -> object | None:
    try:
        return await coro
    except Exception as exc:
        b.results.error(key, target.name, f"{type(exc).__name__}: {exc}"[:800])
        if not isinstance(exc, (RuntimeError, aiohttp.ClientError, asyncio.TimeoutError)):
            traceback.print_exc()
        return None


# ----------------------------------------------------------------------------- test 2

async def cold_pull(b: Bench) -> None:
    key = "2_cold_pull"
    r = b.results
    r.test(key, f"Cold skopeo pull of the {b.images['big'].pull_bytes / MiB:.0f} MiB image")
    img = b.images["big"]
    targets = b.pick("upstream", "WHARF", "distribution", "nginx-cache")
    for rep in range(b.profile.reps + 2):   # +-10 % from run to run: two more than the other tests
        for t in rotate(targets, rep):
            if t.name in b.skip or not await b.start(key, t, b.upstream.url):
                continue
            await b.upstream.wait_idle()
            mark = b.upstream.mark()
            async with profiled(b, key, "pull", t, rep):
                ok, secs, err = await measure.skopeo_pull(t.ref(img.repo, img.tag), b.profile.fill_timeout)
            await b.upstream.wait_idle(b.profile.fill_timeout)
            up = summarize(b.upstream.requests_since(mark))
            if not ok:
                r.error(key, t.name, f"pull failed after {secs:.1f} s: {err}")
            r.add(key, "pull_s", t.name, secs if ok else None, "s")
            r.add(key, "upstream_bytes", t.name, up["bytes_sent"], "B", requests=up["by_method"])
    direct_s = r.med(key, "pull_s", "upstream")
    direct_b = r.med(key, "upstream_bytes", "upstream")
    refs_s = {n: ratio(r.med(key, "pull_s", n), direct_s) for n in ("distribution", "nginx-cache")}
    refs_b = {n: ratio(r.med(key, "upstream_bytes", n), direct_b) for n in ("distribution", "nginx-cache")}
    for w in b.wharfs:
        w_s = ratio(r.med(key, "pull_s", w), direct_s)
        w_b = ratio(r.med(key, "upstream_bytes", w), direct_b)
        r.check(key, "pull time / direct pull", "<= 1.05", w_s, None if w_s is None else w_s <= 1.05, refs_s, w)
        r.check(key, "upstream bytes / direct pull", "<= 1.01 (once)", w_b, None if w_b is None else w_b <= 1.01,
                refs_b, w)


# ----------------------------------------------------------------------------- test 1

async def ensure_warm(b: Bench, key: str, targets: list[Target]) -> list[Target]:
    """Targets still running (and warm) from test 2; the others started and filled with one pull."""
    for t in targets:
        if t.pid is None and t.name not in b.skip:
            if await b.start(key, t, b.upstream.url) and t.is_cache:
                ok, _, err = await measure.skopeo_pull(t.ref(b.images["big"].repo, b.images["big"].tag),
                                                       b.profile.fill_timeout)
                if not ok:
                    b.results.error(key, t.name, f"warm-up pull failed: {err}")
    return [t for t in targets if t.pid is not None]


async def warm_blob(b: Bench) -> None:
    key = "1_warm_blob"
    r = b.results
    layer = b.images["big"].largest_layer
    r.test(key, f"Warm {layer.size / MiB:.0f} MiB blob GET, one keep-alive connection, 4 MiB reads")
    sendfile = b.targets["nginx-sendfile"]
    await b.start(key, sendfile, b.upstream.url)
    targets = await ensure_warm(b, key, b.pick("nginx-sendfile", "WHARF", "distribution", "nginx-cache"))
    mark = b.upstream.mark()
    for t in targets:
        await guarded(b, key, t, measure.big_get(t.url(b.images["big"].repo, "blobs", layer.digest), 1))
    # single-connection throughput on a VM swings by +-30 % from run to run: three times the repetitions
    for rep in range(b.profile.reps * 3):
        for t in rotate(targets, rep):
            async with profiled(b, key, "get", t, rep):
                load = await guarded(b, key, t, measure.big_get(t.url(b.images["big"].repo, "blobs", layer.digest),
                                                                b.profile.blob_seconds))
            if load and load.errors:
                r.error(key, t.name, "a response was not a complete 200")
            if load:
                r.add(key, "MB_per_s", t.name, load.bytes_per_s / 1e6, "MB/s", errors=load.errors)
    await b.upstream.wait_idle()
    r.note(key, "client: one keep-alive connection reading whole responses with 4 MiB recv_into "
                "(wrk reads 8 KiB at a time and is the bottleneck above ~2 GB/s)")
    r.note(key, f"upstream requests during the warm runs: {summarize(b.upstream.requests_since(mark))}")
    limit = r.med(key, "MB_per_s", "nginx-sendfile")
    refs = {n: ratio(r.med(key, "MB_per_s", n), limit) for n in ("distribution", "nginx-cache")}
    for name in b.wharfs:
        w = ratio(r.med(key, "MB_per_s", name), limit)
        r.check(key, "throughput / sendfile limit", ">= 0.95", w, None if w is None else w >= 0.95, refs, name)
    sendfile.stop()


# ----------------------------------------------------------------------------- test 4 / 5

async def _manifest_load(b: Bench, key: str, ref: str, count_upstream: bool) -> None:
    r = b.results
    img = b.images["big"]
    targets = await ensure_warm(b, key, b.pick("WHARF", "distribution", "nginx-cache", "aiohttp-bare"))
    for t in targets:   # warm: GET and HEAD with the Accept the load uses
        url = t.url(img.repo, "manifests", ref)
        for method in ("GET", "HEAD"):
            await guarded(b, key, t, measure.fetch_status(url, method, DOCKER_ACCEPT))
    for rep in range(b.profile.reps):
        for t in rotate(targets, rep):
            url = t.url(img.repo, "manifests", ref)
            for method in ("GET", "HEAD"):
                # re-warm: the repetitions outlast the 60 s TTL, and "while fresh" means fresh
                await guarded(b, key, t, measure.fetch_status(url, method, DOCKER_ACCEPT))
                await b.upstream.wait_idle()
                mark = b.upstream.mark()
                async with profiled(b, key, method, t, rep):
                    if method == "GET":
                        load = await guarded(b, key, t, measure.wrk(url, b.profile.load_seconds, 32, 2, DOCKER_ACCEPT))
                    else:
                        load = await guarded(b, key, t, measure.ab_head(url, b.profile.load_seconds, 32,
                                                                        DOCKER_ACCEPT))
                await b.upstream.wait_idle()
                up = summarize(b.upstream.requests_since(mark))
                if not load:
                    continue
                m = method.lower()
                if load.errors:
                    r.error(key, t.name, f"{method}: {load.errors} of {load.requests} answers failed or were not 2xx")
                r.add(key, f"{m}_rps", t.name, load.rps, "req/s", errors=load.errors)
                r.add(key, f"{m}_p99_ms", t.name, load.p99_ms, "ms")
                if count_upstream:
                    r.add(key, f"{m}_upstream_requests", t.name, up["requests"], "", by_method=up["by_method"])
    for name in b.wharfs:
        for m in ("get", "head"):
            nginx = r.med(key, f"{m}_rps", "nginx-cache")
            w = ratio(r.med(key, f"{m}_rps", name), nginx)
            refs = {"distribution": ratio(r.med(key, f"{m}_rps", "distribution"), nginx),
                    "aiohttp-bare": ratio(r.med(key, f"{m}_rps", "aiohttp-bare"), nginx),
                    "nginx-cache req/s": nginx, "Wharf req/s": r.med(key, f"{m}_rps", name)}
            r.check(key, f"{m.upper()} req/s / nginx cache", ">= 0.25", w, None if w is None else w >= 0.25, refs,
                    name)
            p99 = r.med(key, f"{m}_p99_ms", name)
            r.check(key, f"{m.upper()} p99 latency (ms)", "< 10", p99, None if p99 is None else p99 < 10,
                    {n: r.med(key, f"{m}_p99_ms", n) for n in ("distribution", "nginx-cache", "aiohttp-bare")}, name)
            if count_upstream:
                up = r.med(key, f"{m}_upstream_requests", name)
                r.check(key, f"{m.upper()} upstream requests per {b.profile.load_seconds} s run (tag fresh)", "0",
                        up, None if up is None else up == 0,
                        {n: r.med(key, f"{m}_upstream_requests", n) for n in ("distribution", "nginx-cache")}, name)


async def manifests_by_digest(b: Bench) -> None:
    key = "4_manifest_digest"
    b.results.test(key, "Manifest GET (wrk) and HEAD (ab -i) by digest, 32 connections")
    await _manifest_load(b, key, b.images["big"].digest, count_upstream=False)


async def manifests_by_tag(b: Bench) -> None:
    key = "5_manifest_tag"
    b.results.test(key, "Manifest GET and HEAD by tag while the tag is fresh (TTL 60 s), 32 connections")
    await _manifest_load(b, key, b.images["big"].tag, count_upstream=True)


async def tag_revalidation(b: Bench) -> None:
    """After the TTL, N clients with different Accept strings ask for the tag at once."""
    key = "5_manifest_tag"
    r = b.results
    img = b.images["big"]
    ttl = 2
    r.note(key, f"revalidation: TTL {ttl} s; after it, 5 GET per Accept string x {len(ACCEPT_VARIANTS)} "
                f"strings + 5 HEAD, all at once")
    for t in b.pick("WHARF", "distribution", "nginx-cache"):
        if not await b.start(key, t, b.upstream.url, tag_ttl=ttl):
            continue
        url = t.url(img.repo, "manifests", img.tag)
        try:
            for acc in ACCEPT_VARIANTS:
                await measure.fetch_status(url, "GET", acc)
            await measure.fetch_status(url, "HEAD", DOCKER_ACCEPT)
            await asyncio.sleep(ttl + 1.5)
            await b.upstream.wait_idle()
            mark = b.upstream.mark()
            jobs = [measure.fetch_status(url, "GET", acc) for acc in ACCEPT_VARIANTS for _ in range(5)]
            jobs += [measure.fetch_status(url, "HEAD", DOCKER_ACCEPT) for _ in range(5)]
            answers = await asyncio.gather(*jobs, return_exceptions=True)
            await b.upstream.wait_idle()
        except Exception as exc:
            r.error(key, t.name, f"revalidation: {type(exc).__name__}: {exc}")
            t.stop()
            continue
        t.stop()
        bad = [a for a in answers if isinstance(a, Exception) or a[0] != 200
               or a[1].get("Docker-Content-Digest") != img.digest]
        reqs = b.upstream.requests_since(mark)
        tag_reqs = [q for q in reqs if "/manifests/" + img.tag in q.uri]
        by = summarize(tag_reqs)["by_method"]
        r.add(key, "stale_tag_upstream_requests", t.name, len(tag_reqs), "", by_method=by,
              all_upstream=summarize(reqs)["by_method"], bad_answers=len(bad))
    found = r.data["tests"][key]["metrics"].get("stale_tag_upstream_requests", {}).get("targets", {})
    refs = {n: d["details"][-1]["by_method"] for n, d in found.items() if n not in b.wharfs}
    for name in b.wharfs:
        w = found.get(name)
        if w:
            by = w["details"][-1]["by_method"]
            ok = w["samples"][-1] == 1 and by.get("HEAD") == 1 and w["details"][-1]["bad_answers"] == 0
            r.check(key, "upstream requests for a stale tag, any Accept", "exactly 1 HEAD", str(by), ok, refs, name)
        else:
            r.check(key, "upstream requests for a stale tag, any Accept", "exactly 1 HEAD", None, None, refs, name)


# ----------------------------------------------------------------------------- test 3 (+6)

async def thundering_herd(b: Bench) -> None:
    key = "3_concurrent_cold"
    r = b.results
    layer = b.images["big"].largest_layer
    n = b.profile.clients
    r.test(key, f"{n} clients GET the same uncached {layer.size / MiB:.0f} MiB blob at once, "
                f"upstream limited to {b.profile.throttle_bps / 1e6:.0f} MB/s per connection")
    expected = b.blob_file(layer.digest)
    for t in b.pick("WHARF", "distribution", "nginx-cache", "nginx-cache-tuned"):
        if not await b.start(key, t, b.upstream.throttled_url):
            continue
        await b.upstream.wait_idle()
        mark = b.upstream.mark()
        url = t.url(b.images["big"].repo, "blobs", layer.digest)
        with measure.RssSampler(t.pid) as rss:
            async with profiled(b, key, "herd", t):
                crowd = await measure.crowd_get(url, n, expected, b.profile.fill_timeout)
            await b.upstream.wait_idle(b.profile.fill_timeout)
        t.stop()
        reqs = [q for q in b.upstream.requests_since(mark) if layer.digest in q.uri]
        sent = sum(q.bytes_sent for q in reqs if q.method == "GET")
        ttfb = crowd.ttfbs()
        errors = sorted({c.error for c in crowd.clients if c.error})
        r.add(key, "upstream_copies", t.name, sent / layer.size, "x", upstream_gets=sum(q.method == "GET" for q in reqs))
        r.add(key, "clients_complete", t.name, crowd.complete, f"of {n}")
        r.add(key, "first_byte_max_s", t.name, ttfb[-1] if ttfb else None, "s", clients_with_bytes=len(ttfb))
        r.add(key, "first_byte_median_s", t.name, ttfb[len(ttfb) // 2] if ttfb else None, "s")
        totals = crowd.totals()
        r.add(key, "last_client_done_s", t.name, totals[-1] if totals else None, "s")  # bound by our client too
        r.add(key, "peak_rss_mib", t.name, rss.peak / MiB, "MiB")
        r.add(key, "peak_pss_mib", t.name, rss.peak_pss / MiB, "MiB")
        if errors:
            r.error(key, t.name, "; ".join(errors[:3]))
    r.note(key, "one aiohttp process receives and memcmp-checks all bodies; it tops out near 1 GB/s on this "
                "machine, so last_client_done_s measures the client as much as the server")
    r.note(key, "nginx-cache keeps nginx's default proxy_cache_lock_age (5 s), as the popular configs do; "
                "nginx-cache-tuned sets it to 880 s")
    refs = ("distribution", "nginx-cache", "nginx-cache-tuned")
    for w in b.wharfs:
        copies = r.med(key, "upstream_copies", w)
        r.check(key, "upstream copies of the blob", "1 (<= 1.01)", copies,
                None if copies is None else copies <= 1.01, {x: r.med(key, "upstream_copies", x) for x in refs}, w)
        done = r.med(key, "clients_complete", w)
        r.check(key, "clients with the complete, correct blob", f"{n}", done, None if done is None else done == n,
                {x: r.med(key, "clients_complete", x) for x in refs}, w)
        fb = r.med(key, "first_byte_max_s", w)
        r.check(key, "slowest client's first byte (s)", "<= 0.5", fb,
                None if fb is None else fb <= 0.5 and done == n, {x: r.med(key, "first_byte_max_s", x) for x in refs}, w)
        peak = r.med(key, "peak_rss_mib", w)
        r.check(key, "peak RSS of all Wharf processes (MiB)", "<= 100", peak,
                None if peak is None else peak <= 100, {x: r.med(key, "peak_rss_mib", x) for x in refs}, w)
        pss = r.med(key, "peak_pss_mib", w)
        r.check(key, "peak PSS of all Wharf processes (MiB; shared pages once)", "<= 100", pss,
                None if pss is None else pss <= 100, {x: r.med(key, "peak_pss_mib", x) for x in refs}, w)


async def memory_flat(b: Bench) -> None:
    key = "6_memory"
    r = b.results
    r.test(key, "Peak RSS of the Wharf process tree: cold GET of a small and a huge blob, 2 clients")
    for t in b.pick("WHARF"):
        for name in ("mem_small", "mem_large"):
            img = b.images[name]
            layer = img.largest_layer
            if not await b.start(key, t, b.upstream.url):
                break
            idle = measure.RssSampler.tree_rss(t.pid)
            with measure.RssSampler(t.pid) as rss:
                crowd = await measure.crowd_get(t.url(img.repo, "blobs", layer.digest), 2,
                                                b.blob_file(layer.digest), b.profile.fill_timeout)
            t.stop()
            r.add(key, f"peak_rss_mib_{name}", t.name, rss.peak / MiB, "MiB", blob_mib=round(layer.size / MiB),
                  idle_mib=round(idle / MiB, 1), complete=crowd.complete, samples=rss.samples)
            r.add(key, f"peak_pss_mib_{name}", t.name, rss.peak_pss / MiB, "MiB")
            if crowd.complete != 2:
                r.error(key, t.name, f"{name}: " + "; ".join(sorted({c.error for c in crowd.clients if c.error})))
    small, large = b.images["mem_small"].largest_layer.size / MiB, b.images["mem_large"].largest_layer.size / MiB
    r.note(key, f"mem_small is a {small:.0f} MiB blob, mem_large {large:.0f} MiB")
    for w in b.wharfs:
        a, z = r.med(key, "peak_rss_mib_mem_small", w), r.med(key, "peak_rss_mib_mem_large", w)
        rr = ratio(z, a)
        r.check(key, f"peak RSS {large:.0f} MiB blob / {small:.0f} MiB blob", "<= 1.10", rr,
                None if rr is None else rr <= 1.10, {"small MiB": a, "huge MiB": z}, w)


# ----------------------------------------------------------------------------- test 7

async def upstream_outage(b: Bench) -> None:
    key = "7_upstream_outage"
    r = b.results
    img = b.images["multi"]
    limit = b.profile.stall_timeout
    r.test(key, f"Pull by (stale) tag of a cached image while upstream is down or hung (bound {limit:.0f} s)")
    relay = Relay(PORTS.relay, PORTS.front)
    ttl = 2
    try:
        for mode in ("down", "hung"):
            for t in b.pick("WHARF", "distribution", "nginx-cache"):
                await relay.set_mode("forward")
                if not await b.start(key, t, f"http://{HOST}:{PORTS.relay}", tag_ttl=ttl):
                    continue
                ok, secs, err = await measure.skopeo_pull(t.ref(img.repo, img.tag), b.profile.fill_timeout)
                if not ok:
                    r.error(key, t.name, f"warm pull failed: {err}")
                    t.stop()
                    continue
                await asyncio.sleep(ttl + 1)
                await relay.set_mode(mode)
                ok, secs, err = await measure.skopeo_pull(t.ref(img.repo, img.tag), limit)
                r.add(key, f"{mode}_pull_s", t.name, secs if ok else None, "s", ok=ok, error=err[:160])
                t.stop()
    finally:
        await relay.stop()
    for mode in ("down", "hung"):
        refs = {}
        for n in ("distribution", "nginx-cache"):
            d = r.data["tests"][key]["metrics"].get(f"{mode}_pull_s", {}).get("targets", {}).get(n)
            refs[n] = (f"{d['median']:.2f} s" if d and d["median"] is not None
                       else (d["details"][-1]["error"] if d else "n/a"))
        for w in b.wharfs:
            s = r.med(key, f"{mode}_pull_s", w)
            r.check(key, f"pull with upstream {mode} (s)", "succeeds, <= 5", s,
                    None if s is None and w in b.skip else (s is not None and s <= 5), refs, w)
