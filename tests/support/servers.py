"""Start real servers as subprocesses on free 127.0.0.1 ports, wait until they answer, stop them.

Each server gets its own working directory (config, data, ``server.log``). Children die with the
test process (``PR_SET_PDEATHSIG`` on Linux), so a killed pytest leaves no registry behind.
Nothing here reads the system configs in ``/etc``: every config is written to the workdir.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
START_ATTEMPTS = 3  # a free port can be taken between probing and binding; retry on a new one


class ServerError(RuntimeError):
    """A server binary is missing, or it exited or never answered while starting."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the caller binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_binary(name: str) -> str:
    """Return the absolute path of ``name`` or explain how to install it."""
    path = shutil.which(name)
    if path is None:
        raise ServerError(f"{name} is not installed; run scripts/test.sh to install test dependencies")
    return path


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM us when the test process exits."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class ChildProcess:
    """Failure-message logs and an idempotent, always-reaping ``stop()`` for a child process.

    Subclasses provide ``process`` and ``log_path``; ``stop_timeout`` is how long SIGTERM gets.
    """

    process: subprocess.Popen
    log_path: Path
    stop_timeout: float = STOP_TIMEOUT

    def log_tail(self, limit: int = 4000) -> str:
        """The end of the process's combined stdout/stderr, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, wait ``stop_timeout`` seconds, then SIGKILL."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class ServerProcess(ChildProcess):
    """A running child server."""

    name: str
    port: int
    url: str
    workdir: Path
    process: subprocess.Popen

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"


@dataclass
class RegistryServer(ServerProcess):
    """A ``docker-registry``; ``username``/``password`` are set when it requires Basic auth."""

    username: str | None = None
    password: str | None = None


def _spawn(argv: list[str], workdir: Path) -> subprocess.Popen:
    """Run ``argv`` in ``workdir`` with output to ``server.log`` and a minimal environment.

    The environment drops ``REGISTRY_*`` variables so a developer's shell cannot reconfigure
    the registry under test.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    log = open(workdir / "server.log", "ab")
    try:
        return subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
    finally:
        log.close()


def _wait_ready(server: ServerProcess, ready: Callable[[], bool], timeout: float) -> None:
    """Poll ``ready()`` until it is true; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        if ready():
            return
        time.sleep(0.05)
    server.stop()
    raise ServerError(f"{server.name} did not answer within {timeout}s:\n{server.log_tail()}")


def _start(name: str, workdir: Path, launch: Callable[[int], tuple[list[str], str]],
           probe: Callable[[int], bool], factory=ServerProcess, **extra) -> ServerProcess:
    """Start a server on a fresh free port, retrying on another port if it dies while starting."""
    workdir.mkdir(parents=True, exist_ok=True)
    last_error: ServerError | None = None
    for _ in range(START_ATTEMPTS):
        port = free_port()
        argv, url = launch(port)
        server = factory(name=name, port=port, url=url, workdir=workdir,
                         process=_spawn(argv, workdir), **extra)
        try:
            _wait_ready(server, lambda: probe(port), START_TIMEOUT)
            return server
        except ServerError as exc:
            server.stop()
            last_error = exc
    assert last_error is not None
    raise last_error


# --- docker-registry ------------------------------------------------------------------------

def htpasswd_line(username: str, password: str) -> str:
    """One htpasswd entry with a bcrypt hash: the only scheme distribution's htpasswd accepts."""
    import bcrypt  # test dependency; imported here so the open registry works without it

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{username}:{hashed}\n"


def registry_config(port: int, root: Path, htpasswd: Path | None = None) -> dict:
    """distribution 2.8 config: filesystem storage under ``root``, delete enabled, quiet logs.

    Auth is htpasswd Basic when ``htpasswd`` is given, otherwise none at all.
    """
    config: dict = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "wharf-tests-secret",
                 "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "wharf-test", "path": str(htpasswd)}}
    return config


def _registry_answers(port: int) -> bool:
    """Ready when ``GET /v2/`` answers 200 (open) or 401 (auth required)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False


def start_registry(workdir: Path, username: str | None = None,
                   password: str | None = None) -> RegistryServer:
    """Start Debian's ``docker-registry serve`` with storage in ``workdir/data``.

    With ``username`` and ``password`` the registry requires them as Basic auth.
    """
    binary = require_binary("docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = None
    if username is not None and password is not None:
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(htpasswd_line(username, password))

    def launch(port: int) -> tuple[list[str], str]:
        config_path = workdir / "config.yml"
        config_path.write_text(yaml.safe_dump(registry_config(port, workdir / "data", htpasswd)))
        return [binary, "serve", str(config_path)], f"http://127.0.0.1:{port}"

    server = _start("docker-registry", workdir, launch, _registry_answers,
                    factory=RegistryServer, username=username, password=password)
    assert isinstance(server, RegistryServer)
    return server


# --- redis ----------------------------------------------------------------------------------

def _redis_answers(port: int) -> bool:
    """Ready when an inline ``PING`` gets ``+PONG``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(workdir: Path) -> ServerProcess:
    """Start ``redis-server`` bound to 127.0.0.1 with no persistence; url is ``redis://…/0``."""
    binary = require_binary("redis-server")

    def launch(port: int) -> tuple[list[str], str]:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"]
        return argv, f"redis://127.0.0.1:{port}/0"

    return _start("redis-server", workdir, launch, _redis_answers)


def has_ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1 (some containers have no IPv6 at all)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


# --- postgresql -----------------------------------------------------------------------------

def _postgres_binary(name: str) -> str:
    """``name`` on PATH, or in Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0, reverse=True)
    if versions:
        return str(versions[0])
    raise ServerError(f"{name} is not installed (Debian: postgresql); run scripts/test.sh to install it")


@dataclass
class PostgresServer(ServerProcess):
    """A throwaway PostgreSQL cluster; ``url`` is a SQLAlchemy URL of its ``postgres`` database,
    superuser ``wharf`` without a password (trust, 127.0.0.1 only)."""

    def database_url(self, name: str) -> str:
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _postgres_answers(port: int) -> bool:
    """Ready when the server accepts a connection and a query."""
    import psycopg

    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="wharf", dbname="postgres",
                             connect_timeout=1) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def start_postgres() -> PostgresServer:
    """``initdb`` a cluster in a fresh temp dir and run ``postgres`` on a free 127.0.0.1 port.

    PostgreSQL refuses to run as root (CI runs as root): then the cluster belongs to the
    ``postgres`` account Debian's package creates, and both programs run under it. The temp dir is
    made outside pytest's (root-only) temp tree so that account can enter it; it goes at ``stop``.
    """
    import pwd
    import tempfile

    initdb, postgres = _postgres_binary("initdb"), _postgres_binary("postgres")
    account = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerError("running as root, and there is no postgres account to run PostgreSQL as")
    workdir = Path(tempfile.mkdtemp(prefix="wharf-postgres-"))
    as_account = {}
    if account is not None:
        os.chown(workdir, account.pw_uid, account.pw_gid)
        as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "TZ": "UTC"}
    data = workdir / "data"
    with open(workdir / "initdb.log", "wb") as log:
        done = subprocess.run([initdb, "-D", str(data), "-U", "wharf", "--auth=trust", "-E", "UTF8",
                               "--locale=C.UTF-8", "--no-sync"], cwd=workdir, env=env, stdout=log,
                              stderr=subprocess.STDOUT, **as_account)
    if done.returncode != 0:
        output = (workdir / "initdb.log").read_text(errors="replace")
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServerError(f"initdb exited with {done.returncode}:\n{output[-4000:]}")

    def launch(port: int) -> tuple[list[str], str]:
        argv = [postgres, "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={workdir}", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"]
        return argv, f"postgresql+psycopg://wharf@127.0.0.1:{port}/postgres"

    def spawn(argv: list[str], cwd: Path) -> subprocess.Popen:
        log = open(cwd / "server.log", "ab")
        try:
            return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, **as_account)
        finally:
            log.close()

    last_error: ServerError | None = None
    for _ in range(START_ATTEMPTS):
        port = free_port()
        argv, url = launch(port)
        starting = ServerProcess(name="postgres", port=port, url=url, workdir=workdir,
                                 process=spawn(argv, workdir))
        try:
            _wait_ready(starting, lambda: _postgres_answers(port), START_TIMEOUT)
        except ServerError as exc:
            starting.stop()  # the cluster stays for the next port
            last_error = exc
            continue
        return PostgresServer(name="postgres", port=port, url=url, workdir=workdir, process=starting.process)
    shutil.rmtree(workdir, ignore_errors=True)
    assert last_error is not None
    raise last_error
