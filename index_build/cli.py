"""``index_build``'s command line: the parser, its groups of options and their defaults.

Every default comes from the library's own parameter types (``BuildParams``, the training
configs in :mod:`ebr.train_config`, ``SyntheticConfig``): one default per parameter.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from ebr.data.synthetic import PROFILES, SyntheticConfig
from ebr.quant.probe import PROBE_KINDS
from ebr.spec import CODEBOOK_METHODS, DENSE_DTYPES, BuildParams
from ebr.train_config import BiDRConfig, DistillConfig, EncoderFineTuneConfig

__all__ = ["parser"]


def _default(cls: Any, name: str) -> Any:
    """The library's default of a field of ``cls`` (one default per parameter)."""
    return next(f.default for f in fields(cls) if f.name == name)


def _etas(text: str) -> tuple[float, ...]:
    """--score-aware: 'off' or comma-separated positive weights."""
    if text.strip().lower() == "off":
        return ()
    try:
        etas = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'off' or numbers like 1,2,4, got {text!r}") from None
    if any(not e > 0 for e in etas):
        raise argparse.ArgumentTypeError(f"weights must be > 0, got {text!r}")
    return etas


def _input_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("input (one of)")
    src.add_argument("--input", help="document vectors: .npy, .fvecs, .fbin or .f16bin")
    src.add_argument("--beir", help="BEIR directory; corpus text is encoded with the offline "
                     "MiniLM and cached (see --cache-dir)")
    src.add_argument("--synthetic", action="store_true",
                     help="the built-in seeded generator (sizes: --n, --dim)")
    src.add_argument("--ids", help="external ids for --input: .txt (one per line) or .jsonl "
                     "(the _id field, e.g. a BEIR corpus.jsonl); default: row numbers")
    src.add_argument("--encoder", choices=["minilm"], help="declare that --input vectors come "
                     "from the offline MiniLM, so the service accepts text queries")
    src.add_argument("--cache-dir", help="embedding cache (default $EBR_CACHE_DIR or "
                     "~/.cache/ebr/embeddings)")
    src.add_argument("--index-field", action="append", default=[], metavar="NAME:KIND",
                     help="a payload field to filter searches on, indexed (kinds: int, "
                     "float, keyword, bool; repeat the option); dots reach nested fields")
    src.add_argument("--payloads", help="JSONL of {\"id\": ..., \"payload\": {...}}: stored "
                     "with the documents and returned by searches (with --beir: the corpus' "
                     "title and text unless this is given)")


def _index_args(p: argparse.ArgumentParser) -> None:
    idx = p.add_argument_group("index")
    idx.add_argument("--out", required=True, help="index directory to write (atomically)")
    idx.add_argument("--spec", default="IVF256,PQ16",
                     help="[OPQ<M>[_<d'>],]IVF<nlist>,PQ<M>[x<nbits>] (OPQ<M>_<d'>: rotated "
                     "down to d' dimensions), IVF<nlist>,RQ<M>[x<nbits>] "
                     "(residual codes) or IVF<nlist>,LSQ<M>[x<nbits>] (additive codes encoded "
                     "jointly); under l2 RQ/LSQ use M - 1 codebooks + a norm code; RAM per "
                     "vector = ceil(M x nbits / 8) bytes (nbits 8 by default; 6-12 for RQ/LSQ)")
    idx.add_argument("--metric",
                     default=_default(BuildParams, "metric").value, choices=["ip", "l2", "cosine"],
                     help="ip (inner product), cosine (= ip on normalised vectors), l2")
    idx.add_argument("--dense-dtype", default=_default(BuildParams, "dense_dtype"),
                     choices=DENSE_DTYPES,
                     help="on-disk dense store dtype (float16 halves disk and re-rank I/O)")
    idx.add_argument("--codebooks", default=_default(BuildParams, "codebooks"),
                     choices=CODEBOOK_METHODS,
                     help="codebook training: faiss k-means, or OPQ rotation + k-means")
    idx.add_argument("--train-size", type=int, default=_default(BuildParams, "train_size"),
                     help="vectors sampled to train IVF + PQ")
    idx.add_argument("--niter", type=int,
                     default=_default(BuildParams, "kmeans_niter"), help="k-means iterations")
    idx.add_argument("--seed", type=int,
                     default=_default(BuildParams, "seed"), help="seed of sampling and k-means")
    idx.add_argument("--list-points", type=int, default=None,
                     help="k-means points kept per IVF list, by which the probe ranks the "
                     "lists (1: none, the centroids rank them; default min(16, 4096 // nlist)); "
                     "costs nlist x m x d floats of RAM and one product with them per query")
    idx.add_argument("--overwrite", action="store_true", help="replace an existing index dir")


def _shard_args(p: argparse.ArgumentParser) -> None:
    sh = p.add_argument_group("shards (serve with python -m service, or service.ray_serve)")
    sh.add_argument("--shards", type=int, default=1, help="split the rows into this many shard "
                    "indexes that share one set of codebooks (trained once on the sample)")
    sh.add_argument("--ray", action="store_true", help="write the shards with Ray Data "
                    "(extra 'distributed'; needs --input FILE)")
    sh.add_argument("--ray-address", help="Ray cluster address (default: a local instance); "
                    "input and output must be on storage every node sees")


def _distill_args(p: argparse.ArgumentParser) -> None:
    dv = p.add_argument_group("Distill-VQ (--codebooks distill; needs the 'train' extra)")
    dv.add_argument("--train-queries", help="training query vectors (.npy/.fvecs/.fbin); labels "
                    "are never used. Default: pseudo-queries sampled from the corpus")
    dv.add_argument("--train-split", help="with --beir: encode this split's query texts as "
                    "training queries (e.g. train)")
    dv.add_argument("--pseudo-queries", type=int, help="pseudo-queries from the corpus (default "
                    "10000 without training queries, 0 with them)")
    dv.add_argument("--distill-loss",
                    default=_default(DistillConfig, "loss"), help="mse | listnet | kl_div | margin_mse "
                    "or a '+'-sum")
    dv.add_argument("--distill-topk", type=int,
                    default=_default(DistillConfig, "top_k"), help="teacher candidates per query")
    dv.add_argument("--distill-epochs", type=int,
                    default=_default(DistillConfig, "max_epochs"), help="max epochs (early stop on "
                    "a held-out slice of the training queries)")
    dv.add_argument("--distill-time-budget", type=float, help="stop training after this many "
                    "seconds (the best epoch so far is kept)")
    dv.add_argument("--distill-select", choices=["rerank", "coarse"],
                    default=_default(DistillConfig, "select"),
                    help="what picks the best epoch on the held-out queries, the start (no "
                    "learned change) included: rerank = the re-ranked recall@10 at "
                    "--distill-val-candidates (what users see); coarse = coarse recall@100")
    dv.add_argument("--distill-val-nprobe", type=int, metavar="N",
                    help="nprobe of that held-out measure: set it to the serving nprobe "
                    "(default nlist / 4)")
    dv.add_argument("--distill-val-candidates", type=int, metavar="C",
                    default=_default(DistillConfig, "val_candidates"),
                    help="candidate count of the re-ranked measure: set it to the serving C "
                    "(measured in the training sample, it is scaled by the sample's share of "
                    "the corpus)")
    dv.add_argument("--distill-guard", action=argparse.BooleanOptionalAction,
                    default=_default(DistillConfig, "guard"),
                    help="after training, keep faiss' plain codebooks for the spec instead "
                    "where they give the better held-out re-ranked recall@10 (default on)")
    dv.add_argument("--distill-guard-nprobes", type=int, metavar="K",
                    default=_default(DistillConfig, "guard_nprobes"),
                    help="the guard averages each held-out query's recall over the validation "
                    "nprobe and its halvings, K values (1: that nprobe alone), so learned lists "
                    "that lose at the lower nprobes users pick for speed are not kept")
    dv.add_argument("--ivf-loss-weight", type=float, metavar="W",
                    help="weight of the IVF (list) loss next to the PQ loss (default: 1 for ip, "
                    "0 for l2, whose list score lacks each document's residual terms)")
    dv.add_argument("--query-map", choices=["auto", "train", "fixed"], default="auto",
                    help="learn the query map, or keep it at its start (identity, or S^-1 under "
                    "query weighting); auto: learn it only without query weighting")
    dv.add_argument("--no-query-map", action="store_const", const="fixed", dest="query_map",
                    help="same as --query-map fixed")
    dv.add_argument("--query-weighting", type=float,
                    default=_default(DistillConfig, "query_weighting"), metavar="SHRINKAGE",
                    help="inner product: quantize where squared error is the squared score error "
                    "over the training queries, shrunk toward plain k-means by this fraction "
                    "in (0, 1]; 0 turns it off (default %(default)s). Not applied with --train-qrels: "
                    "the contrastive term did better from plain k-means")
    dv.add_argument("--choose-weighting", action=argparse.BooleanOptionalAction,
                    default=_default(DistillConfig, "choose_weighting"),
                    help="with query weighting, train from the unweighted start too (half the "
                    "time budget each) and keep the run that serves the held-out queries "
                    "better end to end (default on)")
    dv.add_argument("--opq-start", action=argparse.BooleanOptionalAction,
                    default=_default(DistillConfig, "opq_start"),
                    help="a PQ spec without OPQ starts from OPQ's rotation (same bytes per "
                    "vector), and the guard compares with plain OPQ (default on)")
    dv.add_argument("--score-aware", type=_etas, metavar="ETAS",
                    help="inner-product RQ / LSQ: candidate weights of the error along each "
                    "document's direction, comma-separated; the best on the held-out queries "
                    "is kept (1: faiss' codes), then the codebooks are refit for it. 'off' "
                    "turns it off (default "
                    + ",".join(f"{e:g}" for e in _default(DistillConfig, "score_aware_eta"))
                    + ")")


def _bidr_args(p: argparse.ArgumentParser) -> None:
    bd = p.add_argument_group("BiDR (labelled training pairs; needs the 'train' extra)")
    bd.add_argument("--train-qrels", help="qrels .tsv of the training queries (query-id, "
                    "corpus-id, score): turns on the labelled terms. Stage 1 (with --codebooks "
                    "distill): contrastive quantization; stage 2: --towers")
    bd.add_argument("--train-query-ids", help="ids of the --train-queries rows, one per line")
    bd.add_argument("--contrastive-weight", type=float,
                    default=_default(DistillConfig, "contrastive_weight"),
                    help="stage 1: weight of the labelled InfoNCE term next to the distillation")
    bd.add_argument("--towers", default="none", choices=["none", "linear", "mlp"],
                    help="stage 2: train residual query/document towers on the coarse "
                    "shortlists; the dense store is rewritten with the document tower")
    bd.add_argument("--sampler", default=_default(BiDRConfig, "sampler"), choices=["random_walk", "snowball",
                                                                  "random"],
                    help="stage 2 mini-batches: locality-centric walks over the query <-> "
                    "shortlist graph, or uniform")
    bd.add_argument("--shortlist", type=int,
                    default=_default(BiDRConfig, "shortlist"), help="stage 2: shortlist size N")
    bd.add_argument("--shortlist-nprobe", type=int, help="stage 2: nprobe of the shortlists "
                    "(default nlist/4; use the nprobe you will serve with)")
    bd.add_argument("--tower-epochs", type=int,
                    default=_default(BiDRConfig, "max_epochs"), help="stage 2: max epochs (early "
                    "stop on held-out pairs)")
    bd.add_argument("--val-split", default=_default(BiDRConfig, "val_split"), choices=["query", "document"],
                    help="held-out pairs for early stopping: random queries, or whole groups "
                    "of queries sharing positives (no held-out positive is a training one: "
                    "rewards only what carries over to unlabelled documents)")
    bd.add_argument("--finetune-encoder", action="store_true",
                    help="with --beir: fine-tune MiniLM itself on the pairs (negatives from a "
                    "k-means coarse index's shortlists), store it in the index, re-encode the "
                    "corpus with it, then build as usual (slow on CPU: see --finetune-pairs)")
    bd.add_argument("--finetune-pairs", type=int,
                    default=_default(EncoderFineTuneConfig, "max_pairs"),
                    help="(query, positive) pairs sampled per fine-tuning epoch (0: all)")
    bd.add_argument("--finetune-epochs", type=int,
                    default=_default(EncoderFineTuneConfig, "epochs"), help="fine-tuning epochs")


def _add_build_args(p: argparse.ArgumentParser) -> None:
    for group in (_input_args, _index_args, _shard_args, _distill_args, _bidr_args):
        group(p)


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    q = p.add_argument_group("queries (one of)")
    q.add_argument("--queries", help="query vectors (.npy/.fvecs/.fbin), rows match --query-ids")
    q.add_argument("--query-ids", help="query ids, one per line (needed with --qrels)")
    q.add_argument("--qrels", help="BEIR qrels .tsv (query-id, corpus-id, score)")
    q.add_argument("--eval-beir", help="BEIR dir: encode the --split queries' text with MiniLM")
    q.add_argument("--split", default="test", help="qrels split of --eval-beir")
    s = p.add_argument_group("sweep")
    s.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64], help="nprobe values")
    s.add_argument("--candidates", "--k-coarse", type=int, nargs="+", default=[100, 200, 500],
                   help="candidate counts C handed to the re-rank (--k-coarse: the old name)")
    s.add_argument("--baseline", action="store_true",
                   help="also run faiss IVFPQ+IndexRefineFlat (same spec/seed, all in RAM)")
    s.add_argument("--probe", choices=PROBE_KINDS, default="auto",
                   help="how a query's lists are picked: auto (the index's list points when "
                   "it has them), flat (the centroids alone), hnsw, points; compare two on "
                   "your queries before choosing EBR_COARSE_PROBE")
    s.add_argument("--target-recall", type=float, default=0.95,
                   help="recommend the swept (nprobe, C) of least work whose recall@10 "
                   "against exact search reaches this (the report's 'recommended' line)")
    s.add_argument("--results", default="results", help="output directory for JSON/MD/PNG")
    s.add_argument("--name", default="eval", help="file stem of the outputs")
    s.add_argument("--filter", help="a payload filter (JSON, or @FILE): recall of the filtered "
                   "search against the exact top-k among the matching documents, and the "
                   "share of queries that get min(k, matches) hits")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="index_build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0 = all cores)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on long steps")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build an index directory")
    _add_build_args(b)
    b.add_argument("--n", type=int, default=SyntheticConfig.n, help="synthetic: documents")
    b.add_argument("--dim", type=int, default=SyntheticConfig.d, help="synthetic: dimension")
    e = sub.add_parser("evaluate", help="recall / nDCG / latency of an index")
    e.add_argument("--index", required=True, help="index directory")
    _add_eval_args(e)
    i = sub.add_parser("inspect", help="print manifest summary and memory of an index")
    i.add_argument("--index", required=True)
    i.add_argument("--no-verify", action="store_true", help="skip sha256 checks")
    g = sub.add_parser("generate", help="write the synthetic dataset to a directory")
    g.add_argument("--out", required=True)
    g.add_argument("--n", type=int, default=SyntheticConfig.n)
    g.add_argument("--dim", type=int, default=SyntheticConfig.d)
    g.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    g.add_argument("--profile", choices=PROFILES, default=SyntheticConfig.profile,
                   help="clusters (each with its own low-rank basis) or minilm (the spectrum "
                   "measured on MiniLM text embeddings: anisotropic queries; use --dim 384)")
    g.add_argument("--stream", action="store_true", help="any size with bounded memory: "
                   "corpus.fbin written chunk by chunk + queries_test.npy (no qrels)")
    c = sub.add_parser("compact", help="fold the write-ahead log of a living index into a new "
                       "generation (no retraining) and swap it in")
    c.add_argument("--index", required=True, help="index directory (as the service serves it)")
    c.add_argument("--no-verify", action="store_true", help="skip sha256 checks of the base")
    r = sub.add_parser("retrain", help="compact, then learn the codebooks again from the "
                       "documents a living index holds now (writes go on meanwhile)")
    r.add_argument("--index", required=True, help="index directory (as the service serves it)")
    r.add_argument("--spec", help="new index spec (default: the index's)")
    r.add_argument("--codebooks", choices=CODEBOOK_METHODS, help="codebook training "
                   "(default: the index's)")
    r.add_argument("--seed", type=int, help="seed (default: the index's)")
    _distill_args(r)
    d = sub.add_parser("demo", help="generate -> build -> evaluate on the built-in data")
    d.add_argument("--workdir", default="runs/demo", help="where data, index and results go")
    d.add_argument("--n", type=int, default=50_000, help="synthetic documents")
    d.add_argument("--dim", type=int, default=128, help="synthetic dimension")
    d.add_argument("--spec", default="IVF256,PQ16", help="index spec")
    return p
