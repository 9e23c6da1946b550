"""Text queries over HTTP against the encoder's own batched rate (issue 22, item 3).

    python bench/bench_text.py [--seconds 20] [--clients 1 4 8 32] [--workers 1]
                               [--out bench/results]

Builds (once) an index of SciFact's precomputed MiniLM corpus vectors that records the MiniLM
encoder (so the service takes text), then, in one run:
  1. in-process: the same MiniLM encodes all the query texts in one call (batch 64): the
     encoder's batched rate, the ceiling of any server;
  2. HTTP POST /search with {"text": ...}: --clients concurrent ebr.client.AsyncClient
     connections for --seconds each, with the TextBatcher (concurrent texts encoded in one
     call, EBR_TEXT_BATCH_MAX=64) and without it (EBR_TEXT_BATCH_MAX=0: each text encoded
     alone, as before).
Reports queries/s, p50/p99 latency and the ratio to the encoder's batched rate. The clients
share the 2 cores with the server. Writes text.json and text.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


async def _load(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    from ebr.client import AsyncClient
    from ebr.errors import EbrError

    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    async with AsyncClient(url, timeout=60, retries=0, max_connections=clients) as c:

        async def worker(i: int) -> None:
            nonlocal errors
            j = i
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await c.search(text=texts[j % len(texts)], k=10)
                except EbrError:
                    errors += 1
                lat.append(time.perf_counter() - t0)
                j += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        dt = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return {"queries": len(lat), "errors": errors, "qps": round(len(lat) / dt, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def _serve(index: Path, port: int, workers: int, batch: int):
    from ebr.client import Client

    env = {**os.environ, "EBR_INDEX_DIR": str(index), "EBR_PORT": str(port),
           "EBR_TEXT_BATCH_MAX": str(batch), "EBR_MAX_INFLIGHT_PER_CLIENT": "0"}
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 32])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-text"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    index = _index(work)
    texts = [json.loads(line)["text"] for line in
             (DATA / "queries.jsonl").read_text().splitlines() if line.strip()]
    from ebr.io.encoder import TextEncoder

    enc = TextEncoder(batch_size=64).load()
    enc.encode(texts[:64])  # warm
    t0 = time.perf_counter()
    enc.encode(texts[:640])
    batched = 640 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for t in texts[:64]:
        enc.encode([t])
    alone = 64 / (time.perf_counter() - t0)
    del enc
    rows = [{"mode": "in-process MiniLM, 640 texts in one call (batch 64)", "clients": "-",
             "qps": round(batched, 1)},
            {"mode": "in-process MiniLM, one text per call", "clients": "-",
             "qps": round(alone, 1)}]
    print(rows, flush=True)
    for batch, name in ((64, "HTTP /search text, TextBatcher (64)"),
                        (0, "HTTP /search text, each text alone")):
        server, url = _serve(index, args.port, args.workers, batch)
        try:
            asyncio.run(_load(url, texts, 4, 3.0))  # warm
            for clients in args.clients:
                r = asyncio.run(_load(url, texts, clients, args.seconds))
                rows.append({"mode": name, "clients": clients, **r,
                             "vs_encoder_batched": round(r["qps"] / batched, 3)})
                print(rows[-1], flush=True)
        finally:
            server.terminate()
            server.wait(30)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"workers": args.workers, "seconds": args.seconds, "cpus": os.cpu_count(),
            "index": "SciFact MiniLM IVF64,PQ48 (k 10, server defaults nprobe 16, C 100)"}
    (out / "text.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    cols = ["mode", "clients", "qps", "p50_ms", "p99_ms", "errors", "vs_encoder_batched"]
    md = ["# Text queries over HTTP against the encoder's batched rate", "",
          f"`python bench/bench_text.py` ({args.workers} worker(s), {args.seconds:g} s per "
          f"row, {os.cpu_count()} cores shared by clients and server)", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out / "text.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))  # noqa: T201 - a script's output


if __name__ == "__main__":
    main()
