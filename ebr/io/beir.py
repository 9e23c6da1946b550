"""BEIR directories (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) and the on-disk
cache of their corpus embeddings, keyed by the corpus file's sha256 and the encoder name, so a
second build does not re-encode.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ebr.errors import InputError
from ebr.io.manifest import sha256_file
from ebr.types import Encoder, ExternalId, JsonObject

__all__ = ["load_corpus", "load_queries", "load_qrels", "load_ids", "cached_corpus_embeddings",
           "default_cache_dir"]

logger = logging.getLogger(__name__)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{lineno}: invalid JSON: {e}") from None
    return out


def load_corpus(beir_dir: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(ids, texts) in file order; text = title + " " + text (as BEIR/MTEB encode documents)."""
    rows = _jsonl(Path(beir_dir) / "corpus.jsonl")
    ids = [str(r["_id"]) for r in rows]
    texts = [(str(r.get("title", "")) + " " + str(r.get("text", ""))).strip() for r in rows]
    return ids, texts


def corpus_payloads(beir_dir: str | os.PathLike[str]) -> Iterator[tuple[ExternalId, JsonObject]]:
    """(id, {"title", "text"}) of each BEIR document: the payloads a BEIR build stores."""
    with open(Path(beir_dir) / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                yield str(r["_id"]), {"title": str(r.get("title", "")),
                                      "text": str(r.get("text", ""))}


def read_payloads(path: str | os.PathLike[str]) -> Iterator[tuple[ExternalId, JsonObject]]:
    """(id, payload) from a JSONL file of ``{"id": ..., "payload": {...}}`` lines."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(r, dict) or "id" not in r or not isinstance(r.get("payload"), dict):
                raise InputError(f"{path}:{lineno}: expected {{\"id\": ..., \"payload\": {{...}}}}")
            if not isinstance(r["id"], int | str) or isinstance(r["id"], bool):
                raise InputError(f"{path}:{lineno}: id must be an integer or a string")
            yield r["id"], r["payload"]


def load_queries(beir_dir: str | os.PathLike[str]) -> dict[str, str]:
    return {str(r["_id"]): str(r["text"]) for r in _jsonl(Path(beir_dir) / "queries.jsonl")}


def load_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """``query-id<TAB>corpus-id<TAB>score`` with a header line -> {qid: {docid: score}}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such qrels file")
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 and parts[0] == "query-id":
                continue
            if len(parts) < 3:
                raise InputError(f"{path}:{lineno}: expected 3 tab-separated fields")
            if int(parts[2]) > 0:
                out.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return out


def load_ids(path: str | os.PathLike[str]) -> list[str]:
    """External ids: one per line (``.txt``) or the ``_id`` field of each line (``.jsonl``)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [str(r["_id"]) for r in _jsonl(path)]
    if not path.is_file():
        raise InputError(f"{path}: no such ids file")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def default_cache_dir() -> Path:
    return Path(os.environ.get("EBR_CACHE_DIR", Path.home() / ".cache" / "ebr" / "embeddings"))


def cached_corpus_embeddings(beir_dir: str | os.PathLike[str], encoder: Encoder,
                             cache_dir: str | os.PathLike[str] | None = None,
                             progress: bool = False) -> tuple[list[str], np.ndarray, Path]:
    """Encode the corpus once; later calls with the same corpus file and encoder read the cache.

    Returns (ids, vectors float32 [n, dim] memmap, cache file path).
    """
    beir_dir = Path(beir_dir)
    ids, texts = load_corpus(beir_dir)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = f"{sha256_file(beir_dir / 'corpus.jsonl')[:16]}-{encoder.info['name']}"
    path = cache / f"{key}.npy"
    if path.exists():
        x = np.load(path, mmap_mode="r")
        if x.shape[0] == len(ids):
            logger.info("corpus embeddings from cache %s", path)
            return ids, x, path
        logger.warning("cache %s has %d rows for %d docs; re-encoding", path, x.shape[0], len(ids))
    logger.info("encoding %d documents with %s", len(texts), encoder.info["name"])
    x = encoder.encode(texts, progress=progress)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, x)
    os.replace(tmp, path)
    return ids, np.load(path, mmap_mode="r"), path
