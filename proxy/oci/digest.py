"""Content digests: parsing, validation and incremental hashing (sha256 and sha512)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from proxy.errors import DigestInvalid

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


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
        match = _DIGEST_RE.match(text)
        if not match:
            raise DigestInvalid(f"malformed digest {text[:150]!r}")
        algorithm, hex_part = match.groups()
        expected = _HEX_LENGTH.get(algorithm)
        if expected is None:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm!r}")
        if len(hex_part) != expected or not all(c in "0123456789abcdef" for c in hex_part):
            raise DigestInvalid(f"malformed {algorithm} digest {text[:150]!r}")
        return cls(algorithm, hex_part)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> "Digest":
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def is_digest(reference: str) -> bool:
    """A manifest reference is a digest when it contains a colon (tags cannot)."""
    return ":" in reference
