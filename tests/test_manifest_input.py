"""Hostile manifest bodies and paging parameters: each is a 400 with the spec's code, never a 500.

Every body below answered ``500 UNKNOWN`` before its field was type-checked (issue 8); a big
manifest is parsed off the event loop, and one listing more descriptors than
``limits.max_manifest_descriptors`` is refused.
"""

from __future__ import annotations

import json
import threading

import pytest

from support.images import OCI_MANIFEST, canonical_json, make_image, push_image

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DIGEST = "sha256:" + "a" * 64


def _manifest(**fields) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": DIGEST, "size": 2},
           "layers": []}
    doc.update(fields)
    return json.dumps(doc).encode()


def _layer(**fields) -> dict:
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": DIGEST, "size": 1, **fields}


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BAD_MANIFESTS = {
    "nested 100,000 deep": (_nested(100_000), OCI_MANIFEST),
    "nested in a field": (b'{"schemaVersion": 2, "layers": ' + _nested(100_000) + b"}", OCI_MANIFEST),
    "layers is a number": (_manifest(layers=5), OCI_MANIFEST),
    "manifests is a number": (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": 5}).encode(),
                              OCI_INDEX),
    "urls is a number": (_manifest(layers=[_layer(urls=5)]), OCI_MANIFEST),
    "urls holds a number": (_manifest(layers=[_layer(urls=[5])]), OCI_MANIFEST),
    "schema 1 fsLayers is a number": (json.dumps({"schemaVersion": 1, "fsLayers": 5}).encode(), SCHEMA1),
    "schema 1 layer without blobSum": (json.dumps({"schemaVersion": 1, "fsLayers": [{}]}).encode(), SCHEMA1),
    "schema 1 layer is a string": (json.dumps({"schemaVersion": 1, "fsLayers": ["x"]}).encode(), SCHEMA1),
    "size 1e400": (_manifest(layers=[_layer(size="SIZE")]).replace(b'"SIZE"', b"1e400"), OCI_MANIFEST),
    "size NaN": (_manifest(layers=[_layer(size="SIZE")]).replace(b'"SIZE"', b"NaN"), OCI_MANIFEST),
    "size is a float": (_manifest(layers=[_layer(size=1.5)]), OCI_MANIFEST),
    "size is a boolean": (_manifest(layers=[_layer(size=True)]), OCI_MANIFEST),
    "size is a string": (_manifest(layers=[_layer(size="1")]), OCI_MANIFEST),
    "size beyond int64": (_manifest(layers=[_layer(size=2**63)]), OCI_MANIFEST),
    "size with 5,000 digits": (_manifest(layers=[_layer(size="SIZE")]).replace(b'"SIZE"', b"9" * 5000),
                               OCI_MANIFEST),
    "mediaType is a number": (_manifest(mediaType=5), OCI_MANIFEST),
    "mediaType is a number, no manifest Content-Type": (_manifest(mediaType=5), "application/octet-stream"),
    "mediaType is a list, no manifest Content-Type": (_manifest(mediaType=[OCI_MANIFEST]), "application/octet-stream"),
    "layer mediaType is a number": (_manifest(layers=[_layer(mediaType=5)]), OCI_MANIFEST),
    "digest is a number": (_manifest(layers=[_layer(digest=5)]), OCI_MANIFEST),
    "digest is an object": (_manifest(layers=[_layer(digest={"a": 1})]), OCI_MANIFEST),
    "digest ends in a newline": (_manifest(layers=[_layer(digest=DIGEST + "\n")]), OCI_MANIFEST),
    "annotations is a list": (_manifest(annotations=["a"]), OCI_MANIFEST),
    "annotation value is a number": (_manifest(annotations={"a": 1}), OCI_MANIFEST),
    "subject is a string": (_manifest(subject="sha256:x"), OCI_MANIFEST),
    "subject is a list": (_manifest(subject=[DIGEST]), OCI_MANIFEST),
    "config is a number": (_manifest(config=5), OCI_MANIFEST),
    "config is a list": (_manifest(config=[]), OCI_MANIFEST),
    "artifactType is a number": (_manifest(artifactType=5), OCI_MANIFEST),
    "a layer is a string": (_manifest(layers=["x"]), OCI_MANIFEST),
    "not UTF-8": (b'{"schemaVersion": 2, "mediaType": "\xff\xfe"}', OCI_MANIFEST),
}


@pytest.mark.parametrize("body,content_type", BAD_MANIFESTS.values(), ids=BAD_MANIFESTS.keys())
async def test_a_malformed_manifest_is_manifest_invalid(make_wharf, repo_name, body, content_type):
    wharf = await make_wharf()
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/bad", data=body, headers={"Content-Type": content_type})
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["errors"][0]["code"] == "MANIFEST_INVALID"


@pytest.mark.parametrize("n", ["%C2%B2", "%E2%91%A0", "%D9%A3", "-1", "1.0", "", "9" * 5000, "1000000000"])
@pytest.mark.parametrize("path", ["/v2/_catalog", "/v2/{repo}/tags/list"])
async def test_a_page_size_that_is_not_a_plain_number_is_pagination_number_invalid(make_wharf, repo_name, n, path):
    wharf = await make_wharf()
    await push_image(wharf.url, repo_name, make_image("paging", (10,)), tag="v1")
    resp = await wharf.client.get(path.format(repo=repo_name) + f"?n={n}")
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


async def test_a_page_size_with_leading_zeros_still_pages(make_wharf, repo_name):
    wharf = await make_wharf()
    image = make_image("paging-zeros", (10,))
    await push_image(wharf.url, repo_name, image, tag="a")
    await push_image(wharf.url, repo_name, image, tag="b")
    resp = await wharf.client.get(f"/v2/{repo_name}/tags/list?n=0001")
    assert resp.status == 200
    assert (await resp.json())["tags"] == ["a"]


@pytest.mark.parametrize("name", ["team/app%0A", "team/app%0D%0A"])
async def test_a_name_with_a_trailing_newline_is_name_invalid(make_wharf, name):
    wharf = await make_wharf()
    resp = await wharf.client.post(f"/v2/{name}/blobs/uploads/")
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "NAME_INVALID"


async def test_a_tag_with_a_trailing_newline_is_refused(make_wharf, repo_name):
    wharf = await make_wharf()
    image = make_image("newline-tag", (10,))
    await push_image(wharf.url, repo_name, image, tag="v1")
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/v2%0A", data=image.manifest,
                                  headers={"Content-Type": image.media_type})
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "MANIFEST_INVALID"
    tags = await (await wharf.client.get(f"/v2/{repo_name}/tags/list")).json()
    assert tags["tags"] == ["v1"]


# --- big manifests --------------------------------------------------------------------------------
def _many_layers(count: int) -> bytes:
    """An image manifest listing ``count`` small layers (~95 bytes each), as in issue 8's report."""
    return canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": DIGEST, "size": 2},
                           "layers": [{"digest": DIGEST, "size": i} for i in range(count)]})


async def test_more_descriptors_than_the_limit_is_manifest_invalid(make_wharf, repo_name):
    wharf = await make_wharf(limits={"max_manifest_descriptors": 100})
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/big", data=_many_layers(101),
                                  headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 400
    error = (await resp.json())["errors"][0]
    assert error["code"] == "MANIFEST_INVALID" and "at most 100" in error["message"]


async def test_the_default_limit_refuses_a_manifest_of_36000_descriptors(make_wharf, repo_name):
    wharf = await make_wharf()
    body = _many_layers(36_000)
    assert len(body) < 4 * 1024 * 1024
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/big", data=body, headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 400
    assert "at most 10000" in (await resp.json())["errors"][0]["message"]


async def test_a_big_manifest_is_parsed_off_the_event_loop(make_wharf, repo_name, monkeypatch):
    """While a big body is parsed, the event loop's thread is free: the parse runs in another thread."""
    from proxy.oci import media

    parsed_in: list[threading.Thread] = []
    parse = media.parse_manifest

    def recording_parse(*args, **kwargs):
        parsed_in.append(threading.current_thread())
        return parse(*args, **kwargs)

    monkeypatch.setattr(media, "parse_manifest", recording_parse)
    wharf = await make_wharf()
    small = make_image("small-manifest", (10,), oci=True)
    await push_image(wharf.url, repo_name, small, tag="small")
    big = _many_layers(5_000)  # ~700 kB: a missing layer, but only after the parse
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/big", data=big, headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 404 and (await resp.json())["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    loop_thread = threading.current_thread()
    assert parsed_in[0] is loop_thread, "a small manifest is parsed in place"
    assert parsed_in[-1] is not loop_thread, "the big manifest was parsed on the event loop's thread"


async def test_the_references_of_a_big_manifest_are_checked_off_the_event_loop(make_wharf, repo_name, monkeypatch):
    """One stat and one metadata read per descriptor: for a big manifest that work runs in a thread."""
    from proxy.registry.local import LocalRegistry

    checked_in: list[threading.Thread] = []
    check = LocalRegistry._check_references

    def recording_check(self, *args, **kwargs):
        checked_in.append(threading.current_thread())
        return check(self, *args, **kwargs)

    monkeypatch.setattr(LocalRegistry, "_check_references", recording_check)
    wharf = await make_wharf()
    small = make_image("small-references", (10,), oci=True)
    await push_image(wharf.url, repo_name, small, tag="small")
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/big", data=_many_layers(2_000),
                                  headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 404 and (await resp.json())["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    loop_thread = threading.current_thread()
    assert checked_in[0] is loop_thread, "a small manifest is checked in place"
    assert checked_in[-1] is not loop_thread, "the big manifest's references were checked on the event loop"


async def test_a_flood_of_descriptors_is_refused_before_it_is_parsed(make_wharf, repo_name, monkeypatch):
    """json.loads holds the interpreter for its whole run, even in a thread: a body naming more
    digests than the limit allows is refused from a count of its bytes, never parsed."""
    from proxy.oci import media

    parsed: list[int] = []
    loads = media.json.loads
    monkeypatch.setattr(media.json, "loads", lambda body, *a, **k: parsed.append(len(body)) or loads(body, *a, **k))
    wharf = await make_wharf()
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/flood", data=_many_layers(36_000),
                                  headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 400 and "at most 10000" in (await resp.json())["errors"][0]["message"]
    assert parsed == [], "the flood went through json.loads"
