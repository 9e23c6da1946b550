"""Text queries over HTTP against the encoder's own batched rate (issue 22, item 3).

    python bench/bench_text.py [--seconds 20] [--clients 1 4 8 32] [--workers 1] [--alone]
                               [--load-generators wrk python] [--lanes 1 2]
                               [--runtimes torch onnx onnx-int8] [--out bench/results]

Builds (once) an index of SciFact's precomputed MiniLM corpus vectors that records the MiniLM
encoder (so the service takes text), then, in one run:
  1. in-process, per encoder runtime (torch, ONNX Runtime fp32, ONNX Runtime int8): the
     MiniLM encodes 640 query texts in each configuration of CONFIGS (passes of 64, 16, 8
     texts; one 2-thread call, or two 1-thread calls at once on ONNX Runtime): the best of
     them is the encoder's batched rate, the ceiling of any server; and SciFact nDCG@10 of
     exact search with the test queries encoded by that runtime (the corpus vectors are the
     precomputed torch ones);
  2. HTTP POST /search with {"text": ...}: --clients concurrent connections for --seconds
     each, sent by wrk (C; apt-get install wrk) and by ebr.client.AsyncClient (Python, one
     connection per client; --load-generators), with the TextBatcher (concurrent texts
     encoded in one call, EBR_TEXT_BATCH_MAX=64) on each runtime (EBR_ENCODER_RUNTIME), and
     with --alone without it (EBR_TEXT_BATCH_MAX=0: each text encoded alone).
Reports queries/s, p50/p99 latency and the ratio to the encoder's batched rate. The clients
share the 2 cores with the server. Writes text.json and text.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "scifact"


def _index(work: Path) -> Path:
    from ebr.index.writer import write_index
    from ebr.io.beir import load_ids
    from ebr.io.encoder import MINILM
    from ebr.metric import Metric
    from ebr.spec import BuildParams, IndexSpec

    out = work / "scifact-text"
    if not (out / "manifest.json").exists():
        x = np.load(DATA / "embeddings" / "corpus_all-MiniLM-L6-v2.f32.npy")
        write_index(out, x, BuildParams(spec=IndexSpec.parse("IVF64,PQ48"), metric=Metric.IP,
                                        normalize=True), load_ids(DATA / "corpus.jsonl"),
                    encoder=dict(MINILM), overwrite=True)
    return out


def _load_wrk(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    from benchkit import wrk_loop

    from ebr.client import Query

    bodies = [json.dumps(Query(text=t, k=10).body()) for t in texts]
    return wrk_loop(url, "/search", bodies, clients, seconds, digits=1)


async def _load(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    from benchkit import closed_loop

    async def send(c: Any, j: int) -> object:
        return await c.search(text=texts[j % len(texts)], k=10)

    return await closed_loop(url, clients, seconds, send, digits=1)


def _serve(index: Path, port: int, workers: int, batch: int, runtime: str, lanes: int):
    from ebr.client import Client

    env = {**os.environ, "EBR_INDEX_DIR": str(index), "EBR_PORT": str(port),
           "EBR_TEXT_BATCH_MAX": str(batch), "EBR_MAX_INFLIGHT_PER_CLIENT": "0",
           "EBR_ENCODER_RUNTIME": runtime, "EBR_ENCODER_LANES": str(lanes)}
    server = subprocess.Popen([sys.executable, "-m", "service", "--workers", str(workers)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    with Client(url) as probe:
        for _ in range(240):
            if probe.ready():
                return server, url
            time.sleep(0.5)
    server.kill()
    raise SystemExit("server did not become ready")


# the in-process configurations whose best rate is the ceiling: (texts per forward pass,
# threads per call, calls at once); ONNX Runtime also as 2 single-threaded calls at once
CONFIGS = [(64, 2, 1), (16, 2, 1), (8, 2, 1), (16, 1, 2), (8, 1, 2)]


def _encoder_rows(texts: list[str], runtime: str) -> list[dict]:
    """In-process rates of one runtime, and SciFact nDCG@10 of exact search over the
    precomputed (torch) corpus vectors with the test queries encoded by this runtime."""
    from concurrent.futures import ThreadPoolExecutor

    from ebr.eval.metrics import label_metrics
    from ebr.io.beir import load_ids, load_qrels
    from ebr.io.encoder import TextEncoder

    rows = []
    enc = None
    for batch, threads, lanes in CONFIGS:
        if runtime == "torch" and lanes > 1:
            continue  # torch's calls run one at a time (TextEncoder serializes them)
        enc = TextEncoder(batch_size=batch, runtime=runtime, threads=threads).load()
        if runtime == "torch":
            import torch

            torch.set_num_threads(threads)
        enc.encode(texts[:64])  # warm
        part = 640 // lanes
        with ThreadPoolExecutor(lanes) as pool:
            t0 = time.perf_counter()
            list(pool.map(enc.encode, [texts[i * part:(i + 1) * part] for i in range(lanes)]))
            rate = 640 / (time.perf_counter() - t0)
        rows.append({"mode": f"in-process, 640 texts in {lanes} call(s) at once, "
                             f"{threads} thread(s) each, passes of {batch}",
                     "qps": round(rate, 1)})
    if enc is None:
        raise SystemExit("no in-process configuration ran")
    t0 = time.perf_counter()
    for t in texts[:64]:
        enc.encode([t])
    rows.append({"mode": "in-process, one text per call (2 threads)" if runtime == "torch" else
                 "in-process, one text per call (1 thread)",
                 "qps": round(64 / (time.perf_counter() - t0), 1)})
    qrels = load_qrels(DATA / "qrels" / "test.tsv")
    qids = list(qrels)
    by_id = {json.loads(line)["_id"]: json.loads(line)["text"] for line in
             (DATA / "queries.jsonl").read_text().splitlines() if line.strip()}
    xq = enc.encode([by_id[q] for q in qids])
    xb = np.load(DATA / "embeddings" / "corpus_all-MiniLM-L6-v2.f32.npy")
    ids = load_ids(DATA / "corpus.jsonl")
    top = np.argsort(-(xq @ xb.T), axis=1)[:, :10]
    ndcg = label_metrics([[ids[i] for i in row] for row in top], [qrels[q] for q in qids])
    return [{"runtime": runtime, "clients": "-", "ndcg@10_exact": round(ndcg["ndcg@10"], 4),
             **r} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 32])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--runtimes", nargs="+", default=["torch", "onnx", "onnx-int8"],
                    choices=["torch", "onnx", "onnx-int8"])
    ap.add_argument("--alone", action="store_true",
                    help="also serve each text alone (EBR_TEXT_BATCH_MAX=0), per runtime")
    ap.add_argument("--load-generators", nargs="+", choices=["wrk", "python"],
                    default=["wrk", "python"] if shutil.which("wrk") else ["python"],
                    help="who sends the requests: wrk (C, ~0.05 ms of CPU per request) and/or "
                         "ebr.client.AsyncClient (~2.5 ms); both share the cores with the server")
    ap.add_argument("--lanes", type=int, nargs="+", default=[1],
                    help="EBR_ENCODER_LANES of the server, one pass each")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-text"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--name", default="text")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    index = _index(work)
    texts = [json.loads(line)["text"] for line in
             (DATA / "queries.jsonl").read_text().splitlines() if line.strip()]
    rows: list[dict] = []
    ctx = get_context("spawn")

    def in_process(runtime: str) -> list[dict]:
        with ctx.Pool(1) as pool:  # a fresh process: torch's threads stay its own
            return pool.apply(_encoder_rows, (texts, runtime))

    for runtime in args.runtimes:
        # the encoder's own rate measured right before and right after this runtime's HTTP
        # rows (the machine is shared: rates drift), the higher of the two as the ceiling
        before = in_process(runtime)
        rows += before
        print(before, flush=True)
        http: list[dict] = []
        # torch runs one call at a time whatever the setting: one pass for it
        lanes_list = dict.fromkeys(1 if runtime == "torch" else x for x in args.lanes)
        modes = [(64, lanes, f"HTTP /search text, TextBatcher (64), {lanes} lane(s)")
                 for lanes in lanes_list]
        if args.alone:
            modes.append((0, 1, "HTTP /search text, each text alone"))
        for batch, lanes, name in modes:
            server, url = _serve(index, args.port, args.workers, batch, runtime, lanes)
            try:
                asyncio.run(_load(url, texts, 4, 3.0))  # warm
                for gen in args.load_generators:
                    for clients in args.clients:
                        r = (_load_wrk(url, texts, clients, args.seconds) if gen == "wrk" else
                             asyncio.run(_load(url, texts, clients, args.seconds)))
                        http.append({"runtime": runtime, "mode": name, "load": gen,
                                     "clients": clients, **r})
                        print(http[-1], flush=True)
            finally:
                server.terminate()
                server.wait(30)
        after = in_process(runtime)
        for b, a in zip(before, after, strict=True):
            b["qps_after"] = a["qps"]
        ceiling = max(r[k] for r in before for k in ("qps", "qps_after")
                      if "one text" not in r["mode"])
        for r in http:
            r["vs_encoder_batched"] = round(r["qps"] / ceiling, 3)
        rows += http
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"workers": args.workers, "seconds": args.seconds, "cpus": os.cpu_count(),
            "index": "SciFact MiniLM IVF64,PQ48 (k 10, server defaults nprobe 16, C 100)",
            "ndcg": "exact search, SciFact test queries encoded by the runtime, corpus vectors "
                    "precomputed by torch"}
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    cols = ["runtime", "mode", "load", "clients", "qps", "qps_after", "p50_ms", "p99_ms", "errors",
            "vs_encoder_batched", "ndcg@10_exact"]
    cmd = " ".join(["python bench/bench_text.py", *sys.argv[1:]])
    md = ["# Text queries over HTTP against the encoder's batched rate, per encoder runtime", "",
          f"`{cmd}` ({args.workers} worker(s), {args.seconds:g} s per row, "
          f"{os.cpu_count()} cores shared by clients and server). vs_encoder_batched: HTTP "
          "queries/s over the same runtime's in-process batched rate, the higher of the "
          "two measured right before (qps) and right after (qps_after) its HTTP rows. "
          "ndcg@10_exact: "
          f"{meta['ndcg']}.", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))  # noqa: T201 - a script's output


if __name__ == "__main__":
    main()
