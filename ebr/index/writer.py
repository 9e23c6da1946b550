"""``write_index``: train the coarse index, encode every vector, write the directory atomically.

The directory is assembled under a temporary name next to the target, every file is fsynced,
``manifest.json`` is written last, and only then is the directory renamed into place. A build
that dies at any point leaves either the previous index or nothing under the target name.

With a ``dense_trainer`` (BiDR stage 2) the vectors are read twice: first every document is
encoded into the coarse index, the trainer learns its towers against that index's shortlists,
then the dense store is written with the document tower applied.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
from tqdm.auto import tqdm

from ebr.errors import InputError
from ebr.index.docs import write_docs
from ebr.index.publish import check_target, publish, staging_dir
from ebr.index.trainers import make_trainer
from ebr.io import layout
from ebr.io.manifest import (
    FORMAT_VERSION,
    FORMAT_VERSION_2,
    FileEntry,
    Manifest,
    sha256_file,
    write_manifest,
)
from ebr.io.vecs import check_vectors, chunks, gather_rows, sample_rows, write_bin
from ebr.metric import Metric, normalize_rows
from ebr.quant.additive import lift_rq
from ebr.quant.faiss_index import extract_ivfpq
from ebr.quant.trainers import Codebooks, CodebookTrainer
from ebr.spec import BuildParams
from ebr.towers import Tower
from ebr.types import ExternalId, JsonObject

__all__ = ["train_codebooks", "write_index"]

logger = logging.getLogger(__name__)


def _check_ids(ids: Sequence[ExternalId] | np.ndarray | None, n: int) -> tuple[str, Any]:
    if ids is None:
        return "int", np.arange(n, dtype=np.int64)
    if len(ids) != n:
        raise InputError(f"ids: {len(ids)} ids for {n} vectors")
    arr = np.asarray(ids)
    out: Any
    if np.issubdtype(arr.dtype, np.integer):
        kind, out = "int", arr.astype(np.int64)
    else:
        out = [str(i) for i in ids]
        if any(("\n" in s or "\r" in s or s == "") for s in out):
            raise InputError("ids: string ids must be non-empty and contain no newline")
        kind = "str"
    if len(set(out.tolist() if kind == "int" else out)) != n:
        raise InputError("ids: external ids must be unique")
    return kind, out


def train_codebooks(vectors: np.ndarray, params: BuildParams,
                    trainer: CodebookTrainer | None = None) -> Codebooks:
    """Train the codebooks on a seeded sample of ``vectors`` (``params.train_size`` rows,
    normalised when the index is): the first stage of :func:`write_index`, and what sharded
    builds run once for all shards. ``trainer`` defaults to ``params.codebooks``'."""
    check_vectors(vectors, name="vectors")
    params.spec.check_dim(vectors.shape[1])
    trainer = trainer or make_trainer(params.codebooks, niter=params.kmeans_niter)
    rows = sample_rows(len(vectors), params.train_size, params.seed)
    xt = gather_rows(vectors, rows)
    if params.normalize:
        xt = normalize_rows(xt)
    cb = trainer.fit(xt, params.spec, params.metric, params.seed,
                     list_points=params.points_per_list)
    if params.points_per_list > 1:
        t0 = time.perf_counter()
        cb = cb.with_list_points(xt, params.points_per_list, params.seed)
        logger.info("list points: %d per list, %.1f s", params.points_per_list,
                    time.perf_counter() - t0)
    return replace(cb, provenance={**cb.provenance, "train_size": int(len(rows)),
                                   "trained_on": "document sample"})


class DenseTrainer(Protocol):
    """BiDR stage 2 (:class:`ebr.train.bidr.BiDRDenseTrainer`): learns the query and document
    towers on the shortlists that the built codes give."""

    def fit(self, index: faiss.Index, vectors: np.ndarray, metric: Metric, normalize: bool,
            query_map: np.ndarray | None, nlist: int) -> tuple[Tower, Tower] | None: ...

    def describe(self) -> JsonObject: ...


def write_index(
    directory: str | os.PathLike[str], vectors: np.ndarray, params: BuildParams,
    ids: Sequence[ExternalId] | np.ndarray | None = None, *,
    trainer: CodebookTrainer | None = None, codebooks: Codebooks | None = None,
    dense_trainer: DenseTrainer | None = None, encoder: JsonObject | None = None,
    extra_dirs: dict[str, Path] | None = None, source: JsonObject | None = None,
    payloads: Iterable[tuple[ExternalId, JsonObject]] | None = None,
    index_fields: Mapping[str, str] | None = None, live: JsonObject | None = None,
    overwrite: bool = False, progress: bool = False,
) -> Manifest:
    """Build an index directory at ``directory`` (atomically, module docstring) from
    ``vectors`` (float [n, d], may be a read-only memmap; read in chunks of 65,536 rows) with
    ``params``; ``ids``: external ids (ints or strings), row i -> ids[i] (default: row numbers).

    trainer: codebook trainer; default from ``params.codebooks`` (k-means or OPQ).
    codebooks: codebooks trained already (:func:`train_codebooks`; shards share one set):
        no training here, each build fills its own copy.
    dense_trainer: BiDR stage 2 (:class:`DenseTrainer`): query and document towers learnt on
        the coarse index's shortlists; the dense store holds the document tower's output.
        Towers that do not beat the identity are not written (the manifest says so).
    encoder: description of the text encoder that produced the vectors (lets the service
        accept text queries), e.g. ``{"name": "all-MiniLM-L6-v2", "normalize": True}``.
    extra_dirs: directories copied into the index under the given names, every file listed
        and checksummed (a fine-tuned text encoder: ``{"encoder": model_dir}``).
    payloads: (id, JSON object) pairs stored in the document table (``docs.sqlite``).
    index_fields: payload fields to filter on, {name: kind} (ebr.filters), indexed there.
    live: the write-ahead log this build continues (retraining: ebr.index.retrain); default a
        new one.
    """
    t_start, target = time.perf_counter(), Path(directory)
    id_kind, ext_ids = _check_input(vectors, params, ids)
    check_target(target, overwrite)  # before any work
    timings: dict[str, float] = {}
    codebooks, index = _codebooks(vectors, params, trainer, codebooks, timings)
    with staging_dir(target) as tmp:
        names, n_payloads = _write_codebooks_and_docs(tmp, codebooks, ext_ids,
                                                      _typed_ids(payloads, id_kind),
                                                      index_fields, timings)
        index, towers = _encode_and_write_dense(tmp, index, codebooks, vectors, params,
                                                dense_trainer, timings, progress)
        t0 = time.perf_counter()
        names += [layout.DENSE[params.dense_dtype],
                 *_write_coarse_and_ids(tmp, index, id_kind, ext_ids),
                 *_write_extras(tmp, codebooks.query_map, towers, extra_dirs)]
        files = {name: FileEntry(bytes=(tmp / name).stat().st_size,
                                 sha256=sha256_file(tmp / name)) for name in names}
        timings["write_coarse_and_checksums"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        manifest = _manifest(params, vectors.shape, id_kind, files, codebooks, index, timings,
                             dense_trainer, towers, encoder, source)
        manifest = replace(manifest, docs=layout.DOCS, live=dict(live) if live else new_live(),
                           build={**manifest.build, "payloads": n_payloads})
        write_manifest(tmp, manifest)
        publish(tmp, target, overwrite)
    logger.info("wrote %s: %d x %d, %s, %.1f s", target, *vectors.shape, params.spec,
                time.perf_counter() - t_start)
    return manifest


def _encode_and_write_dense(tmp: Path, index: faiss.Index, codebooks: Codebooks,
                            vectors: np.ndarray, params: BuildParams,
                            dense_trainer: DenseTrainer | None,
                            timings: dict[str, float], progress: bool
                            ) -> tuple[faiss.Index, tuple[Tower, Tower] | None]:
    """Encode every vector into ``index`` and write the dense store, in one pass; with a
    ``dense_trainer``, in two (codes first, its towers learnt on their shortlists, then the
    store of the document tower's output). Returns (the served coarse index, the towers)."""
    n, d = vectors.shape
    t0 = time.perf_counter()
    bar = tqdm(total=n, desc="encode+write", unit="vec", disable=not progress)
    towers: tuple[Tower, Tower] | None = None  # (query tower, document tower)
    if dense_trainer is not None:  # pass 1: codes; stage 2 searches them
        for _, block in chunks(vectors, normalize_rows if params.normalize else None):
            codebooks.add(index, block)
            bar.update(len(block))
        bar.close()
        timings["encode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = lift_rq(index)  # stage 2 searches the served form
        towers = dense_trainer.fit(index, vectors, params.metric, params.normalize,
                                   codebooks.query_map, params.spec.nlist)
        timings["train_towers"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        bar = tqdm(total=n, desc="write dense", unit="vec", disable=not progress)
    dense_dtype = np.dtype(params.dense_dtype)
    with open(tmp / layout.DENSE[params.dense_dtype], "wb") as fd:
        np.array([n, d], dtype=np.uint32).tofile(fd)
        for _, block in chunks(vectors, normalize_rows if params.normalize else None):
            if dense_trainer is None:
                codebooks.add(index, block)
            elif towers is not None:
                block = towers[1].apply(block)
            block.astype(dense_dtype).tofile(fd)
            bar.update(len(block))
        fd.flush()
        os.fsync(fd.fileno())
    bar.close()
    timings["write_dense" if dense_trainer is not None else "encode_and_write_dense"] = \
        time.perf_counter() - t0
    if index.ntotal != n:
        raise InputError(f"internal: coarse index holds {index.ntotal} of {n} vectors")
    return lift_rq(index), towers  # RQ: the IVF-PQ form the searcher scans


def _check_input(vectors: np.ndarray, params: BuildParams,
                 ids: Sequence[ExternalId] | np.ndarray | None) -> tuple[str, Any]:
    check_vectors(vectors, name="vectors")
    if vectors.shape[0] == 0:
        raise InputError("vectors: cannot build an index from 0 vectors")
    params.spec.check_dim(vectors.shape[1])
    return _check_ids(ids, vectors.shape[0])


def _codebooks(vectors: np.ndarray, params: BuildParams, trainer: CodebookTrainer | None,
               codebooks: Codebooks | None, timings: dict[str, float]
               ) -> tuple[Codebooks, faiss.Index]:
    """(the codebooks, the empty index this build fills): trained here, or a copy of given
    ones (shards share one training)."""
    t0 = time.perf_counter()
    if codebooks is None:
        codebooks = train_codebooks(vectors, params, trainer)
        index = codebooks.index  # trained here: ours to fill
    else:
        index = codebooks.empty_index()
    timings["train"] = time.perf_counter() - t0
    return codebooks, index


def _write_codebooks_and_docs(tmp: Path, codebooks: Codebooks, ext_ids: Any,
                              payloads: Iterable[tuple[ExternalId, JsonObject]] | None,
                              fields: Mapping[str, str] | None,
                              timings: dict[str, float]) -> tuple[list[str], int]:
    """The codebooks (before the index is filled) and the document table; (names, payloads
    stored)."""
    t0 = time.perf_counter()
    names = [*_write_codebooks(tmp, codebooks), layout.DOCS]
    n_payloads = write_docs(tmp / layout.DOCS, ext_ids, payloads, fields=fields)
    _fsync_file(tmp / layout.DOCS)
    timings["write_docs"] = time.perf_counter() - t0
    return names, n_payloads


def _typed_ids(payloads: Iterable[tuple[ExternalId, JsonObject]] | None, id_kind: str
               ) -> Iterable[tuple[ExternalId, JsonObject]] | None:
    """Payload ids as the index stores them (string ids as strings)."""
    if payloads is None or id_kind == "int":
        return payloads
    return ((str(i), p) for i, p in payloads)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_codebooks(tmp: Path, codebooks: Codebooks) -> list[str]:
    """What encodes new documents of a living index as this build encoded its own: the
    trained, empty index (build form) and the learned list centroids, fsynced."""
    faiss.write_index(codebooks.empty_index() if codebooks.index.ntotal else codebooks.index,
                      str(tmp / layout.CODEBOOKS))
    _fsync_file(tmp / layout.CODEBOOKS)
    names = [layout.CODEBOOKS]
    if codebooks.list_centroids is not None:
        write_bin(tmp / layout.LIST_CENTROIDS,
                  np.asarray(codebooks.list_centroids, dtype=np.float32))
        names.append(layout.LIST_CENTROIDS)
    if codebooks.list_points is not None:
        write_bin(tmp / layout.LIST_POINTS, codebooks.list_points)
        names.append(layout.LIST_POINTS)
    return names


def encoding_entry(codebooks: Codebooks) -> JsonObject:
    """The manifest's ``codebooks.encoding``: how :class:`Codebooks` is rebuilt from the
    files (ebr.index.live)."""
    sa = codebooks.score_aware
    return {"index": layout.CODEBOOKS,
            "list_centroids": layout.LIST_CENTROIDS if codebooks.list_centroids is not None
            else None,
            "score_aware": None if sa is None else {"eta": sa.eta, "passes": sa.passes,
                                                    "query_map": sa.query_map is not None},
            "list_points": None if codebooks.list_points is None else {
                "file": layout.LIST_POINTS, "per_list": codebooks.points_per_list}}


def new_live() -> JsonObject:
    """A fresh write-ahead log identity for a generation built from scratch."""
    return {"log_id": uuid.uuid4().hex, "epoch": 0, "applied_lsn": 0}


def _write_coarse_and_ids(tmp: Path, index: faiss.Index, id_kind: str, ext_ids: Any
                          ) -> list[str]:
    """The coarse index and the external ids, fsynced; returns their file names."""
    faiss.write_index(index, str(tmp / layout.COARSE))
    with open(tmp / layout.COARSE, "rb+") as fc:
        os.fsync(fc.fileno())
    if id_kind == "int":
        ids_name = layout.IDS_INT
        write_bin(tmp / ids_name, np.asarray(ext_ids, dtype=np.int64).reshape(-1, 1))
    else:
        ids_name = layout.IDS_STR
        with open(tmp / ids_name, "w", encoding="utf-8") as fi:
            fi.write("\n".join(ext_ids) + "\n")
            fi.flush()
            os.fsync(fi.fileno())
    return [layout.COARSE, ids_name]


def _write_extras(tmp: Path, query_map: np.ndarray | None, towers: tuple[Tower, Tower] | None,
                  extra_dirs: dict[str, Path] | None) -> list[str]:
    """The optional files: query map, copied directories (every file fsynced), towers."""
    names = []
    if query_map is not None:
        write_bin(tmp / layout.QUERY_MAP, np.asarray(query_map, dtype=np.float32))
        names.append(layout.QUERY_MAP)
    taken = {layout.COARSE, layout.IDS_INT, layout.IDS_STR, *layout.DENSE.values(), *names}
    for name, src in (extra_dirs or {}).items():
        if "/" in name or name.startswith(".") or name in taken:
            raise InputError(f"extra_dirs: bad directory name {name!r}")
        shutil.copytree(src, tmp / name)
        for f in sorted((tmp / name).rglob("*")):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
                names.append(f.relative_to(tmp).as_posix())
    if towers is not None:
        towers[0].save(tmp / layout.QUERY_TOWER)
        towers[1].save(tmp / layout.DOC_TOWER)
        names += [layout.QUERY_TOWER, layout.DOC_TOWER]
    return names


def _manifest(params: BuildParams, shape: tuple[int, ...], id_kind: str,
              files: dict[str, FileEntry], codebooks: Codebooks, index: faiss.Index,
              timings: dict[str, float], dense_trainer: Any,
              towers: tuple[Tower, Tower] | None, encoder: dict[str, Any] | None,
              source: dict[str, Any] | None) -> Manifest:
    ivfpq = extract_ivfpq(index)
    sizes = np.array([ivfpq.invlists.list_size(i) for i in range(ivfpq.nlist)])
    metric = params.metric
    return Manifest(
        spec=str(params.spec), metric=metric.value, dim=int(shape[1]), ntotal=int(shape[0]),
        dense_dtype=params.dense_dtype, id_kind=id_kind, files=files,
        codebooks={**codebooks.provenance, "encoding": encoding_entry(codebooks)},
        build={
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": {k: round(v, 3) for k, v in timings.items()},
            "params": {"spec": str(params.spec), "metric": metric.value,
                       "dense_dtype": params.dense_dtype, "train_size": params.train_size,
                       "kmeans_niter": params.kmeans_niter, "seed": params.seed,
                       "codebooks": params.codebooks, "normalize": params.normalize,
                       "list_points": params.list_points, **params.extra},
            "list_sizes": {"min": int(sizes.min()), "max": int(sizes.max()),
                           "mean": float(sizes.mean()), "empty": int((sizes == 0).sum())},
            "towers": dense_trainer.describe() if dense_trainer is not None else None,
            "versions": {"ebr": _version(), "faiss": faiss.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
        },
        encoder=encoder, source=source or {},
        query_map=layout.QUERY_MAP if codebooks.query_map is not None else None,
        towers=None if towers is None else {"query": layout.QUERY_TOWER,
                                            "doc": layout.DOC_TOWER},
        format_version=FORMAT_VERSION if towers is None else FORMAT_VERSION_2,
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ebr")
    except PackageNotFoundError:
        return "0+unknown"

