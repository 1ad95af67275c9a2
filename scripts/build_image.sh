#!/usr/bin/env bash
# Build the Wharf container image with no container registry reachable.
#
#   scripts/build_image.sh [TAG]          (default TAG: wharf:0.1.0)
#
# 1. The base image is made here with debootstrap (Debian bookworm, minbase, python3 + venv +
#    ca-certificates) from the Debian mirror and imported as wharf-base:bookworm, once.
# 2. A wheelhouse of Wharf and its runtime dependencies is made with this machine's pip
#    (WHARF_BUILD_PYTHON, default python3; its index and CA settings), so the build needs no network.
# 3. The Dockerfile is built on the base (PYTHON_IMAGE=wharf-base:bookworm) from that wheelhouse.
# With no Docker daemon answering, a private dockerd is started for the build (data under
# $WHARF_IMAGE_WORK, default /var/tmp/wharf-image) and left running for tests/test_container_image.py;
# its socket is $WHARF_IMAGE_WORK/docker.sock (export DOCKER_HOST=unix://... to use it).
set -euo pipefail

TAG=${1:-wharf:0.1.0}
SUITE=${WHARF_BASE_SUITE:-bookworm}
MIRROR=${WHARF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=wharf-base:${SUITE}
WORK=${WHARF_IMAGE_WORK:-/var/tmp/wharf-image}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"

need() { command -v "$1" >/dev/null || { echo "build_image: $1 is missing (apt-get install -y $2)" >&2; exit 2; }; }
need docker docker.io
need debootstrap debootstrap

if ! docker info >/dev/null 2>&1; then
    export DOCKER_HOST="unix://$WORK/docker.sock"
    if ! docker info >/dev/null 2>&1; then
        echo "build_image: starting a private dockerd ($DOCKER_HOST)"
        setsid dockerd --data-root "$WORK/docker" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
            --host "$DOCKER_HOST" --bridge none --iptables=false --ip6tables=false \
            >"$WORK/dockerd.log" 2>&1 < /dev/null &
        for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || { echo "build_image: dockerd did not start, see $WORK/dockerd.log" >&2; exit 1; }
    fi
fi

start=$(date +%s)
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    rootfs=$(mktemp -d "$WORK/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    echo "build_image: debootstrap $SUITE into $rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
    # an image needs no package cache, docs or man pages
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
           "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$BASE"
fi
echo "build_image: base $BASE ready after $(( $(date +%s) - start )) s"

# The build context: what .dockerignore lets through, plus a wheelhouse of Wharf and its runtime
# dependencies made here with this machine's pip (its index and CA settings), so the build
# itself needs no network. The base's python3 is Debian's 3.11, as the wheels' tags must match.
context=$(mktemp -d "$WORK/context.XXXXXX")
trap 'rm -rf "$context" "${rootfs:-}"' EXIT
PYTHON=${WHARF_BUILD_PYTHON:-python3}
cp -r "$ROOT/Dockerfile" "$ROOT/.dockerignore" "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/proxy" "$context/"
mkdir -p "$context/config" && cp "$ROOT/config/wharf.yaml" "$context/config/"
find "$context/proxy" -name __pycache__ -prune -exec rm -rf {} +
# async-timeout: redis needs it below Python 3.11.3 (bookworm has 3.11.2), a marker this pip may not hit
flock /tmp/wharf-pip.lock "$PYTHON" -m pip wheel --quiet --wheel-dir "$context" "$ROOT" "async-timeout>=4.0.3"
echo "build_image: wheelhouse of $(ls "$context"/*.whl | wc -l) wheels after $(( $(date +%s) - start )) s"
docker build --build-arg "PYTHON_IMAGE=$BASE" -t "$TAG" "$context"
echo "build_image: $TAG built in $(( $(date +%s) - start )) s"
