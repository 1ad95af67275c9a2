"""The embedded registry's push path over HTTP: uploads, manifests, deletes, catalog, and every error.

Each test starts a pure local Wharf (no upstream) unless it needs an upstream namespace; bodies are
deterministic (``support.images``), and what is checked is what a client sees: statuses, OCI error
codes, headers, and the bytes pulled back.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from support.images import (MANIFEST_ACCEPT, OCI_MANIFEST, canonical_json, make_image, make_index,
                            push_image, sha256_digest)

OCTET = {"Content-Type": "application/octet-stream"}


async def error_code(resp) -> str:
    body = await resp.json()
    return body["errors"][0]["code"]


async def start(wharf, repo: str) -> str:
    resp = await wharf.client.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, await resp.text()
    assert resp.headers["Range"] == "0-0"
    assert resp.headers["Docker-Upload-UUID"] in resp.headers["Location"]
    return resp.headers["Location"]


async def upload(wharf, repo: str, data: bytes) -> str:
    """POST + PUT ?digest= (one request with the body); returns the digest."""
    location = await start(wharf, repo)
    digest = sha256_digest(data)
    resp = await wharf.client.put(f"{location}?digest={digest}", data=data, headers=OCTET)
    assert resp.status == 201, await resp.text()
    return digest


async def finish_and_read_back(wharf, repo: str, location: str, data: bytes) -> None:
    """Close an upload with ``PUT ?digest=`` (no body) and check the blob reads back as ``data``."""
    digest = sha256_digest(data)
    resp = await wharf.client.put(f"{location}?digest={digest}")
    assert resp.status == 201
    resp = await wharf.client.get(f"/v2/{repo}/blobs/{digest}")
    assert await resp.read() == data


def store_root(wharf):
    from proxy.http.keys import CONFIG
    return wharf.app[CONFIG].storage.root


def leftovers(wharf) -> list[str]:
    """Files in the upload and temp areas: what a failed or abandoned push may leave behind."""
    root = store_root(wharf)
    return sorted(os.listdir(root / "uploads")) + sorted(os.listdir(root / "tmp"))


# --- whole images -------------------------------------------------------------------------------

async def test_push_and_pull_back_image_byte_identical(make_wharf, repo_name):
    wharf = await make_wharf()
    image = make_image("push-basic", (1024, 300_000))
    await push_image(wharf.url, repo_name, image, tag="1.0")

    resp = await wharf.client.get(f"/v2/{repo_name}/manifests/1.0", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200
    assert await resp.read() == image.manifest
    assert resp.headers["Docker-Content-Digest"] == image.digest
    assert resp.headers["Content-Type"] == image.media_type
    for digest, data in image.blobs.items():
        resp = await wharf.client.get(f"/v2/{repo_name}/blobs/{digest}")
        assert resp.status == 200
        assert await resp.read() == data
    resp = await wharf.client.get(f"/v2/{repo_name}/tags/list")
    assert await resp.json() == {"name": repo_name, "tags": ["1.0"]}
    assert leftovers(wharf) == []


async def test_push_index_by_tag_and_children_by_digest(make_wharf, repo_name):
    wharf = await make_wharf()
    index = make_index("push-index", (2048,), oci=True)
    await push_image(wharf.url, repo_name, index, tag="multi")
    resp = await wharf.client.get(f"/v2/{repo_name}/manifests/multi", headers={"Accept": MANIFEST_ACCEPT})
    assert await resp.read() == index.manifest
    for child in index.images:
        resp = await wharf.client.get(f"/v2/{repo_name}/manifests/{child.digest}",
                                      headers={"Accept": MANIFEST_ACCEPT})
        assert await resp.read() == child.manifest


async def test_index_referencing_a_missing_child_is_refused(make_wharf, repo_name):
    wharf = await make_wharf()
    index = make_index("push-index-missing", (512,), oci=True)
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/x", data=index.manifest,
                                  headers={"Content-Type": index.media_type})
    assert resp.status == 404
    assert await error_code(resp) == "MANIFEST_BLOB_UNKNOWN"


# --- uploads --------------------------------------------------------------------------------------

async def test_monolithic_post_with_digest(make_wharf, repo_name):
    wharf = await make_wharf()
    data = b"monolithic" * 1000
    digest = sha256_digest(data)
    resp = await wharf.client.post(f"/v2/{repo_name}/blobs/uploads/?digest={digest}", data=data, headers=OCTET)
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/{repo_name}/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    resp = await wharf.client.get(resp.headers["Location"])
    assert await resp.read() == data


async def test_monolithic_post_with_wrong_digest_is_refused_and_leaves_nothing(make_wharf, repo_name):
    wharf = await make_wharf()
    wrong = sha256_digest(b"something else")
    resp = await wharf.client.post(f"/v2/{repo_name}/blobs/uploads/?digest={wrong}", data=b"data", headers=OCTET)
    assert resp.status == 400
    assert await error_code(resp) == "DIGEST_INVALID"
    assert (await wharf.client.head(f"/v2/{repo_name}/blobs/{wrong}")).status == 404
    assert leftovers(wharf) == []


async def test_chunked_patch_with_content_range_then_put(make_wharf, repo_name):
    wharf = await make_wharf()
    data = os.urandom(250_000)
    location = await start(wharf, repo_name)
    for offset in range(0, len(data), 100_000):
        chunk = data[offset:offset + 100_000]
        resp = await wharf.client.patch(location, data=chunk, headers={
            **OCTET, "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
        assert resp.status == 202, await resp.text()
        assert resp.headers["Range"] == f"0-{offset + len(chunk) - 1}"
        location = resp.headers["Location"]
    await finish_and_read_back(wharf, repo_name, location, data)


async def test_out_of_order_chunk_is_416_and_the_session_survives(make_wharf, repo_name):
    wharf = await make_wharf()
    data = b"0123456789" * 100
    location = await start(wharf, repo_name)
    resp = await wharf.client.patch(location, data=data[:500], headers={**OCTET, "Content-Range": "0-499"})
    assert resp.status == 202
    resp = await wharf.client.patch(location, data=data[600:700], headers={**OCTET, "Content-Range": "600-699"})
    assert resp.status == 416
    assert await error_code(resp) == "RANGE_INVALID"
    assert resp.headers["Location"] == location
    resp = await wharf.client.get(location)
    assert resp.status == 204
    assert resp.headers["Range"] == "0-499"
    # the closing PUT with an out-of-order final chunk is refused too
    resp = await wharf.client.put(f"{location}?digest={sha256_digest(data)}", data=data[501:],
                                  headers={**OCTET, "Content-Range": f"501-{len(data) - 1}"})
    assert resp.status == 416
    resp = await wharf.client.put(f"{location}?digest={sha256_digest(data)}", data=data[500:],
                                  headers={**OCTET, "Content-Range": f"500-{len(data) - 1}"})
    assert resp.status == 201


async def test_malformed_content_range_is_400(make_wharf, repo_name):
    wharf = await make_wharf()
    location = await start(wharf, repo_name)
    resp = await wharf.client.patch(location, data=b"abc", headers={**OCTET, "Content-Range": "zero-two"})
    assert resp.status == 400
    assert await error_code(resp) == "BLOB_UPLOAD_INVALID"
    resp = await wharf.client.patch(location, data=b"abc", headers={**OCTET, "Content-Range": "0-9"})
    assert resp.status == 400  # declares 10 bytes, Content-Length says 3


async def test_chunked_transfer_encoding_bodies_stream_in(make_wharf, repo_name):
    """dockerd sends PATCH bodies with Transfer-Encoding: chunked and no Content-Range."""
    wharf = await make_wharf()
    parts = [os.urandom(64 * 1024) for _ in range(40)]
    data = b"".join(parts)

    async def body():
        for part in parts:
            yield part

    location = await start(wharf, repo_name)
    resp = await wharf.client.patch(location, data=body(), headers=OCTET)
    assert resp.status == 202
    assert resp.headers["Range"] == f"0-{len(data) - 1}"
    await finish_and_read_back(wharf, repo_name, resp.headers["Location"], data)


async def test_put_with_wrong_digest_is_400_and_drops_the_session(make_wharf, repo_name):
    wharf = await make_wharf()
    location = await start(wharf, repo_name)
    resp = await wharf.client.patch(location, data=b"payload", headers=OCTET)
    assert resp.status == 202
    resp = await wharf.client.put(f"{location}?digest={sha256_digest(b'other')}")
    assert resp.status == 400
    assert await error_code(resp) == "DIGEST_INVALID"
    assert (await wharf.client.get(location)).status == 404
    assert leftovers(wharf) == []


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64, "nonsense"])
async def test_malformed_or_unsupported_digests_are_400(make_wharf, repo_name, digest):
    wharf = await make_wharf()
    location = await start(wharf, repo_name)
    resp = await wharf.client.put(f"{location}?digest={digest}", data=b"x", headers=OCTET)
    assert resp.status == 400
    assert await error_code(resp) == "DIGEST_INVALID"
    paths = [f"/v2/{repo_name}/blobs/{digest}"]
    if ":" in digest:  # without a colon a manifest reference is a tag
        paths.append(f"/v2/{repo_name}/manifests/{digest}")
    for path in paths:
        resp = await wharf.client.get(path)
        assert resp.status == 400, path
        assert await error_code(resp) == "DIGEST_INVALID"
    resp = await wharf.client.post(f"/v2/{repo_name}/blobs/uploads/?mount={digest}&from={repo_name}")
    assert resp.status == 400


async def test_put_without_digest_is_400(make_wharf, repo_name):
    wharf = await make_wharf()
    location = await start(wharf, repo_name)
    resp = await wharf.client.put(location, data=b"x", headers=OCTET)
    assert resp.status == 400
    assert await error_code(resp) == "DIGEST_INVALID"


async def test_sha512_uploads(make_wharf, repo_name):
    wharf = await make_wharf()
    data = os.urandom(10_000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    # announced with digest-algorithm, hashed as it arrives
    resp = await wharf.client.post(f"/v2/{repo_name}/blobs/uploads/?digest-algorithm=sha512")
    assert resp.status == 202
    resp = await wharf.client.put(f"{resp.headers['Location']}?digest={digest}", data=data, headers=OCTET)
    assert resp.status == 201
    # not announced: hashed from the file at the end
    location = await start(wharf, repo_name + "-b")
    resp = await wharf.client.put(f"{location}?digest={digest}", data=data, headers=OCTET)
    assert resp.status == 201
    resp = await wharf.client.get(f"/v2/{repo_name}-b/blobs/{digest}")
    assert await resp.read() == data
    resp = await wharf.client.post(f"/v2/{repo_name}/blobs/uploads/?digest-algorithm=md5")
    assert resp.status == 400
    assert await error_code(resp) == "DIGEST_INVALID"


async def test_unknown_foreign_and_cancelled_uploads_are_blob_upload_unknown(make_wharf, repo_name):
    wharf = await make_wharf()
    resp = await wharf.client.patch(f"/v2/{repo_name}/blobs/uploads/{'0' * 32}", data=b"x")
    assert resp.status == 404
    assert await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    resp = await wharf.client.get(f"/v2/{repo_name}/blobs/uploads/..%2F..%2Fmeta")
    assert resp.status == 404
    location = await start(wharf, repo_name)
    upload_id = location.rsplit("/", 1)[1]
    resp = await wharf.client.get(f"/v2/{repo_name}-other/blobs/uploads/{upload_id}")
    assert resp.status == 404
    assert await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    resp = await wharf.client.delete(location)
    assert resp.status == 204
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        resp = await wharf.client.request(method, f"{location}?digest={sha256_digest(b'')}")
        assert resp.status == 404, method
        assert await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    assert leftovers(wharf) == []


async def test_upload_status_reports_progress(make_wharf, repo_name):
    wharf = await make_wharf()
    location = await start(wharf, repo_name)
    resp = await wharf.client.get(location)
    assert resp.status == 204
    assert resp.headers["Range"] == "0-0"
    await wharf.client.patch(location, data=b"x" * 1234, headers=OCTET)
    resp = await wharf.client.get(location)
    assert resp.headers["Range"] == "0-1233"
    assert resp.headers["Location"] == location


async def test_empty_blob(make_wharf, repo_name):
    wharf = await make_wharf()
    digest = await upload(wharf, repo_name, b"")
    resp = await wharf.client.get(f"/v2/{repo_name}/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == b""


# --- limits ---------------------------------------------------------------------------------------

async def test_declared_size_over_the_layer_limit_is_refused_before_reading(make_wharf, repo_name):
    wharf = await make_wharf(limits={"max_layer_bytes": 1000})
    location = await start(wharf, repo_name)
    resp = await wharf.client.patch(location, data=b"x" * 1001, headers=OCTET)
    assert resp.status == 400
    assert await error_code(resp) == "SIZE_INVALID"
    assert (await wharf.client.get(location)).status == 404  # the session is gone with its data
    digest = sha256_digest(b"x" * 1001)
    resp = await wharf.client.post(f"/v2/{repo_name}/blobs/uploads/?digest={digest}", data=b"x" * 1001,
                                   headers=OCTET)
    assert resp.status == 400
    assert await error_code(resp) == "SIZE_INVALID"
    assert leftovers(wharf) == []


async def test_streamed_body_crossing_the_layer_limit_is_stopped(make_wharf, repo_name):
    wharf = await make_wharf(limits={"max_layer_bytes": 100_000})

    async def endless():
        for _ in range(100):
            yield b"y" * 10_000

    location = await start(wharf, repo_name)
    resp = await wharf.client.patch(location, data=b"y" * 60_000, headers=OCTET)
    assert resp.status == 202
    resp = await wharf.client.patch(location, data=endless(), headers=OCTET)  # chunked: no declared size
    assert resp.status == 400
    assert await error_code(resp) == "SIZE_INVALID"
    assert leftovers(wharf) == []


async def test_idle_upload_expires_and_its_data_is_removed(make_wharf, repo_name):
    wharf = await make_wharf(limits={"upload_idle_seconds": 0.5})
    location = await start(wharf, repo_name)
    resp = await wharf.client.patch(location, data=b"z" * 5000, headers=OCTET)
    assert resp.status == 202
    await asyncio.sleep(0.7)
    resp = await wharf.client.patch(location, data=b"z", headers=OCTET)
    assert resp.status == 404
    assert await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    assert leftovers(wharf) == []


async def test_killed_push_leaves_no_blob_and_no_temp_file_after_expiry(make_wharf, repo_name):
    """A client dies mid-chunk: nothing becomes visible, and the background expiry removes its data."""
    wharf = await make_wharf(limits={"upload_idle_seconds": 1})
    data = os.urandom(2_000_000)
    digest = sha256_digest(data)
    location = await start(wharf, repo_name)
    host, port = wharf.client.server.host, wharf.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"PATCH {location} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n").encode())
    writer.write(data[:700_000])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()  # connection dropped mid-chunk
    await asyncio.sleep(0.2)

    assert (await wharf.client.head(f"/v2/{repo_name}/blobs/{digest}")).status == 404
    resp = await wharf.client.get(location)  # the bytes that arrived can be resumed from
    assert resp.status == 204
    assert int(resp.headers["Range"].split("-")[1]) < len(data) - 1
    assert leftovers(wharf) != []
    deadline = asyncio.get_running_loop().time() + 5
    while leftovers(wharf) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)  # the periodic expiry runs every upload_idle_seconds
    assert leftovers(wharf) == []
    assert (await wharf.client.get(location)).status == 404
    assert (await wharf.client.head(f"/v2/{repo_name}/blobs/{digest}")).status == 404


# --- mounts and visibility ------------------------------------------------------------------------

async def test_blob_is_visible_only_where_linked_until_mounted(make_wharf, repo_name):
    wharf = await make_wharf()
    digest = await upload(wharf, repo_name, b"shared layer")
    other = repo_name + "-other"
    resp = await wharf.client.head(f"/v2/{other}/blobs/{digest}")
    assert resp.status == 404
    resp = await wharf.client.get(f"/v2/{other}/blobs/{digest}")
    assert await error_code(resp) == "BLOB_UNKNOWN"
    resp = await wharf.client.post(f"/v2/{other}/blobs/uploads/?mount={digest}&from={repo_name}")
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/{other}/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    resp = await wharf.client.get(f"/v2/{other}/blobs/{digest}")
    assert await resp.read() == b"shared layer"


async def test_mount_from_a_repo_without_the_blob_falls_back_to_an_upload(make_wharf, repo_name):
    wharf = await make_wharf()
    digest = await upload(wharf, repo_name, b"only here")
    resp = await wharf.client.post(f"/v2/{repo_name}-x/blobs/uploads/?mount={digest}&from={repo_name}-y")
    assert resp.status == 202
    assert "/blobs/uploads/" in resp.headers["Location"]
    missing = sha256_digest(b"never pushed")
    resp = await wharf.client.post(f"/v2/{repo_name}-x/blobs/uploads/?mount={missing}&from={repo_name}")
    assert resp.status == 202
    resp = await wharf.client.post(f"/v2/{repo_name}-x/blobs/uploads/?mount={digest}&from=Not_A_Name")
    assert resp.status == 202


async def test_anonymous_mount_without_from(make_wharf, repo_name):
    wharf = await make_wharf()
    digest = await upload(wharf, repo_name, b"anon mount")
    resp = await wharf.client.post(f"/v2/{repo_name}-z/blobs/uploads/?mount={digest}")
    assert resp.status == 201
    assert (await wharf.client.head(f"/v2/{repo_name}-z/blobs/{digest}")).status == 200


# --- manifests ------------------------------------------------------------------------------------

def oci_image_with(config_digest: str, config_size: int, layers: list[dict], **extra) -> bytes:
    return canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": config_size},
                           "layers": layers, **extra})


async def test_manifest_with_a_blob_missing_from_the_repo_is_refused(make_wharf, repo_name):
    wharf = await make_wharf()
    image = make_image("missing-layer", (100,))
    await upload(wharf, repo_name, image.config.data)  # the layer is not pushed
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/1", data=image.manifest,
                                  headers={"Content-Type": image.media_type})
    assert resp.status == 404
    body = await resp.json()
    assert body["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert body["errors"][0]["detail"] == {"digest": image.layers[0].digest}
    # the layer exists, but in another repository only
    await upload(wharf, repo_name + "-elsewhere", image.layers[0].data)
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/1", data=image.manifest,
                                  headers={"Content-Type": image.media_type})
    assert resp.status == 404


async def test_non_distributable_layers_are_accepted_without_the_blob(make_wharf, repo_name):
    wharf = await make_wharf()
    config = b'{"architecture":"amd64","os":"windows"}'
    config_digest = await upload(wharf, repo_name, config)
    foreign = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
               "digest": sha256_digest(b"windows base layer"), "size": 123456,
               "urls": ["https://mcr.microsoft.com/v2/windows/blobs/x"]}
    manifest = oci_image_with(config_digest, len(config), [foreign])
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/win", data=manifest,
                                  headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    resp = await wharf.client.get(f"/v2/{repo_name}/manifests/win", headers={"Accept": OCI_MANIFEST})
    assert await resp.read() == manifest


@pytest.mark.parametrize("body,content_type", [
    (b"{not json", OCI_MANIFEST),
    (b"[1, 2]", OCI_MANIFEST),
    (canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": "bad"}, "layers": []}),
     OCI_MANIFEST),
    (canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}),
     "application/vnd.docker.distribution.manifest.v2+json"),
    (canonical_json({"schemaVersion": 2, "layers": []}), "text/plain"),
])
async def test_invalid_manifests_are_manifest_invalid(make_wharf, repo_name, body, content_type):
    wharf = await make_wharf()
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/bad", data=body, headers={"Content-Type": content_type})
    assert resp.status == 400, await resp.text()
    assert await error_code(resp) == "MANIFEST_INVALID"


async def test_manifest_digest_mismatch_bad_tag_and_size_limit(make_wharf, repo_name):
    wharf = await make_wharf()
    image = make_image("mismatch", (10,), oci=True)
    for data in image.blobs.values():
        await upload(wharf, repo_name, data)
    refused = [(sha256_digest(b"other"), image.manifest, 400, "DIGEST_INVALID"),
               ("-bad-tag", image.manifest, 400, "MANIFEST_INVALID"),
               ("big", b" " * (4 * 1024 * 1024 + 1), 413, "SIZE_INVALID")]
    for reference, body, status, code in refused:
        resp = await wharf.client.put(f"/v2/{repo_name}/manifests/{reference}", data=body,
                                      headers={"Content-Type": image.media_type})
        assert resp.status == status
        assert await error_code(resp) == code
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/{image.digest}", data=image.manifest,
                                  headers={"Content-Type": image.media_type})
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/{repo_name}/manifests/{image.digest}"


async def test_several_tags_in_one_put(make_wharf, repo_name):
    wharf = await make_wharf()
    image = make_image("tags", (10,), oci=True)
    for data in image.blobs.values():
        await upload(wharf, repo_name, data)
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/{image.digest}?tag=1.2.3&tag=1.2&tag=latest",
                                  data=image.manifest, headers={"Content-Type": image.media_type})
    assert resp.status == 201
    assert resp.headers.getall("OCI-Tag") == ["1.2.3", "1.2", "latest"]
    resp = await wharf.client.get(f"/v2/{repo_name}/tags/list")
    assert (await resp.json())["tags"] == ["1.2", "1.2.3", "latest"]
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/{image.digest}?tag=ok&tag=..bad",
                                  data=image.manifest, headers={"Content-Type": image.media_type})
    assert resp.status == 400


async def test_subject_is_recorded_for_the_referrers_api(make_wharf, repo_name):
    wharf = await make_wharf()
    image = make_image("subject-base", (10,), oci=True)
    await push_image(wharf.url, repo_name, image, tag="base")
    empty = b"{}"
    empty_digest = await upload(wharf, repo_name, empty)
    referrers = []
    for artifact_type in ("application/vnd.example.sbom", "application/vnd.example.signature"):
        manifest = canonical_json({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_digest, "size": 2},
            "layers": [], "annotations": {"org.example": artifact_type},
            "subject": {"mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest)}})
        digest = sha256_digest(manifest)
        resp = await wharf.client.put(f"/v2/{repo_name}/manifests/{digest}", data=manifest,
                                      headers={"Content-Type": OCI_MANIFEST})
        assert resp.status == 201
        assert resp.headers["OCI-Subject"] == image.digest
        referrers.append((digest, artifact_type, len(manifest)))

    resp = await wharf.client.get(f"/v2/{repo_name}/referrers/{image.digest}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    found = (await resp.json())["manifests"]
    assert sorted((d["digest"], d["artifactType"], d["size"]) for d in found) == sorted(referrers)
    assert all(d["annotations"] == {"org.example": d["artifactType"]} for d in found)

    resp = await wharf.client.get(f"/v2/{repo_name}/referrers/{image.digest}",
                                  params={"artifactType": "application/vnd.example.sbom"})
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in (await resp.json())["manifests"]] == [referrers[0][0]]

    # deleting a referrer removes it from the list
    await wharf.client.delete(f"/v2/{repo_name}/manifests/{referrers[0][0]}")
    resp = await wharf.client.get(f"/v2/{repo_name}/referrers/{image.digest}")
    assert [d["digest"] for d in (await resp.json())["manifests"]] == [referrers[1][0]]


async def test_referrers_of_an_unknown_subject_is_an_empty_index(make_wharf, repo_name):
    wharf = await make_wharf()
    resp = await wharf.client.get(f"/v2/{repo_name}/referrers/{sha256_digest(b'nothing')}")
    assert resp.status == 200
    assert (await resp.json())["manifests"] == []
    resp = await wharf.client.get(f"/v2/{repo_name}/referrers/sha256:nope")
    assert resp.status == 400
    assert await error_code(resp) == "DIGEST_INVALID"


# --- deletes --------------------------------------------------------------------------------------

async def test_delete_manifest_by_tag_and_by_digest(make_wharf, repo_name):
    wharf = await make_wharf()
    image = make_image("delete-me", (10,), oci=True)
    await push_image(wharf.url, repo_name, image, tag="a")
    await push_image(wharf.url, repo_name, image, tag="b")
    resp = await wharf.client.delete(f"/v2/{repo_name}/manifests/a")
    assert resp.status == 202
    assert (await wharf.client.get(f"/v2/{repo_name}/manifests/a")).status == 404
    assert (await wharf.client.get(f"/v2/{repo_name}/manifests/b")).status == 200
    resp = await wharf.client.delete(f"/v2/{repo_name}/manifests/{image.digest}")
    assert resp.status == 202
    for reference in ("b", image.digest):
        resp = await wharf.client.get(f"/v2/{repo_name}/manifests/{reference}")
        assert resp.status == 404
        assert await error_code(resp) == "MANIFEST_UNKNOWN"
    assert (await (await wharf.client.get(f"/v2/{repo_name}/tags/list")).json())["tags"] == []
    for reference in ("a", image.digest):
        resp = await wharf.client.delete(f"/v2/{repo_name}/manifests/{reference}")
        assert resp.status == 404
        assert await error_code(resp) == "MANIFEST_UNKNOWN"
    resp = await wharf.client.delete(f"/v2/{repo_name}-never/manifests/a")
    assert resp.status == 404
    assert await error_code(resp) == "NAME_UNKNOWN"


async def test_delete_blob(make_wharf, repo_name):
    wharf = await make_wharf()
    digest = await upload(wharf, repo_name, b"to be deleted")
    await upload(wharf, repo_name + "-keep", b"to be deleted")
    resp = await wharf.client.delete(f"/v2/{repo_name}/blobs/{digest}")
    assert resp.status == 202
    resp = await wharf.client.get(f"/v2/{repo_name}/blobs/{digest}")
    assert resp.status == 404
    assert await error_code(resp) == "BLOB_UNKNOWN"
    assert (await wharf.client.get(f"/v2/{repo_name}-keep/blobs/{digest}")).status == 200
    resp = await wharf.client.delete(f"/v2/{repo_name}/blobs/{digest}")
    assert resp.status == 404
    resp = await wharf.client.delete(f"/v2/{repo_name}/blobs/sha256:short")
    assert resp.status == 400


# --- names, ranges, listing -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Upper/case", "trailing-/x", "a//b", "-lead"])
async def test_invalid_names_are_name_invalid(make_wharf, name):
    wharf = await make_wharf()
    for method, path in (("POST", f"/v2/{name}/blobs/uploads/"),
                         ("PUT", f"/v2/{name}/manifests/latest"),
                         ("GET", f"/v2/{name}/tags/list"),
                         ("DELETE", f"/v2/{name}/blobs/{sha256_digest(b'')}")):
        resp = await wharf.client.request(method, path, data=b"{}")
        assert resp.status == 400, (method, path)
        assert await error_code(resp) == "NAME_INVALID"


async def test_blob_ranges(make_wharf, repo_name):
    wharf = await make_wharf()
    data = bytes(range(256)) * 40
    digest = await upload(wharf, repo_name, data)
    resp = await wharf.client.get(f"/v2/{repo_name}/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert await resp.read() == data[100:200]
    resp = await wharf.client.get(f"/v2/{repo_name}/blobs/{digest}", headers={"Range": "bytes=-16"})
    assert await resp.read() == data[-16:]
    for bad in ("bytes=500-0", f"bytes={len(data)}-", "bytes=a-b", "items=0-1"):
        resp = await wharf.client.get(f"/v2/{repo_name}/blobs/{digest}", headers={"Range": bad})
        assert resp.status == 416, bad
        assert await error_code(resp) == "RANGE_INVALID"


async def test_tags_list_and_catalog_paging(make_wharf, repo_name):
    wharf = await make_wharf()
    image = make_image("paging", (10,), oci=True)
    for tag in ("c", "a", "e", "b", "d"):
        await push_image(wharf.url, repo_name, image, tag=tag)
    resp = await wharf.client.get(f"/v2/{repo_name}/tags/list", params={"n": "2"})
    assert (await resp.json())["tags"] == ["a", "b"]
    assert resp.headers["Link"] == f'</v2/{repo_name}/tags/list?n=2&last=b>; rel="next"'
    resp = await wharf.client.get(f"/v2/{repo_name}/tags/list", params={"n": "2", "last": "d"})
    assert (await resp.json())["tags"] == ["e"]
    assert "Link" not in resp.headers
    resp = await wharf.client.get(f"/v2/{repo_name}/tags/list", params={"n": "x"})
    assert resp.status == 400
    assert await error_code(resp) == "PAGINATION_NUMBER_INVALID"

    for suffix in ("-2", "-1"):
        await upload(wharf, repo_name + suffix, b"x")
    resp = await wharf.client.get("/v2/_catalog")
    assert (await resp.json())["repositories"] == [repo_name, repo_name + "-1", repo_name + "-2"]
    resp = await wharf.client.get("/v2/_catalog", params={"n": "1"})
    assert (await resp.json())["repositories"] == [repo_name]
    link = resp.headers["Link"]
    assert link.startswith("</v2/_catalog?n=1&last=") and link.endswith('>; rel="next"')
    resp = await wharf.client.get(link[1:link.index(">")])
    assert (await resp.json())["repositories"] == [repo_name + "-1"]
    resp = await wharf.client.get("/v2/_catalog", params={"n": "-1"})
    assert resp.status == 400


async def test_tags_list_of_an_unknown_repository_is_name_unknown(make_wharf, repo_name):
    wharf = await make_wharf()
    resp = await wharf.client.get(f"/v2/{repo_name}/tags/list")
    assert resp.status == 404
    assert await error_code(resp) == "NAME_UNKNOWN"


# --- upstream namespaces and the cache budget -----------------------------------------------------

async def test_push_to_an_upstream_namespace_is_denied_with_a_reason(make_wharf, fake_upstream, repo_name):
    fake = await fake_upstream()
    wharf = await make_wharf(fake.url)
    upstream = wharf.upstream_name(fake.url)
    image = make_image("denied", (10,))
    for method, path, query in (("POST", f"/v2/{upstream}/{repo_name}/blobs/uploads/", ""),
                                ("POST", f"/v2/{repo_name}/blobs/uploads/", f"?ns={upstream}"),
                                ("PUT", f"/v2/{upstream}/{repo_name}/manifests/1", ""),
                                ("PUT", f"/v2/{repo_name}/manifests/1", f"?ns={upstream}"),
                                ("PATCH", f"/v2/{upstream}/{repo_name}/blobs/uploads/{'0' * 32}", ""),
                                ("DELETE", f"/v2/{upstream}/{repo_name}/manifests/1", ""),
                                ("DELETE", f"/v2/{upstream}/{repo_name}/blobs/{image.config.digest}", "")):
        resp = await wharf.client.request(method, path + query, data=image.manifest,
                                          headers={"Content-Type": image.media_type})
        assert resp.status == 403, (method, path, query)
        error = (await resp.json())["errors"][0]
        assert error["code"] == "DENIED"
        assert upstream in error["message"] and "mirror" in error["message"]
    assert fake.count() == 0  # nothing was forwarded upstream


async def test_pushed_content_is_never_evicted(make_wharf, repo_name):
    from proxy.app import BUDGET, BLOBS
    from proxy.oci.digest import Digest

    wharf = await make_wharf()
    image = make_image("never-evicted", (50_000, 50_000))
    await push_image(wharf.url, repo_name, image, tag="keep")
    budget = wharf.app[BUDGET]
    budget.max_cached_bytes = 1
    budget.evict()
    for digest in (*image.blobs, image.digest):
        assert wharf.app[BLOBS].size(Digest.parse(digest)) is not None
    assert budget.pushed_bytes >= sum(len(d) for d in image.blobs.values())


async def test_remembered_local_manifests_follow_tag_moves_and_deletes(make_wharf, repo_name):
    """Local manifests answered from memory (fast_paths.hot_manifests) never outlive a change."""
    from test_replay import REPLAYING

    wharf = await make_wharf(fast_paths=REPLAYING)
    first, second = make_image("recent-1", (100,)), make_image("recent-2", (100,))
    await push_image(wharf.url, repo_name, first, tag="v1")
    for reference in ("v1", first.digest, "v1"):  # misses, then hits from memory
        resp = await wharf.client.get(f"/v2/{repo_name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
        assert await resp.read() == first.manifest
    await push_image(wharf.url, repo_name, second, tag="v1")
    resp = await wharf.client.get(f"/v2/{repo_name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert await resp.read() == second.manifest
    resp = await wharf.client.delete(f"/v2/{repo_name}/manifests/{first.digest}")
    assert resp.status == 202
    resp = await wharf.client.get(f"/v2/{repo_name}/manifests/{first.digest}", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 404
    resp = await wharf.client.delete(f"/v2/{repo_name}/manifests/v1")
    resp = await wharf.client.head(f"/v2/{repo_name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 404
