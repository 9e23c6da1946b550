"""A living index: an immutable base generation, plus the writes logged since it was built.

Files (``<index dir>.live/`` beside the served directory, so that a new generation swapped in
at the index directory keeps them)::

    lock                 flock: the writer lock (one appender at a time, across processes)
    wal-<epoch>.log      the write-ahead log (ebr.index.wal): the truth about the delta
    delta-<epoch>.rows   dense rows of upserted documents, raw [rows, dim] in the base's dtype

The base's manifest names the log it continues (``live``: log id, epoch, and ``applied_lsn``,
the last record already folded into it by compaction). A log of another id is stale (the base
was rebuilt from scratch): it is moved aside, not replayed.

In memory, per process: the delta segment, the tombstones and the delta's ids and payloads
(:class:`ebr.index.view.LiveView`), caught up from the log before each search and write.

Writing (:meth:`LiveIndex.upsert`, :meth:`LiveIndex.delete`), under the writer lock: catch up,
write the new dense rows, append one log record for the whole batch and fsync it, apply it.
The write is acknowledged after the fsync: from then on it survives a crash, and every
process sees it at its next search (:meth:`LiveView.catch_up`: one ``fstat`` when nothing
is new). Dense rows are written before the record, so a process that reads the record finds
its rows; on recovery, rows beyond the log are cut and rows the log holds are rewritten.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ebr.errors import (
    EbrError,
    IndexFormatError,
    InputError,
    WriteConflictError,
    WritesUnsupportedError,
)
from ebr.index.docs import DocStore, payload_json
from ebr.index.logdir import live_dir, log_identity, rows_path, sync_rows, wal_path, writer_lock
from ebr.index.reader import OpenIndex
from ebr.index.segments import load_codebooks, return_freed_memory
from ebr.index.view import LiveStats, LiveView
from ebr.index.wal import (
    DELETE,
    HEADER_SIZE,
    UPSERT,
    Record,
    WriteAheadLog,
    read_header,
    scan,
)
from ebr.io import layout
from ebr.io.manifest import read_manifest
from ebr.io.vecs import check_vectors
from ebr.metric import normalize_rows
from ebr.towers import Tower
from ebr.types import ExternalId, JsonObject, JsonValue

__all__ = ["LiveIndex", "LiveStats", "open_live"]

logger = logging.getLogger(__name__)


class LiveIndex(LiveView):
    """A :class:`LiveView` that takes writes (:meth:`upsert`, :meth:`delete`) and opens from
    disk (:func:`open_live`). Thread-safe."""

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
        if not writable:  # a read-only view: the rows come from the log, into RAM
            records = self._read_only(path, log_id) if path.exists() else []
            rows = [self.prepare(r.vectors)[1] for r in records if r.op == UPSERT and
                    r.vectors is not None and r.lsn > self.applied_lsn]
            if rows:
                self.delta_rows = np.concatenate(rows)
        else:
            self.ldir.mkdir(parents=True, exist_ok=True)
            with writer_lock(self.ldir):
                self._wal, records = self._open_log(path, log_id)
                sync_rows(rows_path(self.ldir, self.epoch), records, self.prepare,
                          self.applied_lsn)
            self._rows_fd = os.open(rows_path(self.ldir, self.epoch), os.O_RDWR)
            self._map_rows()
        with self._apply_lock:
            for r in records:
                self._apply(r)
        self.offset = records[-1].end if records else HEADER_SIZE

    def _read_only(self, path: Path, log_id: bytes) -> list[Record]:
        epoch, found = read_header(path)
        if found != log_id or epoch != self.epoch:
            return []  # another build's log: not ours to replay
        return scan(path)[0]

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
    return_freed_memory()  # the copies the opening made of the codebooks (segments.py)
    if live.last_lsn > live.applied_lsn:
        logger.info("replayed %d log records (%d delta rows, %d tombstones) in %.2f s",
                    live.last_lsn - live.applied_lsn, len(live.delta_ids), live.n_dead,
                    time.perf_counter() - t0)
    return live
