"""The container image scripts/build_image.sh builds (wharf:0.1.0), run as the chart runs it: a
read-only root, non-root, the listen address moved by WHARF_LISTEN; its HEALTHCHECK follows that
address, and /v2/ answers through it. The image is built in CI by scripts/build_image.sh (minutes);
without it these tests are skipped, saying so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.servers import free_port

pytestmark = pytest.mark.once  # the image, not the request paths

IMAGE = os.environ.get("WHARF_IMAGE", "wharf:0.1.0")
PRIVATE_DOCKERD = Path(os.environ.get("WHARF_IMAGE_WORK", "/var/tmp/wharf-image")) / "docker.sock"


def docker_env() -> dict[str, str] | None:
    """The environment that reaches a Docker daemon holding the image: the default one, else
    the private dockerd scripts/build_image.sh starts; None when neither has it."""
    candidates = [dict(os.environ)]
    if PRIVATE_DOCKERD.exists():
        candidates.append({**os.environ, "DOCKER_HOST": f"unix://{PRIVATE_DOCKERD}"})
    for env in candidates:
        try:
            found = subprocess.run(["docker", "image", "inspect", IMAGE], env=env, capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if found.returncode == 0:
            return env
    return None


def test_the_dockerfile_is_hadolint_clean():
    hadolint = Path(sys.executable).with_name("hadolint")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([str(hadolint), "Dockerfile"], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def docker():
    env = docker_env()
    if env is None:
        pytest.skip(f"{IMAGE} is not built here: run scripts/build_image.sh first")

    def run(*args: str, check: bool = True) -> str:
        done = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=120)
        if check:
            assert done.returncode == 0, done.stderr
        return done.stdout.strip()
    return run


@pytest.fixture
def container(docker):
    port = free_port()
    name = f"wharf-image-test-{port}"
    docker("run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
           "--health-interval", "1s", "--health-start-period", "1s",
           "-e", f"WHARF_LISTEN=127.0.0.1:{port}", "-e", "WHARF_DEFAULT_UPSTREAM=null",
           "--tmpfs", "/var/lib/wharf/data:uid=10001,gid=10001", IMAGE)
    try:
        yield name, port
    finally:
        docker("rm", "-f", name, check=False)


def health(docker, name: str) -> str:
    state = json.loads(docker("inspect", "--format", "{{json .State}}", name))
    assert state["Running"], docker("logs", name, check=False)
    return state.get("Health", {}).get("Status", "")


def test_the_image_runs_as_non_root_and_its_healthcheck_follows_the_listen_address(docker, container):
    name, port = container
    assert docker("inspect", "--format", "{{.Config.User}}", IMAGE) == "10001:10001"
    deadline = time.monotonic() + 60
    while health(docker, name) != "healthy" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert health(docker, name) == "healthy", docker("logs", name, check=False)
    try:  # the default config answers anonymous /v2/ with a token challenge, as registries do
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=10) as resp:
            status, headers = resp.status, resp.headers
    except urllib.error.HTTPError as error:
        status, headers = error.code, error.headers
    assert status in (200, 401)
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert docker("exec", name, "id", "-u") == "10001"
