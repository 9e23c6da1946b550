"""Where the builder's vectors come from: a vector file, a BEIR directory (encoded offline, cached),
or the built-in synthetic generator (written out as files so evaluate and serve can use them)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ebr.data.synthetic import SyntheticConfig, generate
from ebr.io.beir import cached_corpus_embeddings, load_ids, load_queries
from ebr.io.encoder import MINILM, TextEncoder
from ebr.io.vecs import load_vectors
from ebr.types import JsonObject

__all__ = ["load_source", "write_synthetic", "load_eval_queries"]

logger = logging.getLogger(__name__)


def load_source(input_path: str | None, beir: str | None, ids_path: str | None,
                encoder: str | None, cache_dir: str | None, progress: bool
                ) -> tuple[np.ndarray, list[str] | None, JsonObject | None, JsonObject]:
    """(vectors, ids or None, encoder info or None, source description)."""
    if beir:
        enc = TextEncoder()
        doc_ids, x, cache = cached_corpus_embeddings(beir, enc, cache_dir, progress=progress)
        return x, doc_ids, dict(MINILM), {"kind": "beir", "path": str(Path(beir).resolve()),
                                      "embeddings_cache": str(cache)}
    if not input_path:
        raise SystemExit("give --input FILE, --beir DIR or --synthetic")
    x = load_vectors(input_path)
    ids = load_ids(ids_path) if ids_path else None
    enc_info = dict(MINILM) if encoder == "minilm" else None
    if enc_info and x.shape[1] != enc_info["dim"]:
        raise SystemExit(f"--encoder minilm: vectors are {x.shape[1]}-d, MiniLM gives 384-d")
    return x, ids, enc_info, {"kind": "file", "path": str(Path(input_path).resolve()),
                              "ids": str(Path(ids_path).resolve()) if ids_path else None}


def write_synthetic(out: Path, cfg: SyntheticConfig) -> dict[str, Path]:
    """Generate the synthetic dataset into ``out``: corpus, test/train queries, ids and qrels."""
    ds = generate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    np.save(out / "corpus.npy", ds.xb)
    paths = {"corpus": out / "corpus.npy"}
    for split, xq, qrels in (("test", ds.xq, ds.qrels), ("train", ds.xq_train, ds.qrels_train)):
        np.save(out / f"queries_{split}.npy", xq)
        (out / f"queries_{split}_ids.txt").write_text("".join(f"q{i}\n" for i in range(len(xq))))
        lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\t{d}\t1" for i, rel in enumerate(qrels)
                                                  for d in rel]
        (out / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        paths[f"queries_{split}"] = out / f"queries_{split}.npy"
        paths[f"query_ids_{split}"] = out / f"queries_{split}_ids.txt"
        paths[f"qrels_{split}"] = out / "qrels" / f"{split}.tsv"
    (out / "config.json").write_text(__import__("json").dumps(
        {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(cfg).items()}, indent=2))
    logger.info("synthetic data: %d x %d docs, %d test queries -> %s", cfg.n, cfg.d, cfg.nq, out)
    return paths


def load_eval_queries(queries: str | None, beir: str | None, split: str,
                      query_ids: str | None, encoder: TextEncoder | None = None
                      ) -> tuple[np.ndarray, list[str] | None]:
    """Query vectors (and their ids) from a vector file, or encoded from a BEIR split's text
    (with ``encoder``, e.g. an index's fine-tuned one; default the packaged MiniLM)."""
    if queries:
        xq = np.asarray(load_vectors(queries), dtype=np.float32)
        qids = load_ids(query_ids) if query_ids else None
        if qids is not None and len(qids) != len(xq):
            raise SystemExit(f"--query-ids has {len(qids)} ids for {len(xq)} query vectors")
        return xq, qids
    if beir:
        from ebr.io.beir import load_qrels

        qrels = load_qrels(Path(beir) / "qrels" / f"{split}.tsv")
        texts = load_queries(beir)
        qids = sorted(q for q in qrels if q in texts)
        return (encoder or TextEncoder()).encode([texts[q] for q in qids]), qids
    raise SystemExit("give --queries FILE or --beir DIR")
