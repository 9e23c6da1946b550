"""Sharded indexes: codebooks trained once, shards encoded independently, results merged exactly.

    build    train IVF + PQ (+ learned parts) once on a sample of the whole input; serialize the
             empty trained index; every shard (a contiguous row range) is a complete index
             directory written by :func:`ebr.index.writer.write_index` from those same
             codebooks, by any executor (in process here, Ray Data in ebr.distributed);
             the top ``manifest.json`` (format 2.0) lists the shards and is written last
    search   each shard: coarse top-C over its codes + exact scores of those C candidates;
             merge: the global top-C by coarse score, then the top-k of those by exact score.
             That is exactly what one index built from the same codebooks returns (ties aside),
             because every shard probes the same lists with the same codes.

No torch, no Ray here: :mod:`ebr.distributed` runs the same steps on a Ray cluster.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ebr.errors import IndexFormatError, InputError, SearchParamError
from ebr.index.publish import check_target, publish, staging_dir
from ebr.index.reader import OpenIndex, open_index
from ebr.index.writer import (
    gather_rows,
    normalize_rows,
    sample_rows,
    write_index,
)
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
from ebr.io.vecs import check_vectors
from ebr.metric import Metric
from ebr.quant.faiss_bridge import ScoreAware, ivf_centroids, make_trainer, rotate
from ebr.search.rerank import rerank, topk
from ebr.search.searcher import Searcher
from ebr.spec import BuildParams, SearchParams
from ebr.types import SearchResult, SearchStats

__all__ = ["Pretrained", "train_once", "shard_ranges", "write_shard", "commit_shards",
           "build_sharded", "ShardedIndex", "open_sharded", "merge", "shard_answer",
           "LocalShard", "ShardedSearcher"]

logger = logging.getLogger(__name__)


class Pretrained:
    """A :class:`~ebr.quant.faiss_bridge.CodebookTrainer` that 'trains' by copying a trained
    index: the codebooks every shard shares. Picklable (bytes and arrays), so it ships to
    workers. ``assign_centroids``: learned codebooks keep documents in their k-means lists."""

    def __init__(self, index_bytes: np.ndarray, describe: dict[str, Any], metric: Metric,
                 assign_centroids: np.ndarray | None = None,
                 query_map: np.ndarray | None = None,
                 score_aware: ScoreAware | None = None) -> None:
        self.index_bytes = index_bytes
        self._describe = describe
        self.method = str(describe.get("method", "pretrained"))
        self.metric = metric
        self.assign_centroids = assign_centroids
        self.query_map = query_map
        self.score_aware = score_aware

    def train(self, xt: np.ndarray, spec: Any, metric: Metric, seed: int) -> faiss.Index:
        return faiss.deserialize_index(self.index_bytes)

    @property
    def assign(self) -> Callable[[faiss.Index, np.ndarray], np.ndarray] | None:
        """The writer's list-assignment hook; ``None`` (plain ``index.add``) for k-means."""
        return None if self.assign_centroids is None else self._assign

    def _assign(self, index: faiss.Index, x: np.ndarray) -> np.ndarray:
        flat = faiss.IndexFlat(self.assign_centroids.shape[1], self.metric.faiss_metric)
        flat.add(self.assign_centroids)
        _, a = flat.search(rotate(index, x), 1)
        return a.ravel().astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return self._describe


def train_once(vectors: np.ndarray, params: BuildParams, trainer: Any = None) -> Pretrained:
    """Train the codebooks on a sample of all ``vectors``, as :func:`write_index` would
    (a :class:`Pretrained` is returned as it is: it is trained already)."""
    if isinstance(trainer, Pretrained):
        return trainer
    check_vectors(vectors, name="vectors")
    params.spec.check_dim(vectors.shape[1])
    trainer = trainer or make_trainer(params.codebooks, niter=params.kmeans_niter)
    rows = sample_rows(len(vectors), params.train_size, params.seed)
    xt = gather_rows(vectors, rows)
    if params.normalize:
        xt = normalize_rows(xt)
    index = trainer.train(xt, params.spec, params.metric, params.seed)
    assigner = getattr(trainer, "_assigner", None)
    centroids = None
    if getattr(trainer, "assign", None) is not None and assigner is not None:
        centroids = assigner.reconstruct_n(0, assigner.ntotal)
    return Pretrained(faiss.serialize_index(index), {**trainer.describe(),
                                                     "train_size": int(len(rows))},
                      params.metric, centroids, getattr(trainer, "query_map", None),
                      getattr(trainer, "score_aware", None))


def shard_ranges(n: int, n_shards: int) -> list[tuple[int, int]]:
    if not 1 <= n_shards <= n:
        raise InputError(f"n_shards must be in [1, {n}], got {n_shards}")
    cuts = np.linspace(0, n, n_shards + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _shard_name(i: int) -> str:
    return f"shard-{i:03d}"


def write_shard(stage: str | os.PathLike[str], i: int, start: int, stop: int,
                vectors: np.ndarray, params: BuildParams, pre: Pretrained,
                ids: Sequence[Any] | None = None) -> dict[str, Any]:
    """Write shard ``i`` (rows [start, stop)) as a complete index under ``stage``."""
    out = Path(stage) / _shard_name(i)
    shard_ids = np.arange(start, stop, dtype=np.int64) if ids is None else ids[start:stop]
    m = write_index(out, vectors[start:stop], params, shard_ids, trainer=pre, overwrite=True)
    return {"shard": i, "dir": out.name, "start": start, "stop": stop, "ntotal": m.ntotal,
            "seconds": m.build["seconds"]["total"]}


def commit_shards(stage: Path, target: Path, shards: list[dict[str, Any]], params: BuildParams,
                  pre: Pretrained, executor: str, overwrite: bool) -> Manifest:
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
        codebooks=pre.describe(),
        build={"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "executor": executor, "params": {"spec": str(params.spec),
                                                 "normalize": params.normalize,
                                                 "seed": params.seed}},
        shards=[{k: s[k] for k in ("dir", "start", "stop", "ntotal")} for s in shards],
        format_version=FORMAT_VERSION_2)
    write_manifest(stage, manifest)
    publish(stage, target, overwrite)
    return manifest


def build_sharded(directory: str | os.PathLike[str], vectors: np.ndarray, params: BuildParams,
                  n_shards: int, ids: Sequence[Any] | None = None, *, trainer: Any = None,
                  overwrite: bool = False,
                  run: Callable[[list[Callable[[], dict[str, Any]]]], list[dict[str, Any]]]
                  | None = None) -> Manifest:
    """Train once, write ``n_shards`` shard indexes (``run`` executes the shard jobs; default
    one after another), then commit. A failure anywhere leaves no directory at the target."""
    t0 = time.perf_counter()
    target = Path(directory)
    check_target(target, overwrite)
    pre = train_once(vectors, params, trainer)
    with staging_dir(target) as stage:
        jobs = [lambda i=i, a=a, b=b: write_shard(stage, i, a, b, vectors, params, pre, ids)
                for i, (a, b) in enumerate(shard_ranges(len(vectors), n_shards))]
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
    def spec(self) -> Any:
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
        total["ram_fraction_of_dense"] = total["coarse_ram_bytes"] / max(
            total["dense_disk_bytes"], 1)
        total["shards"] = len(self.shards)
        return total

    def locate(self, rows: np.ndarray) -> np.ndarray:
        """Shard number of each global row."""
        return np.searchsorted(np.array(self.starts[1:]), rows, side="right")

    def external_ids(self, rows: np.ndarray) -> list[Any]:
        out: list[Any] = []
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

    def __getitem__(self, rows: Any) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        out = np.empty((len(rows), self.index.dim), dtype=np.float32)
        where = self.index.locate(rows)
        for s in np.unique(where).tolist():
            sel = where == s
            out[sel] = self.index.shards[s].vectors(rows[sel] - self.index.starts[s])
        return out


def open_sharded(directory: str | os.PathLike[str], verify_checksums: bool = True
                 ) -> ShardedIndex:
    """Open a sharded index directory: the top manifest, then every shard (verified), and
    check that all shards share one coarse quantizer and one set of codebooks."""
    path = Path(directory)
    m = read_manifest(path)
    if not m.shards:
        raise IndexFormatError(f"{path}: not a sharded index (open it with open_index)")
    verify_files(path, m, checksums=verify_checksums)
    shards, starts, fp = [], [], None
    for s in m.shards:
        if "/" in str(s["dir"]) or str(s["dir"]).startswith("."):
            raise IndexFormatError(f"{path}: shard dir {s['dir']!r} escapes the index")
        oi = open_index(path / s["dir"], verify_checksums=verify_checksums)
        if oi.ntotal != s["stop"] - s["start"]:
            raise IndexFormatError(f"{path / s['dir']}: {oi.ntotal} vectors, the top manifest "
                                   f"says {s['stop'] - s['start']}")
        this = (ivf_centroids(oi.ivfpq).tobytes()
                + faiss.vector_to_array(oi.ivfpq.pq.centroids).tobytes())
        if fp is not None and this != fp:
            raise IndexFormatError(f"{path / s['dir']}: codebooks differ from shard 0's")
        fp = this
        shards.append(oi)
        starts.append(int(s["start"]))
    return ShardedIndex(path, m, tuple(shards), tuple(starts))


def merge(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int, k_coarse: int
          ) -> SearchResult:
    """Exact merge of per-shard answers (global ids, coarse scores, exact scores), each
    [nq, c]: the global top-``k_coarse`` by coarse score, then their top-``k`` by exact score."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    coarse = np.concatenate([p[1] for p in parts], axis=1)
    exact = np.concatenate([p[2] for p in parts], axis=1)
    coarse = np.where(ids >= 0, coarse, -np.inf)
    # positions of the global top-k_coarse by (coarse score desc, id asc), as topk orders them
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -coarse), axis=1)
    in_top = np.zeros(ids.shape, dtype=bool)
    np.put_along_axis(in_top, order[:, :k_coarse], True, axis=1)
    in_top &= ids >= 0
    return SearchResult(*topk(np.where(in_top, exact, -np.inf), np.where(in_top, ids, -1), k))


def shard_answer(oi: OpenIndex, start: int, xq: np.ndarray, params: SearchParams
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One shard's part: its coarse top-C (global ids), their coarse and exact scores."""
    s = Searcher(oi)
    kc = min(params.k_coarse, oi.ntotal)
    with oi.using():
        cand, cscores = s.coarse(xq, kc, params.nprobe)
        res_ids, res_sc, _ = rerank(s.dense_queries(xq), cand, oi.dense, oi.metric, kc,
                                    padded_at_end=True)
    res = SearchResult(res_ids, res_sc)  # every candidate, with its exact score
    order = np.argsort(np.where(res.ids >= 0, res.ids, np.iinfo(np.int64).max), axis=1)
    r_ids = np.take_along_axis(res.ids, order, 1)
    r_sc = np.take_along_axis(res.scores, order, 1)
    c_order = np.argsort(np.where(cand >= 0, cand, np.iinfo(np.int64).max), axis=1)
    c_ids = np.take_along_axis(cand, c_order, 1)
    c_sc = np.take_along_axis(cscores, c_order, 1)
    same = (c_ids == r_ids) | (c_ids < 0)
    if not same.all():
        raise SearchParamError("internal: re-rank candidates differ from the coarse ones")
    valid = c_ids >= 0
    return (np.where(valid, c_ids + start, -1), np.where(valid, c_sc, -np.inf),
            np.where(valid, r_sc, -np.inf))


class LocalShard:
    """A shard answered in this process (the Ray Serve deployment wraps the same calls)."""

    def __init__(self, oi: OpenIndex, start: int) -> None:
        self.oi, self.start = oi, start

    def answer(self, xq: np.ndarray, params: SearchParams
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return shard_answer(self.oi, self.start, xq, params)

    def exact(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        res = Searcher(self.oi).exact(xq, min(k, self.oi.ntotal))
        return np.where(res.ids >= 0, res.ids + self.start, -1), res.scores


class ShardedSearcher:
    """Fan-out over the shards of a :class:`ShardedIndex`, exact merge; the same interface
    as :class:`~ebr.search.searcher.Searcher`, so the service serves either. ``backends``:
    one per shard, in shard order (default: :class:`LocalShard`, in process)."""

    def __init__(self, index: ShardedIndex, backends: Sequence[Any] | None = None) -> None:
        self.index = index
        self.backends = list(backends) if backends is not None else [
            LocalShard(oi, st) for oi, st in zip(index.shards, index.starts, strict=True)]
        if len(self.backends) != len(index.shards):
            raise InputError(f"{len(self.backends)} backends for {len(index.shards)} shards")

    def prepare_queries(self, xq: np.ndarray) -> np.ndarray:
        return Searcher(self.index.shards[0]).prepare_queries(xq)

    def search(self, xq: np.ndarray, params: SearchParams) -> tuple[SearchResult, SearchStats]:
        params.validate(self.index.nlist, self.index.ntotal)
        xq = self.prepare_queries(xq)
        t0 = time.perf_counter()
        parts = [b.answer(xq, params) for b in self.backends]
        if params.rerank:
            res = merge(parts, params.k, params.k_coarse)
        else:  # coarse-only: the global top-k by coarse score
            ids = np.concatenate([p[0] for p in parts], axis=1)
            coarse = np.concatenate([p[1] for p in parts], axis=1)
            res = SearchResult(*topk(np.where(ids >= 0, coarse, -np.inf), ids, params.k))
        n_cand = int(sum((p[0] >= 0).sum() for p in parts))
        stats = SearchStats(nq=len(xq), nprobe=params.nprobe, k_coarse=params.k_coarse,
                            candidates=n_cand, reranked=n_cand, dense_rows_read=n_cand,
                            dense_bytes_read=n_cand * self.index.dim
                            * self.index.shards[0].dense.dtype.itemsize,
                            coarse_seconds=time.perf_counter() - t0, rerank_seconds=0.0,
                            per_query_candidates=sum((p[0] >= 0).sum(axis=1) for p in parts))
        return res, stats

    def exact(self, xq: np.ndarray, k: int) -> SearchResult:
        if not isinstance(k, int) or not 1 <= k <= self.index.ntotal:
            raise SearchParamError(f"k must be in [1, {self.index.ntotal}], got {k!r}")
        xq = self.prepare_queries(xq)
        parts = [b.exact(xq, k) for b in self.backends]
        ids = np.concatenate([p[0] for p in parts], axis=1)
        return SearchResult(*topk(np.concatenate([p[1] for p in parts], axis=1), ids, k))
