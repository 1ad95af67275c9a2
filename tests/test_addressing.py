"""Addressing: path prefix, containerd's ?ns=, default upstream; tags list and referrers pass-through."""

from __future__ import annotations

import json

import pytest

from proxy.errors import Denied, NameInvalid, NameUnknown
from proxy.registry.addressing import Addressing, LocalNamespaces
from proxy.registry.base import Target
from support.images import MANIFEST_ACCEPT, make_image, make_index, push_image

NAMES = {"docker.io": "docker.io", "ghcr.io": "ghcr.io", "127.0.0.1:5000": "127.0.0.1:5000",
         "mirror.local": "127.0.0.1:5000"}


@pytest.mark.parametrize("name, ns, default, expected", [
    ("ghcr.io/owner/img", None, None, Target("ghcr.io", "owner/img")),
    ("docker.io/alpine", None, None, Target("docker.io", "library/alpine")),
    ("docker.io/someorg/tool", None, None, Target("docker.io", "someorg/tool")),
    ("127.0.0.1:5000/a/b", None, None, Target("127.0.0.1:5000", "a/b")),
    ("mirror.local/a/b", None, None, Target("127.0.0.1:5000", "a/b")),
    ("a/b", "mirror.local", None, Target("127.0.0.1:5000", "a/b")),
    ("owner/img", "ghcr.io", None, Target("ghcr.io", "owner/img")),
    ("alpine", "docker.io", None, Target("docker.io", "library/alpine")),
    ("alpine", None, "docker.io", Target("docker.io", "library/alpine")),
    ("myteam/app", None, "docker.io", Target("docker.io", "myteam/app")),
    ("myteam/app", None, None, Target(None, "myteam/app")),
    ("pushed/app", None, "docker.io", Target(None, "pushed/app")),
    ("pushed/deep/app", None, "docker.io", Target(None, "pushed/deep/app")),
    ("pushed", None, "docker.io", Target("docker.io", "library/pushed")),  # a name, not a namespace
    ("library/alpine", None, "docker.io", Target("docker.io", "library/alpine")),
    ("pushedx/app", None, "docker.io", Target("docker.io", "pushedx/app")),
])
def test_resolve(name, ns, default, expected):
    addressing = Addressing(NAMES, default, LocalNamespaces(["pushed"]))
    assert addressing.resolve(name, ns) == expected


@pytest.mark.parametrize("name", ["team/app", "library/alpine", "alpine", "pushedx/app"])
def test_push_of_a_mirror_name_is_denied_with_a_way_out(name):
    addressing = Addressing(NAMES, "docker.io", LocalNamespaces(["pushed"]))
    with pytest.raises(Denied) as refused:
        addressing.push_target(name, None)
    assert "local_namespaces" in refused.value.message and "pushed/" in refused.value.message
    assert addressing.push_target("pushed/app", None) == Target(None, "pushed/app")
    assert Addressing(NAMES, None).push_target(name, None) == Target(None, name)  # no default: all local


def test_library_is_never_a_local_namespace():
    from proxy.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="local_namespaces"):
        config_from_dict({"local_namespaces": ["library"]})
    namespaces = LocalNamespaces()
    with pytest.raises(Denied):
        namespaces.declare("library")
    assert Addressing(NAMES, "docker.io", LocalNamespaces(["library"])).resolve(
        "library/alpine", None) == Target("docker.io", "library/alpine")


def test_resolve_rejects_bad_names_and_unknown_namespaces():
    addressing = Addressing(NAMES, None)
    with pytest.raises(NameInvalid):
        addressing.resolve("Upper/Case", None)
    with pytest.raises(NameInvalid):
        addressing.resolve("ghcr.io/bad..name", None)
    with pytest.raises(NameUnknown):
        addressing.resolve("owner/img", "quay.io")


async def test_containerd_ns_addressing_echoes_namespace(registry_upstream, make_wharf, repo_name):
    image = make_index("ns", (500,))
    await push_image(registry_upstream, repo_name, image, tag="multi")
    wharf = await make_wharf(registry_upstream)
    ns = wharf.upstream_name(registry_upstream)
    resp = await wharf.client.head(f"/v2/{repo_name}/manifests/multi", params={"ns": ns},
                                   headers={"Accept": MANIFEST_ACCEPT + ", */*"})
    assert resp.status == 200
    assert resp.headers["OCI-Namespace"] == ns
    assert resp.headers["Docker-Content-Digest"] == image.digest
    child = image.images[1]
    resp = await wharf.client.get(f"/v2/{repo_name}/manifests/{child.digest}", params={"ns": ns})
    assert resp.status == 200 and await resp.read() == child.manifest
    resp = await wharf.client.get(f"/v2/{repo_name}/blobs/{child.layers[0].digest}", params={"ns": ns})
    assert resp.status == 200 and await resp.read() == child.layers[0].data


async def test_default_upstream_for_prefixless_names(registry_upstream, make_wharf, repo_name):
    image = make_image("default", (100,))
    await push_image(registry_upstream, repo_name, image, tag="v1")
    upstream = registry_upstream.split("://", 1)[1]
    wharf = await make_wharf(registry_upstream, default_upstream=upstream)
    resp = await wharf.client.get(f"/v2/{repo_name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == image.manifest


async def test_tags_list_paging_passes_through_with_link_rewritten(registry_upstream, make_wharf, repo_name):
    image = make_image("tags", (100,))
    for tag in ("a", "b", "c", "d"):
        await push_image(registry_upstream, repo_name, image, tag=tag)
    wharf = await make_wharf(registry_upstream)
    name = f"{wharf.upstream_name(registry_upstream)}/{repo_name}"
    resp = await wharf.client.get(f"/v2/{name}/tags/list", params={"n": "2"})
    assert resp.status == 200
    assert (await resp.json())["tags"] == ["a", "b"]
    link = resp.headers["Link"]
    assert link.startswith(f"</v2/{name}/tags/list?") and 'rel="next"' in link
    next_url = link[1:link.index(">")]
    resp = await wharf.client.get(next_url)
    assert (await resp.json())["tags"] == ["c", "d"]
    resp = await wharf.client.get(f"/v2/{name}/tags/list")
    assert sorted((await resp.json())["tags"]) == ["a", "b", "c", "d"]  # as upstream sent it


async def test_referrers_of_an_upstream_without_the_api_is_an_empty_index(registry_upstream, make_wharf, repo_name):
    image = make_image("refs", (100,))
    await push_image(registry_upstream, repo_name, image, tag="v1")
    wharf = await make_wharf(registry_upstream)
    name = f"{wharf.upstream_name(registry_upstream)}/{repo_name}"
    resp = await wharf.client.get(f"/v2/{name}/referrers/{image.digest}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    body = json.loads(await resp.read())
    assert body["manifests"] == [] and body["schemaVersion"] == 2


async def test_unknown_repository_on_upstream(registry_upstream, make_wharf):
    wharf = await make_wharf(registry_upstream)
    name = f"{wharf.upstream_name(registry_upstream)}/no/such-repo"
    resp = await wharf.client.get(f"/v2/{name}/manifests/latest")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")
    resp = await wharf.client.get(f"/v2/{name}/tags/list")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "NAME_UNKNOWN"


async def test_invalid_names_and_references_are_400(registry_upstream, make_wharf):
    wharf = await make_wharf(registry_upstream)
    resp = await wharf.client.get("/v2/Bad_Name!/manifests/latest")
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "NAME_INVALID"
    resp = await wharf.client.get("/v2/ok/name/manifests/sha256:123")
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "DIGEST_INVALID"
    resp = await wharf.client.get("/v2/ok/name/tags/list", params={"n": "-1"})
    assert resp.status == 400
