"""Write evaluation results: ``<name>.json`` (meta + rows), ``<name>.md`` (tables) and
``<name>.png`` (recall@10 against exact vs p50 latency, one curve per system/stage/nprobe, a
dashed line at each nprobe's ceiling)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ebr.types import JsonObject

__all__ = ["write_report", "markdown_table"]

COLUMNS = ["system", "stage", "nprobe", "candidates", "exact_recall@1", "exact_recall@10",
           "exact_recall@100", "recall@10", "recall@100", "ndcg@10", "mrr@10",
           "p50_ms", "p95_ms", "p99_ms", "qps_batch"]


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: Sequence[JsonObject], columns: Sequence[str] | None = None) -> str:
    cols = [c for c in (columns or COLUMNS) if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def write_report(out_dir: str | Path, name: str, meta: JsonObject,
                 rows: Sequence[JsonObject], plot: bool = True,
                 columns: Sequence[str] | None = None) -> dict[str, Path]:
    """``<name>.json`` ({meta, rows}), ``<name>.md`` (meta bullets + table of ``columns``,
    default: the sweep columns present) and, with ``plot``, the recall-vs-latency PNG."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    paths["json"].write_text(json.dumps({"meta": meta, "rows": list(rows)}, indent=2,
                                        default=str))
    md = [f"# {meta.get('title', name)}", ""]
    for k, v in meta.items():
        if k != "title" and not isinstance(v, dict | list):
            md.append(f"- **{k}**: {v}")
    md += ["", markdown_table(rows, columns), ""]
    paths["md"].write_text("\n".join(md))
    if plot:
        try:
            paths["png"] = _plot(out / f"{name}.png", str(meta.get("title", name)), rows)
        except ImportError:
            pass  # matplotlib is the 'eval' extra; JSON + Markdown are still written
    return paths


def _plot(path: Path, title: str, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One panel per dataset variant; colour = system, line = stage, marker = nprobe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, dict[tuple[Any, ...], list[tuple[float, float, Any]]]] = {}
    ceilings: dict[str, list[tuple[Any, Any, float]]] = {}  # per panel: (system, nprobe, recall)
    for r in rows:
        if r.get("stage") == "ceiling" and r.get("exact_recall@10") is not None:
            ceilings.setdefault(str(r.get("dataset_variant", "")), []).append(
                (r["system"], r["nprobe"], r["exact_recall@10"]))
        if r.get("stage") == "exact" or r.get("p50_ms") is None:
            continue
        curves = panels.setdefault(str(r.get("dataset_variant", "")), {})
        curves.setdefault((r["system"], r["stage"], r["nprobe"]), []).append(
            (r["p50_ms"], r["exact_recall@10"], r["candidates"]))
    n = max(len(panels), 1)
    cols = min(n, 3)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 4.2 * nrows), squeeze=False)
    systems = sorted({k[0] for c in panels.values() for k in c})
    nprobes = sorted({k[2] for c in panels.values() for k in c}, key=str)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v*"
    for ax, (variant, curves) in zip(axes.ravel(), sorted(panels.items()), strict=False):
        for (system, stage, nprobe), pts in sorted(curves.items(), key=str):
            pts.sort(key=lambda p: p[2])
            ax.plot([p[0] for p in pts], [p[1] for p in pts],
                    linestyle="-" if stage == "reranked" else ":",
                    marker=markers[nprobes.index(nprobe) % len(markers)], markersize=4,
                    color=colours[systems.index(system) % len(colours)],
                    label=f"{system} {stage} nprobe={nprobe}")
        for system, nprobe, recall in ceilings.get(variant, []):  # what the lists allow
            ax.axhline(recall, linestyle="--", linewidth=0.8, alpha=0.6,
                       color=colours[systems.index(system) % len(colours)]
                       if system in systems else "grey",
                       label=f"{system} ceiling nprobe={nprobe}")
        ax.set_xscale("log")
        ax.set_title(variant or title, fontsize=9)
        ax.set_xlabel("p50 latency per query (ms)")
        ax.set_ylabel("recall@10 vs exact")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.suptitle(title + " (points: candidates ascending)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
