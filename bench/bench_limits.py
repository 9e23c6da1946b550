"""Memory under the worst request the limits allow (issue 16, item 2).

    python bench/bench_limits.py [--n 200000] [--dim 128] [--concurrent 8] [--out bench/results]

Builds a synthetic index, serves it (`python -m service`, one worker, default limits) and sends,
each --concurrent times at once from as many clients:
  - the request the attacker used: 64 searches, k 1000, with_vector, exact (refused: 413);
  - the worst allowed batch: 256 searches whose k sum to EBR_MAX_HITS_PER_REQUEST, candidates to
    EBR_MAX_CANDIDATES_PER_REQUEST and returned vectors to EBR_MAX_VECTORS_PER_REQUEST;
  - the worst allowed exact batch: EBR_MAX_EXACT_PER_REQUEST exact searches, k summing to the
    hits limit.
Reads the worker's RssAnon / RssFile (sampled every 5 ms) and VmHWM from /proc, and the reply
sizes. RssFile is the mapped index (page cache shared with the OS); RssAnon is what a request
costs. Writes limits.json and limits.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from benchkit import proc_memory  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    import httpx
    from helpers import served

    from ebr.data.synthetic import SyntheticConfig, generate
    from ebr.index.writer import write_index
    from ebr.spec import BuildParams, IndexSpec
    from service.settings import Settings

    limits = Settings(index_dir="-")
    work = Path(tempfile.mkdtemp(prefix="ebr-limits-"))
    ds = generate(SyntheticConfig(n=args.n, d=args.dim, nq=256, nq_train=8, seed=5))
    write_index(work / "idx", ds.xb, BuildParams(spec=IndexSpec.parse("IVF1024,PQ16"),
                                                 kmeans_niter=10, train_size=100_000))
    q = [x.tolist() for x in ds.xq]
    b = limits.max_batch
    k = limits.max_hits_per_request // b
    cand = limits.max_candidates_per_request // b
    vec_searches = limits.max_vectors_per_request // k
    worst = {"searches": [{"vector": q[i], "k": k, "params": {"candidates": cand, "nprobe": 64},
                           "with_vector": i < vec_searches} for i in range(b)]}
    ne = limits.max_exact_per_request
    ke = min(limits.max_k, limits.max_hits_per_request // ne)
    exact = {"searches": [{"vector": q[i], "k": ke,
                           "params": {"exact": True}} for i in range(ne)]}
    attack = {"searches": [{"vector": q[i], "k": 1000, "with_vector": True,
                            "params": {"exact": True}} for i in range(64)]}
    rows = []
    with served(work / "idx", work / "server.log", workers=1) as (url, server):
        pid = server.pid
        with httpx.Client(timeout=300) as c:  # warm: the mapped lists and one search
            c.post(url + "/search", json={"vector": q[0], "k": 10})
        base = proc_memory(pid)
        for name, body in (("attacker's request (64 x k 1000, with_vector, exact)", attack),
                           (f"worst allowed batch ({b} x k {k}, {cand} candidates each, "
                            f"{vec_searches * k} vectors)", worst),
                           (f"worst allowed exact ({ne} x k {ke})",
                            exact)):
            peak = dict(proc_memory(pid))
            stop = threading.Event()

            def sample(stop: threading.Event = stop, peak: dict[str, int] = peak) -> None:
                while not stop.is_set():
                    for key, v in proc_memory(pid).items():
                        peak[key] = max(peak[key], v)
                    time.sleep(0.005)

            t = threading.Thread(target=sample, daemon=True)
            t.start()
            payload = json.dumps(body).encode()
            t0 = time.perf_counter()

            def send(_: int, payload: bytes = payload) -> tuple[int, int]:
                with httpx.Client(timeout=300) as c:
                    r = c.post(url + "/search/batch", content=payload,
                               headers={"content-type": "application/json"})
                    return r.status_code, len(r.content)

            with ThreadPoolExecutor(args.concurrent) as pool:
                replies = list(pool.map(send, range(args.concurrent)))
            seconds = time.perf_counter() - t0
            stop.set()
            t.join()
            rows.append({"request": name, "request_bytes": len(payload),
                         "statuses": sorted({s for s, _ in replies}),
                         "reply_bytes": max(n for _, n in replies), "concurrent": args.concurrent,
                         "seconds": round(seconds, 2),
                         "peak_rss_anon_mb": round(peak["RssAnon"] / 2**20, 1),
                         "peak_rss_anon_over_idle_mb": round(
                             (peak["RssAnon"] - base["RssAnon"]) / 2**20, 1),
                         "peak_rss_file_mb": round(peak["RssFile"] / 2**20, 1),
                         "vm_hwm_mb": round(peak["VmHWM"] / 2**20, 1)})
            print(rows[-1], flush=True)
        alive = server.poll() is None
    result = {"n": args.n, "dim": args.dim, "dense_mb": round(args.n * args.dim * 4 / 2**20, 1),
              "limits": {k: getattr(limits, k) for k in (
                  "max_batch", "max_k", "max_hits_per_request", "max_candidates_per_request",
                  "max_vectors_per_request", "max_exact_per_request", "max_body_bytes",
                  "max_inflight_per_client")},
              "idle_rss_anon_mb": round(base["RssAnon"] / 2**20, 1), "rows": rows,
              "server_alive": alive}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "limits.json").write_text(json.dumps(result, indent=2))
    lines = ["# Memory under the worst request the limits allow", "",
             f"`python bench/bench_limits.py --n {args.n} --dim {args.dim} --concurrent "
             f"{args.concurrent}`: synthetic {args.n} x {args.dim} (dense store "
             f"{result['dense_mb']} MB), IVF1024,PQ16, one worker, default limits "
             f"{result['limits']}; each request sent by {args.concurrent} clients at once. "
             f"Idle RssAnon {result['idle_rss_anon_mb']} MB.", "",
             "| request | body KB | replies | largest reply MB | peak RssAnon MB (over idle) "
             "| peak RssFile MB | VmHWM MB | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['request']} | {r['request_bytes'] / 1e3:.0f} | {r['statuses']} | "
                     f"{r['reply_bytes'] / 1e6:.2f} | {r['peak_rss_anon_mb']} "
                     f"(+{r['peak_rss_anon_over_idle_mb']}) | {r['peak_rss_file_mb']} | "
                     f"{r['vm_hwm_mb']} | {r['seconds']} |")
    (out / "limits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
