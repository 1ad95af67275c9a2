"""The pure OCI helpers: digests, names, Accept handling, manifest parsing."""

from __future__ import annotations

import hashlib
import json

import pytest

from proxy.errors import DigestInvalid, ManifestInvalid, NameInvalid
from proxy.oci.digest import Digest
from proxy.oci.media import DOCKER_MANIFEST, OCI_INDEX, accepts, parse_accept, parse_manifest
from proxy.oci.names import validate_name


def test_digest_parse_accepts_sha256_and_sha512():
    assert str(Digest.parse("sha256:" + "a" * 64)) == "sha256:" + "a" * 64
    assert Digest.parse("sha512:" + "b" * 128).algorithm == "sha512"
    assert Digest.of(b"x", "sha512").hex == hashlib.sha512(b"x").hexdigest()


@pytest.mark.parametrize("text", ["sha256:" + "a" * 63, "sha256:" + "A" * 64, "md5:" + "a" * 32,
                                  "sha256", "", "sha512:" + "a" * 64, "sha256:" + "g" * 64])
def test_digest_parse_rejects_malformed(text):
    with pytest.raises(DigestInvalid):
        Digest.parse(text)


@pytest.mark.parametrize("name", ["a", "library/alpine", "a/b/c", "my-org/my_app", "x.y/z__w", "a--b"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "a/", "/a", "a//b", "a..b", "-a", "a" * 256, "a:b"])
def test_invalid_names(name):
    with pytest.raises(NameInvalid):
        validate_name(name)


def test_accept_lines_are_all_kept():
    accept = parse_accept(["application/vnd.oci.image.index.v1+json",
                           "application/vnd.docker.distribution.manifest.v2+json; q=0.5, */*"])
    assert accept == [OCI_INDEX, DOCKER_MANIFEST, "*/*"]
    assert accepts(accept, "anything/else")
    assert accepts(parse_accept([OCI_INDEX, DOCKER_MANIFEST]), DOCKER_MANIFEST)
    assert not accepts(parse_accept([DOCKER_MANIFEST]), OCI_INDEX)
    assert accepts([], OCI_INDEX)


def test_parse_manifest_finds_blobs_subject_and_foreign_layers():
    layer = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
             "digest": "sha256:" + "c" * 64, "size": 5, "urls": ["https://example/layer"]}
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "a" * 64, "size": 2},
           "layers": [layer], "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                          "digest": "sha256:" + "d" * 64, "size": 7}}
    parsed = parse_manifest(json.dumps(doc).encode(), None)
    assert [str(b.digest) for b in parsed.blobs] == ["sha256:" + "a" * 64, "sha256:" + "c" * 64]
    assert parsed.blobs[1].non_distributable
    assert str(parsed.subject.digest) == "sha256:" + "d" * 64


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"layers": [{"digest": "bad", "size": 1}]}'])
def test_parse_manifest_rejects_garbage(body):
    with pytest.raises(ManifestInvalid):
        parse_manifest(body, None)
