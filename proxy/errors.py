"""The OCI error table: every error a client can see, with its code and HTTP status, once.

Handlers and services raise these; one writer in ``proxy.http.errors`` turns them into the
``{"errors": [...]}`` body. Nobody else picks a status code for an error.
"""

from __future__ import annotations

from typing import Any, ClassVar


class OCIError(Exception):
    """An error from the OCI distribution spec's table (or one of the registry's own)."""

    code: ClassVar[str] = "UNKNOWN"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "unknown error"

    def __init__(self, message: str | None = None, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            body["detail"] = self.detail
        return body


class BlobUnknown(OCIError):
    code, status, default_message = "BLOB_UNKNOWN", 404, "blob unknown to registry"


class BlobUploadInvalid(OCIError):
    code, status, default_message = "BLOB_UPLOAD_INVALID", 400, "blob upload invalid"


class BlobUploadUnknown(OCIError):
    code, status, default_message = "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"


class DigestInvalid(OCIError):
    code, status, default_message = "DIGEST_INVALID", 400, "provided digest did not match uploaded content"


class ManifestBlobUnknown(OCIError):
    code, status, default_message = "MANIFEST_BLOB_UNKNOWN", 404, "manifest references a manifest or blob unknown to registry"


class ManifestInvalid(OCIError):
    code, status, default_message = "MANIFEST_INVALID", 400, "manifest invalid"


class ManifestUnknown(OCIError):
    code, status, default_message = "MANIFEST_UNKNOWN", 404, "manifest unknown to registry"


class ManifestTooLarge(OCIError):
    code, status, default_message = "SIZE_INVALID", 413, "manifest is larger than the registry accepts"


class NameInvalid(OCIError):
    code, status, default_message = "NAME_INVALID", 400, "invalid repository name"


class NameUnknown(OCIError):
    code, status, default_message = "NAME_UNKNOWN", 404, "repository name not known to registry"


class SizeInvalid(OCIError):
    code, status, default_message = "SIZE_INVALID", 400, "provided length did not match content length"


class RangeInvalid(OCIError):
    code, status, default_message = "RANGE_INVALID", 416, "requested range not satisfiable"


class Unauthorized(OCIError):
    code, status, default_message = "UNAUTHORIZED", 401, "authentication required"


class Denied(OCIError):
    code, status, default_message = "DENIED", 403, "requested access to the resource is denied"


class Unsupported(OCIError):
    code, status, default_message = "UNSUPPORTED", 405, "the operation is unsupported"


class TooManyRequests(OCIError):
    code, status, default_message = "TOOMANYREQUESTS", 429, "too many requests"


class RequestTimeout(OCIError):
    """The client stopped sending its request body; the connection is closed (nobody reads this)."""

    code, status, default_message = "REQUEST_TIMEOUT", 408, "request body stalled"


class Unavailable(OCIError):
    code, status, default_message = "UNAVAILABLE", 503, "upstream registry unavailable"


class UpstreamInvalid(OCIError):
    """Upstream answered, but with something we refuse to pass on (wrong digest, bad size)."""

    code, status, default_message = "UNAVAILABLE", 502, "upstream registry sent invalid content"


class PaginationNumberInvalid(OCIError):
    code, status, default_message = "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"


class StoreFull(OCIError):
    """The store's filesystem has no room for new content; what is stored is still served.

    507 Insufficient Storage: the server cannot store what the request needs. ``UNAVAILABLE``
    (distribution's "service unavailable") because it is the registry's condition, not the
    client's fault, and it passes once space is freed.
    """

    code, status = "UNAVAILABLE", 507
    default_message = "the registry's storage is full: it cannot store new content (stored content is still served)"
