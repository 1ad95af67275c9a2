"""The Helm chart in helm/wharf, rendered offline with the Helm SDK (helm-python-sdk, Helm v4's Go
code through its C library): render, lint, schema, and the rendered manifests as parsed documents."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from helm_python import chart as helm

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "wharf"
RELEASE = "wharf"
NAMESPACE = "registry"


def load_chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def render(values: dict | None = None) -> dict[str, str]:
    """Template path -> rendered text, as ``helm template wharf helm/wharf -n registry`` prints it."""
    return load_chart().render(values or {}, name=RELEASE, namespace=NAMESPACE)


def manifests(values: dict | None = None) -> list[dict]:
    """Every Kubernetes object the chart renders with ``values`` (NOTES.txt left out)."""
    objects = []
    for path, text in render(values).items():
        if path.endswith(".yaml"):
            objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {[(o['kind'], o['metadata']['name']) for o in objects]}"
    return found[0]


def lint(values: dict | None = None) -> dict:
    return helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)


def schema() -> dict:
    return json.loads((CHART_DIR / "values.schema.json").read_text())


def default_values() -> dict:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())
