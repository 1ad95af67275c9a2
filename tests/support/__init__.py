"""Test support: real servers as subprocesses, synthetic images, and a fault-injecting fake registry.

- ``servers``: Debian's ``docker-registry`` (open or htpasswd) and ``redis-server`` on free
  127.0.0.1 ports, started, waited for and stopped by the fixtures in ``tests/conftest.py``.
- ``images``: deterministic images and multi-arch indexes, and a pusher over the HTTP API.
- ``fake_upstream``: an in-memory aiohttp registry used only to inject faults a real registry
  will not produce (429, hangs, slow or truncated bodies, wrong bytes, Bearer token auth).
"""
