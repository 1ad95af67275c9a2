"""Sizes, repetitions, durations and ports for one benchmark run; nothing here does I/O."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 2**20
GiB = 2**30

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = BENCH_DIR.parent.parent
RESULTS = BENCH_DIR / "results"
WORK = RESULTS / "tmp"            # generated images, server state, logs (gitignored)
SHM = Path("/dev/shm/wharf-bench")  # skopeo pull destinations (RAM, so the client's disk is not measured)

HOST = "127.0.0.1"                # the only address any traffic goes to


@dataclass(frozen=True)
class Ports:
    registry: int = 15000         # Debian's docker-registry: the one real upstream
    front: int = 15001            # nginx in front of it: access log with bytes sent
    front_throttled: int = 15002  # the same, limit_rate per connection (test 3)
    relay: int = 15003            # in-driver TCP relay that can go down or hang (test 7)
    front_status: int = 15009     # stub_status of the front, to wait for upstream to go idle
    wharf: int = 15010
    distribution: int = 15020
    distribution_registry: int = 15021  # distribution without proxy: takes pushes (test 9)
    nginx_cache: int = 15030
    nginx_cache_tuned: int = 15031
    nginx_sendfile: int = 15040
    aiohttp_bare: int = 15050
    redis: int = 15060            # Redis the replicas share (test 13)
    moto: int = 15061             # moto's S3 server (test 14)
    balancer: int = 15070         # nginx round-robin in front of the replicas (test 13)
    replicas: int = 15071         # 15071-15073: the replicas behind it
    fleet_wharf: int = 15080      # 15080-15082: the single replica (13) and the S3-backed Wharfs (14)


PORTS = Ports()


@dataclass(frozen=True)
class Profile:
    name: str
    big_bytes: int                # the single-layer image (test 1, 2, 3)
    layer_count: int              # the many-layer image
    layer_bytes: int
    multi_layer_bytes: int        # per-platform layer of the multi-arch index (test 7)
    mem_small: int                # test 6: peak memory for a small and a huge blob
    mem_large: int
    reps: int                     # interleaved repetitions; medians are reported
    load_seconds: int             # wrk / ab duration per run (test 4, 5)
    blob_seconds: int             # wrk duration for the warm blob GET (test 1)
    throttle_bps: int             # upstream limit for test 3
    clients: int                  # test 3 concurrency
    stall_timeout: float          # how long a pull may hang before it counts as failed (test 7)
    fill_timeout: float           # bound on any one cold transfer


FULL = Profile(
    name="full", big_bytes=512 * MiB, layer_count=20, layer_bytes=5 * MiB, multi_layer_bytes=1 * MiB,
    mem_small=64 * MiB, mem_large=4 * GiB, reps=3, load_seconds=5, blob_seconds=3,
    throttle_bps=40_000_000, clients=50, stall_timeout=30.0, fill_timeout=240.0,
)

QUICK = Profile(
    name="quick", big_bytes=64 * MiB, layer_count=20, layer_bytes=512 * 1024, multi_layer_bytes=256 * 1024,
    mem_small=16 * MiB, mem_large=256 * MiB, reps=2, load_seconds=2, blob_seconds=2,
    throttle_bps=16_000_000, clients=50, stall_timeout=10.0, fill_timeout=120.0,
)

WHARF_UPSTREAM_NAME = "upstream.local"   # clients reach it as /v2/upstream.local/<repo>/...

DOCKER_ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
])

# test 5: the same tag asked for with the Accept strings different clients send
ACCEPT_VARIANTS = [
    DOCKER_ACCEPT,
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*",
]
