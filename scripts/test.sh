#!/usr/bin/env bash
# Install everything the tests need on Debian 12, then run pytest twice, with the fast paths on and
# off (arguments are passed through to both runs).
#
#   bash scripts/test.sh                          # whole suite
#   bash scripts/test.sh tests/test_support.py -x # a subset
#
# Reruns are quick: apt runs only when a package is missing, pip only when pyproject.toml changed.
# No systemd is needed: the test fixtures start docker-registry, redis-server and postgres themselves, so
# the packages' own services are kept from starting during the install.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker-registry redis-server postgresql nginx skopeo podman containerd docker.io python3-venv python3-dev gcc openssl chromium fonts-dejavu-core debootstrap)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "scripts/test.sh: need root or sudo to install: $*" >&2
        exit 1
    fi
}

missing_packages() {
    local pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" = installed ] || echo "$pkg"
    done
}

# Debian's postinst scripts start redis-server, docker-registry and dockerd through invoke-rc.d;
# docker-registry's postinst even fails the install if its init script fails. A policy-rc.d
# that answers 101 ("action forbidden") makes invoke-rc.d skip every start. An existing one
# (Docker base images ship one) is left as it is.
POLICY=/usr/sbin/policy-rc.d
remove_policy() { as_root rm -f "$POLICY"; }

install_packages() {
    local missing
    missing=$(missing_packages)
    [ -z "$missing" ] && return 0
    echo "scripts/test.sh: installing:" $missing >&2
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY" >/dev/null
        as_root chmod 755 "$POLICY"
        trap remove_policy EXIT
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    # shellcheck disable=SC2086  # one word per package
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
    if [ -n "$(trap -p EXIT)" ]; then
        remove_policy
        trap - EXIT
    fi
}

install_python_deps() {
    [ -x .venv/bin/python ] || python3 -m venv .venv
    local stamp=.venv/.wharf-test-deps
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
        echo "$want" >"$stamp"
    fi
}

install_packages
install_python_deps
ignore_image=()
if [ $# -eq 0 ]; then
    # the container image: built from a debootstrap base (no registry needed), then started and pulled
    # through by tests/test_container_image.py; its private dockerd is stopped before the suite runs
    echo "scripts/test.sh: building the container image" >&2
    WHARF_BUILD_PYTHON=.venv/bin/python bash scripts/build_image.sh
    WHARF_REQUIRE_IMAGE=1 .venv/bin/python -m pytest -q tests/test_container_image.py
    if [ -f /var/tmp/wharf-image/dockerd.pid ]; then
        kill "$(cat /var/tmp/wharf-image/dockerd.pid)" 2>/dev/null || true
    fi
    ignore_image=(--ignore=tests/test_container_image.py)
fi
# twice: with the fast paths (replayed answers, hot set, sendfile) on, as shipped, and off, so
# that every behaviour is proven not to depend on them (tests of a fast path force it on)
# on WHARF_TEST_WORKERS xdist workers (2: the tests mostly wait on servers and clients, so two
# share two cores well; every daemon a test starts has state, sockets and ports of its own)
parallel=(-n "${WHARF_TEST_WORKERS:-2}" --durations=15)
echo "scripts/test.sh: the suite with the fast paths on" >&2
.venv/bin/python -m pytest -q "${parallel[@]}" "${ignore_image[@]}" "$@"
# (tests marked "once" — the pages, generated files, config output — go through no fast path: run once;
# nor do tests that start no Wharf through make_wharf: tests/conftest.py leaves them out of this pass)
echo "scripts/test.sh: the suite with the fast paths off (TEST_FAST_PATHS=off), the tests they reach" >&2
TEST_FAST_PATHS=off exec .venv/bin/python -m pytest -q "${parallel[@]}" -m "not once" "${ignore_image[@]}" "$@"
