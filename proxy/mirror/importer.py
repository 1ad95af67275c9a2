"""``wharf mirror import``: bundles into the store — Wharf's own, any OCI image layout (skopeo's
``oci-archive``), and ``docker save`` tarballs — made visible only once verified and complete.

Rules, in order:
1. one pass over the tar, in a worker thread: every ``blobs/<alg>/<hex>`` is streamed into the store
   and its digest verified as it is committed (a blob already complete in the store is skipped,
   not rehashed, unless the store holds it for some clients only: see 4); a blob that does not
   verify refuses the whole bundle, naming it. ``docker save`` configs and layers are stored under
   the digest computed as they stream (and checked against the config's ``diff_ids``,
   ``proxy.mirror.dockersave``). No file of the tar may be larger than ``limits.max_layer_bytes``
   (as for a blob pulled or pushed): what a compressed bundle expands to is bounded per file by
   that, and in all by the store's free space.
2. A Wharf bundle's description comes ahead of its blobs and is checked before the first blob is
   stored: each image's upstream must be configured here (else the bundle is refused, naming the
   upstream to add with ``offline: true``), and content that is neither in the bundle nor in the
   store refuses a delta, naming its base and the missing digests (its base was not imported).
3. The small files must match the checksum list, and every file it lists must have come (a
   truncated bundle is refused).
4. Each image must be complete in the store and be what its manifests say (``_Intake._check``:
   tags name its manifests, each manifest's type is its body's, all it names is part of the
   image), and every digest the bundle does not carry must be public here already (a delta's
   base): a bundle never makes private content (a client's own credential, a push) public under
   another name. A blob the store holds for some clients only counts as carried only once the
   bundle's copy hashed to it (an interrupted import's own blobs, granted to nobody yet, are
   skipped on the rerun). An image is recorded under its repository's full name, whatever name
   the description gives it.
5. Each image is then adopted (``MirrorRecords.adopt``
   under the ``import`` holder, added to what earlier imports of that name hold): the one step
   that makes anything visible, tag records last.
While it runs, what it stored is kept by a holder named after the bundle (``import-pending:<id>``,
or after the file for bundles other tools wrote) so that the cache budget cannot evict it before
it is adopted; the holder lets go once the images are adopted or the bundle is refused. Killed midway, an import leaves
stored blobs (visible to nobody) and a partial file in ``tmp/``; running it again skips the first
and finishes; never run again, what it kept is let go by the next import (of any bundle) once no
process that used its holder lives (``release_abandoned``). Importing a bundle again changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from proxy.errors import DigestInvalid, ManifestInvalid, OCIError, SizeInvalid
from proxy.http import keys
from proxy.mirror import bundle, dockersave
from proxy.mirror.bundle import BundleError, Description
from proxy.mirror.records import IMPORT_HOLDER, MirroredImage, MirrorIncomplete, MirrorRecords
from proxy.oci.digest import Digest
from proxy.oci.media import MANIFEST_TYPES, MAX_MANIFEST_BYTES, OCI_MANIFEST, ParsedManifest, parse_manifest
from proxy.oci.names import validate_tag
from proxy.registry.addressing import Addressing
from proxy.registry.base import Target
from proxy.storage.blobs import BlobStore
from proxy.storage.budget import Budget
from proxy.storage.meta import MetaStore

MAX_CONFIG_BYTES = 64 * 1024 * 1024  # a docker save config is read whole to check its diff_ids
MAX_NESTING = 8  # indexes within indexes (the image spec's nest one deep)
# files read into memory; any other file but blobs/ is a docker save config or layer, or ignored
_SMALL_FILES = {bundle.LAYOUT_FILE, bundle.INDEX_FILE, bundle.DESCRIPTION_FILE, bundle.CHECKSUMS_FILE,
                dockersave.MANIFEST_FILE, "repositories"}


def _shown(digests: list[str], first: int = 3) -> str:
    more = len(digests) - first
    return ", ".join(digests[:first]) + (f" and {more} more" if more > 0 else "")


@dataclass
class ImportReport:
    bundle: Path
    images: int
    visible: list[str] = field(default_factory=list)  # name:tag made visible (new, or moved)
    imported: int = 0        # manifests and blobs stored by this import
    imported_bytes: int = 0
    present: int = 0         # already in the store

    @property
    def nothing_new(self) -> bool:
        return not self.visible and not self.imported

    def summary(self) -> str:
        if self.nothing_new:
            return (f"{self.bundle}: nothing new: its {self.images} image(s) and {self.present} "
                    f"manifest(s) and blob(s) were already here")
        shown = ", ".join(self.visible[:5]) + (f" and {len(self.visible) - 5} more" if len(self.visible) > 5 else "")
        images = len({reference.rpartition(":")[0] for reference in self.visible})
        return (f"{self.bundle}: {images} image(s), {len(self.visible)} tag(s) made visible"
                f"{f' ({shown})' if shown else ''}; "
                f"{self.imported} manifest(s) and blob(s) imported ({bundle.human_size(self.imported_bytes)}), "
                f"{self.present} already present")


def resolve_upstream(addressing: Addressing, name: str, source: str) -> Target:
    """The upstream repository a bundle's full name means here; refused unless its host is a
    configured upstream (an air-gapped site names each upstream it serves, ``offline: true``)."""
    host = name.partition("/")[0]
    try:
        if addressing.is_upstream_namespace(name, None):
            target = addressing.resolve(name, None)
            if target.upstream is not None:
                return target
    except OCIError as exc:
        raise BundleError(f"{source}: {name} is not a repository name ({exc.message})") from None
    raise BundleError(f"{source} holds {name}, but no upstream named {host} is configured here: add it to "
                      f"the config's upstreams (name: {host}, url: its address, offline: true) and import again")


class _Intake:
    """One bundle's pass: blobs into the store, small files in memory, then the images it holds.
    Blocking (a worker thread)."""

    def __init__(self, path: Path, blobs: BlobStore, meta: MetaStore, budget: Budget,
                 addressing: Addressing, records: MirrorRecords, max_blob_bytes: int | None = None) -> None:
        self.path, self.source = path, str(path)
        self._max_blob_bytes = max_blob_bytes  # limits.max_layer_bytes, as for a blob pulled or pushed
        self._blobs, self._meta, self._budget = blobs, meta, budget
        self._addressing, self._records = addressing, records
        stat = os.stat(path)
        identity = f"{os.path.realpath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()
        self._file_holder = "import-pending:" + hashlib.sha256(identity).hexdigest()[:16]
        self.kept: dict[str, set[str]] = {}              # pending holder -> the digests it keeps
        self.small: dict[str, bytes] = {}
        self.in_bundle: dict[str, int] = {}             # blobs/ entries: digest -> size
        self.files: dict[str, tuple[str, int]] = {}     # other stored files (docker save): path -> (digest, size)
        self.links: dict[str, str] = {}
        self.carried: set[str] = set()                  # digests whose bytes this bundle holds, verified
        self.description: Description | None = None
        self.described: list[MirroredImage] = []
        self.report = ImportReport(path, 0)
        self.stop = threading.Event()  # set when the command is interrupted: the pass ends at the next chunk

    @property
    def holder(self) -> str:
        """Who keeps the content until it is adopted: the bundle by its id once its description is
        read (ahead of the blobs in Wharf's bundles: a rerun from another path is the same), else the file."""
        return f"import-pending:{self.description.id}" if self.description else self._file_holder

    # the pass ----------------------------------------------------------------------------------
    def run(self) -> list[MirroredImage]:
        with contextlib.closing(bundle.entries(self.path)) as found:
            for entry in found:
                self._take(entry)
        self._check_listed()
        images = self._images()
        for image in images:
            missing = self._records.missing(image)
            if missing:
                raise BundleError(self._missing_message(missing, image.name))
            self._check(image)
        self.report.images = len(images)
        return images

    def _take(self, entry: bundle.Entry) -> None:
        if self._max_blob_bytes is not None and entry.size > self._max_blob_bytes:
            raise BundleError(f"{self.source}: {entry.name[:200]} is {entry.size} bytes, more than this Wharf's "
                              f"limits.max_layer_bytes ({self._max_blob_bytes}); nothing was made visible")
        if entry.link is not None:
            self.links[entry.name] = entry.link
        elif (digest := bundle.blob_digest(entry.name)) is not None:
            self._store_blob(entry, digest)
        elif entry.name in _SMALL_FILES:
            self.small[entry.name] = entry.read_all()
            if entry.name == bundle.DESCRIPTION_FILE:
                self._describe()
        elif entry.name.endswith(".tar") or (entry.name.endswith(".json") and "/" not in entry.name):
            self._store_computed(entry)

    def _keep(self, digest: str) -> None:
        """Keep ``digest`` under this import's holder (before its commit: the budget counts it kept)."""
        kept = self.kept.setdefault(self.holder, set())
        if digest in kept:
            return
        if not kept:
            _pending(self._meta, self.holder, True)
        kept.add(digest)
        if self._meta.keep(digest, self.holder) and not self._meta.is_pushed(digest):
            size = self._blobs.size(Digest.parse(digest))
            if size is not None:
                self._budget.kept(size, digest)

    def _chunks(self, entry: bundle.Entry):
        for chunk in entry.chunks():
            if self.stop.is_set():
                raise BundleError(f"{self.source}: interrupted; run the same import again to finish it")
            yield chunk

    def _store_blob(self, entry: bundle.Entry, name: str) -> None:
        try:
            digest = Digest.parse(name)
        except DigestInvalid:
            raise BundleError(f"{self.source}: {entry.name} is not named by a digest") from None
        self.in_bundle[name] = entry.size
        self._keep(name)
        if self._blobs.size(digest) is not None:
            visibility = self._meta.visibility(name, fresh=True)
            if visibility.repos and not visibility.public:  # held for some clients only
                self._prove(entry, digest)
            self.carried.add(name)
            self.report.present += 1
            return
        writer = self._blobs.new_writer(digest.algorithm, max_size=entry.size, expected_size=entry.size)
        try:
            for chunk in self._chunks(entry):
                writer.write(chunk)
            writer.commit(digest, entry.size)
        except (DigestInvalid, SizeInvalid):  # the commit dropped the file
            raise BundleError(f"{self.source}: blob {name} does not match its digest (the bundle is damaged); "
                              f"nothing of this bundle was made visible") from None
        except BaseException:
            writer.abort()
            raise
        self.carried.add(name)
        self.report.imported += 1
        self.report.imported_bytes += entry.size

    def _prove(self, entry: bundle.Entry, digest: Digest) -> None:
        """A blob the store holds but not publicly (a client's own credential, a push): the bundle's
        copy is hashed, not trusted by its name, before the bundle may count as carrying it."""
        hasher, size = digest.hasher(), 0
        for chunk in self._chunks(entry):
            hasher.update(chunk)
            size += len(chunk)
        if hasher.hexdigest() != digest.hex or size != self._blobs.size(digest):
            raise BundleError(f"{self.source}: blob {digest} does not match its digest (the bundle is damaged); "
                              f"nothing of this bundle was made visible")

    def _store_computed(self, entry: bundle.Entry) -> None:
        """A docker save file, stored under the digest it hashes to."""
        writer = self._blobs.new_writer("sha256", max_size=entry.size, expected_size=entry.size)
        try:
            for chunk in self._chunks(entry):
                writer.write(chunk)
            digest = writer.digest()
            if self._blobs.size(digest) is not None:
                writer.abort()
                self.report.present += 1
            else:
                writer.commit(digest, entry.size)
                self.report.imported += 1
                self.report.imported_bytes += entry.size
        except BaseException:
            writer.abort()
            raise
        self.files[entry.name] = (str(digest), entry.size)
        self.carried.add(str(digest))
        self._keep(str(digest))

    # a Wharf bundle's description: checked before its blobs ---------------------------------------
    def _describe(self) -> None:
        data = self.small[bundle.DESCRIPTION_FILE]
        self._check_small(bundle.DESCRIPTION_FILE, data)
        self.description = Description.parse(data, self.source)
        self.described = [self._here(image) for image in self.description.images]
        if bundle.CHECKSUMS_FILE not in self.small:
            return
        listed = {bundle.blob_digest(name) for name in self._checksums()}
        needed = set().union(*(image.content() for image in self.described)) if self.described else set()
        missing = sorted(d for d in needed - listed if self._blobs.size(Digest.parse(d)) is None)
        if missing:
            raise BundleError(self._missing_message(missing))

    def _here(self, image: MirroredImage) -> MirroredImage:
        """A bundle's image under this Wharf's name for its upstream."""
        for digest in image.content() | set(image.tags.values()) | set(image.unmirrored):
            self._digest(digest)
        target = resolve_upstream(self._addressing, f"{image.upstream}/{image.repo}", self.source)
        return MirroredImage.from_dict({**image.as_dict(), "name": f"{target.upstream}/{target.repo}",
                                        "upstream": target.upstream, "repo": target.repo})

    def _missing_message(self, missing: list[str], name: str | None = None) -> str:
        base = self.description.base if self.description else None
        if base:
            return (f"{self.source} is a delta against {base.get('id')}, whose content is not all here: "
                    f"{len(missing)} manifest(s) or blob(s) missing ({_shown(missing)}); import {base.get('id')} "
                    f"(and the bundles before it) first; nothing of this bundle was made visible")
        return (f"{self.source} is incomplete: {name or 'its images'} need(s) {len(missing)} manifest(s) or "
                f"blob(s) that are neither in it nor in the store ({_shown(missing)}); nothing was made visible")

    # the checksum list ---------------------------------------------------------------------------
    def _checksums(self) -> dict[str, str]:
        return bundle.parse_checksums(self.small[bundle.CHECKSUMS_FILE], self.source)

    def _check_small(self, name: str, data: bytes) -> None:
        if bundle.CHECKSUMS_FILE in self.small:
            expected = self._checksums().get(name)
            if expected is not None and hashlib.sha256(data).hexdigest() != expected:
                raise BundleError(f"{self.source}: {name} does not match its checksum (the bundle is damaged)")

    def _check_listed(self) -> None:
        """Every file the checksum list names came, and the small ones match it."""
        if bundle.CHECKSUMS_FILE not in self.small:
            return
        absent = []
        for name, expected in self._checksums().items():
            digest = bundle.blob_digest(name)
            if digest is not None:
                if digest not in self.in_bundle:
                    absent.append(name)
            elif name not in self.small:
                absent.append(name)
            elif hashlib.sha256(self.small[name]).hexdigest() != expected:
                raise BundleError(f"{self.source}: {name} does not match its checksum (the bundle is damaged)")
        if absent:
            raise BundleError(f"{self.source} is truncated: {len(absent)} file(s) of its checksum list are not in "
                              f"it ({_shown(absent)}); nothing was made visible")

    # the images ----------------------------------------------------------------------------------
    def _images(self) -> list[MirroredImage]:
        if self.description is not None:
            return self.described
        if bundle.INDEX_FILE in self.small:
            return self._layout_images()
        if dockersave.MANIFEST_FILE in self.small:
            return self._classic_images()
        raise BundleError(f"{self.source} is not a bundle: it has no {bundle.INDEX_FILE} (an OCI image layout) "
                          f"and no {dockersave.MANIFEST_FILE} (docker save)")

    def _image(self, grouped: dict[str, MirroredImage], name: str) -> MirroredImage:
        if name not in grouped:
            target = resolve_upstream(self._addressing, name, self.source)
            grouped[name] = MirroredImage(name, target.upstream, target.repo, synced_at=time.time())
        return grouped[name]

    def _layout_images(self) -> list[MirroredImage]:
        """An OCI image layout without Wharf's description: named by its index.json annotations."""
        try:
            descriptors = bundle.loads(self.small[bundle.INDEX_FILE])["manifests"]
            assert isinstance(descriptors, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise BundleError(f"{self.source}: {bundle.INDEX_FILE} is not an OCI image index") from None
        by_config = dockersave.repo_tags_by_config(self.small.get(dockersave.MANIFEST_FILE), self.source)
        grouped: dict[str, MirroredImage] = {}
        unnamed = []
        for descriptor in descriptors:
            digest = str(descriptor.get("digest", "")) if isinstance(descriptor, dict) else ""
            references = self._names(descriptor, by_config) if digest else []
            if not references:
                unnamed.append((descriptor, digest))
            for name, tag in references:
                image = self._image(grouped, name)
                if tag:
                    image.tags[tag] = digest
                self._walk(image, digest, descriptor.get("mediaType"))
        for descriptor, digest in unnamed:  # a referrer (signature, SBOM) goes with the image it refers to
            document = self._json(digest) if digest else None
            subject = document.get("subject") if isinstance(document, dict) else None
            owner = next((image for image in grouped.values()
                          if isinstance(subject, dict) and subject.get("digest") in image.manifests), None)
            if owner is None:
                raise BundleError(f"{self.source}: {bundle.INDEX_FILE} entry {digest or '?'} has no full image "
                                  f"name (annotation {bundle.REF_NAME} or {bundle.CONTAINERD_NAME}, e.g. "
                                  f"registry.example/team/app:v1)")
            self._walk(owner, digest, descriptor.get("mediaType"))
        return [grouped[name] for name in sorted(grouped)]

    def _names(self, descriptor: dict, by_config: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str | None]]:
        annotations = descriptor.get("annotations") if isinstance(descriptor.get("annotations"), dict) else {}
        for key in (bundle.CONTAINERD_NAME, bundle.REF_NAME):
            found = dockersave.full_reference(str(annotations.get(key, "")))
            if found:
                return [found]
        manifest = self._json(descriptor["digest"])
        config = manifest.get("config") if isinstance(manifest, dict) else None
        config = config.get("digest") if isinstance(config, dict) else None
        return list(by_config.get(config, []))

    def _digest(self, text: object) -> Digest:
        try:
            return Digest.parse(str(text))
        except DigestInvalid:
            raise BundleError(f"{self.source}: {str(text)[:80]!r} is not a digest") from None

    def _body(self, digest: str) -> bytes | None:
        """A stored manifest's bytes (None: not stored); anything larger than a manifest is refused."""
        parsed = self._digest(digest)
        size = self._blobs.size(parsed)
        if size is not None and size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{self.source}: manifest {digest} is {size} bytes, more than a manifest may be")
        return self._blobs.read_bytes(parsed) if size is not None else None

    def _json(self, digest: str):
        data = self._body(digest)
        if data is None:
            return None
        try:
            return bundle.loads(data)
        except ValueError:
            raise BundleError(f"{self.source}: manifest {digest} is not JSON") from None

    def _parsed(self, digest: str, body: bytes, media_type: str | None) -> ParsedManifest:
        """The manifest as the registry reads it; its type is the body's, which a descriptor's must match."""
        try:
            parsed = parse_manifest(body, media_type or None)
        except ManifestInvalid as exc:
            raise BundleError(f"{self.source}: manifest {digest} is not a valid manifest ({exc.message})") from None
        if parsed.media_type not in MANIFEST_TYPES:
            raise BundleError(f"{self.source}: manifest {digest} has type {parsed.media_type[:80]!r}, "
                              f"which is no manifest type")
        return parsed

    def _walk(self, image: MirroredImage, digest: str, media_type: str | None, depth: int = 0) -> None:
        """Record a manifest and what it names; an index's children absent here were left out. Each
        manifest is walked once however often it is named, through at most ``MAX_NESTING`` indexes."""
        if digest in image.manifests:
            return
        if depth > MAX_NESTING:
            raise BundleError(f"{self.source}: manifest {digest} is nested more than {MAX_NESTING} indexes deep")
        body = self._body(digest)
        if body is None:  # absent: the completeness check names it
            image.manifests[digest] = media_type if isinstance(media_type, str) and media_type else OCI_MANIFEST
            return
        parsed = self._parsed(digest, body, media_type if isinstance(media_type, str) else None)
        image.manifests[digest] = parsed.media_type
        for child in parsed.manifests:
            if self._blobs.size(child.digest) is None:
                image.unmirrored[str(child.digest)] = "not in the imported bundle"
            else:
                self._walk(image, str(child.digest), child.media_type, depth + 1)
        for blob in parsed.blobs:
            if blob.non_distributable and self._blobs.size(blob.digest) is None:
                continue  # foreign layers are fetched from their own URLs
            image.blobs[str(blob.digest)] = blob.size
        if parsed.subject is not None:
            referrer = {"mediaType": parsed.media_type, "digest": digest, "size": len(body)}
            if parsed.artifact_type:
                referrer["artifactType"] = parsed.artifact_type
            if parsed.annotations:
                referrer["annotations"] = parsed.annotations
            image.referrers.setdefault(str(parsed.subject.digest), []).append(referrer)

    # what an image claims, checked against its content ---------------------------------------------
    def _check(self, image: MirroredImage) -> None:
        """An image (all of it stored) is what its manifests say, and publishes nothing private:
        its tags are valid and name its manifests; each manifest is one by its body, of the type
        recorded, and everything it names is part of the image (a child may be left out); blob
        sizes and referrers are the stored ones; and content this bundle does not carry must be
        public here already (a delta's base) — else a bundle naming a digest could make content
        the store holds for a client's own credential, or a push, public under another name."""
        what = f"{self.source}: {image.name}"
        for tag, digest in image.tags.items():
            try:
                validate_tag(tag)
            except OCIError:
                raise BundleError(f"{what}: {tag[:130]!r} is not a valid tag") from None
            if digest not in image.manifests:
                raise BundleError(f"{what}: tag {tag} names {digest[:80]}, which is none of its manifests")
        for digest, media_type in image.manifests.items():
            body = self._body(digest) or b""
            parsed = self._parsed(digest, body, None)
            if parsed.media_type != media_type:
                raise BundleError(f"{what}: manifest {digest} is {parsed.media_type}, not {media_type[:80]!r}")
            for child in parsed.manifests:
                if str(child.digest) not in image.manifests and str(child.digest) not in image.unmirrored:
                    raise BundleError(f"{what}: manifest {digest} names {child.digest}, which is not part of it")
            for blob in parsed.blobs:
                if str(blob.digest) not in image.blobs and not blob.non_distributable:
                    raise BundleError(f"{what}: manifest {digest} names {blob.digest}, which is not part of it")
        for digest, size in image.blobs.items():
            if self._blobs.size(Digest.parse(digest)) != size:
                raise BundleError(f"{what}: blob {digest} is not {size} bytes")
        for subject, descriptors in image.referrers.items():
            for descriptor in descriptors:
                if (subject not in image.manifests and subject not in image.unmirrored) \
                        or descriptor.get("digest") not in image.manifests:
                    raise BundleError(f"{what}: a referrer of {subject[:80]} is not one of its manifests")
        private = sorted(d for d in image.content() - self.carried
                         if not self._meta.visibility(d, fresh=True).public)
        if private:
            raise BundleError(f"{what} names {len(private)} manifest(s) or blob(s) that are neither in the bundle "
                              f"nor public here ({_shown(private)}); nothing was made visible")

    def _file_of(self, path: str) -> tuple[str, int] | None:
        path = bundle.normal_path(path)
        for _ in range(16):  # a link to a link…
            if path not in self.links:
                break
            path = self.links[path]
        digest = bundle.blob_digest(path)
        if digest is not None and digest in self.in_bundle:
            return digest, self.in_bundle[digest]
        return self.files.get(path)

    def _config_body(self, digest: str) -> bytes | None:
        """A docker save config's bytes, read whole only when a config may be that large."""
        size = self._blobs.size(Digest.parse(digest))
        if size is not None and size > MAX_CONFIG_BYTES:
            raise BundleError(f"{self.source}: config {digest} is {size} bytes, more than an image config may be "
                              f"({MAX_CONFIG_BYTES})")
        return self._blobs.read_bytes(Digest.parse(digest))

    def _classic_images(self) -> list[MirroredImage]:
        """A classic docker save: a Docker schema 2 manifest built and stored for each image."""
        built = dockersave.classic_images(self.small[dockersave.MANIFEST_FILE], self._file_of,
                                          self._config_body, self.source)
        grouped: dict[str, MirroredImage] = {}
        for saved in built:
            digest = Digest.of(saved.manifest)
            self.carried.add(str(digest))
            self._keep(str(digest))
            if self._blobs.size(digest) is None:
                self._blobs.put_bytes(saved.manifest, digest)
                self.report.imported += 1
                self.report.imported_bytes += len(saved.manifest)
            for name, tag in saved.references:
                image = self._image(grouped, name)
                image.tags[tag] = str(digest)
                image.manifests[str(digest)] = dockersave.DOCKER_MANIFEST
                image.blobs.update(dict((saved.config,) + saved.layers))
        return [grouped[name] for name in sorted(grouped)]


# imports killed midway and never run again ------------------------------------------------------
_PENDING = "mirror-pending"  # document: pending holder -> the [host, pid] of each import using it


def _pending(meta: MetaStore, holder: str, using: bool) -> None:
    """Record (or drop) that this process's import keeps content under ``holder``."""
    me = [os.uname().nodename, os.getpid()]
    pending = dict(meta.document(_PENDING, fresh=True) or {})
    users = [user for user in pending.get(holder, []) if user != me] + ([me] if using else [])
    if users:
        pending[holder] = users
    else:
        pending.pop(holder, None)
    meta.set_document(_PENDING, pending)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def release_abandoned(records: MirrorRecords, meta: MetaStore, blobs: BlobStore) -> int:
    """Let go of what imports killed midway and never run again kept (their ``import-pending``
    holders): a holder whose every import on this host is gone is released from every blob that
    lists it (one scan of the store, only when there is such a holder). Blocking. Returns how many."""
    host = os.uname().nodename
    pending = meta.document(_PENDING, fresh=True) or {}
    abandoned = {holder for holder, users in pending.items()
                 if all(h == host and not _alive(int(pid)) for h, pid in users)}
    if not abandoned:
        return 0
    held: dict[str, set[str]] = {holder: set() for holder in abandoned}
    for digest, _, _ in blobs.iter_blobs():
        for holder in abandoned.intersection(meta.keepers(str(digest))):
            held[holder].add(str(digest))
    for holder, digests in held.items():
        records.release(holder, digests)
        current = dict(meta.document(_PENDING, fresh=True) or {})
        if current.get(holder) == pending[holder]:
            current.pop(holder)
            meta.set_document(_PENDING, current)
    return sum(len(digests) for digests in held.values())


async def import_bundle(app: web.Application, path: Path) -> ImportReport:
    """Import one bundle (``BundleError``: refused, nothing of it visible); see the module's rules."""
    from proxy.app import BLOBS, BUDGET, META

    records: MirrorRecords = app[keys.MIRROR_RECORDS]
    blobs = app[BLOBS]
    await asyncio.to_thread(release_abandoned, records, app[META], blobs)
    try:
        intake = _Intake(path, blobs, app[META], app[BUDGET], app[keys.ADDRESSING], records,
                         app[keys.CONFIG].limits.max_layer_bytes)
    except OSError as exc:
        raise BundleError(f"{path}: {exc.strerror or exc}") from None
    try:
        try:
            images = await asyncio.to_thread(intake.run)
        except asyncio.CancelledError:  # the thread stops at its next chunk
            intake.stop.set()
            raise
        earlier = records.images(IMPORT_HOLDER)
        for image in images:
            merged = image
            if image.name in earlier:
                merged = bundle.combine(earlier[image.name], image,
                                        lambda d: blobs.size(Digest.parse(d)) is not None)
            try:
                changed = records.adopt(merged, IMPORT_HOLDER)
            except MirrorIncomplete as exc:  # removed from the store since it was checked
                raise BundleError(f"{path}: {exc}") from None
            intake.report.visible += [f"{image.name}:{tag}" for tag in changed if tag in image.tags]
            await asyncio.sleep(0)
    finally:
        for holder, digests in intake.kept.items():
            await asyncio.to_thread(records.release, holder, digests)
            _pending(app[META], holder, False)
    return intake.report
