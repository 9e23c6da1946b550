"""``open_index``: open an index directory read-only, after checking it is whole.

The coarse index is read with ``faiss.IO_FLAG_MMAP`` (its inverted lists stay in the page
cache, shared between worker processes); the dense store is a read-only ``np.memmap`` read row by
row at re-rank time. Nothing is opened unless the manifest's version is known and every file has
the recorded size (and, by default, the recorded sha256).
"""

from __future__ import annotations

import contextlib
import logging
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ebr.errors import CorruptFileError, IndexFormatError
from ebr.index.guard import FileGuard
from ebr.io import layout
from ebr.io.manifest import Manifest, read_manifest, verify_files
from ebr.io.vecs import RowPrefetch, read_bin
from ebr.metric import Metric
from ebr.quant.faiss_index import coarse_ram_bytes, extract_ivfpq, serves_l2_as_ip
from ebr.quant.probe import Probe, ProbeKind, build_probe
from ebr.spec import IndexSpec
from ebr.towers import Tower
from ebr.types import ExternalId

__all__ = ["OpenIndex", "open_index"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenIndex:
    """A verified, opened index directory. Immutable; safe to share between threads."""

    path: Path
    manifest: Manifest
    spec: IndexSpec
    metric: Metric
    coarse: faiss.Index  # IndexIVFPQ, or IndexPreTransform(OPQ) over one
    ivfpq: faiss.IndexIVFPQ
    dense: np.ndarray  # memmap [ntotal, dim], float32 or float16
    ids: Any  # np.ndarray[int64] or list[str]
    normalize: bool
    query_map: np.ndarray | None = None  # [d, d]: coarse-stage queries are W q
    query_tower: Tower | None = None  # BiDR: re-rank queries are f_q(q); the store holds f_d(v)
    guard: FileGuard | None = None  # keeps the mapped files from changing under a search
    prefetch: RowPrefetch | None = None  # the re-rank's hybrid read path (ebr.io.vecs)
    probe: Probe | None = None  # list points or a centroid graph pick the lists (ebr.quant.probe)

    def using(self) -> AbstractContextManager[None]:
        """``with index.using():`` around every read of the mapped coarse or dense bytes:
        raises :class:`ebr.errors.IndexChangedError` once a file is being changed on disk."""
        return self.guard.use() if self.guard is not None else contextlib.nullcontext()

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Dense rows (float32 [len(rows), dim]) of internal row ids, guarded."""
        with self.using():
            return np.asarray(self.dense[rows], dtype=np.float32)

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def ntotal(self) -> int:
        return self.manifest.ntotal

    @property
    def nlist(self) -> int:
        return self.spec.nlist

    @property
    def l2_as_ip(self) -> bool:
        """L2 RQ: the coarse index scores s = <q, x^> - |x^|^2 / 2 (ebr.quant.additive.lift_rq)."""
        return self.spec.l2_as_ip(self.metric)

    def external_ids(self, rows: np.ndarray) -> list[ExternalId | None]:
        """External ids of internal rows (``None`` for ``-1`` padding)."""
        r = np.asarray(rows).ravel()
        if isinstance(self.ids, np.ndarray):
            if r.size and r.min() >= 0:  # the usual case: no padding, one vectorised lookup
                return self.ids[r].tolist()
            return [None if i < 0 else self.ids[i].item() for i in r.tolist()]
        return [None if i < 0 else self.ids[i] for i in r.tolist()]

    def memory(self) -> dict[str, int | float]:
        """Bytes the coarse stage keeps in RAM vs bytes of dense vectors left on disk."""
        parts = coarse_ram_bytes(self.coarse)
        coarse = parts["coarse_ram_bytes"]
        dense = self.manifest.files[layout.DENSE[self.manifest.dense_dtype]].bytes
        query_side = (0 if self.query_map is None else self.query_map.nbytes) + (
            0 if self.query_tower is None else
            sum(w.nbytes for w in self.query_tower.weights.values()))
        probe_side = 0 if self.probe is None else self.probe.points_bytes
        return {
            **parts,
            "coarse_ram_bytes_per_vector": coarse / max(self.ntotal, 1),
            "query_side_bytes": query_side,  # query map + query tower (fixed, not per vector)
            "probe_bytes": probe_side,  # list points (+ a copy of the centroids): fixed
            "ram_bytes_per_vector": (coarse + query_side + probe_side) / max(self.ntotal, 1),
            "dense_disk_bytes": dense,
            "dense_bytes_per_vector": dense / max(self.ntotal, 1),
            "ram_fraction_of_dense": coarse / max(dense, 1),
            "coarse_file_bytes": self.manifest.files[layout.COARSE].bytes,
        }


def open_index(
    directory: str | os.PathLike[str],
    *,
    verify_checksums: bool = True,
    mmap: bool = True,
    precompute_tables: bool = False,
    guard: bool = True,
    prefetch: bool = True,
    probe: ProbeKind = "auto",
) -> OpenIndex:
    """Open an index directory read-only.

    verify_checksums: sha256 every file against the manifest (reads every byte once; turn off
        for very large indexes, sizes are still checked).
    mmap: memory-map the coarse inverted lists (``IO_FLAG_MMAP``) instead of loading them.
    precompute_tables: for L2 indexes, keep faiss' nlist x M x ksub float table in RAM (faster
        list scans, but it can outweigh the codes themselves on small corpora); off by default
        so the RAM figure is the codes'.
    guard: hold the mapped files (coarse index, dense store) with an :class:`FileGuard`
        (taken before they are verified), so a change on disk is refused, not a crash.
    prefetch: the hybrid read path of the re-rank (:class:`ebr.io.vecs.RowPrefetch`): rows
        read together from disk when the store is cold, mapped reads alone when it is warm.
    probe: how a query's lists are chosen (:mod:`ebr.quant.probe`): ``auto`` a graph over the
        centroids when there are >= 1,024 lists and it finds the flat scan's lists, ``flat``
        every centroid scored, ``hnsw`` the graph always (an error where it cannot serve);
        an index with list points (the default build) is probed by them under ``auto`` and
        ``points`` (:mod:`ebr.quant.listpoints`), ``flat`` ignores them.
    """
    path = Path(directory)
    manifest = read_manifest(path)
    if manifest.shards:
        raise IndexFormatError(f"{path}: a sharded index ({len(manifest.shards)} shards): open "
                               "it with ebr.index.sharded.open_sharded")
    if manifest.dense_dtype not in layout.DENSE:
        raise IndexFormatError(f"{path}: unknown dense dtype {manifest.dense_dtype!r}")
    file_guard = _guard(path, manifest) if guard else None
    verify_files(path, manifest, checksums=verify_checksums)
    try:
        spec = IndexSpec.parse(manifest.spec)
        metric = Metric.parse(manifest.metric)
    except Exception as e:
        raise IndexFormatError(f"{path}/manifest.json: {e}") from None
    coarse, ivfpq = _open_coarse(path, manifest, spec, metric, mmap, precompute_tables)
    points, per_list = _list_points(path, manifest, spec)
    list_probe = build_probe(coarse, probe, points, per_list)
    dense = read_bin(path / layout.DENSE[manifest.dense_dtype], mmap=True, random_access=True)
    _expect(path / layout.DENSE[manifest.dense_dtype], "shape", dense.shape,
            (manifest.ntotal, manifest.dim))
    row_prefetch = RowPrefetch(path / layout.DENSE[manifest.dense_dtype],
                               manifest.dim * dense.dtype.itemsize) if prefetch else None
    query_map, query_tower = _query_side(path, manifest)
    logger.info("opened %s: %s, %d x %d, %s%s", path, spec, manifest.ntotal, manifest.dim,
                metric.value, ", with BiDR towers" if query_tower is not None else "")
    return OpenIndex(path=path, manifest=manifest, spec=spec, metric=metric, coarse=coarse,
                     ivfpq=ivfpq, dense=dense, ids=_read_ids(path, manifest),
                     normalize=bool(manifest.build.get("params", {}).get("normalize", False)),
                     query_map=query_map, query_tower=query_tower, guard=file_guard,
                     prefetch=row_prefetch, probe=list_probe)


def _open_coarse(path: Path, manifest: Manifest, spec: IndexSpec, metric: Metric, mmap: bool,
                 precompute_tables: bool) -> tuple[faiss.Index, faiss.IndexIVFPQ]:
    """Read the coarse index (mapped) and check it is the one the manifest describes."""
    where = path / layout.COARSE
    flags = 0 if precompute_tables else faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE
    if mmap:
        flags |= faiss.IO_FLAG_MMAP
    try:
        coarse = faiss.read_index(str(where), flags)
    except RuntimeError as e:
        raise CorruptFileError(f"{where}: faiss cannot read it: "
                               f"{str(e).splitlines()[0] if str(e) else e}") from None
    try:
        ivfpq = extract_ivfpq(coarse)
    except Exception as e:
        raise CorruptFileError(f"{where}: {e}") from None
    if not precompute_tables:
        ivfpq.use_precomputed_table = -1  # never build the table lazily behind our back
    invlists = faiss.downcast_InvertedLists(ivfpq.invlists)
    if isinstance(invlists, faiss.OnDiskInvertedLists):
        # faiss starts prefetch threads on every search of a mapped index: ~1 ms per query
        # for nothing once the lists are in the page cache (measured 1.09 -> 0.075 ms at
        # nprobe 32). Cold pages still fault in on first touch.
        invlists.prefetch_nthread = 0
    _expect(where, "ntotal", coarse.ntotal, manifest.ntotal)
    _expect(where, "dimension", coarse.d, manifest.dim)
    _expect(where, "nlist", ivfpq.nlist, spec.nlist)
    _expect(where, "PQ M", ivfpq.pq.M, spec.pq_m)
    _expect(where, "bits per code", ivfpq.pq.nbits, spec.pq_nbits)
    # an RQ index is served as IVF-PQ over the query tiled M times (ebr.quant.additive.lift_rq)
    _expect(where, "code space dimension", ivfpq.d,
            manifest.dim * spec.pq_m if spec.is_additive else spec.code_dim(manifest.dim))
    # L2 RQ is served as inner product, with [q, 1] against [c, -|c|^2/2] in the quantizer
    l2_as_ip = spec.l2_as_ip(metric)
    _expect(where, "metric", coarse.metric_type,
            faiss.METRIC_INNER_PRODUCT if l2_as_ip else metric.faiss_metric)
    if spec.is_additive:
        _expect(where, "L2 norm byte", serves_l2_as_ip(coarse), l2_as_ip)
    return coarse, ivfpq


def _read_ids(path: Path, manifest: Manifest) -> Any:
    """The external ids: int64 array or list of strings, one per row."""
    ids: Any
    if manifest.id_kind == "int":
        ids = np.array(read_bin(path / layout.IDS_INT, mmap=False)).ravel()
    elif manifest.id_kind == "str":
        try:
            ids = (path / layout.IDS_STR).read_text(encoding="utf-8").split("\n")[:-1]
        except (OSError, UnicodeDecodeError) as e:
            raise CorruptFileError(f"{path / layout.IDS_STR}: {e}") from None
    else:
        raise IndexFormatError(f"{path}: unknown id_kind {manifest.id_kind!r}")
    if len(ids) != manifest.ntotal:
        raise CorruptFileError(f"{path}: {len(ids)} external ids for {manifest.ntotal} vectors")
    return ids


def _list_points(path: Path, manifest: Manifest, spec: IndexSpec
                 ) -> tuple[np.ndarray | None, int]:
    """The lists' points (float32 [nlist * m, d] in the IVF's space: d' after OPQ to d'
    dimensions) and m, or (None, 1) for an index without."""
    entry = manifest.codebooks.get("encoding", {}).get("list_points")
    if not entry:
        return None, 1
    try:
        name, per_list = str(entry["file"]), int(entry["per_list"])
    except (KeyError, TypeError, ValueError):
        raise IndexFormatError(f"{path}: malformed list_points entry {entry!r}") from None
    if name not in manifest.files:
        raise IndexFormatError(f"{path}: list points {name!r} are not a listed file")
    points = np.array(read_bin(path / name, mmap=False), dtype=np.float32)
    d = manifest.dim if spec.is_additive else spec.code_dim(manifest.dim)
    _expect(path / name, "shape", points.shape, (spec.nlist * per_list, d))
    if not np.isfinite(points).all():
        raise CorruptFileError(f"{path / name}: list points are not finite")
    return points, per_list


def _query_side(path: Path, manifest: Manifest) -> tuple[np.ndarray | None, Tower | None]:
    """The learned query map (coarse stage) and BiDR query tower (re-rank), when listed."""
    query_map = None
    if manifest.query_map is not None:
        if manifest.query_map not in manifest.files:
            raise IndexFormatError(f"{path}: query_map {manifest.query_map!r} is not a listed file")
        query_map = np.array(read_bin(path / manifest.query_map, mmap=False))
        _expect(path / manifest.query_map, "shape", query_map.shape, (manifest.dim, manifest.dim))
    query_tower = None
    if manifest.towers is not None:
        name = manifest.towers.get("query")
        if name not in manifest.files or manifest.towers.get("doc") not in manifest.files:
            raise IndexFormatError(f"{path}: towers {manifest.towers} are not listed files")
        query_tower = Tower.load(path / name, manifest.dim)
    return query_map, query_tower


def _guard(path: Path, manifest: Manifest) -> FileGuard:
    """The guard over the files that stay mapped: the coarse index and the dense store."""
    names = [layout.COARSE, layout.DENSE[manifest.dense_dtype]]
    try:
        return FileGuard([path / n for n in names])
    except FileNotFoundError as e:
        raise CorruptFileError(f"{e.filename}: listed in the manifest but missing") from None


def _expect(where: Path, what: str, got: Any, want: Any) -> None:
    if got != want:
        raise CorruptFileError(f"{where}: {what} is {got}, manifest says {want}")

