"""Residual-quantizer codes (``IVF<n>,RQ<M>``): spec, build, the served IVF-PQ form of the same
codes against faiss' own IVF-RQ scan, and search against brute force."""

import json

import faiss
import numpy as np
import pytest

from ebr.errors import SpecError
from ebr.index.reader import open_index
from ebr.index.writer import write_index
from ebr.metric import Metric
from ebr.quant.faiss_bridge import KMeansTrainer, ivf_params, lift_rq
from ebr.search.searcher import Searcher
from ebr.spec import BuildParams, IndexSpec, SearchParams


def test_spec_round_trip_and_errors():
    s = IndexSpec.parse("IVF64,RQ16")
    assert (s.nlist, s.pq_m, s.quantizer, s.code_size, str(s)) == (64, 16, "rq", 16, "IVF64,RQ16")
    assert IndexSpec.parse("IVF64,RQ16x8") == s
    s.check_dim(30)  # RQ codebooks span all dimensions: no divisibility rule
    with pytest.raises(SpecError, match="PQ M"):
        IndexSpec.parse("IVF64,PQ16").check_dim(30)
    for bad in ("OPQ16,IVF64,RQ16", "IVF64,RQ16x4", "IVF64,RQ"):
        with pytest.raises(SpecError):
            IndexSpec.parse(bad)
    with pytest.raises(SpecError, match="inner product"):
        BuildParams(spec=s, metric=Metric.L2)
    with pytest.raises(SpecError, match="RQ"):
        BuildParams(spec=s, codebooks="opq")


def _recall(found, truth):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]))


def test_served_form_scores_like_faiss_ivf_rq(ds_ip):
    spec = IndexSpec.parse("IVF16,RQ6")
    native = KMeansTrainer(niter=8).train(ds_ip.xb, spec, Metric.IP, 3)
    native.add(ds_ip.xb)
    served = lift_rq(native)
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(served)), faiss.IndexIVFPQ)
    assert served.ntotal == native.ntotal and served.d == native.d
    for nprobe in (1, 4, 16):
        d0, i0 = native.search(ds_ip.xq, 20, params=ivf_params(native, nprobe))
        d1, i1 = served.search(ds_ip.xq, 20, params=ivf_params(served, nprobe))
        np.testing.assert_allclose(d1, d0, rtol=1e-4, atol=1e-4)
        # equal scores may swap places; everything else is the same list
        assert (i1 == i0).mean() > 0.99
    # and the score is the inner product with the RQ reconstruction
    ivf = faiss.downcast_index(faiss.extract_index_ivf(native))
    ivf.make_direct_map()
    rec = np.stack([ivf.reconstruct(int(i)) for i in i0[0, :5]])
    np.testing.assert_allclose(d0[0, :5], rec @ ds_ip.xq[0], rtol=1e-4, atol=1e-4)


def test_rq_index_end_to_end(tmp_path, ds_ip):
    rq = write_index(tmp_path / "rq", ds_ip.xb,
                     BuildParams(spec=IndexSpec.parse("IVF16,RQ8"), kmeans_niter=8))
    pq = write_index(tmp_path / "pq", ds_ip.xb,
                     BuildParams(spec=IndexSpec.parse("IVF16,PQ8"), kmeans_niter=8))
    assert rq.spec == "IVF16,RQ8" and pq.spec == "IVF16,PQ8"
    truth = Searcher(open_index(tmp_path / "pq")).exact(ds_ip.xq, 10).ids
    got = {}
    for name in ("rq", "pq"):
        oi = open_index(tmp_path / name)
        mem = oi.memory()
        assert mem["codes_bytes"] == len(ds_ip.xb) * 8  # equal bytes per vector
        s = Searcher(oi)
        coarse, _ = s.search(ds_ip.xq, SearchParams(k=10, nprobe=16, k_coarse=10, rerank=False))
        got[name] = _recall(coarse.ids, truth)
        full, _ = s.search(ds_ip.xq, SearchParams(k=10, nprobe=16, k_coarse=100))
        assert _recall(full.ids, truth) >= 0.95  # re-ranking from disk is exact
        in_ram, _ = Searcher(open_index(tmp_path / name, mmap=False)).search(
            ds_ip.xq, SearchParams(k=10, nprobe=16, k_coarse=100))
        np.testing.assert_array_equal(in_ram.ids, full.ids)
    # what RQ is for: more coarse recall from the same 8 bytes
    assert got["rq"] > got["pq"] + 0.05, got


def test_pq_file_under_an_rq_manifest_is_refused(tmp_path, ds_ip):
    from ebr.errors import CorruptFileError
    from ebr.io import layout

    for name, spec in (("rq", "IVF8,RQ4"), ("pq", "IVF8,PQ4")):
        write_index(tmp_path / name, ds_ip.xb, BuildParams(spec=IndexSpec.parse(spec),
                                                           kmeans_niter=4))
    (tmp_path / "rq" / layout.COARSE).write_bytes((tmp_path / "pq" / layout.COARSE).read_bytes())
    with pytest.raises(CorruptFileError):  # size and checksum
        open_index(tmp_path / "rq")
    # even with the manifest's file entry rewritten to match, the layout gives it away
    m = json.loads((tmp_path / "rq" / "manifest.json").read_text())
    pm = json.loads((tmp_path / "pq" / "manifest.json").read_text())
    m["files"][layout.COARSE] = pm["files"][layout.COARSE]
    (tmp_path / "rq" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptFileError, match="code space dimension"):
        open_index(tmp_path / "rq")
