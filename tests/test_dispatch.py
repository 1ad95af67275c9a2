"""/v2/ paths are told apart from the right, whatever slashes the repository name holds."""

import pytest

from proxy.http.dispatch import split_v2_path


@pytest.mark.parametrize("path, expected", [
    ("/v2/", ("base", {})),
    ("/v2", ("base", {})),
    ("/v2/_catalog", ("catalog", {})),
    ("/v2/a/b/c/manifests/latest", ("manifest", {"name": "a/b/c", "reference": "latest"})),
    ("/v2/ghcr.io/o/i/manifests/sha256:ab", ("manifest", {"name": "ghcr.io/o/i", "reference": "sha256:ab"})),
    ("/v2/x/blobs/sha256:ab", ("blob", {"name": "x", "digest": "sha256:ab"})),
    ("/v2/x/manifests/blobs/sha256:ab", ("blob", {"name": "x/manifests", "digest": "sha256:ab"})),
    ("/v2/x/y/blobs/uploads/", ("upload_start", {"name": "x/y"})),
    ("/v2/x/y/blobs/uploads", ("upload_start", {"name": "x/y"})),
    ("/v2/x/y/blobs/uploads/abc-123", ("upload", {"name": "x/y", "upload_id": "abc-123"})),
    ("/v2/x/y/tags/list", ("tags", {"name": "x/y"})),
    ("/v2/x/referrers/sha256:ab", ("referrers", {"name": "x", "digest": "sha256:ab"})),
])
def test_api_paths(path, expected):
    assert split_v2_path(path) == expected


@pytest.mark.parametrize("path", ["/v2/tags/list", "/v2/manifests/x", "/v2/x/manifests/", "/v2/x/other/y",
                                  "/token", "/v2//blobs/uploads/"])
def test_not_api_paths(path):
    assert split_v2_path(path) is None


async def test_unknown_endpoint_and_wrong_method_are_oci_errors(make_wharf, registry_upstream):
    wharf = await make_wharf(registry_upstream)
    resp = await wharf.client.get("/v2/x/other/y")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "NOT_FOUND"
    resp = await wharf.client.post("/v2/x/manifests/latest")
    assert resp.status == 405
    assert (await resp.json())["errors"][0]["code"] == "UNSUPPORTED"
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
