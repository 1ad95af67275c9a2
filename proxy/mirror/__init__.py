"""Mirroring and air gaps: mirror lists synced from upstreams, bundles carried across, offline serving.

Modules (the service layer, beside ``proxy.registry``; the CLI and ``proxy.http.mirror_api`` call them):
- ``lists.py``: the mirror list file (YAML) and its tag and platform filters (pure);
- ``records.py``: what mirroring made visible, kept content, and ``adopt`` — the one step that
  makes a mirrored or imported image visible, once all of it is stored and verified;
- ``sync.py``: ``wharf mirror sync`` and the schedule inside ``wharf serve``, through the normal
  pull-through path; ``status.py``: its progress and outcome per image, for the API and metrics;
- ``bundle.py``, ``export.py``, ``importer.py``, ``dockersave.py``: OCI-layout bundles out and in;
- ``commands.py``: the ``wharf mirror …`` commands, on a store opened as ``wharf serve`` opens it.
Offline serving itself is a registry concern: ``proxy.registry.offline``.
"""
