"""What mirroring made visible, what it keeps, and the one step that makes an image visible.

Records, in the store's metadata (shared by every process of the store, read from disk):
- ``doc:mirror-image:<holder>:<name>`` -> ``MirroredImage.as_dict()``: what the last sync of a mirror
  list (holder: the list's name), or the imports (holder ``import``), made visible of one image, and
  ``doc:mirror-names:<holder>`` -> the sorted names of its images (a document per image: recording
  one of thousands must not rewrite them all);
- ``doc:mirror-tags:<scope>`` -> the sorted tags mirroring made visible in an upstream repository
  (an offline Wharf lists these);
- ``kept:<digest>`` -> the holders keeping it: kept content is never evicted by the cache budget;
- ``unmirrored:<digest>`` -> why a child manifest of a mirrored index is absent (a platform subset).

Rules (``adopt``):
- an image becomes visible only once every manifest and blob it names is stored and verified:
  ``adopt`` checks, then records types, visibility (public: mirrored content is fetched with the
  configured credential, never a client's), referrers and left-out children, keeps the content,
  and writes the tag records last; an interruption before that leaves nothing visible;
- adopting what is already there changes nothing (a second import of a bundle is a no-op);
- a tag that moved drops every answer remembered for it (the invalidation hook).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from proxy.oci.digest import Digest
from proxy.registry.invalidation import Invalidation
from proxy.storage.blobs import BlobStore
from proxy.storage.budget import Budget
from proxy.storage.meta import MetaStore, TagRecord

IMPORT_HOLDER = "import"


class MirrorIncomplete(Exception):
    """Content an image names is not in the store; ``missing`` lists the digests."""

    def __init__(self, name: str, missing: list[str]) -> None:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        super().__init__(f"{name}: {len(missing)} manifest(s) or blob(s) missing from the store: {shown}")
        self.missing = missing


@dataclass(slots=True)
class MirroredImage:
    """One repository of an upstream as mirroring saw it: its tags and every digest they need."""

    name: str                  # the full name a client uses by path prefix: registry.test/bars/img
    upstream: str              # the configured upstream's name
    repo: str                  # the repository on that upstream
    tags: dict[str, str] = field(default_factory=dict)       # tag -> digest of the manifest it names
    manifests: dict[str, str] = field(default_factory=dict)  # digest -> media type (indexes, images, referrers)
    blobs: dict[str, int] = field(default_factory=dict)      # digest -> size (configs, layers)
    referrers: dict[str, list[dict]] = field(default_factory=dict)  # subject digest -> referrer descriptors
    unmirrored: dict[str, str] = field(default_factory=dict)  # child manifest digest -> why it was left out
    synced_at: float = 0.0

    @property
    def scope(self) -> str:
        return f"{self.upstream}/{self.repo}"

    def content(self) -> set[str]:
        return set(self.manifests) | set(self.blobs)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "MirroredImage":
        return cls(**raw)


class MirrorRecords:
    """The mirror records of one store."""

    def __init__(self, meta: MetaStore, blobs: BlobStore, budget: Budget, invalidation: Invalidation) -> None:
        self._meta = meta
        self._blobs = blobs
        self._budget = budget
        self._invalidation = invalidation

    # reading ---------------------------------------------------------------------------------
    def holders(self) -> list[str]:
        return sorted(self._meta.document("mirror-holders", fresh=True) or [])

    def images(self, holder: str) -> dict[str, MirroredImage]:
        found = {}
        for name in self._names(holder):
            image = self.image(holder, name)
            if image is not None:
                found[name] = image
        return found

    def image(self, holder: str, name: str) -> MirroredImage | None:
        raw = self._meta.document(f"mirror-image:{holder}:{name}", fresh=True)
        return MirroredImage.from_dict(raw) if raw else None

    def _names(self, holder: str) -> list[str]:
        return list(self._meta.document(f"mirror-names:{holder}", fresh=True) or [])

    def all_images(self) -> list[tuple[str, MirroredImage]]:
        return [(holder, image) for holder in self.holders() for image in self.images(holder).values()]

    def mirrored_tags(self, scope: str) -> list[str]:
        return list(self._meta.document(f"mirror-tags:{scope}", fresh=True) or [])

    def missing(self, image: MirroredImage) -> list[str]:
        """The digests ``image`` names that are not complete in the store."""
        return sorted(d for d in image.content() if self._blobs.size(Digest.parse(d)) is None)

    # the one step that makes an image visible ------------------------------------------------
    def adopt(self, image: MirroredImage, holder: str | None, now: float | None = None,
              keep: bool = True) -> list[str]:
        """Make ``image`` visible under its original name (MirrorIncomplete when content is missing);
        ``holder`` records it (and, with ``keep``, keeps its content; without: a warm-up of the
        cache, evictable). Returns the tags whose digest changed or that are new."""
        missing = self.missing(image)
        if missing:
            raise MirrorIncomplete(image.name, missing)
        meta, scope = self._meta, image.scope
        for digest, media_type in image.manifests.items():
            meta.set_manifest_type(digest, media_type)
        for digest in image.content():
            meta.grant(digest, scope, True)
        for subject, descriptors in image.referrers.items():
            for descriptor in descriptors:
                meta.add_referrer(scope, subject, descriptor)
        for digest, note in image.unmirrored.items():
            if self._blobs.size(Digest.parse(digest)) is None:
                meta.set_unmirrored(digest, note)
        if holder is not None and keep:
            self._keep(image, holder)
        changed = []
        when = now if now is not None else time.time()
        for tag, digest in sorted(image.tags.items()):
            previous = meta.tag(scope, tag, fresh=True)
            size = self._blobs.size(Digest.parse(digest)) or 0
            meta.set_tag(scope, tag, TagRecord(digest, image.manifests[digest], size,
                                               max(when, previous.checked_at if previous else 0.0), True))
            if previous is None or previous.digest != digest:
                changed.append(tag)
                if previous is not None:
                    self._invalidation.tag_changed(scope, tag)
        self._add_mirrored_tags(scope, image.tags)
        if holder is not None:
            self._record(holder, image)
        return changed

    def _keep(self, image: MirroredImage, holder: str) -> None:
        for digest in image.content():
            if self._meta.keep(digest, holder) and not self._meta.is_pushed(digest):
                size = self._blobs.size(Digest.parse(digest))
                if size is not None:
                    self._budget.kept(size, digest)

    def release(self, holder: str, digests: set[str]) -> None:
        """``holder`` no longer keeps ``digests`` (they left its list): evictable unless kept by another."""
        for digest in digests:
            if self._meta.release(digest, holder) and not self._meta.is_pushed(digest):
                size = self._blobs.size(Digest.parse(digest))
                if size is not None:
                    self._budget.released(size, digest)

    def _record(self, holder: str, image: MirroredImage) -> None:
        self._meta.set_document(f"mirror-image:{holder}:{image.name}", image.as_dict())
        names = self._names(holder)
        if image.name not in names:
            self._meta.set_document(f"mirror-names:{holder}", sorted(names + [image.name]))
        holders = self.holders()
        if holder not in holders:
            self._meta.set_document("mirror-holders", sorted(holders + [holder]))

    def forget_image(self, holder: str, name: str, still_kept: set[str] | None = None) -> None:
        """Drop ``name`` from ``holder``'s record (it left the list); its content is released but for
        ``still_kept`` (what the holder's other images keep; default: all their content)."""
        image = self.image(holder, name)
        if image is None:
            return
        if still_kept is None:
            still_kept = set().union(*(i.content() for n, i in self.images(holder).items() if n != name))
        self.release(holder, image.content() - still_kept)
        self._meta.set_document(f"mirror-names:{holder}", [n for n in self._names(holder) if n != name])
        self._meta.delete_document(f"mirror-image:{holder}:{name}")

    def _add_mirrored_tags(self, scope: str, tags: dict[str, str]) -> None:
        key = f"mirror-tags:{scope}"
        current = set(self._meta.document(key, fresh=True) or [])
        if not set(tags) <= current:
            self._meta.set_document(key, sorted(current | set(tags)))
