"""The access decision for local packages: who may do what. Pure: facts in, a verdict out.

Every route (registry, API, pages) and every fast path asks ``decide``; nothing else judges.

The rules (GitHub Container registry's, with the differences said):
- a token's scopes bound what it does: pull and list need ``read:packages`` (``write:packages``
  includes it, as on GitHub), push needs ``write:packages``, delete and restore need
  ``delete:packages``; a change of visibility or roles needs ``write:packages``. A token never
  grants more than its user has.
- roles on a package: read < write < admin. Server admins are admins of every package;
  organisation owners of every package of their organisation; a user of every package in their
  own namespace. Others hold the roles granted on the package, to them or to the members of an
  organisation as a group; the first push makes the pusher admin.
- visibility: public packages are pulled by anyone, anonymously too (then no scope is needed);
  internal ones by any signed-in user with ``read:packages``; private ones need the read role.
- push needs the write role; a package that does not exist yet is created by a push of a user in
  their own namespace, of a member of the organisation in its namespace, or of a server admin.
- delete, restore and visibility changes need the admin role.
- a namespace that belongs to nobody (declared in ``local_namespaces`` only) takes pushes from
  server admins only.
Missing or bad credentials are ``Unauthorized`` (401, with the challenge): anonymous clients are
never told whether a private name exists. A signed-in caller lacking a scope or role gets
``Denied`` (403) naming what is missing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

from proxy.errors import Denied, OCIError, Unauthorized

READ_PACKAGES = "read:packages"
WRITE_PACKAGES = "write:packages"
DELETE_PACKAGES = "delete:packages"
SCOPES = (READ_PACKAGES, WRITE_PACKAGES, DELETE_PACKAGES)
VISIBILITIES = ("private", "internal", "public")


class Action(enum.Enum):
    PULL = "pull"            # manifests, blobs, referrers
    LIST = "list"            # tags list, _catalog, the packages API's reads
    PUSH = "push"            # uploads, mounts into, manifest PUT, tagging
    DELETE = "delete"        # manifest and blob DELETE, the API's deletes
    RESTORE = "restore"
    CONFIGURE = "configure"  # visibility and roles


class Role(enum.IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2
    ADMIN = 3

    @classmethod
    def parse(cls, value: str) -> "Role":
        return {"read": cls.READ, "write": cls.WRITE, "admin": cls.ADMIN}[value]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, as far as local packages go. ``user`` None: anonymous.

    ``scopes`` are the token's (all three for a server-side caller such as the CLI);
    ``orgs`` maps each organisation the user belongs to onto their role there (owner | member).
    """

    user: str | None = None
    user_id: int | None = None
    admin: bool = False
    scopes: frozenset[str] = frozenset()
    token_id: int | None = None
    orgs: Mapping[str, str] = field(default_factory=dict)
    expires_at: float | None = None  # of the token (time.time()); None: it does not expire

    @property
    def signed_in(self) -> bool:
        return self.user is not None

    def may(self, scope: str) -> bool:
        if scope == READ_PACKAGES:
            return bool(self.scopes & {READ_PACKAGES, WRITE_PACKAGES})
        return scope in self.scopes


ANONYMOUS = Principal()


@dataclass(frozen=True, slots=True)
class PackageFacts:
    """What the decision needs to know of an existing package."""

    repository: str
    namespace: str
    visibility: str = "private"
    user_roles: Mapping[int, Role] = field(default_factory=dict)   # user id -> role
    org_roles: Mapping[str, Role] = field(default_factory=dict)    # org name -> role of its members


@dataclass(frozen=True, slots=True)
class NamespaceFacts:
    """The owner of a repository's first path component: ``kind`` user | org | None (nobody's)."""

    name: str
    kind: str | None = None


def role_of(principal: Principal, namespace: NamespaceFacts, package: PackageFacts | None) -> Role:
    """The principal's role on the package (or, before it exists, on what they would create)."""
    if not principal.signed_in:
        return Role.NONE
    if principal.admin:
        return Role.ADMIN
    if namespace.kind == "user" and namespace.name == principal.user:
        return Role.ADMIN
    if namespace.kind == "org" and principal.orgs.get(namespace.name) == "owner":
        return Role.ADMIN
    if package is None:
        return Role.NONE
    role = package.user_roles.get(principal.user_id, Role.NONE) if principal.user_id is not None else Role.NONE
    for org, granted in package.org_roles.items():
        if org in principal.orgs and granted > role:
            role = granted
    return role


def may_create(principal: Principal, namespace: NamespaceFacts) -> bool:
    """Whether a push may create a new package in ``namespace``."""
    if principal.admin:
        return True
    if namespace.kind == "user":
        return namespace.name == principal.user
    if namespace.kind == "org":
        return namespace.name in principal.orgs
    return False


_SCOPE_OF = {Action.PULL: READ_PACKAGES, Action.LIST: READ_PACKAGES, Action.PUSH: WRITE_PACKAGES,
             Action.DELETE: DELETE_PACKAGES, Action.RESTORE: DELETE_PACKAGES,
             Action.CONFIGURE: WRITE_PACKAGES}
_ROLE_OF = {Action.PULL: Role.READ, Action.LIST: Role.READ, Action.PUSH: Role.WRITE,
            Action.DELETE: Role.ADMIN, Action.RESTORE: Role.ADMIN, Action.CONFIGURE: Role.ADMIN}


def readable_without_role(principal: Principal, package: PackageFacts) -> bool:
    """Public packages for anyone; internal ones for signed-in callers whose token may read."""
    if package.visibility == "public":
        return True
    return package.visibility == "internal" and principal.signed_in and principal.may(READ_PACKAGES)


def check(principal: Principal, action: Action, repository: str, namespace: NamespaceFacts,
          package: PackageFacts | None) -> None:
    """Raise the error the caller gets unless ``principal`` may do ``action`` on ``repository``.

    ``package`` is None when no live package has that name: a push then creates it; a signed-in
    caller's read is let through to be answered as unknown, an anonymous one is Unauthorized.
    """
    error = verdict(principal, action, repository, namespace, package)
    if error is not None:
        raise error


def verdict(principal: Principal, action: Action, repository: str, namespace: NamespaceFacts,
            package: PackageFacts | None) -> OCIError | None:
    """``check`` without raising: the error, or None when allowed."""
    reading = action in (Action.PULL, Action.LIST)
    if reading and package is not None and package.visibility == "public":
        return None
    if not principal.signed_in:
        return Unauthorized(f"authentication required to {action.value} {repository}")
    scope = _SCOPE_OF[action]
    if not principal.may(scope):
        return Denied(f"the token lacks the {scope} scope needed to {action.value} {repository}")
    if reading and package is not None and readable_without_role(principal, package):
        return None
    if package is None:
        if action is Action.PUSH:
            if may_create(principal, namespace):
                return None
            if namespace.kind is None:
                return Denied(f"{namespace.name}/ belongs to no user or organisation of this Wharf; "
                              f"only server admins may push there")
            return Denied(f"{principal.user} may not create packages in {namespace.name}/")
        return None  # a read of nothing: the registry answers that it does not know it
    needed = _ROLE_OF[action]
    have = role_of(principal, namespace, package)
    if have >= needed:
        return None
    return Denied(f"{action.value} on {repository} needs the {needed.name.lower()} role on the package; "
                  f"{principal.user} has {'no role' if have is Role.NONE else 'the ' + have.name.lower() + ' role'}")
