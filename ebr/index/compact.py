"""Compaction: fold the log into a new immutable generation, without retraining.

    base + delta - tombstones  ->  new generation (same codebooks, same codes)  ->  swapped in

Nothing is re-encoded: the base's codes are kept (tombstoned rows removed from their lists),
the delta's codes (made by the same codebooks) are merged in, and every row is renumbered.
The dense rows, ids and payloads are streamed into the new files. Cost: one pass over the
dense store, no k-means, no codebook training (``bench/bench_mutations.py``).

Searches and writes go on meanwhile. The writes logged after the snapshot (log sequence number
L) are carried into the next epoch's log under the writer lock, just before the new generation
is published; the old log then gets a SEAL record, which tells every process to switch. The
new manifest records ``live.applied_lsn = L``, so a crash at any point replays nothing twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from ebr.index.docs import write_docs
from ebr.index.live import LiveIndex, open_live
from ebr.index.logdir import rows_path, sync_rows, wal_path, writer_lock
from ebr.index.publish import publish, staging_dir
from ebr.index.reader import open_index
from ebr.index.segments import merged
from ebr.index.wal import SEAL, WriteAheadLog, scan
from ebr.io import layout
from ebr.io.manifest import FileEntry, Manifest, sha256_file, write_manifest
from ebr.io.vecs import write_bin
from ebr.types import ExternalId

__all__ = ["compact"]

logger = logging.getLogger(__name__)
_CHUNK = 65536


def compact(index_dir: str | os.PathLike[str], *, verify_checksums: bool = True,
            progress: bool = False) -> Manifest:
    """Write base + delta - tombstones of the index at ``index_dir`` as its new generation
    and swap it in (module docstring). Returns the new manifest."""
    t0 = time.perf_counter()
    target = Path(os.path.realpath(index_dir))
    base = open_index(target, verify_checksums=verify_checksums, probe="flat")
    live = open_live(base, target)
    try:
        with live.reading():  # the snapshot: everything up to live.last_lsn
            snap = _Snapshot(live)
        with staging_dir(target) as tmp:
            names = _write_generation(tmp, live, snap, progress)
            files = {n: FileEntry(bytes=(tmp / n).stat().st_size, sha256=sha256_file(tmp / n))
                     for n in names}
            seconds = round(time.perf_counter() - t0, 3)
            manifest = _manifest(base.manifest, snap, files, seconds, live)
            write_manifest(tmp, manifest)
            _switch(live, snap, tmp, target)
    finally:
        live.close()
    logger.info("compacted %s: %d -> %d documents (%d delta rows, %d tombstones) in %.1f s",
                target, snap.n_base, manifest.ntotal, snap.n_delta, snap.n_dead,
                time.perf_counter() - t0)
    return manifest


class _Snapshot:
    """What compaction folds in: the state after record ``lsn``."""

    def __init__(self, live: LiveIndex) -> None:
        self.lsn = live.last_lsn
        self.epoch = live.epoch
        self.n_base = live.n_base
        self.n_delta = len(live.delta_ids)
        n_all = self.n_base + self.n_delta
        dead = live.dead.mask(n_all)
        self.n_dead = int(dead.sum())
        self.keep = ~dead
        self.new_row = np.full(n_all, -1, dtype=np.int64)
        self.new_row[self.keep] = np.arange(int(self.keep.sum()), dtype=np.int64)
        self.ntotal = int(self.keep.sum())
        big, recent = live.segments()
        self.delta = merged(big, recent, 0) if recent is not None else faiss.clone_index(big)
        self.delta_ids = list(live.delta_ids)
        self.delta_payloads = list(live.delta_payloads)
        self.delta_rows = np.array(live.delta_rows[:self.n_delta])
        self.drift = live.stats().drift  # of the documents folded in (ebr.index.live)


def _write_generation(tmp: Path, live: LiveIndex, snap: _Snapshot, progress: bool) -> list[str]:
    base = live.base
    m = base.manifest
    names = [layout.COARSE, layout.DENSE[m.dense_dtype]]
    _write_coarse(tmp / layout.COARSE, base.path / layout.COARSE, snap)
    _write_dense(tmp / layout.DENSE[m.dense_dtype], live, snap, progress)
    ids = _new_ids(live, snap)
    if m.id_kind == "int":
        write_bin(tmp / layout.IDS_INT, np.asarray(ids, dtype=np.int64).reshape(-1, 1))
        names.append(layout.IDS_INT)
    else:
        (tmp / layout.IDS_STR).write_text("\n".join(str(i) for i in ids) + "\n")
        names.append(layout.IDS_STR)
    write_docs(tmp / layout.DOCS, ids, rows_payloads=_new_payloads(live, snap),
               fields=live.docs.fields() if live.docs is not None else None)
    names.append(layout.DOCS)
    rewritten = {layout.COARSE, layout.DENSE[m.dense_dtype], layout.IDS_INT, layout.IDS_STR,
                 layout.DOCS}
    for name in m.files:  # codebooks, query map, towers, a fine-tuned encoder: unchanged
        if name in rewritten:
            continue
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(base.path / name, tmp / name)  # immutable (0444): sharing the inode is safe
        except OSError:
            shutil.copy2(base.path / name, tmp / name)
        names.append(name)
    for name in names:
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    return names


def _write_coarse(out: Path, src: Path, snap: _Snapshot) -> None:
    """The base's coarse index, tombstoned rows removed, the delta's codes merged, every id
    renumbered to its new row."""
    index = faiss.read_index(str(src))  # into RAM: its lists are rewritten
    ivf = faiss.extract_index_ivf(index)
    dead_base = np.flatnonzero(~snap.keep[:snap.n_base]).astype(np.int64)
    if len(dead_base):
        ivf.remove_ids(faiss.IDSelectorBatch(len(dead_base), faiss.swig_ptr(dead_base)))
    if snap.n_delta:
        delta_ivf = faiss.extract_index_ivf(snap.delta)
        dead_delta = (np.flatnonzero(~snap.keep[snap.n_base:]) + snap.n_base).astype(np.int64)
        if len(dead_delta):
            delta_ivf.remove_ids(faiss.IDSelectorBatch(len(dead_delta),
                                                       faiss.swig_ptr(dead_delta)))
        ivf.merge_from(delta_ivf, 0)
    invlists = ivf.invlists
    for lst in range(ivf.nlist):
        n = invlists.list_size(lst)
        if n:
            ids = faiss.rev_swig_ptr(invlists.get_ids(lst), n)
            ids[:] = snap.new_row[ids]
    index.ntotal = ivf.ntotal
    if ivf.ntotal != snap.ntotal:
        raise RuntimeError(f"internal: compacted coarse index holds {ivf.ntotal} codes for "
                           f"{snap.ntotal} documents")
    faiss.write_index(index, str(out))


def _write_dense(out: Path, live: LiveIndex, snap: _Snapshot, progress: bool) -> None:
    base = live.base
    dtype = base.dense.dtype
    bar = tqdm(total=snap.ntotal, desc="compact dense", unit="vec", disable=not progress)
    with open(out, "wb") as f:
        np.array([snap.ntotal, base.dim], dtype=np.uint32).tofile(f)
        for a in range(0, snap.n_base, _CHUNK):
            b = min(a + _CHUNK, snap.n_base)
            keep = snap.keep[a:b]
            with base.using():
                block = np.asarray(base.dense[a:b])[keep]
            block.astype(dtype).tofile(f)
            bar.update(len(block))
        block = snap.delta_rows[snap.keep[snap.n_base:]]
        block.astype(dtype).tofile(f)
        bar.update(len(block))
    bar.close()


def _new_ids(live: LiveIndex, snap: _Snapshot) -> list[ExternalId]:
    kept_base = np.flatnonzero(snap.keep[:snap.n_base])
    out: list[ExternalId] = []
    for a in range(0, len(kept_base), _CHUNK):
        out.extend(x for x in live.base.external_ids(kept_base[a:a + _CHUNK]) if x is not None)
    out.extend(i for i, k in zip(snap.delta_ids, snap.keep[snap.n_base:], strict=True) if k)
    return out


def _new_payloads(live: LiveIndex, snap: _Snapshot) -> Iterator[tuple[int, str | None]]:
    if live.docs is not None:
        for row, text in live.docs.iter_payloads():
            if snap.keep[row]:
                yield int(snap.new_row[row]), text
    for k, text in enumerate(snap.delta_payloads):
        row = snap.n_base + k
        if text is not None and snap.keep[row]:
            yield int(snap.new_row[row]), text


def _manifest(old: Manifest, snap: _Snapshot, files: dict[str, FileEntry], seconds: float,
              live: LiveIndex) -> Manifest:
    return replace(
        old, ntotal=snap.ntotal, files=files, docs=layout.DOCS,
        live={"log_id": live.log_id, "epoch": snap.epoch + 1, "applied_lsn": snap.lsn,
              "compacted": {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "from_documents": snap.n_base, "delta_rows": snap.n_delta,
                            "tombstones": snap.n_dead, "seconds": seconds,
                            "drift": snap.drift}})


def _switch(live: LiveIndex, snap: _Snapshot, tmp: Path, target: Path) -> None:
    """Under the writer lock: carry the records logged since the snapshot into the next
    epoch's log and rows, publish the new generation, seal the old log, drop older epochs."""
    ldir, epoch = live.ldir, snap.epoch
    with writer_lock(ldir):
        records, _ = scan(wal_path(ldir, epoch))
        later = [r for r in records if r.lsn > snap.lsn and r.op != SEAL]
        wal = WriteAheadLog.create(wal_path(ldir, epoch + 1), epoch + 1,
                                   bytes.fromhex(live.log_id))
        try:
            wal.copy_records(later)
        finally:
            wal.close()
        sync_rows(rows_path(ldir, epoch + 1), later, live.prepare, snap.lsn)
        publish(tmp, target, overwrite=True)
        old = WriteAheadLog(wal_path(ldir, epoch), epoch, bytes.fromhex(live.log_id))
        try:
            old.append(0, SEAL, [], next_epoch=epoch + 1)
        finally:
            old.close()
    for e in range(epoch):  # the sealed epoch stays until the next compaction: slow readers
        for p in (wal_path(ldir, e), rows_path(ldir, e)):
            p.unlink(missing_ok=True)
    logger.info("carried %d records logged during compaction into epoch %d", len(later),
                epoch + 1)
