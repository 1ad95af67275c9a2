"""``wharf mirror sync|status`` (being written)."""

from __future__ import annotations


def add_parsers(actions, add_config) -> None:
    """Add the sync commands to ``wharf mirror``."""
