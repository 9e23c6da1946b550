"""``LiveSearcher``: the two-stage search over a living index (base + delta - tombstones).

    catch up with the log -> coarse top-C over the base codes and the delta codes, tombstones
    excluded by an IDSelector in both -> merged by coarse score -> exact re-rank of the base
    candidates from the dense store and of the delta candidates from the delta rows -> top-k

Both coarse searches use the same codebooks, query map and nprobe, so their scores compare;
with the base's centroid graph (ebr.quant.probe) and segments that share its partition, the
graph picks each query's lists once and every part scans them.
Row ids are the base's ``[0, ntotal)`` then the delta's ``ntotal + k``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import faiss
import numpy as np

from ebr.errors import SearchParamError
from ebr.filters import Filter
from ebr.index.live import LiveIndex
from ebr.metric import exact_scores
from ebr.quant.faiss_index import ivf_params
from ebr.quant.probe import Probe
from ebr.search.exact import exact_search
from ebr.search.rerank import found_per_query, rerank, topk
from ebr.search.searcher import Searcher
from ebr.spec import SearchParams
from ebr.types import ExternalId, JsonObject, SearchResult, SearchStats

__all__ = ["LiveSearcher"]


def _search(seg: faiss.Index, xq: np.ndarray, candidates: int, nprobe: int,
            excluded: np.ndarray | None, only: bool) -> tuple[np.ndarray, np.ndarray]:
    return seg.search(xq, min(candidates, int(seg.ntotal)),
                      params=ivf_params(seg, nprobe, excluded, only))


def _packed(cand: np.ndarray, keep: np.ndarray, shift: int) -> np.ndarray:
    """``cand - shift`` where ``keep``, each row's kept ones first in their order, ``-1``
    after them (what the compiled re-rank takes: padding at the end)."""
    rows = np.where(keep, cand - shift, -1)
    if keep.all():
        return np.ascontiguousarray(rows)
    return np.take_along_axis(rows, np.argsort(~keep, axis=1, kind="stable"), axis=1)


EXACT_BELOW = 3_000  # fewer matches: all scored exactly (the measured crossover, bench_filters)
# ...and more too when the IVF plan would scan more than this many codes per match scored
# exactly (a PQ code costs ~1/20 of a dense row read and scored: bench_filters' table)
CODES_PER_ROW = 20
MATCH_CACHE = 8  # filters whose matching rows' vectors stay gathered (<= EXACT_BELOW x d each)


class LiveSearcher(Searcher):
    """A :class:`Searcher` that also covers what was written since the base was built."""

    def __init__(self, live: LiveIndex) -> None:
        super().__init__(live.base)
        self.live = live
        self._match_cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self._match_lock = threading.Lock()
        # the tombstones' bitmap and the IVF parameters made with it, per nprobe
        self._dead_params: tuple[np.ndarray, dict[int, faiss.SearchParametersIVF]] | None = \
            None

    def _coarse_live(self, xq: np.ndarray, candidates: int, nprobe: int,
                     allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(candidate rows, ebr coarse scores) over base and delta, tombstones excluded;
        with ``allowed`` (packed bitmap of a filter's live rows), only those."""
        live, base = self.live, self.index
        if base.query_map is not None:
            xq = np.ascontiguousarray(xq @ base.query_map.T, dtype=np.float32)
        only = allowed is not None
        excluded = allowed if only else live.selector_bitmap()
        probe = base.probe
        picked, sp = None, None
        if probe is not None:  # the base's lists from the centroid graph
            picked = probe.pick(xq, nprobe)
            sp = self._live_params(nprobe, excluded, only)

        def segment(seg: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
            if picked is None or not live.shares_base_lists:  # the segment's own centroids
                return _search(seg, xq, candidates, nprobe, excluded, only)
            # the same lists as the base's (shares_base_lists), so the same IVF parameters
            return Probe.scan(faiss.extract_index_ivf(seg), *picked,
                              min(candidates, int(seg.ntotal)), sp)

        parts = []
        with live.recent_lock:  # the recent rows and the large segment that goes with them
            big, recent = live.big, live.recent
            stack = live.stack if live.shares_base_lists else None
            if recent.ntotal:
                parts.append(segment(recent))
        # the large segment is replaced whole by a fold, never changed: scanned without the
        # lock, with the base in one scan where they share lists (segments.stacked)
        if probe is None or picked is None:
            parts.append(base.coarse.search(xq, candidates, params=ivf_params(
                base.coarse, nprobe, excluded, only)))
        else:
            parts.append(Probe.scan(probe.ivf if stack is None else stack, *picked,
                                    candidates, sp))
        if big.ntotal and stack is None:  # a stack exists only with the graph's lists
            parts.append(segment(big))
        if len(parts) == 1:
            D, ids = parts[0]
            return ids, self._coarse_scores(D, xq)
        return topk(np.concatenate([self._coarse_scores(d, xq) for d, _ in parts], axis=1),
                    np.concatenate([i for _, i in parts], axis=1), candidates)

    def _live_params(self, nprobe: int, excluded: np.ndarray | None, only: bool
                     ) -> faiss.SearchParametersIVF:
        """The IVF's parameters for the graph's lists: without a selector, or with the
        tombstones' (made once per nprobe and bitmap: the bitmap is replaced, never changed,
        when rows die), or a filter's (per call)."""
        if excluded is None:
            return self._unfiltered_params(nprobe)
        if only:
            return ivf_params(self.index.ivfpq, nprobe, excluded, only)
        cached = self._dead_params
        if cached is None or cached[0] is not excluded:
            cached = self._dead_params = (excluded, {})
        sp = cached[1].get(nprobe)
        if sp is None:
            sp = cached[1].setdefault(nprobe, ivf_params(self.index.ivfpq, nprobe, excluded))
        return sp

    def _row_space(self) -> int:
        return self.live.ntotal_rows

    def _coarse_allowed(self, xq: np.ndarray, candidates: int, nprobe: int,
                        allowed: np.ndarray) -> np.ndarray:
        self.live.catch_up()
        with self.index.using():
            return self._coarse_live(xq, candidates, nprobe, allowed)[0]

    def coarse(self, xq: np.ndarray, candidates: int, nprobe: int
               ) -> tuple[np.ndarray, np.ndarray]:
        self.live.catch_up()
        with self.index.using():
            ids, scores = self._coarse_live(xq, candidates, nprobe)
        return ids, scores

    def _rerank_live(self, xq: np.ndarray, cand: np.ndarray, k: int
                     ) -> tuple[np.ndarray, np.ndarray, int]:
        """Exact top-k of base candidates (dense store) and delta candidates (delta rows),
        each through :func:`rerank` (faiss' by-index kernel for float32 rows), then merged."""
        n_base = self.live.n_base
        dq = self.dense_queries(xq)
        if len(cand) == 1:  # one query: its base and delta candidates by plain indexing
            return self._rerank_one(dq, cand[0], k)
        in_base = (cand >= 0) & (cand < n_base)
        ids, scores, rows = rerank(dq, _packed(cand, in_base, 0), self.index.dense,
                                   self.index.metric, k, padded_at_end=True,
                                   prefetch=self.index.prefetch)
        in_delta = cand >= n_base
        if not in_delta.any():
            return ids, scores, rows
        return self._with_delta(dq, (ids, scores, rows), _packed(cand, in_delta, n_base), k)

    def _rerank_one(self, dq: np.ndarray, cand: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`_rerank_live` of one query (``cand`` [c]): the same top k, without the
        batch's padding and re-ordering."""
        n_base = self.live.n_base
        in_base = cand[(cand >= 0) & (cand < n_base)]
        if in_base.size:
            base = rerank(dq, in_base[None], self.index.dense, self.index.metric, k,
                          padded_at_end=True, prefetch=self.index.prefetch)
        else:
            base = (np.full((1, k), -1, dtype=np.int64),
                    np.full((1, k), -np.inf, dtype=np.float32), 0)
        delta = cand[cand >= n_base]
        return self._with_delta(dq, base, (delta - n_base)[None], k) if delta.size else base

    def _with_delta(self, dq: np.ndarray, base: tuple[np.ndarray, np.ndarray, int],
                    delta: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The base's re-ranked top k (ids, scores, rows read) merged with the delta rows'
        (``delta`` [nq, c]: rows of the delta, padding at the end), scored as the base's are
        (faiss' by-index kernel for float32 rows)."""
        ids, scores, rows = base
        d_ids, d_scores, d_rows = rerank(dq, delta, self.live.delta_rows, self.index.metric, k,
                                         padded_at_end=True)
        d_ids = np.where(d_ids >= 0, d_ids + self.live.n_base, -1)
        ids, scores = topk(np.concatenate([scores, d_scores], axis=1),
                           np.concatenate([ids, d_ids], axis=1), k)
        return ids, scores, rows + d_rows

    def search(self, xq: np.ndarray, params: SearchParams) -> tuple[SearchResult, SearchStats]:
        live = self.live
        live.catch_up()
        params.validate(self.index.nlist, max(self.ntotal, 1))
        xq = self.prepare_queries(xq)
        with self.index.using():
            t0 = time.perf_counter()
            cand, cscores = self._coarse_live(xq, params.candidates, params.nprobe)
            t1 = time.perf_counter()
            per_query, n_cand = found_per_query(cand)  # padded at the end of each row
            if params.rerank:
                ids, scores, rows = self._rerank_live(xq, cand, params.k)
            else:
                ids, scores, rows = cand[:, :params.k], cscores[:, :params.k], 0
            t2 = time.perf_counter()
        stats = SearchStats(
            nq=xq.shape[0], nprobe=params.nprobe, candidates=params.candidates, found=n_cand,
            reranked=n_cand if params.rerank else 0, dense_rows_read=rows,
            dense_bytes_read=rows * self.index.dim * self.index.dense.dtype.itemsize,
            coarse_seconds=t1 - t0, rerank_seconds=t2 - t1, per_query_found=per_query)
        return SearchResult(ids, scores), stats

    def search_filtered(self, xq: np.ndarray, params: SearchParams, f: Filter,
                        exact: bool = False) -> tuple[SearchResult, SearchStats, int]:
        """Two-stage search among the live documents that satisfy ``f``; returns exactly
        min(k, c) hits per query, c the filter's exact count (also returned).

        c < EXACT_BELOW, ``exact``, or an IVF plan that would read more than CODES_PER_ROW
        codes per match: every match scored exactly (recall 1.0). Otherwise the coarse search
        takes the matches only (an IDSelector), with nprobe raised by 1 / selectivity (as
        many matching codes as an unfiltered search scans) and doubled until every query has
        min(k, c) candidates (or all lists are probed), then the exact re-rank of those."""
        live = self.live
        live.catch_up()
        xq = self.prepare_queries(xq)
        allowed, packed, c = live.allowed(f)
        params.validate(self.index.nlist, max(self.ntotal, 1))
        share = c / max(self.ntotal, 1)
        nprobe = min(self.index.nlist, int(np.ceil(params.nprobe / max(share, 1e-12))))
        scanned = nprobe * live.ntotal_rows / self.index.nlist  # codes the IVF plan reads
        t0 = time.perf_counter()
        if c < EXACT_BELOW or exact or scanned > CODES_PER_ROW * c:
            rows, vectors = self._matches(f, allowed)
            dq = self.dense_queries(xq)
            scores = exact_scores(dq, vectors, self.index.metric) if c else \
                np.empty((len(xq), 0), dtype=np.float32)
            ids, top = topk(scores.astype(np.float32), np.broadcast_to(rows, scores.shape),
                            params.k)
            t1 = time.perf_counter()
            stats = SearchStats(nq=len(xq), nprobe=0, candidates=c, found=c * len(xq),
                                reranked=c * len(xq), dense_rows_read=c,
                                dense_bytes_read=c * self.index.dim
                                * self.index.dense.dtype.itemsize,
                                coarse_seconds=0.0, rerank_seconds=t1 - t0)
            return SearchResult(ids, top), stats, c
        want = min(params.k, c)
        with self.index.using():
            while True:
                cand, cscores = self._coarse_live(xq, params.candidates, nprobe, packed)
                per_query = (cand >= 0).sum(axis=1)
                if per_query.min() >= want or nprobe >= self.index.nlist:
                    break
                nprobe = min(self.index.nlist, 2 * nprobe)
            t1 = time.perf_counter()
            ids, scores, n_rows = self._rerank_live(xq, cand, params.k) if params.rerank else \
                (cand[:, :params.k], cscores[:, :params.k], 0)
        t2 = time.perf_counter()
        n_cand = int(per_query.sum())
        stats = SearchStats(nq=len(xq), nprobe=nprobe, candidates=params.candidates,
                            found=n_cand, reranked=n_cand if params.rerank else 0,
                            dense_rows_read=n_rows,
                            dense_bytes_read=n_rows * self.index.dim
                            * self.index.dense.dtype.itemsize,
                            coarse_seconds=t1 - t0, rerank_seconds=t2 - t1,
                            per_query_found=per_query)
        return SearchResult(ids, scores), stats, c

    def _matches(self, f: Filter, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, their dense vectors) of a filter the exact plan answers; the last few are
        kept until the next write (a repeated filter then costs one small matrix product)."""
        key = (repr(f), self.live.version)
        with self._match_lock:
            hit = self._match_cache.get(key)
            if hit is not None:
                return hit
        rows = np.flatnonzero(allowed)
        out = (rows, self.vectors(rows))
        if len(rows) > EXACT_BELOW:  # the cost rule chose it: too large to keep
            return out
        with self._match_lock:
            self._match_cache[key] = out
            while len(self._match_cache) > MATCH_CACHE:
                self._match_cache.pop(next(iter(self._match_cache)))
        return out

    def exact(self, xq: np.ndarray, k: int) -> SearchResult:
        """Brute force over every live document (base rows not dead, delta rows not dead)."""
        live = self.live
        live.catch_up()
        with live.reading():  # a consistent snapshot; the scoring runs without the lock
            n_rows, n_base = live.ntotal_rows, live.n_base
            dead = live.dead.mask(n_rows)
            rows = live.delta_rows
        n_live = n_rows - int(dead.sum())
        if not isinstance(k, int) or not 1 <= k <= max(n_live, 1):
            raise SearchParamError(f"k must be in [1, {n_live}], got {k!r}")
        dq = self.dense_queries(self.prepare_queries(xq))
        with self.index.using():
            res = exact_search(dq, self.index.dense, k, self.index.metric, exclude=dead)
        if n_rows == n_base:
            return res
        s = exact_scores(dq, np.asarray(rows[:n_rows - n_base], dtype=np.float32),
                         self.index.metric)
        s[:, dead[n_base:]] = -np.inf
        ids = np.broadcast_to(np.arange(n_base, n_rows), s.shape)
        top_ids, top = topk(np.concatenate([res.scores, s.astype(np.float32)], axis=1),
                            np.concatenate([res.ids, ids], axis=1), k)
        return SearchResult(top_ids, top)

    @property
    def ntotal(self) -> int:
        return self.live.ntotal_rows - self.live.n_dead

    def fields(self) -> dict[str, str]:
        """The filterable payload fields {name: kind} (declared at build)."""
        return self.live.fields()

    def external_ids(self, rows: np.ndarray) -> list[ExternalId | None]:
        return self.live.external_ids(rows)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.live.vectors(rows)

    def payloads(self, rows: Sequence[int]) -> dict[int, JsonObject | None] | None:
        return self.live.payloads(rows)
