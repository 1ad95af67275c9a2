"""What a run found: figures per test, metric and target, medians, checks; printed as they come."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Results:
    def __init__(self, profile: str, machine: dict):
        self.data: dict[str, Any] = {"profile": profile, "machine": machine,
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     "tests": {}}
        self._t0 = time.monotonic()

    def test(self, key: str, title: str) -> dict:
        print(f"\n=== {key}: {title}", flush=True)
        return self.data["tests"].setdefault(key, {"title": title, "metrics": {}, "checks": [], "errors": {},
                                                   "notes": []})

    def add(self, key: str, metric: str, target: str, value: float | None, unit: str = "", **detail) -> None:
        m = self.data["tests"][key]["metrics"].setdefault(metric, {"unit": unit, "targets": {}})
        t = m["targets"].setdefault(target, {"samples": [], "details": []})
        t["samples"].append(value)
        if detail:
            t["details"].append(detail)
        t["median"] = median(t["samples"])
        shown = "—" if value is None else (f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}")
        extra = " ".join(f"{k}={v}" for k, v in detail.items())
        print(f"  [{key}] {target:18s} {metric:22s} {shown} {unit} {extra}", flush=True)

    def error(self, key: str, target: str, message: str) -> None:
        self.data["tests"][key]["errors"].setdefault(target, []).append(message)
        print(f"  [{key}] {target:18s} ERROR {message}", flush=True)

    def note(self, key: str, text: str) -> None:
        self.data["tests"][key]["notes"].append(text)
        print(f"  [{key}] note: {text}", flush=True)

    def med(self, key: str, metric: str, target: str) -> float | None:
        try:
            return self.data["tests"][key]["metrics"][metric]["targets"][target]["median"]
        except KeyError:
            return None

    def check(self, key: str, what: str, goal: str, value: float | str | None, ok: bool | None,
              refs: dict[str, Any] | None = None, who: str = "wharf") -> None:
        self.data["tests"][key]["checks"].append({"what": what, "goal": goal, "who": who, "value": value,
                                                  "pass": ok, "references": refs or {}})
        mark = {True: "PASS", False: "MISS", None: "n/a "}[ok]
        shown = f"{value:,.3f}" if isinstance(value, float) else value
        refs_s = ", ".join(f"{k}: {(f'{v:,.3f}' if isinstance(v, float) else v)}" for k, v in (refs or {}).items())
        print(f"  [{key}] {mark} {who}: {what}: {shown} (goal {goal})" + (f" [{refs_s}]" if refs_s else ""),
              flush=True)

    def finish(self, path: Path, merge: bool = False) -> None:
        """Write the results; with ``merge``, into the tests already in ``path``: the tests run now
        replace theirs, the others stay, and every test says when and at which commit it ran."""
        self.data["duration_s"] = round(time.monotonic() - self._t0, 1)
        run = {"started": self.data["started"], "wharf_commit": self.data["machine"].get("wharf_commit"),
               "profile": self.data["profile"]}
        for test in self.data["tests"].values():
            test["run"] = run
        out = self.data
        if merge and path.exists():
            old = json.loads(path.read_text())
            earlier = {"started": old.get("started"), "wharf_commit": old.get("machine", {}).get("wharf_commit"),
                       "profile": old.get("profile")}
            tests = {k: {**t, "run": t.get("run", earlier)} for k, t in old.get("tests", {}).items()}
            tests.update(self.data["tests"])
            runs = sorted({t["run"]["started"] for t in tests.values() if t["run"].get("started")})
            out = {**old, "tests": tests, "merged": runs}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, default=str) + "\n")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
