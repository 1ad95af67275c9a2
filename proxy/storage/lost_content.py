"""Whether the store lost part of an image, remembered per manifest for the answers given while
upstream cannot be asked (offline upstreams, stale tags).

``has_lost_content`` reads the manifest and stats every blob it names: work that grows with the
image, on every such answer. Its verdict changes only when content enters or leaves the store
(eviction, gc, purge, delete, a fill, an import), so it is remembered per process with the store's
stamp (``BlobStore.stamp``), which every such change moves, whichever process of the store makes it.
Rules:
- a remembered verdict holds while the stamp is the one read before it was worked out; a new stamp
  drops every verdict (one look at the stamp per answer: two stats, whatever the image);
- a verdict worked out while the stamp is unsettled (the store changed in the last
  ``STAMP_SETTLE_SECONDS``) is not remembered;
- "lost" is remembered as "whole" is: content comes back only by a fill or an import, which
  moves the stamp;
- at most ``MAX_VERDICTS`` are remembered, the least recently asked dropped first, each at most
  ``VERDICT_SECONDS``: what the verdict also reads without the store changing (who was granted a
  blob whose fill then failed) is looked at again that late.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from proxy.storage.blobs import BlobStore
from proxy.storage.cache_index import has_lost_content
from proxy.storage.meta import MetaStore

MAX_VERDICTS = 16_384
VERDICT_SECONDS = 60.0


class LostContent:
    """``has_lost_content``, remembered (the module's rules); one per process, used on the event loop."""

    def __init__(self, blobs: BlobStore, meta: MetaStore, max_verdicts: int = MAX_VERDICTS) -> None:
        self._blobs = blobs
        self._meta = meta
        self._max = max_verdicts
        self._stamp: tuple | None = None
        self._verdicts: OrderedDict[tuple[str, str | None], tuple[float, bool]] = OrderedDict()  # -> (until, lost)

    async def lost(self, digest: str, media_type: str | None) -> bool:
        """Whether the store lost part of this image (worked out in a thread unless remembered)."""
        stamp = self._blobs.stamp()
        if stamp is None or stamp != self._stamp:
            self._verdicts.clear()
            self._stamp = stamp
        key = (digest, media_type)
        known = self._verdicts.get(key)
        if known is not None and known[0] > time.monotonic():
            self._verdicts.move_to_end(key)
            return known[1]
        lost = await asyncio.to_thread(has_lost_content, self._blobs, self._meta, digest, media_type)
        if stamp is not None and stamp == self._stamp:  # no newer stamp seen while it was worked out
            self._verdicts[key] = (time.monotonic() + VERDICT_SECONDS, lost)
            self._verdicts.move_to_end(key)
            while len(self._verdicts) > self._max:
                self._verdicts.popitem(last=False)
        return lost
