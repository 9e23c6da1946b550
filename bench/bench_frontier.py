"""Recall per byte on the 2026 frontier, side by side in one run (issue 22, item 1).

    python bench/bench_frontier.py [--sets scifact siftsmall debian generator] [--bytes 8 16 32 48]
                                   [--gen-n 1000000] [--methods ...] [--budget 120]
                                   [--work runs/frontier] [--out bench/results] [--name frontier]
                                   [--sweep-nprobe 4 8 16 32 64] [--probe flat|hnsw]
                                   [--sweep-probes flat hnsw] [--sweep-candidates 100 150 200]
                                   [--in-turns]

For each set and each budget B of code bytes per vector, every method is built in a fresh
process (its build time is its own) with the same IVF list count and searched at the same
nprobe, one query at a time on one thread:

  ebr     kmeans       IVF,PQ<B>: faiss k-means codebooks
          opq          OPQ<B>,IVF,PQ<B> (--codebooks opq)
          opq_half     OPQ<B>_<d/2>,IVF,PQ<B> (--codebooks opq): the rotation also halves the
                       dimensions the IVF and the PQ see (the re-rank scores all of them)
          rq           IVF,RQ<B> (faiss residual quantizer, 8-bit codebooks)
          distill      OPQ<B>,IVF,PQ<B> --codebooks distill (the README's recipe; pseudo-queries
                       or the set's training queries, labels unused; guarded end to end)
          distill_half OPQ<B>_<d/2>,IVF,PQ<B> --codebooks distill (learned on the halved space)
          distill_rq   IVF,RQ<B> --codebooks distill
          bidr         BiDR, stages 1 + 2 (linear query tower) on OPQ<B>, with the set's
                       labelled training queries (SciFact; Debian, whose test positives no
                       training query labels)
  peers   rabitq       faiss PCAR<d'>,IVF,RaBitQ: 1 bit per (rotated) dimension + 8 bytes of
                       factors; d' the largest multiple of 8 whose code fits B (no PCA when
                       d' = d)
          rabitq4      faiss PCAR<d'>,IVF,RaBitQ4 (extended RaBitQ, 4 bits per dimension)
          pq4fs        faiss IVF,PQ<2B>x4fs (4-bit PQ, FastScan SIMD tables)
          scann        ScaNN tree (same leaves) + asymmetric hashing with 4-bit codes at B
                       bytes (dims per block = d / 2B), anisotropic loss (threshold 0.2)
          scann_soar   the same with SOAR spilling (lambda 1.5): each vector in 2 lists, so
                       twice its codes in RAM

Every row re-ranks its coarse top C exactly with the dense vectors, all with ebr's compiled
re-rank (ebr reads its mapped dense store; the peers read the same vectors from a memory map),
so re-ranked figures and QPS compare codes and probes, not re-rankers. Per row: coarse
recall@100 against exact, re-ranked recall@10 at C = 100 and 200, nDCG@10 against qrels where
they exist (C = 200; with its difference from the same bytes' ``opq`` row and from exact search
on the same queries, ``mean ± paired standard error``; each query's nDCG@10 in the JSON), for
ebr's codes the IVF coverage (recall@10 and nDCG@10 with every document of the probed lists
re-ranked: the most any codes reach on those lists), QPS (coarse + re-rank at C = 100), build
seconds, and RAM per vector: what each added vector costs, its codes (x copies for SOAR) + an
8-byte id, beside the fixed part (centroids, codebooks, rotations, query maps) in MB.
With --sweep-nprobe, each row is also searched at each of those nprobe values (re-ranked
recall@10 and QPS at C = 200, or at each --sweep-candidates C: the recall-QPS curve), and the
goal is also stated as QPS at equal recall: each row at its fastest swept nprobe and C that
reaches the best recall any 32-byte peer reaches (ebr's codes at 16 bytes, learned or not,
against the peers at 32). --probe hnsw picks every row's lists with a graph over its centroids (ebr's
``probe="hnsw"``; the same graph and beam swapped into the faiss peers' IVF; ScaNN keeps its
own tree); --probe auto ranks ebr's lists by their points (ebr's default,
ebr.quant.listpoints: their RAM is in fixed_MB) and the peers' by their centroids; the default
(flat) scores every centroid, as faiss does. --sweep-probes measures each
row's curve with each probe in turn, on the same built index. --in-turns builds every row of
a set in one process first and then measures all their QPS in turns, point by point, the
rows' order rotated each pass (best of 5): a fair QPS at equal recall on a host whose speed
drifts over a run, which a row per process is not. Its peers share one copy of the dense
vectors; each ebr row keeps its own index, dense store included, until the end (~1.5 GB per
row at 1M x 384 on disk), so run it on the rows the comparison needs. Each row's process takes the
index file leases the service takes (``ebr.index.guard.enable_leases``: no stat check per
search).
Sets: SciFact (MiniLM 384-d, 300 test queries, qrels), siftsmall (128-d, L2, 100 queries),
``debian`` (bench/make_debian_corpus.py's unseen corpus: 30k package descriptions, 500 train
and 500 test summaries as queries, IVF256 at nprobe 32, when built), ``pydoc``
(bench/make_pydoc_corpus.py's: ~18.5k docstring paragraphs, the same shape) and
the built-in generator's ``minilm`` profile (a fitted MiniLM spectrum, anisotropic queries) at
--gen-n x 384 with 1,000 queries, written once under --work. Writes <name>.json, <name>.md and
<name>.png (re-ranked recall@10 against RAM bytes per vector, and against QPS).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
EBR = ["kmeans", "opq", "opq_half", "rq", "distill", "distill_half", "distill_rq", "bidr"]
PEERS = ["rabitq", "rabitq4", "pq4fs", "scann", "scann_soar"]
K, C_SERVE, C_WIDE, QPS_QUERIES, TURNS = 10, 100, 200, 300, 5
logger = logging.getLogger("bench_frontier")


def _sets(gen_n: int) -> dict[str, tuple[int, int, str]]:
    """nlist, nprobe, metric per set."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(gen_n)))
    return {"scifact": (32, 8, "ip"), "siftsmall": (64, 8, "l2"),
            "generator": (nlist, 32, "ip"), "debian": (256, 32, "ip"), "pydoc": (256, 32, "ip")}


def _generator(work: Path, n: int) -> Path:
    """The generator's minilm profile at n x 384, its queries and their exact top-100, once."""
    from ebr.data.synthetic import SyntheticConfig, write_stream

    out = work / f"generator-minilm-{n}"
    if not (out / "exact_top100.npy").exists():
        write_stream(SyntheticConfig(n=n, d=384, nq=1000, profile="minilm"), out)
        _exact(out)
    return out


def _exact(out: Path) -> None:
    import faiss

    from ebr.io.vecs import load_vectors

    xb = load_vectors(out / "corpus.fbin")
    xq = np.load(out / "queries_test.npy")
    flat = faiss.IndexFlatIP(xb.shape[1])
    for i in range(0, len(xb), 200_000):
        flat.add(np.ascontiguousarray(xb[i:i + 200_000]))
    _, ids = flat.search(xq, 100)
    np.save(out / "exact_top100.npy", ids)


def load(name: str, data: Path, work: Path, gen_n: int) -> dict[str, Any] | None:
    from benchkit import embedded_set

    from ebr.io.vecs import load_vectors, read_vecs

    if name in ("scifact", "debian", "pydoc"):  # debian, pydoc: bench/make_*_corpus.py's
        return embedded_set(name, data)
    if name == "siftsmall":
        d = data / "siftsmall"
        if not d.exists():
            return None
        return {"xb": np.array(read_vecs(d / "siftsmall_base.fvecs")), "ids": None,
                "xq": np.array(read_vecs(d / "siftsmall_query.fvecs")), "qids": None,
                "qrels": None, "xtrain": None}
    out = _generator(work, gen_n)
    return {"xb": load_vectors(out / "corpus.fbin"), "ids": None,
            "xq": np.load(out / "queries_test.npy"), "qids": None, "qrels": None,
            "xtrain": None, "exact": np.load(out / "exact_top100.npy")}


def _largest_dim(d: int, budget: int, factory: str) -> int | None:
    """The largest d' (multiple of 8, <= d) whose faiss ``factory`` code fits ``budget``."""
    import faiss

    for dp in range(d - d % 8, 7, -8):
        ivf = faiss.extract_index_ivf(faiss.index_factory(dp, factory.format(nlist=1)))
        if ivf.code_size <= budget:
            return dp
    return None


class _Peer:
    """A faiss or ScaNN index over the set, searched for its coarse top C."""

    def __init__(self, method: str, xb: np.ndarray, nlist: int, nprobe: int, metric: str,
                 budget: int) -> None:
        import faiss

        d = xb.shape[1]
        self.kind = method
        self.nprobe = nprobe
        self.copies = 1
        fm = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        if method.startswith("scann"):
            import scann

            dims = max(1, math.ceil(d / (2 * budget)))
            b = scann.scann_ops_pybind.builder(
                np.ascontiguousarray(xb), C_WIDE, "dot_product" if metric == "ip"
                else "squared_l2")
            tree = {"num_leaves": nlist, "num_leaves_to_search": nprobe,
                    "training_sample_size": min(len(xb), 250_000)}
            if method == "scann_soar":
                tree["soar_lambda"] = 1.5
                tree["overretrieve_factor"] = 2.0
                self.copies = 2
            b = b.tree(**tree).score_ah(dims, anisotropic_quantization_threshold=0.2
                                        if metric == "ip" else float("nan"))
            self.scann = b.build()
            self.code_bytes = math.ceil(math.ceil(d / dims) / 2)
            self.fixed_bytes = (nlist + 16) * d * 4  # leaf centres, AH codebooks
            self.spec = f"scann leaves {nlist}, AH {dims} dims/block x 4 bit" + (
                ", SOAR 1.5" if self.copies == 2 else "")
            return
        if method == "pq4fs":
            if d % (2 * budget):
                raise ValueError(f"PQ{2 * budget} does not divide d = {d}")
            factory = f"IVF{nlist},PQ{2 * budget}x4fs"
        else:
            tail = "RaBitQ" if method == "rabitq" else "RaBitQ4"
            dp = _largest_dim(d, budget, "IVF{nlist}," + tail)
            if dp is None:
                raise ValueError(f"{tail} cannot fit {budget} bytes")
            factory = (f"PCAR{dp}," if dp < d else "") + f"IVF{nlist},{tail}"
        self.spec = factory
        index = faiss.index_factory(d, factory, fm)
        sample = xb[np.random.default_rng(0).choice(len(xb), min(len(xb), 100_000),
                                                     replace=False)]
        index.train(np.ascontiguousarray(sample))
        for i in range(0, len(xb), 100_000):
            index.add(np.ascontiguousarray(xb[i:i + 100_000]))
        self.index = index
        self.ivf = faiss.extract_index_ivf(index)
        self.quantizers = {"flat": self.ivf.quantizer}
        self.set_nprobe(nprobe)
        self.code_bytes = self.ivf.code_size
        # centroids, the PCA matrix, PQ codebooks (RaBitQ has none)
        dp = self.ivf.d
        self.fixed_bytes = nlist * dp * 4 + (d * dp * 4 if dp < d else 0) + (
            16 * d * 4 if method == "pq4fs" else 0)

    def use_probe(self, kind: str) -> bool:
        """Pick lists by scoring every centroid (flat) or with ebr's graph over them (hnsw:
        the same graph and beam as ebr.quant.probe). False where the peer has no such choice
        (ScaNN's tree)."""
        import faiss

        from ebr.quant.probe import centroid_graph

        if kind == "auto":  # ebr's default (its list points); a peer has its centroids
            kind = "flat"
        if self.kind.startswith("scann"):
            return kind == "flat"
        if kind not in self.quantizers:
            flat = faiss.downcast_index(self.quantizers["flat"])
            self.quantizers[kind] = centroid_graph(flat.reconstruct_n(0, flat.ntotal),
                                                   flat.metric_type)
        self.ivf.own_fields = False  # both quantizers live as long as this object
        self.ivf.quantizer = self.quantizers[kind]
        self.set_nprobe(self.nprobe)
        return True

    def set_nprobe(self, nprobe: int) -> None:
        import faiss

        from ebr.quant.probe import ef_search

        self.nprobe = nprobe
        if not self.kind.startswith("scann"):
            self.ivf.nprobe = nprobe
            q = faiss.downcast_index(self.ivf.quantizer)
            if isinstance(q, faiss.IndexHNSW):  # the beam ebr's probe uses at this nprobe
                q.hnsw.efSearch = ef_search(nprobe)

    def coarse(self, xq: np.ndarray, c: int) -> np.ndarray:
        if self.kind.startswith("scann"):
            ids, _ = self.scann.search_batched(np.ascontiguousarray(xq), final_num_neighbors=c,
                                               leaves_to_search=self.nprobe)
            return np.asarray(ids, dtype=np.int64)
        _, ids = self.index.search(np.ascontiguousarray(xq), c)
        return ids


def _rerank(xb: np.ndarray, xq: np.ndarray, cand: np.ndarray, metric: str,
            dedupe: bool) -> np.ndarray:
    """The peers' re-rank: ebr's own (``ebr.search.rerank``, faiss' compiled by-index kernel
    over the mapped rows), so QPS compares codes and probes, not re-rankers. ``dedupe``: SOAR
    may return a document twice; keep its first place."""
    from ebr.metric import Metric
    from ebr.search.rerank import rerank

    cand = np.ascontiguousarray(cand, dtype=np.int64)
    if dedupe:
        out = np.full_like(cand, -1)
        for i, row in enumerate(cand):
            row = row[row >= 0]
            _, first = np.unique(row, return_index=True)
            out[i, :len(first)] = row[np.sort(first)]
        cand = out
    # faiss pads with -1 at the end of a row, and so does the de-duplication
    ids, _, _ = rerank(np.ascontiguousarray(xq, dtype=np.float32), cand, xb,
                       Metric.parse(metric), K, padded_at_end=True)
    return ids


def _recall(ids: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k].tolist()) & set(b[:k].tolist())) / k
                          for a, b in zip(ids, exact, strict=True)]))


@dataclass
class _Built:
    """One row's built index: its figures so far and how to search it."""

    row: dict[str, Any]
    final_fn: Any = None  # (queries, C) -> re-ranked top-K ids, at the row's nprobe
    at_nprobe: Any = None  # (nprobe, probe) -> such a function, or None without that probe


def _context(task: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """The task's set, and the exact top-100 of its test queries."""
    import faiss

    logging.basicConfig(level=logging.WARNING)
    logger.setLevel(logging.INFO)
    from ebr.index.guard import enable_leases

    enable_leases()  # as the service does: a search's files are guarded by leases
    ds = load(task["set"], Path(task["data"]), Path(task["work"]), task["gen_n"])
    if ds is None:
        raise ValueError(f"{task['set']}: data absent")
    exact = ds.get("exact")
    if exact is None:
        xb = ds["xb"]
        metric = _sets(task["gen_n"])[task["set"]][2]
        flat = faiss.IndexFlatIP(xb.shape[1]) if metric == "ip" else faiss.IndexFlatL2(
            xb.shape[1])
        flat.add(np.ascontiguousarray(xb))
        _, exact = flat.search(ds["xq"], 100)
    return ds, exact


def _peer_dense(xb: np.ndarray, where: Path) -> np.ndarray:
    """The dense vectors the peers re-rank with, as a memory map of ``where/dense.f32``
    (written once: the peers of one process share it)."""
    path = where / "dense.f32"
    if not path.exists():
        dense = np.memmap(path, dtype=np.float32, mode="w+", shape=xb.shape)
        for i in range(0, len(xb), 100_000):
            dense[i:i + 100_000] = xb[i:i + 100_000]
        dense.flush()
        del dense
    return np.memmap(path, dtype=np.float32, mode="r", shape=xb.shape)


def _build(task: dict[str, Any], ds: dict[str, Any], exact: np.ndarray, tmp: Path,
           peers_dir: Path | None = None) -> _Built:
    """Build one row's index under ``tmp`` and measure its quality (no QPS yet); a peer
    re-ranks from ``peers_dir``'s shared copy of the dense vectors when given."""
    import faiss
    from benchkit import per_query_json

    from ebr.eval.metrics import ndcg_per_query

    nlist, nprobe, metric = _sets(task["gen_n"])[task["set"]]
    xb, xq, budget, method = ds["xb"], ds["xq"], task["bytes"], task["method"]
    n = len(xb)
    faiss.omp_set_num_threads(2)
    row: dict[str, Any] = {"set": task["set"], "method": method, "bytes": budget,
                           "system": "ebr" if method in EBR else "peer", "nlist": nlist,
                           "nprobe": nprobe}
    t0 = time.perf_counter()
    try:
        if method in EBR:
            searchers, spec, ram, fixed, guard = _ebr(method, ds, tmp, nlist, nprobe, metric,
                                                      budget, task["budget"])
            row["guard"] = guard  # the held-out figures it chose on (JSON only)
            coarse_fn, final_fn = _ebr_fns(searchers(task["probe"]), nprobe)

            def at_nprobe(p: int, probe: str, s: Any = searchers) -> Any:
                return _ebr_fns(s(probe), p)[1]
        else:
            peer = _Peer(method, xb, nlist, nprobe, metric, budget)
            if not peer.use_probe(task["probe"]):
                raise ValueError(f"{method} picks its lists its own way (no {task['probe']})")
            spec = peer.spec
            ram = peer.code_bytes * peer.copies + 8.0
            fixed = peer.fixed_bytes
            dense = _peer_dense(xb, peers_dir or tmp)

            def coarse_fn(q: np.ndarray, c: int, peer: _Peer = peer) -> np.ndarray:
                return peer.coarse(q, c)

            def final_fn(q: np.ndarray, c: int, peer: _Peer = peer,
                         dense: np.ndarray = dense) -> np.ndarray:
                return _rerank(dense, q, peer.coarse(q, c), metric, peer.copies > 1)

            def at_nprobe(p: int, probe: str, peer: _Peer = peer, f: Any = final_fn) -> Any:
                if not peer.use_probe(probe):
                    return None
                peer.set_nprobe(p)
                return f
    except (ValueError, RuntimeError) as e:
        row["skipped"] = str(e)[:200]
        return _Built(row)
    row["build_s"] = round(time.perf_counter() - t0, 1)
    row["spec"] = spec
    row["ram_B/vec"] = round(ram, 1)
    row["fixed_MB"] = round(fixed / 2**20, 2)
    faiss.omp_set_num_threads(1)
    coarse = coarse_fn(xq, 100)
    row["coarse_r@100"] = round(_recall(coarse, exact, 100), 4)
    finals = {c: final_fn(xq, c) for c in (C_SERVE, C_WIDE)}
    for c, ids in finals.items():
        row[f"rerank_r@10_C{c}"] = round(_recall(ids, exact, 10), 4)
    whole = None
    if method in EBR and method != "bidr":  # every document of the probed lists
        whole = final_fn(xq, n)
        row["coverage_r@10"] = round(_recall(whole, exact, 10), 4)
    if ds["qrels"] is not None:
        rel = [ds["qrels"].get(q, {}) for q in ds["qids"]]
        if whole is not None:  # the most any codes reach on these lists
            row["coverage_nDCG@10"] = round(float(np.nanmean(ndcg_per_query(
                [[ds["ids"][i] if i >= 0 else None for i in r] for r in whole], rel))), 4)
        ranked = [[ds["ids"][i] if i >= 0 else None for i in r] for r in finals[C_WIDE]]
        for key, per in (
                ("nDCG@10_C200", ndcg_per_query(ranked, rel)),
                ("exact_nDCG@10", ndcg_per_query([[ds["ids"][i] for i in r[:10]] for r in exact],
                                                 rel))):
            row[key] = round(float(np.nanmean(per)), 4)
            row[f"{key}_per_query"] = per_query_json(per)  # for the report's paired differences
    row["probe"] = task["probe"]
    return _Built(row, final_fn, at_nprobe)


def run(task: dict[str, Any]) -> dict[str, Any]:
    """One build + evaluation, in its own process: its QPS measured right after its build."""
    ds, exact = _context(task)
    with tempfile.TemporaryDirectory(dir=task["work"]) as tmp:
        b = _build(task, ds, exact, Path(tmp))
        if b.final_fn is not None:
            b.row["peak_rss_mb"] = round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            b.row["qps"] = _qps(b.final_fn, ds["xq"], C_SERVE, 2)
            if task.get("sweep"):
                b.row["sweep"] = _sweep(b.at_nprobe, task, b.row["nlist"], ds["xq"], exact)
    print(_progress(b.row), flush=True)
    return b.row


def run_in_turns(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every task of one set built in this process first; then every row's QPS measured in
    turns, point by point (the same nprobe, C and probe for every row back to back, the rows'
    order rotated each pass), each point's best of TURNS passes kept: the host's drift over
    a run falls on every row alike instead of on the rows measured last."""
    ds, exact = _context(tasks[0])
    xq = ds["xq"]
    with ExitStack() as stack:
        built = []
        shared = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=tasks[0]["work"])))
        for task in tasks:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(dir=task["work"]))
            built.append(_build(task, ds, exact, Path(tmp), peers_dir=shared))
            logger.info("built %s %s B", task["method"], task["bytes"])
        live = [b for b in built if b.final_fn is not None]
        sweep = _sweep_points(tasks[0], live[0].row["nlist"]) if live else []
        points = [("serve", C_SERVE, 0), *sweep]
        for b in live:
            if sweep:
                b.row["sweep"] = []
        best: dict[tuple[int, tuple[str, int, int]], float] = {}
        for turn in range(TURNS):
            for pt in points:
                for i in range(len(live)):
                    j = (i + turn) % len(live)
                    b = live[j]
                    probe, c, p = pt
                    f = (b.at_nprobe(b.row["nprobe"], b.row["probe"]) if probe == "serve"
                         else b.at_nprobe(p, probe))
                    if f is None:  # this row has no such probe
                        continue
                    if turn == 0 and probe != "serve":
                        b.row["sweep"].append({"probe": probe, "nprobe": p, "C": c,
                                               "r@10": round(_recall(f(xq, c), exact, 10), 4)})
                    qps = _qps(f, xq, c, 1)
                    best[j, pt] = max(best.get((j, pt), 0.0), qps)
            logger.info("QPS pass %d of %d done", turn + 1, TURNS)
        for j, b in enumerate(live):
            b.row["qps"] = best[j, points[0]]
            for sp in b.row.get("sweep", []):
                sp["qps"] = best[j, (sp["probe"], sp["C"], sp["nprobe"])]
            b.row["measured"] = "in turns"
    for b in built:
        print(_progress(b.row), flush=True)
    return [b.row for b in built]


def _sweep(at_nprobe: Any, task: dict[str, Any], nlist: int, xq: np.ndarray,
           exact: np.ndarray) -> list[dict[str, Any]]:
    """The recall-QPS curve at each swept C (C = 200 by default), nprobe by nprobe, for each
    probe in turn."""
    points = []
    for probe, c, p in _sweep_points(task, nlist):
        f = at_nprobe(p, probe)
        if f is None:  # this row has no such probe
            continue
        points.append({"probe": probe, "nprobe": p, "C": c,
                       "r@10": round(_recall(f(xq, c), exact, 10), 4),
                       "qps": _qps(f, xq, c, 3)})
    return points


def _sweep_points(task: dict[str, Any], nlist: int) -> list[tuple[str, int, int]]:
    """The swept (probe, C, nprobe) points, probe by probe, then C, then nprobe (at most
    nlist); none without --sweep-nprobe."""
    if not task.get("sweep"):
        return []
    return [(probe, c, p) for probe in task["sweep_probes"]
            for c in task.get("sweep_c") or [C_WIDE]
            for p in sorted(p for p in task["sweep"] if p <= nlist)]


def _qps(final_fn: Any, xq: np.ndarray, c: int, passes: int) -> float:
    """Queries per second, one query per call, best of ``passes`` over QPS_QUERIES queries."""
    qs = xq[:QPS_QUERIES]
    best = math.inf
    for _ in range(passes):
        t0 = time.perf_counter()
        for q in qs:
            final_fn(q[None, :], c)
        best = min(best, time.perf_counter() - t0)
    return round(len(qs) / best, 1)


def _ebr(method: str, ds: dict[str, Any], tmp: Path, nlist: int, nprobe: int, metric: str,
         budget: int, train_budget: float) -> tuple[Any, str, float, float, Any]:
    from ebr.index.reader import open_index
    from ebr.index.writer import write_index
    from ebr.metric import Metric
    from ebr.search.searcher import Searcher
    from ebr.spec import BuildParams, IndexSpec

    rq = method in ("rq", "distill_rq")
    opq = method in ("opq", "distill", "bidr")
    d = ds["xb"].shape[1]
    half = f"OPQ{budget}_{max(budget, d // 2 // budget * budget)},"  # a multiple of M
    spec = IndexSpec.parse(f"IVF{nlist},RQ{budget}" if rq else
                           (f"OPQ{budget}," if opq else half if method.endswith("_half") else "")
                           + f"IVF{nlist},PQ{budget}")
    trainer = dense = None
    codebooks = {"kmeans": "kmeans", "opq": "opq", "opq_half": "opq",
                 "rq": "kmeans"}.get(method, "distill")
    if codebooks == "distill":
        from ebr.train.distill_vq import DistillConfig, DistillVQTrainer

        cfg = DistillConfig(val_nprobe=nprobe, time_budget_s=train_budget,
                            corpus_size=len(ds["xb"]))
        if method == "bidr":
            if ds.get("train_qrels") is None:
                raise ValueError("BiDR needs labelled training queries")
            from ebr.train.bidr import BiDRConfig, BiDRDenseTrainer
            from ebr.train.sampling import TrainingPairs

            pairs = TrainingPairs.from_qrels(ds["xtrain"], ds["train_ids"], ds["train_qrels"],
                                             ds["ids"], len(ds["xb"]))
            trainer = DistillVQTrainer(cfg, pairs=pairs, corpus=ds["xb"])
            dense = BiDRDenseTrainer(pairs, BiDRConfig(tower="linear", nprobe=nprobe))
        else:
            trainer = DistillVQTrainer(cfg, queries=ds["xtrain"])
    write_index(tmp / "i", ds["xb"], BuildParams(spec=spec, metric=Metric.parse(metric),
                                                 codebooks=codebooks),
                ds["ids"], trainer=trainer, dense_trainer=dense)
    opened: dict[str, Searcher] = {}

    def searchers(probe: str) -> Searcher:
        """The index opened with that probe (``flat`` or ``hnsw``), once."""
        if probe not in opened:
            opened[probe] = Searcher(open_index(tmp / "i", probe=probe))  # type: ignore[arg-type]
        return opened[probe]

    oi = searchers("auto").index  # the RAM of what the default serves (list points included)
    kept, guard = "", None
    if trainer is not None and trainer.info.get("guard"):
        guard = trainer.info["guard"]
        kept = f" (guard kept {guard['kept']})"
    mem = oi.memory()
    per_vector = (mem["codes_bytes"] + mem["list_ids_bytes"]) / oi.ntotal
    fixed = mem["coarse_ram_bytes"] + mem["query_side_bytes"] + mem["probe_bytes"] \
        - per_vector * oi.ntotal
    return searchers, f"{spec} {codebooks}{kept}", float(per_vector), float(fixed), guard


def _ebr_fns(s: Any, nprobe: int) -> tuple[Any, Any]:
    from ebr.spec import SearchParams

    def coarse_fn(q: np.ndarray, c: int) -> np.ndarray:
        res, _ = s.search(q, SearchParams(k=c, nprobe=nprobe, candidates=c, rerank=False))
        return res.ids

    def final_fn(q: np.ndarray, c: int) -> np.ndarray:
        res, _ = s.search(q, SearchParams(k=K, nprobe=nprobe, candidates=c))
        return res.ids

    return coarse_fn, final_fn


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["set"] for r in rows if "qps" in r})
    fig, axes = plt.subplots(2, len(sets), figsize=(5.5 * len(sets), 8), squeeze=False)
    for j, name in enumerate(sets):
        swept = [r for r in rows if r["set"] == name and r.get("sweep")]
        for method in EBR + PEERS:
            pts = sorted((r["ram_B/vec"], r["qps"], r[f"rerank_r@10_C{C_WIDE}"]) for r in rows
                         if r["set"] == name and r["method"] == method and "qps" in r)
            if not pts:
                continue
            style = "-o" if method in EBR else "--s"
            axes[0][j].plot([p[0] for p in pts], [p[2] for p in pts], style, label=method)
            if not swept:
                axes[1][j].plot([p[1] for p in pts], [p[2] for p in pts], style, label=method)
        for r in swept:  # one recall-QPS curve per swept row and probe, nprobe by nprobe
            for kind in sorted({p.get("probe", "flat") for p in r["sweep"]}):
                pts = [p for p in r["sweep"] if p.get("probe", "flat") == kind]
                style = ("-" if r["system"] == "ebr" else "--") + ("o" if kind == "flat"
                                                                   else "^")
                axes[1][j].plot([p["qps"] for p in pts], [p["r@10"] for p in pts], style,
                                label=f"{r['method']} {r['bytes']} B, {kind}", markersize=3)
        axes[0][j].set_title(f"{name}: re-ranked recall@10 (C = {C_WIDE})")
        axes[0][j].set_xlabel("RAM bytes per vector")
        axes[1][j].set_xlabel(f"QPS (one thread, C = {C_WIDE}, nprobe swept)" if swept
                              else "QPS (one thread, C = 100)")
        if swept:
            axes[1][j].legend(fontsize=7)
        axes[1][j].set_xscale("log")
        for ax in axes[:, j]:
            ax.set_ylabel("recall@10 vs exact")
            ax.grid(alpha=0.3)
        axes[0][j].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _summary(rows: list[dict[str, Any]]) -> list[str]:
    """The goal, per set: ebr's best code at 16 bytes (Distill-VQ, BiDR, or the unsupervised
    codebooks a guard keeps: the row names it) against the best peer at 32."""
    lines = []
    key = f"rerank_r@10_C{C_WIDE}"
    for name in sorted({r["set"] for r in rows}):
        ok = [r for r in rows if r["set"] == name and key in r]
        learned = [r for r in ok if r["bytes"] == 16 and r["system"] == "ebr"]
        peers32 = [r for r in ok if r["bytes"] == 32 and r["system"] == "peer"]
        if not learned or not peers32:
            continue
        a = max(learned, key=lambda r: r[key])
        for label, pool in (("best peer", peers32),
                            ("best peer without spilling (one copy of each code)",
                             [r for r in peers32 if r["method"] != "scann_soar"])):
            if not pool:
                continue
            b = max(pool, key=lambda r: r[key])
            lines.append(f"- **{name}**, {label} at 32 B: {b['method']} {b[key]:.4f} "
                         f"({b['ram_B/vec']} B/vector, {b['qps']} QPS); ebr {a['method']} at "
                         f"16 B: {a[key]:.4f} ({a['ram_B/vec']} B/vector, {a['qps']} QPS) -> "
                         f"{'reached' if a[key] >= b[key] else 'not reached'} "
                         f"({a[key] - b[key]:+.4f}), QPS {a['qps'] / b['qps']:.2f}x")
        # the best recall any 32-byte peer reaches, at the table's nprobe or any swept one
        target = max(max([r[key]] + [p["r@10"] for p in r.get("sweep", [])]) for r in peers32)
        lines += _equal_recall(learned, peers32, target)
        for budget in sorted({r["bytes"] for r in ok}):
            at = [r for r in ok if r["bytes"] == budget]
            best = max(at, key=lambda r: r[key])
            be = max((r for r in at if r["system"] == "ebr"), key=lambda r: r[key], default=None)
            bp = max((r for r in at if r["system"] == "peer"), key=lambda r: r[key],
                     default=None)
            if be and bp:
                lines.append(f"  - {budget} B: best {best['method']} ({best[key]:.4f}); ebr "
                             f"{be['method']} {be[key]:.4f} vs peer {bp['method']} "
                             f"{bp[key]:.4f} ({be[key] - bp[key]:+.4f})")
    return lines


def _fastest(row: dict[str, Any], target: float, probe: str) -> dict[str, Any] | None:
    """The swept point of ``row`` with ``probe`` (any nprobe and C) with the most QPS whose
    re-ranked recall@10 reaches target."""
    pts = [p for p in row.get("sweep", []) if p.get("probe", "flat") == probe
           and p["r@10"] >= target]
    return max(pts, key=lambda p: p["qps"]) if pts else None


def _equal_recall(learned: list[dict[str, Any]], peers: list[dict[str, Any]],
                  target: float) -> list[str]:
    """QPS at equal recall: each row at its fastest swept nprobe and C that reaches ``target``,
    probe by probe (rows of the same probe compare: each probe's curves were measured back to
    back on the same built index)."""
    swept = [r for r in learned + peers if r.get("sweep")]
    if not swept:
        return []
    lines = [f"- **QPS at equal recall** (re-ranked recall@10 >= {target:.4f}, the best any "
             "32-byte peer reaches at any swept nprobe and C; each row at its fastest swept "
             "nprobe and C that reach it):"]
    probes = sorted({p.get("probe", "flat") for r in swept for p in r["sweep"]})
    for probe in probes:
        best: dict[str, tuple[float, str]] = {}
        for r in swept:
            mine = [p for p in r["sweep"] if p.get("probe", "flat") == probe]
            if not mine:
                continue
            side = "ebr" if r in learned else "peer"
            pt = _fastest(r, target, probe)
            if pt is None:
                lines.append(f"  - {probe} probe, {side} {r['method']} {r['bytes']} B: never "
                             f"reaches it (best {max(p['r@10'] for p in mine):.4f})")
                continue
            lines.append(f"  - {probe} probe, {side} {r['method']} {r['bytes']} B: "
                         f"{pt['qps']} QPS at nprobe {pt['nprobe']}, C = "
                         f"{pt.get('C', C_WIDE)} (recall@10 "
                         f"{pt['r@10']:.4f})")
            if pt["qps"] > best.get(side, (0.0, ""))[0]:
                best[side] = (pt["qps"], f"{r['method']} {r['bytes']} B")
        if len(best) == 2:
            (qe, ne), (qp, np_) = best["ebr"], best["peer"]
            lines.append(f"  - {probe} probe: ebr {ne} against the fastest peer, {np_}: "
                         f"**{qe / qp:.2f}x** its QPS at recall@10 >= {target:.4f}")
    return lines


def _sweep_table(rows: list[dict[str, Any]]) -> list[str]:
    swept = [r for r in rows if r.get("sweep")]
    if not swept:
        return []
    probes = sorted({p["nprobe"] for r in swept for p in r["sweep"]})
    md = ["", "## Recall against QPS: re-ranked recall@10 / QPS, by nprobe and C", "",
          "| set | bytes | method | probe | C | " + " | ".join(f"nprobe {p}" for p in probes)
          + " |", "|" + "---|" * (5 + len(probes))]
    for r in swept:
        for kind, c in sorted({(p.get("probe", "flat"), p.get("C", C_WIDE))
                               for p in r["sweep"]}):
            at = {p["nprobe"]: f"{p['r@10']:.4f} / {p['qps']:.0f}" for p in r["sweep"]
                  if (p.get("probe", "flat"), p.get("C", C_WIDE)) == (kind, c)}
            md.append(f"| {r['set']} | {r['bytes']} | {r['method']} | {kind} | {c} | "
                      + " | ".join(at.get(p, "") for p in probes) + " |")
    return md


def _method(value: str) -> str:
    name, _, budgets = value.partition(":")
    if name not in EBR + PEERS or (budgets and not all(b.isdigit() for b in budgets.split(","))):
        raise argparse.ArgumentTypeError(f"{value!r}: a method of {EBR + PEERS}, optionally "
                                         "with :B[,B...]")
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--sets", nargs="+",
                    default=["scifact", "siftsmall", "debian", "pydoc", "generator"])
    ap.add_argument("--bytes", type=int, nargs="+", default=[8, 16, 32, 48])
    ap.add_argument("--methods", nargs="+", default=EBR + PEERS, type=_method,
                    help=f"of {' '.join(EBR + PEERS)}; NAME:B[,B...] builds it at those "
                    "--bytes only (e.g. distill:16 rabitq:32)")
    ap.add_argument("--gen-n", type=int, default=1_000_000)
    ap.add_argument("--budget", type=float, default=120.0,
                    help="Distill-VQ / BiDR training time budget per build, seconds")
    ap.add_argument("--work", default=str(ROOT / "runs" / "frontier"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--name", default="frontier")
    ap.add_argument("--sweep-nprobe", type=int, nargs="+",
                    help="also measure re-ranked recall@10 and QPS at C = 200 at each of these "
                    "nprobe values (the recall-QPS curve; QPS at equal recall)")
    ap.add_argument("--probe", choices=["flat", "hnsw", "auto"], default="flat",
                    help="how every row picks its lists: flat (every centroid scored, faiss' "
                    "default) or hnsw (a graph over the centroids: ebr's probe, and the same "
                    "graph and beam swapped into the faiss peers; ScaNN keeps its tree) or "
                    "auto (ebr's default: its lists' points, ebr.quant.listpoints; the peers "
                    "score every centroid)")
    ap.add_argument("--sweep-probes", nargs="+", choices=["flat", "hnsw", "auto"],
                    help="with --sweep-nprobe: the probes each row's curve is measured with, "
                    "one after the other on the same built index (default: --probe)")
    ap.add_argument("--sweep-candidates", type=int, nargs="+",
                    help=f"with --sweep-nprobe: the C values each curve is measured at "
                    f"(default {C_WIDE}); QPS at equal recall takes each row's fastest point")
    ap.add_argument("--in-turns", action="store_true",
                    help="build every row of a set in one process first, then measure the "
                    f"rows' QPS in turns, point by point, best of {TURNS} passes (for QPS at equal "
                    "recall: the host's drift over a run falls on every row alike); the peers "
                    "share one copy of the dense vectors, written by the first (its build time "
                    "includes the copy, the others' do not)")
    ap.add_argument("--rows-from", nargs="+", help="write the tables from the JSON rows "
                    "runs printed (their logs), without building anything")
    ap.add_argument("--command", help="with --rows-from: the commands that printed the rows, "
                    "for the tables' header")
    args = ap.parse_args()
    cmd = " ".join(["python bench/bench_frontier.py", *sys.argv[1:]])
    if args.rows_from:  # re-render the tables of runs from the rows they printed
        rows = [json.loads(line) for f in args.rows_from
                for line in Path(f).read_text().splitlines() if line.startswith("{")]
        _write(rows, Path(args.out), args.name, args.command or cmd)
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if "generator" in args.sets:
        _generator(work, args.gen_n)
    rows: list[dict[str, Any]] = []
    ctx = get_context("spawn")
    for name in args.sets:
        if load(name, Path(args.data), work, args.gen_n) is None:
            print(f"{name}: data absent, skipped", flush=True)
            continue
        tasks = [{"set": name, "method": method, "bytes": budget, "data": args.data,
                  "work": str(work), "gen_n": args.gen_n, "budget": args.budget,
                  "sweep": args.sweep_nprobe, "probe": args.probe,
                  "sweep_c": args.sweep_candidates,
                  "sweep_probes": args.sweep_probes or [args.probe]}
                 for budget in args.bytes
                 for method in [m.split(":")[0] for m in args.methods
                                if ":" not in m or str(budget) in m.split(":")[1].split(",")]
                 if method != "bidr" or name in ("scifact", "debian", "pydoc")]
        batches = [tasks] if args.in_turns else [[t] for t in tasks]
        for batch in batches:
            with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                try:
                    rows += (pool.submit(run_in_turns, batch).result() if args.in_turns
                             else [pool.submit(run, batch[0]).result()])
                except Exception as e:  # noqa: BLE001 - one failed build is a row
                    for task in batch:
                        rows.append({**{k: task[k] for k in ("set", "method", "bytes")},
                                     "system": "ebr" if task["method"] in EBR else "peer",
                                     "skipped": f"{type(e).__name__}: {str(e)[:200]}"})
                        print(json.dumps(rows[-1]), flush=True)
    _write(rows, Path(args.out), args.name, cmd)
    return 0


def _progress(row: dict[str, Any]) -> str:
    """A row as the progress line a run prints: JSON without its per-query lists."""
    return json.dumps({k: v for k, v in row.items() if not k.endswith("_per_query")})


def _write(rows: list[dict[str, Any]], out: Path, name: str, cmd: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    turns = any(r.get("measured") == "in turns" for r in rows)
    meta = {"command": cmd, "cpus": os.cpu_count(),
            "k": K, "C": [C_SERVE, C_WIDE], "qps": "one thread, one query per call, "
            f"coarse + exact re-rank of C = {C_SERVE}, best of "
            + (f"{TURNS} passes, the rows in turns," if turns else "2 passes")
            + f" over {QPS_QUERIES} queries"}
    built = ("every row of a set built in one process, then all measured in turns, point by "
             "point" if turns else "every row built in its own process")
    from benchkit import paired_columns

    # each row's nDCG@10 at C = 200 against exact search's and the same bytes' opq row's
    paired_columns(rows, "nDCG@10_C200_per_query", "exact_nDCG@10_per_query",
                   lambda o: o["method"] == "opq")
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    exact = {r["set"]: r["exact_nDCG@10"] for r in rows if "exact_nDCG@10" in r}
    cols = ["set", "bytes", "method", "spec", "ram_B/vec", "fixed_MB", "coarse_r@100", "rerank_r@10_C100",
            "rerank_r@10_C200", "nDCG@10_C200", "nDCG_vs_opq", "nDCG_vs_exact", "coverage_r@10",
            "coverage_nDCG@10", "qps", "build_s", "skipped"]
    md = ["# Recall per byte: ebr's codes and the frontier's, side by side", "",
          f"`{cmd}` ({os.cpu_count()} cores; {built} in the run "
          f"that printed it; nprobe per set as in the table; {meta['qps']}; exact nDCG@10: "
          + (", ".join(f"{s} {v}" for s, v in exact.items()) or "-") + ")", "",
          "## The goal: ebr's best code at 16 bytes (the row names it) vs the best peer at 32",
          "",
          *_summary(rows), "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    md += _sweep_table(rows)
    md += ["", f"![recall per byte]({name}.png)"]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    if any("qps" in r for r in rows):
        _plot(rows, out / f"{name}.png")
    print("\n".join(md))  # noqa: T201 - a script's output


if __name__ == "__main__":
    raise SystemExit(main())
