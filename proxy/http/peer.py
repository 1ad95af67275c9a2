"""``GET /_wharf/peer/blobs/<digest>``: a blob for another replica of the cluster (``cluster`` config).

Rules:
- only replicas call it: a request without a valid ``Wharf-Peer`` signature (``proxy.upstream.peer``)
  is ``403 DENIED``, whoever sends it; a replica without ``cluster.advertise_url`` answers every
  request ``404 NOT FOUND`` as for any unknown path;
- it gives what this replica holds or is filling (streamed as it grows, from the first byte), and
  never fetches for the asker: ``BLOB_UNKNOWN`` otherwise. The asker decides who may see the blob
  (``Wharf-Public`` only says it was fetched without a client's credential);
- its bytes count as ``wharf_peer_bytes_sent``, not as bytes served to clients.
"""

from __future__ import annotations

from aiohttp import web

from proxy.errors import Denied, DigestInvalid
from proxy.http.keys import API_VERSION, CONFIG, METRICS, PULLTHROUGH
from proxy.http.pull import send_growing, send_stored
from proxy.oci.digest import Digest, is_digest
from proxy.upstream.peer import PEER_BLOB_PATH, PUBLIC_HEADER, SIGNATURE_HEADER, verify


async def peer_blob(request: web.Request) -> web.StreamResponse:
    cluster = request.app[CONFIG].cluster
    if cluster.advertise_url is None or cluster.secret is None:
        raise web.HTTPNotFound()
    text = request.match_info["digest"]
    if not verify(cluster.secret, request.headers.get(SIGNATURE_HEADER), "GET", PEER_BLOB_PATH.format(digest=text)):
        raise Denied("replica-to-replica route: the request is not signed with the cluster's secret")
    if not is_digest(text):
        raise DigestInvalid(f"{text[:100]!r} is not a digest")
    digest = Digest.parse(text)
    result, public = await request.app[PULLTHROUGH].blob_cache.for_peer(digest)
    headers = {"Content-Type": request.app[PULLTHROUGH].blob_cache.media_type_of(digest), "Docker-Content-Digest": str(digest),
               PUBLIC_HEADER: "1" if public else "0", "Docker-Distribution-API-Version": API_VERSION}
    sent = request.app[METRICS].peer_bytes_sent
    if result.path is not None:
        return await send_stored(request, result, headers, sent)
    return await send_growing(request, result, headers, sent)


def setup_peer_routes(app: web.Application) -> None:
    app.router.add_get(PEER_BLOB_PATH.replace("{digest}", "{digest:[^/]+}"), peer_blob, name="peer_blob",
                       allow_head=False)
