"""``index_build`` / ``python -m index_build``: the offline builder.

    index_build build     vectors (.npy/.fvecs/.fbin), a BEIR directory or --synthetic -> index dir
    index_build evaluate  held-out queries -> recall / nDCG / latency sweep (JSON, Markdown, PNG)
    index_build inspect   print an index directory's manifest summary and memory
    index_build generate  write the built-in synthetic dataset (corpus, queries, qrels) to a dir
    index_build demo      generate -> build -> evaluate on the built-in data (the README's main job)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import faiss

from ebr.data.synthetic import SyntheticConfig
from ebr.errors import EbrError
from ebr.metric import Metric
from ebr.spec import CODEBOOK_METHODS, DENSE_DTYPES, BuildParams, IndexSpec, build_nprobe

logger = logging.getLogger("index_build")


def _add_build_args(p: argparse.ArgumentParser) -> None:
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
    idx = p.add_argument_group("index")
    idx.add_argument("--out", required=True, help="index directory to write (atomically)")
    idx.add_argument("--spec", default="IVF256,PQ16",
                     help="[OPQ<M>,]IVF<nlist>,PQ<M>[x<nbits>], IVF<nlist>,RQ<M>[x<nbits>] "
                     "(residual codes) or IVF<nlist>,LSQ<M>[x<nbits>] (additive codes encoded "
                     "jointly); under l2 RQ/LSQ use M - 1 codebooks + a norm code; RAM per "
                     "vector = ceil(M x nbits / 8) bytes (nbits 8 by default; 6-12 for RQ/LSQ)")
    idx.add_argument("--metric", default="ip", choices=["ip", "l2", "cosine"],
                     help="ip (inner product), cosine (= ip on normalised vectors), l2")
    idx.add_argument("--dense-dtype", default="float32", choices=DENSE_DTYPES,
                     help="on-disk dense store dtype (float16 halves disk and re-rank I/O)")
    idx.add_argument("--codebooks", default="kmeans", choices=CODEBOOK_METHODS,
                     help="codebook training: faiss k-means, or OPQ rotation + k-means")
    idx.add_argument("--train-size", type=int, default=100_000,
                     help="vectors sampled to train IVF + PQ")
    idx.add_argument("--niter", type=int, default=20, help="k-means iterations")
    idx.add_argument("--seed", type=int, default=1234, help="seed of sampling and k-means")
    idx.add_argument("--overwrite", action="store_true", help="replace an existing index dir")
    sh = p.add_argument_group("shards (serve with python -m service, or service.ray_serve)")
    sh.add_argument("--shards", type=int, default=1, help="split the rows into this many shard "
                    "indexes that share one set of codebooks (trained once on the sample)")
    sh.add_argument("--ray", action="store_true", help="write the shards with Ray Data "
                    "(extra 'distributed'; needs --input FILE)")
    sh.add_argument("--ray-address", help="Ray cluster address (default: a local instance); "
                    "input and output must be on storage every node sees")
    dv = p.add_argument_group("Distill-VQ (--codebooks distill; needs the 'train' extra)")
    dv.add_argument("--train-queries", help="training query vectors (.npy/.fvecs/.fbin); labels "
                    "are never used. Default: pseudo-queries sampled from the corpus")
    dv.add_argument("--train-split", help="with --beir: encode this split's query texts as "
                    "training queries (e.g. train)")
    dv.add_argument("--pseudo-queries", type=int, help="pseudo-queries from the corpus (default "
                    "10000 without training queries, 0 with them)")
    dv.add_argument("--distill-loss", default="mse", help="mse | listnet | kl_div | margin_mse "
                    "or a '+'-sum")
    dv.add_argument("--distill-topk", type=int, default=100, help="teacher candidates per query")
    dv.add_argument("--distill-epochs", type=int, default=30, help="max epochs (early stop on "
                    "a held-out slice of the training queries)")
    dv.add_argument("--distill-time-budget", type=float, help="stop training after this many "
                    "seconds (the best epoch so far is kept)")
    dv.add_argument("--ivf-loss-weight", type=float, metavar="W",
                    help="weight of the IVF (list) loss next to the PQ loss (default: 1 for ip, "
                    "0 for l2, whose list score lacks each document's residual terms)")
    dv.add_argument("--query-map", choices=["auto", "train", "fixed"], default="auto",
                    help="learn the query map, or keep it at its start (identity, or S^-1 under "
                    "query weighting); auto: learn it only without query weighting")
    dv.add_argument("--no-query-map", action="store_const", const="fixed", dest="query_map",
                    help="same as --query-map fixed")
    dv.add_argument("--query-weighting", type=float, default=0.75, metavar="SHRINKAGE",
                    help="inner product: quantize where squared error is the squared score error "
                    "over the training queries, shrunk toward plain k-means by this fraction "
                    "in (0, 1]; 0 turns it off (default 0.75). Not applied with --train-qrels: "
                    "the contrastive term did better from plain k-means")
    dv.add_argument("--score-aware", type=_etas, metavar="ETAS",
                    help="inner-product RQ / LSQ: candidate weights of the error along each "
                    "document's direction, comma-separated; the best on the held-out queries "
                    "is kept (1: faiss' codes), then the codebooks are refit for it. 'off' "
                    "turns it off (default 1,2,4,8)")
    bd = p.add_argument_group("BiDR (labelled training pairs; needs the 'train' extra)")
    bd.add_argument("--train-qrels", help="qrels .tsv of the training queries (query-id, "
                    "corpus-id, score): turns on the labelled terms. Stage 1 (with --codebooks "
                    "distill): contrastive quantization; stage 2: --towers")
    bd.add_argument("--train-query-ids", help="ids of the --train-queries rows, one per line")
    bd.add_argument("--contrastive-weight", type=float, default=3.0,
                    help="stage 1: weight of the labelled InfoNCE term next to the distillation")
    bd.add_argument("--towers", default="none", choices=["none", "linear", "mlp"],
                    help="stage 2: train residual query/document towers on the coarse "
                    "shortlists; the dense store is rewritten with the document tower")
    bd.add_argument("--sampler", default="random_walk", choices=["random_walk", "snowball",
                                                                  "random"],
                    help="stage 2 mini-batches: locality-centric walks over the query <-> "
                    "shortlist graph, or uniform")
    bd.add_argument("--shortlist", type=int, default=200, help="stage 2: shortlist size N")
    bd.add_argument("--shortlist-nprobe", type=int, help="stage 2: nprobe of the shortlists "
                    "(default nlist/4; use the nprobe you will serve with)")
    bd.add_argument("--tower-epochs", type=int, default=20, help="stage 2: max epochs (early "
                    "stop on held-out pairs)")
    bd.add_argument("--val-split", default="query", choices=["query", "document"],
                    help="held-out pairs for early stopping: random queries, or whole groups "
                    "of queries sharing positives (no held-out positive is a training one: "
                    "rewards only what carries over to unlabelled documents)")
    bd.add_argument("--finetune-encoder", action="store_true",
                    help="with --beir: fine-tune MiniLM itself on the pairs (negatives from a "
                    "k-means coarse index's shortlists), store it in the index, re-encode the "
                    "corpus with it, then build as usual (slow on CPU: see --finetune-pairs)")
    bd.add_argument("--finetune-pairs", type=int, default=512,
                    help="(query, positive) pairs sampled per fine-tuning epoch (0: all)")
    bd.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    q = p.add_argument_group("queries (one of)")
    q.add_argument("--queries", help="query vectors (.npy/.fvecs/.fbin), rows match --query-ids")
    q.add_argument("--query-ids", help="query ids, one per line (needed with --qrels)")
    q.add_argument("--qrels", help="BEIR qrels .tsv (query-id, corpus-id, score)")
    q.add_argument("--eval-beir", help="BEIR dir: encode the --split queries' text with MiniLM")
    q.add_argument("--split", default="test", help="qrels split of --eval-beir")
    s = p.add_argument_group("sweep")
    s.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64], help="nprobe values")
    s.add_argument("--k-coarse", type=int, nargs="+", default=[100, 200, 500],
                   help="candidate counts C handed to the re-rank")
    s.add_argument("--baseline", action="store_true",
                   help="also run faiss IVFPQ+IndexRefineFlat (same spec/seed, all in RAM)")
    s.add_argument("--results", default="results", help="output directory for JSON/MD/PNG")
    s.add_argument("--name", default="eval", help="file stem of the outputs")


def _parser() -> argparse.ArgumentParser:
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
    g.add_argument("--stream", action="store_true", help="any size with bounded memory: "
                   "corpus.fbin written chunk by chunk + queries_test.npy (no qrels)")
    d = sub.add_parser("demo", help="generate -> build -> evaluate on the built-in data")
    d.add_argument("--workdir", default="runs/demo", help="where data, index and results go")
    d.add_argument("--n", type=int, default=50_000, help="synthetic documents")
    d.add_argument("--dim", type=int, default=128, help="synthetic dimension")
    d.add_argument("--spec", default="IVF256,PQ16", help="index spec")
    return p


def _build(args: argparse.Namespace) -> None:
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
                         normalize=args.metric == "cosine")
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
    if args.shards > 1 or args.ray:
        if args.towers != "none" or extra_dirs:
            raise SystemExit("--shards: towers and a fine-tuned encoder are single-index only")
        if args.ray:
            if not args.input:
                raise SystemExit("--ray reads the vectors from a file: give --input")
            from ebr.index.distributed import build_on_ray

            return build_on_ray(args.out, args.input, params, args.shards, ids,
                                trainer=trainer, address=args.ray_address,
                                overwrite=args.overwrite)
        from ebr.index.sharded import build_sharded

        return build_sharded(args.out, x, params, args.shards, ids, trainer=trainer,
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
                    progress=args.progress, extra_dirs=extra_dirs)
    return m


def _training_pairs(args: argparse.Namespace, x: object, ids: object) -> object:
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
        queries, qids = load_vectors(args.train_queries), load_ids(args.train_query_ids)
    elif args.train_split and args.beir:
        from index_build.sources import load_eval_queries

        queries, qids = load_eval_queries(None, args.beir, args.train_split, None)
    else:
        raise SystemExit("--train-qrels needs the training queries: --train-queries FILE "
                         "--train-query-ids FILE, or --beir DIR --train-split SPLIT")
    return TrainingPairs.from_qrels(queries, qids, load_qrels(args.train_qrels), ids,
                                    len(x))  # type: ignore[arg-type]


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
    x_new = enc.encode(doc_texts, progress=args.progress)  # enc.model was tuned in place
    return x_new, pairs.with_queries(enc.encode(query_texts)), enc_info


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


def _distill_trainer(args: argparse.Namespace, pairs: object = None, corpus: object = None
                     ) -> object:
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
                        **({} if args.score_aware is None else
                           {"score_aware_eta": args.score_aware}))
    return DistillVQTrainer(cfg, queries=queries, niter=args.niter, progress=args.progress,
                            pairs=pairs, corpus=corpus if pairs is not None else None)


def _evaluate(args: argparse.Namespace) -> None:
    from ebr.io.beir import load_qrels
    from index_build.evaluate import run_and_report
    from index_build.sources import load_eval_queries

    encoder = None
    if args.eval_beir:  # text queries go through the index's own encoder (fine-tuned or not)
        from ebr.io.encoder import TextEncoder
        from ebr.io.manifest import read_manifest

        info = read_manifest(Path(args.index)).encoder
        encoder = TextEncoder(info, base_dir=args.index) if info else None
    xq, qids = load_eval_queries(args.queries, args.eval_beir, args.split, args.query_ids,
                                 encoder)
    qrels = None
    if args.qrels:
        qrels = load_qrels(args.qrels)
    elif args.eval_beir:
        qrels = load_qrels(Path(args.eval_beir) / "qrels" / f"{args.split}.tsv")
    paths = run_and_report(Path(args.results), args.name, f"ebr evaluation: {args.index}",
                           index_dir=args.index, xq=xq, query_ids=qids, qrels=qrels,
                           nprobes=args.nprobe, k_coarses=args.k_coarse,
                           baseline=args.baseline, progress=args.progress)
    print(Path(paths["md"]).read_text())  # noqa: T201 - the CLI's output


def _inspect(args: argparse.Namespace) -> None:
    from ebr.index.reader import open_index
    from ebr.io.manifest import read_manifest

    if read_manifest(Path(args.index)).shards:
        from ebr.index.sharded import open_sharded

        si = open_sharded(args.index, verify_checksums=not args.no_verify)
        m = si.manifest
        print(json.dumps({"spec": m.spec, "metric": m.metric, "dim": m.dim,  # noqa: T201
                          "ntotal": m.ntotal, "format_version": m.format_version,
                          "shards": m.shards, "codebooks": m.codebooks, "build": m.build,
                          "memory": si.memory()}, indent=2, default=str))
        return
    oi = open_index(args.index, verify_checksums=not args.no_verify)
    m = oi.manifest
    out = {"spec": m.spec, "metric": m.metric, "dim": m.dim, "ntotal": m.ntotal,
           "format_version": m.format_version, "dense_dtype": m.dense_dtype,
           "codebooks": m.codebooks, "encoder": m.encoder, "build": m.build,
           "memory": oi.memory()}
    print(json.dumps(out, indent=2, default=str))  # noqa: T201 - the CLI's output


def _generate(args: argparse.Namespace) -> None:
    from index_build.sources import write_synthetic

    cfg = SyntheticConfig(n=args.n, d=args.dim, seed=args.seed)
    if args.stream:
        from ebr.data.synthetic import write_stream

        paths = write_stream(cfg, Path(args.out))
        logger.info("streamed %d x %d -> %s", cfg.n, cfg.d, paths["corpus"])
    else:
        write_synthetic(Path(args.out), cfg)


def _demo(args: argparse.Namespace) -> None:
    from ebr.index.writer import write_index
    from ebr.io.beir import load_ids, load_qrels
    from ebr.io.vecs import load_vectors
    from index_build.evaluate import run_and_report
    from index_build.sources import write_synthetic

    work = Path(args.workdir)
    paths = write_synthetic(work / "data", SyntheticConfig(n=args.n, d=args.dim))
    params = BuildParams(spec=IndexSpec.parse(args.spec), metric=Metric.IP)
    write_index(work / "index", load_vectors(paths["corpus"]), params,
                source={"kind": "synthetic", "path": str(work / "data")},
                overwrite=True, progress=args.progress)
    import numpy as np

    out = run_and_report(work / "results", "demo", f"ebr demo: synthetic {args.n} x {args.dim}",
                         index_dir=work / "index",
                         xq=np.load(paths["queries_test"]),
                         query_ids=load_ids(paths["query_ids_test"]),
                         qrels=load_qrels(paths["qrels_test"]), nprobes=[8, 32],
                         k_coarses=[50, 100, 200], baseline=True, progress=args.progress)
    print(Path(out["md"]).read_text())  # noqa: T201 - the CLI's output
    logger.info("demo index at %s; results in %s", work / "index", work / "results")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    try:
        {"build": _build, "evaluate": _evaluate, "inspect": _inspect, "generate": _generate,
         "demo": _demo}[args.cmd](args)
    except EbrError as e:
        logger.error("%s: %s", type(e).__name__, e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
