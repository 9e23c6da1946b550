"""Search over a sharded index: fan out to the shards, merge exactly.

Each shard returns its coarse top-C with their coarse and exact scores; the merge keeps the
global top-C by coarse score, then the top-k of those by exact score. That is exactly what one
index built from the same codebooks returns (ties aside), because every shard probes the same
lists with the same codes. Shards are reached in process (:class:`LocalShard`) or through any
backend with the same two calls (the Ray Serve router, ``service.ray_serve``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ebr.errors import InputError, SearchParamError
from ebr.index.reader import OpenIndex
from ebr.index.sharded import ShardedIndex
from ebr.search.rerank import rerank, topk
from ebr.search.searcher import ResultRows, Searcher
from ebr.spec import SearchParams
from ebr.types import SearchResult, SearchStats

__all__ = ["Answer", "merge", "shard_answer", "LocalShard", "ShardedSearcher"]


def merge(parts: Sequence[Sequence[np.ndarray]], k: int, candidates: int) -> SearchResult:
    """Exact merge of per-shard answers (global ids, coarse scores, exact scores), each
    [nq, c]: the global top-``candidates`` by coarse score, then their top-``k`` by exact score."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    coarse = np.concatenate([p[1] for p in parts], axis=1)
    exact = np.concatenate([p[2] for p in parts], axis=1)
    coarse = np.where(ids >= 0, coarse, -np.inf)
    # positions of the global top-candidates by (coarse score desc, id asc), as topk orders them
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -coarse), axis=1)
    in_top = np.zeros(ids.shape, dtype=bool)
    np.put_along_axis(in_top, order[:, :candidates], True, axis=1)
    in_top &= ids >= 0
    return SearchResult(*topk(np.where(in_top, exact, -np.inf), np.where(in_top, ids, -1), k))


Answer = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def shard_answer(oi: OpenIndex, start: int, xq: np.ndarray, params: SearchParams) -> Answer:
    """One shard's part: its coarse top-C (global ids), their coarse scores, their exact
    scores (-inf without ``rerank``), and [coarse seconds, re-rank seconds]."""
    s = Searcher(oi)
    kc = min(params.candidates, oi.ntotal)
    with oi.using():
        t0 = time.perf_counter()
        cand, cscores = s.coarse(xq, kc, params.nprobe)
        t1 = time.perf_counter()
        if not params.rerank:
            valid = cand >= 0
            return (np.where(valid, cand + start, -1), np.where(valid, cscores, -np.inf),
                    np.full(cand.shape, -np.inf, np.float32), np.array([t1 - t0, 0.0]))
        res_ids, res_sc, _ = rerank(s.dense_queries(xq), cand, oi.dense, oi.metric, kc,
                                    padded_at_end=True)
        t2 = time.perf_counter()
    res = SearchResult(res_ids, res_sc)  # every candidate, with its exact score
    order = np.argsort(np.where(res.ids >= 0, res.ids, np.iinfo(np.int64).max), axis=1)
    r_ids = np.take_along_axis(res.ids, order, 1)
    r_sc = np.take_along_axis(res.scores, order, 1)
    c_order = np.argsort(np.where(cand >= 0, cand, np.iinfo(np.int64).max), axis=1)
    c_ids = np.take_along_axis(cand, c_order, 1)
    c_sc = np.take_along_axis(cscores, c_order, 1)
    same = (c_ids == r_ids) | (c_ids < 0)
    if not same.all():
        raise SearchParamError("internal: re-rank candidates differ from the coarse ones")
    valid = c_ids >= 0
    return (np.where(valid, c_ids + start, -1), np.where(valid, c_sc, -np.inf),
            np.where(valid, r_sc, -np.inf), np.array([t1 - t0, t2 - t1]))


class ShardBackend(Protocol):
    """How the merge reaches one shard: in process (:class:`LocalShard`) or a Ray Serve
    deployment (``service.ray_serve``)."""

    def answer(self, xq: np.ndarray, params: SearchParams) -> Answer: ...

    def exact(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


#: For a sharded index, its backends in shard order (the service's ``shard_backends``).
ShardBackends = Callable[[ShardedIndex], Sequence[ShardBackend]]


class LocalShard:
    """A shard answered in this process (the Ray Serve deployment wraps the same calls)."""

    def __init__(self, oi: OpenIndex, start: int) -> None:
        self.oi, self.start = oi, start

    def answer(self, xq: np.ndarray, params: SearchParams) -> Answer:
        return shard_answer(self.oi, self.start, xq, params)

    def exact(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        res = Searcher(self.oi).exact(xq, min(k, self.oi.ntotal))
        return np.where(res.ids >= 0, res.ids + self.start, -1), res.scores


class ShardedSearcher(ResultRows):
    """Fan-out over the shards of a :class:`ShardedIndex`, exact merge; the same interface
    as :class:`~ebr.search.searcher.Searcher`, so the service serves either. ``backends``:
    one per shard, in shard order (default: :class:`LocalShard`, in process)."""

    index: ShardedIndex

    def __init__(self, index: ShardedIndex, backends: Sequence[ShardBackend] | None = None
                 ) -> None:
        self.index = index
        self.backends = list(backends) if backends is not None else [
            LocalShard(oi, st) for oi, st in zip(index.shards, index.starts, strict=True)]
        if len(self.backends) != len(index.shards):
            raise InputError(f"{len(self.backends)} backends for {len(index.shards)} shards")

    def prepare_queries(self, xq: np.ndarray) -> np.ndarray:
        return Searcher(self.index.shards[0]).prepare_queries(xq)


    def search(self, xq: np.ndarray, params: SearchParams) -> tuple[SearchResult, SearchStats]:
        params.validate(self.index.nlist, self.index.ntotal)
        xq = self.prepare_queries(xq)
        parts = [b.answer(xq, params) for b in self.backends]
        if params.rerank:
            res = merge(parts, params.k, params.candidates)
        else:  # coarse-only: the global top-k by coarse score
            ids = np.concatenate([p[0] for p in parts], axis=1)
            coarse = np.concatenate([p[1] for p in parts], axis=1)
            res = SearchResult(*topk(np.where(ids >= 0, coarse, -np.inf), ids, params.k))
        n_cand = int(sum((p[0] >= 0).sum() for p in parts))
        rows = n_cand if params.rerank else 0
        seconds = np.sum([p[3] for p in parts], axis=0)  # shards answer one after another
        stats = SearchStats(nq=len(xq), nprobe=params.nprobe, candidates=params.candidates,
                            found=n_cand, reranked=rows, dense_rows_read=rows,
                            dense_bytes_read=rows * self.index.dim
                            * self.index.shards[0].dense.dtype.itemsize,
                            coarse_seconds=float(seconds[0]), rerank_seconds=float(seconds[1]),
                            per_query_found=sum((p[0] >= 0).sum(axis=1) for p in parts))
        return res, stats

    def exact(self, xq: np.ndarray, k: int) -> SearchResult:
        if not isinstance(k, int) or not 1 <= k <= self.index.ntotal:
            raise SearchParamError(f"k must be in [1, {self.index.ntotal}], got {k!r}")
        xq = self.prepare_queries(xq)
        parts = [b.exact(xq, k) for b in self.backends]
        ids = np.concatenate([p[0] for p in parts], axis=1)
        return SearchResult(*topk(np.concatenate([p[1] for p in parts], axis=1), ids, k))
