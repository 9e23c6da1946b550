"""Living indexes under writes (issue 18), on the built-in synthetic set.

    python bench/bench_mutations.py [--n 200000] [--new 100000] [--dim 128]
                                    [--spec IVF1024,PQ16] [--seconds 15] [--out bench/results]

One run, side by side:
  1. build the base (n documents, codebooks trained) -- the "full build" time;
  2. serve it (`python -m service`, one worker) and upsert --new documents over HTTP in batches
     of 500 (vectors given): documents/s;
  3. recall@10 against exact search over all n + new documents, at the serving nprobe and
     candidates: the living index (base + delta), then after `index_build compact`, and a full
     rebuild of all documents with the same codebooks (goal: within 0.01);
  4. search QPS of 8 clients, read-only, then with 10% of the requests writes (goal >= 0.8x);
  5. write -> visible delay across the 2 workers of a second server (every search after the
     acknowledgement, on either worker, must return the document);
  6. delete 30% of the documents over HTTP, then 10,000 queries: deleted ids returned (goal 0);
  7. compaction time and peak RSS (a subprocess) against a full build of the same documents
     with training (goal <= 0.3x).
Writes mutations.json and mutations.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

KEY = "bench-write-key-0123456789"


def _recall(searcher, xq: np.ndarray, truth: list[set]) -> float:
    from ebr.spec import SearchParams

    res, _ = searcher.search(xq, SearchParams())
    got = [set(searcher.external_ids(r)) for r in res.ids]
    return float(np.mean([len(g & t) / 10 for g, t in zip(got, truth, strict=True)]))


def _live_searcher(index: Path):
    from ebr.index.live import open_live
    from ebr.index.reader import open_index
    from ebr.search.live import LiveSearcher

    return LiveSearcher(open_live(open_index(index, verify_checksums=False), index,
                                  writable=False))


def _truth(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray) -> list[set]:
    from ebr.metric import Metric
    from ebr.search.exact import exact_search

    res = exact_search(xq, xb, 10, Metric.IP)
    return [set(ids[r].tolist()) for r in res.ids]


def _run_timed(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MB) of a subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return seconds, usage.ru_maxrss / 1024


def _load(url: str, q: list, seconds: float, write_share: float, next_id: list[int],
          pool_vecs: np.ndarray, clients: int = 8) -> dict[str, float]:
    """``clients`` threads search back to back; with ``write_share`` > 0, three more threads
    write one document at a time, paced so that writes are that share of all requests (one
    writer, waiting for each acknowledgement, cannot keep up). The search concurrency is the
    same with and without writes, and every body is encoded before the clock starts (the
    clients share the cores with the server)."""
    from ebr.client import Client, Document
    from ebr.errors import EbrError

    rng = np.random.default_rng(0)
    searches = [q[int(i)] for i in rng.integers(len(q), size=4096)]
    writes = []
    for _ in range(6000):  # one document per write: each operation of the mix is one record
        start = next_id[0]
        next_id[0] += 1
        writes.append(Document(start, vector=pool_vecs[start % len(pool_vecs)].tolist()))
    stop = time.perf_counter() + seconds
    counts = {"search": 0, "write": 0, "errors": 0}
    lat: dict[str, list[float]] = {"search": [], "write": []}
    lock = threading.Lock()

    def searcher(c: int) -> None:
        with Client(url, timeout=60, retries=0) as h:  # errors counted, not retried
            i = c
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    h.search(searches[i % len(searches)], k=10)
                    kind = "search"
                except EbrError:
                    kind = "errors"
                i += clients
                with lock:
                    counts[kind] += 1
                    lat["search"].append(time.perf_counter() - t0)

    def writer(w: int) -> None:
        with Client(url, api_key=KEY, timeout=60, retries=0) as h:
            for doc in writes[w::3]:
                while time.perf_counter() < stop and \
                        counts["write"] >= write_share * (counts["search"] + counts["write"]):
                    time.sleep(0.02)  # coarse: a busy wait here would take the clients' GIL
                if time.perf_counter() >= stop:
                    return
                t0 = time.perf_counter()
                try:
                    h.upsert([doc])
                    kind = "write"
                except EbrError:
                    kind = "errors"
                with lock:
                    counts[kind] += 1
                    lat["write"].append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=searcher, args=(c,)) for c in range(clients)]
    if write_share:
        threads += [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"search_qps": counts["search"] / wall, "write_rps": counts["write"] / wall,
            "errors": counts["errors"], "seconds": wall,
            **{f"{k}_p50_ms": round(1e3 * float(np.median(v)), 2) for k, v in lat.items() if v},
            **{f"{k}_p99_ms": round(1e3 * float(np.quantile(v, 0.99)), 2)
               for k, v in lat.items() if v}}


def _qps_pair(url: str, q: list, seconds: float, pool: np.ndarray,
              first_id: int = 10**8) -> dict:
    """Read-only and 10%-writes phases, twice, interleaved (noise on a shared 2-core machine
    moves whole phases); the ratio of the summed search rates. The documents the writes added
    are deleted again afterwards, so later recall figures are over the same corpus."""
    from ebr.client import Client

    next_id = [first_id]
    _load(url, q, 3, 0.0, next_id, pool)  # warm
    runs = {0.0: [], 0.1: []}
    for share in (0.0, 0.1, 0.0, 0.1):
        runs[share].append(_load(url, q, seconds, share, next_id, pool))
    ro = sum(r["search_qps"] for r in runs[0.0]) / 2
    mixed = sum(r["search_qps"] for r in runs[0.1]) / 2
    with Client(url, api_key=KEY, timeout=120, batch_size=1000) as h:
        h.delete(list(range(first_id, next_id[0])))
    writes = sum(r["write_rps"] for r in runs[0.1]) / 2
    return {"qps_read_only": round(ro, 1), "qps_with_10pct_writes": round(mixed, 1),
            "writes_per_s_in_mix": round(writes, 1),
            "write_share": round(writes / (writes + mixed), 3),
            "qps_ratio": round(mixed / ro, 3),
            "phases": {str(k): [round(r["search_qps"], 1) for r in v] for k, v in runs.items()},
            "errors": sum(r["errors"] for v in runs.values() for r in v),
            "latency_read_only": {k: v for k, v in runs[0.0][-1].items() if k.endswith("_ms")},
            "latency_mixed": {k: v for k, v in runs[0.1][-1].items() if k.endswith("_ms")}}


def _visibility(url: str, trials: int, dim: int) -> dict[str, float]:
    """Write one document, then search for it from fresh connections (so either worker may
    answer): the share of searches that miss it, and the ack -> first-visible delay."""
    from ebr.client import Client, Document

    rng = np.random.default_rng(9)
    misses, delays, searches = 0, [], 0
    for t in range(trials):
        v = rng.standard_normal(dim)
        v = (v / np.linalg.norm(v)).tolist()
        doc_id = 10**9 + t
        with Client(url, api_key=KEY, timeout=30) as h:
            h.upsert([Document(doc_id, vector=v)])
        t_ack = time.perf_counter()
        first = None
        for _ in range(6):
            with Client(url, timeout=30) as h:  # a new connection: any worker
                hits = h.search(v, k=1)
            searches += 1
            if hits.ids[0] == doc_id:
                first = first or time.perf_counter() - t_ack
            else:
                misses += 1
        delays.append(first if first is not None else float("inf"))
    return {"trials": trials, "searches": searches, "missed": misses,
            "max_delay_ms": round(1e3 * max(delays), 2),
            "median_delay_ms": round(1e3 * float(np.median(delays)), 2)}


def main() -> None:  # noqa: C901 - one benchmark, its steps in order
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--new", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--spec", default="IVF1024,PQ16")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    from helpers import served

    from ebr.client import Client, Document
    from ebr.data.synthetic import SyntheticConfig, generate
    from ebr.index.reader import open_index
    from ebr.index.segments import load_codebooks
    from ebr.index.writer import write_index
    from ebr.io.vecs import write_bin
    from ebr.search.searcher import Searcher
    from ebr.spec import BuildParams, IndexSpec

    work = Path(tempfile.mkdtemp(prefix="ebr-mutations-"))
    n_all = args.n + args.new
    ds = generate(SyntheticConfig(n=n_all, d=args.dim, nq=500, nq_train=8, seed=21))
    rng = np.random.default_rng(0)
    perm = rng.permutation(n_all)  # the new documents are a random share of the same corpus
    xb, ids = ds.xb[perm], perm.astype(np.int64)
    base_x, base_ids, new_x, new_ids = xb[:args.n], ids[:args.n], xb[args.n:], ids[args.n:]
    xq = ds.xq
    out: dict = {"n": args.n, "new": args.new, "dim": args.dim, "spec": args.spec}
    params = BuildParams(spec=IndexSpec.parse(args.spec), kmeans_niter=20, train_size=100_000)

    write_bin(work / "all.fbin", xb)
    np.savetxt(work / "all_ids.txt", ids, fmt="%d")
    t0 = time.perf_counter()
    write_index(work / "idx", base_x, params, base_ids)
    out["base_build_s"] = round(time.perf_counter() - t0, 2)
    print("base built", out, flush=True)

    # 2. upserts over HTTP
    q = [x.tolist() for x in xq]
    with served(work / "idx", work / "server.log", workers=1, write_keys=KEY,
                compact_delta_fraction="0", max_batch="1000") as (url, _):
        with Client(url, api_key=KEY, timeout=120, batch_size=500) as h:
            t0 = time.perf_counter()
            h.upsert(Document(int(i), vector=v) for i, v in zip(new_ids, new_x, strict=True))
            secs = time.perf_counter() - t0
        out["upsert_docs_per_s"] = round(args.new / secs, 1)
        out["upsert_seconds"] = round(secs, 2)
        print("upserted", out["upsert_docs_per_s"], "docs/s", flush=True)

        # 3. recall: living index
        truth = _truth(xb, ids, xq)
        live = _live_searcher(work / "idx")
        out["recall_live"] = _recall(live, xq, truth)
        live.live.close()

        # 4. QPS read-only vs 10% writes, one worker
        out["workers_1"] = _qps_pair(url, q, args.seconds, new_x)
        print("qps", out, flush=True)

    # 7 (part). compaction in a subprocess: time and peak RSS; then recall after it
    c_s, c_rss = _run_timed([sys.executable, "-m", "index_build", "--no-progress", "compact",
                             "--index", str(work / "idx"), "--no-verify"])
    out["compact_s"], out["compact_peak_rss_mb"] = round(c_s, 2), round(c_rss, 1)
    compacted = _live_searcher(work / "idx")
    out["recall_after_compaction"] = _recall(compacted, xq, truth)
    out["documents_after_compaction"] = compacted.ntotal
    compacted.live.close()
    # full rebuild with the same codebooks, and a full build with training (subprocess)
    same = load_codebooks(open_index(work / "idx", verify_checksums=False))
    write_index(work / "rebuilt", xb, params, ids, codebooks=same)
    out["recall_rebuild_same_codebooks"] = _recall(Searcher(open_index(work / "rebuilt")),
                                                   xq, truth)
    b_s, b_rss = _run_timed([sys.executable, "-m", "index_build", "--no-progress", "build",
                             "--input", str(work / "all.fbin"), "--ids",
                             str(work / "all_ids.txt"), "--out", str(work / "full"),
                             "--spec", args.spec, "--niter", "20", "--train-size", "100000"])
    out["full_build_s"], out["full_build_peak_rss_mb"] = round(b_s, 2), round(b_rss, 1)
    out["compact_over_full_build"] = round(c_s / b_s, 3)
    print("compaction", out, flush=True)

    # 4 again with 2 workers (one per core, the recommended setting); 5. visibility across
    # workers; 6. deletes
    with served(work / "idx", work / "server2.log", workers=2, write_keys=KEY,
                compact_delta_fraction="0", max_batch="1000") as (url, _):
        out["workers_2"] = _qps_pair(url, q, args.seconds, new_x, first_id=2 * 10**8)
        out["visibility"] = _visibility(url, 30, args.dim)
        to_delete = rng.choice(ids, size=int(0.3 * n_all), replace=False)
        with Client(url, api_key=KEY, timeout=120, batch_size=1000) as h:
            t0 = time.perf_counter()
            h.delete([int(i) for i in to_delete])
            out["delete_ids_per_s"] = round(len(to_delete) / (time.perf_counter() - t0), 1)
    searcher = _live_searcher(work / "idx")
    qs = generate(SyntheticConfig(n=2000, d=args.dim, nq=10_000, nq_train=8, seed=21)).xq
    from ebr.spec import SearchParams

    deleted = set(to_delete.tolist())
    returned_deleted = 0
    for a in range(0, len(qs), 1000):
        res, _ = searcher.search(qs[a:a + 1000], SearchParams())
        returned_deleted += sum(1 for i in searcher.external_ids(res.ids.ravel())
                                if i in deleted)
    out["deleted"] = len(deleted)
    out["queries_after_delete"] = len(qs)
    out["deleted_ids_returned"] = returned_deleted
    live_truth = [t - deleted for t in truth]
    out["recall_after_delete_vs_exact"] = float(np.mean([
        len(set(searcher.external_ids(r)) & t) / max(min(10, len(t)), 1)
        for r, t in zip(searcher.search(xq, SearchParams())[0].ids, live_truth, strict=True)]))
    searcher.live.close()
    _write(out, Path(args.out))


def _qps_lines(name: str, r: dict) -> list[str]:
    n = name[-1]
    lat = (r["latency_read_only"]["search_p50_ms"], r["latency_mixed"]["search_p50_ms"])
    return [f"| {n} worker(s): search QPS read-only | {r['qps_read_only']} | |",
            f"| {n} worker(s): search QPS, same 8 clients + writers making 10% of the requests "
            f"(1 document each) | {r['qps_with_10pct_writes']} ({r['writes_per_s_in_mix']} "
            f"writes/s: {100 * r['write_share']:.1f}% of requests) | |",
            f"| {n} worker(s): ratio (p50 search latency {lat[0]} -> {lat[1]} ms) | "
            f"{r['qps_ratio']} | >= 0.8 |"]


def _write(out: dict, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    (where / "mutations.json").write_text(json.dumps(out, indent=2))
    v = out["visibility"]
    md = [f"# Living index under writes: {out['n']:,} base + {out['new']:,} upserted, "
          f"{out['dim']}-d, {out['spec']}", "",
          "`python bench/bench_mutations.py` (one run; 8 search clients and the server share "
          "2 cores; each QPS figure is the mean of two phases, interleaved read-only / mixed)",
          "",
          "| measure | value | goal |", "|---|---|---|",
          f"| upsert over HTTP (batches of 500, vectors given) | {out['upsert_docs_per_s']:,} "
          "docs/s | |",
          *[line for w in ("workers_2", "workers_1") for line in _qps_lines(w, out[w])],
          f"| recall@10, base + delta (live) | {out['recall_live']:.4f} | |",
          f"| recall@10, after compaction | {out['recall_after_compaction']:.4f} | |",
          f"| recall@10, full rebuild, same codebooks | "
          f"{out['recall_rebuild_same_codebooks']:.4f} | live and compacted within 0.01 |",
          f"| compaction | {out['compact_s']} s, peak RSS {out['compact_peak_rss_mb']} MB | |",
          f"| full build with training | {out['full_build_s']} s, peak RSS "
          f"{out['full_build_peak_rss_mb']} MB | |",
          f"| compaction / full build | {out['compact_over_full_build']} | <= 0.3 |",
          f"| write -> visible, 2 workers ({v['trials']} writes, {v['searches']} searches) | "
          f"{v['missed']} missed, max {v['max_delay_ms']} ms to the first search | 0 missed |",
          f"| deleted {out['deleted']:,} (30%), then {out['queries_after_delete']:,} queries | "
          f"{out['deleted_ids_returned']} deleted ids returned | 0 |",
          f"| recall@10 after the deletes (vs exact over what is left) | "
          f"{out['recall_after_delete_vs_exact']:.4f} | |", ""]
    (where / "mutations.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
