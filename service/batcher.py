"""Adaptive micro-batching: concurrent ``/search`` requests with the same parameters share one
batched search (one faiss call over all their queries, one de-duplicated gather of dense rows).

No timer and no added latency when idle: a request runs at once while fewer than ``inflight``
batched searches with its parameters are running in this worker; otherwise it queues, and the
queue runs as one batch (at most ``max_batch`` requests) as soon as a running search finishes.
Under load the batches grow by themselves; alone, a request never waits. Requests are grouped
by (searcher, SearchParams), so a reload never mixes generations and every request gets exactly
the parameters it asked for.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from ebr.search.searcher import Searcher
from ebr.search.sharded import ShardedSearcher
from ebr.spec import SearchParams
from ebr.types import SearchResult, SearchStats

__all__ = ["MicroBatcher"]

Key = tuple[int, SearchParams]


class MicroBatcher:
    def __init__(self, max_batch: int = 32, inflight: int = 2) -> None:
        if max_batch < 1 or inflight < 1:
            raise ValueError("max_batch and inflight must be >= 1")
        self.max_batch = max_batch
        self.inflight = inflight
        self._queued: dict[Key, tuple[Any, list[tuple[np.ndarray, asyncio.Future[Any]]]]] = {}
        self._running: dict[Key, int] = {}
        self.batches = 0
        self.queries = 0

    async def search(self, searcher: Searcher | ShardedSearcher, x: np.ndarray,
                     params: SearchParams
                     ) -> tuple[SearchResult, SearchStats, int, int]:
        """(batch result, batch stats, this query's row, batch size) for one query row."""
        key = (id(searcher), params)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(key, (searcher, []))[1].append((x, fut))
        if self._running.get(key, 0) < self.inflight:
            self._dispatch(key)
        return await fut

    def _dispatch(self, key: Key) -> None:
        entry = self._queued.get(key)
        if entry is None:
            return
        searcher, items = entry
        batch, rest = items[:self.max_batch], items[self.max_batch:]
        if rest:
            self._queued[key] = (searcher, rest)
        else:
            del self._queued[key]
        self._running[key] = self._running.get(key, 0) + 1
        self.batches += 1
        self.queries += len(batch)
        xs = np.concatenate([x for x, _ in batch])
        job = asyncio.get_running_loop().run_in_executor(None, searcher.search, xs, key[1])

        def done(f: asyncio.Future[Any]) -> None:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]
            exc = f.exception()
            for i, (_, fut) in enumerate(batch):
                if fut.done():
                    continue
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    res, st = f.result()
                    fut.set_result((res, st, i, len(batch)))
            if key in self._queued and self._running.get(key, 0) < self.inflight:
                self._dispatch(key)  # what queued meanwhile runs now, as one batch
        job.add_done_callback(done)
