"""Bounded load run on localhost (issue 5): the same queries in-process and over HTTP.

    python bench/bench_load.py [--n 200000] [--clients 32] [--seconds 60] [--out bench/results]

Builds (once) a synthetic 200k x 128 index, IVF1024,PQ16, then runs each mode for --seconds,
in --rounds turns (in-process, then each server configuration, then again), so that drift in
this machine's speed hits every mode alike; the HTTP/in-process ratio is taken within each
round and the median reported. The modes:
  1. in-process: --clients threads calling Searcher.search (k=10, C=200, nprobe=32)
  2. HTTP POST /search: --clients concurrent connections against `python -m service` started
     as a subprocess (--workers uvicorn processes sharing the mapped index, faiss 1 thread
     each); the load comes from wrk (C, 2 threads) when installed, else from
     ebr.client.AsyncClient (Python)
  3. HTTP POST /search/batch: the same with 16 (and 4) searches per request (one batched search)
  4. HTTP POST /search with adaptive micro-batching (--micro-batch: at most that many batched
     searches in flight per worker; concurrent requests with equal parameters queue meanwhile
     and share the next one). 0 is off: runs 1-3 are without it.
Reports QPS, p50/p99 latency and errors; the HTTP/in-process QPS ratio is the HTTP overhead.
The load generator shares the 2 cores with the server: that cost is part of the figure.
Writes load.json and load.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

K, C, NPROBE, BATCH = 10, 200, 32, 16


def _summary(name: str, lat: list[float], n_queries: int, seconds: float,
             errors: int) -> dict[str, object]:
    a = np.asarray(lat) * 1e3
    return {"mode": name, "requests": len(lat), "queries": n_queries, "errors": errors,
            "seconds": round(seconds, 1), "qps": round(n_queries / seconds, 1),
            "p50_ms": round(float(np.percentile(a, 50)), 2) if len(a) else None,
            "p99_ms": round(float(np.percentile(a, 99)), 2) if len(a) else None}


def in_process(index_dir: Path, xq: np.ndarray, clients: int, seconds: float) -> dict:
    import faiss

    from ebr.index.reader import open_index
    from ebr.search.searcher import Searcher
    from ebr.spec import SearchParams

    faiss.omp_set_num_threads(1)
    s = Searcher(open_index(index_dir))
    p = SearchParams(k=K, nprobe=NPROBE, candidates=C)
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker(i: int) -> None:
        local = []
        j = i
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            s.search(xq[j % len(xq)], p)
            local.append(time.perf_counter() - t0)
            j += clients
        with lock:
            lat.extend(local)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _summary("in-process Searcher.search", lat, len(lat), time.perf_counter() - t0, 0)


async def _http(url: str, bodies: list[dict], clients: int, seconds: float,
                per_request: int, name: str) -> dict:
    from ebr.client import AsyncClient
    from ebr.errors import EbrError

    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    async with AsyncClient(url, timeout=30, retries=0, max_connections=clients) as client:

        async def worker(i: int) -> None:
            nonlocal errors
            j = i
            while time.perf_counter() < stop:
                body = bodies[j % len(bodies)]
                t0 = time.perf_counter()
                try:
                    if per_request == 1:
                        await client.search_query(body)
                    else:
                        await client.search_batch(body["searches"])
                    ok = True
                except EbrError:
                    ok = False
                lat.append(time.perf_counter() - t0)
                errors += not ok
                j += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        dt = time.perf_counter() - t0
    return _summary(name, lat, len(lat) * per_request, dt, errors)


def _wrk(url: str, bodies: list[dict], path: str, clients: int, seconds: float,
         per_request: int, name: str, tmp: Path) -> dict:
    """Drive the server with wrk, rotating through ``bodies``; parse its report."""
    lua = ("local bodies = {\n" + ",\n".join("[==[" + json.dumps(b) + "]==]" for b in bodies)
           + "\n}\nlocal i = 0\nwrk.method = 'POST'\n"
           "wrk.headers['Content-Type'] = 'application/json'\n"
           "request = function()\n  i = i + 1\n"
           f"  return wrk.format(nil, '{path}', nil, bodies[(i % #bodies) + 1])\nend\n")
    script = tmp / f"load{per_request}.lua"
    script.write_text(lua)
    out = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{int(seconds)}s", "-s", str(script),
                          "--latency", url], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"mode": name, "requests": requests, "queries": requests * per_request,
            "errors": errors, "seconds": seconds, "qps": round(rps * per_request, 1),
            "p50_ms": ms("50"), "p99_ms": ms("99"), "client": "wrk"}


def _against_server(env: dict[str, str], args: argparse.Namespace,
                    runs: list[tuple[str, list[dict], int]], work: Path, mb: int
                    ) -> list[dict]:
    """Start `python -m service` with ``env``, run each (path, bodies, queries per request)."""
    rows = []
    server = subprocess.Popen([sys.executable, "-m", "service", "--workers", str(args.workers)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    try:
        from ebr.client import Client

        with Client(url) as probe:
            for _ in range(120):
                if probe.ready():
                    break
                time.sleep(0.5)
            else:
                raise SystemExit("server did not become ready")
        for path, bodies, per in runs:
            name = f"HTTP POST {path}" + (f" ({per}/request)" if per > 1 else "") + (
                f", micro-batching ({mb} in flight)" if mb else "")
            if shutil.which("wrk"):
                rows.append(_wrk(url, bodies, path, args.clients, args.seconds, per, name, work))
            else:
                rows.append(asyncio.run(_http(url, bodies, args.clients, args.seconds, per,
                                              name + " [ebr.client AsyncClient]")))
            print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(10)
    return rows


def _combine(per_round: list[dict], base_per_round: list[dict]) -> dict:
    """One row from a mode's rounds: QPS summed over rounds, p50 the median of the rounds',
    p99 the worst round's, and the QPS ratio to in-process taken round by round (median)."""
    ratios = [float(r["qps"]) / float(b["qps"]) for r, b in zip(per_round, base_per_round,
                                                                 strict=True)]
    seconds = sum(float(r["seconds"]) for r in per_round)
    queries = sum(int(r["queries"]) for r in per_round)
    return {"mode": per_round[0]["mode"], "requests": sum(int(r["requests"]) for r in per_round),
            "queries": queries, "errors": sum(int(r["errors"]) for r in per_round),
            "seconds": round(seconds, 1), "qps": round(queries / seconds, 1),
            "p50_ms": round(float(np.median([r["p50_ms"] for r in per_round])), 2),
            "p99_ms": round(max(float(r["p99_ms"]) for r in per_round), 2),
            "qps_vs_in_process": round(float(np.median(ratios)), 3),
            "ratio_per_round": [round(x, 3) for x in ratios]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60,
                    help="seconds per mode, split over --rounds")
    ap.add_argument("--rounds", type=int, default=3,
                    help="the modes run in turn this many times (drift in machine speed "
                    "hits every mode alike; ratios are taken within a round)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="uvicorn worker processes (they share the page cache of the index)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_load"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--micro-batch", type=int, nargs="+", default=[0, 2],
                    help="EBR_MICRO_BATCH_INFLIGHT values for the /search runs (0: off)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 4],
                    help="searches per /search/batch request (runs with micro-batching off)")
    args = ap.parse_args()
    from ebr.data.synthetic import SyntheticConfig, generate
    from ebr.index.writer import write_index
    from ebr.spec import BuildParams, IndexSpec

    work = Path(args.work)
    ds = generate(SyntheticConfig(n=args.n, d=128, nq=1000, nq_train=10, n_clusters=256))
    index_dir = work / f"index-{args.n}"
    if not (index_dir / "manifest.json").exists():
        write_index(index_dir, ds.xb, BuildParams(spec=IndexSpec.parse("IVF1024,PQ16")),
                    overwrite=True)
    params = {"nprobe": NPROBE, "candidates": C}
    single = [{"vector": q.tolist(), "k": K, "params": params} for q in ds.xq]
    each = argparse.Namespace(**{**vars(args), "seconds": args.seconds / args.rounds})
    rounds: list[list[dict]] = []
    for r in range(args.rounds):
        rows = [in_process(index_dir, ds.xq, args.clients, each.seconds)]
        print(f"round {r + 1}:", rows[-1], flush=True)
        for mb in args.micro_batch:
            env = {**os.environ, "EBR_INDEX_DIR": str(index_dir), "EBR_PORT": str(args.port),
                   "EBR_FAISS_THREADS": "1", "EBR_LOG_FORMAT": "text", "PYTHONPATH": str(ROOT),
                   "EBR_MICRO_BATCH_INFLIGHT": str(mb),
                   "EBR_MAX_INFLIGHT_PER_CLIENT": "0"}  # every connection is one client here
            runs = [("/search", single[:256], 1)] + (
                [("/search/batch", [{"searches": single[i:i + b]}
                                    for i in range(0, len(single), b)], b)
                 for b in args.batch_sizes] if mb == 0 else [])
            rows += _against_server(env, each, runs, work, mb)
        rounds.append(rows)
    rows = [_combine([rnd[i] for rnd in rounds], [rnd[0] for rnd in rounds])
            for i in range(len(rounds[0]))]
    meta = {"n": args.n, "d": 128, "spec": "IVF1024,PQ16", "k": K, "candidates": C,
            "nprobe": NPROBE, "clients": args.clients, "seconds_each": args.seconds,
            "rounds": args.rounds, "uvicorn_workers": args.workers,
            "cpu_count": os.cpu_count()}
    out = Path(args.out)
    from ebr.eval.report import write_report

    paths = write_report(out, "load", {"title": "Load run on localhost", **meta}, rows, plot=False,
                         columns=list(rows[0]))
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
