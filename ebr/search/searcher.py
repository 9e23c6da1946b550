"""``Searcher``: the two-stage search over an open index.

    queries -> (normalise) -> (query map) -> coarse top-candidates over the PQ codes, nprobe lists
            -> read those rows from the dense store -> exact scores with (query tower) q -> top-k

The query map (Distill-VQ) serves the coarse stage only; the query tower (BiDR) the re-rank
and the exact reference only, since the dense store holds the document tower's output.

Every public input is validated here with an explicit exception naming the parameter.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ebr.errors import InputError, SearchParamError
from ebr.index.reader import OpenIndex
from ebr.io.vecs import check_vectors
from ebr.metric import Metric, faiss_scores_to_ebr, normalize_rows
from ebr.quant.faiss_index import ivf_params
from ebr.search.exact import exact_search
from ebr.search.rerank import found_per_query, rerank
from ebr.spec import SearchParams
from ebr.types import ExternalId, JsonObject, SearchResult, SearchStats

__all__ = ["Searcher", "ResultRows"]


class _Rows(Protocol):
    @property
    def ntotal(self) -> int: ...

    def external_ids(self, rows: np.ndarray) -> list[ExternalId | None]: ...

    def vectors(self, rows: np.ndarray) -> np.ndarray: ...


class ResultRows:
    """What a searcher tells of its result rows, from its ``index`` (an open index or a
    sharded one); ``ebr.search.live.LiveSearcher`` adds the writes of the log."""

    index: _Rows

    @property
    def ntotal(self) -> int:
        """Documents a search can return."""
        return self.index.ntotal

    def external_ids(self, rows: np.ndarray) -> list[ExternalId | None]:
        """External ids of result rows (``None`` for ``-1`` padding)."""
        return self.index.external_ids(rows)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored dense rows of result rows, float32."""
        return self.index.vectors(rows)

    def payloads(self, rows: Sequence[int]) -> dict[int, JsonObject | None] | None:
        """Payloads of result rows; None: this index serves no payloads."""
        return None


class Searcher(ResultRows):
    """Thread-safe two-stage searcher over an :class:`OpenIndex` (no per-call shared state)."""

    index: OpenIndex

    def __init__(self, index: OpenIndex) -> None:
        self.index = index
        self._ivf_params: dict[int, Any] = {}

    def prepare_queries(self, xq: np.ndarray) -> np.ndarray:
        """Validate ``xq`` ([nq, d] or [d]) and return float32 [nq, d], normalised if the index is."""
        xq = np.asarray(xq)
        if xq.ndim == 1:
            xq = xq[None, :]
        check_vectors(xq, d=self.index.dim, name="query")
        if xq.shape[0] == 0:
            raise InputError("query: empty batch")
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        return normalize_rows(xq) if self.index.normalize else xq

    def coarse(self, xq: np.ndarray, candidates: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Coarse top-``candidates`` over the codes: (ids int64 [nq, kc], approx scores [nq, kc]).

        A learned query map (Distill-VQ) applies here only; the re-rank uses the original query.
        """
        with self.index.using():
            ids, D, xm = self._coarse(xq, candidates, nprobe)
        return ids, self._coarse_scores(D, xm)

    def _coarse(self, xq: np.ndarray, candidates: int, nprobe: int,
                allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, raw faiss distances, the queries as the coarse stage saw them): the re-rank
        needs no coarse scores. ``allowed``: a packed bitmap of the only rows it may return."""
        if self.index.query_map is not None:
            xq = np.ascontiguousarray(xq @ self.index.query_map.T, dtype=np.float32)
        probe = self.index.probe
        if allowed is None:
            sp = self._unfiltered_params(nprobe)
        else:
            sp = ivf_params(self.index.coarse if probe is None else self.index.ivfpq, nprobe,
                            allowed, only=True)
        if probe is None:
            D, ids = self.index.coarse.search(xq, candidates, params=sp)
        else:  # the graph picks the lists, the IVF scans them (same codes, same scores)
            D, ids = probe.search(xq, candidates, nprobe, sp)
        return ids, D, xq

    def probed(self, xq: np.ndarray, rows: np.ndarray, nprobe: int) -> np.ndarray:
        """Which of each query's ``rows`` (int64 [nq, r], -1 for none) lie in the lists that
        ``nprobe`` probes for it: bool [nq, r]. The ceiling of the coarse stage at that nprobe,
        whatever the codes and C: re-ranking every document of the probed lists finds these
        of ``rows`` and no others. One coarse scan per query, restricted to its rows."""
        xq = self.prepare_queries(xq)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 2 or rows.shape[0] != xq.shape[0]:
            raise InputError(f"rows must be [{xq.shape[0]}, r], got {list(rows.shape)}")
        n = self._row_space()
        SearchParams(k=1, nprobe=nprobe, candidates=1).validate(self.index.nlist, max(n, 1))
        if rows.size and int(rows.max()) >= n:
            raise InputError(f"rows must be < {n}, got {int(rows.max())}")
        out = np.zeros(rows.shape, dtype=bool)
        for i in range(len(xq)):
            want = rows[i][rows[i] >= 0]
            if not want.size:
                continue
            bitmap = np.zeros((n + 7) // 8, dtype=np.uint8)  # little-endian, as faiss reads
            np.bitwise_or.at(bitmap, want >> 3, (1 << (want & 7)).astype(np.uint8))
            found = self._coarse_allowed(xq[i:i + 1], len(want), nprobe, bitmap)
            out[i] = np.isin(rows[i], found[found >= 0]) & (rows[i] >= 0)
        return out

    def _row_space(self) -> int:
        """Rows a coarse id can name (the bitmaps' length)."""
        return self.index.ntotal

    def _coarse_allowed(self, xq: np.ndarray, candidates: int, nprobe: int,
                        allowed: np.ndarray) -> np.ndarray:
        """Coarse ids [nq, candidates] among the ``allowed`` rows only (packed bitmap)."""
        with self.index.using():
            return self._coarse(xq, candidates, nprobe, allowed)[0]

    def _unfiltered_params(self, nprobe: int) -> Any:
        """The coarse search's parameters without a selector, made once per nprobe (read-only
        during a search: shared by threads): the outer index's, or with the centroid graph the
        IVF's own (what :meth:`ebr.quant.probe.Probe.scan` takes)."""
        sp = self._ivf_params.get(nprobe)
        if sp is None:
            sp = self._ivf_params.setdefault(nprobe, ivf_params(
                self.index.coarse if self.index.probe is None else self.index.ivfpq, nprobe))
        return sp

    def _coarse_scores(self, D: np.ndarray, xm: np.ndarray) -> np.ndarray:
        """Raw coarse scores -> ebr scores. L2 RQ serves s = <q, x^> - |x^|^2 / 2, so the
        score -|q - x^|^2 is 2 s - |q|^2 (ebr.quant.additive.lift_rq)."""
        if not self.index.l2_as_ip:
            return faiss_scores_to_ebr(D, self.index.metric)
        s = faiss_scores_to_ebr(D, Metric.IP)
        return 2.0 * s - np.einsum("ij,ij->i", xm, xm)[:, None]

    def dense_queries(self, xq: np.ndarray) -> np.ndarray:
        """The queries scored against the dense store: f_q(q) with a BiDR query tower."""
        return xq if self.index.query_tower is None else self.index.query_tower.apply(xq)

    def search(self, xq: np.ndarray, params: SearchParams) -> tuple[SearchResult, SearchStats]:
        """Two-stage search. xq: [nq, d] or [d]. Returns (SearchResult, SearchStats)."""
        params.validate(self.index.nlist, self.index.ntotal)
        xq = self.prepare_queries(xq)
        with self.index.using():  # the mapped files stay whole until both stages are done
            t0 = time.perf_counter()
            cand, D, xm = self._coarse(xq, params.candidates, params.nprobe)
            t1 = time.perf_counter()
            per_query, n_cand = found_per_query(cand)  # padded at the end of each row
            if params.rerank:  # faiss pads results with -1 at the end of each row
                ids, scores, rows = rerank(self.dense_queries(xq), cand, self.index.dense,
                                           self.index.metric, params.k, padded_at_end=True,
                                           prefetch=self.index.prefetch)
            else:
                ids = cand[:, :params.k]
                scores, rows = self._coarse_scores(D[:, :params.k], xm), 0
            t2 = time.perf_counter()
        stats = SearchStats(
            nq=xq.shape[0], nprobe=params.nprobe, candidates=params.candidates, found=n_cand,
            reranked=n_cand if params.rerank else 0, dense_rows_read=rows,
            dense_bytes_read=rows * self.index.dim * self.index.dense.dtype.itemsize,
            coarse_seconds=t1 - t0, rerank_seconds=t2 - t1,
            per_query_found=per_query,
        )
        return SearchResult(ids, scores), stats

    def exact(self, xq: np.ndarray, k: int) -> SearchResult:
        """Brute force over the whole dense store (the reference; reads every row)."""
        if not isinstance(k, int) or not 1 <= k <= self.index.ntotal:
            raise SearchParamError(f"k must be in [1, {self.index.ntotal}], got {k!r}")
        xq = self.dense_queries(self.prepare_queries(xq))
        with self.index.using():
            return exact_search(xq, self.index.dense, k, self.index.metric)
