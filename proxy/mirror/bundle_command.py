"""``wharf mirror export|import|inventory`` (being written)."""

from __future__ import annotations


def add_parsers(actions, add_config) -> None:
    """Add the bundle commands to ``wharf mirror``."""
