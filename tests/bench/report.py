"""latest.json -> REPORT.md and chart.png."""

from __future__ import annotations

import json
import math
from pathlib import Path

ORDER = ["wharf", "upstream", "nginx-sendfile", "distribution", "distribution-registry", "nginx-cache",
         "nginx-cache-tuned", "aiohttp-bare", "skopeo-sync", "cp"]
COLORS = {"wharf": "#1f77b4", "upstream": "#7f7f7f", "nginx-sendfile": "#2ca02c", "distribution": "#d62728",
          "distribution-registry": "#e377c2",
          "nginx-cache": "#ff7f0e", "nginx-cache-tuned": "#ffbb78", "aiohttp-bare": "#9467bd",
          "skopeo-sync": "#8c564b", "cp": "#2ca02c"}


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def _tests(data: dict) -> list[tuple[str, dict]]:
    """Tests in the order of their numbers (10 after 9, not after 1)."""
    return sorted(data["tests"].items(), key=lambda kv: (int(kv[0].split("_")[0]), kv[0]))


def _targets(metrics: dict) -> list[str]:
    seen = {t for m in metrics.values() for t in m["targets"]}
    wharfs = sorted(t for t in seen if t.startswith("wharf"))
    return wharfs + [t for t in ORDER if t in seen and t not in wharfs] + sorted(seen - set(ORDER) - set(wharfs))


def _color(target: str) -> str:
    if target.startswith("wharf-"):
        return "#17becf"
    return COLORS.get(target, "#999")


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# Wharf benchmark — latest run",
        "",
        f"Profile **{data['profile']}**, started {data['started']}, took {data.get('duration_s', 0):.0f} s. "
        f"Machine: {m.get('cpu')} × {m.get('cores')} cores, {m.get('memory_gib')} GiB RAM, "
        f"Linux {m.get('kernel')}, Python {m.get('python')}; {m.get('tools')}.",
        "",
        f"Wharf at `{m.get('wharf_commit', '?')}`; Wharf targets: " + ", ".join(
            ("wharf" if w.strip() == "1" else f"wharf-{w.strip()}w") + f" (`workers: {w.strip()}`)"
            for w in str(data.get("config", {}).get("wharf_workers", "1")).split(",")) + "; "
        f"{data.get('config', {}).get('reps', '?')} interleaved repetitions (test 1: three times as many, "
        "test 2: two more; tests 3, 6, 7: one run each).",
        "",
        "Everything runs on 127.0.0.1 on this one machine, load generators included, so absolute "
        "numbers are noise; the ratios are the result. Each cell: median [min–max] (runs) of interleaved "
        "repetitions.",
        "",
        *([f"Tests were measured in several runs (started {', '.join(data['merged'])}); each test says when "
           "and at which commit."] + [""] if data.get("merged") else []),
        "## Goals (issue 3; tests 8 and 9: issue 8; tests 10 and 11: issue 9; test 12: issue 10; tests 13 and 14: issue 12)",
        "",
        "| test | what | goal | Wharf | value | references | |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, test in _tests(data):
        for c in test["checks"]:
            verdict = {True: "✅", False: "❌ miss", None: "n/a"}[c["pass"]]
            lines.append(f"| {key.split('_')[0]} | {c['what']} | {c['goal']} | {c.get('who', 'wharf')} | "
                         f"{_fmt(c['value'])} | {_fmt(c['references'])} | {verdict} |")
    lines += ["", "## Figures", ""]
    for key, test in _tests(data):
        lines += [f"### {key}: {test['title']}", ""]
        run = test.get("run")
        if data.get("merged") and run:
            lines += [f"Measured {run.get('started')} (profile {run.get('profile')}), Wharf at "
                      f"`{run.get('wharf_commit')}`.", ""]
        metrics = test["metrics"]
        if metrics:
            targets = _targets(metrics)
            lines.append("| metric | " + " | ".join(targets) + " |")
            lines.append("|---|" + "---|" * len(targets))
            for name, metric in metrics.items():
                cells = []
                for t in targets:
                    d = metric["targets"].get(t)
                    if not d:
                        cells.append("")
                        continue
                    samples = [s for s in d["samples"] if s is not None]
                    extra = ""
                    if len(d["samples"]) > 1:
                        spread = f" [{_fmt(float(min(samples)))}–{_fmt(float(max(samples)))}]" if samples else ""
                        failed = f", {len(d['samples']) - len(samples)} failed" if len(samples) < len(d["samples"]) else ""
                        extra = f"{spread} ({len(d['samples'])} runs{failed})"
                    if d["median"] is None and d["details"]:
                        cells.append("fail: " + str(d["details"][-1].get("error", ""))[:60])
                    else:
                        cells.append(_fmt(d["median"]) + extra)
                unit = f" ({metric['unit']})" if metric["unit"] else ""
                lines.append(f"| {name}{unit} | " + " | ".join(cells) + " |")
            lines.append("")
        for note in test.get("notes", []):
            lines.append(f"- {note}")
        for label, top in test.get("profiles", {}).items():
            if top:
                lines.append(f"- py-spy, {label} ({top['samples']} samples), most time in: " +
                             ", ".join(f"`{n}` {p}%" for n, p in top["self"][:8]))
        for target, errs in test.get("errors", {}).items():
            for e in sorted(set(errs))[:3]:
                lines.append(f"- **{target}** error: `{e[:300]}`")
        lines.append("")
    lines += ["![chart](chart.png)", ""]
    return "\n".join(lines)


def chart(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("1_warm_blob", ["MB_per_s"], "warm big blob GET (MB/s)", False),
        ("2_cold_pull", ["pull_s"], "cold skopeo pull (s)", False),
        ("3_concurrent_cold", ["first_byte_max_s", "last_client_done_s"], "herd: slowest first byte / last done (s)", False),
        ("3_concurrent_cold", ["upstream_copies"], "herd: upstream copies of the blob", False),
        ("4_manifest_digest", ["get_rps", "head_rps"], "manifest by digest GET / HEAD (req/s)", True),
        ("5_manifest_tag", ["get_rps", "head_rps"], "manifest by tag GET / HEAD (req/s)", True),
        ("3_concurrent_cold", ["peak_rss_mib"], "herd: peak RSS of the process tree (MiB)", False),
        ("6_memory", ["peak_rss_mib_mem_small", "peak_rss_mib_mem_large"], "peak RSS, small / huge blob (MiB)", False),
        ("7_upstream_outage", ["down_pull_s", "hung_pull_s"], "pull, upstream down / hung (s; ✗ failed)", False),
        ("9_manifest_lag", ["healthz_max_ms_36k", "healthz_max_ms_9k-last"],
         "slowest /healthz, 3 PUTs of 36,000 / 9,000 descriptors (ms; goal < 50)", True),
        ("10_local_manifest", ["cached_rps", "public_rps", "private_rps"],
         "manifest by tag at 200 conns: cached / public / private (req/s)", False),
        ("11_push", ["big_skopeo_s", "big_patch5m_s", "big_stream_s"],
         "push of the big image: skopeo / 5 MiB PATCHes / streamed (s)", False),
        ("12_mirror", ["sync_s", "sync_net_s", "warm_sync_s"],
         "mirror sync: cold / cold without start-up / warm (s)", False),
        ("12_mirror", ["export_flushed_MB_per_s", "copy_flushed_MB_per_s", "import_flushed_MB_per_s"],
         "bundle export / cp / import, flushed (MB/s)", False),
        ("13_replicas", ["first_byte_p50_s", "first_byte_max_s", "pull_max_s"],
         "cold fan-out: first layer byte p50 / max, slowest pull (s)", False),
        ("13_replicas", ["manifest_rps"], "warm manifest GET by digest, 32 conns (req/s)", False),
        ("14_s3", ["cold_pull_s", "in_bucket_after_pull_s"], "cold skopeo pull / then in the bucket after (s)",
         False),
        ("14_s3", ["bucket_get_MB_per_s", "local_get_MB_per_s"],
         "layer GET: only in the bucket / local copy (MB/s)", False),
    ]
    fig, axes = plt.subplots(6, 3, figsize=(16, 24))
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (key, metrics, title, log) in zip(axes.flat, panels):
        ax.set_title(title, fontsize=10)
        test = data["tests"].get(key)
        if not test or not any(m in test["metrics"] for m in metrics):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            continue
        sub = {m: test["metrics"][m] for m in metrics if m in test["metrics"]}
        targets = _targets(sub)
        width = 0.8 / len(sub)
        for i, (mname, metric) in enumerate(sub.items()):
            for j, t in enumerate(targets):
                d = metric["targets"].get(t)
                v = d["median"] if d else None
                x = j + (i - (len(sub) - 1) / 2) * width
                if v is None:
                    if d is not None:
                        ax.text(x, 0, "✗", ha="center", va="bottom", color="red", fontsize=12)
                    continue
                ax.bar(x, v, width * 0.9, color=_color(t), alpha=1.0 if i == 0 else 0.55,
                       edgecolor="black", linewidth=0.4)
                ax.text(x, v, _fmt(float(v)), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(targets)))
        ax.set_xticklabels(targets, rotation=25, fontsize=8, ha="right")
        if log:
            ax.set_yscale("log")
    fig.suptitle(f"Wharf vs references — profile {data['profile']}, {data['machine'].get('cores')} cores, "
                 f"{data['started']} (second bar of a pair is lighter)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def outputs(json_path: Path) -> tuple[Path, Path]:
    """latest.json -> REPORT.md, chart.png (committed); x.json -> x-REPORT.md, x-chart.png."""
    prefix = "" if json_path.stem == "latest" else json_path.stem + "-"
    return json_path.parent / f"{prefix}REPORT.md", json_path.parent / f"{prefix}chart.png"


def write(json_path: Path) -> tuple[Path, Path]:
    data = json.loads(json_path.read_text())
    md, png = outputs(json_path)
    md.write_text(markdown(data).replace("](chart.png)", f"]({png.name})"))
    chart(data, png)
    return md, png


if __name__ == "__main__":
    import sys
    write(Path(sys.argv[1]))
