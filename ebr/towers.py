"""Dense-side towers (BiDR stage 2) as plain numpy: applied at build time to the documents
(the dense store holds ``doc_tower(v)``) and at search time to the query of the exact re-rank.

Both kinds are residual and start as the identity, so an untrained tower changes nothing:

    linear   y = x + x A^T + b                       A [d, d], b [d]      (A = 0, b = 0)
    mlp      y = x + relu(x W1^T + b1) W2^T + b2     W1 [h, d], W2 [d, h] (W2 = 0, b2 = 0)

then re-normalised when the index is (cosine). Stored as ``.npz`` (read with
``allow_pickle=False``), listed and checksummed in the manifest like every other file.
Training lives in :mod:`ebr.train.bidr`; this module never imports torch.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebr.errors import CorruptFileError, SpecError
from ebr.metric import normalize_rows

__all__ = ["TOWER_KINDS", "Tower"]

TOWER_KINDS = ("linear", "mlp")
_PARAMS = {"linear": ("A", "b"), "mlp": ("W1", "b1", "W2", "b2")}


@dataclass(frozen=True)
class Tower:
    """A residual tower over d-dim vectors; ``apply`` maps [n, d] -> [n, d] float32."""

    kind: str
    weights: dict[str, np.ndarray]
    normalize: bool

    def __post_init__(self) -> None:
        if self.kind not in TOWER_KINDS:
            raise SpecError(f"tower kind must be one of {TOWER_KINDS}, got {self.kind!r}")
        missing = set(_PARAMS[self.kind]) - set(self.weights)
        if missing:
            raise SpecError(f"{self.kind} tower: missing weights {sorted(missing)}")
        d = self.dim
        shapes = ({"A": (d, d), "b": (d,)} if self.kind == "linear" else
                  {"W1": (self.weights["W1"].shape[0], d), "b1": (self.weights["W1"].shape[0],),
                   "W2": (d, self.weights["W1"].shape[0]), "b2": (d,)})
        for name, shape in shapes.items():
            w = self.weights[name]
            if w.shape != shape:
                raise SpecError(f"{self.kind} tower: {name} has shape {w.shape}, expected {shape}")
            if not np.isfinite(w).all():
                raise SpecError(f"{self.kind} tower: {name} has non-finite values")

    @property
    def dim(self) -> int:
        w = self.weights["A"] if self.kind == "linear" else self.weights["W2"]
        return int(w.shape[0])

    @classmethod
    def identity(cls, kind: str, dim: int, normalize: bool, hidden: int = 256,
                 seed: int = 0) -> Tower:
        """The untrained tower: exactly the identity (then normalisation, if set)."""
        if kind == "linear":
            w = {"A": np.zeros((dim, dim), np.float32), "b": np.zeros(dim, np.float32)}
        elif kind == "mlp":
            rng = np.random.default_rng(seed)
            w = {"W1": (rng.standard_normal((hidden, dim)) / np.sqrt(dim)).astype(np.float32),
                 "b1": np.zeros(hidden, np.float32), "W2": np.zeros((dim, hidden), np.float32),
                 "b2": np.zeros(dim, np.float32)}
        else:
            raise SpecError(f"tower kind must be one of {TOWER_KINDS}, got {kind!r}")
        return cls(kind, w, normalize)

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        w = self.weights
        if self.kind == "linear":
            y = x + x @ w["A"].T + w["b"]
        else:
            y = x + np.maximum(x @ w["W1"].T + w["b1"], 0.0) @ w["W2"].T + w["b2"]
        if self.normalize:
            y = normalize_rows(y)
        return np.ascontiguousarray(y, dtype=np.float32)

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``path`` (.npz) and fsync it."""
        buf = io.BytesIO()
        arrays: dict[str, Any] = {"kind": np.array(self.kind),
                                  "normalize": np.array(self.normalize),
                                  **{k: np.asarray(v, np.float32) for k, v in self.weights.items()}}
        np.savez(buf, **arrays)
        with open(path, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, path: str | os.PathLike[str], dim: int) -> Tower:
        """Read a tower file; any malformed content is a :class:`CorruptFileError`."""
        path = Path(path)
        try:
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:  # we own f
                kind = str(z["kind"])
                normalize = bool(z["normalize"])
                weights = {k: np.array(z[k], dtype=np.float32) for k in _PARAMS.get(kind, ())}
            tower = cls(kind, weights, normalize)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, SpecError) as e:
            raise CorruptFileError(f"{path}: not a readable tower file ({e})") from None
        if tower.dim != dim:
            raise CorruptFileError(f"{path}: tower dimension {tower.dim}, index dimension {dim}")
        return tower
