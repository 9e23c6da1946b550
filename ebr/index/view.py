"""A living index as read: the base, the delta segment and the tombstones, kept up with the log.

Per process, caught up from the log before each search (:meth:`LiveView.catch_up`: one
``fstat`` when nothing is new):

- the **delta segment**: written documents coded with the base's own codebooks
  (``ebr.index.segments``) into in-RAM IVF segments of the base's served form, row ids
  ``ntotal + k`` for the k-th upsert, copy-on-write;
- **tombstones**: a bitmap over base + delta rows (replaced and deleted documents), passed to
  faiss as an ``IDSelector`` so that the coarse stage never returns them;
- the id map of the delta, and its payloads (the base's are in ``docs.sqlite``).
"""


from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ebr.errors import InputError
from ebr.filters import Filter, matches
from ebr.index.docs import DocStore
from ebr.index.logdir import log_identity, rows_path
from ebr.index.reader import OpenIndex
from ebr.index.segments import (
    RECENT_ROWS,
    merged,
    quantization_error,
    return_freed_memory,
    share_quantizer,
    stacked,
)
from ebr.index.tombstones import Tombstones
from ebr.index.wal import (
    DELETE,
    SEAL,
    UPSERT,
    Record,
    WriteAheadLog,
    scan,
)
from ebr.quant.additive import lift_rq, served_lists
from ebr.quant.probe import same_partition
from ebr.quant.trainers import Codebooks
from ebr.towers import Tower
from ebr.types import ExternalId, JsonObject

__all__ = ["LiveView", "LiveStats"]

FILTER_CACHE = 32  # evaluated filters kept per process (a bitmap of n/8 bytes each)
DRIFT_SAMPLE = 64  # rows of each write whose quantization error feeds the drift figure

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveStats:
    """What ``/index`` reports of the living part."""

    epoch: int
    log_id: str
    applied_lsn: int  # folded into the base by compaction
    last_lsn: int  # last record applied here
    log_bytes: int
    delta_rows: int  # upserted rows since the base (replaced ones included)
    delta_live: int  # of those, not replaced or deleted since
    tombstones: int  # dead rows (base and delta)
    live_documents: int  # what a search can return
    drift: float | None  # delta quantization error / the base's, on the same codebooks


class LiveView:
    """The base plus the log as this process has applied it: what a search reads. Thread-safe:
    records are applied under a lock, searches read segments that are replaced, never changed.
    :class:`ebr.index.live.LiveIndex` adds the writes and the opening."""

    def __init__(self, base: OpenIndex, ldir: Path, docs: DocStore | None,
                 codebooks: Codebooks, doc_tower: Tower | None) -> None:
        self.base, self.ldir, self.docs = base, ldir, docs
        self.codebooks, self.doc_tower = codebooks, doc_tower
        live = base.manifest.live or {}
        self.log_id = log_identity(base.manifest)
        self.epoch = int(live.get("epoch", 0))
        self.applied_lsn = int(live.get("applied_lsn", 0))
        self.n_base = base.ntotal
        self.dim = base.dim
        self.dtype = base.dense.dtype
        # one copy of the list centroids for the base, the codebooks and every segment (each
        # copy is nlist x d floats: 25 MB at 16,384 x 384), where they are equal (RQ / LSQ
        # segments are served in another form than they are coded: one copy per form)
        share_quantizer(codebooks.index, base.coarse)
        self._scratch = codebooks.empty_index()  # codes of one write are made here
        share_quantizer(self._scratch, codebooks.index)
        empty = lift_rq(codebooks.empty_index())  # the served form, without documents
        share_quantizer(empty, base.coarse)
        # the delta segment, copy-on-write so that searches never wait for a write: a large
        # part replaced rarely and a small recent part replaced per write (searches read the
        # pair they started with)
        self.big = empty  # replaced whole, every RECENT_ROWS rows: searches hold the one they read
        self.recent = faiss.clone_index(empty)  # changed in place, under recent_lock
        share_quantizer(self.recent, empty)
        self.recent_lock = threading.Lock()  # held for a search of `recent` (tens of µs)
        # the segments' lists and scores are the base's: the base's probe picks the lists once
        # for all of them (a flat scan of 4,096 centroids costs ~100 µs per segment)
        self.shares_base_lists = base.probe is not None and same_partition(empty, base.coarse)
        self._template = empty
        # with shared lists, the base and the large segment as one IVF (segments.stacked):
        # one scan, one query table, one heap for both; replaced with ``big``
        self.stack: faiss.IndexIVFPQ | None = None
        self.delta_ids: list[ExternalId] = []
        self.delta_payloads: list[str | None] = []  # JSON text (returned, compacted)
        self.delta_objects: list[JsonObject | None] = []  # the same, parsed (filters)
        self.id_to_delta: dict[ExternalId, int] = {}
        self.dead = Tombstones(self.n_base + 1024)
        self.last_lsn = self.applied_lsn
        self.offset = 0  # log bytes applied
        self.sealed = False  # compaction closed this epoch: a newer generation serves
        self.delta_rows: np.ndarray = np.empty((0, self.dim), dtype=self.dtype)
        self._rows_fd: int | None = None
        self._wal: WriteAheadLog | None = None  # set when writable
        self._apply_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._catch_lock = threading.Lock()
        self.version = 0  # bumps with every applied record (caches key on it)
        self._err_sum, self._err_n = 0.0, 0  # quantization error of sampled delta rows (drift)
        self._base_err: float | None = None
        self._filter_cache: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray, int]] = \
            OrderedDict()
        self._filter_lock = threading.Lock()
        self._epoch_seen: tuple[tuple[int, int, int], tuple[str, int]] | None = None
        self._append_at: int | None = None  # where this process's write in flight starts

    @property
    def writable(self) -> bool:
        return self._wal is not None

    # ---- reading ---------------------------------------------------------------------------
    @property
    def ntotal_rows(self) -> int:
        return self.n_base + len(self.delta_ids)

    def reading(self) -> contextlib.AbstractContextManager[bool]:
        """Hold the state still (no record is applied meanwhile): for a snapshot or a
        consistent lookup. Searches need not (:meth:`segments`)."""
        return self._apply_lock

    def segments(self) -> tuple[faiss.Index, faiss.Index | None]:
        """(the large segment, a copy of the recent one or None if empty), consistent with
        each other. For compaction's snapshot, under :meth:`reading`; searches use
        ``recent_lock`` and ``big`` directly (ebr.search.live)."""
        with self.recent_lock:
            recent = faiss.clone_index(self.recent) if self.recent.ntotal else None
            return self.big, recent

    def fields(self) -> dict[str, str]:
        """The filterable payload fields {name: kind} (declared at build)."""
        return self.docs.fields() if self.docs is not None else {}

    def allowed(self, f: Filter) -> tuple[np.ndarray, np.ndarray, int]:
        """(bool [rows], the same packed little-endian, count): the live rows whose document
        satisfies ``f`` (base rows by SQL over ``docs.sqlite``, delta rows in memory,
        tombstones excluded). The last ``FILTER_CACHE`` filters are kept until the next
        applied write: a filter that repeats (a tenant, a language) costs its SQL once."""
        key = (repr(f), self.version)
        with self._filter_lock:
            hit = self._filter_cache.get(key)
            if hit is not None:
                self._filter_cache.move_to_end(key)
                return hit
        mask = self._evaluate(f)
        out = (mask, np.packbits(mask, bitorder="little"), int(mask.sum()))
        with self._filter_lock:
            self._filter_cache[key] = out
            while len(self._filter_cache) > FILTER_CACHE:
                self._filter_cache.popitem(last=False)
        return out

    def _evaluate(self, f: Filter) -> np.ndarray:
        if self.docs is None:
            raise InputError("filter: this index has no document table (built before "
                             "payloads): rebuild it to filter")
        with self._apply_lock:  # rows, ids, payloads and flags of one moment
            n_rows = self.ntotal_rows
            dead = self.dead.mask(n_rows)
            delta = list(zip(self.delta_ids, self.delta_objects, strict=True))
        mask = np.zeros(n_rows, dtype=bool)
        mask[self.docs.rows_matching(f)] = True
        for k, (i, p) in enumerate(delta):
            if matches(f, i, p):
                mask[self.n_base + k] = True
        mask &= ~dead
        return mask

    def selector_bitmap(self) -> np.ndarray | None:
        """Packed tombstone bitmap (bit i: row i is dead), or None when nothing is dead: the
        tombstones' own bytes, which no later write changes (``Tombstones.packed``)."""
        if not self.n_dead:
            return None
        return self.dead.packed(self.ntotal_rows)

    def rows_of(self, ids: Sequence[ExternalId]) -> dict[ExternalId, int]:
        """Current (live) row of each id that exists."""
        out: dict[ExternalId, int] = {}
        rest = []
        for i in ids:
            r = self.id_to_delta.get(i)
            if r is not None:
                out[i] = self.n_base + r
            else:
                rest.append(i)
        if rest and self.docs is not None:
            for i, r in self.docs.rows_of(rest).items():
                if not self.dead[r]:
                    out[i] = r
        elif rest:
            for i in rest:
                r = self._base_row_without_docs(i)
                if r is not None and not self.dead[r]:
                    out[i] = r
        return out

    def _base_row_without_docs(self, i: ExternalId) -> int | None:
        ids = self.base.ids
        if isinstance(ids, np.ndarray):
            if not isinstance(i, int):
                return None
            hit = np.flatnonzero(ids == i)
        else:
            return next((k for k, x in enumerate(ids) if x == i), None)
        return int(hit[0]) if len(hit) else None

    def external_ids(self, rows: np.ndarray) -> list[ExternalId | None]:
        r = np.asarray(rows).ravel()
        if not len(self.delta_ids) or (r < self.n_base).all():
            return self.base.external_ids(r)
        out: list[ExternalId | None] = []
        for x in r.tolist():
            if x < 0:
                out.append(None)
            elif x < self.n_base:
                out.extend(self.base.external_ids(np.array([x])))
            else:
                out.append(self.delta_ids[x - self.n_base])
        return out

    def payloads(self, rows: Sequence[int]) -> dict[int, JsonObject | None]:
        """Payload of each row (None: the document has none)."""
        base_rows = [int(r) for r in rows if 0 <= r < self.n_base]
        texts: dict[int, str | None] = {}
        if base_rows and self.docs is not None:
            texts.update(self.docs.payload_texts(base_rows))
        for r in rows:
            if r >= self.n_base:
                texts[int(r)] = self.delta_payloads[int(r) - self.n_base]
        return {int(r): (json.loads(t) if t else None) for r, t in
                ((r, texts.get(int(r))) for r in rows)}

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored dense rows (base or delta), float32."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        b = rows < self.n_base
        if b.any():
            out[b] = self.base.vectors(rows[b])
        if (~b).any():
            out[~b] = self.delta_rows[rows[~b] - self.n_base]
        return out

    def stats(self) -> LiveStats:
        n_delta = len(self.delta_ids)
        delta_dead = self.dead.count_in(self.n_base, self.ntotal_rows)
        drift = None
        base_err = self._base_error() if n_delta else None
        if base_err:
            drift = round(self._err_sum / max(self._err_n, 1) / base_err, 4)
        return LiveStats(epoch=self.epoch, log_id=self.log_id, applied_lsn=self.applied_lsn,
                         last_lsn=self.last_lsn, log_bytes=self.offset, delta_rows=n_delta,
                         delta_live=n_delta - delta_dead, tombstones=self.n_dead,
                         live_documents=self.ntotal_rows - self.n_dead, drift=drift)

    def _base_error(self) -> float | None:
        """Mean quantization error of up to 2,000 base documents (the drift reference); None
        when the dense store does not hold the coded vectors (BiDR towers)."""
        if self._base_err is None and self.doc_tower is None:
            rows = np.unique(np.random.default_rng(0).integers(0, self.n_base, 2000))
            x = self.base.vectors(rows)
            self._base_err = float(quantization_error(self.codebooks.index, x).mean())
        return self._base_err

    # ---- the log ---------------------------------------------------------------------------
    def catch_up(self) -> int:
        """Apply what other processes logged since the last call: one ``fstat`` when nothing
        is new. Returns the number of records applied."""
        wal = self._wal
        if wal is None or self.sealed or wal.size() <= self.offset:
            return 0
        with self._catch_lock:  # a write of this process holds it until its record is applied
            return self._catch_up_locked()

    def _catch_up_locked(self) -> int:
        """Apply the log from ``offset``, up to this process's own write in flight (its record
        is applied by that write, after its fsync)."""
        stop = self._append_at
        if self._wal is None or (stop is not None and stop <= self.offset):
            return 0
        records, end = scan(self._wal.path, self.offset, stop)
        if records:
            self._map_rows()
            with self._apply_lock:
                for r in records:
                    self._apply(r)
            self.offset = end
        return len(records)

    def _reserve_rows(self, n: int) -> None:
        """Grow the rows file (zeros) to hold ``n`` rows, doubling: every process maps it
        again only when it grows, O(log n) times, not at every write."""
        if self._rows_fd is None:
            return
        row_bytes = self.dim * self.dtype.itemsize
        if os.fstat(self._rows_fd).st_size < n * row_bytes:
            os.ftruncate(self._rows_fd, max(4096, 2 * n) * row_bytes)

    def _map_rows(self) -> None:
        """(Re)map the delta rows file at its current length (rows past the delta's are
        reserved zeros, never read)."""
        if self._rows_fd is None:
            return
        size = os.fstat(self._rows_fd).st_size
        row_bytes = self.dim * self.dtype.itemsize
        n = size // row_bytes
        if n == len(self.delta_rows):
            return
        if n == 0:
            self.delta_rows = np.empty((0, self.dim), dtype=self.dtype)
        else:
            self.delta_rows = np.memmap(rows_path(self.ldir, self.epoch), dtype=self.dtype,
                                        mode="r", shape=(n, self.dim))

    @property
    def n_dead(self) -> int:
        """Dead rows (replaced or deleted documents)."""
        return self.dead.count

    def _apply(self, rec: Record) -> None:
        """Apply one record to the in-memory state (under the state's write lock)."""
        if rec.op == SEAL:
            self.sealed = True
            return
        if rec.lsn <= self.last_lsn:
            return  # already in the base (compaction) or applied
        if rec.op == DELETE:
            for i, r in self.rows_of(rec.ids).items():
                self.dead.kill(r)
                self.id_to_delta.pop(i, None)
        elif rec.op == UPSERT and rec.vectors is not None:
            for r in self.rows_of(rec.ids).values():
                self.dead.kill(r)
            first = len(self.delta_ids)
            self._encode(rec.vectors, first)
            payloads = rec.payloads or [None] * len(rec.ids)
            for k, (i, p) in enumerate(zip(rec.ids, payloads, strict=True)):
                self.id_to_delta[i] = first + k
                self.delta_ids.append(i)
                self.delta_payloads.append(None if p is None else json.dumps(
                    p, ensure_ascii=False, separators=(",", ":")))
                self.delta_objects.append(dict(p) if isinstance(p, dict) else None)
            self.dead.cover(self.ntotal_rows)
        self.last_lsn = rec.lsn
        self.version += 1  # after the flags: a cache keyed on it never holds older ones

    def _encode(self, x: np.ndarray, first: int) -> None:
        """Codes of new rows, made by the base's codebooks, into the delta segment."""
        self._scratch.reset()
        self.codebooks.add(self._scratch, x)
        lists = served_lists(self._scratch)  # RQ / LSQ: as served; PQ: None, served as coded
        sample = x[:DRIFT_SAMPLE]  # of each write: as costly as the coding itself, in full
        self._err_sum += float(quantization_error(self.codebooks.index, sample).sum())
        self._err_n += len(sample)
        with self.recent_lock:  # a few µs: the codes are made already
            dst = faiss.extract_index_ivf(self.recent)
            if lists is None:  # moves them (the scratch is emptied)
                dst.merge_from(faiss.extract_index_ivf(self._scratch), self.n_base + first)
            else:
                dst.invlists.merge_from(lists, self.n_base + first)
                dst.ntotal += len(x)
            self.recent.ntotal = dst.ntotal
        if self.recent.ntotal >= RECENT_ROWS:  # fold the recent part into the large one
            big = merged(self.big, self.recent, 0)
            stack = stacked(self.base.coarse, self._template, big) if self.shares_base_lists \
                else None
            with self.recent_lock:  # all at once: no search sees a row twice or not at all
                self.big, self.stack = big, stack
                self.recent.reset()
            return_freed_memory()  # the fold's copies

