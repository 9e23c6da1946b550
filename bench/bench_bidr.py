"""BiDR (issue 4): labelled training, 16 bytes per vector in RAM, re-rank from disk.

    python bench/bench_bidr.py [--set scifact|debian|pydoc|generator] [--spec IVF32,PQ16]
                               [--nprobe 8 32] [--C 100 200] [--out bench/results] [--name bidr]

Sets: SciFact (809 labelled train queries, 300 test queries), ``debian`` (the unseen corpus of
bench/make_debian_corpus.py: 500 labelled train queries, 500 test queries whose positives
no training query cites), ``pydoc`` (the same from bench/make_pydoc_corpus.py's docstring
paragraphs) and ``generator`` (the generator's realistic profile, 100k x 384,
planted qrels). Trains on the train queries with their qrels and evaluates on the test
queries: nDCG@10, Recall@10, Recall@100 against qrels, and end to end against exact search
on the base embeddings (the re-ranked recall@10 at each C, coarse recall@100 of the codes,
and the IVF coverage: recall@10 and nDCG@10 with every candidate of the probed lists re-ranked,
the most any codes can reach on those lists), for:

    a  exact search on the base MiniLM embeddings (no compression)
    b  faiss k-means IVFPQ + re-rank, and faiss OPQ + IVFPQ (the unsupervised bar; PQ at the
       spec's bytes whatever its quantizer, so that an RQ run has the same bar)
    c  Distill-VQ (train queries, labels unused) + re-rank
    d  BiDR stage 1 only: Distill-VQ + the contrastive term (labels) + re-rank
    e  BiDR stages 1 + 2 (towers on the stage-1 shortlists), per sampler
       and ablations: uniform batches, MLP towers, stage 2 on plain k-means codes,
       stage-1 contrastive weight 1, towers searched exactly (no compression: the
       towers' own ceiling)

Every build runs in a fresh process (its time and peak RSS are its own). SciFact's train and
test claims cite overlapping documents (64% of test positives are cited by some train claim),
so each metric is also given on the test queries whose positives were never seen in training
(``unseen``) and on the rest (``seen``). Each row's nDCG@10 is also given as its difference
from exact search and from the OPQ build at the same nprobe and C (when a and b ran), on the
same queries: ``mean ± paired standard error`` (each query's nDCG@10 is in the JSON). Writes
<name>.json and <name>.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

VARIANTS: dict[str, dict[str, Any]] = {
    "a exact (base)": {"exact_only": True},
    "b faiss IVFPQ": {"codebooks": "kmeans"},
    "b faiss OPQ+IVFPQ": {"codebooks": "opq"},
    "c Distill-VQ": {"codebooks": "distill"},
    "d BiDR stage 1": {"codebooks": "distill", "labels": True},
    "e BiDR 1+2 random_walk": {"codebooks": "distill", "labels": True, "towers": "linear",
                               "sampler": "random_walk"},
    "e BiDR 1+2 snowball": {"codebooks": "distill", "labels": True, "towers": "linear",
                            "sampler": "snowball"},
    "ablation: 1+2 uniform batches": {"codebooks": "distill", "labels": True,
                                      "towers": "linear", "sampler": "random"},
    "ablation: 1+2 both towers, lr 1e-3": {"codebooks": "distill", "labels": True,
                                           "towers": "linear", "sampler": "random_walk",
                                           "doc_tower": True, "lr": 1e-3},
    "ablation: 1+2 MLP towers": {"codebooks": "distill", "labels": True, "towers": "mlp",
                                 "sampler": "random_walk"},
    "ablation: k-means + stage 2": {"codebooks": "kmeans", "towers": "linear",
                                    "sampler": "random_walk"},
    "ablation: k-means + stage 2, debiased loss": {"codebooks": "kmeans", "towers": "linear",
                                                   "sampler": "random_walk",
                                                   "loss": "debiased"},
    "ablation: k-means + stage 2, per-query temperature": {
        "codebooks": "kmeans", "towers": "linear", "sampler": "random_walk",
        "query_temperature": True},
    "ablation: k-means + stage 2, hard-negative mixing": {
        "codebooks": "kmeans", "towers": "linear", "sampler": "random_walk",
        "mix_negatives": 16},
    "ablation: stage 1 weight 1": {"codebooks": "distill", "labels": True,
                                   "contrastive_weight": 1.0},
    "ablation: stage 1 with query weighting": {"codebooks": "distill", "labels": True,
                                               "weight_with_labels": True},
    "ablation: stage 1, weighting, query map trained": {"codebooks": "distill", "labels": True,
                                                        "weight_with_labels": True,
                                                        "train_query_map": True},
    "ablation: 1+2 val split by document": {"codebooks": "distill", "labels": True,
                                            "towers": "linear", "sampler": "random_walk",
                                            "val_split": "document"},
}


SETS = {"scifact": ("IVF32,PQ16", [8, 32]), "debian": ("IVF256,PQ16", [32]),
        "pydoc": ("IVF256,PQ16", [32]),
        "generator": ("IVF512,PQ16", [32])}  # default spec, nprobes


def load(name: str, data: Path) -> dict[str, Any] | None:
    from benchkit import embedded_set, generated_set

    return generated_set() if name == "generator" else embedded_set(name, data)


def run(task: dict[str, Any]) -> list[dict[str, Any]]:
    """One build (fresh process), evaluated at every (nprobe, C)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    import faiss
    from benchkit import per_query_json

    from ebr.eval.metrics import label_metrics, ndcg_per_query, recall_vs_exact
    from ebr.index.reader import open_index
    from ebr.index.writer import write_index
    from ebr.metric import Metric
    from ebr.search.searcher import Searcher
    from ebr.spec import BuildParams, IndexSpec, SearchParams

    ds = load(task["set"], Path(task["data"]))
    assert ds is not None
    v = VARIANTS[task["variant"]]
    spec = IndexSpec.parse(task["spec"])
    m = spec.code_size
    if v.get("codebooks") == "opq" and not spec.opq:  # OPQ + PQ at the spec's bytes
        spec = IndexSpec.parse(f"OPQ{m},IVF{spec.nlist},PQ{m}")
    elif v.get("exact_only"):  # brute force reads the dense vectors: the cheapest codes do
        spec = IndexSpec.parse(f"IVF{spec.nlist},PQ{m}")
    # exact search on the base embeddings: what the codes are measured against end to end
    truth = faiss.knn(np.ascontiguousarray(ds["xq"], dtype=np.float32),
                      np.ascontiguousarray(ds["xb"], dtype=np.float32), 100,
                      metric=faiss.METRIC_INNER_PRODUCT)[1]
    trainer = dense = pairs = None
    if v.get("labels") or v.get("towers"):
        from ebr.train.sampling import TrainingPairs

        pairs = TrainingPairs.from_qrels(ds["xtrain"], ds["train_ids"], ds["train_qrels"],
                                         ds["ids"], len(ds["xb"]))
    if v.get("codebooks") == "distill":
        from ebr.train.distill_vq import DistillConfig, DistillVQTrainer

        cfg = DistillConfig(val_nprobe=task["train_nprobe"],
                            contrastive_weight=v.get("contrastive_weight", 3.0),
                            val_split=v.get("val_split", "query"),
                            query_weighting=v.get("weighting", DistillConfig.query_weighting),
                            train_query_map=v.get("train_query_map"),
                            weight_with_labels=v.get("weight_with_labels", False))
        trainer = (DistillVQTrainer(cfg, pairs=pairs, corpus=ds["xb"]) if v.get("labels")
                   else DistillVQTrainer(cfg, queries=ds["xtrain"]))
    if v.get("towers"):
        from ebr.train.bidr import BiDRConfig, BiDRDenseTrainer

        dense = BiDRDenseTrainer(pairs, BiDRConfig(
            tower=v["towers"], sampler=v["sampler"], nprobe=task["train_nprobe"],
            train_doc_tower=v.get("doc_tower", False), lr=v.get("lr", 1e-4),
            val_split=v.get("val_split", "query"), loss=v.get("loss", "infonce"),
            query_temperature=v.get("query_temperature", False),
            mix_negatives=v.get("mix_negatives", 0)))
    # test queries whose positives no train claim cites
    train_docs = {d for q in ds["train_qrels"].values() for d in q}
    rel = [ds["qrels"].get(q, {}) for q in ds["qids"]]
    unseen = np.array([bool(r) and not any(d in train_docs for d in r) for r in rel])

    def metrics(s: Searcher, ids: np.ndarray) -> dict[str, float]:
        ranked = [s.index.external_ids(r) for r in ids]
        # each query's nDCG@10, for the report's paired differences
        out: dict[str, Any] = {"nDCG@10_per_query": per_query_json(
            ndcg_per_query(ranked, rel))}
        for name, sel in (("", np.ones(len(rel), bool)), ("unseen ", unseen),
                          ("seen ", ~unseen)):
            m = label_metrics([r for r, k in zip(ranked, sel, strict=True) if k],
                              [q for q, k in zip(rel, sel, strict=True) if k], ks=(10, 100))
            out.update({f"{name}nDCG@10": m["ndcg@10"], f"{name}R@10": m["recall@10"],
                        f"{name}R@100": m["recall@100"]})
        return out

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_index(Path(tmp) / "i", ds["xb"], BuildParams(
            spec=spec, metric=Metric.IP, codebooks=v.get("codebooks", "kmeans")),
            ds["ids"], trainer=trainer, dense_trainer=dense)
        build_s = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        oi = open_index(Path(tmp) / "i")
        s = Searcher(oi)
        mem = oi.memory()
        base = {"variant": task["variant"], "spec": str(spec), "build_s": round(build_s, 1),
                "peak_rss_mb": round(peak_mb),
                "codes_B/vec": round(mem["codes_bytes"] / oi.ntotal, 1),
                "ram_B/vec": round(mem["ram_bytes_per_vector"], 1),
                "towers": "stored" if oi.query_tower is not None else "-"}
        if trainer is not None:
            base["stage1_s"] = trainer.info["seconds"]["total"]
            base["stage1_val"] = round(trainer.info["best_val"], 4)
        if dense is not None:
            base["stage2_s"] = dense.info["seconds"]["total"]
            base["stage2_val_nDCG@10"] = (f"{dense.history[0]['val_ndcg@10']:.4f} -> "
                                          f"{dense.info['best_val_ndcg@10']:.4f}")
            base["stage2_epochs"] = len(dense.history) - 1
        if v.get("exact_only") or v.get("towers"):
            ex = s.exact(ds["xq"], 100)  # brute force (with the towers, in their space)
            rows.append({**base, "variant": task["variant"] if v.get("exact_only")
                         else f"{task['variant']}, exact search (no compression)",
                         "nprobe": "-", "C": "all", **metrics(s, ex.ids)})
            if v.get("exact_only"):
                return rows
        for nprobe in task["nprobes"]:
            p = min(nprobe, oi.nlist)
            coarse, _ = s.search(ds["xq"], SearchParams(k=100, nprobe=p, candidates=100,
                                                        rerank=False))
            allc, _ = s.search(ds["xq"], SearchParams(k=10, nprobe=p, candidates=oi.ntotal))
            vs_exact = {"coarse r@100 vs exact": recall_vs_exact(coarse.ids, truth, 100),
                        "coverage r@10": recall_vs_exact(allc.ids, truth, 10),
                        # the most any codes reach on these lists: what the partition caps
                        "coverage nDCG@10": metrics(s, allc.ids)["nDCG@10"]}
            for c in task["Cs"]:
                res, _ = s.search(ds["xq"], SearchParams(k=100, nprobe=p, candidates=c))
                rows.append({**base, "nprobe": nprobe, "C": c, **metrics(s, res.ids),
                             "r@10 vs exact": recall_vs_exact(res.ids[:, :10], truth, 10),
                             **vs_exact})
    print(json.dumps({k: v for k, v in rows[-1].items() if k != "nDCG@10_per_query"}),
          flush=True)
    return rows


OPQ, EXACT = "b faiss OPQ+IVFPQ", "a exact (base)"


def paired_ndcg(rows: list[dict[str, Any]]) -> None:
    """Each row's nDCG@10 minus that of exact search on the base embeddings and of the OPQ
    build at the same nprobe and C, on the same queries (when those variants ran;
    ``benchkit.paired_text``: mean ± paired standard error)."""
    from benchkit import paired_text

    key = "nDCG@10_per_query"
    exact = next((r for r in rows if r["variant"] == EXACT), None)
    for r in rows:
        opq = next((o for o in rows if o["variant"] == OPQ
                    and (o["nprobe"], o["C"]) == (r["nprobe"], r["C"])), None)
        for col, ref in (("nDCG vs exact", exact), ("nDCG vs OPQ", opq)):
            if ref is not None and ref is not r:
                r[col] = paired_text(r[key], ref[key])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--set", choices=list(SETS), default="scifact")
    ap.add_argument("--spec", help="default: IVF32,PQ16 (scifact), IVF256,PQ16 (debian), "
                    "IVF512,PQ16 (generator)")
    ap.add_argument("--nprobe", type=int, nargs="+", help="default: 8 32 (scifact), 32")
    ap.add_argument("--C", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--train-nprobe", type=int, default=32,
                    help="nprobe of the stage-1 validation and the stage-2 shortlists")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--name", default="bidr")
    args = ap.parse_args()
    spec, nprobes = SETS[args.set]
    args.spec, args.nprobe = args.spec or spec, args.nprobe or nprobes
    ds = load(args.set, Path(args.data))  # each build's process loads its own copy
    if ds is None:
        print(f"{args.set}: embeddings not found", file=sys.stderr)
        return 1
    tasks = [{"variant": name, "set": args.set, "data": args.data, "spec": args.spec,
              "nprobes": args.nprobe, "Cs": args.C, "train_nprobe": args.train_nprobe}
             for name in args.variants]
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        for r in pool.map(run, tasks):
            rows += r
    from ebr.eval.report import write_report

    meta = {"title": f"BiDR on {args.set}: {len(ds['train_qrels'])} labelled train queries, "
                     f"{len(ds['qids'])} test queries, {args.spec}, re-rank from disk",
            "set": args.set, "spec": args.spec, "train_nprobe": args.train_nprobe,
            "test_queries_unseen": "test queries none of whose positives a train query cites"}
    paired_ndcg(rows)
    cols = ["variant", "nprobe", "C", "nDCG@10", "nDCG vs OPQ", "nDCG vs exact", "r@10 vs exact",
            "coarse r@100 vs exact", "coverage r@10", "coverage nDCG@10", "R@10", "R@100", "unseen nDCG@10",
            "unseen R@100", "seen nDCG@10", "seen R@100", "codes_B/vec", "ram_B/vec", "towers",
            "stage1_s", "stage1_val", "stage2_s", "stage2_epochs", "stage2_val_nDCG@10",
            "build_s", "peak_rss_mb"]
    paths = write_report(args.out, args.name, meta, rows, plot=False, columns=cols)
    print(Path(paths["md"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
