"""Content digests: parsing, validation and incremental hashing (sha256 and sha512)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from proxy.errors import DigestInvalid

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
ALGORITHMS = tuple(_HEX_LENGTH)  # the algorithms a digest may use
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)", re.ASCII)
# the only digests Wharf accepts, in one match: manifests list thousands, each is parsed once
_SUPPORTED_RE = re.compile(r"(sha256):([0-9a-f]{64})|(sha512):([0-9a-f]{128})", re.ASCII)


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated ``algorithm:hex`` digest of a supported algorithm."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> "hashlib._Hash":
        return hashlib.new(self.algorithm)

    @classmethod
    def parse(cls, text: str) -> "Digest":
        """Accept only well-formed sha256/sha512 digests with lower-case hex of the right length."""
        supported = _SUPPORTED_RE.fullmatch(text)
        if supported:
            if supported.group(1):
                return cls(supported.group(1), supported.group(2))
            return cls(supported.group(3), supported.group(4))
        match = _DIGEST_RE.fullmatch(text)  # only to say what is wrong
        if not match:
            raise DigestInvalid(f"malformed digest {text[:150]!r}")
        algorithm = match.group(1)
        if algorithm not in _HEX_LENGTH:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm[:50]!r}")
        raise DigestInvalid(f"malformed {algorithm} digest {text[:150]!r}")

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> "Digest":
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def is_digest(reference: str) -> bool:
    """A manifest reference is a digest when it contains a colon (tags cannot)."""
    return ":" in reference
