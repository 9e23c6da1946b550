"""Retraining: learn the codebooks again from the documents the index holds now.

Compaction keeps the codebooks; as the corpus drifts away from what they were trained on (the
``drift`` figure of ``/index``: quantization error of written documents over the base's),
recall at a fixed nprobe drops. ``retrain`` folds the log in (:func:`ebr.index.compact.compact`),
then builds the current documents again with any codebook trainer (k-means, OPQ, Distill-VQ)
into the same directory. The new generation continues the same log (same id, epoch and
``applied_lsn``), so writes that arrive while it trains are replayed onto it: none is lost.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from ebr.errors import InputError
from ebr.index.compact import compact
from ebr.index.docs import DocStore
from ebr.index.reader import OpenIndex, open_index
from ebr.index.writer import write_index
from ebr.io.manifest import Manifest
from ebr.metric import Metric
from ebr.quant.trainers import CodebookTrainer
from ebr.spec import BuildParams, IndexSpec
from ebr.types import ExternalId, JsonObject

__all__ = ["retrain", "params_of"]

logger = logging.getLogger(__name__)


def params_of(manifest: Manifest) -> BuildParams:
    """The build parameters an index was built with (its manifest's ``build.params``)."""
    p = manifest.build.get("params", {})
    return BuildParams(spec=IndexSpec.parse(manifest.spec), metric=Metric.parse(manifest.metric),
                       dense_dtype=manifest.dense_dtype,
                       train_size=int(p.get("train_size", BuildParams.train_size)),
                       kmeans_niter=int(p.get("kmeans_niter", BuildParams.kmeans_niter)),
                       seed=int(p.get("seed", BuildParams.seed)),
                       codebooks=str(p.get("codebooks", BuildParams.codebooks)),
                       normalize=bool(p.get("normalize", False)),
                       list_points=p.get("list_points"))


def _payloads(oi: OpenIndex) -> Iterator[tuple[ExternalId, JsonObject]]:
    if not oi.manifest.docs:
        return
    store = DocStore(oi.path / oi.manifest.docs, oi.manifest.id_kind)
    for row, text in store.iter_payloads():
        if text:
            ext = oi.external_ids([row])[0]  # type: ignore[arg-type]
            if ext is not None:
                yield ext, json.loads(text)


def retrain(index_dir: str | os.PathLike[str], params: BuildParams | None = None, *,
            trainer: CodebookTrainer | None = None, progress: bool = False) -> Manifest:
    """Compact, then rebuild the documents of ``index_dir`` with new codebooks (``params``:
    default the index's own build parameters; ``trainer``: e.g. a Distill-VQ trainer)."""
    target = Path(os.path.realpath(index_dir))
    compact(target, verify_checksums=False, progress=progress)
    oi = open_index(target, probe="flat")
    m = oi.manifest
    if m.towers:
        raise InputError(f"{target}: the dense store holds BiDR tower outputs, not the "
                         "documents' vectors: rebuild it from the source (index_build build)")
    params = params or params_of(m)
    if params.spec.nlist > m.ntotal:
        raise InputError(f"{target}: {m.ntotal} documents are fewer than nlist "
                         f"{params.spec.nlist}")
    ids = [x for x in oi.external_ids(range(m.ntotal)) if x is not None]  # type: ignore[arg-type]
    extra = {"encoder": oi.path / "encoder"} if (oi.path / "encoder").is_dir() else None
    out = write_index(target, oi.dense, params, ids, trainer=trainer, encoder=m.encoder,
                      source={**m.source, "retrained_from": m.build.get("created")},
                      payloads=_payloads(oi), extra_dirs=extra, overwrite=True,
                      index_fields=DocStore(oi.path / m.docs, m.id_kind).fields() if m.docs
                      else None,
                      progress=progress, live=m.live)
    logger.info("retrained %s: %d documents, codebooks %s", target, out.ntotal,
                out.codebooks.get("method"))
    return out
