"""``index_build evaluate | inspect | generate | demo``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ebr.data.synthetic import SyntheticConfig
from ebr.metric import Metric
from ebr.spec import BuildParams, IndexSpec

__all__ = ["evaluate", "inspect", "generate", "demo"]

logger = logging.getLogger("index_build")


def evaluate(args: argparse.Namespace) -> None:
    from ebr.io.beir import load_qrels
    from index_build.evaluate import evaluate_index, report
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
    if args.filter:
        from index_build.evaluate import evaluate_filtered

        raw = Path(args.filter[1:]).read_text() if args.filter.startswith("@") else args.filter
        result = evaluate_filtered(args.index, xq, json.loads(raw), nprobes=args.nprobe,
                                   candidate_counts=args.candidates)
    else:
        result = evaluate_index(args.index, xq, query_ids=qids, qrels=qrels,
                                nprobes=args.nprobe, candidate_counts=args.candidates,
                                baseline=args.baseline, progress=args.progress,
                                target_recall=args.target_recall, probe=args.probe)
    paths = report(Path(args.results), args.name, f"ebr evaluation: {args.index}", result)
    print(Path(paths["md"]).read_text())  # noqa: T201 - the CLI's output


def inspect(args: argparse.Namespace) -> None:
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


def generate(args: argparse.Namespace) -> None:
    from index_build.sources import write_synthetic

    cfg = SyntheticConfig(n=args.n, d=args.dim, seed=args.seed, profile=args.profile)
    if args.stream:
        from ebr.data.synthetic import write_stream

        paths = write_stream(cfg, Path(args.out))
        logger.info("streamed %d x %d -> %s", cfg.n, cfg.d, paths["corpus"])
    else:
        write_synthetic(Path(args.out), cfg)


def compact(args: argparse.Namespace) -> None:
    from ebr.index.compact import compact as run

    m = run(args.index, verify_checksums=not args.no_verify, progress=args.progress)
    print(json.dumps({"ntotal": m.ntotal, "live": m.live}, indent=2))  # noqa: T201


def retrain(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from ebr.index.reader import open_index
    from ebr.index.retrain import params_of
    from ebr.index.retrain import retrain as run
    from index_build.build import _distill_trainer

    params = params_of(open_index(args.index, verify_checksums=False).manifest)
    if args.spec:
        params = replace(params, spec=IndexSpec.parse(args.spec))
    if args.codebooks:
        params = replace(params, codebooks=args.codebooks)
    if args.seed is not None:
        params = replace(params, seed=args.seed)
    args.beir = args.train_split = None  # the trainer distils from the documents themselves
    trainer = _distill_trainer(args) if params.codebooks == "distill" else None
    m = run(args.index, params, trainer=trainer, progress=args.progress)
    print(json.dumps({"ntotal": m.ntotal, "codebooks": m.codebooks.get("method"),  # noqa: T201
                      "live": m.live}, indent=2))


def demo(args: argparse.Namespace) -> None:
    from ebr.index.writer import write_index
    from ebr.io.beir import load_ids, load_qrels
    from ebr.io.vecs import load_vectors
    from index_build.evaluate import evaluate_index, report
    from index_build.sources import write_synthetic

    work = Path(args.workdir)
    paths = write_synthetic(work / "data", SyntheticConfig(n=args.n, d=args.dim))
    params = BuildParams(spec=IndexSpec.parse(args.spec), metric=Metric.IP)
    write_index(work / "index", load_vectors(paths["corpus"]), params,
                source={"kind": "synthetic", "path": str(work / "data")},
                overwrite=True, progress=args.progress)
    import numpy as np

    out = report(work / "results", "demo", f"ebr demo: synthetic {args.n} x {args.dim}",
                 evaluate_index(work / "index", np.load(paths["queries_test"]),
                                query_ids=load_ids(paths["query_ids_test"]),
                                qrels=load_qrels(paths["qrels_test"]), nprobes=[8, 32],
                                candidate_counts=[50, 100, 200], baseline=True,
                                progress=args.progress))
    print(Path(out["md"]).read_text())  # noqa: T201 - the CLI's output
    logger.info("demo index at %s; results in %s", work / "index", work / "results")
