"""End-to-end figures (issue 2): exact search, ebr coarse-only and re-ranked, and faiss
IVFPQ + IndexRefineFlat with the same spec, nprobe and k_factor, side by side in one run.

    python bench/bench_e2e.py [--data ../shared/data] [--out bench/results]

SciFact (MiniLM vectors, 300 test queries with qrels, inner product) and siftsmall (L2).
Writes e2e.json, e2e.md and e2e.png. Skips a dataset whose files are absent.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ebr.eval.report import markdown_table, write_report  # noqa: E402
from ebr.index.reader import open_index  # noqa: E402
from ebr.index.writer import write_index  # noqa: E402
from ebr.io.beir import load_ids, load_qrels  # noqa: E402
from ebr.io.vecs import read_vecs  # noqa: E402
from ebr.metric import Metric  # noqa: E402
from ebr.spec import BuildParams, IndexSpec  # noqa: E402
from index_build.evaluate import evaluate_index  # noqa: E402

DATASETS = {
    "scifact": {"metric": Metric.IP,
                "specs": ["IVF32,PQ16", "OPQ16,IVF32,PQ16", "IVF32,PQ48", "OPQ48,IVF32,PQ48"]},
    "siftsmall": {"metric": Metric.L2, "specs": ["IVF32,PQ16", "IVF32,PQ32"]},
}
NPROBES = [8, 32]
K_COARSES = [100, 200, 500]


def load(name: str, data: Path) -> dict | None:
    if name == "scifact":
        d = data / "scifact"
        emb = d / "embeddings"
        if not (emb / "corpus_all-MiniLM-L6-v2.f32.npy").exists():
            return None
        return {"xb": np.load(emb / "corpus_all-MiniLM-L6-v2.f32.npy"),
                "ids": load_ids(d / "corpus.jsonl"),
                "xq": np.load(emb / "queries_test_all-MiniLM-L6-v2.f32.npy"),
                "qids": load_ids(emb / "queries_test_ids.txt"),
                "qrels": load_qrels(d / "qrels" / "test.tsv")}
    d = data / "siftsmall"
    if not (d / "siftsmall_base.fvecs").exists():
        return None
    return {"xb": np.array(read_vecs(d / "siftsmall_base.fvecs")), "ids": None,
            "xq": np.array(read_vecs(d / "siftsmall_query.fvecs")), "qids": None, "qrels": None,
            "gt": np.array(read_vecs(d / "siftsmall_groundtruth.ivecs"))}


def _headline(rows: list[dict], summary: list[dict]) -> list[dict]:
    """One line per dataset x spec at nprobe 32: coarse vs re-ranked recall, nDCG, RAM, p50."""
    out = []
    for sm in summary:
        sel = [r for r in rows if r.get("dataset") == sm["dataset"] and r.get("spec") == sm["spec"]
               and r["nprobe"] == 32]

        def get(system: str, stage: str, kc: int, key: str, sel: list = sel) -> float:
            return next(r[key] for r in sel if r["system"].startswith(system)
                        and r["stage"] == stage and r["candidates"] == kc)

        line = {"dataset": sm["dataset"], "spec": sm["spec"],
                "coarse r@10": get("ebr", "coarse", 100, "exact_recall@10"),
                "coarse r@100": get("ebr", "coarse", 100, "exact_recall@100")}
        for kc in K_COARSES:
            line[f"rerank r@10 C={kc}"] = get("ebr", "reranked", kc, "exact_recall@10")
        if any("ndcg@10" in r for r in sel):
            line["nDCG@10 C=100"] = get("ebr", "reranked", 100, "ndcg@10")
            line["nDCG@10 C=200"] = get("ebr", "reranked", 200, "ndcg@10")
        line["ebr p50 ms C=200"] = get("ebr", "reranked", 200, "p50_ms")
        line["faiss p50 ms C=200"] = get("faiss", "reranked", 200, "p50_ms")
        line["ebr RAM B/vec"] = sm["ebr_ram_B_per_vec"]
        line["faiss RAM B/vec"] = sm["faiss_refine_ram_B_per_vec"]
        line["RAM/dense"] = sm["ram_fraction"]
        line["codes+ids/dense"] = sm["marginal_fraction"]
        out.append(line)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows, meta = [], {"title": "ebr end-to-end: exact vs ebr vs faiss IVFPQ+RefineFlat",
                      "nprobe": str(NPROBES), "candidates": str(K_COARSES), "datasets": {}}
    summary = []
    for name, cfg in DATASETS.items():
        ds = load(name, Path(args.data))
        if ds is None:
            print(f"skip {name}: not found under {args.data}")
            continue
        for spec in cfg["specs"]:
            with tempfile.TemporaryDirectory() as tmp:
                params = BuildParams(spec=IndexSpec.parse(spec), metric=cfg["metric"],
                                     codebooks="opq" if spec.startswith("OPQ") else "kmeans")
                t0 = time.perf_counter()
                write_index(Path(tmp) / "idx", ds["xb"], params, ds["ids"])
                build_s = time.perf_counter() - t0
                oi = open_index(Path(tmp) / "idx")
                r, m = evaluate_index(oi, ds["xq"], query_ids=ds["qids"], qrels=ds["qrels"],
                                      nprobes=NPROBES, candidate_counts=K_COARSES, baseline=True,
                                      label="ebr")
                if "gt" in ds:  # our exact search against the published ground truth
                    from ebr.search.exact import exact_search

                    ex = exact_search(ds["xq"], oi.dense, 100, oi.metric)
                    m["exact_vs_published_gt@100"] = float(np.mean(
                        [len(set(a) & set(b)) / 100 for a, b in zip(ex.ids, ds["gt"], strict=False)]))
                mem = oi.memory()
                marginal = (oi.ivfpq.code_size + 8) / mem["dense_bytes_per_vector"]
                meta["datasets"][f"{name} {spec}"] = {**m, "build_seconds": round(build_s, 2)}
                for row in r:
                    row.update({"dataset": name, "spec": spec,
                                "dataset_variant": f"{name} {spec}"})
                    if row["system"] == "ebr":
                        row["ram_B_per_vec"] = mem["coarse_ram_bytes_per_vector"]
                    elif row["system"].startswith("faiss"):
                        row["ram_B_per_vec"] = m["faiss_refine_ram_bytes_per_vector"]
                rows.extend(r if spec == cfg["specs"][0] else r[1:])  # exact row once
                best = [x for x in r if x["system"] == "ebr" and x["stage"] == "reranked"
                        and x["candidates"] == 200]
                summary.append({
                    "dataset": name, "spec": spec, "ntotal": oi.ntotal,
                    "dense_B_per_vec": mem["dense_bytes_per_vector"],
                    "ebr_ram_B_per_vec": mem["coarse_ram_bytes_per_vector"],
                    "ram_fraction": mem["ram_fraction_of_dense"],
                    "marginal_fraction": marginal,
                    "faiss_refine_ram_B_per_vec": m["faiss_refine_ram_bytes_per_vector"],
                    "best_recall@10_C200": max(x["exact_recall@10"] for x in best),
                    "build_s": build_s,
                })
                print(f"{name} {spec}: built in {build_s:.1f} s; "
                      f"recall@10 at C=200 {summary[-1]['best_recall@10_C200']:.4f}")
    meta["summary"] = summary
    cols = ["dataset", "spec", "system", "stage", "nprobe", "candidates", "exact_recall@10",
            "exact_recall@100", "ndcg@10", "recall@100", "mrr@10", "p50_ms", "p99_ms",
            "qps_batch", "ram_B_per_vec"]
    headline = _headline(rows, summary)
    meta["headline"] = headline
    paths = write_report(args.out, "e2e", meta, rows)
    md = Path(paths["md"]).read_text()
    md += "\n## Headline (nprobe = 32 = nlist)\n\n" + markdown_table(headline, list(headline[0]))
    md += "\n\n## Memory and the C = 200 target\n\n" + markdown_table(summary, list(summary[0])
                                                                     if summary else None)
    md += "\n\n## All operating points\n\n" + markdown_table(rows, cols) + "\n"
    Path(paths["md"]).write_text(md)
    print(markdown_table(summary, list(summary[0]) if summary else None))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
