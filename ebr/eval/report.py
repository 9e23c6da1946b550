"""Write evaluation results: ``<name>.json`` (meta + rows), ``<name>.md`` (tables) and
``<name>.png`` (recall@10 against exact vs p50 latency, one curve per system/stage/nprobe)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_report", "markdown_table"]

COLUMNS = ["system", "stage", "nprobe", "k_coarse", "exact_recall@1", "exact_recall@10",
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


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    cols = [c for c in (columns or COLUMNS) if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def write_report(out_dir: str | Path, name: str, meta: dict[str, Any],
                 rows: Sequence[dict[str, Any]], plot: bool = True) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    paths["json"].write_text(json.dumps({"meta": meta, "rows": list(rows)}, indent=2,
                                        default=str))
    md = [f"# {meta.get('title', name)}", ""]
    for k, v in meta.items():
        if k != "title" and not isinstance(v, dict | list):
            md.append(f"- **{k}**: {v}")
    md += ["", markdown_table(rows), ""]
    paths["md"].write_text("\n".join(md))
    if plot:
        try:
            paths["png"] = _plot(out / f"{name}.png", meta.get("title", name), rows)
        except ImportError:
            pass  # matplotlib is the 'eval' extra; JSON + Markdown are still written
    return paths


def _plot(path: Path, title: str, rows: Sequence[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    curves: dict[tuple[Any, ...], list[tuple[float, float, Any]]] = {}
    for r in rows:
        if r.get("stage") == "exact" or r.get("p50_ms") is None:
            continue
        key = (r.get("dataset_variant", ""), r["system"], r["stage"], r["nprobe"])
        curves.setdefault(key, []).append((r["p50_ms"], r["exact_recall@10"], r["k_coarse"]))
    for (variant, system, stage, nprobe), pts in sorted(curves.items(), key=str):
        pts.sort(key=lambda p: p[2])
        style = "-o" if stage == "reranked" else ":x"
        label = f"{variant} {system} {stage} nprobe={nprobe}".strip()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, markersize=4)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per query (ms, log scale)")
    ax.set_ylabel("recall@10 vs exact search")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
