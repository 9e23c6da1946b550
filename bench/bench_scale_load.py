"""Latency under load at scale (issue 22, item 4): --clients x --seconds over HTTP against a
large index (bench_scale.py's 10M), right after a cold start and then warm.

    python bench/bench_scale_load.py --index /work/scale/index-minilm-kmeans-10000000
        --queries /work/scale/data-minilm-10000000/queries_test.npy --nprobe 16 --candidates 800
        [--clients 32] [--seconds 60] [--workers 2] [--out bench/results] [--name scale_load]

Cold start: the dense store is evicted from the page cache (posix_fadvise DONTNEED; no process
maps it), then `python -m service` starts (checksums off: sizes are checked) and the load
begins as soon as /readyz answers. Warm: the same load again on the same server. Each client
is an ebr.client.AsyncClient with one connection sending POST /search with one query vector
(k 10, the given nprobe and candidates), cycling over the test queries. Reports queries/s,
p50/p99 latency, errors, the share of the dense store in the page cache after each phase, and
the server's private memory (RssAnon) right after it became ready and after each phase: the
largest worker's and all its processes' together.
The clients share the machine's cores with the server. Writes <name>.json and <name>.md.
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
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import drop_cache, resident_fraction  # noqa: E402
from benchkit import closed_loop, proc_memory  # noqa: E402


async def _load(url: str, xq: np.ndarray, clients: int, seconds: float,
                params: dict[str, int]) -> dict[str, float]:
    async def send(c: Any, j: int) -> object:
        return await c.search(vector=xq[j % len(xq)].tolist(), k=10, **params)

    return await closed_loop(url, clients, seconds, send)


def _rss_anon_mb(root: int) -> tuple[float, float]:
    """(the largest, the sum) of RssAnon in MB over ``root`` and its descendants."""
    pids, seen = [root], []
    while pids:
        pid = pids.pop()
        try:
            anon = proc_memory(pid)["RssAnon"]
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except (OSError, KeyError):  # a process that ended meanwhile
            continue
        seen.append(anon / 2**20)
    return (round(max(seen), 1), round(sum(seen), 1)) if seen else (0.0, 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries", required=True, help=".npy of query vectors")
    ap.add_argument("--nprobe", type=int, required=True)
    ap.add_argument("--candidates", type=int, required=True)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--port", type=int, default=8797)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--name", default="scale_load")
    args = ap.parse_args()
    from ebr.client import Client

    index = Path(args.index)
    xq = np.load(args.queries).astype(np.float32)
    drop_cache(index)
    rows = [{"phase": "before start", "dense_resident": round(resident_fraction(index), 4)}]
    env = {**os.environ, "EBR_INDEX_DIR": str(index), "EBR_PORT": str(args.port),
           "EBR_VERIFY_CHECKSUMS": "false", "EBR_MAX_INFLIGHT_PER_CLIENT": "0",
           "EBR_TEXT_ENCODER": "off"}
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "service", "--workers", str(args.workers)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    try:
        with Client(url) as probe:
            while not probe.ready():
                if server.poll() is not None or time.perf_counter() - t0 > 600:
                    raise SystemExit("server did not become ready")
                time.sleep(0.2)
        ready_s = time.perf_counter() - t0
        top, total = _rss_anon_mb(server.pid)
        rows.append({"phase": "ready", "server_rss_anon_max_mb": top,
                     "server_rss_anon_total_mb": total})
        params = {"nprobe": args.nprobe, "candidates": args.candidates}
        for phase in ("cold start", "warm"):
            r = asyncio.run(_load(url, xq, args.clients, args.seconds, params))
            top, total = _rss_anon_mb(server.pid)
            rows.append({"phase": phase, **r,
                         "dense_resident": round(resident_fraction(index), 4),
                         "server_rss_anon_max_mb": top, "server_rss_anon_total_mb": total})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(60)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = " ".join(["python bench/bench_scale_load.py", *sys.argv[1:]])
    meta = {"command": cmd, "ready_s": round(ready_s, 1), "cpus": os.cpu_count(),
            "workers": args.workers, "clients": args.clients, "seconds": args.seconds}
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    cols = ["phase", "queries", "qps", "p50_ms", "p99_ms", "errors", "dense_resident",
            "server_rss_anon_max_mb", "server_rss_anon_total_mb"]
    md = ["# Latency under load at scale", "",
          f"`{cmd}` ({os.cpu_count()} cores shared by clients and server; {args.workers} "
          f"workers; server ready {meta['ready_s']} s after start, dense store evicted "
          "before it)", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))  # noqa: T201 - a script's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
