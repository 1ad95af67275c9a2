"""Property-based tests of every parser of client input (hypothesis).

For any input, a parser either returns a value that satisfies the spec's grammar or raises the
one OCI error that belongs to it; nothing else escapes (no ValueError, TypeError, OverflowError,
RecursionError). Through the HTTP API, a fuzzed manifest PUT, page size or Content-Range never
answers 5xx. The server for the HTTP properties runs in a thread of its own (hypothesis drives
examples synchronously) and takes requests on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import re
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from proxy.errors import (BlobUploadInvalid, DigestInvalid, ManifestInvalid, NameInvalid,
                          PaginationNumberInvalid, RangeInvalid)
from proxy.http.pull import parse_range
from proxy.oci.digest import Digest
from proxy.oci.media import ParsedManifest, parse_manifest
from proxy.oci.names import validate_name, validate_tag

# the grammars, written out here independently of the code under test
NAME_GRAMMAR = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*", re.ASCII)
TAG_GRAMMAR = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", re.ASCII)
DIGEST_GRAMMAR = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}", re.ASCII)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPES = [OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
               "application/vnd.docker.distribution.manifest.list.v2+json",
               "application/vnd.docker.distribution.manifest.v1+prettyjws", "application/octet-stream", ""]
CONFIG_BODY = b"{}"
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG_BODY).hexdigest()

name_like = st.one_of(st.text(), st.from_regex(NAME_GRAMMAR, fullmatch=True),
                      st.text(alphabet="abz09._-/\n", max_size=40))
tag_like = st.one_of(st.text(), st.from_regex(TAG_GRAMMAR, fullmatch=True), st.text(alphabet="aZ09._-\n", max_size=40))
digest_like = st.one_of(st.text(), st.from_regex(DIGEST_GRAMMAR, fullmatch=True),
                        st.builds(lambda a, h: f"{a}:{h}", st.sampled_from(["sha256", "sha512", "md5", "SHA256", ""]),
                                  st.text(alphabet="0123456789abcdefABCDEF\n", max_size=130)))


@given(name_like)
def test_a_name_is_valid_exactly_when_it_matches_the_grammar(name):
    try:
        assert validate_name(name) == name
    except NameInvalid:
        assert not (NAME_GRAMMAR.fullmatch(name) and len(name) <= 255)
    else:
        assert NAME_GRAMMAR.fullmatch(name) and len(name) <= 255


@given(tag_like)
def test_a_tag_is_valid_exactly_when_it_matches_the_grammar(tag):
    try:
        assert validate_tag(tag) == tag
    except ManifestInvalid:
        assert not TAG_GRAMMAR.fullmatch(tag)
    else:
        assert TAG_GRAMMAR.fullmatch(tag)


@given(digest_like)
def test_a_digest_parses_exactly_when_it_is_a_supported_one(text):
    try:
        digest = Digest.parse(text)
    except DigestInvalid:
        assert not DIGEST_GRAMMAR.fullmatch(text)
    else:
        assert DIGEST_GRAMMAR.fullmatch(text) and str(digest) == text


range_like = st.one_of(st.text(max_size=60),
                       st.builds(lambda a, b: f"bytes={a}-{b}",
                                 st.one_of(st.just(""), st.integers(0, 2**70).map(str), st.text(max_size=5)),
                                 st.one_of(st.just(""), st.integers(0, 2**70).map(str), st.text(max_size=5))),
                       st.just("bytes=" + "9" * 5000 + "-"))


@given(range_like, st.integers(0, 2**40))
def test_a_range_is_a_span_inside_the_blob_or_range_invalid(header, size):
    try:
        span = parse_range(header, size)
    except RangeInvalid as error:
        assert error.headers["Content-Range"] == f"bytes */{size}"
        return
    if span is not None:
        start, end = span
        assert 0 <= start < end <= size


# --- manifests ------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
digests = st.sampled_from([CONFIG_DIGEST, "sha256:" + "0" * 64, "sha256:bad"]) | json_values
descriptors = st.fixed_dictionaries({}, optional={
    "mediaType": st.sampled_from(MEDIA_TYPES[:4] + ["application/vnd.oci.image.layer.v1.tar"]) | json_values,
    "digest": digests, "size": st.integers(-2, 2**64) | json_values, "urls": st.lists(st.text()) | json_values,
    "annotations": st.dictionaries(st.text(), st.text()) | json_values,
    "artifactType": st.text() | json_values}) | json_values
manifests = st.fixed_dictionaries({}, optional={
    "schemaVersion": st.sampled_from([1, 2, True, 2.0, "2"]) | json_values,
    "mediaType": st.sampled_from(MEDIA_TYPES) | json_values,
    "config": descriptors, "layers": st.lists(descriptors, max_size=4) | json_values,
    "manifests": st.lists(descriptors, max_size=4) | json_values, "subject": descriptors,
    "annotations": st.dictionaries(st.text(), st.text()) | json_values, "artifactType": st.text() | json_values,
    "fsLayers": st.lists(st.fixed_dictionaries({}, optional={"blobSum": digests}) | json_values) | json_values})


def _encode(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")


manifest_bodies = st.one_of(manifests.map(_encode), json_values.map(_encode), st.binary(max_size=200),
                            st.integers(1, 50_000).map(lambda depth: b"[" * depth + b"]" * depth),
                            st.integers(1, 50_000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth))


@given(manifest_bodies, st.sampled_from(MEDIA_TYPES) | st.none() | st.text(max_size=30))
def test_any_manifest_body_parses_or_is_manifest_invalid(body, content_type):
    try:
        parsed = parse_manifest(body, content_type)
    except ManifestInvalid:
        return
    assert isinstance(parsed, ParsedManifest) and isinstance(parsed.media_type, str)
    for descriptor in (*parsed.blobs, *parsed.manifests, *([parsed.subject] if parsed.subject else [])):
        assert isinstance(descriptor.digest, Digest) and isinstance(descriptor.media_type, str)
        assert type(descriptor.size) is int and 0 <= descriptor.size < 2**63
        assert all(isinstance(url, str) for url in descriptor.urls)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.annotations.items())
    assert parsed.artifact_type is None or isinstance(parsed.artifact_type, str)


# --- through the HTTP API -------------------------------------------------------------------------
class ThreadedWharf:
    """A local-only Wharf on 127.0.0.1 in a thread of its own, for synchronous hypothesis tests."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="wharf-under-test", daemon=True)

    def _run(self) -> None:
        from aiohttp import web
        from proxy.app import create_app
        from proxy.config import config_from_dict

        asyncio.set_event_loop(self._loop)
        app = create_app(config_from_dict({"listen": "127.0.0.1:0", "storage": {"root": str(self._root)},
                                           "default_upstream": None, "log": {"access_log": False}}))
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        from proxy.http.keys import DATABASE
        from support.accounts import add_token, add_user, basic
        add_user(app[DATABASE], "admin", admin=True)
        self.authorization = basic("admin", add_token(app[DATABASE], "admin")[1])
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> "ThreadedWharf":
        self._thread.start()
        assert self._ready.wait(30), "Wharf did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Authorization": self.authorization, **(headers or {})})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def wharf(tmp_path_factory):
    with ThreadedWharf(tmp_path_factory.mktemp("properties")) as server:
        status, _ = server.request("POST", f"/v2/fuzz/app/blobs/uploads/?digest={CONFIG_DIGEST}", CONFIG_BODY,
                                   {"Content-Type": "application/octet-stream"})
        assert status == 201
        yield server


def _error_code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


HTTP_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HTTP_SETTINGS
@given(manifest_bodies, st.sampled_from(MEDIA_TYPES), st.sampled_from(["fuzzed", "sha256:" + "0" * 64]))
def test_a_fuzzed_manifest_put_never_answers_5xx(wharf, body, content_type, reference):
    headers = {"Content-Type": content_type} if content_type else {}
    status, answer = wharf.request("PUT", f"/v2/fuzz/app/manifests/{reference}", body, headers)
    assert status < 500, answer
    if status >= 400:
        assert _error_code(answer) in {"MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "DIGEST_INVALID", "SIZE_INVALID"}


@HTTP_SETTINGS
@given(st.text(max_size=30), st.sampled_from(["/v2/_catalog", "/v2/fuzz/app/tags/list"]), st.text(max_size=20))
def test_any_page_size_is_a_page_or_pagination_number_invalid(wharf, n, path, last):
    status, answer = wharf.request("GET", f"{path}?n={quote(n)}&last={quote(last)}")
    if re.fullmatch(r"[0-9]+", n, re.ASCII) and int(n) < 10**9:
        assert status == 200, answer
    else:
        assert status == 400 and _error_code(answer) == PaginationNumberInvalid.code, answer


content_ranges = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),  # what HTTP carries
    st.builds(lambda a, b, total: f"{a}-{b}{total}", st.integers(0, 2**70), st.integers(0, 2**70),
              st.sampled_from(["", "/*", "/10", "/" + "9" * 30])),
    st.just("9" * 3000 + "-" + "9" * 3000))


@HTTP_SETTINGS
@given(content_ranges, st.binary(max_size=20))
def test_any_content_range_of_a_chunk_is_taken_or_refused_in_oci_form(wharf, content_range, data):
    conn = http.client.HTTPConnection("127.0.0.1", wharf.port, timeout=30)
    try:
        conn.request("POST", "/v2/fuzz/app/blobs/uploads/", headers={"Authorization": wharf.authorization})
        location = conn.getresponse().getheader("Location")
    finally:
        conn.close()
    status, answer = wharf.request("PATCH", location, data, {"Content-Range": content_range,
                                                             "Content-Type": "application/octet-stream"})
    assert status < 500, answer
    if status >= 400:
        assert _error_code(answer) in {BlobUploadInvalid.code, RangeInvalid.code, "SIZE_INVALID"}, answer

