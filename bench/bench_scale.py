"""Cost curve of a single-node build and serve (issue 6): N in {100k, 300k, 1M} x 384.

    python bench/bench_scale.py [--n 100000 300000 1000000] [--dim 384] [--spec-m 16]
                                [--distill-budget 120] [--work /tmp/ebr-scale] [--out bench/results]

Per N, each step in a fresh process (its peak RSS is its own):
  generate  the built-in generator streams corpus.fbin to disk (bounded memory)
  build     k-means IVF-PQ (nlist = 4 sqrt N or --nlist, PQ16, 100k training sample), encoding and the
            dense store written sequentially; optionally Distill-VQ with pseudo-queries and a
            time budget (--distill-budget 0 turns it off)
  serve     open the index (checksums verified), then 500 queries at nprobe 32, C = 200:
            recall@10 against exact search, single-query QPS, and the process' private memory
            (RssAnon) vs mapped file pages (RssFile, page cache the kernel can reclaim)
  shards   the same build written by Ray Data into --shards shards (same codebooks: trained
           once with the same seed and sample), served by in-process fan-out with exact merge;
           reports whether every query's top-10 equals the single-node index's
Writes scale.json, scale.md and scale.png (build seconds and peak RSS against N).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


def generate(task: dict[str, Any]) -> dict[str, Any]:
    from ebr.data.synthetic import SyntheticConfig, write_stream

    out = Path(task["work"]) / f"data-{task['n']}"
    t0 = time.perf_counter()
    if not (out / "corpus.fbin").exists():
        write_stream(SyntheticConfig(n=task["n"], d=task["dim"], nq=task["nq"],
                                     n_clusters=256), out)
    return {"generate_s": round(time.perf_counter() - t0, 1),
            "generate_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          / 1024)}


def build(task: dict[str, Any]) -> dict[str, Any]:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from ebr.index.writer import write_index
    from ebr.io.vecs import load_vectors
    from ebr.metric import Metric
    from ebr.spec import BuildParams, IndexSpec

    n = task["n"]
    nlist = task["nlist"] or 2 ** round(math.log2(4 * math.sqrt(n)))
    spec = IndexSpec.parse(f"IVF{nlist},PQ{task['m']}")
    x = load_vectors(Path(task["work"]) / f"data-{n}" / "corpus.fbin")
    trainer = None
    if task["distill_budget"]:
        from ebr.train.distill_vq import DistillConfig, DistillVQTrainer

        trainer = DistillVQTrainer(DistillConfig(time_budget_s=task["distill_budget"],
                                                 val_nprobe=32))
    out = Path(task["work"]) / f"index-{n}"
    m = write_index(out, x, BuildParams(spec=spec, metric=Metric.IP, train_size=100_000,
                                        codebooks="distill" if trainer else "kmeans"),
                    trainer=trainer, overwrite=True)
    secs = m.build["seconds"]
    row = {"spec": str(spec), "build_s": secs["total"], "train_s": round(secs["train"], 1),
           "encode_write_s": round(secs["encode_and_write_dense"], 1),
           "coarse_checksums_s": round(secs["write_coarse_and_checksums"], 1),
           "build_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                      / 1024),
           "disk_mb": round(sum(f.bytes for f in m.files.values()) / 1e6, 1)}
    if trainer is not None:
        row["kmeans_s"] = trainer.info["seconds"]["kmeans_init"]
        row["distill_s"] = round(trainer.info["seconds"]["total"]
                                 - trainer.info["seconds"]["kmeans_init"], 1)
    return row


def serve(task: dict[str, Any]) -> dict[str, Any]:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from ebr.eval.metrics import recall_vs_exact
    from ebr.index.reader import open_index
    from ebr.search.exact import exact_search
    from ebr.search.searcher import Searcher
    from ebr.spec import SearchParams

    n = task["n"]
    base = _status()
    t0 = time.perf_counter()
    oi = open_index(Path(task["work"]) / f"index-{n}")
    open_s = time.perf_counter() - t0
    s = Searcher(oi)
    xq = np.load(Path(task["work"]) / f"data-{n}" / "queries_test.npy")
    p = SearchParams(k=10, nprobe=32, candidates=200)
    s.search(xq[:20], p)
    lat = []
    ids = []
    for i in range(len(xq)):
        t = time.perf_counter()
        r, _ = s.search(xq[i], p)
        lat.append(time.perf_counter() - t)
        ids.append(r.ids[0])
    st = _status()
    ex = exact_search(s.prepare_queries(xq), oi.dense, 10, oi.metric)
    mem = oi.memory()
    return {"open_s": round(open_s, 1), "recall@10": recall_vs_exact(np.array(ids), ex.ids, 10),
            "qps": round(len(lat) / sum(lat)), "p50_ms": round(1e3 * float(np.median(lat)), 3),
            "p99_ms": round(1e3 * float(np.percentile(lat, 99)), 3),
            "serve_rss_anon_mb": round((st["RssAnon"] - base["RssAnon"]) / 1e6, 1),
            "serve_rss_anon_total_mb": round(st["RssAnon"] / 1e6, 1),
            "serve_rss_file_mb": round(st["RssFile"] / 1e6, 1),
            "coarse_ram_mb": round(mem["coarse_ram_bytes"] / 1e6, 1),
            "coarse_B_per_vec": round(mem["coarse_ram_bytes_per_vector"], 1)}


def build_ray(task: dict[str, Any]) -> dict[str, Any]:
    """The same build as shards written by Ray Data (local Ray instance on this machine)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from ebr.index.distributed import build_on_ray
    from ebr.metric import Metric
    from ebr.spec import BuildParams, IndexSpec

    n = task["n"]
    nlist = task["nlist"] or 2 ** round(math.log2(4 * math.sqrt(n)))
    t0 = time.perf_counter()
    build_on_ray(Path(task["work"]) / f"index-{n}-s{task['shards']}",
                 Path(task["work"]) / f"data-{n}" / "corpus.fbin",
                 BuildParams(spec=IndexSpec.parse(f"IVF{nlist},PQ{task['m']}"),
                             metric=Metric.IP, train_size=100_000), task["shards"],
                 overwrite=True)
    return {"build_s": round(time.perf_counter() - t0, 1),
            "build_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                       / 1024)}


def serve_shards(task: dict[str, Any]) -> dict[str, Any]:
    """In-process fan-out over the shards; agreement with the single-node index's answers."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from ebr.eval.metrics import recall_vs_exact
    from ebr.index.reader import open_index
    from ebr.index.sharded import open_sharded
    from ebr.search.exact import exact_search
    from ebr.search.searcher import Searcher
    from ebr.search.sharded import ShardedSearcher
    from ebr.spec import SearchParams

    n = task["n"]
    si = open_sharded(Path(task["work"]) / f"index-{n}-s{task['shards']}")
    s = ShardedSearcher(si)
    single = Searcher(open_index(Path(task["work"]) / f"index-{n}"))
    xq = np.load(Path(task["work"]) / f"data-{n}" / "queries_test.npy")
    p = SearchParams(k=10, nprobe=32, candidates=200)
    s.search(xq[:20], p)
    lat, ids = [], []
    for i in range(len(xq)):
        t = time.perf_counter()
        r, _ = s.search(xq[i], p)
        lat.append(time.perf_counter() - t)
        ids.append(r.ids[0])
    ids_a = np.array(ids)
    ref, _ = single.search(xq, p)
    ex = exact_search(single.prepare_queries(xq), single.index.dense, 10, single.index.metric)
    return {"recall@10": recall_vs_exact(ids_a, ex.ids, 10),
            "same_as_single_node": float((ids_a == ref.ids).all(axis=1).mean()),
            "qps": round(len(lat) / sum(lat)), "p50_ms": round(1e3 * float(np.median(lat)), 3),
            "p99_ms": round(1e3 * float(np.percentile(lat, 99)), 3)}


def _in_child(fn: Any, task: dict[str, Any]) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        return pool.submit(fn, task).result()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--spec-m", type=int, default=16)
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--nlist", type=int, default=0,
                    help="fixed nlist for every N (0: 4 sqrt N rounded to a power of 2); a "
                    "fixed nlist isolates how the encode + write cost grows with N")
    ap.add_argument("--shards", type=int, nargs="*", default=[2],
                    help="also build with Ray Data into this many shards and serve by fan-out")
    ap.add_argument("--distill-budget", type=float, default=0.0,
                    help="Distill-VQ time budget in seconds (0: k-means codebooks)")
    ap.add_argument("--work", default="/tmp/ebr-scale")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--name", default="scale")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    shard_rows: list[dict[str, Any]] = []
    for n in args.n:
        task = {"n": n, "dim": args.dim, "m": args.spec_m, "nq": args.nq, "work": args.work,
                "distill_budget": args.distill_budget, "nlist": args.nlist}
        row: dict[str, Any] = {"N": n, "dim": args.dim}
        for step in (generate, build, serve):
            row.update(_in_child(step, task))
            print(json.dumps(row), flush=True)
        row["build_us_per_vec"] = round(1e6 * row["build_s"] / n, 1)
        rows.append(row)
        for k in args.shards:
            t = {**task, "shards": k}
            srow: dict[str, Any] = {"N": n, "dim": args.dim, "shards": k, "spec": row["spec"]}
            srow.update(_in_child(build_ray, t))
            srow.update(_in_child(serve_shards, t))
            print(json.dumps(srow), flush=True)
            shard_rows.append(srow)
    from ebr.eval.report import write_report

    meta = {"title": f"ebr single-node cost curve: N x {args.dim}, PQ{args.spec_m}, "
                     "nprobe 32, C = 200, 2 cores",
            "codebooks": "Distill-VQ (pseudo-queries, budget "
                         f"{args.distill_budget:.0f} s)" if args.distill_budget else "k-means"}
    cols = ["N", "spec", "generate_s", "build_s", "train_s", "kmeans_s", "distill_s",
            "encode_write_s", "coarse_checksums_s", "build_us_per_vec", "build_peak_rss_mb",
            "disk_mb", "coarse_ram_mb", "coarse_B_per_vec", "open_s", "serve_rss_anon_mb",
            "serve_rss_anon_total_mb", "serve_rss_file_mb", "recall@10", "qps", "p50_ms",
            "p99_ms"]
    for r in rows:
        r["shards"] = 1
    paths = write_report(args.out, args.name, meta, rows, plot=False, columns=cols)
    if shard_rows:
        from ebr.eval.report import markdown_table

        scols = ["N", "shards", "spec", "build_s", "build_peak_rss_mb", "recall@10",
                 "same_as_single_node", "qps", "p50_ms", "p99_ms"]
        single = [{**r, "same_as_single_node": 1.0} for r in rows]
        md = Path(paths["md"]).read_text() + "\n## 1 vs N shards (Ray Data build, " \
            "in-process fan-out)\n\n" + markdown_table(
                sorted(single + shard_rows, key=lambda r: (r["N"], r["shards"])), scols) + "\n"
        Path(paths["md"]).write_text(md)
        data = json.loads(Path(paths["json"]).read_text())
        data["shard_rows"] = shard_rows
        Path(paths["json"]).write_text(json.dumps(data, indent=2, default=str))
    _plot(Path(args.out) / f"{args.name}.png", rows)
    print(Path(paths["md"]).read_text())
    return 0


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["N"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    ax[0].plot(n, [r["build_s"] for r in rows], "o-", label="build total")
    ax[0].plot(n, [r["train_s"] for r in rows], "s--", label="training (sample)")
    ax[0].plot(n, [r["encode_write_s"] for r in rows], "^--", label="encode + write")
    ax[0].set_ylabel("seconds")
    ax[1].plot(n, [r["build_peak_rss_mb"] for r in rows], "o-", label="build peak RSS")
    ax[1].plot(n, [r["serve_rss_anon_total_mb"] for r in rows], "s-", label="serve RssAnon")
    ax[1].plot(n, [r["disk_mb"] for r in rows], "^--", label="index on disk")
    ax[1].set_ylabel("MB")
    ax[2].plot(n, [r["qps"] for r in rows], "o-", label="single-query QPS")
    ax[2].set_ylabel("QPS (nprobe 32, C 200)")
    for a in ax:
        a.set_xscale("log")
        a.set_xlabel("N vectors")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle("ebr cost curve (2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
