"""Repository names and tags, validated by the distribution spec's grammar."""

from __future__ import annotations

import re

from proxy.errors import NameInvalid, ManifestInvalid

# distribution-spec: <name> = [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*", re.ASCII)  # fullmatch: no trailing newline
_COMPONENT_RE = re.compile(_COMPONENT, re.ASCII)
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", re.ASCII)
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    """Return the name if it is a valid repository name, else raise NAME_INVALID."""
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name):
        raise NameInvalid(f"invalid repository name {name[:300]!r}")
    return name


def is_name_component(value: str) -> bool:
    """Whether ``value`` is one path component of a repository name (a namespace)."""
    return bool(_COMPONENT_RE.fullmatch(value))


def validate_tag(tag: str) -> str:
    """Return the tag if it matches the spec's tag grammar, else raise MANIFEST_INVALID."""
    if not _TAG_RE.fullmatch(tag):
        raise ManifestInvalid(f"invalid tag {tag[:200]!r}")
    return tag


