"""Upstream tag lists and referrers lists, passed through.

Rules:
- a tag list is upstream's; ``n``/``last`` are applied here when upstream ignored them
  (distribution 2.8 does);
- one copy of the whole list per repository is kept to serve while upstream is down (see
  ``UpstreamLists.tags``);
- referrers come from upstream's referrers API; where upstream has none, from its fallback tag
  ``<alg>-<hex>`` (tag policy included), else an empty index.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from proxy.errors import ManifestUnknown, StoreFull
from proxy.oci.digest import Digest
from proxy.oci.media import OCI_INDEX
from proxy.registry.base import Client, ReferrersResult, TagsPage, Target
from proxy.registry.decisions import CacheDecisions
from proxy.registry.tagpolicy import STALE_ERRORS, TagPolicy
from proxy.registry.upstream_access import UpstreamAccess
from proxy.storage.blobs import BlobStore
from proxy.storage.meta import MetaStore
from proxy.upstream.client import Upstream

_MAX_TAG_READERS = 256  # credentials remembered per stale tag list, the most recent
MAX_PAGE = 999_999_999  # the largest ``n`` a client may ask for (``proxy.http.pull.page_size``)
EMPTY_INDEX = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()


def page_tags(body: bytes, n: int, last: str | None) -> tuple[bytes, str | None]:
    """Apply ``n``/``last`` ourselves when upstream ignored them (distribution 2.8 does)."""
    try:
        doc = json.loads(body)
        tags = sorted(t for t in doc.get("tags") or [] if last is None or t > last)
    except (ValueError, AttributeError, TypeError):
        return body, None
    if len(doc.get("tags") or []) <= n and last is None:
        return body, None
    page = tags[:n]
    doc["tags"] = page
    more = len(tags) > n and page
    return json.dumps(doc).encode(), (urlencode({"n": n, "last": page[-1]}) if more else None)


class UpstreamLists:
    """Tag lists and referrers of upstream repositories."""

    def __init__(self, blobs: BlobStore, meta: MetaStore, access: UpstreamAccess, tag_policy: TagPolicy,
                 decisions: CacheDecisions) -> None:
        self._blobs = blobs
        self._meta = meta
        self._access = access
        self._tag_policy = tag_policy
        self._decisions = decisions

    async def tags(self, upstream: Upstream, target: Target, n: int | None, last: str | None,
                   client: Client) -> TagsPage:
        """Pass the tag list through; keep one copy of the whole list to serve when upstream is down.

        The copy is upstream's answer to a request for the whole list (no ``last``, and no ``n``
        or an answer without a next page); a paged request while upstream is down is cut from
        it. The copy is public only when this answer was (a list learned with a client's
        credential may name tags the public one does not: it goes to the readers only). One
        copy per repository, whatever ``n`` and ``last`` clients send: queries cannot make Wharf
        store a copy each. It remembers the last ``_MAX_TAG_READERS`` credentials
        upstream let read the list. Keeping the copy is best effort (not on a full disk).
        """
        credential, public = self._access.effective(upstream, client)
        params = {k: str(v) for k, v in (("n", n), ("last", last)) if v is not None}
        key = f"tags:{target.scope}"
        try:
            answer = await upstream.tags(target.repo, params, credential)
        except STALE_ERRORS:
            saved = self._meta.document(key)
            if saved and (saved["public"] or credential is not None and credential.id in saved["readers"]):
                if n is None and last is None:
                    self._decisions.count("tags", "stale")
                    return TagsPage(saved["body"].encode(), saved["link"], "stale")
                if saved["link"] is None:  # the whole list: cut the page asked for
                    self._decisions.count("tags", "stale")
                    body, link = page_tags(saved["body"].encode(), MAX_PAGE if n is None else n, last)
                    return TagsPage(body, link, "stale")
            raise
        body, link = answer.body, answer.next_query
        if last is None and (n is None or link is None):
            saved = self._meta.document(key) or {"readers": []}
            readers = [r for r in saved.get("readers", []) if credential is None or r != credential.id]
            if credential is not None and not public:
                readers.append(credential.id)
            try:
                self._meta.set_document(key, {"body": body.decode(), "link": link if n is None else None,
                                              "public": public,  # a list learned with a credential is its own
                                              "readers": readers[-_MAX_TAG_READERS:]})
            except StoreFull:
                pass  # the copy is for later; upstream's answer goes through on a full disk
        if link is None and n is not None:
            body, link = page_tags(body, n, last)
        return TagsPage(body, link, "miss")

    async def referrers(self, upstream: Upstream, target: Target, digest: Digest, artifact_type: str | None,
                        client: Client) -> ReferrersResult:
        """Upstream's referrers list; where upstream has no referrers API, its fallback tag or none."""
        credential, _ = self._access.effective(upstream, client)
        try:
            answer = await upstream.referrers(target.repo, digest, artifact_type, credential)
            return ReferrersResult(answer.body, answer.media_type, answer.filters_applied)
        except ManifestUnknown:
            pass
        try:
            record, _ = await self._tag_policy.resolve(upstream, target, f"{digest.algorithm}-{digest.hex}", client)
        except ManifestUnknown:
            return ReferrersResult(EMPTY_INDEX, OCI_INDEX)
        body = self._blobs.read_bytes(Digest.parse(record.digest)) or EMPTY_INDEX
        return ReferrersResult(body, OCI_INDEX)
