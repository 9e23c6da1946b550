"""Shared types: result containers (scores higher-is-better; missing results are ``-1`` /
``-inf``) and the names that public signatures use instead of ``Any``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeAlias

import numpy as np

__all__ = ["SearchResult", "SearchStats", "ExternalId", "JsonValue", "JsonObject", "Encoder"]

#: A document's id as the user gave it (BEIR ids are strings; generated sets use ints).
ExternalId: TypeAlias = int | str
#: What JSON (manifest fields, HTTP bodies, payloads) can hold.
JsonValue: TypeAlias = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]
#: A JSON object as read from or written to disk; readers narrow its values where they use them.
JsonObject: TypeAlias = dict[str, object]


class Encoder(Protocol):
    """Turns texts into float32 vectors of a fixed dimension (``ebr.io.encoder.TextEncoder``)."""

    @property
    def dim(self) -> int: ...

    @property
    def info(self) -> dict[str, object]:
        """What the manifest records of it; ``info["name"]`` names the model."""
        ...

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray: ...


class SearchResult(NamedTuple):
    """Top-k of a batch search; unpacks like faiss' ``D, I`` but ids first.

    ids: int64 [nq, k], internal row numbers, ``-1`` where fewer than k results exist.
    scores: float32 [nq, k], higher is better, ``-inf`` padding.
    """

    ids: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class SearchStats:
    """What one batch search did: answers "why was this slow / why was this missed?"."""

    nq: int
    nprobe: int
    candidates: int  # candidates asked of the coarse stage per query (C)
    found: int  # valid coarse candidates over the batch (after -1 padding is dropped)
    reranked: int  # candidate rows scored exactly (0 when rerank is off)
    dense_rows_read: int  # rows read: per query (float32, compiled) or distinct (numpy path)
    dense_bytes_read: int
    coarse_seconds: float
    rerank_seconds: float
    per_query_found: np.ndarray | None = None  # int [nq]: valid candidates of each query

    @property
    def seconds(self) -> float:
        return self.coarse_seconds + self.rerank_seconds
