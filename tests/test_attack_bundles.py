"""Hostile bundles: what comes across an air gap is refused unless every byte of it is what it
claims, with one clear error and nothing of it visible; a bundle can never make content the store
holds privately (a client's own credential, a push) public under another name.

The importing Wharf's upstream ``registry.test`` points where nothing listens.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import resource
import signal
import stat
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from support.bundles import Result, one_line, sha256, wharf_cli, wharf_config
from support.images import MANIFEST_ACCEPT, canonical_json
from support.servers import _die_with_parent
from support.wharf_serve import wharf_argv, wharf_env, write_config

from proxy.app import BLOBS, META
from proxy.errors import OCIError
from proxy.http import keys
from proxy.mirror.bundle import BundleError
from proxy.mirror.importer import import_bundle
from proxy.mirror.records import IMPORT_HOLDER, MirroredImage
from proxy.oci.digest import Digest

DEAD = "http://127.0.0.1:9"
HOST = "registry.test"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
    tar.addfile(info, io.BytesIO(data))


def image_parts(seed: str, layers: list[bytes] | None = None) -> tuple[bytes, bytes, list[bytes]]:
    """(manifest, config, layers) of a small OCI image."""
    layers = layers if layers is not None else [f"layer {seed}".encode() * 50]
    config = canonical_json({"architecture": "amd64", "os": "linux", "seed": seed,
                             "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]}})
    manifest = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
                               "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}
                                          for layer in layers]})
    return manifest, config, layers


def image_record(repo: str, manifest: bytes, config: bytes, layers: list[bytes], **changes) -> dict:
    record = {"name": f"{HOST}/{repo}", "upstream": HOST, "repo": repo, "tags": {"v1": sha256(manifest)},
              "manifests": {sha256(manifest): OCI_MANIFEST},
              "blobs": {sha256(data): len(data) for data in [config, *layers]},
              "referrers": {}, "unmirrored": {}, "synced_at": 1.0}
    record.update(changes)
    return record


def description(images: list[dict], **changes) -> bytes:
    raw = {"format": "wharf-bundle", "version": 1, "id": f"attack-{uuid.uuid4().hex[:8]}", "created": 1.0,
           "base": None, "images": images, "inventory": []}
    raw.update(changes)
    return json.dumps(raw).encode()


def write_bundle(path: Path, describe: bytes | None, blobs: list[bytes], extra: list[tuple[str, bytes]] = (),
                 index: bytes | None = None) -> Path:
    """A bundle as a hostile sender writes it (no checksum list: it would only be signed by the sender)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        if describe is not None:
            _add(tar, "wharf-bundle.json", describe)
        _add(tar, "index.json", index if index is not None else
             json.dumps({"schemaVersion": 2, "manifests": []}).encode())
        for data in blobs:
            _add(tar, f"blobs/sha256/{sha256(data)[7:]}", data)
        for name, data in extra:
            _add(tar, name, data)
    return path


async def far_side(make_wharf):
    return await make_wharf(named_upstreams={HOST: DEAD})


async def refused(wharf, path: Path, *words: str) -> str:
    """The import is a BundleError (one line for the user, never another exception) naming ``words``,
    and nothing became visible."""
    with pytest.raises(BundleError) as caught:
        await import_bundle(wharf.app, path)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert wharf.app[keys.MIRROR_RECORDS].images(IMPORT_HOLDER) == {}
    return message


async def status_of(wharf, path: str) -> int:
    async with wharf.client.get(f"/v2/{path}", headers={"Accept": MANIFEST_ACCEPT}) as resp:
        await resp.read()
        return resp.status


# a description that lies ----------------------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    ({"tags": {"v1": "sha256:" + "ab" * 32}}, ["v1"]),                       # a tag naming no manifest of it
    ({"tags": ["v1"]}, ["tags"]),                                             # not a mapping
    ({"manifests": [1, 2]}, ["manifests"]),
    ({"name": 7}, ["name"]),
    ({"blobs": {"sha256:" + "cd" * 32: "big"}}, ["blobs"]),
    ({"referrers": {"x": "y"}}, ["referrers"]),
    ({"unmirrored": ["a"]}, ["unmirrored"]),
    ({"tags": {"../../etc": None}}, ["../../etc"]),
    ({"surprise": 1, "tags": {"bad tag!": None}}, ["bad tag!"]),
])
async def test_description_fields_that_lie_are_refused(make_wharf, tmp_path, change, words):
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex)
    if isinstance(change.get("tags"), dict):
        change = {**change, "tags": {t: d or sha256(manifest) for t, d in change["tags"].items()}}
    record = image_record("team/app", manifest, config, layers, **change)
    path = write_bundle(tmp_path / "lies.tar", description([record]), [manifest, config, *layers])
    await refused(far, path, *words)
    assert await status_of(far, f"{HOST}/team/app/manifests/v1") != 200


async def test_deeply_nested_json_is_refused(make_wharf, tmp_path):
    far = await far_side(make_wharf)
    deep = b"[" * 200_000 + b"]" * 200_000
    await refused(far, write_bundle(tmp_path / "deep.tar", deep, []), "wharf-bundle.json")
    await refused(far, write_bundle(tmp_path / "deep-index.tar", None, [], index=deep), "index.json")
    manifest_json = write_bundle(tmp_path / "deep-save.tar", None, [], extra=[("manifest.json", deep)])
    with tarfile.open(manifest_json) as tar:
        assert "manifest.json" in tar.getnames()
    await refused(far, manifest_json)


async def test_deep_json_inventory_for_export_is_one_line(make_wharf, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"{\"a\":" * 200_000 + b"1" + b"}" * 200_000)
    cli = write_config(tmp_path / "cli", wharf_config(tmp_path / "store", {HOST: DEAD}))
    one_line(wharf_cli("mirror", "export", "--all", "-o", str(tmp_path / "out.tar"), "--since-index", str(deep),
                       "--config", str(cli)), 1, "deep.json")
    one_line(wharf_cli("mirror", "export", "--all", "-o", str(tmp_path / "out.tar"), "--since", str(deep),
                       "--config", str(cli)), 1, "deep.json")
    assert not list(tmp_path.glob("out.tar*"))


@pytest.mark.parametrize("recorded", ["text/html", OCI_INDEX, "application/vnd.oci.image.manifest.v1+json\r\nX: 1"])
async def test_a_manifest_type_that_differs_from_its_body_is_refused(make_wharf, tmp_path, recorded):
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex)
    record = image_record("team/app", manifest, config, layers, manifests={sha256(manifest): recorded})
    path = write_bundle(tmp_path / "type.tar", description([record]), [manifest, config, *layers])
    await refused(far, path, sha256(manifest))
    assert far.app[META].manifest_type(sha256(manifest)) is None


async def test_a_manifest_naming_blobs_the_image_does_not_carry_is_refused(make_wharf, tmp_path):
    """The description lists the manifest but not its layer: visible, the image could not be pulled."""
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex)
    record = image_record("team/app", manifest, config, layers, blobs={sha256(config): len(config)})
    path = write_bundle(tmp_path / "short.tar", description([record]), [manifest, config])
    await refused(far, path, sha256(layers[0]))


async def test_an_image_is_recorded_under_its_repository_not_the_name_it_claims(make_wharf, tmp_path):
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex)
    record = image_record("team/app", manifest, config, layers, name=f"{HOST}/other/app")
    path = write_bundle(tmp_path / "renamed.tar", description([record]), [manifest, config, *layers])
    report = await import_bundle(far.app, path)
    assert report.visible == [f"{HOST}/team/app:v1"]
    assert list(far.app[keys.MIRROR_RECORDS].images(IMPORT_HOLDER)) == [f"{HOST}/team/app"]
    assert await status_of(far, f"{HOST}/other/app/manifests/v1") != 200


@pytest.mark.parametrize("repo", ["../x", "Team/App", "a" * 300, "team//app"])
async def test_invalid_repositories_are_refused(make_wharf, tmp_path, repo):
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex)
    record = image_record(repo, manifest, config, layers)
    path = write_bundle(tmp_path / "repo.tar", description([record]), [manifest, config, *layers])
    await refused(far, path, "not a repository name")


# private content stays private ------------------------------------------------------------------
def store_privately(wharf, scope: str, *contents: bytes) -> None:
    """Content as a pull with a client's own upstream credential leaves it: stored, not public."""
    blobs, meta = wharf.app[BLOBS], wharf.app[META]
    for data in contents:
        blobs.put_bytes(data, Digest.parse(sha256(data)))
        meta.grant(sha256(data), scope, False)


async def test_a_bundle_cannot_publish_private_content_it_does_not_carry(make_wharf, tmp_path):
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex)
    secret = layers[0]
    store_privately(far, f"{HOST}/private/app", secret)
    assert await status_of(far, f"{HOST}/team/app/blobs/{sha256(secret)}") != 200
    record = image_record("team/app", manifest, config, layers)
    path = write_bundle(tmp_path / "leak.tar", description([record]), [manifest, config])  # not the secret layer
    await refused(far, path, sha256(secret))
    assert await status_of(far, f"{HOST}/team/app/blobs/{sha256(secret)}") != 200
    assert not far.app[META].visibility(sha256(secret), fresh=True).public

    # nor by naming it in blobs/ with other bytes: the store's copy is not proof the sender has it
    fake = write_bundle(tmp_path / "fake.tar", description([record]), [manifest, config],
                        extra=[(f"blobs/sha256/{sha256(secret)[7:]}", b"x" * len(secret))])
    await refused(far, fake, sha256(secret))
    assert not far.app[META].visibility(sha256(secret), fresh=True).public

    # a bundle that carries the bytes proves it has them: imported
    whole = write_bundle(tmp_path / "whole.tar", description([record]), [manifest, config, secret])
    report = await import_bundle(far.app, whole)
    assert report.visible == [f"{HOST}/team/app:v1"]
    assert await status_of(far, f"{HOST}/team/app/blobs/{sha256(secret)}") == 200


async def test_an_oci_layout_cannot_publish_a_private_manifest(make_wharf, tmp_path):
    """A layout whose index.json names a manifest only the store holds (privately)."""
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex)
    store_privately(far, f"{HOST}/private/app", manifest, config, *layers)
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": f"{HOST}/team/app:v1"}}]}).encode()
    path = write_bundle(tmp_path / "layout.tar", None, [], index=index)
    await refused(far, path, sha256(manifest))
    assert await status_of(far, f"{HOST}/team/app/manifests/v1") != 200


# OCI layouts that are not what they claim ---------------------------------------------------------
def layout_index(digest: str, size: int, media_type: str = OCI_INDEX) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": media_type, "digest": digest, "size": size,
         "annotations": {"org.opencontainers.image.ref.name": f"{HOST}/team/app:v1"}}]}).encode()


@pytest.mark.parametrize("body", [
    {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": ["not a descriptor"]},
    {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_CONFIG}, "layers": []},
    {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
     "config": {"mediaType": OCI_CONFIG, "digest": sha256(b"{}"), "size": "two"}, "layers": []},
    {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": {"a": 1}},
])
async def test_malformed_layout_manifests_are_refused(make_wharf, tmp_path, body):
    far = await far_side(make_wharf)
    data = json.dumps(body).encode()
    path = write_bundle(tmp_path / "bad.tar", None, [data, b"{}"], index=layout_index(sha256(data), len(data)))
    await refused(far, path, sha256(data))


async def test_a_deep_chain_of_indexes_is_refused(make_wharf, tmp_path):
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex)
    chain, child = [], (manifest, OCI_MANIFEST)
    for _ in range(2000):
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": child[1], "digest": sha256(child[0]), "size": len(child[0])}]}).encode()
        chain.append(body)
        child = (body, OCI_INDEX)
    path = write_bundle(tmp_path / "chain.tar", None, [manifest, config, *layers, *chain],
                        index=layout_index(sha256(child[0]), len(child[0])))
    await refused(far, path, "nested")


async def test_an_index_naming_one_child_many_times_is_walked_once(make_wharf, tmp_path):
    """Each level names the next 100 times: 10^10 walks if each mention were followed."""
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex)
    levels, child = [], (manifest, OCI_MANIFEST)
    for _ in range(5):
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": child[1], "digest": sha256(child[0]), "size": len(child[0])}] * 100}).encode()
        levels.append(body)
        child = (body, OCI_INDEX)
    path = write_bundle(tmp_path / "fan.tar", None, [manifest, config, *layers, *levels],
                        index=layout_index(sha256(child[0]), len(child[0])))
    report = await import_bundle(far.app, path)
    assert report.visible == [f"{HOST}/team/app:v1"]


# the tar itself -------------------------------------------------------------------------------------
async def test_tar_tricks_write_nothing_outside_the_store(make_wharf, tmp_path):
    """``..`` and absolute names, links out, devices, a second description after the first: nothing
    lands outside the store, and a tag comes only from content that verified."""
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex)
    record = image_record("team/app", manifest, config, layers)
    outside = tmp_path / "outside"
    outside.mkdir()
    path = tmp_path / "tricks.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "wharf-bundle.json", description([record]))
        _add(tar, f"../{outside.name}/escaped.tar", b"x" * 10)
        _add(tar, f"{outside}/absolute.json", b"{}")
        for kind, name in ((tarfile.SYMTYPE, "blobs/sha256/link"), (tarfile.LNKTYPE, "hard.tar")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, str(outside / "target")
            tar.addfile(link)
        device = tarfile.TarInfo("blobs/sha256/" + sha256(layers[0])[7:])
        device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(device)
        for data in [manifest, config, *layers]:
            _add(tar, f"blobs/sha256/{sha256(data)[7:]}", data)
        _add(tar, "index.json", b'{"schemaVersion": 2, "manifests": []}')
    report = await import_bundle(far.app, path)
    assert report.visible == [f"{HOST}/team/app:v1"]
    assert sorted(p.name for p in outside.iterdir()) == []
    store = far.app[keys.CONFIG].storage.root
    assert not list(tmp_path.rglob("escaped.tar")) and not list(tmp_path.rglob("absolute.json"))
    assert not list((store / "blobs").rglob("link"))


async def test_a_huge_declared_size_is_refused_before_writing(make_wharf, tmp_path):
    far = await far_side(make_wharf)
    path = tmp_path / "huge.tar"
    with open(path, "wb") as out:
        info = tarfile.TarInfo("blobs/sha256/" + "ee" * 32)
        info.size = 10 * 10**12  # 10 TB, PAX size header; the file itself ends after the header
        out.write(info.tobuf(tarfile.PAX_FORMAT))
    with pytest.raises((BundleError, OCIError)):  # the CLI writes either as one line
        await import_bundle(far.app, path)
    assert not [p for p in (far.app[keys.CONFIG].storage.root / "tmp").iterdir() if p.stat().st_size]


# export: where the bundle goes ---------------------------------------------------------------------
async def mirrored_here(wharf, repo: str, layer_bytes: int) -> None:
    """An image stored and adopted as a sync leaves it (no upstream needed)."""
    manifest, config, layers = image_parts(uuid.uuid4().hex, [os.urandom(layer_bytes)])
    blobs = wharf.app[BLOBS]
    for data in (manifest, config, *layers):
        blobs.put_bytes(data, Digest.parse(sha256(data)))
    wharf.app[keys.MIRROR_RECORDS].adopt(MirroredImage.from_dict(image_record(repo, manifest, config, layers)),
                                         "testlist")


def cli_config(wharf, workdir: Path) -> Path:
    return write_config(workdir, wharf_config(wharf.app[keys.CONFIG].storage.root, {HOST: DEAD}))


async def test_export_that_runs_out_of_room_leaves_no_partial_bundle(make_wharf, tmp_path):
    """The disk fills mid-blob (here: the file size limit): exit 1, one line, no bundle, no .part."""
    near = await far_side(make_wharf)
    await mirrored_here(near, "team/big", 12 * 1024 * 1024)
    cli = cli_config(near, tmp_path / "cli")
    out = tmp_path / "out" / "bundle.tar"
    out.parent.mkdir()

    def limited() -> None:
        _die_with_parent()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 * 1024 * 1024, 4 * 1024 * 1024))

    done = subprocess.run(wharf_argv("mirror", "export", "--all", "-o", str(out), "--config", str(cli)),
                          env=wharf_env(), capture_output=True, text=True, timeout=120, preexec_fn=limited)
    one_line(Result(done.returncode, done.stdout, done.stderr), 1, "cannot write", str(out))
    assert list(out.parent.iterdir()) == []


async def test_export_refuses_an_output_that_is_no_regular_file(make_wharf, tmp_path):
    near = await far_side(make_wharf)
    await mirrored_here(near, "team/app", 1000)
    cli = cli_config(near, tmp_path / "cli")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    directory = tmp_path / "a-directory"
    directory.mkdir()
    for target in (fifo, directory):
        one_line(wharf_cli("mirror", "export", "--all", "-o", str(target), "--config", str(cli)), 1,
                 "cannot write", str(target))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and directory.is_dir() and list(directory.iterdir()) == []
    assert not list(tmp_path.glob("*.part"))


async def test_no_file_of_a_bundle_may_exceed_max_layer_bytes(make_wharf, tmp_path):
    """A blob, or any other file of the tar (a compressed bundle expanding to terabytes of padding),
    larger than limits.max_layer_bytes is refused as a pulled or pushed one is."""
    far = await make_wharf(named_upstreams={HOST: DEAD}, limits={"max_layer_bytes": 4000})
    manifest, config, layers = image_parts(uuid.uuid4().hex, [os.urandom(5000)])
    record = image_record("team/app", manifest, config, layers)
    path = write_bundle(tmp_path / "big.tar", description([record]), [manifest, config, *layers])
    await refused(far, path, sha256(layers[0])[7:], "max_layer_bytes")
    assert far.app[BLOBS].size(Digest.parse(sha256(layers[0]))) is None
    padded = write_bundle(tmp_path / "padded.tar", None, [], extra=[("padding.bin", bytes(6000))])
    await refused(far, padded, "padding.bin", "max_layer_bytes")


# a server starting beside a running import ---------------------------------------------------------
async def test_a_starting_server_leaves_a_running_imports_partial_blob(make_wharf, tmp_path):
    """``wharf serve`` removes what a crash left in tmp/ when it starts (files untouched for
    TMP_GRACE_SECONDS); a blob an import (another process) still writes is no crash's leftover, even
    when the import stalled longer than that (a slow medium; here the grace is 0): removed, the
    import failed with a traceback."""
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex, [os.urandom(3 * 1024 * 1024)])
    record = image_record("team/app", manifest, config, layers)
    bundle = write_bundle(tmp_path / "bundle.tar", description([record]), [manifest, config, *layers])
    with tarfile.open(bundle) as tar:
        big = tar.getmember(f"blobs/sha256/{sha256(layers[0])[7:]}")
    store = far.app[keys.CONFIG].storage.root
    fifo = tmp_path / "feed.tar"
    os.mkfifo(fifo)
    process = subprocess.Popen(wharf_argv("mirror", "import", str(fifo), "--config",
                                          str(cli_config(far, tmp_path / "cli"))),
                               env=wharf_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=_die_with_parent)

    def feed() -> None:
        data = bundle.read_bytes()
        with open(fifo, "wb") as pipe:
            pipe.write(data[:big.offset_data + big.size // 2])
            deadline = time.monotonic() + 60
            while not [p for p in (store / "tmp").glob("*.part") if p.stat().st_size > 0]:
                assert process.poll() is None and time.monotonic() < deadline, process.communicate()
                time.sleep(0.05)
            from proxy.storage.blobs import BlobStore
            BlobStore(store).clean_tmp()  # what wharf serve does as it starts (proxy.server)
            pipe.write(data[big.offset_data + big.size // 2:])

    await asyncio.to_thread(feed)
    stdout, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode == 0 and "Traceback" not in stderr, stderr
    assert await status_of(far, f"{HOST}/team/app/blobs/{sha256(layers[0])}") == 200


async def test_what_a_killed_import_kept_is_let_go_by_the_next_import(make_wharf, tmp_path):
    """Killed mid-blob and never run again: its manifest and config stay kept by its pending
    holder (never evicted) until the next import, of another bundle, lets them go."""
    far = await far_side(make_wharf)
    manifest, config, layers = image_parts(uuid.uuid4().hex, [os.urandom(3 * 1024 * 1024)])
    bundle = write_bundle(tmp_path / "killed.tar", description([image_record("team/app", manifest, config, layers)]),
                          [manifest, config, *layers])
    with tarfile.open(bundle) as tar:
        big = tar.getmember(f"blobs/sha256/{sha256(layers[0])[7:]}")
    store, meta = far.app[keys.CONFIG].storage.root, far.app[META]
    fifo = tmp_path / "feed.tar"
    os.mkfifo(fifo)
    process = subprocess.Popen(wharf_argv("mirror", "import", str(fifo), "--config",
                                          str(cli_config(far, tmp_path / "cli"))),
                               env=wharf_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=_die_with_parent)

    def feed_then_kill() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(bundle.read_bytes()[:big.offset_data + big.size // 2])
            deadline = time.monotonic() + 60
            while not [p for p in (store / "tmp").glob("*.part") if p.stat().st_size > 0]:
                assert process.poll() is None and time.monotonic() < deadline, process.communicate()
                time.sleep(0.05)
            process.kill()
            process.wait()

    try:
        await asyncio.to_thread(feed_then_kill)
    except BrokenPipeError:
        pass
    left = [h for h in meta.keepers(sha256(config)) if h.startswith("import-pending:")]
    assert left, meta.keepers(sha256(config))

    other, other_config, other_layers = image_parts(uuid.uuid4().hex)
    small = write_bundle(tmp_path / "other.tar", description([image_record("team/other", other, other_config,
                                                                            other_layers)]),
                         [other, other_config, *other_layers])
    assert (await import_bundle(far.app, small)).visible == [f"{HOST}/team/other:v1"]
    assert meta.keepers(sha256(config)) == [] and meta.keepers(sha256(manifest)) == []
    assert meta.keepers(sha256(other_config)) == [IMPORT_HOLDER]


async def test_a_docker_save_config_too_large_to_read_is_refused(make_wharf, tmp_path):
    """A classic save's config is read whole (its diff_ids): one of 70 MB is refused, not loaded."""
    from support.bundles import SavedImage, docker_save_classic, layer_tar
    far = await make_wharf(named_upstreams={"docker.io": DEAD})
    layer = layer_tar(uuid.uuid4().hex, 1000)
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
                         "padding": "x" * (70 * 1024 * 1024)}).encode()
    tarball = tmp_path / "saved.tar"
    docker_save_classic(tarball, [SavedImage(["alpine:3"], config, [layer])])
    await refused(far, tarball, sha256(config), "more than an image config may be")
