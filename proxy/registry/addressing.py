"""How a request names its upstream: path prefix, containerd's ``?ns=``, or the default upstream.

Rules, in order:
1. ``?ns=<registry>`` (containerd mirrors): that upstream; the path name is its repository.
2. a first path component that is a configured upstream name (``ghcr.io/owner/img``): that
   upstream; the rest is the repository.
3. no default upstream: local.
4. a name under a namespace declared local (config ``local_namespaces``): local.
5. otherwise the default upstream (dockerd ``registry-mirrors``).
On docker.io a single-component repository means ``library/<name>``.

A local repository never shadows a name that mirror clients resolve to an upstream: with a
default upstream set, a push is accepted only under a declared local namespace (never
``library/``, never a single-component name), so a prefix-less name means the same upstream
image for every client, whatever anyone pushed. Declaring a namespace local while Wharf runs
(``LocalNamespaces.declare``) drops every answer remembered by name.
"""

from __future__ import annotations

import functools
from typing import Iterable, Mapping

from proxy.errors import Denied, NameUnknown
from proxy.oci.names import validate_name
from proxy.registry.base import Target
from proxy.registry.invalidation import Invalidation

_HUB_ALIASES = {"docker.io", "registry-1.docker.io", "index.docker.io"}


def _normalise(upstream: str, repo: str) -> str:
    if upstream in _HUB_ALIASES and "/" not in repo:
        return f"library/{repo}"
    return repo


class LocalNamespaces:
    """The first path components under which prefix-less names are local repositories."""

    def __init__(self, names: Iterable[str] = (), invalidation: Invalidation | None = None) -> None:
        self._declared = frozenset(names)
        self._names = self._declared
        self._invalidation = invalidation

    def __contains__(self, namespace: str) -> bool:
        return namespace in self._names and namespace != "library"

    def __iter__(self):
        return iter(sorted(self._names))

    def replace_accounts(self, names: Iterable[str]) -> None:
        """The users' and organisations' namespaces (created by an admin) are local too, beside the
        declared ones; a change drops every answer remembered by name."""
        names = self._declared | {n for n in names if n != "library" and "/" not in n}
        if names != self._names:
            self._names = names
            if self._invalidation is not None:
                self._invalidation.names_changed()

    def declare(self, namespace: str) -> None:
        """Make ``namespace`` local from now on; answers remembered for its names are dropped."""
        validate_name(namespace)
        if namespace == "library" or "/" in namespace:
            raise Denied(f"{namespace!r} cannot be a local namespace")
        if namespace in self._names:
            return
        self._names = self._names | {namespace}
        if self._invalidation is not None:
            self._invalidation.names_changed()


class Addressing:
    """Turns (path name, ns) into a Target using the configured upstream names and aliases."""

    def __init__(self, upstream_names: Mapping[str, str], default_upstream: str | None,
                 local_namespaces: LocalNamespaces | None = None) -> None:
        self._names = dict(upstream_names)  # name or alias -> upstream name
        self._default = default_upstream
        self.local_namespaces = local_namespaces if local_namespaces is not None else LocalNamespaces()
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
        if self._default is None or self._is_local_name(name):
            return Target(None, name)
        return Target(self._default, _normalise(self._default, name))

    def _is_local_name(self, name: str) -> bool:
        namespace, sep, _ = name.partition("/")
        return bool(sep) and namespace in self.local_namespaces

    def push_target(self, name: str, ns: str | None) -> Target:
        """Where a push or delete lands; names mirror clients resolve to an upstream are refused.

        An explicit upstream (prefix or ``ns``) is returned as it is: the registry refuses it,
        saying that Wharf only mirrors it.
        """
        if self.is_upstream_namespace(name, ns):
            return self.resolve(name, ns)
        validate_name(name)
        if self._default is not None and not self._is_local_name(name):
            declared = ", ".join(f"{n}/" for n in self.local_namespaces) or "none yet"
            raise Denied(
                f"push refused: {name} is a mirror name that clients resolve to the default upstream "
                f"{self._default}, and a pushed image may never replace it. Push under a namespace declared "
                f"local (config local_namespaces; declared: {declared}), e.g. <namespace>/{name.rpartition('/')[2]}")
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
