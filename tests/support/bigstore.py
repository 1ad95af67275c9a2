"""A synthetic store for the big-store tests: ``scripts/make_big_store.py`` run as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_big_store.py"


def make_big_store(root: Path, blobs: int, manifests: int, tags: int, upstream: str = "upstream.local") -> dict:
    """Write the store and return the script's summary (counts, bytes, sampled digests)."""
    subprocess.run([sys.executable, str(SCRIPT), str(root), "--blobs", str(blobs), "--manifests", str(manifests),
                    "--tags", str(tags), "--upstream", upstream], check=True, stdout=subprocess.DEVNULL, timeout=300)
    return json.loads((root / "big-store.json").read_text())
