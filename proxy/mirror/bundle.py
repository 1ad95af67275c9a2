"""The bundle format: an OCI image layout in one tar, optionally gzip- or zstd-compressed.

Entries, in the order Wharf writes them (the layout first; what an importer must know before the
first blob next; skopeo and other OCI-layout tools read the tar as a plain image layout):
- ``oci-layout``: ``{"imageLayoutVersion": "1.0.0"}``;
- ``wharf-checksums.sha256``: one ``sha256sum -c`` line for every other file of the tar;
- ``wharf-bundle.json`` (``Description``): the bundle's id, the images as ``MirroredImage`` dicts
  (tags, referrers and left-out children travel with them), for a delta the base it was cut
  against, and the inventory the receiving side holds once it has imported it;
- ``index.json``: one descriptor per (image, tag), annotated with the full original name
  (``org.opencontainers.image.ref.name``: ``registry.test/bars/img:v1``), the upstream's name
  (``io.wharf.registry``) and the repository (``io.wharf.repository``);
- ``blobs/<alg>/<hex>``: every manifest and blob (a delta: only those its base does not hold).

Rules: a bundle is written to ``<name>.part`` and renamed once complete, so a file under the
bundle's name is whole; blobs are copied in ``CHUNK`` pieces, never whole in memory; a reader tells
the compression by magic bytes, not by the file's name; a file that is no bundle, or a damaged or
truncated one, is a ``BundleError`` naming it, never a traceback. What a bundle says is hostile until
checked: the description's fields must have their types (``image_from``), JSON nested too deeply
is unreadable like any other bad JSON, and an inventory is read up to ``SMALL_FILE_LIMIT``.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import zstandard

from proxy.mirror.records import MirroredImage

CHUNK = 1024 * 1024
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
DESCRIPTION_FILE = "wharf-bundle.json"
CHECKSUMS_FILE = "wharf-checksums.sha256"
LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
WHARF_REGISTRY = "io.wharf.registry"
WHARF_REPOSITORY = "io.wharf.repository"
COMPRESSIONS = ("none", "gzip", "zstd")
FORMAT = "wharf-bundle"
INVENTORY_FORMAT = "wharf-inventory"
VERSION = 1
SMALL_FILE_LIMIT = 256 * 1024 * 1024  # index.json, wharf-bundle.json (its inventory grows with the store)

_BLOB_PATH = re.compile(r"blobs/(sha256|sha512)/([0-9a-f]+)")


class BundleError(Exception):
    """A bundle (or inventory) cannot be read or is refused; the message is one line for the user."""


def blob_path(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    return f"blobs/{algorithm}/{hex_part}"


def blob_digest(path: str) -> str | None:
    """The digest a ``blobs/<alg>/<hex>`` entry claims to hold, or None for any other path."""
    match = _BLOB_PATH.fullmatch(path)
    return f"{match.group(1)}:{match.group(2)}" if match else None


def human_size(amount: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return ""


def new_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ-", time.gmtime()) + uuid.uuid4().hex[:12]


def _mapping(raw: dict, key: str, values: type | tuple[type, ...]) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, values)
                                              and not isinstance(v, bool) for k, v in value.items()):
        raise ValueError(f"an image's {key} is not a mapping of strings to {getattr(values, '__name__', 'values')}")
    return value


def image_from(raw: object) -> MirroredImage:
    """A ``MirroredImage`` from a bundle's description, every field of the type it must have
    (ValueError otherwise): what a bundle says is read as hostile until checked."""
    if not isinstance(raw, dict):
        raise ValueError("an image is not an object")
    for key in ("name", "upstream", "repo"):
        if not isinstance(raw.get(key), str):
            raise ValueError(f"an image's {key} is not a string")
    referrers = _mapping(raw, "referrers", list)
    if not all(isinstance(d, dict) for descriptors in referrers.values() for d in descriptors):
        raise ValueError("an image's referrers are not lists of descriptors")
    synced_at = raw.get("synced_at", 0.0)
    if not isinstance(synced_at, (int, float)) or isinstance(synced_at, bool):
        raise ValueError("an image's synced_at is not a number")
    return MirroredImage(raw["name"], raw["upstream"], raw["repo"], dict(_mapping(raw, "tags", str)),
                         dict(_mapping(raw, "manifests", str)), dict(_mapping(raw, "blobs", int)), referrers,
                         dict(_mapping(raw, "unmirrored", str)), float(synced_at))


def loads(data: bytes):
    """``json.loads`` whose failures (too deeply nested ones too) are ValueError."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None


# the description ------------------------------------------------------------------------------
@dataclass
class Description:
    """``wharf-bundle.json``: what a Wharf bundle carries and what it was cut against."""

    id: str
    created: float
    images: list[MirroredImage]
    inventory: list[str]                 # every digest the receiving side holds once it imported this
    base: dict | None = None             # a delta: {"id": base bundle or inventory id, "digests": count}

    def to_bytes(self) -> bytes:
        return json.dumps({"format": FORMAT, "version": VERSION, "id": self.id, "created": self.created,
                           "base": self.base, "images": [i.as_dict() for i in self.images],
                           "inventory": self.inventory}, sort_keys=True, indent=1).encode()

    @classmethod
    def parse(cls, data: bytes, source: str) -> "Description":
        try:
            raw = loads(data)
            if not isinstance(raw, dict) or raw.get("format") != FORMAT:
                raise ValueError("not a Wharf bundle description")
            if raw.get("version") != VERSION:
                raise ValueError(f"format version {raw.get('version')!r}; this Wharf reads version {VERSION}")
            base = raw.get("base")
            if base is not None and not isinstance(base, dict):
                raise ValueError("base is not an object")
            return cls(str(raw["id"]), float(raw["created"]), [image_from(i) for i in raw["images"]],
                       [str(d) for d in raw["inventory"]], base)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BundleError(f"{source}: {DESCRIPTION_FILE} is unreadable ({exc})") from None


def checksum_lines(files: list[tuple[str, str]]) -> bytes:
    """``sha256sum -c`` input for (path, sha256 hex) pairs."""
    return "".join(f"{hex_part}  {name}\n" for name, hex_part in files).encode()


def parse_checksums(data: bytes, source: str) -> dict[str, str]:
    found = {}
    for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        if not match:
            raise BundleError(f"{source}: line {number} of {CHECKSUMS_FILE} is not a sha256sum line")
        found[normal_path(match.group(2))] = match.group(1)
    return found


# inventories ----------------------------------------------------------------------------------
def write_inventory(path: Path, inventory_id: str, digests: set[str]) -> None:
    """``wharf mirror inventory -o FILE``: what a store holds, for ``export --since-index``."""
    data = json.dumps({"format": INVENTORY_FORMAT, "version": VERSION, "id": inventory_id,
                       "created": time.time(), "digests": sorted(digests)}, indent=1).encode()
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    os.replace(part, path)


def read_inventory(path: Path) -> tuple[str, set[str]]:
    """(id, digests) of an inventory file."""
    try:
        with open(path, "rb") as file:
            data = file.read(SMALL_FILE_LIMIT + 1)
        if len(data) > SMALL_FILE_LIMIT:
            raise ValueError(f"larger than the {SMALL_FILE_LIMIT} bytes this Wharf reads")
        raw = loads(data)
        if not isinstance(raw, dict) or raw.get("format") != INVENTORY_FORMAT:
            raise ValueError("not a file written by wharf mirror inventory")
        return str(raw["id"]), {str(d) for d in raw["digests"]}
    except OSError as exc:
        raise BundleError(f"{path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: not an inventory ({exc})") from None


def read_description(path: Path) -> Description:
    """A Wharf bundle's description, read without going through its blobs when it comes first."""
    for entry in entries(path):
        if entry.name == DESCRIPTION_FILE:
            return Description.parse(entry.read_all(), str(path))
    raise BundleError(f"{path} is not a Wharf bundle (it has no {DESCRIPTION_FILE})")


# reading ----------------------------------------------------------------------------------------
def normal_path(name: str) -> str:
    name = posixpath.normpath(name.lstrip("/"))
    return "" if name == "." else name


class _Prefixed:
    """A file's first bytes, read to tell its kind, put back in front of the rest."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head, self._rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._rest.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._rest.read(size)


class _Forward:
    """A stream (a decompressor, a pipe) as the tar reader needs it: a position, and seeks that only
    go forward (by reading past); what goes wrong in a decompressor means a damaged bundle."""

    def __init__(self, source: str, reader) -> None:
        self._source, self._reader, self._position = source, reader, 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._reader.read(size)
        except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
            raise BundleError(f"{self._source} is damaged or truncated ({exc})") from None
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or offset < self._position:
            raise io.UnsupportedOperation("a bundle is read forward only")
        while self._position < offset and self.read(min(CHUNK, offset - self._position)):
            pass
        return self._position


def _read_head(file: IO[bytes], size: int) -> bytes:
    head = b""
    while len(head) < size:
        more = file.read(size - len(head))
        if not more:
            break
        head += more
    return head


def compression_of(head: bytes) -> str | None:
    """``gzip``, ``zstd`` or ``none`` (a tar) from a file's first 512 bytes; None: not a bundle."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[257:262] == b"ustar":
        return "none"
    return None


@dataclass
class Entry:
    """One file (or link) of a bundle, read in order."""

    name: str
    size: int
    link: str | None = None  # a symbolic or hard link: the path it names
    _file: IO[bytes] | None = field(default=None, repr=False)
    _source: str = ""

    def chunks(self) -> Iterator[bytes]:
        assert self._file is not None
        left = self.size
        while left > 0:
            chunk = self._read(min(CHUNK, left))
            if not chunk:
                raise BundleError(f"{self._source} is truncated inside {self.name}")
            left -= len(chunk)
            yield chunk

    def read_all(self, limit: int = SMALL_FILE_LIMIT) -> bytes:
        if self.size > limit:
            raise BundleError(f"{self._source}: {self.name} is {self.size} bytes, more than this Wharf reads")
        return b"".join(self.chunks())

    def _read(self, size: int) -> bytes:
        try:
            return self._file.read(size)  # type: ignore[union-attr]
        except (EOFError, OSError) as exc:
            raise BundleError(f"{self._source} is damaged or truncated inside {self.name} ({exc})") from None


def entries(path: Path) -> Iterator[Entry]:
    """The files of a bundle in tar order, plain or compressed (told by magic bytes), streamed."""
    source = str(path)
    try:
        file = open(path, "rb", buffering=CHUNK)
    except OSError as exc:
        raise BundleError(f"{source}: {exc.strerror or exc}") from None
    with file:
        head = _read_head(file, 512)
        kind = compression_of(head)
        if kind is None:
            raise BundleError(f"{source} is not a bundle: neither a tar nor a gzip- or zstd-compressed tar")
        if kind == "none" and file.seekable():
            file.seek(0)
            reader: IO[bytes] | _Forward = file  # a plain file: blobs already stored are skipped by seeking
        else:
            raw = _Prefixed(head, file)
            if kind == "gzip":
                reader = _Forward(source, gzip.GzipFile(fileobj=raw, mode="rb"))  # type: ignore[arg-type]
            elif kind == "zstd":
                reader = _Forward(source, zstandard.ZstdDecompressor().stream_reader(
                    raw, read_size=CHUNK, read_across_frames=True))
            else:
                reader = _Forward(source, raw)
        try:  # each member's data is read straight from ``reader``: tarfile's own file objects copy it twice
            tar = tarfile.open(fileobj=reader, mode="r:")  # type: ignore[call-overload]
        except tarfile.TarError as exc:
            raise BundleError(f"{source} is not a bundle: {exc}") from None
        with tar:
            while True:
                try:
                    member = tar.next()
                except (tarfile.TarError, EOFError) as exc:
                    raise BundleError(f"{source} is damaged or truncated ({exc})") from None
                if member is None:
                    return
                name = normal_path(member.name)
                if member.isfile():
                    yield Entry(name, member.size, None, reader, source)  # type: ignore[arg-type]
                elif member.issym():
                    yield Entry(name, 0, normal_path(posixpath.join(posixpath.dirname(name), member.linkname)))
                elif member.islnk():
                    yield Entry(name, 0, normal_path(member.linkname))


# writing ----------------------------------------------------------------------------------------
class BundleWriter:
    """Writes a tar (compressed or not) to ``<path>.part``; renamed to ``path`` when closed whole."""

    def __init__(self, path: Path, compression: str = "none", mtime: float | None = None) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}")
        self.path = Path(path)
        self._part = self.path.with_name(self.path.name + ".part")
        self._compression = compression
        self._mtime = int(mtime if mtime is not None else time.time())

    def __enter__(self) -> "BundleWriter":
        if self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a directory")
        if self.path.exists() and not self.path.is_file():  # a device, a FIFO: renamed over, it would be gone
            raise OSError(errno.EINVAL, "it is not a regular file (a bundle is written beside it, then renamed)")
        self._file = open(self._part, "wb")
        if self._compression == "gzip":  # layers are compressed already: level 1 saves as much, faster
            self._wrapper = gzip.GzipFile(filename="", mode="wb", fileobj=self._file, compresslevel=1, mtime=0)
        elif self._compression == "zstd":
            self._wrapper = zstandard.ZstdCompressor(level=3).stream_writer(self._file, closefd=False)
        else:
            self._wrapper = None
        self._tar = tarfile.open(fileobj=self._wrapper or self._file, mode="w|", bufsize=CHUNK,
                                 format=tarfile.PAX_FORMAT, copybufsize=CHUNK)
        return self

    def _info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, self._mtime, 0o644
        info.uid = info.gid = 0
        return info

    def add_bytes(self, name: str, data: bytes) -> None:
        self._tar.addfile(self._info(name, len(data)), io.BytesIO(data))

    def add_file(self, name: str, file: IO[bytes], size: int) -> None:
        """Copy ``size`` bytes of an open file in ``CHUNK`` pieces."""
        self._tar.addfile(self._info(name, size), file)

    def __exit__(self, exc_type, exc, tb) -> None:
        """Finish and rename a whole bundle; whatever failed (the copy, or finishing it: a full disk),
        the partial file is removed."""
        try:
            if exc_type is None:  # a failed copy is not finished: writing its end could fail again
                self._tar.close()
                if self._wrapper is not None:
                    self._wrapper.close()
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                os.replace(self._part, self.path)
        except BaseException:
            exc_type = type(exc)
            raise
        finally:
            if exc_type is not None:
                self._tar.fileobj.closed = True  # type: ignore[attr-defined]  # its stream must not flush at exit
                with contextlib.suppress(OSError):
                    self._file.close()  # flushing what is buffered may fail again
                self._part.unlink(missing_ok=True)


def sha256_of_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def combine(old: MirroredImage, new: MirroredImage, keeps=lambda digest: True) -> MirroredImage:
    """``new`` with what ``old`` (the same name) held besides, as far as ``keeps`` (a digest) allows:
    tags of ``new`` win; content, referrers and left-out children add up."""
    merged = MirroredImage.from_dict(new.as_dict())
    merged.manifests = {**{d: t for d, t in old.manifests.items() if keeps(d)}, **new.manifests}
    merged.blobs = {**{d: s for d, s in old.blobs.items() if keeps(d)}, **new.blobs}
    merged.tags = {**{t: d for t, d in old.tags.items() if d in merged.manifests}, **new.tags}
    for subject, descriptors in old.referrers.items():
        known = {d.get("digest") for d in merged.referrers.get(subject, [])}
        extra = [d for d in descriptors if d.get("digest") not in known and d.get("digest") in merged.manifests]
        if extra:
            merged.referrers.setdefault(subject, []).extend(extra)
    merged.unmirrored = {d: why for d, why in {**old.unmirrored, **new.unmirrored}.items() if d not in merged.manifests}
    merged.synced_at = max(old.synced_at, new.synced_at)
    return merged
