"""Attacks on mirroring and offline serving: hostile upstream answers, hostile or unlucky mirror
lists, and what kept content looks like after a list changes its mind."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from proxy.http import keys
from proxy.mirror.lists import MirrorListError, load_list
from proxy.mirror.records import IMPORT_HOLDER, MirroredImage
from proxy.mirror.sync_command import mirror_sync_of
from support.fake_upstream import FakeRegistry
from support.images import make_image
from support.mirror import write_list

HOST = "registry.test"


@pytest.fixture
async def hostile_upstream(aiohttp_server):
    """Factory: a fake registry whose tag lists are ``answer(request)`` (a web.Response)."""

    async def start(answer, referrers=None) -> FakeRegistry:
        fake = FakeRegistry()

        @web.middleware
        async def tags(request, handler):
            if request.path.endswith("/tags/list"):
                return answer(request)
            if referrers is not None and "/referrers/" in request.path:
                return referrers(request)
            return await handler(request)

        fake.app.middlewares.insert(1, tags)  # after the request log
        server = await aiohttp_server(fake.app)
        fake.url = str(server.make_url("")).rstrip("/")
        return fake

    return start


async def _wharf(make_wharf, fake, **overrides):
    return await make_wharf(named_upstreams={HOST: fake.url}, **overrides)


# the list --------------------------------------------------------------------------------------

def test_a_list_cannot_take_the_name_imports_keep_their_content_under(tmp_path):
    """A list named ``import`` would be the imports' holder: its sync would forget every imported image."""
    for path, doc in ((tmp_path / "a.yaml", {"name": IMPORT_HOLDER}), (tmp_path / f"{IMPORT_HOLDER}.yaml", {})):
        path.write_text(json.dumps({**doc, "images": [{"name": f"{HOST}/x", "tags": ["v1"]}]}))
        with pytest.raises(MirrorListError, match="reserved"):
            load_list(path)


# hostile tag lists -------------------------------------------------------------------------------

async def test_a_tag_list_whose_next_page_never_ends_does_not_hold_the_sync(hostile_upstream, make_wharf, tmp_path):
    fake = await hostile_upstream(lambda request: web.json_response(
        {"name": "bars/loop", "tags": ["v1"]},
        headers={"Link": '</v2/bars/loop/tags/list?n=1&last=v1>; rel="next"'}))
    image = make_image("loop", (1024,))
    fake.add_image("bars/loop", image, tag="v1")
    wharf = await _wharf(make_wharf, fake)
    listing = load_list(write_list(tmp_path / "l.yaml", [{"name": f"{HOST}/bars/loop", "tag_regex": "^v"}]))
    report = await asyncio.wait_for(mirror_sync_of(wharf.app).sync(listing), 60)
    assert report.images[0].tags == ["v1"], report
    assert fake.count("GET", "/v2/bars/loop/tags/list") <= 3


async def test_a_next_page_with_a_bad_n_fails_the_image_plainly(hostile_upstream, make_wharf, tmp_path):
    fake = await hostile_upstream(lambda request: web.json_response(
        {"name": "bars/badn", "tags": ["v1"] if "last" not in request.query else ["v2"]},
        headers={} if "last" in request.query else {"Link": '</v2/bars/badn/tags/list?n=x&last=v1>; rel="next"'}))
    fake.add_image("bars/badn", make_image("badn", (1024,)), tag="v1")
    wharf = await _wharf(make_wharf, fake)
    listing = load_list(write_list(tmp_path / "l.yaml", [{"name": f"{HOST}/bars/badn", "tag_regex": "^v"}]))
    report = await mirror_sync_of(wharf.app).sync(listing)
    assert report.images[0].tags == ["v1"], report
    assert not any("internal error" in why for why in report.images[0].failed.values())


async def test_tags_that_are_no_tags_in_upstreams_list_are_not_asked_for(hostile_upstream, make_wharf, tmp_path):
    junk = ["v1", 5, None, {"a": 1}, ["v1"], "bad tag", "-x", "v" * 200, True]
    fake = await hostile_upstream(lambda request: web.json_response({"name": "bars/junk", "tags": junk}))
    image = make_image("junk", (1024,))
    fake.add_image("bars/junk", image, tag="v1")
    wharf = await _wharf(make_wharf, fake)
    listing = load_list(write_list(tmp_path / "l.yaml", [{"name": f"{HOST}/bars/junk", "tag_regex": "."}]))
    report = await mirror_sync_of(wharf.app).sync(listing)
    assert report.images[0].ok, report.images[0].failed
    assert report.images[0].tags == ["v1"]


async def test_a_referrers_answer_naming_its_subject_or_no_digest_does_not_fail_the_image(
        hostile_upstream, make_wharf, tmp_path):
    image = make_image("selfref", (1024,))
    listed = [{"mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest)},
              {"mediaType": image.media_type, "digest": "sha256:zz", "size": 1}, "not a descriptor", {"digest": 5}]
    fake = await hostile_upstream(lambda request: web.json_response({"tags": ["v1"]}), referrers=lambda request:
                                  web.json_response({"schemaVersion": 2, "manifests": listed},
                                                    content_type="application/vnd.oci.image.index.v1+json"))
    fake.add_image("bars/selfref", image, tag="v1")
    wharf = await _wharf(make_wharf, fake)
    listing = load_list(write_list(tmp_path / "l.yaml", [{"name": f"{HOST}/bars/selfref", "tags": ["v1"],
                                                          "referrers": True}]))
    report = await mirror_sync_of(wharf.app).sync(listing)
    assert report.images[0].ok, report.images[0].failed
    record = wharf.app[keys.MIRROR_RECORDS].images("l")[f"{HOST}/bars/selfref"]
    assert record.referrers.get(image.digest, []) == []  # an image is no referrer of itself


# kept content --------------------------------------------------------------------------------------

async def test_a_cache_image_sharing_content_does_not_keep_it_once_the_kept_one_turns_cache(
        fake_upstream, make_wharf, tmp_path):
    """A (local) and B (cache) share every blob; A turned cache: nothing of the list is kept any more."""
    fake = await fake_upstream()
    image = make_image("shared-keep", (2048, 4096))
    fake.add_image("bars/a", image, tag="v1")
    fake.add_image("bars/b", image, tag="v1")
    wharf = await _wharf(make_wharf, fake)
    meta = wharf.app[keys.PULLTHROUGH]._meta
    path = tmp_path / "l.yaml"
    write_list(path, [{"name": f"{HOST}/bars/a", "tags": ["v1"]},
                      {"name": f"{HOST}/bars/b", "tags": ["v1"], "into": "cache"}])
    await mirror_sync_of(wharf.app).sync(load_list(path))
    assert all(meta.is_kept(d) for d in image.blobs)
    write_list(path, [{"name": f"{HOST}/bars/a", "tags": ["v1"], "into": "cache"},
                      {"name": f"{HOST}/bars/b", "tags": ["v1"], "into": "cache"}])
    await mirror_sync_of(wharf.app).sync(load_list(path))
    assert not any(meta.is_kept(d) for d in [image.digest, *image.blobs])


async def test_an_image_leaving_the_list_releases_what_only_cache_images_share(fake_upstream, make_wharf, tmp_path):
    fake = await fake_upstream()
    image = make_image("shared-drop", (2048,))
    fake.add_image("bars/a", image, tag="v1")
    fake.add_image("bars/b", image, tag="v1")
    wharf = await _wharf(make_wharf, fake)
    meta = wharf.app[keys.PULLTHROUGH]._meta
    path = tmp_path / "l.yaml"
    write_list(path, [{"name": f"{HOST}/bars/a", "tags": ["v1"]},
                      {"name": f"{HOST}/bars/b", "tags": ["v1"], "into": "cache"}])
    await mirror_sync_of(wharf.app).sync(load_list(path))
    write_list(path, [{"name": f"{HOST}/bars/b", "tags": ["v1"], "into": "cache"}])
    await mirror_sync_of(wharf.app).sync(load_list(path))
    assert not any(meta.is_kept(d) for d in [image.digest, *image.blobs])
    assert list(wharf.app[keys.MIRROR_RECORDS].images("l")) == [f"{HOST}/bars/b"]


# thousands of images --------------------------------------------------------------------------------

async def test_the_status_of_a_long_list_is_not_rewritten_at_every_change(fake_upstream, make_wharf, tmp_path):
    """Each write costs the whole document: at most one per ``WRITE_EVERY`` (and the last), not 2 per image."""
    from proxy.mirror import status as status_module

    fake = await fake_upstream()  # holds nothing: every image fails at once
    wharf = await _wharf(make_wharf, fake)
    names = [f"{HOST}/bars/missing{i}" for i in range(300)]
    listing = load_list(write_list(tmp_path / "long.yaml", [{"name": n, "tags": ["v1"]} for n in names]))
    mirror_status = wharf.app[keys.MIRROR_STATUS]
    writes = 0
    original = mirror_status._write

    def counted(name, doc):
        nonlocal writes
        writes += 1
        original(name, doc)

    mirror_status._write = counted
    started = asyncio.get_running_loop().time()
    report = await mirror_sync_of(wharf.app).sync(listing)
    elapsed = asyncio.get_running_loop().time() - started
    assert len(report.failed) == 300
    assert writes <= elapsed / status_module.WRITE_EVERY + 4, (writes, elapsed)
    doc = mirror_status.of("long")
    assert doc["state"] == "failed" and all(doc["images"][n]["state"] == "failed" for n in names)
    await asyncio.sleep(status_module.WRITE_EVERY * 2)  # nothing held back is written after the end
    assert mirror_status.of("long")["updated_at"] == doc["updated_at"]


# offline routes: odd input ------------------------------------------------------------------------

async def test_odd_references_on_offline_routes_are_clean_oci_errors(fake_upstream, make_wharf):
    nowhere = await fake_upstream()
    wharf = await make_wharf(named_upstreams={HOST: nowhere.url}, offline=True, auth=None)
    name = f"{HOST}/bars/img"
    cases = [
        (f"/v2/{name}/manifests/-bad", 400), (f"/v2/{name}/manifests/{'v' * 200}", 400),
        (f"/v2/{name}/manifests/sha256:zz", 400), (f"/v2/{name}/manifests/md5:{'a' * 32}", 400),
        (f"/v2/{name}/manifests/sha256:{'a' * 64}", 404), (f"/v2/{name}/manifests/v1", 404),
        (f"/v2/{name}/blobs/sha256:zz", 400), (f"/v2/{name}/blobs/sha256:{'a' * 64}", 404),
        (f"/v2/{name}/tags/list", 404), (f"/v2/{name}/tags/list?n=-1", 400), (f"/v2/{name}/tags/list?n=x", 400),
        (f"/v2/{name}/tags/list?n=999999999&last={'z' * 5000}", 404),
        (f"/v2/{name}/referrers/sha256:zz", 400),
        (f"/v2/{name}/referrers/sha256:{'a' * 64}?artifactType=%00%ff", 200),
    ]
    for path, status in cases:
        for method in ("GET", "HEAD"):
            resp = await wharf.client.request(method, path)
            assert resp.status == status, (method, path, resp.status, await resp.text())
            if method == "GET" and status != 200:
                assert (await resp.json())["errors"][0]["code"], path
    assert nowhere.requests == []


async def test_an_offline_tag_list_of_100k_tags_pages_correctly(fake_upstream, make_wharf):
    """Upstream's stored list (100,000 tags, some junk) merged with the mirrored tags, paged (off the loop)."""
    nowhere = await fake_upstream()
    wharf = await make_wharf(named_upstreams={HOST: nowhere.url}, offline=True, auth=None)
    meta = wharf.app[keys.PULLTHROUGH]._meta
    scope = f"{HOST}/bars/many"
    tags = [f"t{i:06d}" for i in range(100_000)]
    meta.set_document(f"tags:{scope}", {"body": json.dumps({"name": "bars/many", "tags": tags + [5, None]}),
                                        "link": None, "public": True, "readers": []})
    meta.set_document(f"mirror-tags:{scope}", ["mirrored"])
    resp = await wharf.client.get(f"/v2/{scope}/tags/list", params={"n": "3", "last": "t099998"})
    assert resp.status == 200 and (await resp.json())["tags"] == ["t099999"] and "Link" not in resp.headers
    resp = await wharf.client.get(f"/v2/{scope}/tags/list", params={"n": "2", "last": "mirrored"})
    assert (await resp.json())["tags"] == ["t000000", "t000001"] and "last=t000001" in resp.headers["Link"]
    whole = await (await wharf.client.get(f"/v2/{scope}/tags/list")).json()
    assert len(whole["tags"]) == 100_001 and whole["tags"][0] == "mirrored"
    assert nowhere.requests == []


async def test_metrics_read_each_lists_summary_not_its_images(fake_upstream, make_wharf, tmp_path):
    """With several workers each collects every second: the images of a long list are not read for it."""
    fake = await fake_upstream()
    wharf = await _wharf(make_wharf, fake)
    listing = load_list(write_list(tmp_path / "long.yaml", [{"name": f"{HOST}/bars/m{i}", "tags": ["v1"]}
                                                            for i in range(50)]))
    await mirror_sync_of(wharf.app).sync(listing)
    meta = wharf.app[keys.PULLTHROUGH]._meta
    read, original = [], meta.document
    meta.document = lambda key, fresh=False: (read.append(key), original(key, fresh))[1]
    try:
        text = await (await wharf.client.get("/metrics")).text()
    finally:
        meta.document = original
    assert 'wharf_mirror_images{list="long",state="failed"} 50.0' in text
    assert 'wharf_mirror_failures{list="long"} 50.0' in text
    assert "mirror-status:long" not in read, read


# the schedule ---------------------------------------------------------------------------------------

async def test_a_cron_schedule_that_never_comes_is_logged_not_a_dead_task(tmp_path, caplog):
    from proxy.config import MirrorConfig
    from proxy.mirror.schedule import run_schedule
    from proxy.storage.blobs import BlobStore
    from proxy.storage.space import StoreSpace
    from proxy.metrics import Metrics

    # refused when the config loads (test_mirror_lists.py); the scheduler survives one all the same
    config = MirrorConfig.model_construct(lists=(tmp_path / "gone.yaml",), schedule="0 0 31 2 *")  # February 31st
    blobs = BlobStore(tmp_path, StoreSpace(tmp_path, 0, Metrics()))
    await asyncio.wait_for(run_schedule(config, blobs, lambda: None), 10)
    assert "names no next time" in caplog.text


# the stored tag list ------------------------------------------------------------------------------

async def test_a_tag_list_learned_with_a_clients_credential_is_not_served_offline_to_anyone(
        fake_upstream, make_wharf, tmp_path):
    """Listed anonymously once, then (the repository turned private) with a client's credential: the
    stored list is that client's now, not public: an offline Wharf does not show it to anyone."""
    import base64

    from support.fake_upstream import ANY_PATH, Fault

    fake = await fake_upstream()
    image = make_image("listed", (1024,))
    fake.add_image("bars/r", image, tag="v1")
    bearer = fake.require_bearer(users={"someone": "their-password"})
    root = tmp_path / "store"
    online = await make_wharf(named_upstreams={HOST: fake.url}, storage={"root": str(root)}, auth=None)
    name = f"{HOST}/bars/r"
    assert (await (await online.client.get(f"/v2/{name}/tags/list")).json())["tags"] == ["v1"]
    fake.add_image("bars/r", image, tag="secret-release")
    bearer.private_repos.add("bars/r")
    token = (await (await online.client.get(
        "/token", params={"scope": f"repository:{name}:pull"},
        headers={"Authorization": "Basic " + base64.b64encode(b"someone:their-password").decode()})).json())["token"]
    resp = await online.client.get(f"/v2/{name}/tags/list", headers={"Authorization": f"Bearer {token}"})
    assert "secret-release" in (await resp.json())["tags"]
    fake.fault(ANY_PATH, Fault(status=503))
    stale = await online.client.get(f"/v2/{name}/tags/list")  # upstream down: the copy is not public any more
    assert "secret-release" not in await stale.text()
    await online.client.close()

    offline = await make_wharf(named_upstreams={HOST: fake.url}, storage={"root": str(root)}, offline=True, auth=None)
    resp = await offline.client.get(f"/v2/{name}/tags/list")
    assert resp.status == 404 and "secret-release" not in await resp.text()
