"""How a request names its upstream: path prefix, containerd's ``?ns=``, or the default upstream.

Rules, in order:
1. ``?ns=<registry>`` (containerd mirrors): that upstream; the path name is its repository.
2. a first path component that is a configured upstream name (``ghcr.io/owner/img``): that
   upstream; the rest is the repository.
3. a name that is a local repository: local.
4. a configured default upstream (dockerd ``registry-mirrors``): that upstream.
5. otherwise local (where pushes land).
On docker.io a single-component repository means ``library/<name>``.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

from proxy.errors import NameUnknown
from proxy.oci.names import validate_name
from proxy.registry.base import Target

_HUB_ALIASES = {"docker.io", "registry-1.docker.io", "index.docker.io"}


def _normalise(upstream: str, repo: str) -> str:
    if upstream in _HUB_ALIASES and "/" not in repo:
        return f"library/{repo}"
    return repo


class Addressing:
    """Turns (path name, ns) into a Target using the configured upstream names and aliases."""

    def __init__(self, upstream_names: Mapping[str, str], default_upstream: str | None,
                 is_local_repo: Callable[[str], bool]) -> None:
        self._names = dict(upstream_names)  # name or alias -> upstream name
        self._default = default_upstream
        self._is_local_repo = is_local_repo
        self._hub_name = next((n for a, n in self._names.items() if a in _HUB_ALIASES), None)

    def _upstream_for(self, host: str) -> str | None:
        if host in self._names:
            return self._names[host]
        if host in _HUB_ALIASES:
            return self._hub_name
        return None

    def resolve(self, name: str, ns: str | None) -> Target:
        if ns:
            upstream = self._upstream_for(ns)
            if upstream is None:
                raise NameUnknown(f"no upstream is configured for namespace {ns!r}")
            return self._prefixed(upstream, name)
        head, sep, rest = name.partition("/")
        if sep:
            upstream = self._upstream_for(head)
            if upstream is not None:
                return self._prefixed(upstream, rest)
        validate_name(name)
        if self._default is not None and not self._is_local_repo(name):
            return Target(self._default, _normalise(self._default, name))
        return Target(None, name)

    @functools.lru_cache(maxsize=4096)
    def _prefixed(self, upstream: str, repo: str) -> Target:
        """A prefixed name depends on nothing that changes: resolved (and validated) once."""
        return Target(upstream, _normalise(upstream, validate_name(repo)))

    def is_upstream_namespace(self, name: str, ns: str | None) -> bool:
        """True when a name addresses an upstream explicitly (prefix or ns); pushes there are refused."""
        if ns:
            return True
        head, sep, _ = name.partition("/")
        return bool(sep) and self._upstream_for(head) is not None
