"""One typed, frozen configuration: YAML file, then ``WHARF_...`` environment overrides, validated once.

Environment overrides use ``__`` between nested keys: ``WHARF_LISTEN=0.0.0.0:6000``,
``WHARF_STORAGE__ROOT=/var/lib/wharf``, ``WHARF_DEFAULT_UPSTREAM=null``,
``WHARF_REDIS__URL=redis://127.0.0.1:6379/0``. Values are parsed as YAML scalars. Only names
whose first part is a top-level key are read: ``WHARF_SERVICE_HOST``, ``WHARF_PORT`` and the
other variables Kubernetes injects for a Service named ``wharf`` are not config.
Upstream passwords come from ``password_env`` (a variable name) or ``password_file`` (a path),
or from ``WHARF_UPSTREAM_<NAME>_PASSWORD`` (name upper-cased, non-alphanumerics as ``_``);
they are resolved here, at load time, and nowhere else.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import ssl
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from proxy.oci.names import is_name_component

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


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float | None:
    """Seconds in ``3600``, ``"90s"``, ``"30m"``, ``"6h"``, ``"1d"``; None when it is no duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    match = _DURATION_RE.match(str(value))
    if not match:
        return None
    seconds = float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "").lower()]
    return seconds if seconds > 0 else None


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
    realm_hosts: tuple[str, ...] = ()  # token realms trusted besides the upstream's own origin: host or host:port
    # timeouts (seconds): a hung upstream fails an uncached request within connect + first byte
    connect_timeout: float = Field(default=5, gt=0)      # TCP (and TLS) connection
    first_byte_timeout: float = Field(default=10, gt=0)  # from sending a request to its response headers
    read_timeout: float = Field(default=30, gt=0)        # between two reads of a body
    # circuit breaker: this many failures in a row (unreachable, timeout, 5xx) open the circuit
    # for circuit_cooldown seconds; 0 turns it off
    circuit_failures: int = Field(default=3, ge=0)
    circuit_cooldown: float = Field(default=30, gt=0)
    # TLS (https upstreams): a CA bundle trusted besides the system's, a client certificate and
    # key for mutual TLS, or no verification at all (logged as a warning at start)
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    tls_verify: bool = True
    # never contact this upstream: serve only what is stored (mirrored, imported, cached) under its
    # names; anything missing is MANIFEST_UNKNOWN / BLOB_UNKNOWN naming offline mode
    offline: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("realm_hosts")
    @classmethod
    def _realm_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if not re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:/\s\[\]]+)(:\d{1,5})?$", entry):
                raise ValueError(f"{entry!r}: must be a host or host:port")
        return tuple(entry.lower() for entry in value)

    @model_validator(mode="after")
    def _tls(self) -> "UpstreamConfig":
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together (mutual TLS)")
        tls_set = self.ca_file or self.client_cert or not self.tls_verify
        if tls_set and not self.url.startswith("https://"):
            raise ValueError("ca_file, client_cert, client_key and tls_verify apply to https:// upstreams only")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # loaded once here so a bad file stops the start
        try:
            if self.ca_file is not None:
                context.load_verify_locations(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"ca_file: cannot load {self.ca_file}: {self._ssl_reason(exc)}") from None
        try:
            if self.client_cert is not None and self.client_key is not None:
                context.load_cert_chain(str(self.client_cert), str(self.client_key))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"client_cert/client_key: cannot load {self.client_cert} with "
                             f"{self.client_key}: {self._ssl_reason(exc)}") from None
        return self

    @staticmethod
    def _ssl_reason(exc: Exception) -> str:
        return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)

    @property
    def has_credentials(self) -> bool:
        return self.username is not None and self.password is not None


class S3Config(_Frozen):
    """Where blob bytes live in S3-compatible object storage (AWS S3, MinIO, Ceph RGW).

    Credentials come from ``access_key_id_file`` and ``secret_access_key_file`` (read here, at
    load time; never logged nor printed by ``wharf config check``), else from the usual AWS chain
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws/credentials``, instance roles).
    """

    bucket: str = ""
    prefix: str = ""                      # keys are <prefix>blobs/<algorithm>/<hex>
    endpoint_url: str | None = Field(default=None, repr=False)  # MinIO, Ceph RGW, moto; unset: AWS S3 of region
    region: str = "us-east-1"
    access_key_id_file: Path | None = None
    secret_access_key_file: Path | None = None
    redirect: bool = False                # blob GETs answered 307 to a presigned URL: bytes bypass Wharf
    presign_seconds: int = Field(default=600, ge=1, le=7 * 86400)
    part_size: int = Field(default=64 * 2**20, ge=5 * 2**20, le=5 * 2**30)  # multipart above this size
    max_uploads: int = Field(default=4, ge=1, le=256)  # write-through uploads at once, per process
    head_timeout: float = Field(default=1.0, gt=0, le=60)  # seconds for the bucket's look on a local miss
    breaker_failures: int = Field(default=3, ge=0)  # failures in a row that skip the bucket; 0: never skip
    breaker_cooldown: float = Field(default=30.0, gt=0)  # seconds the bucket is skipped, then probed
    # the keys read from the files above: kept out of repr and of every dump
    access_key_id: str | None = Field(default=None, repr=False, exclude=True)
    secret_access_key: str | None = Field(default=None, repr=False, exclude=True)

    @field_validator("part_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        return f"{value}/" if value else ""

    @model_validator(mode="before")
    @classmethod
    def _read_keys(cls, data: Any) -> Any:
        """Read the key files once; naming one without the other is an error."""
        if not isinstance(data, dict):
            return data
        id_file, secret_file = data.get("access_key_id_file"), data.get("secret_access_key_file")
        if (id_file is None) != (secret_file is None):
            raise ValueError("set both access_key_id_file and secret_access_key_file, or neither")
        if id_file is None:
            return data
        data = dict(data)
        for name, path in (("access_key_id", id_file), ("secret_access_key", secret_file)):
            try:
                data[name] = Path(path).read_text().strip()
            except OSError as error:
                raise ValueError(f"cannot read {path}: {error.strerror}") from None
        return data


class StorageConfig(_Frozen):
    root: Path = Path("./data")
    max_cache_bytes: int = Field(default=50 * 2**30, ge=0)
    min_free_bytes: int = Field(default=64 * 2**20, ge=0)  # new content is refused (507) below this much free
    # disk: blobs on storage.root only; s3: storage.root keeps metadata and a local copy of the blobs,
    # the bucket keeps every blob (written through, read through on a local miss, deleted through)
    backend: Literal["disk", "s3"] = "disk"
    s3: S3Config = S3Config()

    @field_validator("max_cache_bytes", "min_free_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)

    @model_validator(mode="after")
    def _bucket_named(self) -> "StorageConfig":
        if self.backend == "s3" and not self.s3.bucket:
            raise ValueError("storage.s3.bucket is required when storage.backend is s3")
        return self


class RedisConfig(_Frozen):
    url: str | None = None
    timeout: float = Field(default=0.5, gt=0)        # seconds any Redis operation may take
    retry_seconds: float = Field(default=5, gt=0)    # while Redis is down, ping it this often


class ClusterConfig(_Frozen):
    """How replicas on disks of their own (a StatefulSet) share one fill per blob.

    With ``advertise_url`` set (and Redis), the replica that downloads a blob says so in Redis,
    and the others stream it from that replica (``/_wharf/peer/blobs/<digest>``, signed with the
    shared secret) instead of from upstream. Replicas on one shared volume need none of this.
    """

    advertise_url: str | None = None  # how the other replicas reach this one, e.g. http://10.0.0.7:5000
    secret_file: Path | None = None   # a secret every replica mounts (32+ bytes): signs their requests
    lease_seconds: float = Field(default=10, ge=2, le=300)  # a dead filler's claim is taken over after this
    # the secret read from the file: kept out of repr and of every dump
    secret: bytes | None = Field(default=None, repr=False, exclude=True)

    @field_validator("advertise_url")
    @classmethod
    def _advertise_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError("must be an http:// or https:// URL of this replica, without a path")
        return value.rstrip("/") if value else value

    @model_validator(mode="before")
    @classmethod
    def _read_secret(cls, data: Any) -> Any:
        """Read the secret once; an advertised replica without one is an error."""
        if not isinstance(data, dict):
            return data
        secret_file = data.get("secret_file")
        if data.get("advertise_url") and secret_file is None:
            raise ValueError("cluster.advertise_url needs cluster.secret_file (a secret every replica mounts)")
        if secret_file is None:
            return data
        try:
            secret = Path(secret_file).read_bytes().strip()
        except OSError as error:
            raise ValueError(f"cannot read {secret_file}: {error.strerror}") from None
        if len(secret) < 32:
            raise ValueError(f"{secret_file} holds {len(secret)} bytes; the cluster secret needs at least 32 "
                             "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return {**data, "secret": secret}


class TokensConfig(_Frozen):
    """The key that encrypts the credential inside the tokens Wharf issues at ``/token``."""

    # a Fernet key (``Fernet.generate_key()``) that every replica mounts; unset: created in the
    # store (``keys/token.key``) and, with Redis, shared between replicas through Redis
    key_file: Path | None = None

    @field_validator("key_file")
    @classmethod
    def _key_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        try:
            key = base64.urlsafe_b64decode(value.read_bytes().strip())
        except OSError as error:
            raise ValueError(f"cannot read {value}: {error.strerror}") from None
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ValueError(f"{value} holds no Fernet key (32 url-safe base64 bytes; "
                             "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')")
        return value


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
    max_manifest_descriptors: int = Field(default=10_000, gt=0)  # layers (or child manifests) per pushed manifest

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
    # all credentials presented from one address together: at most this many times rate and burst
    address_ceiling: int = Field(default=8, ge=1)


class GcConfig(_Frozen):
    """Garbage collection of pushed content no manifest references, and of expired uploads."""

    interval_seconds: float = Field(default=3600, ge=0)  # background pass every so often; 0: never
    grace_seconds: float = Field(default=3600, ge=0)     # content linked more recently is never collected


class FastPathsConfig(_Frozen):
    """Shortcuts past the full request stack; each can be switched off (the suite runs both ways)."""

    replay: bool = True         # repeated public manifest hits answered straight from the parser
    hot_manifests: bool = True  # public manifests and tag freshness kept in memory
    sendfile: bool = True       # stored blobs sent by os.sendfile from threads (else aiohttp's FileResponse)


class LogConfig(_Frozen):
    """Logging: JSON lines on stderr (``proxy.logs``); ``level`` is Wharf's own loggers' level."""

    level: str = "info"  # debug, info, warning (or warn) or error, any case
    access_log: bool = True  # one line per request (``proxy.http.accesslog``)

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> str:
        level = str(value).strip().lower()
        level = "warning" if level == "warn" else level
        if level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"must be debug, info, warning or error, not {str(value)[:40]!r}")
        return level


class TlsConfig(_Frozen):
    """HTTPS on the listener: a PEM certificate chain and its key, TLS 1.2 and up.

    The files are checked every ``reload_interval`` seconds; when either changed, new connections
    get the new pair (connections already open keep theirs). A pair that does not load is
    refused at start, and while running keeps the previous pair in use.
    """

    cert: Path | None = None   # PEM: the server certificate, then any intermediates
    key: Path | None = None    # PEM: its private key (unencrypted)
    reload_interval: float = Field(default=30, gt=0)

    @model_validator(mode="after")
    def _pair(self) -> "TlsConfig":
        if (self.cert is None) != (self.key is None):
            missing = "key" if self.key is None else "cert"
            raise ValueError(f"tls.{missing} is required when tls.{'cert' if missing == 'key' else 'key'} is set")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert is not None


class DatabaseConfig(_Frozen):
    """Where accounts and package metadata live: SQLite in the store by default, PostgreSQL to share."""

    # a SQLAlchemy URL: postgresql+psycopg://user:pass@host/db (replicas share it); unset:
    # sqlite in the store (storage.root/wharf.db)
    url: str | None = None


class AccessConfig(_Frozen):
    """Who may use what (``proxy.registry.access`` has the rules for local packages)."""

    pull_through: Literal["anonymous", "authenticated"] = "anonymous"  # who may pull upstream content
    login_failures: int = Field(default=5, ge=1)           # failed logins per client or user ...
    login_window_seconds: float = Field(default=300, gt=0)  # ... in this window, then 429 until it passes
    retention_days: float = Field(default=30, ge=0)         # deleted versions stay restorable this long
    delete_download_limit: int = Field(default=5000, ge=0)  # public versions pulled more often stay
    audit_log: Path | None = None                           # JSON lines; unset: storage.root/audit.log


class MirrorConfig(_Frozen):
    """Mirror lists synced inside ``wharf serve`` (``proxy.mirror``); ``wharf mirror sync`` runs one by hand."""

    lists: tuple[Path, ...] = ()      # mirror list files (YAML, see config/mirror.example.yaml)
    # how often the lists are synced inside ``wharf serve``: a duration ("6h", "30m", 3600) or a
    # cron expression ("0 3 * * *"); unset: never (only ``wharf mirror sync``)
    schedule: str | None = None
    concurrency: int = Field(default=4, ge=1, le=64)  # blobs fetched at once by a sync

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> str | None:
        if value is None or value == "":
            return None
        text = str(value).strip()
        if parse_duration(text) is None:
            from croniter import croniter

            if not croniter.is_valid(text):
                raise ValueError(f"{text[:60]!r} is neither a duration (6h, 30m, 3600) nor a cron expression")
            try:
                croniter(text).get_next(float)
            except Exception:  # croniter's CroniterBadDateError: a date that never comes (0 0 31 2 *)
                raise ValueError(f"the cron expression {text[:60]!r} never comes: no date matches it") from None
        return text


class WebConfig(_Frozen):
    """The web pages (``proxy.web``) and the cache dashboard's history."""

    enabled: bool = True                                  # false: no pages, only /v2/ and /api/
    session_hours: float = Field(default=12, gt=0, le=24 * 30)  # a web session lasts this long from sign-in
    # the session cookie's Secure flag; unset: on when TLS is on or public_url is https
    cookie_secure: bool | None = None
    history_hours: float = Field(default=6, gt=0, le=24 * 7)   # the dashboard's charts cover this long
    sample_seconds: float = Field(default=60, ge=1, le=3600)   # one point of history this often


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
    # with a default upstream, prefix-less names are local only under these namespaces
    local_namespaces: tuple[str, ...] = ()
    redis: RedisConfig = RedisConfig()
    cluster: ClusterConfig = ClusterConfig()
    tokens: TokensConfig = TokensConfig()
    cache: CacheConfig = CacheConfig()
    limits: LimitsConfig = LimitsConfig()
    server: ServerConfig = ServerConfig()
    clients: ClientLimitsConfig = ClientLimitsConfig()
    gc: GcConfig = GcConfig()
    log: LogConfig = LogConfig()
    tls: TlsConfig = TlsConfig()
    fast_paths: FastPathsConfig = FastPathsConfig()
    database: DatabaseConfig = DatabaseConfig()
    access: AccessConfig = AccessConfig()
    offline: bool = False  # every upstream offline (``UpstreamConfig.offline``): an air-gapped site
    mirror: MirrorConfig = MirrorConfig()
    web: WebConfig = WebConfig()

    @field_validator("local_namespaces")
    @classmethod
    def _local_namespaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for namespace in value:
            if not is_name_component(namespace):
                raise ValueError(f"{namespace!r} is not a repository name component")
            if namespace == "library":
                raise ValueError("library/ is where docker.io keeps its official images; it is never local")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _split_listen(value)
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

    @model_validator(mode="after")
    def _cluster_needs_redis(self) -> "Config":
        if self.cluster.advertise_url and not self.redis.url:
            raise ValueError("cluster.advertise_url needs redis.url: replicas find each other's fills through Redis")
        return self

    @property
    def host(self) -> str:
        """The address to bind, without brackets: ``0.0.0.0``, ``::``, ``::1``, a host name."""
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]

    def upstream_names(self) -> dict[str, str]:
        """Every name or alias a client may use, mapped to the upstream's name."""
        return {alias: u.name for u in self.upstreams for alias in (u.name, *u.aliases)}

    def is_offline(self, upstream: str) -> bool:
        """Whether Wharf may never contact ``upstream`` (top-level ``offline`` or the upstream's own)."""
        found = self.upstream(upstream)
        return self.offline or (found is not None and found.offline)

    def upstream(self, name: str) -> UpstreamConfig | None:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        return None


def _split_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` -> (host, port); an empty host means every IPv4 address.

    An IPv6 address must be in brackets (``[::]:5000``, ``[::1]:5000``): without them the port
    cannot be told from the address.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be host:port, e.g. 0.0.0.0:5000 or [::]:5000")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: not an IPv6 address in brackets") from None
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, e.g. [::]:5000")
    return host or "0.0.0.0", int(port)


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """``WHARF_<KEY>[__<SUBKEY>...]`` sets a config key; only names whose first part is a
    top-level key count, so variables a platform injects (Kubernetes' ``WHARF_SERVICE_HOST``,
    ``WHARF_PORT_5000_TCP_ADDR``… for a Service named ``wharf``) are ignored."""
    for key, raw in environ.items():
        if not key.startswith("WHARF_") or key.startswith("WHARF_UPSTREAM_"):
            continue
        path = [part.lower() for part in key[len("WHARF_"):].split("__")]
        if path[0] not in Config.model_fields:
            continue
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


def read_yaml_mapping(source: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The YAML mapping in ``source`` (empty: ``{}``), or ``error`` saying why not, naming ``what``."""
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except OSError as exc:
        raise error(f"cannot read {what} {source}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {source}: the top level must be a mapping")
    return data


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as ``key.path: message; …``, the key first."""
    problems = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "(top level)"
        problems.append(f"{key}: {error['msg']}")
    return "; ".join(problems)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Load YAML (the embedded default when no path), apply env overrides, resolve secrets, validate."""
    environ = os.environ if environ is None else environ
    source = Path(path) if path else DEFAULT_CONFIG_PATH
    data = read_yaml_mapping(source, "config", ConfigError)
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
        raise ConfigError("invalid config: " + validation_problems(exc)) from None
