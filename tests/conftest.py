"""Seeded synthetic fixtures, built once per session in tmp dirs; real data skips when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ebr.data.synthetic import SyntheticConfig, SyntheticDataset, generate
from ebr.index.writer import write_index
from ebr.metric import Metric
from ebr.spec import BuildParams, IndexSpec

SHARED_DATA = Path(os.environ.get("EBR_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _encoder_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """ONNX graphs of the text encoder are exported once per test session, into a tmp dir,
    never into the user's ~/.cache."""
    os.environ["EBR_ENCODER_CACHE_DIR"] = str(tmp_path_factory.mktemp("encoders"))


@pytest.fixture(scope="session")
def ds_ip() -> SyntheticDataset:
    return generate(SyntheticConfig(n=3000, d=32, nq=40, nq_train=10, n_clusters=16, seed=1338))


@pytest.fixture(scope="session")
def ds_l2() -> SyntheticDataset:
    return generate(SyntheticConfig(n=2500, d=24, nq=30, nq_train=10, n_clusters=12,
                                    metric=Metric.L2, seed=7))


@pytest.fixture(scope="session")
def index_ip(tmp_path_factory: pytest.TempPathFactory, ds_ip: SyntheticDataset) -> Path:
    out = tmp_path_factory.mktemp("ip") / "index"
    write_index(out, ds_ip.xb, BuildParams(spec=IndexSpec.parse("IVF16,PQ8"), metric=Metric.IP,
                                           kmeans_niter=10))
    return out


@pytest.fixture(scope="session")
def index_l2(tmp_path_factory: pytest.TempPathFactory, ds_l2: SyntheticDataset) -> Path:
    out = tmp_path_factory.mktemp("l2") / "index"
    write_index(out, ds_l2.xb, BuildParams(spec=IndexSpec.parse("IVF8,PQ6"), metric=Metric.L2,
                                           kmeans_niter=10, dense_dtype="float16"),
                ids=[f"doc-{i}" for i in range(len(ds_l2.xb))])
    return out


def shared(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not present: {p}")
    return p
