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
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ebr.search.searcher import Searcher
from ebr.search.sharded import ShardedSearcher
from ebr.spec import SearchParams
from ebr.types import Encoder, SearchResult, SearchStats

__all__ = ["MicroBatcher", "TextBatcher"]

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


class TextBatcher:
    """Concurrent text queries encoded together: the encoder, not the index, is what a text
    query costs (MiniLM: a few ms per query in a batch, more alone, against ~0.2 ms of
    search), and a batch amortises it. Same rule as :class:`MicroBatcher`, no timer: a text
    arriving while fewer than ``lanes`` encoder calls run is encoded at once; texts arriving
    while all lanes are busy queue and go, up to ``max_batch`` at a time, in the next free
    lane's call. Each lane is its own thread running one call at a time, so the encoder never
    takes the search threads; with several lanes (each a single-threaded encoder call) the
    cores run independent batches instead of one batch split across threads, which waits
    for its slowest thread whenever the server's other threads take a core.

    One more rule keeps the batches whole under a closed loop of clients: a text that arrives
    while texts of an earlier call are still being answered (encoded, not yet searched and
    replied: :meth:`encoding`'s block) waits for them, since their clients send their next
    texts as they get their replies. Without it, the first client to get its reply finds the
    lane free and is encoded alone, its cohort queues behind it, and the calls alternate
    between one text and the rest (measured: a third of the calls held one text). An idle
    server still encodes a lone text at once; under load a text waits at most for the
    searches of the texts before it."""

    def __init__(self, max_batch: int = 64, lanes: int = 1) -> None:
        if max_batch < 1 or lanes < 1:
            raise ValueError("max_batch and lanes must be >= 1")
        self.max_batch = max_batch
        self.lanes = lanes
        self._queue: list[tuple[Encoder, str, asyncio.Future[np.ndarray]]] = []
        self._running = 0
        self._answering = 0  # texts encoded whose requests are still being answered
        self._thread = ThreadPoolExecutor(lanes, thread_name_prefix="ebr-encode")
        self.batches = 0
        self.texts = 0

    async def encode(self, encoder: Encoder, text: str) -> np.ndarray:
        """float32 [1, d]: ``text`` through ``encoder`` (a TextEncoder), in a shared call;
        the request counts as answered on return (see :meth:`encoding`)."""
        async with self.encoding(encoder, text) as x:
            return x

    @contextlib.asynccontextmanager
    async def encoding(self, encoder: Encoder, text: str) -> AsyncIterator[np.ndarray]:
        """``async with batcher.encoding(encoder, text) as x:`` ``text`` through ``encoder``
        in a shared call (float32 [1, d]), the block answering the request: texts that arrive
        meanwhile wait for the block to end (the class's rule)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.append((encoder, text, fut))
        self._start(loop)
        try:
            x = await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._answered(loop)  # encoded and counted, but its request is gone
            raise
        try:
            yield x
        finally:
            self._answered(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._queue and self._running < self.lanes and not self._answering:
            self._running += 1
            loop.create_task(self._drain())

    def _answered(self, loop: asyncio.AbstractEventLoop) -> None:
        self._answering -= 1
        self._start(loop)  # the last one answered: what queued meanwhile goes now

    async def _drain(self) -> None:
        """One lane: encode what is queued, batch after batch, until the queue is empty."""
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                groups: dict[int, tuple[Encoder, list[tuple[str, asyncio.Future[np.ndarray]]]]] = {}
                for enc, text, fut in batch:  # a reload may bring another encoder
                    groups.setdefault(id(enc), (enc, []))[1].append((text, fut))
                for enc, items in groups.values():
                    try:
                        x = await loop.run_in_executor(self._thread, enc.encode,
                                                       [t for t, _ in items])
                    except Exception as e:  # each waiting request answers it
                        for _, fut in items:
                            if not fut.done():
                                fut.set_exception(e)
                        continue
                    for row, (_, fut) in enumerate(items):
                        if not fut.done():
                            fut.set_result(x[row:row + 1])
                            self._answering += 1  # until its encoding() block ends
                self.batches += 1
                self.texts += len(batch)
        finally:
            self._running -= 1
