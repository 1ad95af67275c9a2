"""Wharf benchmark harness: Wharf side by side with the caches users would pick instead.

Run it with ``scripts/bench.sh`` (or ``PYTHONPATH=tests .venv/bin/python -m bench``).
Not collected by pytest (``norecursedirs`` in pyproject.toml).
"""
