"""Micro-batching: concurrent ``/search`` requests with the same parameters share one batched
search (one faiss call over all their queries, one de-duplicated gather of dense rows).

A request waits at most ``wait_s`` for company (or until ``max_batch`` requests are queued),
then its batch runs in the thread pool. Requests are grouped by (searcher, SearchParams), so a
reload never mixes generations and every request gets exactly the parameters it asked for.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from ebr.spec import SearchParams
from ebr.types import SearchResult, SearchStats

__all__ = ["MicroBatcher"]


class MicroBatcher:
    def __init__(self, max_batch: int, wait_s: float) -> None:
        self.max_batch = max_batch
        self.wait_s = wait_s
        # (id(searcher), params) -> (searcher, [(query row, future)])
        self._pending: dict[tuple[int, SearchParams],
                            tuple[Any, list[tuple[np.ndarray, asyncio.Future]]]] = {}
        self.batches = 0
        self.queries = 0

    async def search(self, searcher: Any, x: np.ndarray, params: SearchParams
                     ) -> tuple[SearchResult, SearchStats, int, int]:
        """(batch result, batch stats, this query's row, batch size) for one query row."""
        loop = asyncio.get_running_loop()
        key = (id(searcher), params)
        fut: asyncio.Future = loop.create_future()
        queue = self._pending.setdefault(key, (searcher, []))[1]
        queue.append((x, fut))
        if len(queue) == 1:
            loop.call_later(self.wait_s, self._flush, key)
        if len(queue) >= self.max_batch:
            self._flush(key)
        return await fut

    def _flush(self, key: tuple[int, SearchParams]) -> None:
        entry = self._pending.pop(key, None)
        if entry is None:
            return  # already flushed when it filled up
        searcher, items = entry
        xs = np.concatenate([x for x, _ in items])
        self.batches += 1
        self.queries += len(items)
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, searcher.search, xs, key[1])

        def done(f: asyncio.Future) -> None:
            exc = f.exception()
            for i, (_, fut) in enumerate(items):
                if fut.done():
                    continue
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    res, st = f.result()
                    fut.set_result((res, st, i, len(items)))
        job.add_done_callback(done)
