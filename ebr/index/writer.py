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
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from ebr.errors import InputError
from ebr.index.publish import check_target, publish, staging_dir
from ebr.io import layout
from ebr.io.manifest import (
    FORMAT_VERSION,
    FORMAT_VERSION_2,
    FileEntry,
    Manifest,
    sha256_file,
    write_manifest,
)
from ebr.io.vecs import check_vectors, release_rows, write_bin
from ebr.quant.faiss_bridge import (
    CodebookTrainer,
    add_with_assignment,
    extract_ivfpq,
    lift_rq,
    make_trainer,
)
from ebr.spec import BuildParams
from ebr.towers import Tower

__all__ = ["write_index", "normalize_rows", "sample_rows", "gather_rows"]

logger = logging.getLogger(__name__)
CHUNK = 65536


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted row numbers of a seeded sample (sorted so a memmap reads forward)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _chunks(x: np.ndarray, normalize: bool) -> Iterator[tuple[int, np.ndarray]]:
    """Row chunks as float32 copies; a mapped input's pages leave RSS after each chunk, so
    peak memory does not grow with the file (bench/bench_scale.py)."""
    for i0 in range(0, x.shape[0], CHUNK):
        block = np.array(x[i0:i0 + CHUNK], dtype=np.float32)
        release_rows(x, i0, i0 + CHUNK)
        yield i0, normalize_rows(block) if normalize else block


def gather_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x[rows] (rows sorted) as float32, one chunk of the input at a time: a spread sample
    touches most pages of a mapped file, and each chunk's pages leave RSS once copied."""
    out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
    at = 0
    for i0 in range(0, x.shape[0], CHUNK):
        sel = rows[np.searchsorted(rows, i0):np.searchsorted(rows, i0 + CHUNK)]
        out[at:at + len(sel)] = x[sel]
        at += len(sel)
        release_rows(x, i0, i0 + CHUNK)
    return out


def _check_ids(ids: Sequence[Any] | np.ndarray | None, n: int) -> tuple[str, Any]:
    if ids is None:
        return "int", np.arange(n, dtype=np.int64)
    if len(ids) != n:
        raise InputError(f"ids: {len(ids)} ids for {n} vectors")
    arr = np.asarray(ids)
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


def write_index(
    directory: str | os.PathLike[str],
    vectors: np.ndarray,
    params: BuildParams,
    ids: Sequence[Any] | np.ndarray | None = None,
    *,
    trainer: CodebookTrainer | None = None,
    dense_trainer: Any | None = None,
    encoder: dict[str, Any] | None = None,
    extra_dirs: dict[str, Path] | None = None,
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Manifest:
    """Build an index directory from ``vectors`` (float [n, d], may be a read-only memmap).

    Parameters
    ----------
    directory: target path; written atomically (see module docstring).
    vectors: document vectors; read in chunks of 65,536 rows, never copied whole.
    params: build parameters (spec, metric, dense dtype, training sample size, seed).
    ids: external ids (ints or strings), row i -> ids[i]; default: the row numbers.
    trainer: codebook trainer; default from ``params.codebooks`` (k-means or OPQ).
    dense_trainer: BiDR stage 2 (:class:`ebr.train.bidr.BiDRDenseTrainer`): learns a query and
        a document tower on the coarse index's shortlists; the dense store then holds the
        document tower's output and the query tower is stored for the searcher. When the
        towers do not beat the identity on the held-out pairs, ``fit`` returns ``None`` and
        the index is written without them (the manifest still records the attempt).
    encoder: description of the text encoder that produced the vectors (lets the service
        accept text queries), e.g. ``{"name": "all-MiniLM-L6-v2", "normalize": True}``.
    extra_dirs: directories copied into the index under the given names, every file listed
        and checksummed (a fine-tuned text encoder: ``{"encoder": model_dir}``).
    """
    t_start = time.perf_counter()
    target = Path(directory)
    check_vectors(vectors, name="vectors")
    n, d = vectors.shape
    if n == 0:
        raise InputError("vectors: cannot build an index from 0 vectors")
    params.spec.check_dim(d)
    id_kind, ext_ids = _check_ids(ids, n)
    trainer = trainer or make_trainer(params.codebooks, niter=params.kmeans_niter)
    metric = params.metric
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    rows = sample_rows(n, params.train_size, params.seed)
    xt = gather_rows(vectors, rows)
    if params.normalize:
        xt = normalize_rows(xt)
    index = trainer.train(xt, params.spec, metric, params.seed)
    timings["train"] = time.perf_counter() - t0
    del xt

    check_target(target, overwrite)
    with staging_dir(target) as tmp:
        t0 = time.perf_counter()
        dense_name = layout.DENSE[params.dense_dtype]
        dense_dtype = np.dtype(params.dense_dtype)
        bar = tqdm(total=n, desc="encode+write", unit="vec", disable=not progress)
        assign = getattr(trainer, "assign", None)  # learned trainers keep their training lists
        query_map = getattr(trainer, "query_map", None)
        score_aware = getattr(trainer, "score_aware", None)  # Distill-VQ's code choice
        towers: tuple[Tower, Tower] | None = None  # (query tower, document tower)

        def add(block: np.ndarray) -> None:
            if assign is not None:
                add_with_assignment(index, block, assign(index, block), score_aware)
            else:
                index.add(block)

        if dense_trainer is not None:  # pass 1: codes; stage 2 searches them
            for _, block in _chunks(vectors, params.normalize):
                add(block)
                bar.update(len(block))
            bar.close()
            timings["encode"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            index = lift_rq(index)  # stage 2 searches the served form
            towers = dense_trainer.fit(index, vectors, metric, params.normalize, query_map,
                                       params.spec.nlist)
            timings["train_towers"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            bar = tqdm(total=n, desc="write dense", unit="vec", disable=not progress)
        with open(tmp / dense_name, "wb") as fd:
            np.array([n, d], dtype=np.uint32).tofile(fd)
            for _, block in _chunks(vectors, params.normalize):
                if dense_trainer is None:
                    add(block)
                elif towers is not None:
                    block = towers[1].apply(block)
                block.astype(dense_dtype).tofile(fd)
                bar.update(len(block))
            fd.flush()
            os.fsync(fd.fileno())
        bar.close()
        timings["write_dense" if dense_trainer is not None else "encode_and_write_dense"] = \
            time.perf_counter() - t0

        t0 = time.perf_counter()
        if index.ntotal != n:
            raise InputError(f"internal: coarse index holds {index.ntotal} of {n} vectors")
        index = lift_rq(index)  # RQ: the IVF-PQ form the searcher scans (faiss_bridge)
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
        names = [layout.COARSE, dense_name, ids_name]
        if query_map is not None:
            write_bin(tmp / layout.QUERY_MAP, np.asarray(query_map, dtype=np.float32))
            names.append(layout.QUERY_MAP)
        for name, src in (extra_dirs or {}).items():
            if "/" in name or name.startswith(".") or name in names:
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
        files = {}
        for name in names:
            p = tmp / name
            files[name] = FileEntry(bytes=p.stat().st_size, sha256=sha256_file(p))
        timings["write_coarse_and_checksums"] = time.perf_counter() - t0

        ivfpq = extract_ivfpq(index)
        sizes = np.array([ivfpq.invlists.list_size(i) for i in range(ivfpq.nlist)])
        manifest = Manifest(
            spec=str(params.spec), metric=metric.value, dim=d, ntotal=n,
            dense_dtype=params.dense_dtype, id_kind=id_kind, files=files,
            codebooks={**trainer.describe(), "train_size": int(len(rows)),
                       "trained_on": "document sample"},
            build={
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": {k: round(v, 3) for k, v in timings.items()}
                | {"total": round(time.perf_counter() - t_start, 3)},
                "params": {"spec": str(params.spec), "metric": metric.value,
                           "dense_dtype": params.dense_dtype, "train_size": params.train_size,
                           "kmeans_niter": params.kmeans_niter, "seed": params.seed,
                           "codebooks": params.codebooks, "normalize": params.normalize,
                           **params.extra},
                "list_sizes": {"min": int(sizes.min()), "max": int(sizes.max()),
                               "mean": float(sizes.mean()),
                               "empty": int((sizes == 0).sum())},
                "towers": dense_trainer.describe() if dense_trainer is not None else None,
                "versions": {"ebr": _version(), "faiss": faiss.__version__,
                             "numpy": np.__version__, "python": platform.python_version()},
            },
            encoder=encoder, source=source or {},
            query_map=layout.QUERY_MAP if query_map is not None else None,
            towers=None if towers is None else {"query": layout.QUERY_TOWER,
                                                "doc": layout.DOC_TOWER},
            format_version=FORMAT_VERSION if towers is None else FORMAT_VERSION_2,
        )
        write_manifest(tmp, manifest)
        publish(tmp, target, overwrite)
    logger.info("wrote %s: %d x %d, %s, %.1f s", target, n, d, params.spec,
                time.perf_counter() - t_start)
    return manifest


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ebr")
    except PackageNotFoundError:
        return "0+unknown"

