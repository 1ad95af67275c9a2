"""The mirror list: which images to mirror, which of their tags and platforms, and where they land.

The file (YAML; ``config/mirror.example.yaml`` shows every key)::

    name: edge-site                 # optional: the list's name in status and metrics (default: file stem;
                                    # not ``import``, the holder of imported content)
    images:
      - name: registry.test/bars/img     # as a client names it by path prefix
        tags: [v1]
      - name: registry.test/bars/multi
        tags: [v1]
        platforms: [linux/amd64]         # default: all
      - name: registry.test/bars/app
        tag_regex: '^v1\\.'              # tags matching (re.search), and ...
        semver: '>=1.2.0 <2'             # ... within a semver range (npm syntax: ^1.2, ~1.4, 1.x) ...
        newest: 3                        # ... the newest 3 of them by semver
        referrers: true                  # signatures, SBOMs, attestations (default: false)
        into: cache                      # cache: a warm-up, evictable; local (default): kept, never evicted

Rules:
- ``tags`` are taken as they are (no tag list is asked for); ``tag_regex``, ``semver`` and
  ``newest`` filter upstream's tag list, all that are given must hold; the image's tags are
  both sets together; an image must name at least one filter;
- a tag that is no semver version (``latest``, ``main``) never matches ``semver`` or ``newest``;
  a leading ``v`` is allowed (``v1.2.3``); neither do prereleases (``2.1.0-rc.1``, and
  ``1.2.0-alpine``, which semver reads as one): name them by ``tags`` or ``tag_regex``;
- a platform is ``os/architecture[/variant]``; ``linux/arm64`` also matches ``linux/arm64/v8``;
  an index entry with no platform is kept only with ``platforms: all``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Iterable, Literal

import nodesemver
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from proxy.config import read_yaml_mapping, validation_problems

DEFAULT_CONFIG_EXAMPLE = Path(__file__).resolve().parent.parent.parent / "config" / "mirror.example.yaml"
_PLATFORM_RE = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$")


class MirrorListError(Exception):
    """The mirror list is invalid; the message names the file and the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Platform(_Frozen):
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.split("/")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) > 2 else None)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, platform: dict | None) -> bool:
        """Whether an index entry's ``platform`` is this one (arm64 without a variant is arm64/v8)."""
        if not isinstance(platform, dict):
            return False
        if platform.get("os") != self.os or platform.get("architecture") != self.architecture:
            return False
        if self.variant is None:
            return True
        variant = platform.get("variant") or ("v8" if self.architecture == "arm64" else None)
        return variant == self.variant


class ImageEntry(_Frozen):
    name: str = Field(min_length=1)
    tags: tuple[str, ...] = ()
    tag_regex: str | None = None
    semver: str | None = None
    newest: int | None = Field(default=None, ge=1)
    platforms: tuple[Platform, ...] | Literal["all"] = "all"
    referrers: bool = False
    into: Literal["cache", "local"] = "local"

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        return tuple(str(tag) for tag in value) if isinstance(value, list) else value

    @field_validator("tag_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("semver")
    @classmethod
    def _semver(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                nodesemver.make_range(str(value), loose=True)
            except (ValueError, TypeError):
                raise ValueError(f"not a semver range (npm syntax: >=1.2.0 <2, ^1.2, ~1.4, 1.x): {value!r}") from None
        return value

    @field_validator("platforms", mode="before")
    @classmethod
    def _platforms(cls, value: Any) -> Any:
        if value == "all" or value is None:
            return "all"
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise ValueError("a list of os/architecture[/variant], or all")
        platforms = []
        for text in value:
            if text == "all":
                return "all"
            if not isinstance(text, str) or not _PLATFORM_RE.match(text):
                raise ValueError(f"{text!r} is no platform: write os/architecture[/variant], e.g. linux/arm64/v8")
            platforms.append(Platform.parse(text))
        return tuple(platforms)

    @model_validator(mode="after")
    def _some_filter(self) -> "ImageEntry":
        if not self.tags and self.tag_regex is None and self.semver is None and self.newest is None:
            raise ValueError("name the tags to mirror: tags, tag_regex, semver or newest")
        return self

    @property
    def needs_tag_list(self) -> bool:
        return self.tag_regex is not None or self.semver is not None or self.newest is not None

    def wants_platform(self, platform: dict | None) -> bool:
        if self.platforms == "all":
            return True
        return any(p.matches(platform) for p in self.platforms)

    def select_tags(self, available: Iterable[str] = ()) -> list[str]:
        """The tags to mirror: the exact ones, and those of ``available`` every pattern filter keeps."""
        chosen = set(self.tags)
        if self.needs_tag_list:
            matching = [tag for tag in available if self._pattern_keeps(tag)]
            if self.newest is not None:
                versioned = [tag for tag in matching if _version(tag) is not None]
                versioned.sort(key=functools.cmp_to_key(lambda a, b: nodesemver.compare(a, b, loose=True)),
                               reverse=True)
                matching = versioned[:self.newest]
            chosen.update(matching)
        return sorted(chosen)

    def _pattern_keeps(self, tag: str) -> bool:
        if self.tag_regex is not None and not re.search(self.tag_regex, tag):
            return False
        if self.semver is not None or self.newest is not None:
            version = _version(tag)
            if version is None or version.prerelease:
                return False
            if self.semver is not None and not nodesemver.satisfies(tag, self.semver, loose=True):
                return False
        return True


def _version(tag: str):
    """The semver version a tag names (loose: ``v1.2.3``), or None."""
    try:
        return nodesemver.make_semver(tag, loose=True)
    except (ValueError, TypeError):
        return None


# the holder imports keep their content under (``records.IMPORT_HOLDER``): a list of that name would
# share it, and its sync would forget every imported image
_RESERVED_NAMES = ("import",)


class MirrorList(_Frozen):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    images: tuple[ImageEntry, ...] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in _RESERVED_NAMES:
            raise ValueError(f"{value!r} is reserved (what imports keep is recorded under it): name the list "
                             f"otherwise (name: key, or the file's name)")
        return value

    @model_validator(mode="after")
    def _unique(self) -> "MirrorList":
        names = [image.name for image in self.images]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"images named twice: {twice} (merge their filters into one entry)")
        return self


def load_list(path: str | Path) -> MirrorList:
    """Read and validate a mirror list; errors name the file and the key."""
    source = Path(path)
    data = dict(read_yaml_mapping(source, "mirror list", MirrorListError))
    data.setdefault("name", re.sub(r"[^A-Za-z0-9._-]", "-", source.stem) or "mirror")
    try:
        return MirrorList.model_validate(data)
    except ValidationError as exc:
        raise MirrorListError(f"mirror list {source}: {validation_problems(exc)}") from None
