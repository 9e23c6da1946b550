"""The write-ahead log of a living index: one record per write batch, checksummed.

A file starts with a 32-byte header (magic, format, epoch, the log id that ties it to its base
generation) and holds records, each::

    magic u32 | body length u32 | crc32(body) u32 | body

    body: lsn u64 | op u8 | count u32 | dim u32 | meta length u32 | meta (JSON) | vectors

``op`` is :data:`UPSERT` (meta: ``{"ids": [...], "payloads": [...]}``, vectors float32
[count, dim]), :data:`DELETE` (meta: ``{"ids": [...]}``) or :data:`SEAL` (the epoch is closed:
compaction moved on to the next one; meta: ``{"next_epoch": e}``). A whole batch is one
record, so recovery applies a batch entirely or not at all.

:meth:`WriteAheadLog.append` returns only after ``fsync``: an acknowledged write is on disk.
:func:`scan` stops at the first record that is short or fails its CRC (a torn tail from a
crash mid-append) and reports where the good part ends; :meth:`WriteAheadLog.open` cuts the
file there, under the writer lock.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ebr.errors import CorruptFileError
from ebr.types import JsonValue

__all__ = ["Record", "WriteAheadLog", "scan", "UPSERT", "DELETE", "SEAL", "HEADER_SIZE"]

UPSERT, DELETE, SEAL = 1, 2, 3
_FILE_MAGIC = b"EBRWAL01"
_HEADER = struct.Struct("<8sII16s")  # magic, format, epoch, log id (uuid bytes)
HEADER_SIZE = _HEADER.size  # 32
_REC = struct.Struct("<III")  # magic, body length, crc32
_REC_MAGIC = 0xEB5EC0DE
_BODY = struct.Struct("<QBIII")  # lsn, op, count, dim, meta length
_MAX_BODY = 1 << 31


@dataclass(frozen=True)
class Record:
    """One logged write batch (``vectors`` float32 [count, dim] for upserts, else None)."""

    lsn: int
    op: int
    ids: list[int | str]
    payloads: list[JsonValue] | None
    vectors: np.ndarray | None
    next_epoch: int | None = None
    end: int = 0  # file offset just past this record


def _encode(lsn: int, op: int, meta: dict[str, JsonValue], vectors: np.ndarray | None) -> bytes:
    meta_b = json.dumps(meta, separators=(",", ":"), ensure_ascii=False,
                        allow_nan=False).encode()
    vec = b"" if vectors is None else np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    count = 0 if vectors is None else int(vectors.shape[0])
    dim = 0 if vectors is None else int(vectors.shape[1])
    if op == DELETE:
        ids = meta.get("ids")
        count = len(ids) if isinstance(ids, list) else 0
    body = _BODY.pack(lsn, op, count, dim, len(meta_b)) + meta_b + vec
    if len(body) >= _MAX_BODY:
        raise ValueError("write batch too large for one log record (2 GiB)")
    return _REC.pack(_REC_MAGIC, len(body), zlib.crc32(body)) + body


def _decode(body: bytes, end: int) -> Record:
    lsn, op, count, dim, meta_len = _BODY.unpack_from(body)
    meta = json.loads(body[_BODY.size:_BODY.size + meta_len])
    vectors = None
    if op == UPSERT:
        start = _BODY.size + meta_len
        vectors = np.frombuffer(body, dtype="<f4", count=count * dim, offset=start
                                ).reshape(count, dim).astype(np.float32)
    return Record(lsn=lsn, op=op, ids=list(meta.get("ids", [])), payloads=meta.get("payloads"),
                  vectors=vectors, next_epoch=meta.get("next_epoch"), end=end)


def read_header(path: Path) -> tuple[int, bytes]:
    """(epoch, log id) of the log at ``path``."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) != HEADER_SIZE:
        raise CorruptFileError(f"{path}: write-ahead log header is truncated")
    magic, fmt, epoch, log_id = _HEADER.unpack(raw)
    if magic != _FILE_MAGIC or fmt != 1:
        raise CorruptFileError(f"{path}: not an ebr write-ahead log")
    return epoch, log_id


def scan(path: Path, start: int = HEADER_SIZE, stop: int | None = None
         ) -> tuple[list[Record], int]:
    """Records from byte ``start`` (to ``stop``) to the last whole one, and the offset where
    they end. A short or corrupt record ends the scan: everything from it on is a torn tail."""
    records, good = [], start
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read() if stop is None else f.read(max(stop - start, 0))
    pos = 0
    while pos + _REC.size <= len(data):
        magic, length, crc = _REC.unpack_from(data, pos)
        body_at = pos + _REC.size
        if magic != _REC_MAGIC or body_at + length > len(data):
            break
        body = data[body_at:body_at + length]
        if zlib.crc32(body) != crc:
            break
        pos = body_at + length
        records.append(_decode(body, start + pos))
        good = start + pos
    return records, good


class WriteAheadLog:
    """An open log file of one epoch, appended to by the process that holds the writer lock."""

    def __init__(self, path: Path, epoch: int, log_id: bytes) -> None:
        self.path, self.epoch, self.log_id = path, epoch, log_id
        self.fd = os.open(path, os.O_RDWR)

    @classmethod
    def create(cls, path: Path, epoch: int, log_id: bytes) -> WriteAheadLog:
        """A new, empty log (replacing any file at ``path``), made durable with its directory."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_HEADER.pack(_FILE_MAGIC, 1, epoch, log_id))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return cls(path, epoch, log_id)

    @classmethod
    def open(cls, path: Path) -> tuple[WriteAheadLog, list[Record]]:
        """Open an existing log; cut a torn tail off (the caller holds the writer lock)."""
        epoch, log_id = read_header(path)
        records, good = scan(path)
        size = os.path.getsize(path)
        if good < size:
            with open(path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        return cls(path, epoch, log_id), records

    def append(self, lsn: int, op: int, ids: list[int | str],
               payloads: list[JsonValue] | None = None, vectors: np.ndarray | None = None,
               next_epoch: int | None = None) -> int:
        """Write one record and fsync; returns the offset just past it."""
        meta: dict[str, JsonValue] = {"ids": list(ids)}
        if payloads is not None:
            meta["payloads"] = payloads
        if next_epoch is not None:
            meta["next_epoch"] = next_epoch
        rec = _encode(lsn, op, meta, vectors)
        end = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            os.write(self.fd, rec)
            os.fsync(self.fd)
        except OSError:
            os.ftruncate(self.fd, end)  # nothing of a failed append stays behind
            raise
        return end + len(rec)

    def copy_records(self, records: Iterator[Record] | list[Record]) -> int:
        """Append ``records`` as they are (lsn kept), one fsync at the end."""
        end = os.lseek(self.fd, 0, os.SEEK_END)
        for r in records:
            meta: dict[str, JsonValue] = {"ids": list(r.ids)}
            if r.payloads is not None:
                meta["payloads"] = r.payloads
            end += os.write(self.fd, _encode(r.lsn, r.op, meta, r.vectors))
        os.fsync(self.fd)
        return end

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        os.close(self.fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
