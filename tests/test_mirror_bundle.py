"""``wharf mirror export`` and ``inventory``: bundles are OCI image layouts that skopeo and
``sha256sum -c`` accept, compressed or not, and deltas carry only what the other side lacks.

Content gets into the exporting store as a sync leaves it (``support.bundles.mirror_into``); the
commands run as the operator runs them (``python -m proxy mirror …``) beside the running Wharf.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import yaml

from support.bundles import (blob_members, config_of, member_bytes, members, mirror_into, one_line, upstream_name,
                             wharf_cli)
from support.images import make_image, make_index
from test_clients_e2e import assert_dir_copy, client_env, clients_dir, require_binary, run, skopeo_files  # noqa: F401 (a fixture)

from proxy.http import keys
from proxy.app import BLOBS
from proxy.mirror import bundle
from proxy.mirror.export import export_bundle, select_all
from proxy.mirror.importer import import_bundle
from proxy.oci.digest import Digest


def _list_file(path, name, images):
    path.write_text(yaml.safe_dump({"name": name, "images": [{"name": n, "tags": t} for n, t in images]}))
    return path


async def test_export_list_is_an_oci_layout_skopeo_reads(registry_upstream, make_wharf, repo_name, tmp_path,
                                                         clients_dir):
    skopeo = require_binary("skopeo")
    wharf = await make_wharf(registry_upstream)
    host = upstream_name(registry_upstream)
    image = make_image(f"export-{uuid.uuid4().hex}", (3000, 70_000), oci=True)
    index = make_index(f"export-multi-{uuid.uuid4().hex}", (2000,), oci=True)
    listed = "edge" + uuid.uuid4().hex[:6]
    await mirror_into(wharf, registry_upstream, f"{repo_name}/img", image, ["v1", "v1.1"], holder=listed)
    await mirror_into(wharf, registry_upstream, f"{repo_name}/multi", index, ["v1"], holder=listed)
    mirror_list = _list_file(tmp_path / "list.yaml", listed, [
        (f"{host}/{repo_name}/img", ["v1", "v1.1"]), (f"{host}/{repo_name}/multi", ["v1"]),
        (f"{host}/{repo_name}/never-synced", ["v1"])])
    out = tmp_path / "bundle.tar"

    result = wharf_cli("mirror", "export", str(mirror_list), "-o", str(out),
                       "--config", str(config_of(wharf, tmp_path / "cli")))

    # the image the list names but no sync made visible is reported, the rest is written
    one_line(result, 1, f"{host}/{repo_name}/never-synced", "not exported")
    assert "3 tag(s)" in result.stdout
    names = members(out)
    assert names[:4] == ["oci-layout", "wharf-checksums.sha256", "wharf-bundle.json", "index.json"]
    expected = set(image.manifests) | set(image.blobs) | set(index.manifests) | set(index.blobs)
    assert blob_members(out) == expected
    descriptors = json.loads(member_bytes(out, "index.json"))["manifests"]
    assert sorted((d["annotations"][bundle.REF_NAME], d["digest"]) for d in descriptors) == sorted([
        (f"{host}/{repo_name}/img:v1", image.digest), (f"{host}/{repo_name}/img:v1.1", image.digest),
        (f"{host}/{repo_name}/multi:v1", index.digest)])
    for descriptor in descriptors:
        assert descriptor["annotations"][bundle.WHARF_REGISTRY] == host
        assert descriptor["annotations"][bundle.WHARF_REPOSITORY].startswith(repo_name)
    described = json.loads(member_bytes(out, "wharf-bundle.json"))
    assert sorted(i["name"] for i in described["images"]) == [f"{host}/{repo_name}/img", f"{host}/{repo_name}/multi"]
    assert set(described["inventory"]) == expected and described["base"] is None

    # every file of the tar is in the checksum list, and sha256sum agrees
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(extracted)], check=True)
    listed_files = {line.split("  ", 1)[1] for line in (extracted / "wharf-checksums.sha256").read_text().splitlines()}
    assert listed_files == set(names) - {"wharf-checksums.sha256"}
    check = subprocess.run(["sha256sum", "-c", "--strict", "wharf-checksums.sha256"], cwd=extracted,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # skopeo reads it as an oci-archive, by the full original name
    env, options = client_env(clients_dir / "home"), skopeo_files(clients_dir)
    ref = f"oci-archive:{out}:{host}/{repo_name}/img:v1"
    inspected = json.loads(await run([skopeo, *options, "inspect", ref], env))
    assert inspected["Digest"] == image.digest
    raw = await run([skopeo, *options, "inspect", "--raw", f"oci-archive:{out}:{host}/{repo_name}/multi:v1"], env)
    assert raw.encode() == index.manifest
    dest = tmp_path / "copy"
    await run([skopeo, *options, "copy", ref, f"dir:{dest}"], env)
    assert_dir_copy(dest, image)


async def test_export_gzip_and_zstd(registry_upstream, make_wharf, repo_name, tmp_path, clients_dir):
    """Compressed bundles start with their format's magic bytes, hold the same layout, and skopeo
    and Wharf read them (Wharf by magic bytes: the name says nothing). (skopeo 1.9 finds only OCI
    manifests in an OCI layout, never Docker schema 2 ones: the image is an OCI one.)"""
    skopeo = require_binary("skopeo")
    wharf = await make_wharf(registry_upstream)
    host = upstream_name(registry_upstream)
    image = make_image(f"compress-{uuid.uuid4().hex}", (5000, 90_000), oci=True)
    await mirror_into(wharf, registry_upstream, repo_name, image, ["v1"])
    records, blobs = wharf.app[keys.MIRROR_RECORDS], wharf.app[BLOBS]
    plain = tmp_path / "plain.tar"
    await export_bundle(records, blobs, select_all(records), plain)
    env, options = client_env(clients_dir / "home"), skopeo_files(clients_dir)
    for compression, magic in (("gzip", b"\x1f\x8b"), ("zstd", b"\x28\xb5\x2f\xfd")):
        out = tmp_path / f"bundle-{compression}.bin"
        report = await export_bundle(records, blobs, select_all(records), out, compression)
        assert out.read_bytes()[:len(magic)] == magic
        assert report.written == len(image.manifests) + len(image.blobs)
        assert blob_members(out) == blob_members(plain) == set(image.manifests) | set(image.blobs)
        inspected = json.loads(await run([skopeo, *options, "inspect",
                                          f"oci-archive:{out}:{host}/{repo_name}:v1"], env))
        assert inspected["Digest"] == image.digest
        fresh = await make_wharf(registry_upstream)
        imported = await import_bundle(fresh.app, out)
        assert imported.visible == [f"{host}/{repo_name}:v1"]
        assert fresh.app[keys.MIRROR_RECORDS].mirrored_tags(f"{host}/{repo_name}") == ["v1"]


async def test_delta_since_bundle_and_since_index(registry_upstream, make_wharf, repo_name, tmp_path):
    """A second sync added a tag: the delta holds only its new manifest, config and layer, cut
    against the old bundle or against the receiving side's inventory, and names every tag."""
    wharf = await make_wharf(registry_upstream)
    host = upstream_name(registry_upstream)
    seed = uuid.uuid4().hex
    v1 = make_image(f"delta-{seed}", (300_000, 200_000))
    await mirror_into(wharf, registry_upstream, repo_name, v1, ["v1"])
    cli = config_of(wharf, tmp_path / "cli")
    full = tmp_path / "full.tar"
    assert wharf_cli("mirror", "export", "--all", "-o", str(full), "--config", str(cli)).status == 0

    # v2 shares v1's first layer and brings one new layer of 150 kB
    from support.images import make_layer, DOCKER_CONFIG, DOCKER_MANIFEST, canonical_json, sha256_digest, Blob, Image
    shared, new = v1.layers[0], make_layer(f"delta-new-{seed}", 150_000)[0]
    config = Blob(v1.config.data.replace(b"wharf-tests", b"wharf-test2"), "", DOCKER_CONFIG)
    config = Blob(config.data, sha256_digest(config.data), DOCKER_CONFIG)
    manifest = canonical_json({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config.descriptor(),
                               "layers": [shared.descriptor(), new.descriptor()]})
    v2 = Image(manifest, sha256_digest(manifest), DOCKER_MANIFEST, config, (shared, new))
    await mirror_into(wharf, registry_upstream, repo_name, v2, ["v2"])
    new_content = {v2.digest, config.digest, new.digest}

    delta = tmp_path / "delta.tar"
    result = wharf_cli("mirror", "export", "--all", "--since", str(full), "-o", str(delta), "--config", str(cli))
    assert result.status == 0, result.stderr
    assert blob_members(delta) == new_content
    assert not blob_members(delta) & (set(v1.blobs) | {v1.digest})
    new_bytes = len(v2.manifest) + config.size + new.size
    metadata = sum(len(member_bytes(delta, n)) for n in members(delta) if not n.startswith("blobs/"))
    assert delta.stat().st_size <= new_bytes + metadata + 512 * 2 * (len(members(delta)) + 2) + 10240
    assert delta.stat().st_size < v1.layers[1].size  # less than one of the old layers
    described = json.loads(member_bytes(delta, "wharf-bundle.json"))
    assert described["base"]["id"] == json.loads(member_bytes(full, "wharf-bundle.json"))["id"]
    tags = {d["annotations"][bundle.REF_NAME] for d in json.loads(member_bytes(delta, "index.json"))["manifests"]}
    assert tags == {f"{host}/{repo_name}:v1", f"{host}/{repo_name}:v2"}

    # the receiving side imported the full bundle and says what it holds
    far = await make_wharf(registry_upstream)
    await import_bundle(far.app, full)
    far_cli = config_of(far, tmp_path / "far-cli")
    inventory = tmp_path / "inventory.json"
    result = wharf_cli("mirror", "inventory", "-o", str(inventory), "--config", str(far_cli))
    assert result.status == 0, result.stderr
    assert set(json.loads(inventory.read_text())["digests"]) == set(v1.blobs) | {v1.digest}
    by_index = tmp_path / "delta-index.tar"
    result = wharf_cli("mirror", "export", "--all", "--since-index", str(inventory), "-o", str(by_index),
                       "--config", str(cli))
    assert result.status == 0, result.stderr
    assert blob_members(by_index) == new_content
    imported = await import_bundle(far.app, by_index)
    assert imported.visible == [f"{host}/{repo_name}:v2"] and imported.imported == 3


async def test_export_refusals_are_one_line(registry_upstream, make_wharf, tmp_path):
    wharf = await make_wharf(registry_upstream)
    cli = config_of(wharf, tmp_path / "cli")
    one_line(wharf_cli("mirror", "export", "--all", "--config", str(cli)), 2, "-o/--output")
    one_line(wharf_cli("mirror", "export", "-o", str(tmp_path / "b.tar"), "--config", str(cli)), 2,
             "a mirror list file, --all or --pulled-since")
    one_line(wharf_cli("mirror", "export", str(tmp_path / "absent.yaml"), "-o", str(tmp_path / "b.tar"),
                       "--config", str(cli)), 2, "absent.yaml")
    (tmp_path / "not-a-bundle.tar").write_bytes(b"hello" * 200)
    one_line(wharf_cli("mirror", "export", "--all", "--since", str(tmp_path / "not-a-bundle.tar"),
                       "-o", str(tmp_path / "b.tar"), "--config", str(cli)), 1, "not a bundle")
    one_line(wharf_cli("mirror", "export", "--all", "-o", str(tmp_path / "no-such-dir" / "b.tar"),
                       "--config", str(cli)), 1, "cannot write")
    assert not (tmp_path / "b.tar").exists()


async def test_export_pulled_since(registry_upstream, make_wharf, repo_name, tmp_path):
    """--pulled-since DAYS: the mirrored images with a layer read within DAYS (a blob's mtime, where
    the server writes its reads)."""
    wharf = await make_wharf(registry_upstream)
    host = upstream_name(registry_upstream)
    recent = make_image(f"recent-{uuid.uuid4().hex}", (2000,), oci=True)
    stale = make_image(f"stale-{uuid.uuid4().hex}", (2000,), oci=True)
    await mirror_into(wharf, registry_upstream, f"{repo_name}/recent", recent, ["v1"])
    await mirror_into(wharf, registry_upstream, f"{repo_name}/stale", stale, ["v1"], holder="other")
    blobs = wharf.app[BLOBS]
    blobs.flush_access_times()
    ten_days_ago = time.time() - 10 * 86400
    for digest in stale.blobs:
        os.utime(blobs.path(Digest.parse(digest)), (ten_days_ago, ten_days_ago))
    out = tmp_path / "recent.tar"
    result = wharf_cli("mirror", "export", "--pulled-since", "3", "-o", str(out),
                       "--config", str(config_of(wharf, tmp_path / "cli")))
    assert result.status == 0, result.stderr
    assert blob_members(out) == set(recent.blobs) | {recent.digest}
    assert [d["annotations"][bundle.REF_NAME] for d in json.loads(member_bytes(out, "index.json"))["manifests"]] \
        == [f"{host}/{repo_name}/recent:v1"]
    everything = tmp_path / "all.tar"
    assert wharf_cli("mirror", "export", "--pulled-since", "30", "-o", str(everything),
                     "--config", str(config_of(wharf, tmp_path / "cli"))).status == 0
    assert blob_members(everything) == set(recent.blobs) | {recent.digest} | set(stale.blobs) | {stale.digest}
