"""``wharf mirror sync``: a mirror list fetched from a real upstream through the pull-through path."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from proxy.http import keys
from proxy.mirror.lists import load_list
from proxy.mirror.sync_command import mirror_sync_of
from proxy.oci.digest import Digest
from support.accounts import add_token, add_user, basic
from support.fake_upstream import Fault
from support.images import MANIFEST_ACCEPT, make_image, push_image
from support.mirror import push_mirror_set, write_list
from support.wharf_serve import wharf_argv, wharf_env, write_config

HOST = "registry.test"


def _prefix(repo_name: str) -> str:
    return repo_name.replace("/", "-")


def _upstream_requests(wharf, method: str) -> float:
    """Requests Wharf sent upstream with ``method`` (any status), from its metrics."""
    metric = wharf.app[keys.METRICS].upstream_requests
    return sum(sample.value for family in metric.collect() for sample in family.samples
               if sample.name.endswith("_total") and sample.labels.get("method") == method)


async def _mirror_wharf(make_wharf, upstream_url: str, **overrides):
    return await make_wharf(named_upstreams={HOST: upstream_url}, **overrides)


async def test_sync_fetches_the_listed_tags_and_platform_subset_keeps_the_index_digest(
        registry_upstream, make_wharf, repo_name, tmp_path):
    prefix = _prefix(repo_name)
    pushed = await push_mirror_set(registry_upstream, prefix)
    wharf = await _mirror_wharf(make_wharf, registry_upstream)
    listing = load_list(write_list(tmp_path / "edge.yaml", [
        {"name": f"{HOST}/{prefix}/img", "tags": ["v1.0.0"]},
        {"name": f"{HOST}/{prefix}/multi", "tags": ["v1"], "platforms": ["linux/amd64"]},
    ]))
    report = await mirror_sync_of(wharf.app).sync(listing)

    assert [o.ok for o in report.images] == [True, True], [o.failed for o in report.images]
    records = wharf.app[keys.MIRROR_RECORDS].images("edge")
    img = records[f"{HOST}/{prefix}/img"]
    assert img.tags == {"v1.0.0": pushed.images["v1.0.0"].digest}
    multi = records[f"{HOST}/{prefix}/multi"]
    assert multi.tags == {"v1": pushed.index.digest}  # the index kept under upstream's digest
    amd64, arm64 = pushed.index.image_for("amd64"), pushed.index.image_for("arm64")
    blobs = wharf.app[keys.PULLTHROUGH]._blobs
    for digest in amd64.blobs:
        assert blobs.size(Digest.parse(digest)) is not None
    for digest in arm64.blobs:  # only the chosen platform's blobs were fetched
        assert blobs.size(Digest.parse(digest)) is None
    assert arm64.digest in multi.unmirrored and "linux/arm64" in multi.unmirrored[arm64.digest]
    # kept content (into: local, the default) is never evicted
    meta = wharf.app[keys.PULLTHROUGH]._meta
    assert all(meta.is_kept(d) for d in img.content())
    assert meta.unmirrored(arm64.digest) is not None

    # pulled by a client: the same bytes and digests as upstream
    resp = await wharf.client.get(f"/v2/{HOST}/{prefix}/multi/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.headers["Docker-Content-Digest"] == pushed.index.digest
    assert await resp.read() == pushed.index.manifest


async def test_a_second_sync_asks_upstream_only_with_head_and_fetches_nothing(
        registry_upstream, make_wharf, repo_name, tmp_path):
    prefix = _prefix(repo_name)
    await push_mirror_set(registry_upstream, prefix)
    wharf = await _mirror_wharf(make_wharf, registry_upstream, upstream_options={"tag_ttl": 0})
    listing = load_list(write_list(tmp_path / "l.yaml", [
        {"name": f"{HOST}/{prefix}/img", "tags": ["v1.0.0", "v1.2.0"]},
        {"name": f"{HOST}/{prefix}/multi", "tags": ["v1"]}]))
    sync = mirror_sync_of(wharf.app)
    first = await sync.sync(listing)
    assert all(o.ok for o in first.images)
    assert sum(o.fetched_blobs for o in first.images) > 0
    gets_before = _upstream_requests(wharf, "GET")

    second = await sync.sync(listing)
    assert all(o.ok for o in second.images)
    assert sum(o.fetched_blobs for o in second.images) == 0
    assert sum(o.present_bytes for o in second.images) == sum(o.present_bytes + o.fetched_bytes
                                                              for o in first.images)
    assert _upstream_requests(wharf, "GET") == gets_before  # stale tags: HEAD only, digests unchanged
    assert _upstream_requests(wharf, "HEAD") >= 3


async def test_shared_blobs_are_fetched_once_per_sync(registry_upstream, make_wharf, repo_name, tmp_path):
    prefix = _prefix(repo_name)
    image = make_image(f"{prefix}-shared", (4096, 70_000))
    for repo in ("a", "b", "c"):
        await push_image(registry_upstream, f"{prefix}/{repo}", image, tag="v1")
    wharf = await _mirror_wharf(make_wharf, registry_upstream)
    listing = load_list(write_list(tmp_path / "l.yaml", [
        {"name": f"{HOST}/{prefix}/{repo}", "tags": ["v1"]} for repo in ("a", "b", "c")]))
    report = await mirror_sync_of(wharf.app).sync(listing)
    assert all(o.ok for o in report.images)
    assert sum(o.fetched_blobs for o in report.images) == len(image.blobs)
    blob_gets = [s for s in wharf.app[keys.METRICS].upstream_requests.collect()[0].samples
                 if s.labels.get("method") == "GET"]
    assert sum(s.value for s in blob_gets if s.name.endswith("_total")) == len(image.blobs) + 3


async def test_tag_filters_regex_semver_and_newest(registry_upstream, make_wharf, repo_name, tmp_path):
    prefix = _prefix(repo_name)
    await push_mirror_set(registry_upstream, prefix)
    wharf = await _mirror_wharf(make_wharf, registry_upstream)
    name = f"{HOST}/{prefix}/img"
    cases = {
        "regex": ({"tag_regex": r"^v1\.[02]"}, ["v1.0.0", "v1.2.0"]),
        "semver": ({"semver": ">=1.2.0 <2"}, ["v1.2.0", "v1.3.1"]),
        "caret": ({"semver": "^1.0.0", "newest": 1}, ["v1.3.1"]),
        "newest": ({"newest": 2}, ["v1.3.1", "v2.0.0"]),
        "exact-and-pattern": ({"tags": ["latest"], "semver": "2.x"}, ["latest", "v2.0.0"]),
    }
    for list_name, (filters, expected) in cases.items():
        listing = load_list(write_list(tmp_path / f"{list_name}.yaml", [{"name": name, **filters}],
                                       name=list_name))
        report = await mirror_sync_of(wharf.app).sync(listing)
        assert report.images[0].tags == expected, (list_name, report)
        assert sorted(wharf.app[keys.MIRROR_RECORDS].images(list_name)[name].tags) == expected


async def test_referrers_travel_with_the_image_when_asked(registry_upstream, make_wharf, repo_name, tmp_path):
    prefix = _prefix(repo_name)
    pushed = await push_mirror_set(registry_upstream, prefix)
    wharf = await _mirror_wharf(make_wharf, registry_upstream)
    name = f"{HOST}/{prefix}/img"
    without = load_list(write_list(tmp_path / "plain.yaml", [{"name": name, "tags": ["v1.0.0"]}], name="plain"))
    await mirror_sync_of(wharf.app).sync(without)
    assert wharf.app[keys.MIRROR_RECORDS].images("plain")[name].referrers == {}

    listing = load_list(write_list(tmp_path / "sig.yaml", [{"name": name, "tags": ["v1.0.0"], "referrers": True}],
                                   name="signed"))
    report = await mirror_sync_of(wharf.app).sync(listing)
    assert report.images[0].ok, report
    image = wharf.app[keys.MIRROR_RECORDS].images("signed")[name]
    subject = pushed.images["v1.0.0"].digest
    assert [d["digest"] for d in image.referrers[subject]] == [pushed.signature.digest]
    assert pushed.signature.digest in image.manifests
    assert pushed.signature.payload.digest in image.blobs


async def test_failures_are_named_and_the_rest_is_recorded(registry_upstream, make_wharf, repo_name, tmp_path):
    prefix = _prefix(repo_name)
    await push_mirror_set(registry_upstream, prefix)
    wharf = await _mirror_wharf(make_wharf, registry_upstream)
    listing = load_list(write_list(tmp_path / "l.yaml", [
        {"name": f"{HOST}/{prefix}/img", "tags": ["v1.0.0", "v9.9.9"]},
        {"name": f"{HOST}/{prefix}/absent", "tags": ["v1"]},
        {"name": f"{prefix}/local-name", "tags": ["v1"]},
        {"name": f"{HOST}/{prefix}/none", "semver": ">=7"},
    ]))
    report = await mirror_sync_of(wharf.app).sync(listing)
    outcomes = {o.name: o for o in report.images}
    img = outcomes[f"{HOST}/{prefix}/img"]
    assert img.tags == ["v1.0.0"] and "v9.9.9" in img.failed
    assert "v1" in outcomes[f"{HOST}/{prefix}/absent"].failed
    assert "not on a configured upstream" in outcomes[f"{prefix}/local-name"].failed["*"]
    assert outcomes[f"{HOST}/{prefix}/none"].failed  # no tag list upstream, or no tag matched
    records = wharf.app[keys.MIRROR_RECORDS].images("l")
    assert list(records) == [f"{HOST}/{prefix}/img"] and list(records[f"{HOST}/{prefix}/img"].tags) == ["v1.0.0"]

    resp = await wharf.client.get("/api/mirror/status")
    assert resp.status == 200
    status = (await resp.json())["lists"][0]
    assert status["list"] == "l" and status["state"] == "failed"
    assert status["images"][f"{HOST}/{prefix}/img"]["state"] == "failed"
    assert "v9.9.9" in status["images"][f"{HOST}/{prefix}/img"]["last_error"]
    assert status["images"][f"{HOST}/{prefix}/img"]["bytes"] > 0


async def test_status_api_is_for_server_admins(registry_upstream, make_wharf, repo_name, tmp_path):
    wharf = await _mirror_wharf(make_wharf, registry_upstream, auth=None)
    resp = await wharf.client.get("/api/mirror/status")
    assert resp.status == 401 and "WWW-Authenticate" in resp.headers
    add_user(wharf.database, "dev")
    _, secret = add_token(wharf.database, "dev")
    resp = await wharf.client.get("/api/mirror/status", headers={"Authorization": basic("dev", secret)})
    assert resp.status == 403
    resp = await wharf.client.get("/api/mirror/status", headers=wharf.admin_headers)
    assert resp.status == 200 and await resp.json() == {"lists": []}
    # a server admin's read-only token reads it too (it changes nothing); a non-admin's full token does not
    _, read_only = add_token(wharf.database, "admin", ("read:packages",))
    resp = await wharf.client.get("/api/mirror/status", headers={"Authorization": basic("admin", read_only)})
    assert resp.status == 200
    _, everything = add_token(wharf.database, "dev", ("read:packages", "write:packages", "delete:packages"))
    resp = await wharf.client.get("/api/mirror/status", headers={"Authorization": basic("dev", everything)})
    assert resp.status == 403
    resp = await wharf.client.get("/api/mirror/status", headers={"Authorization": basic("dev", "wharf_pat_bogus")})
    assert resp.status == 401


async def test_metrics_report_images_bytes_failures_and_last_success(
        registry_upstream, make_wharf, repo_name, tmp_path):
    prefix = _prefix(repo_name)
    await push_mirror_set(registry_upstream, prefix)
    wharf = await _mirror_wharf(make_wharf, registry_upstream)
    good = load_list(write_list(tmp_path / "good.yaml", [{"name": f"{HOST}/{prefix}/img", "tags": ["v1.0.0"]}]))
    bad = load_list(write_list(tmp_path / "bad.yaml", [{"name": f"{HOST}/{prefix}/img", "tags": ["nope"]}]))
    before = time.time()
    await mirror_sync_of(wharf.app).sync(good)
    await mirror_sync_of(wharf.app).sync(bad)
    text = await (await wharf.client.get("/metrics")).text()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("wharf_mirror_")}
    assert samples['wharf_mirror_synced_images{list="good"}'] == 1
    assert samples['wharf_mirror_synced_bytes{list="good"}'] > 8192
    assert samples['wharf_mirror_failures{list="bad"}'] == 1
    assert samples['wharf_mirror_images{list="bad",state="failed"}'] == 1
    assert samples['wharf_mirror_last_success_timestamp_seconds{list="good"}'] >= before
    assert 'wharf_mirror_last_success_timestamp_seconds{list="bad"}' not in samples


async def test_a_list_change_releases_what_it_no_longer_keeps(registry_upstream, make_wharf, repo_name, tmp_path):
    prefix = _prefix(repo_name)
    pushed = await push_mirror_set(registry_upstream, prefix)
    wharf = await _mirror_wharf(make_wharf, registry_upstream)
    meta = wharf.app[keys.PULLTHROUGH]._meta
    path = tmp_path / "l.yaml"
    write_list(path, [{"name": f"{HOST}/{prefix}/img", "tags": ["v1.0.0", "v1.2.0"]}])
    await mirror_sync_of(wharf.app).sync(load_list(path))
    old = pushed.images["v1.0.0"]
    assert all(meta.is_kept(d) for d in old.blobs)
    write_list(path, [{"name": f"{HOST}/{prefix}/img", "tags": ["v1.2.0"]}])
    await mirror_sync_of(wharf.app).sync(load_list(path))
    assert not any(meta.is_kept(d) for d in old.blobs)
    assert all(meta.is_kept(d) for d in pushed.images["v1.2.0"].blobs)
    write_list(path, [{"name": f"{HOST}/{prefix}/img", "tags": ["v1.2.0"], "into": "cache"}])
    await mirror_sync_of(wharf.app).sync(load_list(path))
    assert not any(meta.is_kept(d) for d in pushed.images["v1.2.0"].blobs)  # a warm-up: evictable


# the command ---------------------------------------------------------------------------------

def _config_file(tmp_path: Path, upstream_url: str, **extra) -> Path:
    return write_config(tmp_path, {"storage": {"root": str(tmp_path / "store")},
                                   "upstreams": [{"name": HOST, "url": upstream_url, **extra.pop("upstream", {})}],
                                   "log": {"access_log": False}, **extra})


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(wharf_argv(*args), env=wharf_env(), capture_output=True, text=True, timeout=timeout)


async def test_the_command_prints_a_line_per_image_and_a_summary(registry_upstream, repo_name, tmp_path):
    prefix = _prefix(repo_name)
    await push_mirror_set(registry_upstream, prefix)
    config = _config_file(tmp_path, registry_upstream)
    good = write_list(tmp_path / "good.yaml", [{"name": f"{HOST}/{prefix}/img", "tags": ["v1.0.0"]},
                                               {"name": f"{HOST}/{prefix}/multi", "tags": ["v1"]}])
    done = await asyncio.to_thread(_run, "mirror", "sync", str(good), "--config", str(config))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{HOST}/{prefix}/") and "ok" in lines[0]
    assert "mirror list good: 2 of 2 images synced" in done.stdout and "fetched" in done.stdout
    again = await asyncio.to_thread(_run, "mirror", "sync", str(good), "--config", str(config))
    assert again.returncode == 0 and "fetched 0 blobs" in again.stdout and "already there" in again.stdout

    bad = write_list(tmp_path / "bad.yaml", [{"name": f"{HOST}/{prefix}/img", "tags": ["v1.0.0", "gone"]}])
    failed = await asyncio.to_thread(_run, "mirror", "sync", str(bad), "--config", str(config))
    assert failed.returncode == 1
    assert f"failed: {HOST}/{prefix}/img:gone:" in failed.stdout
    assert "Traceback" not in failed.stderr

    status = await asyncio.to_thread(_run, "mirror", "status", "--json", "--config", str(config))
    docs = {d["list"]: d for d in json.loads(status.stdout)["lists"]}
    assert docs["good"]["state"] == "done" and docs["bad"]["state"] == "failed"


async def test_bad_lists_are_refused_in_one_line(registry_upstream, tmp_path):
    config = _config_file(tmp_path, registry_upstream)
    cases = {
        "no-tags.yaml": {"images": [{"name": f"{HOST}/x/y"}]},
        "bad-platform.yaml": {"images": [{"name": f"{HOST}/x/y", "tags": ["v1"], "platforms": ["amd64"]}]},
        "bad-semver.yaml": {"images": [{"name": f"{HOST}/x/y", "semver": "not a range!"}]},
        "bad-regex.yaml": {"images": [{"name": f"{HOST}/x/y", "tag_regex": "("}]},
        "unknown-key.yaml": {"images": [{"name": f"{HOST}/x/y", "tags": ["v1"], "tagz": 1}]},
    }
    for file_name, doc in cases.items():
        path = tmp_path / file_name
        path.write_text(yaml.safe_dump(doc))
        done = await asyncio.to_thread(_run, "mirror", "sync", str(path), "--config", str(config))
        assert done.returncode == 2, (file_name, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and file_name in done.stderr and "Traceback" not in done.stderr
    missing = await asyncio.to_thread(_run, "mirror", "sync", str(tmp_path / "nope.yaml"), "--config", str(config))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


async def test_a_killed_sync_leaves_nothing_recorded_and_resumes(fake_upstream, registry_upstream, repo_name,
                                                                 tmp_path):
    """Killed mid-blob (a slow upstream), the image is not recorded; run again, it completes."""
    fake = await fake_upstream()
    image = make_image(f"{_prefix(repo_name)}-slow", (2048, 3 * 2**20))
    fake.add_image("bars/slow", image, tag="v1")
    fake.fault(fake.blob_path("bars/slow", image.layers[-1].digest), Fault(bytes_per_second=64 * 1024))
    config = _config_file(tmp_path, fake.url)
    listing = write_list(tmp_path / "slow.yaml", [{"name": f"{HOST}/bars/slow", "tags": ["v1"]}])
    process = subprocess.Popen(wharf_argv("mirror", "sync", str(listing), "--config", str(config)),
                               env=wharf_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tmp = tmp_path / "store" / "tmp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = [p for p in tmp.glob("fill-*.part")] if tmp.is_dir() else []
        if parts and parts[0].stat().st_size > 0:
            break
        await asyncio.sleep(0.05)
    else:
        process.kill()
        pytest.fail("the sync never started the slow blob")
    process.send_signal(signal.SIGKILL)
    process.wait(10)

    from proxy.config import load_config
    from proxy.mirror.commands import opened_wharf
    async with opened_wharf(load_config(config)) as app:
        assert app[keys.MIRROR_RECORDS].images("slow") == {}
        assert app[keys.PULLTHROUGH]._blobs.size(Digest.parse(image.layers[-1].digest)) is None
        doc = app[keys.MIRROR_STATUS].of("slow")
        assert doc["state"] == "running" and doc["images"][f"{HOST}/bars/slow"]["state"] == "syncing"

    fake.clear_faults()
    done = await asyncio.to_thread(_run, "mirror", "sync", str(listing), "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    async with opened_wharf(load_config(config)) as app:
        record = app[keys.MIRROR_RECORDS].images("slow")[f"{HOST}/bars/slow"]
        assert record.tags == {"v1": image.digest}
        assert app[keys.PULLTHROUGH]._blobs.size(Digest.parse(image.layers[-1].digest)) == image.layers[-1].size
    assert not [p for p in tmp.iterdir() if p.name.endswith(".part")]


async def test_two_syncs_of_one_list_do_not_run_at_once(fake_upstream, tmp_path):
    fake = await fake_upstream()
    image = make_image("busy", (2048, 2 * 2**20))
    fake.add_image("bars/busy", image, tag="v1")
    fake.fault(fake.blob_path("bars/busy", image.layers[-1].digest), Fault(bytes_per_second=256 * 1024))
    config = _config_file(tmp_path, fake.url)
    listing = write_list(tmp_path / "busy.yaml", [{"name": f"{HOST}/bars/busy", "tags": ["v1"]}])
    first = subprocess.Popen(wharf_argv("mirror", "sync", str(listing), "--config", str(config)),
                             env=wharf_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "store" / "mirror-busy.lock").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        second = await asyncio.to_thread(_run, "mirror", "sync", str(listing), "--config", str(config))
        assert second.returncode == 1 and "is running in another process" in second.stderr
    finally:
        first.kill()
        first.wait(10)


async def test_the_schedule_inside_serve_syncs_the_configured_lists(registry_upstream, make_wharf, repo_name,
                                                                    tmp_path):
    prefix = _prefix(repo_name)
    await push_mirror_set(registry_upstream, prefix)
    listing = write_list(tmp_path / "nightly.yaml", [{"name": f"{HOST}/{prefix}/img", "tags": ["v1.0.0"]}])
    wharf = await _mirror_wharf(make_wharf, registry_upstream,
                                mirror={"lists": [str(listing)], "schedule": "1s"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc = wharf.app[keys.MIRROR_STATUS].of("nightly")
        if doc and doc["state"] == "done":
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the scheduled sync did not run")
    assert doc["images"][f"{HOST}/{prefix}/img"]["state"] == "synced"
    assert list(wharf.app[keys.MIRROR_RECORDS].images("nightly")) == [f"{HOST}/{prefix}/img"]


async def test_on_a_terminal_the_sync_shows_live_progress(registry_upstream, repo_name, tmp_path):
    """Under a pseudo-terminal (script(1)) the display shows images, blobs, bytes, rate and ETA."""
    import shlex

    prefix = _prefix(repo_name)
    await push_mirror_set(registry_upstream, prefix, sizes=(1024, 600_000))
    config = _config_file(tmp_path, registry_upstream)
    listing = write_list(tmp_path / "tty.yaml", [{"name": f"{HOST}/{prefix}/img", "semver": ">=1"},
                                                 {"name": f"{HOST}/{prefix}/multi", "tags": ["v1"]}])
    command = " ".join(shlex.quote(a) for a in wharf_argv("mirror", "sync", str(listing), "--config", str(config)))
    env = {**wharf_env(), "COLUMNS": "160", "TERM": "xterm"}
    done = await asyncio.to_thread(subprocess.run, ["script", "-qec", command, "/dev/null"], env=env,
                                   capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout
    screen = done.stdout
    for word in ("images", "blobs", "bytes", "MB", "/s"):
        assert word in screen, (word, screen[-2000:])
    assert "2/2" in screen  # images done of all
    assert "mirror list tty: 2 of 2 images synced" in screen


async def test_a_rate_limited_upstream_fails_the_image_without_hammering_it(fake_upstream, make_wharf, tmp_path):
    from support.fake_upstream import rate_limited

    fake = await fake_upstream()
    images = {tag: make_image(f"limited-{tag}", (1024, 2048)) for tag in ("v1", "v2", "v3")}
    for tag, image in images.items():
        fake.add_image("bars/limited", image, tag=tag)
    fake.fault(fake.manifest_path("bars/limited", "v1"), rate_limited(retry_after=120))
    wharf = await _mirror_wharf(make_wharf, fake.url)
    listing = load_list(write_list(tmp_path / "l.yaml", [{"name": f"{HOST}/bars/limited",
                                                           "tags": ["v1", "v2", "v3"]}]))
    report = await mirror_sync_of(wharf.app).sync(listing)
    outcome = report.images[0]
    assert not outcome.ok and "v1" in outcome.failed
    assert "429" in outcome.failed["v1"] or "rate" in outcome.failed["v1"].lower()
    # once upstream said Retry-After, Wharf does not ask it again before then
    assert fake.count("GET", fake.manifest_path("bars/limited", "v1")) == 1
    assert fake.count("GET", fake.manifest_path("bars/limited", "v2")) + \
        fake.count("GET", fake.manifest_path("bars/limited", "v3")) == 0
    assert set(outcome.failed) == {"v1", "v2", "v3"}


async def test_a_sync_beside_a_running_server_is_served_and_reported_by_it(registry_upstream, repo_name, tmp_path):
    """``wharf serve`` (2 workers) and ``wharf mirror sync`` on one store: the server answers the
    synced tag from the store without asking upstream, and its status API shows the sync."""
    import aiohttp

    from support.images import basic_auth_header
    from support.servers import free_port
    from support.wharf_serve import add_admin, start_wharf

    prefix = _prefix(repo_name)
    pushed = await push_mirror_set(registry_upstream, prefix)
    port = free_port()
    config = {"listen": f"127.0.0.1:{port}", "workers": 2, "storage": {"root": str(tmp_path / "store")},
              "upstreams": [{"name": HOST, "url": registry_upstream}], "log": {"access_log": False}}
    server = await asyncio.to_thread(start_wharf, tmp_path, config)
    try:
        admin = await asyncio.to_thread(add_admin, server.url, server.config_path)
        listing = write_list(tmp_path / "beside.yaml", [{"name": f"{HOST}/{prefix}/img", "tags": ["v1.2.0"]}])
        done = await asyncio.to_thread(_run, "mirror", "sync", str(listing), "--config", str(server.config_path))
        assert done.returncode == 0, done.stdout + done.stderr
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/v2/{HOST}/{prefix}/img/manifests/v1.2.0",
                                   headers={"Accept": MANIFEST_ACCEPT}) as resp:
                assert resp.status == 200 and await resp.read() == pushed.images["v1.2.0"].manifest
            async with session.get(f"{server.url}/api/mirror/status", headers=basic_auth_header(admin)) as resp:
                docs = {d["list"]: d for d in (await resp.json())["lists"]}
            assert docs["beside"]["state"] == "done"
            async with session.get(f"{server.url}/metrics") as resp:
                text = await resp.text()
        assert 'wharf_mirror_synced_images{list="beside"} 1.0' in text
        upstream_gets = [line for line in text.splitlines()
                         if line.startswith("wharf_upstream_requests_total") and 'method="GET"' in line]
        assert upstream_gets == [], upstream_gets  # the server itself asked upstream for nothing
    finally:
        await asyncio.to_thread(server.stop)
