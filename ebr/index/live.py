"""A living index: an immutable base generation, plus the writes logged since it was built.

Files (``<index dir>.live/`` beside the served directory, so that a new generation swapped in
at the index directory keeps them)::

    lock                 flock: the writer lock (one appender at a time, across processes)
    wal-<epoch>.log      the write-ahead log (ebr.index.wal): the truth about the delta
    delta-<epoch>.rows   dense rows of upserted documents, raw [rows, dim] in the base's dtype

The base's manifest names the log it continues (``live``: log id, epoch, and ``applied_lsn``,
the last record already folded into it by compaction). A log of another id is stale (the base
was rebuilt from scratch): it is moved aside, not replayed.

In memory, per process (each worker has its own view, caught up from the log before each
search and write):

- the **delta segment**: upserted documents encoded with the base's own codebooks
  (``codebooks.index``: list assignment and codes exactly as the build made them) into an
  in-RAM IVF index of the base's served form, row ids ``ntotal + k`` for the k-th upsert;
- **tombstones**: a bitmap over base + delta rows (replaced and deleted documents), passed to
  faiss as an ``IDSelector`` so that the coarse stage never returns them;
- the id map of the delta, and its payloads (the base's are in ``docs.sqlite``).

Writing (:meth:`LiveIndex.upsert`, :meth:`LiveIndex.delete`), under the writer lock: catch up,
write the new dense rows, append one log record for the whole batch and fsync it, apply it.
The write is acknowledged after the fsync: from then on it survives a crash, and every
process sees it at its next search (:meth:`LiveIndex.catch_up`: one ``fstat`` when nothing
is new). Dense rows are written before the record, so a process that reads the record finds
its rows; on recovery, rows beyond the log are cut and rows the log holds are rewritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ebr.errors import (
    EbrError,
    IndexFormatError,
    InputError,
    WriteConflictError,
    WritesUnsupportedError,
)
from ebr.index.docs import DocStore, payload_json
from ebr.index.reader import OpenIndex
from ebr.index.wal import (
    DELETE,
    HEADER_SIZE,
    SEAL,
    UPSERT,
    Record,
    WriteAheadLog,
    read_header,
    scan,
)
from ebr.io import layout
from ebr.io.manifest import Manifest, read_manifest
from ebr.io.vecs import check_vectors, read_bin
from ebr.metric import normalize_rows
from ebr.quant.additive import lift_rq
from ebr.quant.encode import ScoreAware
from ebr.quant.trainers import Codebooks
from ebr.towers import Tower
from ebr.types import ExternalId, JsonObject, JsonValue

__all__ = ["LiveIndex", "LiveStats", "open_live", "live_dir", "sync_rows", "writer_lock",
           "load_codebooks", "log_identity", "quantization_error", "merged"]

logger = logging.getLogger(__name__)


def live_dir(index_dir: str | os.PathLike[str]) -> Path:
    """Where the log of the index at ``index_dir`` lives: beside the directory it resolves to
    (a symlink flipped to a new build from scratch gets a new log; compaction, which replaces
    the directory's contents in place, keeps it)."""
    p = Path(os.path.realpath(index_dir))
    return p.with_name(p.name + layout.LIVE_SUFFIX)


def wal_path(ldir: Path, epoch: int) -> Path:
    return ldir / f"wal-{epoch:06d}.log"


def rows_path(ldir: Path, epoch: int) -> Path:
    return ldir / f"delta-{epoch:06d}.rows"


@contextlib.contextmanager
def writer_lock(ldir: Path) -> Iterator[None]:
    """The cross-process writer lock (flock on ``<live dir>/lock``)."""
    fd = os.open(ldir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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


def load_codebooks(base: OpenIndex) -> Codebooks:
    """The codebooks that encoded the base, as the build held them (``codebooks.index``); for
    an index built before they were stored, the base's own IVF-PQ emptied (its served form is
    its build form). Additive codes (RQ / LSQ) of such an old index cannot be re-encoded."""
    m = base.manifest
    enc = m.codebooks.get("encoding") if isinstance(m.codebooks, dict) else None
    if isinstance(enc, dict) and enc.get("index") in m.files:
        index = faiss.read_index(str(base.path / enc["index"]))
        centroids = None
        if enc.get("list_centroids"):
            centroids = np.array(read_bin(base.path / enc["list_centroids"], mmap=False))
        sa = enc.get("score_aware")
        score_aware = None if not sa else ScoreAware(
            eta=float(sa["eta"]), passes=int(sa["passes"]),
            query_map=base.query_map if sa.get("query_map") else None)
        return Codebooks(index=index, metric=base.metric, list_centroids=centroids,
                         query_map=base.query_map, score_aware=score_aware)
    if base.l2_as_ip or base.ivfpq.d != base.dim:
        raise WritesUnsupportedError(
            f"{base.path}: built by an ebr that did not store its codebooks, with additive "
            "(RQ/LSQ) codes: rebuild it to take writes")
    index = faiss.clone_index(base.coarse)
    index.reset()
    return Codebooks(index=index, metric=base.metric, query_map=base.query_map)


class LiveIndex:
    """The base plus the log: what searches and writes see. Thread-safe."""

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
        self._empty = faiss.serialize_index(codebooks.empty_index())
        empty = lift_rq(codebooks.empty_index())  # the served form, without documents
        self._empty_served = faiss.serialize_index(empty)
        # the delta segment, copy-on-write so that searches never wait for a write: a large
        # part replaced rarely and a small recent part replaced per write (searches read the
        # pair they started with)
        self.segments: tuple[faiss.Index, faiss.Index] = (empty, faiss.clone_index(empty))
        self.delta_ids: list[ExternalId] = []
        self.delta_payloads: list[str | None] = []
        self.id_to_delta: dict[ExternalId, int] = {}
        self.dead = np.zeros(self.n_base + 1024, dtype=bool)
        self.n_dead = 0
        self._packed: tuple[int, np.ndarray] | None = None  # (version, bitmap)
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
        self._err_sum = 0.0  # quantization error of the delta (drift signal)
        self._base_err: float | None = None
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
        consistent lookup. Searches need not: they read immutable segments."""
        return self._apply_lock

    def selector_bitmap(self) -> np.ndarray | None:
        """Packed tombstone bitmap (bit i: row i is dead), or None when nothing is dead.
        Cached until the next change."""
        version = self.version  # read first: a bitmap packed from older flags is never reused
        if not self.n_dead:
            return None
        cached = self._packed
        if cached is not None and cached[0] == version:
            return cached[1]
        packed = np.packbits(self.dead[:self.ntotal_rows], bitorder="little")
        self._packed = (version, packed)
        return packed

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
        delta_dead = int(self.dead[self.n_base:self.ntotal_rows].sum())
        drift = None
        base_err = self._base_error() if n_delta else None
        if base_err:
            drift = round(self._err_sum / n_delta / base_err, 4)
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

    def _cover(self, n: int) -> None:
        """Make the tombstone array cover rows [0, n)."""
        if n > len(self.dead):
            grown = np.zeros(max(2 * len(self.dead), n + 1024), dtype=bool)
            grown[:len(self.dead)] = self.dead
            self.dead = grown

    def _kill(self, row: int) -> None:
        self._cover(row + 1)
        if not self.dead[row]:
            self.dead[row] = True
            self.n_dead += 1

    def _apply(self, rec: Record) -> None:
        """Apply one record to the in-memory state (under the state's write lock)."""
        if rec.op == SEAL:
            self.sealed = True
            return
        if rec.lsn <= self.last_lsn:
            return  # already in the base (compaction) or applied
        if rec.op == DELETE:
            for i, r in self.rows_of(rec.ids).items():
                self._kill(r)
                self.id_to_delta.pop(i, None)
        elif rec.op == UPSERT and rec.vectors is not None:
            for r in self.rows_of(rec.ids).values():
                self._kill(r)
            first = len(self.delta_ids)
            self._encode(rec.vectors, first)
            payloads = rec.payloads or [None] * len(rec.ids)
            for k, (i, p) in enumerate(zip(rec.ids, payloads, strict=True)):
                self.id_to_delta[i] = first + k
                self.delta_ids.append(i)
                self.delta_payloads.append(None if p is None else json.dumps(
                    p, ensure_ascii=False, separators=(",", ":")))
            self._cover(self.ntotal_rows)
        self.last_lsn = rec.lsn
        self.version += 1  # after the flags: see selector_bitmap

    def _encode(self, x: np.ndarray, first: int) -> None:
        """Codes of new rows, made by the base's codebooks, into the delta segment."""
        tmp = faiss.deserialize_index(self._empty)
        self.codebooks.add(tmp, x)
        served = lift_rq(tmp)
        self._err_sum += float(quantization_error(self.codebooks.index, x).sum())
        big, recent = self.segments
        recent = merged(recent, served, self.n_base + first)
        if recent.ntotal >= RECENT_ROWS:  # fold the recent part into the large one
            big = merged(big, recent, 0)
            recent = faiss.deserialize_index(self._empty_served)
        self.segments = (big, recent)  # one reference store: searches see old or new

    # ---- writing ---------------------------------------------------------------------------
    def prepare(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(coarse-stage input, dense rows) of new documents: normalised as the base was, and
        through the BiDR document tower where the dense store holds its output."""
        x = np.asarray(vectors)
        if x.ndim != 2:
            raise InputError(f"vectors: expected [n, {self.dim}], got shape {x.shape}")
        check_vectors(x, d=self.dim, name="vector")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.base.normalize:
            x = normalize_rows(x)
        dense = x if self.doc_tower is None else self.doc_tower.apply(x)
        return x, np.ascontiguousarray(dense, dtype=self.dtype)

    def check_ids(self, ids: Sequence[ExternalId]) -> list[ExternalId]:
        kind = self.base.manifest.id_kind
        out: list[ExternalId] = []
        for i in ids:
            if kind == "int":
                if isinstance(i, bool) or not isinstance(i, int):
                    raise InputError(f"id {i!r}: this index has integer ids")
                if not -(2 ** 63) <= i < 2 ** 63:
                    raise InputError(f"id {i}: out of the int64 range")
            else:
                if not isinstance(i, str) or not i or "\n" in i or "\r" in i or len(i) > 1024:
                    raise InputError(f"id {i!r}: this index has string ids (1-1024 "
                                     "characters, no newline)")
            out.append(i)
        if len(set(out)) != len(out):
            raise InputError("ids: the same id twice in one batch")
        return out

    def upsert(self, ids: Sequence[ExternalId], vectors: np.ndarray,
               payloads: Sequence[JsonObject | None] | None = None) -> int:
        """Insert or replace documents; durable when it returns (the log is fsynced). Returns
        the log sequence number of the batch."""
        ids = self.check_ids(ids)
        x, dense = self.prepare(vectors)
        if len(x) != len(ids):
            raise InputError(f"{len(ids)} ids for {len(x)} vectors")
        plist: list[JsonValue] | None = None
        if payloads is not None:
            if len(payloads) != len(ids):
                raise InputError(f"{len(ids)} ids for {len(payloads)} payloads")
            for i, p in zip(ids, payloads, strict=True):
                payload_json(p, f"payload of id {i!r}")  # checks type, JSON-ness and size
            plist = [p for p in payloads]  # type: ignore[misc]
        return self._commit(UPSERT, ids, plist, x, dense)[0]

    def delete(self, ids: Sequence[ExternalId]) -> tuple[int, int]:
        """Delete documents (unknown ids are no-ops); durable when it returns. Returns (log
        sequence number, how many existed)."""
        return self._commit(DELETE, self.check_ids(ids), None, None, None)

    def _commit(self, op: int, ids: list[ExternalId], payloads: list[JsonValue] | None,
                x: np.ndarray | None, dense: np.ndarray | None) -> tuple[int, int]:
        """Log one write and apply it: (lsn, how many of ``ids`` existed before it).

        Under the writer lock: catch up, write the dense rows, append the record, fsync, apply.
        The catch-up lock is held around the catch-up and the apply only, never across the
        fsync: a search of this process meanwhile applies the log up to this record
        (``_append_at``) and never the record itself before it is durable.
        """
        if self._wal is None:
            raise WritesUnsupportedError(f"{self.base.path}: opened read-only")
        with self._write_lock, writer_lock(self.ldir):
            with self._catch_lock:
                self._catch_up_locked()
                if self.sealed or self._served_epoch() != (self.log_id, self.epoch):
                    raise WriteConflictError("the index was compacted into a new generation; "
                                             "the service is switching to it: retry the write")
                lsn, first = self.last_lsn + 1, len(self.delta_ids)
                found = len(self.rows_of(ids))
                self._append_at = self.offset
            try:
                if dense is not None and self._rows_fd is not None:
                    self._reserve_rows(first + len(dense))
                    os.pwrite(self._rows_fd, dense.tobytes(),
                              first * self.dim * self.dtype.itemsize)
                end = self._wal.append(lsn, op, list(ids), payloads, x)
            except BaseException:
                with self._catch_lock:
                    self._append_at = None
                raise
            with self._catch_lock:
                self._append_at = None
                self._map_rows()
                with self._apply_lock:
                    self._apply(Record(lsn, op, list(ids), payloads, x))
                self.offset = end
        return lsn, found

    def _served_epoch(self) -> tuple[str, int]:
        """(log id, epoch) of the generation now at the base's directory; the manifest is read
        again only when it was replaced (compaction swaps the directory)."""
        st = os.stat(self.base.path / layout.MANIFEST)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._epoch_seen is None or self._epoch_seen[0] != key:
            m = read_manifest(self.base.path)
            self._epoch_seen = (key, (log_identity(m), int((m.live or {}).get("epoch", 0))))
        return self._epoch_seen[1]

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        if self._rows_fd is not None:
            os.close(self._rows_fd)
            self._rows_fd = None

    # ---- opening ---------------------------------------------------------------------------
    def _recover(self, writable: bool) -> None:
        """Open (or create) this epoch's log, cut a torn tail, make the rows file match the
        log, and apply every record past the base's ``applied_lsn``."""
        path = wal_path(self.ldir, self.epoch)
        log_id = bytes.fromhex(self.log_id)
        if not writable:
            if not path.exists():
                return
            records, wal = self._read_only(path, log_id)
        else:
            self.ldir.mkdir(parents=True, exist_ok=True)
            with writer_lock(self.ldir):
                wal, records = self._open_log(path, log_id)
                sync_rows(rows_path(self.ldir, self.epoch), records, self.prepare,
                          self.applied_lsn)
            self._wal = wal
        self._rows_fd = os.open(rows_path(self.ldir, self.epoch),
                                os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY, 0o644)
        self._map_rows()
        with self._apply_lock:
            for r in records:
                self._apply(r)
        self.offset = records[-1].end if records else HEADER_SIZE

    def _read_only(self, path: Path, log_id: bytes) -> tuple[list[Record], WriteAheadLog | None]:
        epoch, found = read_header(path)
        if found != log_id or epoch != self.epoch:
            return [], None
        records, _ = scan(path)
        return records, None

    def _open_log(self, path: Path, log_id: bytes) -> tuple[WriteAheadLog, list[Record]]:
        if path.exists():
            try:
                epoch, found = read_header(path)
            except EbrError:
                epoch, found = -1, b""
            if found == log_id and epoch == self.epoch:
                return WriteAheadLog.open(path)
            aside = path.with_name(f"{path.name}.stale-{int(time.time())}")
            logger.warning("%s belongs to another build of the index; moved to %s", path, aside)
            os.replace(path, aside)
        return WriteAheadLog.create(path, self.epoch, log_id), []


def sync_rows(path: Path, records: Sequence[Record],
              prepare: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
              after_lsn: int) -> None:
    """Make the rows file hold the dense rows of the upserts in ``records`` past
    ``after_lsn``, in order: rows that differ are rewritten, rows beyond them cut (a crash
    may leave rows of a write that was never logged, or lose rows the log holds)."""
    n_bytes = 0
    with open(path, "a+b") as f:
        for r in records:
            if r.op != UPSERT or r.vectors is None or r.lsn <= after_lsn:
                continue
            data = prepare(r.vectors)[1].tobytes()
            f.seek(n_bytes)
            if f.read(len(data)) != data:
                os.pwrite(f.fileno(), data, n_bytes)
            n_bytes += len(data)
        f.truncate(n_bytes)
        f.flush()
        os.fsync(f.fileno())


RECENT_ROWS = 2048  # rows in the small, copied-per-write part of the delta segment


def merged(segment: faiss.Index, codes: faiss.Index, add_id: int) -> faiss.Index:
    """A copy of ``segment`` with the lists of ``codes`` appended (ids + ``add_id``).
    Neither input changes (faiss' merge_from empties its source: it gets a copy)."""
    out = faiss.clone_index(segment)
    source = faiss.clone_index(codes)  # held here until the merge is done
    ivf = faiss.extract_index_ivf(out)
    ivf.merge_from(faiss.extract_index_ivf(source), add_id)
    out.ntotal = ivf.ntotal
    return out


def log_identity(manifest: Manifest) -> str:
    """The id (32 hex digits) of the log a generation continues; for an index built before
    logs existed, one derived from its build."""
    live = manifest.live or {}
    if isinstance(live.get("log_id"), str) and len(live["log_id"]) == 32:
        return str(live["log_id"])
    seed = f"{manifest.build.get('created')}/{manifest.spec}/{manifest.ntotal}/{manifest.dim}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def quantization_error(codebooks_index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """|x - x^|^2 / |x|^2 per row, x^ the codebooks' reconstruction (the drift signal)."""
    rec = codebooks_index.sa_decode(codebooks_index.sa_encode(x))
    num = ((x - rec) ** 2).sum(axis=1)
    return num / np.maximum((x * x).sum(axis=1), 1e-12)


def open_live(base: OpenIndex, index_dir: str | os.PathLike[str], *, writable: bool = True
              ) -> LiveIndex:
    """The living view of ``base`` (opened from ``index_dir``): its log replayed. ``writable``
    creates the live directory and takes writes; read-only views only replay."""
    if base.manifest.shards:
        raise WritesUnsupportedError("sharded indexes do not take writes")
    docs = None
    if base.manifest.docs:
        if base.manifest.docs not in base.manifest.files:
            raise IndexFormatError(f"{base.path}: docs {base.manifest.docs!r} is not listed")
        docs = DocStore(base.path / base.manifest.docs, base.manifest.id_kind)
    codebooks = load_codebooks(base)
    tower = None
    if base.manifest.towers:
        tower = Tower.load(base.path / base.manifest.towers["doc"], base.dim)
    live = LiveIndex(base, live_dir(index_dir), docs, codebooks, tower)
    t0 = time.perf_counter()
    live._recover(writable)
    if live.last_lsn > live.applied_lsn:
        logger.info("replayed %d log records (%d delta rows, %d tombstones) in %.2f s",
                    live.last_lsn - live.applied_lsn, len(live.delta_ids), live.n_dead,
                    time.perf_counter() - t0)
    return live
