"""How to read re-rank rows from disk (issue 5): memmap gather vs sorted pread, warm vs cold.

    python bench/bench_rerank_io.py [--index runs/bench_load/index-200000] [--queries 500]

For each query the real candidate rows (coarse top-200, nprobe 32) are read from the dense store
and scored, one query at a time:
  mmap            numpy fancy-index on the read-only mapping (what ebr does)
  mmap+random     the same after madvise(MADV_RANDOM) (no read-ahead around each row)
  pread           os.pread per sorted row on one file descriptor
  pread-pool      the sorted rows split over a 4-thread pool of pread calls
Cold: before every query the dense file's pages are dropped with
posix_fadvise(POSIX_FADV_DONTNEED) and the mapping is re-created (mapped pages cannot be
dropped). Warm: the same queries again with the file in the page cache. Writes rerank_io.json/.md.
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADER = 8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default=str(ROOT / "runs" / "bench_load" / "index-200000"))
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    from ebr.data.synthetic import SyntheticConfig, generate
    from ebr.index.reader import open_index
    from ebr.search.searcher import Searcher

    oi = open_index(args.index, verify_checksums=False)
    s = Searcher(oi)
    ds = generate(SyntheticConfig(n=2000, d=oi.dim, nq=args.queries, nq_train=1, n_clusters=16))
    cand, _ = s.coarse(ds.xq, 200, 32)
    path = oi.path / "dense.fbin"
    n, d = oi.ntotal, oi.dim
    row_bytes = d * 4
    fd = os.open(path, os.O_RDONLY)
    pool = ThreadPoolExecutor(4)

    def mapping(random: bool) -> tuple[mmap.mmap, np.ndarray]:
        mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        if random:
            mm.madvise(mmap.MADV_RANDOM)
        return mm, np.frombuffer(mm, dtype=np.float32, count=n * d, offset=HEADER).reshape(n, d)

    def read_mmap(rows: np.ndarray, arr: np.ndarray) -> np.ndarray:
        return np.asarray(arr[rows])

    def pread_rows(rows: np.ndarray) -> np.ndarray:
        buf = bytearray(len(rows) * row_bytes)
        view = memoryview(buf)
        for i, r in enumerate(rows.tolist()):
            view[i * row_bytes:(i + 1) * row_bytes] = os.pread(fd, row_bytes, HEADER + r * row_bytes)
        return np.frombuffer(buf, dtype=np.float32).reshape(len(rows), d)

    def pread_pool(rows: np.ndarray) -> np.ndarray:
        parts = np.array_split(rows, 4)
        return np.concatenate(list(pool.map(pread_rows, parts)))

    def run(method: str, cold: bool) -> dict[str, object]:
        lat = []
        mm, arr = mapping(method == "mmap+random")
        for i in range(len(cand)):
            rows = np.unique(cand[i][cand[i] >= 0])
            if cold:
                del arr
                mm.close()
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                mm, arr = mapping(method == "mmap+random")
            t0 = time.perf_counter()
            if method.startswith("mmap"):
                x = read_mmap(rows, arr)
            elif method == "pread":
                x = pread_rows(rows)
            else:
                x = pread_pool(rows)
            scores = x @ ds.xq[i]
            lat.append(time.perf_counter() - t0)
            assert scores.shape == (len(rows),)
        del arr
        mm.close()
        a = np.asarray(lat) * 1e3
        return {"method": method, "cache": "cold" if cold else "warm",
                "p50_ms": round(float(np.percentile(a, 50)), 3),
                "p99_ms": round(float(np.percentile(a, 99)), 3),
                "mean_ms": round(float(a.mean()), 3)}

    # correctness: every method returns the same rows
    rows = np.unique(cand[0][cand[0] >= 0])
    mm, arr = mapping(False)
    ref = read_mmap(rows, arr)
    assert np.array_equal(ref, pread_rows(rows)) and np.array_equal(ref, pread_pool(rows))
    del arr
    mm.close()
    results = []
    for cold in (True, False):
        for method in ("mmap", "mmap+random", "pread", "pread-pool"):
            if not cold:
                run(method, False)  # warm-up pass
            results.append(run(method, cold))
            print(results[-1], flush=True)
    out = Path(args.out)
    meta = {"index": str(oi.path), "ntotal": n, "dim": d, "rows_per_query": 200,
            "queries": len(cand), "dense_bytes": os.path.getsize(path)}
    from ebr.eval.report import write_report

    title = "Re-rank row reads: mmap vs pread, cold vs warm page cache"
    paths = write_report(out, "rerank_io", {"title": title, **meta}, results, plot=False,
                         columns=list(results[0]))
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
