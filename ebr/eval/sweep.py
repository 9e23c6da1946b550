"""Build once, sweep search parameters, one row per operating point (ann-benchmarks ``runner``).

Each row measures one system at one ``(nprobe, candidates)``, coarse-only or re-ranked: recall
against exact search at 1/10/100, the label metrics when qrels are given, per-query latency
percentiles (queries one at a time, as a server sees them) and batch QPS. A ``ceiling`` row per
nprobe gives the same figures with every document of the probed lists re-ranked: its recall
against exact search is the IVF partition's cap, which no codes and no C pass at that nprobe
(its label figures, exact search's ranking kept to those lists, are no bound).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import faiss
import numpy as np
from tqdm.auto import tqdm

from ebr.eval.metrics import label_metrics, recall_vs_exact, recall_vs_exact_tolerant
from ebr.metric import Metric, exact_scores, faiss_scores_to_ebr, normalize_rows
from ebr.quant.additive import lift_rq
from ebr.quant.faiss_index import coarse_ram_bytes, ivf_params
from ebr.quant.trainers import KMeansTrainer
from ebr.spec import IndexSpec, SearchParams
from ebr.types import JsonObject, SearchResult, SearchStats

__all__ = ["Searches", "System", "EbrSystem", "FaissRefineSystem", "EvalSet", "sweep", "exact_rows",
           "ceiling_rows", "operating_points"]

logger = logging.getLogger(__name__)


class Searches(Protocol):
    """What the sweep asks of ebr's searcher: a single, living or sharded index alike."""

    def search(self, xq: np.ndarray, params: SearchParams
               ) -> tuple[SearchResult, SearchStats]: ...

    def exact(self, xq: np.ndarray, k: int) -> SearchResult: ...

    def probed(self, xq: np.ndarray, rows: np.ndarray, nprobe: int) -> np.ndarray: ...


class System(Protocol):
    name: str

    def search(self, xq: np.ndarray, k: int, nprobe: int, candidates: int,
               rerank: bool) -> SearchResult: ...


@dataclass
class EbrSystem:
    """ebr's two-stage search (codes in RAM, dense rows from disk)."""

    searcher: Searches
    name: str = "ebr"

    def search(self, xq: np.ndarray, k: int, nprobe: int, candidates: int,
               rerank: bool) -> SearchResult:
        res, _ = self.searcher.search(xq, SearchParams(k=k, nprobe=nprobe, candidates=candidates,
                                                       rerank=rerank))
        return res


class FaissRefineSystem:
    """The peer: faiss IndexIVFPQ (IVF-RQ / IVF-LSQ for those specs) in IndexRefineFlat, every
    vector in RAM.

    Trained with the same spec, seed and k-means iterations as ebr's k-means codebooks;
    ``k_factor = candidates / k``.
    """

    def __init__(self, xb: np.ndarray, spec: IndexSpec, metric: Metric, seed: int = 1234,
                 niter: int = 20, train_size: int = 100_000, normalize: bool = False) -> None:
        from ebr.io.vecs import sample_rows

        xb = np.ascontiguousarray(xb, dtype=np.float32)
        if normalize:
            xb = normalize_rows(xb)
        self.normalize = normalize
        self.metric = metric
        base = KMeansTrainer(niter=niter).train_index(xb[sample_rows(len(xb), train_size, seed)],
                                                spec, metric, seed)
        self.index = faiss.IndexRefineFlat(base)  # must wrap before adding (design notes)
        self.index.add(xb)
        self.base = base
        # RQ / LSQ: faiss' own IVF-RQ / IVF-LSQ scan (ebr serves the same codes through lift_rq)
        self.name = (f"faiss IVF{'RQ' if spec.is_rq else 'LSQ'}+RefineFlat" if spec.is_additive
                     else "faiss IVFPQ+RefineFlat")
        # the refine store holds every vector; the base index as ebr counts its own
        self.ram_bytes = xb.nbytes + coarse_ram_bytes(lift_rq(base))["coarse_ram_bytes"]

    def search(self, xq: np.ndarray, k: int, nprobe: int, candidates: int,
               rerank: bool) -> SearchResult:

        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if self.normalize:
            xq = normalize_rows(xq)
        if not rerank:
            D, ids = self.base.search(xq, k, params=ivf_params(self.base, nprobe))
        else:
            p = faiss.IndexRefineSearchParameters()
            inner = ivf_params(self.base, nprobe)
            p.base_index_params = inner
            p.k_factor = candidates / k
            D, ids = self.index.search(xq, k, params=p)
        return SearchResult(ids.astype(np.int64), faiss_scores_to_ebr(D, self.metric))


@dataclass(frozen=True)
class EvalSet:
    """Held-out queries, their exact top-k over the same dense vectors, optional qrels."""

    xq: np.ndarray  # float32 [nq, d], already normalised if the index normalises
    exact: SearchResult  # exact top-k_max (internal rows)
    row_to_ext: Any  # callable rows -> external ids
    qrels: Sequence[Mapping[str, int]] | None = None  # per query: {external id: grade}
    xq_dense: np.ndarray | None = None  # queries as the dense store scores them (query tower)

    @property
    def dense_queries(self) -> np.ndarray:
        return self.xq if self.xq_dense is None else self.xq_dense

    @property
    def k_max(self) -> int:
        return int(self.exact.ids.shape[1])


def _latencies(system: System, xq: np.ndarray, k: int, nprobe: int, candidates: int,
               rerank: bool) -> np.ndarray:
    out = np.empty(len(xq))
    for i in range(len(xq)):
        t0 = time.perf_counter()
        system.search(xq[i:i + 1], k, nprobe, candidates, rerank)
        out[i] = time.perf_counter() - t0
    return out


def _row(ev: EvalSet, res: SearchResult, exact_of: np.ndarray) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k in (1, 10, 100):
        if k <= ev.k_max:
            row[f"exact_recall@{k}"] = recall_vs_exact(res.ids, ev.exact.ids, k)
    row["exact_recall@10_tol"] = recall_vs_exact_tolerant(exact_of, ev.exact.scores, 10)
    if ev.qrels is not None:
        ranked = [[x for x in ev.row_to_ext(r) if x is not None] for r in res.ids]
        row.update(label_metrics(ranked, ev.qrels))
    return row


class Rows(Protocol):
    """Dense rows by row id: the store itself, or a living index's base + delta."""

    def __getitem__(self, rows: np.ndarray) -> np.ndarray: ...


def _exact_scores_of(xq: np.ndarray, ids: np.ndarray, dense: Rows,
                     metric: Metric) -> np.ndarray:
    """Exact scores of returned ids (for the tie-tolerant recall)."""
    out = np.full(ids.shape, -np.inf, dtype=np.float32)
    for i in range(len(xq)):
        valid = ids[i] >= 0
        if valid.any():
            out[i, valid] = exact_scores(xq[i:i + 1], dense[ids[i, valid]], metric)[0]
    return out


def sweep(systems: Sequence[System], ev: EvalSet, dense: Rows, metric: Metric,
          nprobes: Sequence[int], candidate_counts: Sequence[int], k_latency: int = 10,
          progress: bool = False) -> list[JsonObject]:
    """Evaluate every system at every (nprobe, candidates), coarse-only and re-ranked."""
    rows: list[JsonObject] = []
    grid = [(s, p, c, r) for s in systems for p in nprobes for c in candidate_counts for r in (False, True)]
    for system, nprobe, kc, rr in tqdm(grid, desc="sweep", disable=not progress):
        k = min(ev.k_max, kc)
        system.search(ev.xq[:8], k, nprobe, kc, rr)  # warm-up: first touch of pages, threads
        t0 = time.perf_counter()
        res = system.search(ev.xq, k, nprobe, kc, rr)
        batch_s = time.perf_counter() - t0
        lat = _latencies(system, ev.xq, min(k_latency, kc), nprobe, kc, rr)
        row: dict[str, Any] = {"system": system.name, "stage": "reranked" if rr else "coarse",
                               "nprobe": nprobe, "candidates": kc}
        row.update(_row(ev, res, _exact_scores_of(ev.dense_queries, res.ids, dense, metric)))
        row.update({"p50_ms": 1e3 * float(np.percentile(lat, 50)),
                    "p95_ms": 1e3 * float(np.percentile(lat, 95)),
                    "p99_ms": 1e3 * float(np.percentile(lat, 99)),
                    "qps_single": len(lat) / float(lat.sum()),
                    "qps_batch": len(ev.xq) / batch_s})
        rows.append(row)
        logger.debug("%s", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    return rows


def exact_rows(ev: EvalSet, searcher: Searches) -> JsonObject:
    """The reference row: brute force over the dense store."""
    lat = np.empty(len(ev.xq))
    for i in range(len(ev.xq)):
        t0 = time.perf_counter()
        searcher.exact(ev.xq[i:i + 1], 10)
        lat[i] = time.perf_counter() - t0
    row: dict[str, Any] = {"system": "exact", "stage": "exact", "nprobe": None, "candidates": None}
    row.update(_row(ev, ev.exact, ev.exact.scores))
    row.update({"p50_ms": 1e3 * float(np.percentile(lat, 50)),
                "p95_ms": 1e3 * float(np.percentile(lat, 95)),
                "p99_ms": 1e3 * float(np.percentile(lat, 99)),
                "qps_single": len(lat) / float(lat.sum()), "qps_batch": None})
    return row


def ceiling_rows(searcher: Searches, ev: EvalSet, nprobes: Sequence[int],
                 name: str = "ebr") -> list[JsonObject]:
    """Per nprobe, the figures of re-ranking every document of the probed lists (stage
    ``ceiling``), from the exact top-``k_max`` and which of it the lists hold
    (:meth:`Searcher.probed`): recall@1/10/100 against exact search and, with qrels, nDCG@10,
    MRR@10 and recall@10 of the exact ranking restricted to those lists. ``ceiling_complete``:
    the share of queries with at least 10 of their exact top-``k_max`` in the probed lists (the
    others' label figures rank fewer than 10 documents)."""
    rows: list[JsonObject] = []
    for nprobe in nprobes:
        held = searcher.probed(ev.xq, ev.exact.ids, nprobe)
        row: dict[str, Any] = {"system": name, "stage": "ceiling", "nprobe": nprobe,
                               "candidates": "all probed"}
        for k in (1, 10, 100):
            if k <= ev.k_max:
                row[f"exact_recall@{k}"] = float(held[:, :k].mean())
        row["ceiling_complete"] = float(np.mean(held.sum(1) >= min(10, ev.k_max)))
        if ev.qrels is not None:
            ranked = [[x for x in ev.row_to_ext(ids[h][:10]) if x is not None]
                      for ids, h in zip(ev.exact.ids, held, strict=True)]
            row.update(label_metrics(ranked, ev.qrels, ks=(10,)))
        rows.append(row)
    return rows


def _num(v: object) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    raise TypeError(f"expected a number, got {v!r}")


def operating_points(rows: Sequence[Mapping[str, object]], system: str,
                     target: float | None = None, measure: str = "exact_recall@10",
                     cost: str = "p50_ms") -> tuple[list[dict[str, float]], dict[str, float] | None]:
    """The re-ranked rows of ``system`` no other of its rows beats (faiss' autotune
    "operating points"): {nprobe, candidates, measure, cost} sorted by ``cost``, each with a
    higher ``measure`` than every cheaper one. And the row to serve for ``target`` (None: none
    reaches it, or no target): of the rows that reach it, those for which no other reaching
    row probes as few lists with as few candidates or fewer (more of either is more work, so
    only these can be the fastest), then the lowest ``cost`` among them; a measured latency
    decides only between rows that trade nprobe against C, never against its own noise."""
    if target is not None and not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target!r}")
    mine = sorted(({"nprobe": int(_num(r["nprobe"])), "candidates": int(_num(r["candidates"])),
                    measure: _num(r[measure]), cost: _num(r[cost])}
                   for r in rows if r.get("system") == system and r.get("stage") == "reranked"
                   and r.get(cost) is not None and r.get(measure) is not None),
                  key=lambda r: (r[cost], -r[measure]))
    frontier: list[dict[str, float]] = []
    for r in mine:
        if not frontier or r[measure] > frontier[-1][measure]:
            frontier.append(r)
    if target is None:
        return frontier, None
    reach = [r for r in mine if r[measure] >= target]
    least = [r for r in reach if not any(
        o is not r and o["nprobe"] <= r["nprobe"] and o["candidates"] <= r["candidates"]
        and (o["nprobe"], o["candidates"]) != (r["nprobe"], r["candidates"]) for o in reach)]
    return frontier, min(least, key=lambda r: r[cost], default=None)
