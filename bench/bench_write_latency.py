"""How long a write to a living index takes, per code: PQ, RQ under inner product and L2.

    python bench/bench_write_latency.py [--n 50000] [--dim 384] [--nlist 2048]
                                        [--specs IVF{nlist},PQ16:ip IVF{nlist},RQ8:ip
                                                 IVF{nlist},RQ8:l2]
                                        [--writes 60] [--out bench/results]
                                        [--name write_latency]

Per spec, on the built-in generator's ``minilm`` profile (n x dim): builds the index (k-means
codebooks, 4 iterations), opens it living (writable) and upserts ``--writes`` single documents
one at a time, then ``--writes`` / 6 batches of 100 (the log is fsynced at each write, so the
disk is part of the figure). The first 10 single writes warm up and are not counted. One
thread (faiss' OpenMP threads set to 1). Writes <name>.json and <name>.md: median and p90 ms
per one-document upsert, and ms per batch of 100.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

WARMUP = 10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--nlist", type=int, default=2048)
    ap.add_argument("--specs", nargs="+",
                    default=["IVF{nlist},PQ16:ip", "IVF{nlist},RQ8:ip", "IVF{nlist},RQ8:l2"])
    ap.add_argument("--writes", type=int, default=60)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--name", default="write_latency")
    args = ap.parse_args()

    import faiss

    from ebr.data.synthetic import SyntheticConfig, generate
    from ebr.index.live import open_live
    from ebr.index.reader import open_index
    from ebr.index.writer import write_index
    from ebr.metric import Metric
    from ebr.spec import BuildParams, IndexSpec

    faiss.omp_set_num_threads(1)
    ds = generate(SyntheticConfig(n=args.n, d=args.dim, nq=10, profile="minilm"))
    xb = np.ascontiguousarray(ds.xb, dtype=np.float32)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "runs" if (ROOT / "runs").exists() else None
                                     ) as tmp:
        for item in args.specs:
            text, _, metric_name = item.partition(":")
            spec = IndexSpec.parse(text.format(nlist=args.nlist))
            metric = Metric(metric_name or "ip")
            path = Path(tmp) / f"{spec}-{metric.value}"
            t0 = time.perf_counter()
            write_index(path, xb, BuildParams(spec=spec, metric=metric, kmeans_niter=4,
                                              train_size=min(args.n, 100_000)))
            build_s = time.perf_counter() - t0
            live = open_live(open_index(path, verify_checksums=False), path)
            one = []
            for i in range(WARMUP + args.writes):
                v = rng.standard_normal((1, args.dim)).astype(np.float32)
                t0 = time.perf_counter()
                live.upsert([10 ** 9 + i], v)
                one.append(time.perf_counter() - t0)
            one = one[WARMUP:]
            batch = []
            for j in range(max(1, args.writes // 6)):
                v = rng.standard_normal((100, args.dim)).astype(np.float32)
                ids = list(range(2 * 10 ** 9 + 100 * j, 2 * 10 ** 9 + 100 * (j + 1)))
                t0 = time.perf_counter()
                live.upsert(ids, v)
                batch.append(time.perf_counter() - t0)
            live.close()
            shutil.rmtree(path.with_name(path.name + ".live"), ignore_errors=True)
            row = {"spec": str(spec), "metric": metric.value, "build_s": round(build_s, 1),
                   "one_doc_ms_median": round(1e3 * float(np.median(one)), 2),
                   "one_doc_ms_p90": round(1e3 * float(np.percentile(one, 90)), 2),
                   "batch100_ms_median": round(1e3 * float(np.median(batch)), 2)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    from ebr.eval.report import write_report

    meta = {"title": "Write latency of a living index, per code",
            "command": "python bench/bench_write_latency.py " + " ".join(sys.argv[1:]),
            "cpus": os.cpu_count(), "n": args.n, "dim": args.dim, "writes": args.writes,
            "setup": f"generator `minilm` profile, {args.n:,} x {args.dim}; one thread; the log "
                     f"fsynced at each write; {args.writes} single-document upserts after "
                     f"{WARMUP} not counted, then batches of 100"}
    paths = write_report(args.out, args.name, meta, rows, plot=False,
                         columns=["spec", "metric", "build_s", "one_doc_ms_median",
                                  "one_doc_ms_p90", "batch100_ms_median"])
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
