"""Index files changed under a live, loaded server (issue 16): it never dies, every reply is
200 or 503, and it serves again as soon as a whole build is there.

    python bench/bench_faults.py [--n 50000] [--dim 64] [--workers 2] [--clients 8] [--out bench/results]

Builds a synthetic index, serves it with `python -m service --workers N` (EBR_INDEX_DIR is a
symlink, as in a deployment), keeps --clients threads searching over fresh and kept-alive
connections, and runs the faults one after another, each followed by a repair:

  truncate dense      os.truncate(dense.fbin, 1 MB)               repair: put the bytes back
  truncate coarse     os.truncate(coarse.index, half)              repair: put the bytes back
  rewrite dense       overwrite 64 KB in place (same size)          repair: put the bytes back
  coreutils truncate  `truncate -s 1000000 dense.fbin` (O_NONBLOCK) repair: put the bytes back
  remove dense        unlink dense.fbin (mapping keeps the inode)   repair: a new build + link flip
  remove manifest     unlink manifest.json                          repair: a new build + link flip
  new build           publish a new build, flip the link            (no fault: the control)

Per fault: replies by status, how long until 200 again after the repair, whether the server
process and both workers are alive. Writes faults.json and faults.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


class _Load:
    """Clients searching over kept-alive and fresh connections, replies counted by status."""

    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self.bodies = bodies
        self.statuses: Counter[int | str] = Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def client(self, i: int, url: str) -> None:
        import httpx

        bodies = self.bodies
        with httpx.Client(timeout=30) as keep:
            j = i
            while not self.stop.is_set():
                j += 1
                try:
                    if j % 2:
                        code: int | str = keep.post(url + "/search",
                                                    json=bodies[j % len(bodies)]).status_code
                    else:  # a fresh connection: the kernel spreads them over the workers
                        code = httpx.post(url + "/search", json=bodies[j % len(bodies)],
                                          timeout=30).status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                with self.lock:
                    self.statuses[code] += 1

    def snapshot(self) -> Counter[int | str]:
        with self.lock:
            return Counter(self.statuses)


def _flip(link: Path, build: Path, work: Path) -> None:
    """Point the served link at ``build`` atomically (a new symlink renamed over it)."""
    tmp = work / "next"
    tmp.symlink_to(build)
    os.replace(tmp, link)


def _faults(link: Path, flip: Callable[[], None]) -> list[tuple[str, Callable[[], None],
                                                                Callable[[], None]]]:
    """(name, fault, repair) in the order run."""
    from ebr.io import layout

    saved: dict[Path, bytes] = {}

    def in_place(name: str, act: Callable[[Path], object]
                 ) -> tuple[Callable[[], None], Callable[[], None]]:
        def fault() -> None:
            p = Path(os.path.realpath(link)) / name
            saved[p] = p.read_bytes()
            act(p)

        def repair() -> None:
            for p, raw in saved.items():
                p.write_bytes(raw)
            saved.clear()
        return fault, repair

    def rewrite(p: Path) -> None:
        with open(p, "r+b") as f:
            f.seek(8)
            f.write(np.random.default_rng(0).bytes(65536))

    def remove(name: str) -> Callable[[], None]:
        return lambda: (Path(os.path.realpath(link)) / name).unlink()

    dense, coarse = layout.DENSE["float32"], layout.COARSE
    return [
        ("truncate dense", *in_place(dense, lambda p: os.truncate(p, 1_000_000))),
        ("truncate coarse", *in_place(coarse, lambda p: os.truncate(p, p.stat().st_size // 2))),
        ("rewrite dense in place", *in_place(dense, rewrite)),
        ("coreutils truncate -s 1000000 dense",
         *in_place(dense, lambda p: subprocess.run(["truncate", "-s", "1000000", str(p)],
                                                   check=False))),
        ("remove dense", remove(dense), flip),
        ("remove manifest", remove("manifest.json"), flip),
        ("new build (control)", lambda: None, flip),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--hold", type=float, default=2.0, help="seconds of load under each fault")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    import httpx
    from helpers import served, wait_for

    from ebr.data.synthetic import SyntheticConfig, generate
    from ebr.index.writer import write_index
    from ebr.spec import BuildParams, IndexSpec

    ds = generate(SyntheticConfig(n=args.n, d=args.dim, nq=64, nq_train=8, seed=3))
    params = BuildParams(spec=IndexSpec.parse("IVF64,PQ16"), kmeans_niter=8)
    work = Path(tempfile.mkdtemp(prefix="ebr-faults-"))
    builds = iter(range(100))

    def new_build() -> Path:
        d = work / f"gen{next(builds)}"
        write_index(d, ds.xb, params)
        return d

    link = work / "current"
    link.symlink_to(new_build())
    bodies = [{"vector": q.tolist(), "k": 10, "params": {"nprobe": 16, "candidates": 100}}
              for q in ds.xq]
    load = _Load(bodies)
    rows = []
    with served(link, work / "server.log", workers=args.workers, watch_seconds="0.2",
                max_inflight_per_client="0") as (url, server):
        threads = [threading.Thread(target=load.client, args=(i, url), daemon=True)
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.hold)

        faults = _faults(link, lambda: _flip(link, new_build(), work))
        for name, fault, repair in faults:
            before = load.snapshot()
            fault()
            time.sleep(args.hold)
            during = load.snapshot() - before
            repair()
            t0 = time.perf_counter()

            def serving() -> bool:
                try:
                    return all(httpx.post(url + "/search", json=bodies[0]).status_code == 200
                               for _ in range(2 * args.workers))
                except httpx.HTTPError:
                    return False

            healed = wait_for(serving, 60)
            rows.append({"fault": name, "replies_under_fault": dict(during),
                         "back_to_200_s": round(time.perf_counter() - t0, 2) if healed else None,
                         "server_alive": server.poll() is None})
            print(rows[-1], flush=True)
            time.sleep(args.hold / 2)
        load.stop.set()
        for t in threads:
            t.join(30)
        alive = server.poll() is None
    log = (work / "server.log").read_text()
    Path(tempfile.gettempdir(), "ebr_faults_server.log").write_text(log)
    total = dict(load.statuses)
    other = {k: v for k, v in total.items() if k not in (200, 503)}
    result = {"n": args.n, "dim": args.dim, "workers": args.workers, "clients": args.clients,
              "replies": {str(k): v for k, v in total.items()}, "not_200_or_503": other,
              "server_alive_at_end": alive, "worker_deaths_logged": log.count("died"),
              "faults": rows}
    shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(result, indent=2, default=str))
    lines = ["# Index files changed under a loaded server", "",
             f"`python bench/bench_faults.py --n {args.n} --dim {args.dim} --workers "
             f"{args.workers} --clients {args.clients}`", "",
             f"All replies: {result['replies']}; other than 200/503: {other or 'none'}; "
             f"server alive at the end: {alive}.", "",
             "| fault | replies under the fault | back to 200 after repair (s) | alive |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fault']} | {r['replies_under_fault']} | {r['back_to_200_s']} | "
                     f"{r['server_alive']} |")
    (out / "faults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if other or not alive or any(not r["server_alive"] or r["back_to_200_s"] is None
                                 for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
