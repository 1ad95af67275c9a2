#!/usr/bin/env python3
"""The OCI distribution-spec conformance suite against ``wharf serve`` (pull, push, discovery, management).

The suite is never part of this repository, and building it needs its public sources (fetched
by hand), so it is not part of the test run: build it offline with
``scripts/build_conformance.py``, then ``scripts/run_conformance.py /path/to/conformance``
(exit status 0 only when every run passes). It runs with the
suite's own defaults for spec version 1.1 and for the development version (which adds upload
cancel, ``?tag=`` parameters and required digest headers), each against a fresh ``wharf serve``.
Every API and data set is on except sparse manifests: Wharf requires every referenced blob.
The suite signs in as a server admin with a personal access token made by ``wharf users add``
and ``wharf tokens create``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import socket
import tempfile

import yaml

PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = tmp_path / "wharf.yaml"
    config.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}", "storage": {"root": str(tmp_path / "store")},
        "upstreams": [], "default_upstream": None, "log": {"level": "warning", "access_log": False}}))
    process = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(config)], cwd=PROJECT,
                               stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return process, port
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"wharf serve did not start:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")


def account(config: Path) -> tuple[str, str]:
    """A server admin and a token with every scope, made with Wharf's own CLI: (user, token)."""
    cli = [sys.executable, "-m", "proxy"]
    subprocess.run([*cli, "users", "add", "conformance", "--admin", "--config", str(config)], cwd=PROJECT,
                   check=True, capture_output=True)
    made = subprocess.run([*cli, "tokens", "create", "conformance", "--scopes",
                           "read:packages,write:packages,delete:packages", "--config", str(config)],
                          cwd=PROJECT, check=True, capture_output=True, text=True)
    return "conformance", made.stdout.strip().splitlines()[-1]


def counts(report: str) -> dict[str, int]:
    return {key: int(value) for key, value in
            re.findall(r"^\s*(Disabled|Skip|Pass|FAIL|Error)\.*:\s+(\d+)\s*$", report, re.MULTILINE)}


ALL_APIS = {"OCI_API_BLOBS_UPLOAD_CANCEL": "true", "OCI_API_MANIFESTS_TAG_PARAM": "true",
            "OCI_API_BLOBS_DIGEST_HEADER": "true", "OCI_API_MANIFESTS_DIGEST_HEADER": "true"}


RUNS = [("1.1", {}), ("1.1-all-apis", ALL_APIS), ("dev", {})]


def run(binary: str, version: str, extra: dict[str, str], tmp_path: Path) -> list[str]:
    """One suite run against a fresh ``wharf serve``; returns the problems found (none: passed)."""
    process, port = serve(tmp_path)
    user, token = account(tmp_path / "wharf.yaml")
    try:
        env = {**os.environ, "OCI_USERNAME": user, "OCI_PASSWORD": token, "OCI_VERSION": version, "OCI_REGISTRY": f"127.0.0.1:{port}", "OCI_TLS": "disabled",
               "OCI_REPO1": "conformance/repo1", "OCI_REPO2": "conformance/repo2",
               "OCI_RESULTS_DIR": str(tmp_path / "results"), "OCI_LOG": "warn", **extra}
        result = subprocess.run([binary], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    finally:
        process.terminate()
        process.wait(10)
    found = counts(result.stdout)
    print(f"conformance {version} {'(all APIs)' if extra else ''}: {found}")
    problems = [line for line in result.stdout.splitlines() if line.rstrip().endswith(("FAIL", "Error"))]
    if found.get("Pass", 0) <= 800:
        problems.append("too few passes:\n" + result.stdout[-3000:] + result.stderr[-2000:])
    if found.get("Skip", 0):  # Disabled: APIs the version's defaults leave off (1.1: cancel, ?tag=)
        problems.append(f"{found['Skip']} skipped")
    return problems


def main() -> int:
    binary = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CONFORMANCE_BIN", "")
    if not binary or not Path(binary).is_file():
        print("usage: scripts/run_conformance.py /path/to/conformance (built by scripts/build_conformance.py)",
              file=sys.stderr)
        return 2
    failed = False
    for name, extra in RUNS:
        version = name.split("-")[0]
        with tempfile.TemporaryDirectory() as tmp:
            problems = run(binary, version, extra, Path(tmp))
        for problem in problems[:50]:
            print("  " + problem)
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
