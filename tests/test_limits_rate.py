"""Per-client request rate: 429 TOOMANYREQUESTS with Retry-After after the burst, by address or credential.

The rate is set so low in these tests (one request per 100 s) that no token comes back while a
test runs: what a client may do is exactly its burst.
"""

from __future__ import annotations

import base64
import json

from support.images import make_image, push_image
from test_limits import Conn, _metrics, _sample
from test_replay import REPLAYING

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
SLOW = {"requests_per_second": 0.01}


def _basic(user: str, password: str = "pw") -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() + "\r\n"


async def test_a_client_past_its_burst_gets_429_with_retry_after(make_wharf):
    wharf = await make_wharf(clients=SLOW | {"burst": 3})
    conn = await Conn.open(wharf.url)
    assert [(await conn.get("/v2/"))[0] for _ in range(3)] == [401, 401, 401]
    status, headers, body = await conn.get("/v2/")
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    assert (await conn.get("/v2/library/alpine/manifests/latest"))[0] == 429  # every route
    for _ in range(5):  # health and metrics are never limited
        assert (await conn.get("/healthz"))[0] == 200
        assert (await conn.get("/readyz"))[0] == 200
    metrics = await _metrics(wharf.url)
    assert _sample(metrics, 'wharf_client_requests_limited_total{client="address"}') == 2
    assert _sample(metrics, 'wharf_http_requests_total{method="GET",route="base",status="429"}') == 1


async def test_limits_are_off_by_default(make_wharf):
    wharf = await make_wharf()
    conn = await Conn.open(wharf.url)
    assert {(await conn.get("/v2/"))[0] for _ in range(200)} == {401}


async def test_a_credential_has_its_own_bucket_and_inventing_credentials_does_not_escape_the_address(make_wharf):
    wharf = await make_wharf(clients=SLOW | {"burst": 3})
    conn = await Conn.open(wharf.url)
    alice = _basic("alice")

    async def limited(extra: str = "") -> bool:
        return (await conn.get("/v2/", extra))[0] == 429

    assert not await limited(alice)   # alice's first request: charged to her bucket and the address's
    assert not await limited()
    assert not await limited()
    assert await limited()            # the address's burst is spent
    assert not await limited(alice)   # alice still has hers
    assert not await limited(alice)
    assert await limited(alice)
    assert await limited(_basic("mallory-1"))  # a new credential pays its way in at the address
    assert await limited("Authorization: Bearer wharf.anonymous\r\n")  # the anonymous token is no credential
    metrics = await _metrics(wharf.url)
    assert _sample(metrics, 'wharf_client_requests_limited_total{client="credential"}') == 2


async def test_many_invented_credentials_share_their_address_ceiling(make_wharf):
    """Each new credential would bring a burst of its own: all of an address's credentials
    together get at most ``address_ceiling`` times one client's burst."""
    wharf = await make_wharf(clients=SLOW | {"burst": 3, "address_ceiling": 2})
    conn = await Conn.open(wharf.url)
    answered = 0
    for i in range(20):
        for _ in range(3):
            answered += (await conn.get("/v2/", _basic(f"mallory-{i}")))[0] != 429
    assert answered == 2 * 3


async def test_replayed_answers_are_charged_to_the_client_too(make_wharf, registry_upstream, repo_name):
    image = make_image("limits", (300,))
    await push_image(registry_upstream, repo_name, image, tag="v1")
    wharf = await make_wharf(registry_upstream, clients=SLOW | {"burst": 4}, fast_paths=REPLAYING)
    path = f"/v2/{wharf.upstream_name(registry_upstream)}/{repo_name}/manifests/{image.digest}"
    conn = await Conn.open(wharf.url)
    answers = [await conn.get(path, f"Accept: {DOCKER_V2}\r\n") for _ in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200, 429]
    assert all(body == image.manifest for _, _, body in answers[:4])
    handled = [seen for seen in wharf.seen if seen.path == path]
    assert len(handled) < 5, "some answers were replayed"
    assert handled[-1].status == 429 and int(answers[4][1]["retry-after"]) >= 1
