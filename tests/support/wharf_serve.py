"""The real ``wharf serve`` command as a child process: start it from a config dict, wait until
``/healthz`` answers (over HTTPS when the config has ``tls``), stop it with SIGTERM.

``start_failure`` runs a ``wharf serve`` that is expected not to start and returns its exit
status and stderr. Children die with the test process (``PR_SET_PDEATHSIG``). ``add_admin`` gives a
running one the server admin account that ``make_wharf`` gives its Wharfs.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from support.accounts import ALL_SCOPES
from support.images import PUSH_ACCOUNTS, Credentials
from support.servers import ChildProcess, ServerError, _die_with_parent

SOURCE_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


def wharf_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "proxy", *args]


def wharf_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without WHARF_ variables (a developer's shell must not reconfigure the
    server under test), with the source tree importable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "wharf.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def base_url(listen: str, tls: bool) -> str:
    """How a client on this machine reaches ``listen``: wildcards are asked on 127.0.0.1."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return f"{'https' if tls else 'http'}://{host}:{port}"


@dataclass
class WharfProcess(ChildProcess):
    process: subprocess.Popen
    log_path: Path
    url: str
    config_path: Path
    stop_timeout: float = 20.0

    def output(self) -> str:
        return self.log_tail(20000)


def _healthy(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2, context=context) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_wharf(workdir: Path, config: dict, env: dict[str, str] | None = None,
                context: ssl.SSLContext | None = None) -> WharfProcess:
    """Run ``wharf serve --config`` with ``config``; ``context`` is the TLS client context the
    readiness probe uses (one trusting the test CA) when the config serves HTTPS."""
    config_path = write_config(workdir, config)
    log_path = workdir / "wharf.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(wharf_argv("serve", "--config", str(config_path)), cwd=workdir,
                                   env=wharf_env(env), stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    url = base_url(config.get("listen", "0.0.0.0:5000"), "tls" in config)
    wharf = WharfProcess(process, log_path, url, config_path)
    deadline = time.monotonic() + START_TIMEOUT
    while not _healthy(url, context):
        if process.poll() is not None:
            raise ServerError(f"wharf serve exited with {process.returncode}:\n{wharf.output()}")
        if time.monotonic() > deadline:
            wharf.stop()
            raise ServerError(f"wharf serve did not answer on {url}:\n{wharf.output()}")
        time.sleep(0.1)
    return wharf


def add_admin(url: str, config_path: Path, env: dict[str, str] | None = None) -> Credentials:
    """Give the running Wharf at ``url`` the server admin ``admin`` with a token of every scope, as
    an operator does (``wharf users add --admin``, ``wharf tokens create``, the same config and
    environment as ``serve``) and as ``make_wharf`` gives its Wharfs one; ``push_image`` to ``url``
    then signs in as it. Returns ``(name, token)``."""
    def wharf(*args: str) -> str:
        result = subprocess.run(wharf_argv(*args, "--config", str(config_path)), cwd=config_path.parent,
                                env=wharf_env(env), capture_output=True, text=True, timeout=60,
                                preexec_fn=_die_with_parent)
        assert result.returncode == 0, f"wharf {' '.join(args)}: exit {result.returncode}\n{result.stderr}"
        return result.stdout

    wharf("users", "add", "admin", "--admin")
    token = wharf("tokens", "create", "admin", "--scopes", ",".join(ALL_SCOPES),
                  "--note", "tests").strip().splitlines()[-1]  # printed once, on the last line
    PUSH_ACCOUNTS[url.rstrip("/")] = ("admin", token)
    return ("admin", token)


def start_failure(workdir: Path, config: dict, env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Run a ``wharf serve`` that must refuse to start: (exit status, stderr)."""
    config_path = write_config(workdir, config)
    try:
        result = subprocess.run(wharf_argv("serve", "--config", str(config_path)), cwd=workdir,
                                env=wharf_env(env), capture_output=True, text=True, timeout=30,
                                preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired as exc:  # it started after all
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr or "")
        return None, stderr
    return result.returncode, result.stderr


def assert_one_line_refusal(status: int | None, stderr: str, *words: str) -> None:
    """Exit status 2 and a single line on stderr, no traceback, holding each of ``words``."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, f"exit {status}:\n{stderr}"
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
