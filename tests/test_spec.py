import pytest

from ebr.errors import SearchParamError, SpecError
from ebr.metric import Metric
from ebr.spec import BuildParams, IndexSpec, SearchParams


@pytest.mark.parametrize("s", ["IVF256,PQ16", "IVF1,PQ1", "IVF4096,PQ32x4", "OPQ16,IVF1024,PQ16",
                               "IVF64,PQ8x10", "OPQ16_192,IVF1024,PQ16"])
def test_round_trip(s):
    spec = IndexSpec.parse(s)
    assert str(spec) == s
    assert IndexSpec.parse(str(spec)) == spec


def test_fields_and_default_nbits():
    spec = IndexSpec.parse("OPQ8,IVF100,PQ8x8")
    assert (spec.nlist, spec.pq_m, spec.pq_nbits, spec.opq) == (100, 8, 8, True)
    assert str(spec) == "OPQ8,IVF100,PQ8"  # x8 is the canonical default
    assert spec.code_size == 8
    assert IndexSpec.parse("IVF4,PQ16x4").code_size == 8


@pytest.mark.parametrize("s", ["", "IVF,PQ8", "IVF0,PQ8", "IVF16", "PQ8,IVF16", "IVF16,PQ8,Flat",
                               "HNSW32", "OPQ4,IVF16,PQ8", "IVF16,PQ8x0", "IVF16,PQ8x17", "ivf16,pq8"])
def test_invalid_specs(s):
    with pytest.raises(SpecError):
        IndexSpec.parse(s)


def test_opq_output_dimension():
    """OPQ<M>_<d'>: d' a multiple of M, at most the vectors' d (which M need not divide)."""
    spec = IndexSpec.parse("OPQ8_16,IVF4,PQ8")
    assert spec.opq and spec.opq_dim == 16 and spec.code_dim(36) == 16
    spec.check_dim(36)
    with pytest.raises(SpecError, match="exceeds"):
        spec.check_dim(12)
    for bad in ("OPQ8_12,IVF4,PQ8", "OPQ8_0,IVF4,PQ8", "OPQ8_16,IVF4,RQ8"):
        with pytest.raises(SpecError):
            IndexSpec.parse(bad)
    BuildParams(spec=spec, codebooks="distill")  # Distill-VQ learns on top of it
    assert IndexSpec.parse("IVF4,PQ8").code_dim(32) == 32


def test_dim_not_divisible():
    with pytest.raises(SpecError, match="not divisible"):
        IndexSpec.parse("IVF4,PQ7").check_dim(32)
    IndexSpec.parse("IVF4,PQ8").check_dim(32)


def test_build_params_validation():
    spec = IndexSpec.parse("IVF4,PQ8")
    with pytest.raises(SpecError):
        BuildParams(spec=spec, dense_dtype="int8")
    with pytest.raises(SpecError):
        BuildParams(spec=spec, codebooks="magic")
    assert BuildParams(spec=spec, codebooks="opq").spec.opq
    with pytest.raises(SpecError):
        Metric.parse("hamming")
    assert Metric.parse("cosine") is Metric.IP


@pytest.mark.parametrize("kw,msg", [({"k": 0}, "k must"), ({"nprobe": 0}, "nprobe"),
                                    ({"nprobe": 17}, "nprobe"), ({"candidates": 1001}, "candidates"),
                                    ({"k": 20, "candidates": 10}, "must not exceed")])
def test_search_params_ranges(kw, msg):
    with pytest.raises(SearchParamError, match=msg):
        SearchParams(**kw).validate(nlist=16, ntotal=1000)


def test_oversampling():
    p = SearchParams.from_oversampling(10, 2.5, nprobe=4, ntotal=1000)
    assert p.candidates == 25
    assert SearchParams.from_oversampling(10, 500, nprobe=4, ntotal=300).candidates == 300
    with pytest.raises(SearchParamError):
        SearchParams.from_oversampling(10, 0.5, nprobe=4, ntotal=1000)
