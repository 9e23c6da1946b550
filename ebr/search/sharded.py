"""Search over a sharded index: fan out to the shards, merge exactly.

Each shard returns its coarse top-C with their coarse and exact scores; the merge keeps the
global top-C by coarse score, then the top-k of those by exact score. That is exactly what one
index built from the same codebooks returns (ties aside), because every shard probes the same
lists with the same codes. Shards are reached in process (:class:`LocalShard`) or through any
backend with the same calls (the Ray Serve router, ``service.ray_serve``).

A filtered search (``ebr.filters``) runs each shard's own planner over its own payloads
(``LiveSearcher.search_filtered``: min(k, c_s) hits from c_s matches) and keeps the global
top-k of those by exact score: min(k, sum of c_s) hits, as filtered brute force over the whole
index returns when every shard scores its matches exactly.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ebr.errors import InputError, SearchParamError
from ebr.filters import Filter
from ebr.index.docs import DocStore
from ebr.index.live import open_live
from ebr.index.reader import OpenIndex
from ebr.index.sharded import ShardedIndex
from ebr.search.live import LiveSearcher
from ebr.search.rerank import rerank, topk
from ebr.search.searcher import ResultRows, Searcher
from ebr.spec import SearchParams
from ebr.types import JsonObject, SearchResult, SearchStats

__all__ = ["Answer", "FilteredAnswer", "merge", "shard_answer", "LocalShard",
           "ShardedSearcher"]


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
                                    padded_at_end=True, prefetch=oi.prefetch)
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


#: One shard's filtered answer: its hits (global ids, -1 padded) and their scores [nq, k_s],
#: [coarse s, re-rank s, candidates found, dense rows read, nprobe used (0: exact plan)], and
#: the filter's exact count c_s among the shard's documents.
FilteredAnswer = tuple[np.ndarray, np.ndarray, np.ndarray, int]


class ShardBackend(Protocol):
    """How the merge reaches one shard: in process (:class:`LocalShard`) or a Ray Serve
    deployment (``service.ray_serve``)."""

    def answer(self, xq: np.ndarray, params: SearchParams) -> Answer: ...

    def exact(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def filtered(self, xq: np.ndarray, params: SearchParams, f: Filter, exact: bool
                 ) -> FilteredAnswer: ...


#: For a sharded index, its backends in shard order (the service's ``shard_backends``).
ShardBackends = Callable[[ShardedIndex], Sequence[ShardBackend]]


class LocalShard:
    """A shard answered in this process (the Ray Serve deployment wraps the same calls)."""

    def __init__(self, oi: OpenIndex, start: int) -> None:
        self.oi, self.start = oi, start
        self._filtering: LiveSearcher | None = None  # opened at the first filter
        self._lock = threading.Lock()

    def answer(self, xq: np.ndarray, params: SearchParams) -> Answer:
        return shard_answer(self.oi, self.start, xq, params)

    def exact(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        res = Searcher(self.oi).exact(xq, min(k, self.oi.ntotal))
        return np.where(res.ids >= 0, res.ids + self.start, -1), res.scores

    def filtered(self, xq: np.ndarray, params: SearchParams, f: Filter, exact: bool
                 ) -> FilteredAnswer:
        """This shard's filtered search (its own planner, its own payloads)."""
        with self._lock:
            if self._filtering is None:  # a shard takes no writes: a read-only view
                self._filtering = LiveSearcher(open_live(self.oi, self.oi.path,
                                                         writable=False))
            searcher = self._filtering
        n = max(self.oi.ntotal, 1)
        mine = dataclasses.replace(params, k=min(params.k, n),
                                   candidates=min(params.candidates, n))
        res, st, c = searcher.search_filtered(xq, mine, f, exact=exact)
        return (np.where(res.ids >= 0, res.ids + self.start, -1), res.scores,
                np.array([st.coarse_seconds, st.rerank_seconds, st.found, st.dense_rows_read,
                          st.nprobe], dtype=np.float64), c)


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
        self._docs: list[DocStore | None] | None = None  # opened at the first use
        self._docs_lock = threading.Lock()

    def docs(self) -> list[DocStore | None]:
        """Each shard's document table (None where a shard was built without one)."""
        with self._docs_lock:
            if self._docs is None:
                self._docs = [DocStore(oi.path / oi.manifest.docs, oi.manifest.id_kind)
                              if oi.manifest.docs else None for oi in self.index.shards]
            return self._docs

    def fields(self) -> dict[str, str]:
        """The filterable payload fields {name: kind} (one build: every shard has them)."""
        first = self.docs()[0]
        return first.fields() if first is not None else {}

    def payloads(self, rows: Sequence[int]) -> dict[int, JsonObject | None] | None:
        docs = self.docs()
        if any(d is None for d in docs):
            return None
        rows = [int(r) for r in rows if 0 <= r < self.index.ntotal]
        where = self.index.locate(np.array(rows, dtype=np.int64))
        texts: dict[int, str | None] = {}
        for s in np.unique(where).tolist():
            start = self.index.starts[s]
            local = [r - start for r, w in zip(rows, where.tolist(), strict=True) if w == s]
            texts.update({r + start: t for r, t in
                          docs[s].payload_texts(local).items()})
        return {r: (json.loads(t) if t else None) for r, t in
                ((r, texts.get(r)) for r in rows)}

    def prepare_queries(self, xq: np.ndarray) -> np.ndarray:
        return Searcher(self.index.shards[0]).prepare_queries(xq)

    def dense_queries(self, xq: np.ndarray) -> np.ndarray:
        """The queries scored against the dense stores (one build: every shard's tower)."""
        return Searcher(self.index.shards[0]).dense_queries(xq)

    def probed(self, xq: np.ndarray, rows: np.ndarray, nprobe: int) -> np.ndarray:
        """:meth:`Searcher.probed` over global rows: each shard's in its own (shared) lists."""
        xq = self.prepare_queries(xq)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 2 or rows.shape[0] != xq.shape[0]:
            raise InputError(f"rows must be [{xq.shape[0]}, r], got {list(rows.shape)}")
        if rows.size and int(rows.max()) >= self.index.ntotal:
            raise InputError(f"rows must be < {self.index.ntotal}, got {int(rows.max())}")
        SearchParams(k=1, nprobe=nprobe, candidates=1).validate(self.index.nlist,
                                                                max(self.index.ntotal, 1))
        where = self.index.locate(np.maximum(rows, 0))
        out = np.zeros(rows.shape, dtype=bool)
        for s, (oi, start) in enumerate(zip(self.index.shards, self.index.starts, strict=True)):
            mine = (rows >= 0) & (where == s)
            if mine.any():
                out |= Searcher(oi).probed(xq, np.where(mine, rows - start, -1), nprobe)
        return out

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

    def search_filtered(self, xq: np.ndarray, params: SearchParams, f: Filter,
                        exact: bool = False) -> tuple[SearchResult, SearchStats, int]:
        """Filtered search over every shard (module docstring): min(k, c) hits per query, c
        the filter's exact count over the index (returned too)."""
        params.validate(self.index.nlist, self.index.ntotal)
        xq = self.prepare_queries(xq)
        parts = [b.filtered(xq, params, f, exact) for b in self.backends]
        ids, scores = topk(np.concatenate([p[1] for p in parts], axis=1),
                           np.concatenate([p[0] for p in parts], axis=1), params.k)
        c = int(sum(p[3] for p in parts))
        tot = np.sum([p[2][:4] for p in parts], axis=0)
        rows = int(tot[3])
        stats = SearchStats(nq=len(xq), nprobe=int(max(p[2][4] for p in parts)),
                            candidates=params.candidates, found=int(tot[2]),
                            reranked=int(tot[2]) if params.rerank or exact else 0,
                            dense_rows_read=rows, dense_bytes_read=rows * self.index.dim
                            * self.index.shards[0].dense.dtype.itemsize,
                            coarse_seconds=float(tot[0]), rerank_seconds=float(tot[1]))
        return SearchResult(ids, scores), stats, c

    def exact(self, xq: np.ndarray, k: int) -> SearchResult:
        if not isinstance(k, int) or not 1 <= k <= self.index.ntotal:
            raise SearchParamError(f"k must be in [1, {self.index.ntotal}], got {k!r}")
        xq = self.prepare_queries(xq)
        parts = [b.exact(xq, k) for b in self.backends]
        ids = np.concatenate([p[0] for p in parts], axis=1)
        return SearchResult(*topk(np.concatenate([p[1] for p in parts], axis=1), ids, k))
