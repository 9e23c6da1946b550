"""Recall against exact search on sampled documents, for an index as it is served.

Qdrant's "ANN recall" check: no query set needed. ``queries`` documents drawn at random (a
seeded draw) are searched for with their own stored vectors; each one's exact top-k (brute
force over every dense vector) is the truth, with the document itself left out of both lists,
since finding itself says nothing. Per nprobe: recall@k of the two-stage search at the given
candidate count, and its p50 latency, one query at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ebr.errors import SearchParamError
from ebr.spec import SearchParams
from ebr.types import JsonObject, SearchResult, SearchStats

__all__ = ["sampled_recall", "default_nprobes"]


class _Index(Protocol):
    @property
    def ntotal(self) -> int: ...

    @property
    def nlist(self) -> int: ...


class _Searcher(Protocol):
    @property
    def index(self) -> _Index: ...

    @property
    def ntotal(self) -> int: ...

    def vectors(self, rows: np.ndarray) -> np.ndarray: ...

    def search(self, xq: np.ndarray, params: SearchParams
               ) -> tuple[SearchResult, SearchStats]: ...

    def exact(self, xq: np.ndarray, k: int) -> SearchResult: ...


def default_nprobes(nlist: int, points: int = 7) -> list[int]:
    """Powers of two from 1 to nlist (nlist itself last), at most ``points`` of them."""
    ps = sorted({min(2 ** i, nlist) for i in range(int(np.log2(max(nlist, 1))) + 2)})
    if len(ps) > points:
        keep = np.unique(np.round(np.linspace(0, len(ps) - 1, points)).astype(int))
        ps = [ps[i] for i in keep]
    return ps


def _without(ids: np.ndarray, own: int, k: int) -> set[int]:
    return set(ids[(ids >= 0) & (ids != own)][:k].tolist())


def sampled_recall(searcher: _Searcher, *, queries: int = 50, k: int = 10,
                   candidates: int = 100, nprobes: Sequence[int] | None = None,
                   seed: int = 0) -> tuple[list[JsonObject], JsonObject]:
    """(rows: nprobe, candidates, recall@k, p50_ms per nprobe; meta) (module docstring)."""
    n_rows, n_docs = searcher.index.ntotal, searcher.ntotal
    if not 1 <= queries <= n_rows:
        raise SearchParamError(f"queries must be in [1, {n_rows}], got {queries}")
    if not 1 <= k < n_docs:
        raise SearchParamError(f"k must be in [1, {n_docs - 1}], got {k}")
    t_start = time.perf_counter()
    rows = np.sort(np.random.default_rng(seed).choice(n_rows, size=queries, replace=False))
    xq = searcher.vectors(rows)
    truth = searcher.exact(xq, k + 1)
    kc = min(max(candidates, k + 1), n_docs)
    out: list[JsonObject] = []
    for nprobe in nprobes or default_nprobes(searcher.index.nlist):
        params = SearchParams(k=k + 1, nprobe=int(nprobe), candidates=kc)
        lat, hits = [], 0
        for i in range(queries):
            t0 = time.perf_counter()
            res, _ = searcher.search(xq[i:i + 1], params)
            lat.append(time.perf_counter() - t0)
            want = _without(truth.ids[i], int(rows[i]), k)
            hits += len(_without(res.ids[0], int(rows[i]), k) & want)
        out.append({"nprobe": int(nprobe), "candidates": kc,
                    f"recall@{k}": round(hits / (queries * k), 4),
                    "p50_ms": round(1e3 * float(np.median(lat)), 3)})
    meta: JsonObject = {"queries": queries, "k": k, "seed": seed,
                        "truth": "exact top-k of each sampled document's own vector, the "
                                 "document itself left out",
                        "seconds": round(time.perf_counter() - t_start, 3)}
    return out, meta
