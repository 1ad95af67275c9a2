"""Appending to a file in whole units of its length, so the page cache keeps large folios.

A file appended in odd-sized pieces (network chunks) is cached as small folios, and sendfile of
it runs 8-15 % slower than of the same file appended in aligned pieces. Rules: held bytes are
written as soon as they reach a unit boundary of the file (one writev; the remainder is kept as
views, not copied), and all of them on ``flush()``; ``length`` is what the file holds.
"""

from __future__ import annotations

import os

UNIT = 64 * 1024
_MAX_PIECES = 256  # writev takes at most IOV_MAX pieces: many tiny chunks are joined first


class AlignedAppender:
    def __init__(self, fd: int, length: int) -> None:
        self._fd = fd
        self.length = length
        self.held_bytes = 0
        self._held: list[bytes | memoryview] = []

    def append(self, chunk: bytes) -> int:
        """Hold ``chunk``; write what reaches a unit boundary. Returns the bytes written now."""
        self._held.append(chunk)
        self.held_bytes += len(chunk)
        end = self.length + self.held_bytes
        aligned = end - end % UNIT - self.length
        return self._write_out(aligned) if aligned > 0 else 0

    def flush(self) -> int:
        """Write everything held (the file may then end off a boundary). Returns the bytes written."""
        return self._write_out(self.held_bytes) if self.held_bytes else 0

    def _write_out(self, count: int) -> int:
        if len(self._held) > _MAX_PIECES:
            self._held = [b"".join(self._held)]
        out: list[bytes | memoryview] = []
        rest: list[bytes | memoryview] = []
        left = count
        for piece in self._held:
            if left >= len(piece):
                out.append(piece)
                left -= len(piece)
            elif left > 0:
                view = memoryview(piece)
                out.append(view[:left])
                rest.append(view[left:])
                left = 0
            else:
                rest.append(piece)
        done = os.writev(self._fd, out)
        if done < count:  # a short write (rare on regular files): finish it piece by piece
            remaining = memoryview(b"".join(out))[done:]
            while remaining:
                remaining = remaining[os.write(self._fd, remaining):]
        self._held, self.held_bytes = rest, self.held_bytes - count
        self.length += count
        return count
