"""Scale-out on Ray (extra ``distributed``: ``pip install 'ebr[distributed]'``).

    build_on_ray   the field's recipe: train the codebooks once on a sample (here, on the
                   driver), put them in the object store, encode and write the shards in
                   parallel with Ray Data (one task per shard, each reading its row range of the
                   memory-mapped input itself), then commit the top manifest listing the shards
                   (:func:`ebr.index.sharded.commit_shards`). The result is the directory
                   :func:`ebr.index.sharded.build_sharded` writes, so it opens with ``open_sharded`` and
                   serves exactly like the single-node index built from the same codebooks.

Point it at a cluster with ``address="ray://head:10001"`` (or ``RAY_ADDRESS``); the input file
and the output directory must then be on storage every node sees (NFS, a mounted bucket).
Without an address a local Ray instance is started (what the tests do).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ebr.index.publish import check_target, staging_dir
from ebr.index.sharded import (
    ShardEntry,
    commit_shards,
    shard_ranges,
    split_payloads,
    train_once,
    write_shard,
)
from ebr.io.manifest import Manifest
from ebr.io.vecs import load_vectors
from ebr.quant.trainers import CodebookTrainer
from ebr.spec import BuildParams
from ebr.types import ExternalId, JsonObject

__all__ = ["build_on_ray"]

logger = logging.getLogger(__name__)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray build needs the 'distributed' extra: "
                          "pip install 'ebr[distributed]'") from None
    return ray


def build_on_ray(directory: str | os.PathLike[str], vectors_path: str | os.PathLike[str],
                 params: BuildParams, n_shards: int, ids: list[ExternalId] | None = None, *,
                 trainer: CodebookTrainer | None = None, address: str | None = None,
                 payloads: Iterable[tuple[ExternalId, JsonObject]] | None = None,
                 index_fields: Mapping[str, str] | None = None, overwrite: bool = False,
                 concurrency: int | None = None) -> Manifest:
    """Build a sharded index directory with Ray Data (see the module docstring); payloads
    and filterable fields as :func:`ebr.index.sharded.build_sharded` takes them."""
    ray = _ray()
    t0 = time.perf_counter()
    target = Path(directory).resolve()
    check_target(target, overwrite)
    vectors_path = str(Path(vectors_path).resolve())
    x = load_vectors(vectors_path)
    pre = train_once(x, params, trainer)
    t_train = time.perf_counter() - t0
    ranges = shard_ranges(len(x), n_shards)
    parts = split_payloads(payloads, len(x), ranges, ids) if payloads is not None \
        else [None] * len(ranges)
    del x
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    try:
        with staging_dir(target) as stage:  # removed again if anything below fails
            pre_ref = ray.put(pre)  # the codebooks, broadcast once
            ids_ref = ray.put(ids)
            parts_ref = ray.put(parts)

            def write(row: dict[str, int]) -> ShardEntry:
                vec = load_vectors(vectors_path)  # each task maps the input itself
                out = write_shard(stage, int(row["shard"]), int(row["start"]),
                                  int(row["stop"]), vec, params, ray.get(pre_ref),
                                  ray.get(ids_ref), ray.get(parts_ref)[int(row["shard"])],
                                  index_fields)
                out["node"] = ray.get_runtime_context().get_node_id()
                return out

            items = [{"shard": i, "start": a, "stop": b} for i, (a, b) in enumerate(ranges)]
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            cpus = int(ray.cluster_resources().get("CPU", 1))
            shards = ds.map(write, concurrency=concurrency or min(len(items), cpus)).take_all()
            m = commit_shards(stage, target, shards, params, pre, "ray", overwrite)
    finally:
        if started:
            ray.shutdown()
    logger.info("ray build %s: %d shards, train %.1f s, total %.1f s", target, n_shards,
                t_train, time.perf_counter() - t0)
    return m
