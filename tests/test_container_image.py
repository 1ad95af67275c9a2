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
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from support.images import make_image, push_image
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
        if os.environ.get("WHARF_REQUIRE_IMAGE") == "1":  # scripts/test.sh built it: its absence is a failure
            pytest.fail(f"{IMAGE} was not built: see scripts/build_image.sh's output")
        pytest.skip(f"{IMAGE} is not built here: run scripts/build_image.sh first")

    def run(*args: str, check: bool = True) -> str:
        done = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=120)
        if check:
            assert done.returncode == 0, done.stderr
        return done.stdout.strip()
    return run


@pytest.fixture
def container(docker, request):
    port = free_port()
    upstream = request.getfixturevalue("registry_upstream") if "pulled" in request.node.name else None
    name = f"wharf-image-test-{port}"
    docker("run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
           "--health-interval", "1s", "--health-start-period", "1s",
           "-e", f"WHARF_LISTEN=127.0.0.1:{port}", "-e", "WHARF_DEFAULT_UPSTREAM=null",
           "-e", f"WHARF_UPSTREAMS=[{{name: upstream.test, url: '{upstream or 'http://127.0.0.1:9'}'}}]",
           "--tmpfs", "/var/lib/wharf/data:uid=10001,gid=10001", IMAGE)
    try:
        deadline = time.monotonic() + 60
        while health(docker, name) != "healthy" and time.monotonic() < deadline:
            time.sleep(0.5)
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


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def anonymous_token(challenge: str, scope: str) -> str:
    """The token flow a client runs after /v2/'s 401: GET the realm with service and scope."""
    fields = dict(part.split("=", 1) for part in challenge.removeprefix("Bearer ").split(","))
    fields = {k: v.strip('"') for k, v in fields.items()}
    query = urllib.parse.urlencode({"service": fields.get("service", ""), "scope": scope})
    status, _, body = get(f"{fields['realm']}?{query}")
    assert status == 200, body
    return json.loads(body)["token"]


async def test_an_image_is_pulled_through_the_running_container(docker, container, registry_upstream):
    name, port = container
    image = make_image("container-image")
    await push_image(registry_upstream, "team/app", image, "v1")
    base = f"http://127.0.0.1:{port}/v2/upstream.test/team/app"
    status, headers, _ = get(f"http://127.0.0.1:{port}/v2/")
    headers_for = {}
    if status == 401:
        token = anonymous_token(headers["WWW-Authenticate"], "repository:upstream.test/team/app:pull")
        headers_for = {"Authorization": f"Bearer {token}"}
    status, headers, manifest = get(f"{base}/manifests/v1", {**headers_for, "Accept": image.media_type})
    assert status == 200, manifest
    assert manifest == image.manifest and headers["Docker-Content-Digest"] == image.digest
    for blob in (image.config, *image.layers):
        status, _, data = get(f"{base}/blobs/{blob.digest}", headers_for)
        assert status == 200 and data == blob.data
