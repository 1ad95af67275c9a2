"""Upload sessions on disk (``proxy.storage.uploads``): resuming elsewhere, limits, expiry."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from proxy.errors import BlobUploadUnknown, DigestInvalid, RangeInvalid, SizeInvalid
from proxy.oci.digest import Digest
from proxy.storage.uploads import UploadStore


async def chunks(*parts: bytes):
    for part in parts:
        yield part


async def test_a_session_continues_in_another_process_and_is_hashed_from_its_file(tmp_path):
    first = UploadStore(tmp_path, idle_seconds=60, max_bytes=10**6)
    session = first.create("team/app")
    await first.append(session, chunks(b"hello ", b"wor"))
    second = UploadStore(tmp_path, idle_seconds=60, max_bytes=10**6)  # a restart, or another worker
    resumed = second.get("team/app", session.id)
    assert resumed.offset == 9 and resumed.hasher is None
    await second.append(resumed, chunks(b"ld"), start=9, length=2)
    path, size = await second.finish(resumed, Digest.of(b"hello world"))
    assert size == 11 and path.read_bytes() == b"hello world"
    assert sorted(os.listdir(tmp_path / "uploads")) == [path.name]
    path.rename(tmp_path / "adopted")  # what the blob store does with it
    with pytest.raises(BlobUploadUnknown):
        first.get("team/app", session.id)


async def test_a_process_that_sees_the_file_grow_rehashes(tmp_path):
    first = UploadStore(tmp_path, idle_seconds=60, max_bytes=10**6)
    second = UploadStore(tmp_path, idle_seconds=60, max_bytes=10**6)
    session = first.create("r")
    await first.append(session, chunks(b"one "))
    await second.append(second.get("r", session.id), chunks(b"two"), start=4)
    again = first.get("r", session.id)
    assert again.offset == 7 and again.hasher is None
    path, _ = await first.finish(again, Digest.of(b"one two"))
    assert path.read_bytes() == b"one two"


async def test_sha512_is_hashed_from_the_file_when_not_announced(tmp_path):
    store = UploadStore(tmp_path, idle_seconds=60, max_bytes=10**6)
    session = store.create("r")
    await store.append(session, chunks(b"abc" * 1000))
    digest = Digest("sha512", hashlib.sha512(b"abc" * 1000).hexdigest())
    path, size = await store.finish(session, digest)
    assert size == 3000


async def test_order_limit_and_digest_errors(tmp_path):
    store = UploadStore(tmp_path, idle_seconds=60, max_bytes=100)
    session = store.create("r")
    await store.append(session, chunks(b"x" * 10))
    with pytest.raises(RangeInvalid) as caught:
        await store.append(session, chunks(b"y"), start=11)
    assert caught.value.headers["Range"] == "0-9"
    assert store.get("r", session.id).offset == 10
    with pytest.raises(SizeInvalid):
        await store.append(session, chunks(b"z" * 91), start=10, length=91)
    with pytest.raises(BlobUploadUnknown):
        store.get("r", session.id)
    session = store.create("r")
    await store.append(session, chunks(b"a" * 10))
    with pytest.raises(DigestInvalid):
        await store.finish(session, Digest.of(b"b" * 10))
    with pytest.raises(BlobUploadUnknown):
        store.get("r", session.id)
    with pytest.raises(DigestInvalid):
        store.create("r", "md5")
    assert os.listdir(tmp_path / "uploads") == []


async def test_expiry_removes_idle_sessions_and_stray_state(tmp_path):
    store = UploadStore(tmp_path, idle_seconds=10, max_bytes=100)
    idle, live = store.create("r"), store.create("r")
    old = time.time() - 60
    for name in (f"{idle.id}.data", f"{idle.id}.json"):
        os.utime(tmp_path / "uploads" / name, (old, old))
    stray = tmp_path / "uploads" / ("f" * 32 + ".json")
    stray.write_text("{}")
    os.utime(stray, (old, old))
    assert store.expire() == 1
    assert sorted(os.listdir(tmp_path / "uploads")) == sorted([f"{live.id}.data", f"{live.id}.json"])
    with pytest.raises(BlobUploadUnknown):
        store.get("r", idle.id)
    # an idle session asked for directly is expired on the spot
    os.utime(tmp_path / "uploads" / f"{live.id}.data", (old, old))
    with pytest.raises(BlobUploadUnknown):
        store.get("r", live.id)
    assert os.listdir(tmp_path / "uploads") == []
