"""The accounts and packages database: one schema for SQLite (the embedded default) and PostgreSQL.

SQLAlchemy 2 (Core + ORM) keeps one schema and one query code for both engines; Alembic
(``proxy/storage/migrations``) creates and upgrades it, so a store made by an older Wharf is
upgraded in place at start. Times are seconds since the epoch (``time.time()``), as everywhere
else in the store; the API formats them.

Rules the schema holds:
- users and organisations share one space of names (``namespaces``): a name is a user's or an
  organisation's, never both, and it is the first path component of the repositories it owns;
- a token is stored only as the SHA-256 of its secret (tokens are high-entropy; a slow hash adds
  nothing), with its scopes, note, expiry and times; a revoked token keeps its row, marked;
- a package is one repository; a deleted package keeps its row (``deleted_at``) until its
  retention ends, and a new push to the same name makes a new package (the old one can no longer
  be restored), hence the unique name only among live packages;
- a web session is stored as the SHA-256 of its id, never the id itself, nor any token secret;
- ``revision`` is one counter bumped by every change that can alter an access decision (a token
  revoked, a role, a visibility, a deletion): every worker and replica polls it and drops what it
  remembered when it moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from sqlalchemy import (Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, create_engine,
                        event, select, text, update)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

if TYPE_CHECKING:
    from proxy.config import Config

T = TypeVar("T")
log = logging.getLogger("wharf.database")


class Base(DeclarativeBase):
    pass


class Namespace(Base):
    """A first path component that is a user's or an organisation's (``kind``: user | org)."""

    __tablename__ = "namespaces"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[float] = mapped_column(Float)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), ForeignKey("namespaces.name"), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class Org(Base):
    __tablename__ = "orgs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), ForeignKey("namespaces.name"), unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class OrgMember(Base):
    """``role``: owner | member."""

    __tablename__ = "org_members"
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))


class Token(Base):
    """A personal access token; ``secret_hash`` is the hex SHA-256 of the whole token string."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(32))  # the prefix and first characters, to tell tokens apart
    scopes: Mapped[str] = mapped_column(String(255))  # comma-separated, sorted
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Package(Base):
    """One repository ``<namespace>/<name>``; ``visibility``: private | internal | public."""

    __tablename__ = "packages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255))  # the rest of the repository name (may hold "/")
    repository: Mapped[str] = mapped_column(String(511))  # namespace + "/" + name
    visibility: Mapped[str] = mapped_column(String(8), default="private")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    licenses: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    truncated: Mapped[str] = mapped_column(String(64), default="")  # comma-separated fields cut to length
    __table_args__ = (
        Index("packages_live_repository", "repository", unique=True,
              sqlite_where=text("deleted_at IS NULL"), postgresql_where=text("deleted_at IS NULL")),
    )


class PackageRole(Base):
    """A role (read | write | admin) on a package, for one user or for the members of one org."""

    __tablename__ = "package_roles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)
    org_id: Mapped[int | None] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), nullable=True)
    role: Mapped[str] = mapped_column(String(8))
    __table_args__ = (UniqueConstraint("package_id", "user_id", "org_id"),)


class Version(Base):
    """One manifest of a package (its digest); ``tags`` (JSON list) are the tags it held when deleted."""

    __tablename__ = "versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(160))
    media_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer, default=0)  # the manifest and every blob it names, once each
    platforms: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of "os/arch[/variant]"
    tags: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    download_count: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (UniqueConstraint("package_id", "digest"),)


class WebSession(Base):
    """A signed-in browser (``proxy.web.sessions``): only the SHA-256 of its random id is kept, with
    the user and the token it signed in with (never the token's secret); it ends at ``expires_at``,
    on sign-out, and with its token (revoked, expired or deleted)."""

    __tablename__ = "web_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))  # the forms' token for this session
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class Revision(Base):
    """One row (id 1): bumped by every change that can alter an access decision."""

    __tablename__ = "revision"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


# the engine ------------------------------------------------------------------------------------
def database_url(url: str | None, root: Path) -> str:
    """The configured URL, or SQLite in the store."""
    return url or f"sqlite:///{Path(root).absolute() / 'wharf.db'}"


class Database:
    """One engine and its sessions. Calls are blocking: async code goes through ``run``, which uses
    a small pool of threads of its own, never the event loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        sqlite = url.startswith("sqlite")
        self.engine: Engine = create_engine(url, pool_pre_ping=not sqlite,
                                            connect_args={"timeout": 30} if sqlite else {})
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="database")

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    async def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` in the database's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (Alembic ``upgrade head``).

        Workers, replicas and the CLI may start at once: one upgrades while the others wait, then
        find nothing left to do. SQLite serializes on a file lock next to the database file,
        PostgreSQL on an advisory lock held by the migrating connection.
        """
        with self.engine.connect() as connection, _migration_lock(self.url, connection):
            _run_migrations(connection)

    def revision(self) -> int:
        with self.session() as session:
            return session.scalar(select(Revision.value).where(Revision.id == 1)) or 0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()


class DatabaseUnavailable(Exception):
    """The configured database cannot be opened or upgraded; the message names ``database.url``
    (its password hidden) and the reason in one line."""


class DatabaseUrlInvalid(DatabaseUnavailable):
    """``database.url`` is no URL SQLAlchemy can use (a config error)."""


def open_database(config: "Config") -> Database:
    """The configured database (SQLite in the store by default), its schema upgraded.

    Raises DatabaseUnavailable when the URL is not one SQLAlchemy can use, the server does not
    answer, or the file cannot be written.
    """
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    url = database_url(config.database.url, config.storage.root)
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise DatabaseUrlInvalid("database.url: not a database URL (e.g. postgresql+psycopg://user:pass@host/db)") \
            from None
    try:
        database = Database(url)
    except ArgumentError as exc:  # an unknown dialect or driver
        raise DatabaseUrlInvalid(f"database.url: {shown}: {describe_error(exc)}") from None
    try:
        database.upgrade()
    except (SQLAlchemyError, OSError) as exc:
        database.close()
        raise DatabaseUnavailable(f"database.url: cannot open {shown}: {describe_error(exc)}") from None
    except BaseException:
        database.close()
        raise
    return database


def describe_error(exc: BaseException) -> str:
    """The driver's own words when SQLAlchemy wraps them, without SQL or parameters."""
    reason = getattr(exc, "orig", None) or getattr(exc, "strerror", None) or exc
    lines = str(reason).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


_ADVISORY_LOCK = 0x77686172  # "whar": the key of the PostgreSQL lock migrations hold


@contextlib.contextmanager
def _migration_lock(url: str, connection: Connection) -> Iterator[None]:
    """Hold the lock that lets one process migrate at a time."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK})
        connection.commit()
        try:
            yield
        finally:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK})
            connection.commit()
        return
    path = make_url(url).database
    if connection.dialect.name != "sqlite" or not path or path == ":memory:":
        yield  # a private in-memory database, or an engine without a lock we know: nobody to wait for
        return
    fd = os.open(f"{path}.migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _run_migrations(connection: Connection) -> None:
    """``alembic upgrade head`` on ``connection``, with the migrations shipped in this package."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its steps are not news; ours follows
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from alembic.runtime.migration import MigrationContext

    before = MigrationContext.configure(connection).get_current_revision()
    connection.commit()
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", "proxy.storage:migrations")
    alembic.attributes["connection"] = connection
    command.upgrade(alembic, "head")
    connection.commit()
    after = MigrationContext.configure(connection).get_current_revision()
    connection.commit()
    if before is None:  # a new store: not news
        log.debug("database schema created at revision %s", after)
    elif after != before:
        log.info("database schema upgraded from revision %s to %s", before, after)


def bump_revision(session: Session) -> None:
    """Every change that can alter an access decision calls this in its transaction."""
    if session.execute(update(Revision).where(Revision.id == 1).values(value=Revision.value + 1)).rowcount == 0:
        session.add(Revision(id=1, value=1))


def _sqlite_pragmas(connection, _record) -> None:
    """WAL lets the CLI write while the server's workers read; busy_timeout waits for a lock
    instead of failing."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
