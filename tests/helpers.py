"""Helpers shared by tests that run the real server (``python -m service``) in a subprocess."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx


def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(index_dir: Path, log: Path, workers: int = 1, ready: bool = True,
           **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m service`` on ``index_dir`` (EBR_* settings from ``env``): (base url, process).
    Waits for /readyz to answer 200 (``ready``) or just to answer."""
    port = free_port()
    full = {**os.environ, "EBR_INDEX_DIR": str(index_dir), "EBR_PORT": str(port),
            "EBR_WATCH_SECONDS": "0.2", "EBR_LOG_FORMAT": "json",
            **{f"EBR_{k.upper()}": v for k, v in env.items()}}
    full.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("wb") as err:
        server = subprocess.Popen([sys.executable, "-m", "service", "--workers", str(workers)],
                                  env=full, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            code = httpx.get(url + "/readyz").status_code
        except httpx.HTTPError:
            return False
        return code == 200 or not ready

    try:
        if not wait_for(up, 60):
            raise RuntimeError(f"server did not come up: {log.read_text()[-2000:]}")
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
