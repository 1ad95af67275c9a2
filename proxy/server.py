"""Running the app: one listening socket, one or several worker processes sharing it.

The parent checks what it can before anything serves (the store is writable, the port free,
the TLS pair loads: each failure a ``StartError`` naming its config key), prepares the store
(removing temporary files a crash left) and binds the socket before forking, so workers never
race each other at start. With ``tls`` every worker serves HTTPS from its own copy of the
SSL context and loads the certificate again when its files change. Workers coordinate through the
store: fills by flock, tag revalidation and short-lived facts through the shared cache
(diskcache on one machine, Redis across replicas). A worker that dies is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import ssl
import tempfile
import time

from aiohttp import web

from proxy.config import Config, TlsConfig
from proxy.storage.blobs import TMP_GRACE_SECONDS, BlobStore

log = logging.getLogger("wharf")


class StartError(Exception):
    """Wharf cannot start; the message names the config key to change."""


def _bind(config: Config) -> socket.socket:
    """The listening socket on ``listen``; an IPv6 socket also takes IPv4 (``[::]`` is dual-stack)."""
    try:
        infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartError(f"listen: cannot resolve {config.host!r} ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartError(f"listen: {config.listen} is already in use") from None
        raise StartError(f"listen: cannot listen on {config.listen} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def _prepare_store(config: Config) -> None:
    """Create ``storage.root`` if needed, prove it writable, and remove what a crash left."""
    root = config.storage.root
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".wharf-probe-"):
            pass
        BlobStore(root).clean_tmp(older_than=TMP_GRACE_SECONDS)  # not what a running command writes
    except OSError as exc:
        raise StartError(f"storage.root: cannot write to {os.path.abspath(root)} "
                         f"({exc.strerror or exc})") from None


def _prepare_database(config: Config) -> None:
    """Open the database and migrate it once, before any worker starts: a database that cannot be
    reached or a ``database.url`` that is no URL is a StartError, not a worker crashing in a loop."""
    from proxy.storage.database import DatabaseUnavailable, open_database

    try:
        open_database(config).close()
    except DatabaseUnavailable as exc:
        raise StartError(str(exc)) from None


class CertReloader:
    """The listener's SSL context (TLS 1.2 and up), loaded again when ``tls.cert`` or ``tls.key``
    changes: new handshakes get the new pair, open connections keep theirs.

    A pair that does not load is a ``StartError`` at start; later, the pair in use stays and a
    warning says why, once per change of the files.
    """

    def __init__(self, tls: TlsConfig) -> None:
        assert tls.cert is not None and tls.key is not None
        self._cert, self._key = tls.cert, tls.key
        self.interval = tls.reload_interval
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._seen = self._signature()
        self._load()

    def _signature(self) -> tuple:
        """What changes when either file is rewritten or replaced (a renamed or re-linked file too)."""
        stats = []
        for path in (self._cert, self._key):
            try:
                st = os.stat(path)
                stats.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stats.append(None)
        return tuple(stats)

    def _load(self) -> None:
        """Load the pair into the live context, or raise StartError naming the key at fault."""
        for key, path, marker in (("tls.cert", self._cert, b"-----BEGIN CERTIFICATE-----"),
                                  ("tls.key", self._key, b"PRIVATE KEY-----")):
            try:
                content = path.read_bytes()
            except OSError as exc:
                raise StartError(f"{key}: cannot read {path} ({exc.strerror or exc})") from None
            if marker not in content:
                raise StartError(f"{key}: {path} holds no PEM {key.split('.')[1]}")
        try:  # parses the certificates alone, so that a broken one is not blamed on the key
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=self._cert)
        except ssl.SSLError as exc:
            raise StartError(f"tls.cert: {self._cert} is not a readable PEM certificate "
                             f"({exc.reason or exc})") from None
        # a pair that fails half-way leaves the new certificate beside the old key in the context
        # it was loaded into: try it on a scratch context first, so the live one only gets good pairs
        for context in (ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), self.context):
            try:  # a password callback, so that an encrypted key fails instead of prompting
                context.load_cert_chain(self._cert, self._key, password=lambda: b"")
            except (ssl.SSLError, OSError) as exc:
                reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
                raise StartError(f"tls.key: {self._key} is not an unencrypted private key of "
                                 f"tls.cert {self._cert} ({reason})") from None

    def check(self) -> bool:
        """Load the pair again if its files changed since the last look; True when it did."""
        signature = self._signature()
        if signature == self._seen:
            return False
        self._seen = signature
        try:
            self._load()
        except StartError as exc:
            log.warning("TLS certificate not reloaded, the previous one stays in use: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", self._cert)
        return True

    async def watch(self) -> None:
        """Check the files every ``interval`` seconds, for as long as the server runs."""
        while True:
            await asyncio.sleep(self.interval)
            self.check()


def _run_worker(config: Config, sock: socket.socket, tls: CertReloader | None) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    from proxy.app import create_app

    app = create_app(config)
    # what exists now lives as long as the process: keep it out of the cycle collector, and let
    # collections come less often (requests make few cycles), which trims tail latency
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    loop = asyncio.new_event_loop()
    main = loop.create_task(_serve_app(app, sock, config.log.access_log, tls))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError, web.GracefulExit, KeyboardInterrupt):
            loop.run_until_complete(main)  # the runner's cleanup: connections drained, stores closed
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve_app(app: web.Application, sock: socket.socket, access_log: bool,
                     tls: CertReloader | None) -> None:
    """Serve ``app`` on ``sock`` (HTTPS with ``tls``) until SIGINT/SIGTERM (aiohttp raises
    GracefulExit), then clean up."""
    from proxy.http.accesslog import AccessLogSink, JsonAccessLogger
    from proxy.http.replayserver import ReplayingAppRunner

    sink = AccessLogSink() if access_log else None
    runner = ReplayingAppRunner(app, handle_signals=True, access_log=sink, access_log_class=JsonAccessLogger)
    await runner.setup()
    watcher = asyncio.ensure_future(tls.watch()) if tls is not None else None
    try:
        await web.SockSite(runner, sock, ssl_context=tls.context if tls is not None else None).start()
        await asyncio.Event().wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()
        if sink is not None:
            sink.flush()


def serve(config: Config) -> None:
    """Serve until SIGINT/SIGTERM with ``config.workers`` processes; StartError if it cannot start."""
    tls = CertReloader(config.tls) if config.tls.enabled else None
    _prepare_store(config)
    sock = _bind(config)
    _prepare_database(config)
    log.info("serving on %s (%s) with %d worker(s), store at %s", config.listen, "https" if tls else "http",
             config.workers, os.path.abspath(config.storage.root))
    if config.workers == 1:
        _run_worker(config, sock, tls)
        return
    # import everything before forking: the workers then share those pages with the parent
    import proxy.app  # noqa: F401
    import proxy.http.replayserver  # noqa: F401
    import uvloop  # noqa: F401
    gc.freeze()  # keep the parent's objects out of the collector, so workers don't copy their pages
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                _run_worker(config, sock, tls)
            finally:
                os._exit(0)
        children[pid] = slot

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for slot in range(config.workers):
        spawn(slot)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        slot = children.pop(pid, None)
        if slot is not None and not stopping:
            log.warning("worker %d exited (status %d); starting another", pid, status)
            time.sleep(0.5)
            spawn(slot)
