"""The index of what the cache holds: per upstream repository and tag, its digest, media type,
size, when it was cached, when it was last pulled and how often.

It lives in its own SQLite file in the store (``cache-index.sqlite``, WAL), beside the blobs it
describes, so every worker process of the store and the CLI read and write the same rows.

Rules:
- the hot path never writes to disk: a pull by tag only counts in memory (``note_pull``: a dict
  update on the event loop), and a tag record written to the metadata only marks the tag
  (``note_tag``, any thread); ``flush`` (every ``FLUSH_SECONDS``, in a thread, as
  ``BlobStore.flush_access_times`` does for access times) reads the marked tags' records and manifests and writes their
  rows in one transaction. Counts add up across workers (``pulls = pulls + n``); the last pull
  time is the latest any worker saw;
- a tag's size is its manifest and everything it references that the store holds (child
  manifests, configs, layers), each digest counted once; what it references is kept as rows of
  ``content`` (upstream, repo, tag, digest, size), which purge asks "does anything left still
  reference this digest?" by index, without reading the store;
- the rows follow the metadata: a tag whose record is gone (purged, deleted upstream) loses its
  row at the next flush; a tag whose digest moved is cached anew (``cached_at``; its pulls stay the tag's). A store that
  had cached tags before the index existed is indexed once, in a thread, on first start;
- reads (``top``, ``images``, ``repositories``, ``public_names``) are indexed queries run in a
  thread; memory stays flat whatever the store holds (nothing is listed whole in memory but
  what a caller asked for).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from proxy.errors import OCIError
from proxy.oci.digest import Digest
from proxy.oci.media import MAX_MANIFEST_BYTES, parse_manifest
from proxy.storage.blobs import BlobStore
from proxy.storage.meta import MetaStore

log = logging.getLogger("wharf.cache_index")

INDEX_FILE = "cache-index.sqlite"
_BATCH = 500          # tags written per transaction when indexing a whole store
FLUSH_SECONDS = 1.0   # how often each process writes what it counted (its pulls reach the index this late)
_RECHECKS = 30        # flushes that look again at a tag whose content was not all stored yet
_MAX_RECHECKS = 10_000
_MAX_DEPTH = 4        # index -> manifest -> ... (nested indexes), no deeper
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    name TEXT NOT NULL,            -- <upstream>/<repo>: the scope, and the name clients pull by prefix
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,   -- every referenced manifest and blob was in the store
    public INTEGER NOT NULL DEFAULT 0,
    cached_at REAL NOT NULL,
    last_pulled REAL,
    pulls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, tag)
);
CREATE INDEX IF NOT EXISTS tags_by_upstream ON tags (upstream, name);
CREATE INDEX IF NOT EXISTS tags_by_size ON tags (size DESC);
CREATE INDEX IF NOT EXISTS tags_by_pulls ON tags (pulls DESC);
CREATE INDEX IF NOT EXISTS tags_public ON tags (public, name);
CREATE TABLE IF NOT EXISTS content (
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (name, tag, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS content_by_digest ON content (digest);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "name, upstream, repo, tag, digest, media_type, size, public, cached_at, last_pulled, pulls"


@dataclass(frozen=True, slots=True)
class CachedImage:
    """One cached tag as the index knows it (``last_pulled`` None: never pulled, e.g. warmed)."""

    upstream: str
    repo: str
    tag: str
    digest: str
    size: int
    pulls: int
    last_pulled: float | None
    public: bool
    media_type: str = ""
    cached_at: float = 0.0

    @property
    def name(self) -> str:
        """The name clients pull it by (the upstream's name as path prefix)."""
        return f"{self.upstream}/{self.repo}"

    @property
    def scope(self) -> str:
        return self.name

    def as_dict(self) -> dict:
        return {"upstream": self.upstream, "repo": self.repo, "name": self.name, "tag": self.tag,
                "digest": self.digest, "media_type": self.media_type, "size": self.size,
                "cached_at": self.cached_at, "last_pulled": self.last_pulled, "pulls": self.pulls,
                "public": self.public}


@dataclass(slots=True)
class CachedRepository:
    """A cached upstream repository: its tags, and its size with shared content counted once."""

    upstream: str
    repo: str
    size: int = 0
    tags: list[CachedImage] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.upstream}/{self.repo}"

    @property
    def last_pulled(self) -> float | None:
        pulled = [t.last_pulled for t in self.tags if t.last_pulled is not None]
        return max(pulled) if pulled else None

    def as_dict(self) -> dict:
        return {"upstream": self.upstream, "repo": self.repo, "name": self.name, "size": self.size,
                "last_pulled": self.last_pulled, "pulls": sum(t.pulls for t in self.tags),
                "tags": [t.as_dict() for t in self.tags]}


def split_scope(scope: str) -> tuple[str, str]:
    """``<upstream>/<repo>`` -> (upstream, repo); upstream names hold no ``/``."""
    upstream, _, repo = scope.partition("/")
    return upstream, repo


def _image(row: sqlite3.Row | tuple) -> CachedImage:
    name, upstream, repo, tag, digest, media_type, size, public, cached_at, last_pulled, pulls = row
    return CachedImage(upstream, repo, tag, digest, int(size), int(pulls), last_pulled, bool(public),
                       media_type, cached_at)


def image_content(blobs: BlobStore, meta: MetaStore, digest: str, media_type: str | None
                  ) -> tuple[dict[str, int], bool]:
    """What a manifest holds in the store: {digest: size} of itself, its child manifests and their
    blobs, each once; and whether all it references was there (blocking: reads the store). Only
    what is stored as a manifest, at most MAX_MANIFEST_BYTES, is ever read."""
    found: dict[str, int] = {}
    complete = True
    pending: list[tuple[str, str | None, int]] = [(digest, media_type, 0)]
    while pending:
        key, kind, depth = pending.pop()
        if key in found:
            continue
        try:
            parsed_digest = Digest.parse(key)
        except OCIError:
            complete = False
            continue
        size = blobs.size(parsed_digest)
        if size is None:
            complete = False
            continue
        if size > MAX_MANIFEST_BYTES or (depth and meta.manifest_type(key) is None):
            found[key] = size  # not stored as a manifest (an index may name a layer as its child): never read
            continue
        body = blobs.read_bytes(parsed_digest)
        if body is None:
            complete = False
            continue
        found[key] = len(body)
        try:
            parsed = parse_manifest(body, meta.manifest_type(key) or kind)
        except OCIError:
            continue
        for descriptor in parsed.blobs:
            blob_key = str(descriptor.digest)
            if blob_key in found or descriptor.non_distributable:
                continue
            size = blobs.size(descriptor.digest)
            if size is None:
                complete = False
            else:
                found[blob_key] = size
        for child in parsed.manifests:
            if depth + 1 >= _MAX_DEPTH:
                complete = False
            else:
                pending.append((str(child.digest), child.media_type, depth + 1))
    return found, complete


def has_lost_content(blobs: BlobStore, meta: MetaStore, digest: str, media_type: str | None,
                     depth: int = 0) -> bool:
    """Whether the store lost part of this image since it held it: a blob (or, for an index, every
    child manifest it held) that was stored here and is gone, its file removed while the record of
    who may see it stays (eviction leaves that record; gc forgets both). Content never fetched
    through this store does not count (a client may hold it: a manifest alone is a whole answer).
    Blocking: reads the store; for answers given while upstream cannot be asked."""
    try:
        parsed_digest = Digest.parse(digest)
    except OCIError:
        return False
    body = blobs.read_bytes(parsed_digest)
    if body is None:
        return True
    if len(body) > MAX_MANIFEST_BYTES:
        return False
    try:
        parsed = parse_manifest(body, meta.manifest_type(digest) or media_type)
    except OCIError:
        return False
    if parsed.manifests:
        held = [child for child in parsed.manifests if _was_held(blobs, meta, child.digest)]
        return bool(held) and depth + 1 < _MAX_DEPTH and all(
            has_lost_content(blobs, meta, str(child.digest), child.media_type, depth + 1) for child in held)
    return any(not descriptor.non_distributable and blobs.size(descriptor.digest) is None
               and _was_held(blobs, meta, descriptor.digest) for descriptor in parsed.blobs)


def _was_held(blobs: BlobStore, meta: MetaStore, digest: Digest) -> bool:
    """Stored now, or stored once: a visibility record is written when content is fetched through."""
    if blobs.size(digest) is not None:
        return True
    seen = meta.visibility(str(digest), fresh=True)
    return seen.public or bool(seen.repos)


class CacheIndex:
    """The index of one store; one per process (app key ``keys.CACHE_INDEX``)."""

    def __init__(self, root: Path, blobs: BlobStore, meta: MetaStore) -> None:
        self._path = Path(root) / INDEX_FILE
        self._blobs = blobs
        self._meta = meta
        self._lock = threading.Lock()   # one connection per process, used by one thread at a time
        self._db: sqlite3.Connection | None = None
        self._pulls: dict[tuple[str, str], list] = {}       # (scope, tag) -> [count, last pull]; the loop's
        self._touched: dict[tuple[str, str], float] = {}    # (scope, tag) -> first mark; any thread
        self._touched_lock = threading.Lock()
        self._ready: asyncio.Future | None = None
        self._recheck: dict[tuple[str, str], int] = {}      # (scope, tag) -> flushes left; the loop's
        meta.subscribe_tags(self.note_tag)

    # the hot path: memory only ------------------------------------------------------------------
    def note_pull(self, scope: str, tag: str) -> None:
        """A client resolved ``scope``'s ``tag`` (GET or HEAD): counted in memory, written at the next flush."""
        entry = self._pulls.get((scope, tag))
        if entry is None:
            self._pulls[(scope, tag)] = [1, time.time()]
        else:
            entry[0] += 1
            entry[1] = time.time()

    def note_tag(self, scope: str, tag: str) -> None:
        """The metadata's record of an upstream tag was written or deleted (any thread)."""
        if scope.startswith("/"):
            return  # local repositories are the packages' business
        with self._touched_lock:
            self._touched.setdefault((scope, tag), time.time())

    # writing ------------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def ready(self) -> None:
        """Open the index (once); a store cached before it existed is indexed first, in a thread.
        The app starts this at startup without waiting; listing and purging wait for it."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(asyncio.to_thread(self._start))
        await asyncio.shield(self._ready)

    def _start(self) -> None:
        with self._lock:
            db = self._connection()
            done = db.execute("SELECT value FROM state WHERE key = 'indexed'").fetchone()
        if done is None:
            self.index_store()

    def index_store(self) -> int:
        """Index every upstream tag the metadata holds (blocking; batches of ``_BATCH``)."""
        started = time.time()
        batch: dict[tuple[str, str], float] = {}
        count = 0
        for scope, tag in self._meta.upstream_tags():
            batch[(scope, tag)] = started
            if len(batch) >= _BATCH:
                self._write({}, batch)
                count, batch = count + len(batch), {}
        self._write({}, batch)
        count += len(batch)
        with self._lock:
            self._connection().execute("INSERT OR REPLACE INTO state VALUES ('indexed', ?)", (str(started),))
        if count:
            log.info("indexed %d cached tags of the store", count)
        return count

    async def flush(self) -> None:
        """Write what was counted and marked since the last flush (in a thread; several workers may)."""
        pulls, self._pulls = self._pulls, {}
        with self._touched_lock:
            touched, self._touched = self._touched, {}
        for key in self._recheck:
            touched.setdefault(key, time.time())
        if not pulls and not touched:
            return
        try:
            incomplete = await asyncio.to_thread(self._write, pulls, touched)
        except Exception:
            log.exception("could not write the cache index; kept for the next flush")
            for key, (count, last) in pulls.items():
                entry = self._pulls.setdefault(key, [0, last])
                entry[0] += count
                entry[1] = max(entry[1], last)
            with self._touched_lock:
                for key, when in touched.items():
                    self._touched.setdefault(key, when)
            return
        self._note_incomplete(incomplete)

    def _note_incomplete(self, incomplete: set[tuple[str, str]]) -> None:
        """Tags whose content was not all in the store yet (a pull fetches blobs after the manifest):
        looked at again in the next ``_RECHECKS`` flushes; at most ``_MAX_RECHECKS`` of them."""
        for key in list(self._recheck):
            if key not in incomplete:
                del self._recheck[key]
        for key in incomplete:
            left = self._recheck.get(key, _RECHECKS + 1) - 1
            if left <= 0:
                self._recheck.pop(key, None)
            elif key in self._recheck or len(self._recheck) < _MAX_RECHECKS:
                self._recheck[key] = left

    def flush_blocking(self) -> None:
        """``flush`` at shutdown, after the loop's work is done."""
        pulls, self._pulls = self._pulls, {}
        with self._touched_lock:
            touched, self._touched = self._touched, {}
        if pulls or touched:
            self._write(pulls, touched)

    def _write(self, pulls: dict[tuple[str, str], list], touched: dict[tuple[str, str], float]
               ) -> set[tuple[str, str]]:
        """Add the counted pulls; bring the rows of marked tags (and of counted ones without a row,
        or whose content was not all there) up to date with the metadata and the store.
        Returns the tags whose content is still incomplete (blocking: a worker thread)."""
        counted = set()
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                for key, (count, last) in pulls.items():
                    if key in touched:
                        continue
                    row = db.execute("UPDATE tags SET pulls = pulls + ?, "
                                     "last_pulled = MAX(COALESCE(last_pulled, 0), ?) WHERE name = ? AND tag = ? RETURNING complete", (count, last, *key)).fetchone()
                    if row is not None:
                        counted.add(key)
                    if row is None or not row[0]:
                        touched[key] = last  # no row yet (or not all there): looked at below
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if not touched:
            return set()
        # the metadata and the store are read outside the write transaction: other workers keep writing
        records = {key: self._meta.tag(key[0], key[1], fresh=True) for key in touched}
        contents = {key: image_content(self._blobs, self._meta, record.digest, record.media_type)
                    for key, record in records.items() if record is not None}
        incomplete = set()
        now = time.time()
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                for key, record in records.items():
                    scope, tag = key
                    if record is None:
                        db.execute("DELETE FROM tags WHERE name = ? AND tag = ?", key)
                        db.execute("DELETE FROM content WHERE name = ? AND tag = ?", key)
                        continue
                    found, complete = contents[key]
                    if not complete:
                        incomplete.add(key)
                    count, last = (0, None) if key in counted else pulls.get(key, (0, None))
                    row = db.execute("SELECT digest FROM tags WHERE name = ? AND tag = ?", key).fetchone()
                    upstream, repo = split_scope(scope)
                    cached_at = min(touched.get(key, now), now)
                    if row is None:
                        db.execute("INSERT INTO tags (name, upstream, repo, tag, digest, media_type, size, complete, "
                                   "public, cached_at, last_pulled, pulls) VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?)",
                                   (scope, upstream, repo, tag, record.digest, record.media_type,
                                    int(record.public), cached_at, last, count))
                    else:  # a tag that moved is cached anew; its pulls are the tag's, they stay
                        db.execute("UPDATE tags SET digest = ?, media_type = ?, public = ?, pulls = pulls + ?, "
                                   "cached_at = CASE WHEN digest = ? THEN cached_at ELSE ? END, "
                                   "last_pulled = CASE WHEN ? IS NULL THEN last_pulled "
                                   "ELSE MAX(COALESCE(last_pulled, 0), ?) END WHERE name = ? AND tag = ?",
                                   (record.digest, record.media_type, int(record.public), count, record.digest,
                                    cached_at, last, last, scope, tag))
                    db.execute("DELETE FROM content WHERE name = ? AND tag = ?", key)
                    db.executemany("INSERT INTO content (name, tag, digest, size) VALUES (?, ?, ?, ?)",
                                   [(scope, tag, d, size) for d, size in found.items()])
                    db.execute("UPDATE tags SET size = ?, complete = ? WHERE name = ? AND tag = ?",
                               (sum(found.values()), int(complete), scope, tag))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return incomplete

    def forget(self, keys: Iterable[tuple[str, str]]) -> None:
        """Drop the rows of these (scope, tag) at once, and what this process counted for them (blocking)."""
        keys = list(keys)
        for key in keys:
            self._pulls.pop(key, None)
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                for key in keys:
                    db.execute("DELETE FROM tags WHERE name = ? AND tag = ?", key)
                    db.execute("DELETE FROM content WHERE name = ? AND tag = ?", key)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # reading ------------------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._connection().execute(sql, args).fetchall()

    async def top(self, by: str, limit: int) -> list[CachedImage]:
        """The largest (``by="size"``) or most pulled (``by="pulls"``) cached tags, at most ``limit``."""
        if by not in ("size", "pulls"):
            raise ValueError(f"top by size or pulls, not {by!r}")
        order = "size DESC, pulls DESC" if by == "size" else "pulls DESC, last_pulled DESC"
        rows = await asyncio.to_thread(self._query, f"SELECT {_COLUMNS} FROM tags ORDER BY {order}, name, tag "
                                                    f"LIMIT ?", (max(0, int(limit)),))
        return [_image(row) for row in rows]

    def images_blocking(self, upstream: str | None = None, name: str | None = None, tag: str | None = None,
                        limit: int | None = None) -> list[CachedImage]:
        where, args = self._filter(upstream, name, tag)
        sql = f"SELECT {_COLUMNS} FROM tags{where} ORDER BY name, tag"
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        return [_image(row) for row in self._query(sql, args)]

    async def images(self, upstream: str | None = None, name: str | None = None,
                     tag: str | None = None) -> list[CachedImage]:
        """Cached tags, by name and tag; narrowed to an upstream, a repository (its scope), a tag."""
        return await asyncio.to_thread(self.images_blocking, upstream, name, tag)

    @staticmethod
    def _filter(upstream: str | None, name: str | None, tag: str | None) -> tuple[str, tuple]:
        clauses, args = [], []
        if upstream is not None:
            clauses.append("upstream = ?")
            args.append(upstream)
        if name is not None:
            clauses.append("name = ?")
            args.append(name)
        if tag is not None:
            clauses.append("tag = ?")
            args.append(tag)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)

    def repositories_blocking(self, upstream: str | None = None, name: str | None = None,
                              offset: int = 0, limit: int | None = None) -> list[CachedRepository]:
        """The repositories (by name) from ``offset``, at most ``limit`` of them, with their tags."""
        if not offset and limit is None:
            images = self.images_blocking(upstream, name)
        else:
            where, args = self._filter(upstream, name, None)
            names = [row[0] for row in self._query(f"SELECT DISTINCT name FROM tags{where} ORDER BY name "
                                                   f"LIMIT ? OFFSET ?", (*args, -1 if limit is None else limit,
                                                                         offset))]
            images = []
            for repository in names:
                images += self.images_blocking(upstream, repository)
        repos: dict[str, CachedRepository] = {}
        for image in images:
            repo = repos.get(image.name)
            if repo is None:
                repo = repos[image.name] = CachedRepository(image.upstream, image.repo)
            repo.tags.append(image)
        for repo in repos.values():
            row = self._query("SELECT COALESCE(SUM(size), 0) FROM (SELECT digest, MAX(size) AS size FROM content "
                              "WHERE name = ? GROUP BY digest)", (repo.name,))
            repo.size = int(row[0][0])
        return list(repos.values())

    async def repositories(self, upstream: str | None = None, name: str | None = None, offset: int = 0,
                           limit: int | None = None) -> list[CachedRepository]:
        """Cached repositories with their tags (a page: from ``offset``, at most ``limit``); shared
        content counted once per repository."""
        return await asyncio.to_thread(self.repositories_blocking, upstream, name, offset, limit)

    async def repository_count(self, upstream: str | None = None, name: str | None = None) -> int:
        where, args = self._filter(upstream, name, None)
        rows = await asyncio.to_thread(self._query, f"SELECT COUNT(DISTINCT name) FROM tags{where}", args)
        return int(rows[0][0])

    async def public_names(self, after: str | None, limit: int | None) -> list[str]:
        """Names of cached repositories with a public tag, sorted, after ``after``, at most ``limit``."""
        sql = "SELECT DISTINCT name FROM tags WHERE public = 1"
        args: tuple = ()
        if after is not None:
            sql += " AND name > ?"
            args += (after,)
        sql += " ORDER BY name"
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        rows = await asyncio.to_thread(self._query, sql, args)
        return [row[0] for row in rows]

    def content_blocking(self, keys: Iterable[tuple[str, str]]) -> dict[str, int]:
        """The digests (with sizes) the rows of these (scope, tag) reference."""
        found: dict[str, int] = {}
        for scope, tag in keys:
            for digest, size in self._query("SELECT digest, size FROM content WHERE name = ? AND tag = ?",
                                            (scope, tag)):
                found[digest] = size
        return found

    def referenced_by_others(self, digest: str, leaving: set[tuple[str, str]]) -> bool:
        """Whether a tag not in ``leaving`` references ``digest`` (by index: one digest's rows)."""
        for scope, tag in self._query("SELECT name, tag FROM content WHERE digest = ?", (digest,)):
            if (scope, tag) not in leaving:
                return True
        return False

    def tags_referencing(self, digest: str, limit: int = 1000) -> list[tuple[str, str, str, float | None]]:
        """(scope, tag, digest the tag names, its last pull) of up to ``limit`` tags whose content
        holds ``digest`` (by index: one digest's rows; blocking)."""
        return [tuple(row) for row in self._query(
            "SELECT c.name, c.tag, t.digest, t.last_pulled FROM content AS c JOIN tags AS t "
            "ON t.name = c.name AND t.tag = c.tag WHERE c.digest = ? LIMIT ?", (digest, limit))]

    def incomplete_tags(self) -> list[tuple[str, str, str, str | None]]:
        """(scope, tag, digest, media type) of the tags whose content was not all stored when they
        were indexed: their content rows may lack what they reference (blocking)."""
        return [tuple(row) for row in self._query(
            "SELECT name, tag, digest, media_type FROM tags WHERE complete = 0", ())]

    def pending(self) -> Iterator[tuple[str, str]]:
        """What this process counted or marked and has not written yet (for tests and shutdown)."""
        yield from self._pulls
        yield from list(self._touched)
