"""Faults: a build killed at any point never leaves a directory the server will load."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ebr.errors import IndexFormatError
from ebr.index.reader import open_index

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_killed_builds_leave_nothing_loadable(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((20000, 64)).astype(np.float32))
    cmd = [sys.executable, "-m", "index_build", "--no-progress", "build", "--input",
           str(tmp_path / "x.npy"), "--out", str(tmp_path / "idx"), "--spec", "IVF64,PQ16",
           "--niter", "10"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    full = time.perf_counter() - t0
    reference = open_index(tmp_path / "idx").manifest.files
    shutil.rmtree(tmp_path / "idx")
    outcomes = {"absent": 0, "complete": 0}
    for delay in np.linspace(0.2, full * 1.2, 8):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(delay))
        p.send_signal(signal.SIGKILL)
        p.wait()
        target = tmp_path / "idx"
        if target.exists():  # only a finished build may be there, and it must verify
            oi = open_index(target)
            assert oi.manifest.files == reference
            outcomes["complete"] += 1
            shutil.rmtree(target)
        else:
            with pytest.raises(IndexFormatError):
                open_index(target)
            outcomes["absent"] += 1
        for leftover in tmp_path.glob(".idx.building-*"):  # hidden staging dirs: never served
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:  # the staging directory's lock file
                leftover.unlink()
    assert outcomes["absent"] >= 1  # some kills landed mid-build
