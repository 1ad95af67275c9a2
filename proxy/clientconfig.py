"""The files that point containerd, podman/skopeo/buildah and dockerd at this Wharf.

Generated from the config alone (no I/O), so ``wharf client-config`` and the home page show the
same text. The rules, as ``docs/clients.md`` explains them and the client tests prove them:

- Wharf's address: ``host`` when given (``host[:port]``), else public_url's ``host[:port]``, else
  the listen address (a wildcard listener is named by this machine's host name). The scheme is
  public_url's, else https with TLS on, else http; only plain HTTP gets insecure entries.
- containerd: one ``certs.d/<registry>/hosts.toml`` per upstream, the directory named as image
  references name the registry; ``server`` is the upstream's own URL (containerd's fallback),
  Wharf the mirror host with pull and resolve. containerd sends ``?ns=<registry>`` to a mirror,
  and Wharf resolves the upstream from it, so image names stay as they are.
- containers/image (podman, skopeo, buildah): one ``[[registry]]`` per upstream with the mirror
  location ``<host>/<upstream>``, which arrives as a path prefix. The reference grammar forbids a
  ``:`` there, so an upstream whose name has a port is reached through a port-less alias (one
  without is left out, and the note says why).
- dockerd: ``registry-mirrors`` applies to Docker Hub only and sends names without any prefix, so
  it is written only when the default upstream is Docker Hub; other upstreams are pulled as
  ``<host>/<upstream>/<repo>``.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from proxy.config import Config, UpstreamConfig

CLIENTS = ("containerd", "podman", "docker")

# the names Docker Hub goes by in image references; Wharf's addressing knows them all as one
HUB_NAMES = frozenset({"docker.io", "registry-1.docker.io", "index.docker.io"})
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:\d{1,5})?$")


class HostInvalid(ValueError):
    """A ``--host`` that is no ``host[:port]``."""


@dataclass(frozen=True)
class ClientFile:
    """One file for one client: where it goes, its text, and what to know about it."""

    client: str
    path: str
    text: str
    note: str


@dataclass(frozen=True)
class _Wharf:
    """How clients reach Wharf: ``netloc`` is host[:port], ``plain`` whether that is plain HTTP."""

    netloc: str
    plain: bool

    @property
    def url(self) -> str:
        return f"{'http' if self.plain else 'https'}://{self.netloc}"


def client_files(config: Config, client: str, host: str | None = None) -> list[ClientFile]:
    """The files ``client`` (one of CLIENTS) needs to pull this Wharf's upstreams through it."""
    if client not in CLIENTS:
        raise ValueError(f"unknown client {client!r}: one of {', '.join(CLIENTS)}")
    wharf = _address(config, host)
    return {"containerd": _containerd, "podman": _podman, "docker": _docker}[client](config, wharf)


def wharf_netloc(config: Config, host: str | None = None) -> str:
    """The ``host[:port]`` clients use for this Wharf (see the module's rules)."""
    return _address(config, host).netloc


def _address(config: Config, host: str | None) -> _Wharf:
    if config.public_url is not None:
        public = urlsplit(config.public_url)
        plain = public.scheme == "http"
        default = public.netloc.rpartition("@")[2]
    else:
        plain = not config.tls.enabled
        name = socket.gethostname() if config.host in ("0.0.0.0", "::", "") else config.host
        default = f"[{name}]:{config.port}" if ":" in name else f"{name}:{config.port}"
    if host is not None:
        host = host.strip()
        if not _HOST_RE.match(host):
            raise HostInvalid(f"--host {host[:80]!r}: must be host or host:port (no scheme, no path), "
                              "e.g. wharf.example:5000")
        default = host
    return _Wharf(default, plain)


def _registry(upstream: UpstreamConfig) -> str:
    """The registry as image references name it: Docker Hub is ``docker.io`` whatever its upstream's name."""
    return "docker.io" if upstream.name in HUB_NAMES else upstream.name


def _upstream_location(upstream: UpstreamConfig) -> tuple[str, bool]:
    """The upstream's own registry as host[/path] (Docker Hub's as ``docker.io``, the name its
    logins are stored under), and whether it is plain HTTP."""
    parts = urlsplit(upstream.url)
    location = parts.netloc.rpartition("@")[2] + parts.path.rstrip("/")
    return "docker.io" if location in HUB_NAMES else location, parts.scheme == "http"


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's for what names and URLs hold)."""
    return json.dumps(value)


def _aliases_note(upstream: UpstreamConfig) -> str:
    return f" Wharf also knows it as {', '.join(upstream.aliases)}." if upstream.aliases else ""


# containerd ------------------------------------------------------------------------------------
def _containerd(config: Config, wharf: _Wharf) -> list[ClientFile]:
    files = []
    for upstream in config.upstreams:
        registry = _registry(upstream)
        text = (f"server = {_toml(upstream.url)}\n\n"
                f"[host.{_toml(wharf.url)}]\n"
                f'  capabilities = ["pull", "resolve"]\n')
        note = (f"Images keep their names ({registry}/...): containerd asks Wharf for "
                f"/v2/<repo>/...?ns={registry} and Wharf resolves the upstream from ns. "
                f"Point the CRI plugin at the directory (config_path = \"/etc/containerd/certs.d\") or "
                f"pass ctr images pull --hosts-dir /etc/containerd/certs.d. When Wharf answers 404 or is "
                f"down, containerd falls back to {upstream.url} itself."
                + ("" if wharf.plain else " For a certificate from a private CA, add ca = \"/path/to/ca.crt\" "
                   "under the host.")
                + _aliases_note(upstream))
        files.append(ClientFile("containerd", f"/etc/containerd/certs.d/{registry}/hosts.toml", text, note))
    return files


# podman, skopeo, buildah -------------------------------------------------------------------------
def _mirror_name(upstream: UpstreamConfig) -> str | None:
    """The name a mirror location's path may carry: the upstream's, or a port-less alias."""
    for name in (upstream.name, *upstream.aliases):
        if ":" not in name:
            return name
    return None


def _podman(config: Config, wharf: _Wharf) -> list[ClientFile]:
    lines: list[str] = []
    if config.default_upstream is not None:
        default = _registry(config.upstream(config.default_upstream))
        lines += [f"unqualified-search-registries = [{_toml(default)}]", ""]
    left_out = []
    for upstream in config.upstreams:
        mirror = _mirror_name(upstream)
        if mirror is None:
            left_out.append(upstream.name)
            continue
        location, upstream_plain = _upstream_location(upstream)
        lines += ["[[registry]]", f"prefix = {_toml(_registry(upstream))}", f"location = {_toml(location)}"]
        if upstream_plain:
            lines.append("insecure = true")
        lines += ["[[registry.mirror]]", f"location = {_toml(f'{wharf.netloc}/{mirror}')}"]
        if wharf.plain:
            lines.append("insecure = true")
        lines.append("")
    note = ("Image names stay as they are; each is rewritten to the mirror location "
            f"{wharf.netloc}/<upstream>/<repo>, which Wharf reads as a path prefix. podman and buildah "
            "read /etc/containers/registries.conf or the file named by CONTAINERS_REGISTRIES_CONF; skopeo "
            "takes --registries-conf FILE. When Wharf does not answer, the client falls back to the "
            "upstream itself.")
    if left_out:
        note += (f" Left out: {', '.join(left_out)} — a mirror location cannot carry a name with a port; "
                 "give the upstream a port-less alias in Wharf's config.")
    return [ClientFile("podman", "/etc/containers/registries.conf", "\n".join(lines).rstrip("\n") + "\n", note)]


# dockerd -----------------------------------------------------------------------------------------
def _docker(config: Config, wharf: _Wharf) -> list[ClientFile]:
    settings: dict[str, list[str]] = {}
    default = config.upstream(config.default_upstream) if config.default_upstream else None
    hub_default = default is not None and _registry(default) == "docker.io"
    if hub_default:
        settings["registry-mirrors"] = [wharf.url]
    if wharf.plain:
        settings["insecure-registries"] = [wharf.netloc]
    others = [u.name for u in config.upstreams if u is not default]
    if hub_default:
        note = ("dockerd sends Docker Hub pulls (alpine, someorg/tool) to Wharf without a prefix, and Wharf "
                "serves them from its default upstream docker.io.")
    else:
        note = ("No registry-mirrors: dockerd mirrors only Docker Hub, and sends those names without a prefix, "
                "which Wharf serves from its default_upstream — set default_upstream: docker.io to use it.")
    if others:
        note += (f" dockerd cannot mirror other registries: pull them as {wharf.netloc}/<upstream>/<repo> "
                 f"(e.g. docker pull {wharf.netloc}/{others[0]}/owner/image:tag); upstreams: {', '.join(others)}.")
    note += " Merge these keys into an existing daemon.json, then restart dockerd."
    return [ClientFile("docker", "/etc/docker/daemon.json", json.dumps(settings, indent=2) + "\n", note)]
