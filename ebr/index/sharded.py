"""Sharded index directories: codebooks trained once, shards encoded independently.

A sharded index is a directory of ordinary index directories (``shard-000/``, ...) that share
one set of codebooks, plus a top ``manifest.json`` (format 2.0) listing them with the row range
each holds and the sha256 of each shard's manifest. The build trains the codebooks once on a
sample of the whole input (:func:`train_once`), writes every shard (a contiguous row range) as
a complete index from those same codebooks, by any executor (in process here, Ray Data in
:mod:`ebr.index.distributed`), and writes the top manifest last. :func:`open_sharded` opens it
and checks that all shards share one quantizer and one set of codebooks; the search over it is
:mod:`ebr.search.sharded`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NotRequired, TypedDict

import faiss
import numpy as np
import numpy.typing as npt

from ebr.errors import IndexFormatError, InputError
from ebr.index.publish import check_target, publish, staging_dir
from ebr.index.reader import OpenIndex, open_index
from ebr.index.writer import train_codebooks, write_index
from ebr.io import layout
from ebr.io.manifest import (
    FORMAT_VERSION_2,
    FileEntry,
    Manifest,
    read_manifest,
    sha256_file,
    verify_files,
    write_manifest,
)
from ebr.metric import Metric
from ebr.quant.faiss_index import ivf_centroids
from ebr.quant.probe import ProbeKind
from ebr.quant.trainers import Codebooks, CodebookTrainer
from ebr.spec import BuildParams, IndexSpec
from ebr.types import ExternalId, JsonObject

__all__ = ["train_once", "shard_ranges", "split_payloads", "write_shard", "commit_shards",
           "build_sharded", "ShardedIndex", "open_sharded"]

logger = logging.getLogger(__name__)


def train_once(vectors: np.ndarray, params: BuildParams,
               trainer: CodebookTrainer | Codebooks | None = None) -> Codebooks:
    """The codebooks every shard shares, trained on a sample of all ``vectors`` as
    :func:`write_index` would (:class:`Codebooks` given are returned as they are)."""
    if isinstance(trainer, Codebooks):
        return trainer
    return train_codebooks(vectors, params, trainer)


def shard_ranges(n: int, n_shards: int) -> list[tuple[int, int]]:
    if not 1 <= n_shards <= n:
        raise InputError(f"n_shards must be in [1, {n}], got {n_shards}")
    cuts = np.linspace(0, n, n_shards + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


Payloads = list[tuple[ExternalId, JsonObject]]


def split_payloads(payloads: Iterable[tuple[ExternalId, JsonObject]], n: int,
                   ranges: Sequence[tuple[int, int]], ids: Sequence[ExternalId] | None
                   ) -> list[Payloads]:
    """The (id, payload) pairs of each shard (rows [start, stop) of ``ranges``): by the id's
    row in ``ids`` (default: the row number). An id no document has raises InputError, as a
    single-index build does."""
    starts = np.array([a for a, _ in ranges[1:]], dtype=np.int64)
    id_list: list[ExternalId] | None = None if ids is None else np.asarray(ids).tolist()
    strings = bool(id_list) and isinstance(id_list[0], str)  # type: ignore[index]
    row_of = None if id_list is None else {x: r for r, x in enumerate(id_list)}
    parts: list[Payloads] = [[] for _ in ranges]
    for doc_id, payload in payloads:
        key = str(doc_id) if strings else doc_id
        row = row_of.get(key) if row_of is not None else (
            key if isinstance(key, int) and 0 <= key < n else None)
        if row is None:
            raise InputError(f"payload of id {doc_id!r}: no document has this id")
        parts[int(np.searchsorted(starts, row, side="right"))].append((key, payload))
    return parts


class ShardEntry(TypedDict):
    """One written shard, as its job reports it (a dict, so that Ray can carry it)."""

    shard: int
    dir: str
    start: int
    stop: int
    ntotal: int
    seconds: float
    payloads: int
    node: NotRequired[str]  # the Ray node that wrote it


def _shard_name(i: int) -> str:
    return f"shard-{i:03d}"


def write_shard(stage: str | os.PathLike[str], i: int, start: int, stop: int,
                vectors: np.ndarray, params: BuildParams, pre: Codebooks,
                ids: Sequence[ExternalId] | None = None, payloads: Payloads | None = None,
                index_fields: Mapping[str, str] | None = None) -> ShardEntry:
    """Write shard ``i`` (rows [start, stop)) as a complete index under ``stage``, with its
    documents' ``payloads`` (:func:`split_payloads`) and the filterable ``index_fields``."""
    out = Path(stage) / _shard_name(i)
    shard_ids = np.arange(start, stop, dtype=np.int64) if ids is None else ids[start:stop]
    m = write_index(out, vectors[start:stop], params, shard_ids, codebooks=pre, overwrite=True,
                    payloads=payloads, index_fields=index_fields)
    return {"shard": i, "dir": out.name, "start": start, "stop": stop, "ntotal": m.ntotal,
            "seconds": m.build["seconds"]["total"], "payloads": int(m.build["payloads"])}


def commit_shards(stage: Path, target: Path, shards: list[ShardEntry], params: BuildParams,
                  pre: Codebooks, executor: str, overwrite: bool) -> Manifest:
    """Write the top manifest (last) and move the staged directory into place (the writer's
    ``publish``); dimension and id kind come from the shards' own manifests."""
    shards = sorted(shards, key=lambda s: s["shard"])
    files = {}
    for s in shards:
        p = stage / s["dir"] / layout.MANIFEST
        files[f"{s['dir']}/{layout.MANIFEST}"] = FileEntry(p.stat().st_size, sha256_file(p))
    n = int(sum(s["ntotal"] for s in shards))
    first = read_manifest(stage / shards[0]["dir"])
    manifest = Manifest(
        spec=str(params.spec), metric=params.metric.value, dim=first.dim, ntotal=n,
        dense_dtype=params.dense_dtype, id_kind=first.id_kind, files=files,
        codebooks=dict(pre.provenance),
        build={"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "executor": executor, "params": {"spec": str(params.spec),
                                                 "normalize": params.normalize,
                                                 "seed": params.seed},
               "payloads": int(sum(s.get("payloads", 0) for s in shards))},
        shards=[{k: s[k] for k in ("dir", "start", "stop", "ntotal")} for s in shards],
        format_version=FORMAT_VERSION_2)
    write_manifest(stage, manifest)
    publish(stage, target, overwrite)
    return manifest


def build_sharded(directory: str | os.PathLike[str], vectors: np.ndarray, params: BuildParams,
                  n_shards: int, ids: Sequence[ExternalId] | None = None, *,
                  trainer: CodebookTrainer | None = None,
                  payloads: Iterable[tuple[ExternalId, JsonObject]] | None = None,
                  index_fields: Mapping[str, str] | None = None,
                  overwrite: bool = False,
                  run: Callable[[list[Callable[[], ShardEntry]]], list[ShardEntry]]
                  | None = None) -> Manifest:
    """Train once, write ``n_shards`` shard indexes (``run`` executes the shard jobs; default
    one after another), then commit. A failure anywhere leaves no directory at the target.
    ``payloads`` and ``index_fields`` as :func:`~ebr.index.writer.write_index` takes them:
    each shard stores its own documents' payloads, and filters (ebr.filters) on its own."""
    t0 = time.perf_counter()
    target = Path(directory)
    check_target(target, overwrite)
    ranges = shard_ranges(len(vectors), n_shards)
    parts = split_payloads(payloads, len(vectors), ranges, ids) if payloads is not None \
        else [None] * len(ranges)
    pre = train_once(vectors, params, trainer)
    with staging_dir(target) as stage:
        jobs: list[Callable[[], ShardEntry]] = [
            functools.partial(write_shard, stage, i, a, b, vectors, params, pre, ids, part,
                              index_fields)
            for i, ((a, b), part) in enumerate(zip(ranges, parts, strict=True))]
        shards = (run or (lambda js: [j() for j in js]))(jobs)
        m = commit_shards(stage, target, shards, params, pre, "local", overwrite)
    logger.info("wrote %s: %d shards, %d vectors, %.1f s", target, n_shards, m.ntotal,
                time.perf_counter() - t0)
    return m


@dataclass(frozen=True)
class ShardedIndex:
    """Opened shards (each a verified :class:`OpenIndex`) and the row range each holds."""

    path: Path
    manifest: Manifest
    shards: tuple[OpenIndex, ...]
    starts: tuple[int, ...]

    @property
    def ntotal(self) -> int:
        return self.manifest.ntotal

    @property
    def nlist(self) -> int:
        return self.shards[0].nlist

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def spec(self) -> IndexSpec:
        return self.shards[0].spec

    @property
    def metric(self) -> Metric:
        return self.shards[0].metric

    @property
    def normalize(self) -> bool:
        return self.shards[0].normalize

    @property
    def dense(self) -> _Rows:
        """Row access across the shards' dense stores (global row numbers)."""
        return _Rows(self)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Dense rows (float32) of global row ids, each read from its shard, guarded."""
        return self.dense[rows]

    def memory(self) -> dict[str, int | float]:
        total: dict[str, float] = {}
        for oi in self.shards:
            for k, v in oi.memory().items():
                if not k.endswith(("_per_vector", "fraction_of_dense")):
                    total[k] = total.get(k, 0) + v
        n = max(self.ntotal, 1)
        total["coarse_ram_bytes_per_vector"] = total["coarse_ram_bytes"] / n
        total["ram_bytes_per_vector"] = (total["coarse_ram_bytes"]
                                         + total.get("query_side_bytes", 0)) / n
        total["dense_bytes_per_vector"] = total["dense_disk_bytes"] / n
        total["ram_fraction_of_dense"] = total["coarse_ram_bytes"] / max(
            total["dense_disk_bytes"], 1)
        total["shards"] = len(self.shards)
        return total

    def locate(self, rows: np.ndarray) -> np.ndarray:
        """Shard number of each global row."""
        return np.searchsorted(np.array(self.starts[1:]), rows, side="right")

    def external_ids(self, rows: np.ndarray) -> list[ExternalId | None]:
        out: list[ExternalId | None] = []
        for r in np.asarray(rows).ravel().tolist():
            if r < 0:
                out.append(None)
                continue
            s = int(self.locate(np.array([r]))[0])
            out += self.shards[s].external_ids(np.array([r - self.starts[s]]))
        return out


class _Rows:
    """``index.dense[rows]`` over shards: gathers each row from the shard that holds it."""

    def __init__(self, index: ShardedIndex) -> None:
        self.index = index
        self.dtype = index.shards[0].dense.dtype
        self.nbytes = sum(oi.dense.nbytes for oi in index.shards)
        self.shape = (index.ntotal, index.dim)

    def __getitem__(self, rows: npt.ArrayLike) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        out = np.empty((len(rows), self.index.dim), dtype=np.float32)
        where = self.index.locate(rows)
        for s in np.unique(where).tolist():
            sel = where == s
            out[sel] = self.index.shards[s].vectors(rows[sel] - self.index.starts[s])
        return out


def open_sharded(directory: str | os.PathLike[str], verify_checksums: bool = True,
                 probe: ProbeKind = "auto") -> ShardedIndex:
    """Open a sharded index directory: the top manifest, then every shard (verified, its
    lists picked by ``probe``, as :func:`open_index`), and check that all shards share one
    coarse quantizer, one set of codebooks and the same list points."""
    path = Path(directory)
    m = read_manifest(path)
    if not m.shards:
        raise IndexFormatError(f"{path}: not a sharded index (open it with open_index)")
    verify_files(path, m, checksums=verify_checksums)
    shards, starts, fp = [], [], None
    for s in m.shards:
        if "/" in str(s["dir"]) or str(s["dir"]).startswith("."):
            raise IndexFormatError(f"{path}: shard dir {s['dir']!r} escapes the index")
        oi = open_index(path / s["dir"], verify_checksums=verify_checksums, probe=probe)
        if oi.ntotal != s["stop"] - s["start"]:
            raise IndexFormatError(f"{path / s['dir']}: {oi.ntotal} vectors, the top manifest "
                                   f"says {s['stop'] - s['start']}")
        points = oi.manifest.files.get(layout.LIST_POINTS)
        this = (ivf_centroids(oi.ivfpq).tobytes()
                + faiss.vector_to_array(oi.ivfpq.pq.centroids).tobytes()
                + (b"" if points is None else points.sha256.encode()))
        if fp is not None and this != fp:
            raise IndexFormatError(f"{path / s['dir']}: codebooks differ from shard 0's")
        fp = this
        shards.append(oi)
        starts.append(int(s["start"]))
    return ShardedIndex(path, m, tuple(shards), tuple(starts))
