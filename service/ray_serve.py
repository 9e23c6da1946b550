"""Sharded serving on Ray Serve (extra ``distributed``).

    ShardServer   one deployment per shard: holds that shard (codes in RAM, its dense rows on
                  its node's disk), answers coarse top-C + exact scores of those C
    router        the ingress deployment: the same FastAPI app as ``python -m service`` (same
                  routes, auth, limits, metrics), whose sharded searcher reaches the shards
                  through deployment handles and merges exactly (``ebr.search.sharded.merge``)

    python -m service.ray_serve --index DIR [--address ray://head:10001] [--port 8000]

The directory must be visible at the same path on every node that runs a shard (the router
reads the manifests and ids; the shards read their own files). Locally, ``serve_sharded``
starts a Ray instance. Results equal the single-node index built from the same codebooks.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ebr.filters import Filter
from ebr.index.reader import open_index
from ebr.io.manifest import read_manifest
from ebr.search.sharded import Answer, FilteredAnswer, LocalShard
from ebr.spec import SearchParams

__all__ = ["ShardServer", "build_application", "serve_sharded"]

logger = logging.getLogger(__name__)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class ShardServer:
    """One shard of a sharded index directory."""

    def __init__(self, shard_dir: str, start: int, verify_checksums: bool = True) -> None:
        self.shard = LocalShard(open_index(shard_dir, verify_checksums=verify_checksums), start)

    def answer(self, xq: np.ndarray, params: dict[str, int | bool]) -> Answer:
        fields: dict[str, Any] = dict(params)
        return self.shard.answer(xq, SearchParams(**fields))

    def exact(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.shard.exact(xq, k)

    def filtered(self, xq: np.ndarray, params: dict[str, int | bool], f: Filter,
                 exact: bool) -> FilteredAnswer:
        fields: dict[str, Any] = dict(params)
        return self.shard.filtered(xq, SearchParams(**fields), f, exact)


class _HandleShard:
    """The router's view of a shard deployment (same calls as :class:`LocalShard`)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def answer(self, xq: np.ndarray, params: SearchParams) -> Answer:
        return self.handle.answer.remote(xq, dataclasses.asdict(params)).result()

    def exact(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.handle.exact.remote(xq, k).result()

    def filtered(self, xq: np.ndarray, params: SearchParams, f: Filter, exact: bool
                 ) -> FilteredAnswer:
        return self.handle.filtered.remote(xq, dataclasses.asdict(params), f, exact).result()


def _router_app(index_dir: str, app_name: str, n_shards: int, env: dict[str, str]) -> Any:
    """The ebr FastAPI app over deployment handles (built on the router replica)."""
    import os

    os.environ.update(env)
    from service.app import create_app
    from service.settings import Settings

    def backends(index: Any) -> list[_HandleShard]:
        return [_HandleShard(serve.get_deployment_handle(f"shard-{i}", app_name=app_name))
                for i in range(n_shards)]
    return create_app(Settings.from_env({**os.environ, "EBR_INDEX_DIR": index_dir}),
                      shard_backends=backends)


def build_application(index_dir: str | Path, app_name: str = "ebr",
                      verify_checksums: bool = True, env: dict[str, str] | None = None
                      ) -> Application:
    """The Serve application: a ShardServer per shard and the router as ingress."""
    index_dir = str(Path(index_dir).resolve())
    m = read_manifest(Path(index_dir))
    if not m.shards:
        raise ValueError(f"{index_dir}: not a sharded index; serve it with python -m service")
    server: Any = ShardServer  # a Ray Serve deployment (untyped)
    shards = [server.options(name=f"shard-{i}").bind(str(Path(index_dir) / s["dir"]),
                                                     int(s["start"]), verify_checksums)
              for i, s in enumerate(m.shards)]
    n, env = len(shards), dict(env or {})

    def builder() -> Any:  # Serve calls a zero-argument builder on the replica
        return _router_app(index_dir, app_name, n, env)
    router = serve.deployment(serve.ingress(builder)(_Router), name="router",
                              ray_actor_options={"num_cpus": 0})
    return router.bind(*shards)


class _Router:
    def __init__(self, *shards: Any) -> None:  # bound shards: started before the router
        self.n = len(shards)


def serve_sharded(index_dir: str | Path, *, address: str | None = None, host: str = "127.0.0.1",
                  port: int = 8000, app_name: str = "ebr", verify_checksums: bool = True,
                  env: dict[str, str] | None = None) -> DeploymentHandle:
    """Start (or join) Ray, run the application, return the router's handle."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    t0 = time.perf_counter()
    handle = serve.run(build_application(index_dir, app_name, verify_checksums, env),
                       name=app_name, route_prefix="/")
    logger.info("serving %s on Ray Serve at http://%s:%d (%.1f s)", index_dir, host, port,
                time.perf_counter() - t0)
    return handle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True, help="sharded index directory")
    ap.add_argument("--address", help="Ray cluster address (default: start a local one)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--no-verify", action="store_true", help="skip sha256 checks")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    serve_sharded(args.index, address=args.address, host=args.host, port=args.port,
                  verify_checksums=not args.no_verify)
    while True:  # serve until interrupted
        time.sleep(3600)


if __name__ == "__main__":
    main()
