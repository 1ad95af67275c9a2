"""Shared fixtures: real upstream servers for the whole session, fake upstreams per test.

Session servers are shared by every test, so tests must use their own repository names
(the ``repo_name`` fixture gives a unique one) and must not assume an empty Redis database.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterator, Mapping

import pytest
from aiohttp.test_utils import TestServer

from support.accounts import add_token, add_user, basic
from support.fake_upstream import FakeRegistry
from support.images import PUSH_ACCOUNTS, Credentials, basic_auth_header
from support.servers import PostgresServer, RegistryServer, start_postgres, start_redis, start_registry

AUTH_USER = "wharf-test"
AUTH_PASSWORD = "s3cret-pass"


@dataclass(frozen=True)
class AuthRegistry:
    """A running htpasswd-protected registry and the one account it accepts."""

    url: str
    username: str
    password: str

    @property
    def auth(self) -> Credentials:
        """``(username, password)``, as ``push_image(auth=…)`` takes it."""
        return (self.username, self.password)

    @property
    def headers(self) -> dict[str, str]:
        """The ``Authorization: Basic …`` header for the account."""
        return basic_auth_header(self.auth)


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Debian's docker-registry, no auth, delete enabled, storage in a session temp dir."""
    server = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def registry_upstream(registry_server: RegistryServer) -> str:
    """Base URL (``http://127.0.0.1:PORT``) of the open session registry."""
    return registry_server.url


@pytest.fixture(scope="session")
def auth_registry_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """A docker-registry requiring Basic auth as ``AUTH_USER`` / ``AUTH_PASSWORD``."""
    server = start_registry(tmp_path_factory.mktemp("auth-registry"), AUTH_USER, AUTH_PASSWORD)
    try:
        yield AuthRegistry(server.url, AUTH_USER, AUTH_PASSWORD)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a session redis-server without persistence."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session (``database_url`` makes a database per test)."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database, once per backend: a SQLite file in ``tmp_path``, or
    a fresh database on the session PostgreSQL server (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'wharf.db'}"
        return
    import psycopg

    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = dict(host="127.0.0.1", port=server.port, user="wharf", dbname="postgres", autocommit=True)
    with psycopg.connect(**admin) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.database_url(name)
    finally:
        with psycopg.connect(**admin) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> str:
    """A repository name no other test uses: ``tests/<test-name>-<random>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"tests/{slug}-{uuid.uuid4().hex[:8]}"


FakeUpstreamFactory = Callable[[], Awaitable[FakeRegistry]]


@pytest.fixture
async def fake_upstream(aiohttp_server) -> FakeUpstreamFactory:
    """Factory: ``fake = await fake_upstream()`` starts an empty FakeRegistry at ``fake.url``."""

    async def start() -> FakeRegistry:
        fake = FakeRegistry()
        server = await aiohttp_server(fake.app)
        fake.url = str(server.make_url("")).rstrip("/")
        return fake

    return start



@dataclass(frozen=True)
class SeenRequest:
    """One request Wharf answered, as a client sent it and as Wharf answered it (headers included)."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    request_headers: dict[str, str]   # repeated headers joined with ", "
    response_headers: dict[str, str]


@dataclass
class Wharf:
    """A running Wharf under pytest-aiohttp: its base URL, app, and a client session to it.

    ``seen`` lists every request Wharf answered, in order, so tests can check what real clients
    sent (``?ns=``, ``Accept``) and what Wharf answered them.
    """

    url: str
    app: object
    client: object  # aiohttp TestClient
    seen: list[SeenRequest] = field(default_factory=list)
    # the server admin account ``admin`` and its token (every scope); ``client`` sends it unless
    # the test started Wharf with ``auth=None`` or sends an Authorization header of its own
    admin: tuple[str, str] = ("admin", "")

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": basic(*self.admin)}

    @property
    def database(self):
        from proxy.http.keys import DATABASE
        return self.app[DATABASE]

    def upstream_name(self, upstream_url: str) -> str:
        return upstream_url.split("://", 1)[1]


def _joined(headers) -> dict[str, str]:
    return {key: ", ".join(headers.getall(key)) for key in headers.keys()}


WharfFactory = Callable[..., Awaitable[Wharf]]

# The fast paths (replayed answers, the in-memory hot set, sendfile) are on by default; the suite
# runs a second time with TEST_FAST_PATHS=off, so every test holds without them too.
# Tests of a fast path itself pass ``fast_paths=...`` explicitly.
_FAST = os.environ.get("TEST_FAST_PATHS", "on") != "off"
FAST_PATHS = {"replay": _FAST, "hot_manifests": _FAST, "sendfile": _FAST}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With the fast paths off, run only the tests the setting reaches: those that start Wharf
    through ``make_wharf``. Tests of ``wharf serve`` processes, commands and pure functions do not
    read TEST_FAST_PATHS; a second run of them would prove nothing new."""
    if _FAST:
        return
    reached = [item for item in items if "make_wharf" in getattr(item, "fixturenames", ())]
    unreached = [item for item in items if "make_wharf" not in getattr(item, "fixturenames", ())]
    if unreached:
        config.hook.pytest_deselected(items=unreached)
        items[:] = reached


class WharfTestServer(TestServer):
    """pytest-aiohttp's server, run the way ``wharf serve`` runs the app (replaying hits)."""

    async def _make_runner(self, **kwargs):
        from proxy.http.replayserver import ReplayingAppRunner
        return ReplayingAppRunner(self.app, **kwargs)


@pytest.fixture
async def make_wharf(aiohttp_client, tmp_path) -> WharfFactory:
    """Factory: ``await make_wharf(upstream_url, ...)`` starts Wharf with that upstream.

    The upstream's name is its ``host:port`` (so clients address it as a path prefix);
    ``named_upstreams={"docker.io": url}`` adds upstreams under names of the test's choosing;
    ``port=`` listens on that 127.0.0.1 port instead of a random one (for daemons configured
    before Wharf starts); other keyword arguments override config keys (``cache={...}``,
    ``default_upstream=...``, ...).
    """
    from proxy.app import create_app
    from proxy.config import config_from_dict

    counter = 0

    async def start(*upstream_urls: str, upstream_options: dict | None = None,
                    named_upstreams: Mapping[str, str] | None = None, port: int | None = None,
                    auth: str | None = "admin", **overrides) -> Wharf:
        nonlocal counter
        counter += 1
        named = [(url.split("://", 1)[1], url) for url in upstream_urls]
        named += list((named_upstreams or {}).items())
        upstreams = [{"name": name, "url": url, "tag_ttl": 300, **(upstream_options or {})}
                     for name, url in named]
        data = {"listen": "127.0.0.1:0", "storage": {"root": str(tmp_path / f"wharf{counter}")},
                "upstreams": upstreams, "default_upstream": None, "log": {"access_log": False},
                "fast_paths": FAST_PATHS}
        data.update(overrides)
        app = create_app(config_from_dict(data))
        seen: list[SeenRequest] = []

        async def record(request, response) -> None:
            seen.append(SeenRequest(request.method, request.path, dict(request.query), response.status,
                                    _joined(request.headers), _joined(response.headers)))

        app.on_response_prepare.append(record)
        from proxy.http.keys import DATABASE
        add_user(app[DATABASE], "admin", admin=True)
        _, secret = add_token(app[DATABASE], "admin")
        headers = {"Authorization": basic("admin", secret)} if auth == "admin" else {}
        client = await aiohttp_client(WharfTestServer(app, port=port), headers=headers)
        url = str(client.make_url("")).rstrip("/")
        PUSH_ACCOUNTS[url] = ("admin", secret)
        return Wharf(url, app, client, seen, ("admin", secret))

    return start


@pytest.fixture
async def browser():
    """Headless Chromium (Debian's, through Playwright) on the test's event loop: ``await
    browser.new_page()``; see ``support.browser`` for screenshots."""
    from support.browser import chromium

    async with chromium() as launched:
        yield launched
