"""One typed, frozen configuration: YAML file, then ``WHARF_...`` environment overrides, validated once.

Environment overrides use ``__`` between nested keys: ``WHARF_LISTEN=0.0.0.0:6000``,
``WHARF_STORAGE__ROOT=/var/lib/wharf``, ``WHARF_DEFAULT_UPSTREAM=null``,
``WHARF_REDIS__URL=redis://127.0.0.1:6379/0``. Values are parsed as YAML scalars.
Upstream passwords come from ``password_env`` (a variable name) or ``password_file`` (a path),
or from ``WHARF_UPSTREAM_<NAME>_PASSWORD`` (name upper-cased, non-alphanumerics as ``_``);
they are resolved here, at load time, and nowhere else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "wharf.yaml"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


def parse_size(value: Any) -> int:
    """Accept a byte count as an int or as ``"50GiB"``, ``"10GB"``, ``"512m"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"not a size: {value!r}")
    number, unit = match.groups()
    unit = (unit or "").lower().rstrip("b")
    return int(float(number) * _SIZE_UNITS[unit])


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UpstreamConfig(_Frozen):
    name: str = Field(min_length=1, description="registry host clients use, e.g. ghcr.io")
    url: str
    tag_ttl: float = Field(default=300, ge=0)
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    password_env: str | None = None
    password_file: str | None = None
    aliases: tuple[str, ...] = ()  # other names clients may use in a path prefix or ns=
    realm_hosts: tuple[str, ...] = ()
    connect_timeout: float = Field(default=10, gt=0)
    read_timeout: float = Field(default=60, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @property
    def has_credentials(self) -> bool:
        return self.username is not None and self.password is not None


class StorageConfig(_Frozen):
    root: Path = Path("./data")
    max_cache_bytes: int = Field(default=50 * 2**30, ge=0)

    @field_validator("max_cache_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)


class RedisConfig(_Frozen):
    url: str | None = None


class CacheConfig(_Frozen):
    negative_ttl: float = Field(default=30, ge=0)
    authz_ttl: float = Field(default=60, ge=0)
    low_quota_remaining: int = Field(default=10, ge=0)
    revalidate_timeout: float = Field(default=3, gt=0)
    fill_timeout: float = Field(default=3600, gt=0)
    access_flush_interval: float = Field(default=30, gt=0)


class LimitsConfig(_Frozen):
    max_layer_bytes: int = Field(default=10 * 10**9, gt=0)
    upload_idle_seconds: float = Field(default=600, gt=0)

    @field_validator("max_layer_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)


class ServerConfig(_Frozen):
    """Connection-level limits: how long a client may take, and how many connections a worker holds.

    ``header_timeout``: a request head (request line and headers) must arrive whole within this
    many seconds of its first byte (the first request of a connection: of connecting); trickling
    bytes does not extend it. ``body_idle_timeout``: a request body may pause this long between
    bytes. ``send_idle_timeout``: a client may stop reading an answer this long.
    ``keepalive_timeout``: an idle connection between requests is closed after this long.
    ``max_connections`` per worker process; "auto" derives it from the open-file limit.
    """

    header_timeout: float = Field(default=15, gt=0)
    body_idle_timeout: float = Field(default=60, gt=0)
    send_idle_timeout: float = Field(default=60, gt=0)
    keepalive_timeout: float = Field(default=75, gt=0)
    max_connections: int = Field(default=0, ge=0)  # 0 ("auto"): from the open-file limit

    @field_validator("max_connections", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        return 0 if value == "auto" or value is None else value


class ClientLimitsConfig(_Frozen):
    """Per-client request rate: a token bucket per client address, or per credential presented.

    ``requests_per_second`` is the sustained rate a client may keep up (0: no limit, the default,
    as in distribution and Harbor: a CI fleet behind one NAT address looks like one client);
    ``burst`` the requests it may make at once (0: ten seconds' worth).
    """

    requests_per_second: float = Field(default=0, ge=0)
    burst: int = Field(default=0, ge=0)


class GcConfig(_Frozen):
    """Garbage collection of pushed content no manifest references, and of expired uploads."""

    interval_seconds: float = Field(default=3600, ge=0)  # background pass every so often; 0: never
    grace_seconds: float = Field(default=3600, ge=0)     # content linked more recently is never collected


class LogConfig(_Frozen):
    level: str = "info"
    access_log: bool = True


class Config(_Frozen):
    listen: str = "0.0.0.0:5000"
    public_url: str | None = None  # how clients reach Wharf, e.g. https://wharf.example (token realm)
    workers: int = Field(default=1, ge=1, le=64)  # "auto": one per CPU core

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value == "auto":
            return max(1, min(64, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                              else os.cpu_count() or 1))
        return value
    storage: StorageConfig = StorageConfig()
    upstreams: tuple[UpstreamConfig, ...] = ()
    default_upstream: str | None = None
    redis: RedisConfig = RedisConfig()
    cache: CacheConfig = CacheConfig()
    limits: LimitsConfig = LimitsConfig()
    server: ServerConfig = ServerConfig()
    clients: ClientLimitsConfig = ClientLimitsConfig()
    gc: GcConfig = GcConfig()
    log: LogConfig = LogConfig()

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 0.0.0.0:5000")
        return value

    @model_validator(mode="after")
    def _upstream_names(self) -> "Config":
        names = [u.name for u in self.upstreams]
        every = names + [a for u in self.upstreams for a in u.aliases]
        duplicates = {n for n in every if every.count(n) > 1}
        if duplicates:
            raise ValueError(f"upstreams: duplicate name(s) or alias(es) {sorted(duplicates)}")
        if self.default_upstream is not None and self.default_upstream not in names:
            raise ValueError(f"default_upstream: {self.default_upstream!r} is not one of the upstreams {names}")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0] or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def upstream_names(self) -> dict[str, str]:
        """Every name or alias a client may use, mapped to the upstream's name."""
        return {alias: u.name for u in self.upstreams for alias in (u.name, *u.aliases)}

    def upstream(self, name: str) -> UpstreamConfig | None:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        return None


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for key, raw in environ.items():
        if not key.startswith("WHARF_") or key.startswith("WHARF_UPSTREAM_"):
            continue
        path = [part.lower() for part in key[len("WHARF_"):].split("__")]
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else None


def _resolve_secret(upstream: dict[str, Any], environ: Mapping[str, str], index: int) -> None:
    name = str(upstream.get("name", ""))
    env_key = "WHARF_UPSTREAM_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_PASSWORD"
    if env_key in environ:
        upstream["password"] = environ[env_key]
    elif upstream.get("password_env"):
        var = upstream["password_env"]
        if var not in environ:
            raise ConfigError(f"upstreams[{index}].password_env: variable {var} is not set")
        upstream["password"] = environ[var]
    elif upstream.get("password_file"):
        path = Path(upstream["password_file"])
        try:
            upstream["password"] = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"upstreams[{index}].password_file: cannot read {path}: {exc.strerror}") from None


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Load YAML (the embedded default when no path), apply env overrides, resolve secrets, validate."""
    environ = os.environ if environ is None else environ
    source = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {source}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {source}: the top level must be a mapping")
    _env_overrides(data, environ)
    for key, value in (overrides or {}).items():
        data[key] = value
    for index, upstream in enumerate(data.get("upstreams") or []):
        if isinstance(upstream, dict):
            _resolve_secret(upstream, environ, index)
    return config_from_dict(data)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate a mapping into a Config; errors name the offending key."""
    try:
        return Config.model_validate(dict(data))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"]) or "(top level)"
            problems.append(f"{key}: {error['msg']}")
        raise ConfigError("invalid config: " + "; ".join(problems)) from None
