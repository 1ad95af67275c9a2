# syntax=docker/dockerfile:1
#
# Wharf container image.
#
#   docker build -t wharf:0.1.0 .
#   docker run -p 5000:5000 -v wharf-data:/var/lib/wharf/data wharf:0.1.0
#
# The config baked in at /etc/wharf/wharf.yaml is config/wharf.yaml; mount your own file over it,
# or override single keys from the environment (WHARF_LISTEN, WHARF_REDIS__URL, ...).
# The blob store and metadata live under /var/lib/wharf/data (WHARF_STORAGE__ROOT, which wins
# over storage.root in the config file); it is the only path the process writes to besides /tmp.
# HTTPS: mount a certificate and key and set tls.cert / tls.key (WHARF_TLS__CERT, WHARF_TLS__KEY);
# renewed files are picked up without a restart.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# build: install Wharf and its runtime dependencies (no test extras) into a self-contained venv
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/wharf

WORKDIR /src
# README* is optional: pyproject.toml names README.md, copy it when it exists. *.whl: a wheelhouse
# that scripts/build_image.sh puts in the context when the build cannot reach PyPI itself; with
# one, Wharf and its dependencies come from it only (--no-index).
COPY pyproject.toml README* *.whl ./
COPY proxy ./proxy
RUN if ls ./*.whl >/dev/null 2>&1; then /opt/wharf/bin/pip install --no-index --find-links . wharf; \
    else /opt/wharf/bin/pip install .; fi \
 && /opt/wharf/bin/wharf --version

# ---------------------------------------------------------------------------------------------
# runtime: the same base image, the venv, the default config, and an unprivileged user
FROM ${PYTHON_IMAGE}

ARG WHARF_UID=10001
ARG WHARF_GID=10001

RUN groupadd --gid "${WHARF_GID}" wharf \
 && useradd --uid "${WHARF_UID}" --gid "${WHARF_GID}" \
        --home-dir /var/lib/wharf --no-create-home --shell /usr/sbin/nologin wharf \
 && mkdir -p /var/lib/wharf/data /etc/wharf \
 && chown -R "${WHARF_UID}:${WHARF_GID}" /var/lib/wharf

COPY --from=build /opt/wharf /opt/wharf
COPY config/wharf.yaml /etc/wharf/wharf.yaml

LABEL org.opencontainers.image.title="wharf" \
      org.opencontainers.image.description="Pull-through caching proxy, mirror and registry for OCI / Docker images" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/wharf/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WHARF_STORAGE__ROOT=/var/lib/wharf/data

WORKDIR /var/lib/wharf
USER ${WHARF_UID}:${WHARF_GID}
VOLUME ["/var/lib/wharf/data"]
EXPOSE 5000

# `wharf healthcheck` reads the same config as `wharf serve` (the file, then WHARF_* variables)
# and asks /healthz on the address the server listens on, over https when tls is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["wharf", "healthcheck", "--config", "/etc/wharf/wharf.yaml"]

ENTRYPOINT ["wharf"]
CMD ["serve", "--config", "/etc/wharf/wharf.yaml"]
