"""``index_build evaluate``: held-out queries against an index directory.

Exact ground truth (brute force over the dense store), then the nprobe x candidates sweep,
coarse-only and re-ranked side by side, each nprobe with its ceiling (every document of the
probed lists re-ranked: what the IVF partition allows), optionally next to faiss IVFPQ +
IndexRefineFlat built from the same vectors, spec and seed. Writes JSON, Markdown and a
recall-vs-latency PNG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebr.errors import InputError, WritesUnsupportedError
from ebr.eval.report import write_report
from ebr.eval.sweep import (
    EbrSystem,
    EvalSet,
    FaissRefineSystem,
    Rows,
    System,
    ceiling_rows,
    exact_rows,
    operating_points,
    sweep,
)
from ebr.filters import parse_filter
from ebr.index.live import open_live
from ebr.index.reader import OpenIndex, open_index
from ebr.index.sharded import ShardedIndex, open_sharded
from ebr.io.manifest import read_manifest
from ebr.quant.probe import ProbeKind
from ebr.search.exact import exact_search
from ebr.search.live import LiveSearcher
from ebr.search.searcher import Searcher
from ebr.search.sharded import ShardedSearcher
from ebr.spec import SearchParams
from ebr.types import JsonObject

__all__ = ["evaluate_index"]

logger = logging.getLogger(__name__)


class _LiveRows:
    def __init__(self, searcher: LiveSearcher) -> None:
        self.searcher = searcher

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self.searcher.vectors(np.asarray(rows))


def _base_only_ok(searcher: Searcher | ShardedSearcher) -> bool:
    if isinstance(searcher, LiveSearcher):
        logger.warning("no faiss baseline for an index with logged writes: it would cover the "
                       "base only (compact first)")
        return False
    return True


def _searcher(oi: OpenIndex) -> Searcher:
    """The index as the service serves it: with the writes of its log, when it has any
    (read-only: evaluating never writes)."""
    try:
        live = open_live(oi, oi.path, writable=False)
    except WritesUnsupportedError:
        return Searcher(oi)
    if live.last_lsn == live.applied_lsn:
        return Searcher(oi)
    logger.info("evaluating with the log's writes: %s", live.stats())
    return LiveSearcher(live)


def evaluate_index(
    index_dir: str | Path | OpenIndex,
    xq: np.ndarray,
    *,
    query_ids: Sequence[str] | None = None,
    qrels: dict[str, dict[str, int]] | None = None,
    nprobes: Sequence[int] = (4, 16, 64),
    candidate_counts: Sequence[int] = (100, 200, 500),
    baseline: bool = False,
    k_max: int = 100,
    label: str = "ebr",
    progress: bool = False,
    target_recall: float | None = 0.95,
    probe: ProbeKind = "auto",
) -> tuple[list[JsonObject], JsonObject]:
    """Returns (rows, meta). ``qrels`` maps query id -> {external doc id: grade}. The index
    as the service serves it: a single index (with its log's writes), or a sharded one, its
    lists picked by ``probe`` (:func:`ebr.index.reader.open_index`).
    ``meta["operating_points"]``: the swept (nprobe, C) that no other beats on recall@10
    against exact search and p50 latency; ``meta["recommended"]`` (``recommended_point``):
    the least work with recall@10 >= ``target_recall`` (:func:`operating_points`), or why
    none reaches it."""
    if target_recall is not None and not 0.0 < target_recall <= 1.0:
        raise InputError(f"target_recall must be in (0, 1], got {target_recall!r}")
    sharded = None
    if isinstance(index_dir, OpenIndex):
        oi = index_dir
    elif read_manifest(Path(index_dir)).shards:
        sharded = open_sharded(index_dir, probe=probe)
        oi = sharded.shards[0]  # the build's manifest and query side: every shard's
    else:
        oi = open_index(index_dir, probe=probe)
    searcher: Searcher | ShardedSearcher = \
        ShardedSearcher(sharded) if sharded is not None else _searcher(oi)
    whole: OpenIndex | ShardedIndex = sharded if sharded is not None else oi
    xq = searcher.prepare_queries(xq)
    nprobes = sorted({min(p, oi.nlist) for p in nprobes})
    candidate_counts = sorted({min(c, searcher.ntotal) for c in candidate_counts})
    k_max = min(k_max, searcher.ntotal)

    t0 = time.perf_counter()
    # the exact reference scores what the re-rank scores: f_q(q) against the stored f_d(v)
    exact = searcher.exact(xq, k_max) if isinstance(searcher, LiveSearcher | ShardedSearcher) \
        else exact_search(searcher.dense_queries(xq), oi.dense, k_max, oi.metric,
                          progress=progress)
    gt_s = time.perf_counter() - t0
    per_query_qrels = None
    if qrels is not None:
        if query_ids is None:
            raise SystemExit("qrels need query ids (--query-ids) to match query rows")
        per_query_qrels = [qrels.get(str(q), {}) for q in query_ids]

    def row_to_ext(rows: np.ndarray) -> list[str | None]:
        return [None if x is None else str(x) for x in searcher.external_ids(rows)]

    ev = EvalSet(xq=xq, exact=exact, row_to_ext=row_to_ext, qrels=per_query_qrels,
                 xq_dense=searcher.dense_queries(xq))
    systems: list[System] = [EbrSystem(searcher, name=label)]
    base = _baseline(oi, whole) if baseline and _base_only_ok(searcher) else None
    if base is not None:
        systems.append(base)
    rows = [exact_rows(ev, searcher)]
    dense: Rows = _LiveRows(searcher) if isinstance(searcher, LiveSearcher) else whole.dense
    rows += sweep(systems, ev, dense, oi.metric, nprobes, candidate_counts, progress=progress)
    for ceiling in ceiling_rows(searcher, ev, nprobes, name=label):  # after its nprobe's rows
        at = max((i for i, r in enumerate(rows)
                  if r["system"] == label and r["nprobe"] == ceiling["nprobe"]),
                 default=len(rows) - 1)
        rows.insert(at + 1, ceiling)
    mem = whole.memory()
    meta: dict[str, Any] = {
        "index": str(whole.path), "spec": str(oi.spec), "metric": oi.metric.value,
        "ntotal": searcher.ntotal, "dim": oi.dim, "dense_dtype": oi.manifest.dense_dtype,
        "shards": None if sharded is None else len(sharded.shards),
        "codebooks": oi.manifest.codebooks.get("method"), "nq": int(len(xq)),
        "queries_with_qrels": None if per_query_qrels is None
        else int(sum(1 for q in per_query_qrels if q)),
        "ground_truth_seconds": round(gt_s, 3),
        "ram_bytes_per_vector": round(float(mem["coarse_ram_bytes_per_vector"]), 2),
        "dense_bytes_per_vector": round(float(mem["dense_bytes_per_vector"]), 2),
        "ram_fraction_of_dense": round(float(mem["ram_fraction_of_dense"]), 4),
        "probe": _probe_name(oi),
        "memory": mem,
        "ceiling": "stage 'ceiling': every document of the nprobe's lists re-ranked; no codes "
                   "or C pass its recall against exact search there (raise nprobe when the "
                   "re-ranked rows reach it)",
    }
    meta["operating_points"], pick = operating_points(rows, label, target_recall)
    if target_recall is not None:
        meta["recommended"] = _recommendation(pick, rows, label, target_recall)
        meta["recommended_point"] = pick
    if base is not None:
        meta["faiss_refine_ram_bytes_per_vector"] = round(base.ram_bytes / whole.ntotal, 2)
    return rows, meta


def _recommendation(pick: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]],
                    label: str, target: float) -> str:
    """The serving parameters to use for ``target`` recall@10, in words (the report's line)."""
    if pick is not None:
        return (f"nprobe {pick['nprobe']}, candidates {pick['candidates']}: recall@10 "
                f"{pick['exact_recall@10']:.4f} >= {target} at p50 {pick['p50_ms']:.3f} ms")
    ceilings = [r for r in rows if r["system"] == label and r["stage"] == "ceiling"]
    top = max(ceilings, key=lambda r: r["nprobe"])
    if top["exact_recall@10"] < target:
        return (f"none swept reaches recall@10 {target}: the probed lists cap it at "
                f"{top['exact_recall@10']:.4f} with nprobe {top['nprobe']}; sweep larger "
                "--nprobe")
    return (f"none swept reaches recall@10 {target}; nprobe {top['nprobe']}'s lists allow "
            f"{top['exact_recall@10']:.4f}: sweep larger --candidates")


def _baseline(oi: OpenIndex, whole: OpenIndex | ShardedIndex) -> FaissRefineSystem | None:
    """faiss IVFPQ + IndexRefineFlat built like the index (``oi``'s spec, seed, training) over
    all of ``whole``'s vectors, all in RAM; None for an index whose dense store holds BiDR
    tower outputs."""
    if oi.query_tower is not None:
        logger.warning("faiss refine baseline skipped: this index's dense store holds BiDR "
                       "tower outputs (compare against a build without towers instead)")
        return None
    t0 = time.perf_counter()
    params = oi.manifest.build["params"]
    vectors = np.asarray(oi.dense, dtype=np.float32) if whole is oi else \
        whole.dense[np.arange(whole.ntotal)]
    base = FaissRefineSystem(vectors, oi.spec, oi.metric,
                             seed=params["seed"], niter=params["kmeans_niter"],
                             train_size=params["train_size"])
    logger.info("faiss baseline built in %.1f s", time.perf_counter() - t0)
    return base


def _probe_name(oi: OpenIndex) -> str:
    """How the searched index picks a query's lists."""
    probe = oi.probe
    if probe is None:
        return "centroids (every one scored)"
    if probe.points is not None:
        return f"list points ({probe.points.per_list} per list, rank {probe.points.rank})"
    return "a graph over the centroids"


def _filtering(index_dir: str | Path) -> LiveSearcher | ShardedSearcher:
    """The index as served, for filtered search: its living view, or its shards."""
    if read_manifest(Path(index_dir)).shards:
        return ShardedSearcher(open_sharded(index_dir))
    oi = open_index(index_dir)
    return LiveSearcher(open_live(oi, oi.path, writable=False))


def evaluate_filtered(index_dir: str | Path, xq: np.ndarray, raw_filter: object, *,
                      nprobes: Sequence[int] = (16,), candidate_counts: Sequence[int] = (100,),
                      k: int = 10) -> tuple[list[JsonObject], JsonObject]:
    """Filtered search over the index as served (single, living or sharded), per (nprobe,
    candidates): recall@k against the exact top-k among the matching documents (every match
    scored), the share of queries with min(k, matches) hits, latency. (rows, meta)."""
    searcher = _filtering(index_dir)
    f = parse_filter(raw_filter, searcher.fields())
    xq = searcher.prepare_queries(xq)
    nlist, n = searcher.index.nlist, max(searcher.ntotal, 1)
    exact_params = SearchParams(k=min(k, n), nprobe=1, candidates=min(k, n))
    truth, c = [], 0
    for i in range(len(xq)):
        res, _, c = searcher.search_filtered(xq[i:i + 1], exact_params, f, exact=True)
        truth.append(set(res.ids[0][res.ids[0] >= 0].tolist()))
    want = min(k, c)
    out: list[JsonObject] = []
    for nprobe in sorted({min(p, nlist) for p in nprobes}):
        for cand in sorted({min(cc, n) for cc in candidate_counts}):
            params = SearchParams(k=min(k, n), nprobe=nprobe, candidates=max(cand, min(k, n)))
            lat, got = [], []
            for i in range(len(xq)):
                t0 = time.perf_counter()
                res, st, _ = searcher.search_filtered(xq[i:i + 1], params, f)
                lat.append(time.perf_counter() - t0)
                got.append(set(res.ids[0][res.ids[0] >= 0].tolist()))
            out.append({"system": "ebr-filtered", "stage": "reranked", "nprobe": nprobe,
                        "candidates": params.candidates, "matches": c,
                        f"exact_recall@{k}": float(np.mean(
                            [len(g & t) / max(want, 1) for g, t in zip(got, truth, strict=True)])),
                        "full_k_share": float(np.mean([len(g) == want for g in got])),
                        "p50_ms": 1e3 * float(np.median(lat))})
    meta: JsonObject = {"index": str(index_dir), "filter": raw_filter, "matches": c,
                        "recall": "against the exact top-k among the matching documents",
                        "selectivity": c / n, "queries": len(xq)}
    return out, meta


def report(out_dir: Path, name: str, title: str,
           evaluation: tuple[list[JsonObject], JsonObject]) -> dict[str, Path]:
    """Write an :func:`evaluate_index` result as JSON + Markdown (+ PNG) under ``out_dir``."""
    rows, meta = evaluation
    meta = {"title": title, **meta}
    return write_report(out_dir, name, meta, rows)
