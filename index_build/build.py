"""``index_build build``: the build pipeline behind the CLI (input, training pairs, the
chosen trainers, an optional encoder fine-tuning step, then the single or sharded write)."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

from ebr.data.synthetic import SyntheticConfig
from ebr.filters import parse_field
from ebr.metric import Metric
from ebr.spec import BuildParams, IndexSpec, build_nprobe

__all__ = ["build"]

logger = logging.getLogger("index_build")


def build(args: argparse.Namespace) -> None:
    from index_build.sources import load_source, write_synthetic

    if args.synthetic:
        paths = write_synthetic(Path(args.out).with_name(Path(args.out).name + ".data"),
                                SyntheticConfig(n=args.n, d=args.dim, seed=args.seed))
        args.input, args.ids = str(paths["corpus"]), None
    x, ids, enc, source = load_source(args.input, args.beir, args.ids, args.encoder,
                                      args.cache_dir, args.progress)
    metric = Metric.parse(args.metric)
    params = BuildParams(spec=IndexSpec.parse(args.spec), metric=metric,
                         dense_dtype=args.dense_dtype, train_size=args.train_size,
                         kmeans_niter=args.niter, seed=args.seed, codebooks=args.codebooks,
                         normalize=args.metric == "cosine", list_points=args.list_points)
    logger.info("build: %s", {k: v for k, v in vars(args).items() if k != "func"})
    pairs = _training_pairs(args, x, ids)
    if args.towers != "none" and pairs is None:
        raise SystemExit("--towers needs labelled pairs: give --train-qrels")
    if args.finetune_encoder and (pairs is None or not args.beir):
        raise SystemExit("--finetune-encoder needs --beir, --train-split and --train-qrels")
    with tempfile.TemporaryDirectory(prefix="ebr-encoder-") as model_tmp:
        extra_dirs = None
        if args.finetune_encoder:
            x, pairs, enc = _finetune_encoder(args, x, ids, pairs, params, Path(model_tmp))
            extra_dirs = {"encoder": Path(model_tmp)}
        m = _write(args, x, ids, params, pairs, enc, source, extra_dirs)
    logger.info("done: %s (%d vectors%s)", args.out, m.ntotal,
                f", {len(m.shards)} shards" if m.shards else
                f", {m.build['seconds']['total']:.1f} s")


def _write(args: argparse.Namespace, x: Any, ids: Any, params: BuildParams, pairs: Any,
           enc: Any, source: Any, extra_dirs: Any) -> Any:
    from ebr.index.writer import write_index

    trainer = _distill_trainer(args, pairs, x) if args.codebooks == "distill" else None
    fields = dict(parse_field(f) for f in args.index_field)
    if args.shards > 1 or args.ray:
        if args.towers != "none" or extra_dirs:
            raise SystemExit("--shards: towers and a fine-tuned encoder are single-index only")
        if args.ray:
            if not args.input:
                raise SystemExit("--ray reads the vectors from a file: give --input")
            from ebr.index.distributed import build_on_ray

            return build_on_ray(args.out, args.input, params, args.shards, ids,
                                trainer=trainer, address=args.ray_address,
                                payloads=_payloads(args), index_fields=fields,
                                overwrite=args.overwrite)
        from ebr.index.sharded import build_sharded

        return build_sharded(args.out, x, params, args.shards, ids, trainer=trainer,
                             payloads=_payloads(args), index_fields=fields,
                             overwrite=args.overwrite)
    dense_trainer = None
    if args.towers != "none":
        from ebr.train.bidr import BiDRConfig, BiDRDenseTrainer

        dense_trainer = BiDRDenseTrainer(pairs, BiDRConfig(
            tower=args.towers, sampler=args.sampler, shortlist=args.shortlist,
            nprobe=args.shortlist_nprobe, max_epochs=args.tower_epochs,
            val_split=args.val_split, seed=args.seed),
            progress=args.progress)
    m = write_index(args.out, x, params, ids, trainer=trainer, dense_trainer=dense_trainer,
                    encoder=enc, source=source, overwrite=args.overwrite,
                    progress=args.progress, extra_dirs=extra_dirs, payloads=_payloads(args),
                    index_fields=fields)
    return m


def _payloads(args: argparse.Namespace) -> Any:
    """--payloads FILE, else a BEIR corpus' title and text, else none."""
    from ebr.io.beir import corpus_payloads, read_payloads

    if args.payloads:
        return read_payloads(args.payloads)
    if args.beir:
        return corpus_payloads(args.beir)
    return None


def _training_pairs(args: argparse.Namespace, x: Any, ids: Any) -> Any:
    """Labelled (query, positive rows) pairs from --train-qrels, or None."""
    if not args.train_qrels:
        return None
    try:
        from ebr.train.sampling import TrainingPairs
    except ImportError as e:
        raise SystemExit(str(e)) from None
    from ebr.io.beir import load_ids, load_qrels
    from ebr.io.vecs import load_vectors

    if args.train_queries:
        if not args.train_query_ids:
            raise SystemExit("--train-qrels with --train-queries needs --train-query-ids")
        queries = load_vectors(args.train_queries)
        qids: list[str] | None = load_ids(args.train_query_ids)
    elif args.train_split and args.beir:
        from index_build.sources import load_eval_queries

        queries, qids = load_eval_queries(None, args.beir, args.train_split, None)
    else:
        raise SystemExit("--train-qrels needs the training queries: --train-queries FILE "
                         "--train-query-ids FILE, or --beir DIR --train-split SPLIT")
    if qids is None:
        raise SystemExit("--train-qrels: the training queries have no ids to match the qrels")
    return TrainingPairs.from_qrels(queries, qids, load_qrels(args.train_qrels), ids, len(x))


def _finetune_encoder(args: argparse.Namespace, x: Any, ids: Any, pairs: Any,
                      params: BuildParams, model_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune MiniLM on the pairs, save it to ``model_dir``, re-encode corpus and queries.

    Returns (corpus vectors, pairs with re-encoded queries, encoder info for the manifest).
    """
    import numpy as np

    from ebr.io.beir import load_corpus, load_queries
    from ebr.io.encoder import MINILM, TextEncoder
    from ebr.io.vecs import gather_rows, sample_rows
    from ebr.quant.faiss_index import ivf_params
    from ebr.quant.trainers import KMeansTrainer
    from ebr.train.encoder_ft import EncoderFineTuneConfig, fine_tune_encoder

    doc_ids, doc_texts = load_corpus(args.beir)
    if ids is not None and list(map(str, ids)) != doc_ids:
        raise SystemExit(f"{args.beir}: corpus order differs from the embeddings' order")
    qtext = load_queries(args.beir)
    query_texts = [qtext[q] for q in pairs.ids]
    # the shortlists a plain k-means index over the base embeddings hands the re-rank
    sample = gather_rows(x, sample_rows(len(x), params.train_size, params.seed))  # as write_index
    index = KMeansTrainer(niter=params.kmeans_niter).train_index(sample, params.spec, params.metric,
                                                           params.seed)
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    nprobe = build_nprobe(args.shortlist_nprobe, params.spec.nlist)
    _, sl = index.search(pairs.queries, min(args.shortlist, len(x)),
                         params=ivf_params(index, nprobe))
    enc = TextEncoder()
    info = fine_tune_encoder(enc.model, query_texts, doc_texts, pairs.positives, sl,
                             EncoderFineTuneConfig(epochs=args.finetune_epochs,
                                                   max_pairs=args.finetune_pairs or None,
                                                   seed=args.seed), progress=args.progress)
    enc.model.save(str(model_dir))
    enc_info = {**MINILM, "path": "encoder", "fine_tuned": {**info, "pairs": pairs.n_pairs}}
    logger.info("re-encoding %d documents and %d queries with the fine-tuned encoder",
                len(doc_texts), len(query_texts))
    # on ONNX Runtime (the service's default runtime, 1.5-2x torch's rate here), exported from
    # the saved weights; torch (tuned in place) when ONNX Runtime cannot take them
    tuned: Any = enc
    try:
        tuned = TextEncoder({**MINILM, "path": model_dir.name}, base_dir=model_dir.parent,
                            runtime="onnx").load()
    except (ImportError, ValueError, OSError) as e:
        logger.warning("re-encoding on torch: ONNX Runtime unavailable (%s)", e)
    x_new = tuned.encode(doc_texts, progress=args.progress)
    return x_new, pairs.with_queries(tuned.encode(query_texts)), enc_info


def _distill_trainer(args: argparse.Namespace, pairs: Any = None, corpus: Any = None) -> Any:
    try:
        from ebr.train.distill_vq import DistillConfig, DistillVQTrainer
    except ImportError as e:
        raise SystemExit(str(e)) from None
    queries = None  # with pairs, their queries are the distillation queries too
    if pairs is None and args.train_queries:
        from ebr.io.vecs import load_vectors

        queries = load_vectors(args.train_queries)
    elif pairs is None and args.train_split and args.beir:
        from index_build.sources import load_eval_queries

        queries, _ = load_eval_queries(None, args.beir, args.train_split, None)
    cfg = DistillConfig(loss=args.distill_loss, top_k=args.distill_topk,
                        max_epochs=args.distill_epochs, time_budget_s=args.distill_time_budget,
                        n_pseudo=args.pseudo_queries, ivf_weight=args.ivf_loss_weight,
                        train_query_map={"auto": None, "train": True,
                                         "fixed": False}[args.query_map],
                        query_weighting=args.query_weighting or None,
                        contrastive_weight=args.contrastive_weight,
                        val_split=args.val_split, seed=args.seed,
                        select=args.distill_select, val_nprobe=args.distill_val_nprobe,
                        val_candidates=args.distill_val_candidates, guard=args.distill_guard,
                        guard_nprobes=args.distill_guard_nprobes,
                        choose_weighting=args.choose_weighting, opq_start=args.opq_start,
                        corpus_size=None if corpus is None else len(corpus),
                        **({} if args.score_aware is None else
                           {"score_aware_eta": args.score_aware}))
    return DistillVQTrainer(cfg, queries=queries, niter=args.niter, progress=args.progress,
                            pairs=pairs, corpus=corpus if pairs is not None else None)
