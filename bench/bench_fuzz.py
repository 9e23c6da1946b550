"""Schema-driven fuzzing of the live server (issue 16): schemathesis with every check.

    python bench/bench_fuzz.py [--examples 1000] [--workers 1] [--out bench/results]

Builds a small synthetic index, serves it with `python -m service` (an admin key set, so
/admin/reload is exercised too), and runs `schemathesis run --checks all` against its own
/openapi.json: no 5xx, every reply as documented (status, content type, schema), schema-valid
requests accepted and schema-invalid ones rejected. The two rules JSON Schema cannot state are
given to schemathesis as hooks (bench/fuzz_hooks.py). Writes fuzz.json, fuzz.md and the full
schemathesis output as fuzz.txt; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
ADMIN = "fuzz-admin-key-0123456789"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=1000, help="max examples per operation")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    from helpers import served

    from ebr.data.synthetic import SyntheticConfig, generate
    from ebr.index.writer import write_index
    from ebr.spec import BuildParams, IndexSpec

    work = Path(tempfile.mkdtemp(prefix="ebr-fuzz-"))
    ds = generate(SyntheticConfig(n=3000, d=32, nq=8, nq_train=8, n_clusters=16, seed=1338))
    write_index(work / "idx", ds.xb, BuildParams(spec=IndexSpec.parse("IVF16,PQ8"),
                                                 kmeans_niter=5))
    st = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "bench.fuzz_hooks", "PYTHONPATH": str(ROOT)}
    with served(work / "idx", work / "server.log", workers=args.workers, admin_keys=ADMIN,
                max_candidates="500") as (url, server):
        cmd = [st, "run", url + "/openapi.json", "--checks", "all", "-n", str(args.examples),
               "--generation-deterministic", "-H", f"Authorization: Bearer {ADMIN}"]
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        alive = server.poll() is None
    text = run.stdout + run.stderr
    shutil.rmtree(work, ignore_errors=True)
    m = re.search(r"(\d+) generated, (\d+) passed", text)
    failures = re.search(r"(\d+) found (\d+) unique failures?", text)
    result = {"command": " ".join(["schemathesis", *cmd[1:2], "--checks", "all", "-n",
                                   str(args.examples), "--generation-deterministic"]),
              "exit_code": run.returncode, "generated": int(m.group(1)) if m else None,
              "passed": int(m.group(2)) if m else None,
              "failures": int(failures.group(2)) if failures else 0, "server_alive": alive}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz.txt").write_text(re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text))
    (out / "fuzz.json").write_text(json.dumps(result, indent=2))
    (out / "fuzz.md").write_text(
        "# schemathesis --checks all against the live server\n\n"
        f"`python bench/bench_fuzz.py --examples {args.examples}`\n\n"
        f"{result['generated']} cases generated, {result['passed']} passed, "
        f"{result['failures']} unique failures; server alive: {alive}; schemathesis exit "
        f"code {run.returncode}. Full output: fuzz.txt.\n")
    print(json.dumps(result, indent=2))
    sys.exit(0 if run.returncode == 0 and alive else 1)


if __name__ == "__main__":
    main()
