"""Running the app: one listening socket, one or several worker processes sharing it.

The parent prepares the store (removing temporary files a crash left) and binds the socket
before forking, so workers never race each other at start. Workers coordinate through the
store: fills by flock, tag revalidation and short-lived facts through the shared cache
(diskcache on one machine, Redis across replicas). A worker that dies is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time

from aiohttp import web

from proxy.config import Config
from proxy.storage.blobs import BlobStore

log = logging.getLogger("wharf")


def _bind(config: Config) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _run_worker(config: Config, sock: socket.socket) -> None:
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
    main = loop.create_task(_serve_app(app, sock, config.log.access_log))
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


async def _serve_app(app: web.Application, sock: socket.socket, access_log: bool) -> None:
    """Serve ``app`` on ``sock`` until SIGINT/SIGTERM (aiohttp raises GracefulExit), then clean up."""
    from proxy.http.accesslog import AccessLogSink, JsonAccessLogger
    from proxy.http.replayserver import ReplayingAppRunner

    sink = AccessLogSink() if access_log else None
    runner = ReplayingAppRunner(app, handle_signals=True, access_log=sink, access_log_class=JsonAccessLogger)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        if sink is not None:
            sink.flush()


def serve(config: Config) -> None:
    """Serve until SIGINT/SIGTERM with ``config.workers`` processes."""
    config.storage.root.mkdir(parents=True, exist_ok=True)
    BlobStore(config.storage.root).clean_tmp()
    sock = _bind(config)
    log.info("serving on %s with %d worker(s), store at %s", config.listen, config.workers,
             os.path.abspath(config.storage.root))
    if config.workers == 1:
        _run_worker(config, sock)
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
                _run_worker(config, sock)
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
