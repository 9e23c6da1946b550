"""``python -m service [--index DIR] [--host H] [--port P]``: serve an index with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    p.add_argument("--index", help="index directory (else $EBR_INDEX_DIR)")
    p.add_argument("--host", help="bind address (else $EBR_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (else $EBR_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="uvicorn worker processes (else $EBR_WORKERS, "
                   "default 1); they share the page cache of the memory-mapped index. One per "
                   "core measured best")
    args = p.parse_args(argv)
    for name, value in (("INDEX_DIR", args.index), ("HOST", args.host), ("PORT", args.port),
                        ("WORKERS", args.workers)):
        if value is not None:
            os.environ[f"EBR_{name}"] = str(value)
    # every thread's OpenMP default, before faiss loads: omp_set_num_threads() in create_app
    # sets it for the calling thread only, and an OpenMP team of 2 on a 10-vector write
    # spins both cores (measured: 5.3 ms of CPU per 10-document write, 3.3 ms wall)
    os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("EBR_FAISS_THREADS", "1"))
    import uvicorn

    from service.observability import configure_logging, logging_config
    from service.settings import Settings

    s = Settings.from_env()
    configure_logging(s.log_format, logging.INFO)
    metrics_dir = None
    if s.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # each worker writes its metrics here and /metrics sums them (prometheus_client's
        # multiprocess mode); the workers are spawned after this, so they see the variable
        metrics_dir = tempfile.mkdtemp(prefix="ebr-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run("service.app:create_app", factory=True, host=s.host, port=s.port,
                    workers=s.workers, log_level="info",
                    log_config=logging_config(s.log_format),
                    access_log=s.access_log)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
