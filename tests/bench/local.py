"""Tests 10 and 11 (issue 9): local packages — manifest hits with the access model, and pushes.

Accounts are written straight into the Wharf's store database (``proxy.storage.database``, the
helpers of ``tests/support/accounts.py``), as an admin's tool would: the server admin ``bench`` and
one token with every scope. A package is made public by an UPDATE of its visibility and a bump of
the accounts revision, which every worker polls.

10. The big image is pushed with skopeo (as ``bench``) to the local packages ``bench/private`` and
    ``bench/public`` (then made public); then wrk (``-t2``, ``CONNECTIONS`` connections, Docker's
    Accept) GETs by tag: the pull-through cache hit (``upstream.local/bench/big:latest``, the figure
    of test 5, here at the same concurrency for the ratio), the public package anonymously and the
    private one with the token as Basic ``bench:wharf_pat_…``. Every answer must be a 2xx: wrk's
    non-2xx count is recorded, and a run that has any is a failed measurement.
11. The big image (512 MiB, one layer) and the 20 × 5 MiB one pushed to a fresh Wharf (as
    ``bench``) and a fresh distribution without ``proxy:`` (anonymous), interleaved, each push
    sampled for the peak RSS/PSS of the server's process tree. Modes: skopeo from a ``dir:``
    layout (one PATCH per blob with Content-Length: the whole blob in one request, see
    ``pusher``), the harness's pusher with 5 MiB PATCHes (Content-Range), and the harness's pusher
    streaming each blob in one PATCH with ``Transfer-Encoding: chunked`` (docker push's way, and
    skopeo's when it recompresses). Each push is checked by pulling the manifest back by tag.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select

from proxy.storage.database import Database, Package, bump_revision, database_url
from support.accounts import add_token, add_user, basic

from . import measure
from .profile import DOCKER_ACCEPT, HOST, MiB
from .pusher import http_push, skopeo_dir, skopeo_push
from .results_model import ratio
from .scenarios import Bench, guarded, profiled, rotate
from .servers import Target, Wharf

USER = "bench"
PUBLIC = "bench/public"
PRIVATE = "bench/private"
CONNECTIONS = 200
CHUNK = 5 * MiB


def _database(t: Wharf) -> Database:
    return Database(database_url(None, t.work / "data"))


def _local_url(t: Target, repo: str, kind: str, ref: str) -> str:
    return f"{t.base}/v2/{repo}/{kind}/{ref}"


async def _until(probe, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await probe():
            return True
        await asyncio.sleep(0.1)
    return False


async def open_account(t: Wharf) -> tuple[str, str]:
    """The server admin ``bench`` and a token with every scope; (Basic header, ``user:secret``)
    once Wharf answers ``/v2/`` with it (each worker reads the accounts revision every 0.1 s)."""
    if t.workers > 1:
        # a fresh multi-worker Wharf loses one worker to a race of the workers' schema creation
        # ("table namespaces already exists") and starts another 0.5 s later: let that happen first
        await asyncio.sleep(1.5)
    db = _database(t)
    try:
        add_user(db, USER, admin=True)
        _, secret = add_token(db, USER)
    finally:
        db.close()
    auth = basic(USER, secret)

    async def signed_in() -> bool:
        status, _ = await measure.fetch_status(f"{t.base}/v2/", auth=auth)
        return status == 200

    if not await _until(signed_in):
        raise RuntimeError("the bench account's token is not accepted on /v2/")
    return auth, f"{USER}:{secret}"


def set_visibility(t: Wharf, repository: str, visibility: str) -> None:
    """What ``wharf package visibility`` will do (tests/test_access.py's helper): UPDATE, bump."""
    db = _database(t)
    try:
        with db.session() as session:
            package = session.scalar(select(Package).where(Package.repository == repository))
            if package is None:
                raise RuntimeError(f"no package {repository} in {db.url}")
            package.visibility = visibility
            bump_revision(session)
    finally:
        db.close()


async def _answers(url: str, digest: str, auth: str | None = None) -> bool:
    status, headers = await measure.fetch_status(url, "GET", DOCKER_ACCEPT, auth=auth)
    return status == 200 and headers.get("Docker-Content-Digest") == digest


# ----------------------------------------------------------------------------- test 10

async def _prepare_local(b: Bench, key: str, t: Wharf) -> dict[str, tuple[str, dict[str, str]]] | None:
    """Push the big image to the private and the public package, warm the cached one; the three
    URLs measured, with their headers, once each answers the image's manifest."""
    r = b.results
    img = b.images["big"]
    auth, creds = await open_account(t)
    layout = skopeo_dir(b.store, img, b.work / "push-layouts" / "big")
    for repo in (PRIVATE, PUBLIC):
        ok, secs, err = await skopeo_push(layout, f"{HOST}:{t.port}/{repo}:{img.tag}", creds, b.profile.fill_timeout)
        if not ok:
            r.error(key, t.name, f"skopeo push to {repo} failed after {secs:.1f} s: {err}")
            return None
        r.note(key, f"{t.name}: skopeo pushed {img.pull_bytes / MiB:.0f} MiB to {repo} in {secs:.1f} s")
    await asyncio.to_thread(set_visibility, t, PUBLIC, "public")
    cases = {
        "cached": (t.url(img.repo, "manifests", img.tag), {}),
        "public": (_local_url(t, PUBLIC, "manifests", img.tag), {}),
        "private": (_local_url(t, PRIVATE, "manifests", img.tag), {"Authorization": auth}),
    }
    for name, (url, headers) in cases.items():
        if not await _until(lambda: _answers(url, img.digest, headers.get("Authorization")), 15):
            r.error(key, t.name, f"{name}: GET {url} does not answer the image's manifest")
            return None
    anonymous, _ = await measure.fetch_status(cases["private"][0], "GET", DOCKER_ACCEPT)
    r.note(key, f"{t.name}: anonymous GET of the private package's tag answers {anonymous} (expected 401)")
    if anonymous != 401:
        r.error(key, t.name, f"the private package answered {anonymous} to an anonymous GET")
    return cases


async def local_manifests(b: Bench) -> None:
    key = "10_local_manifest"
    r = b.results
    img = b.images["big"]
    r.test(key, f"Manifest GET by tag, {CONNECTIONS} connections (wrk -t2): pull-through cache hit, public "
                f"local package (anonymous), private local package (token)")
    prepared: dict[str, dict] = {}
    for t in b.pick("WHARF"):
        if not await b.start(key, t, b.upstream.url):
            continue
        cases = await guarded(b, key, t, _prepare_local(b, key, t))
        if cases:
            prepared[t.name] = cases
        else:
            t.stop()
    targets = [t for t in b.pick("WHARF") if t.name in prepared]
    for rep in range(b.profile.reps):
        for t in rotate(targets, rep):
            for case in rotate(list(prepared[t.name]), rep):
                url, headers = prepared[t.name][case]
                # re-warm: the repetitions outlast the cached tag's 60 s TTL
                await guarded(b, key, t, measure.fetch_status(url, "GET", DOCKER_ACCEPT,
                                                              auth=headers.get("Authorization")))
                await b.upstream.wait_idle()
                async with profiled(b, key, case, t, rep):
                    load = await guarded(b, key, t, measure.wrk(url, b.profile.load_seconds, CONNECTIONS, 2,
                                                                DOCKER_ACCEPT, headers))
                if not load:
                    continue
                failed = load.errors > 0
                if failed:
                    r.error(key, t.name, f"{case}: {load.non_2xx} non-2xx answers and "
                                         f"{load.errors - load.non_2xx} socket errors of {load.requests}")
                # a run with errors is a failed measurement: its figures are not counted
                r.add(key, f"{case}_rps", t.name, None if failed else load.rps, "req/s",
                      errors=load.errors, non_2xx=load.non_2xx, requests=load.requests)
                r.add(key, f"{case}_p99_ms", t.name, None if failed else load.p99_ms, "ms")
                r.add(key, f"{case}_non_2xx", t.name, load.non_2xx, "")
    for t in targets:
        t.stop()
    r.note(key, f"image: {img.repo}:{img.tag} ({img.media_type}, manifest {img.manifest_size} B), pushed "
                f"as {PRIVATE} and {PUBLIC} by the server admin '{USER}'; Authorization: Basic {USER}:wharf_pat_…")
    for w in b.wharfs:
        cached = r.med(key, "cached_rps", w)
        p99 = {c: r.med(key, f"{c}_p99_ms", w) for c in ("cached", "public", "private")}
        refs = {"cached req/s": cached, "public req/s": r.med(key, "public_rps", w),
                "private req/s": r.med(key, "private_rps", w)}
        pub = ratio(r.med(key, "public_rps", w), cached)
        r.check(key, "public local package req/s / cached (anonymous)", ">= 0.95 (reaches it)", pub,
                None if pub is None else pub >= 0.95, {**refs, "p99 ms": p99}, w)
        priv = ratio(r.med(key, "private_rps", w), cached)
        r.check(key, "private local package req/s / cached (token)", ">= 0.5", priv,
                None if priv is None else priv >= 0.5, refs, w)
        found = r.data["tests"][key]["metrics"]
        bad = sum(s or 0 for c in ("cached", "public", "private")
                  for s in found.get(f"{c}_non_2xx", {}).get("targets", {}).get(w, {}).get("samples", []))
        runs = sum(len(found.get(f"{c}_non_2xx", {}).get("targets", {}).get(w, {}).get("samples", []))
                   for c in ("cached", "public", "private"))
        r.check(key, "non-2xx answers in all runs", "0", bad, None if not runs else bad == 0,
                {"runs": runs}, w)


# ----------------------------------------------------------------------------- test 11

MODES = {
    "skopeo": "skopeo copy dir: → docker://, one PATCH per blob with Content-Length",
    "patch5m": "harness pusher, 5 MiB PATCHes with Content-Range",
    "stream": "harness pusher, one PATCH per blob with Transfer-Encoding: chunked",
}
PUSH_IMAGES = ("big", "layers")


async def _push_once(b: Bench, t: Target, image: str, mode: str, auth: str | None, creds: str | None,
                     repo: str) -> tuple[bool, float, str]:
    img = b.images[image]
    if mode == "skopeo":
        layout = skopeo_dir(b.store, img, b.work / "push-layouts" / image)
        return await skopeo_push(layout, f"{HOST}:{t.port}/{repo}:{img.tag}", creds, b.profile.fill_timeout)
    return await http_push(t.base, repo, img.tag, b.store, img, auth, CHUNK if mode == "patch5m" else None,
                              b.profile.fill_timeout)


async def pushes(b: Bench) -> None:
    key = "11_push"
    r = b.results
    sizes = ", ".join(f"{n} {b.images[n].pull_bytes / MiB:.0f} MiB in {len(b.images[n].layers)} layer(s)"
                      for n in PUSH_IMAGES)
    r.test(key, f"Push to an empty registry ({sizes}): Wharf (token) vs distribution (no proxy), "
                f"time and peak memory of the server's process tree")
    targets = b.pick("WHARF", "distribution-registry")
    repo = "bench/pushed"
    for rep in range(b.profile.reps):
        for image in PUSH_IMAGES:
            for mode in MODES:
                for t in rotate(targets, rep):
                    if t.name in b.skip or not await b.start(key, t, b.upstream.url):
                        continue
                    try:
                        auth = creds = None
                        if isinstance(t, Wharf):
                            auth, creds = await open_account(t)
                        idle = measure.RssSampler.tree_rss(t.pid)
                        with measure.RssSampler(t.pid) as rss:
                            ok, secs, err = await _push_once(b, t, image, mode, auth, creds, repo)
                        img = b.images[image]
                        if ok and not await _answers(_local_url(t, repo, "manifests", img.tag), img.digest, auth):
                            ok, err = False, "the pushed tag does not answer the image's manifest"
                    except Exception as exc:   # reported, the run goes on
                        ok, secs, err, idle, rss = False, 0.0, f"{type(exc).__name__}: {exc}"[:300], 0, None
                    finally:
                        t.stop()
                    if not ok:
                        r.error(key, t.name, f"{image} {mode}: push failed after {secs:.1f} s: {err}")
                    r.add(key, f"{image}_{mode}_s", t.name, secs if ok else None, "s", error=err[:160])
                    if rss is not None:
                        r.add(key, f"{image}_{mode}_peak_rss_mib", t.name, rss.peak / MiB if ok else None, "MiB",
                              idle_mib=round(idle / MiB, 1))
                        r.add(key, f"{image}_{mode}_peak_pss_mib", t.name, rss.peak_pss / MiB if ok else None,
                              "MiB")
                        # what the push itself added over the idle process tree
                        r.add(key, f"{image}_{mode}_rss_growth_mib", t.name,
                              (rss.peak - idle) / MiB if ok else None, "MiB")
    for mode, what in MODES.items():
        r.note(key, f"{mode}: {what}")
    r.note(key, "each push goes to a target started empty; skopeo may send several layers at once "
                "(containers/image copies layers in parallel), the harness pusher sends one blob at a time; "
                "Wharf checks the token on every request")
    ref = "distribution-registry"
    for w in b.wharfs:
        for image in PUSH_IMAGES:
            for mode in MODES:
                s = ratio(r.med(key, f"{image}_{mode}_s", w), r.med(key, f"{image}_{mode}_s", ref))
                rss = ratio(r.med(key, f"{image}_{mode}_peak_rss_mib", w),
                            r.med(key, f"{image}_{mode}_peak_rss_mib", ref))
                pss = ratio(r.med(key, f"{image}_{mode}_peak_pss_mib", w),
                            r.med(key, f"{image}_{mode}_peak_pss_mib", ref))
                refs = {"Wharf s": r.med(key, f"{image}_{mode}_s", w),
                        "distribution s": r.med(key, f"{image}_{mode}_s", ref),
                        "Wharf RSS MiB": r.med(key, f"{image}_{mode}_peak_rss_mib", w),
                        "distribution RSS MiB": r.med(key, f"{image}_{mode}_peak_rss_mib", ref),
                        "PSS ratio": pss,
                        "RSS growth MiB Wharf": r.med(key, f"{image}_{mode}_rss_growth_mib", w),
                        "distribution": r.med(key, f"{image}_{mode}_rss_growth_mib", ref)}
                r.check(key, f"{image} {mode}: push time / distribution; peak RSS / distribution",
                        "reported (no goal)", None if s is None else f"{s:.2f}; {rss:.2f}" if rss else f"{s:.2f}",
                        None, refs, w)
