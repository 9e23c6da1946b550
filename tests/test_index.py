"""Index directories: atomic writes, manifest gate, corruption detection, mmap == in-RAM."""

import json
import shutil

import faiss
import numpy as np
import pytest

from ebr.errors import (
    CorruptFileError,
    IndexFormatError,
    InputError,
    ManifestVersionError,
    SpecError,
)
from ebr.index.reader import open_index
from ebr.index.writer import write_index
from ebr.io import layout
from ebr.io.manifest import seal
from ebr.metric import Metric
from ebr.search.searcher import Searcher
from ebr.spec import BuildParams, IndexSpec, SearchParams

P = BuildParams(spec=IndexSpec.parse("IVF8,PQ4"), kmeans_niter=5)


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_manifest_contents(index_ip, ds_ip):
    oi = open_index(index_ip)
    m = oi.manifest
    assert (m.ntotal, m.dim, m.spec, m.metric) == (len(ds_ip.xb), 32, "IVF16,PQ8", "ip")
    assert set(m.files) == {layout.COARSE, layout.DENSE["float32"], layout.IDS_INT, layout.DOCS,
                            layout.CODEBOOKS, layout.LIST_POINTS}
    assert m.codebooks["method"] == "kmeans" and m.format_version.startswith("1.")
    assert {"created", "seconds", "params", "versions"} <= set(m.build)
    np.testing.assert_array_equal(oi.dense, ds_ip.xb)  # float32 store is lossless
    assert isinstance(faiss.downcast_InvertedLists(oi.ivfpq.invlists), faiss.OnDiskInvertedLists)
    mem = oi.memory()
    assert mem["codes_bytes"] == len(ds_ip.xb) * 8
    assert mem["coarse_ram_bytes"] < mem["dense_disk_bytes"]
    assert not list(index_ip.parent.glob(".*building*"))  # no staging leftovers


def test_string_ids_and_float16(index_l2, ds_l2):
    oi = open_index(index_l2)
    assert oi.manifest.id_kind == "str" and oi.ids[5] == "doc-5"
    assert oi.dense.dtype == np.float16
    np.testing.assert_allclose(oi.dense, ds_l2.xb, rtol=2e-3, atol=2e-3)
    assert oi.external_ids(np.array([3, -1])) == ["doc-3", None]


def test_mmap_equals_in_ram(index_ip, ds_ip):
    a, b = Searcher(open_index(index_ip, mmap=True)), Searcher(open_index(index_ip, mmap=False))
    assert not isinstance(faiss.downcast_InvertedLists(b.index.ivfpq.invlists),
                          faiss.OnDiskInvertedLists)
    for rerank in (True, False):
        p = SearchParams(k=10, nprobe=4, candidates=50, rerank=rerank)
        ra, rb = a.search(ds_ip.xq, p)[0], b.search(ds_ip.xq, p)[0]
        np.testing.assert_array_equal(ra.ids, rb.ids)
        np.testing.assert_array_equal(ra.scores, rb.scores)


def test_loaded_equals_before_save(tmp_path, ds_ip):
    """The coarse index on disk answers exactly like the trained index in memory."""
    from ebr.quant.faiss_index import ivf_params
    from ebr.quant.trainers import KMeansTrainer

    idx = KMeansTrainer(niter=5).train_index(ds_ip.xb, P.spec, Metric.IP, P.seed)
    idx.add(ds_ip.xb)
    write_index(tmp_path / "i", ds_ip.xb, BuildParams(spec=P.spec, kmeans_niter=5,
                                                      train_size=len(ds_ip.xb)))
    oi = open_index(tmp_path / "i")
    D0, I0 = idx.search(ds_ip.xq, 20, params=ivf_params(idx, 3))
    D1, I1 = oi.coarse.search(ds_ip.xq, 20, params=ivf_params(oi.coarse, 3))
    np.testing.assert_array_equal(I0, I1)
    np.testing.assert_array_equal(D0, D1)


def test_same_seed_same_index(tmp_path, ds_ip):
    write_index(tmp_path / "a", ds_ip.xb, P)
    write_index(tmp_path / "b", ds_ip.xb, P)
    fa = json.loads((tmp_path / "a" / "manifest.json").read_text())["files"]
    fb = json.loads((tmp_path / "b" / "manifest.json").read_text())["files"]
    assert fa[layout.COARSE]["sha256"] == fb[layout.COARSE]["sha256"]


@pytest.mark.parametrize("name", [layout.COARSE, layout.DENSE["float32"], layout.IDS_INT])
def test_truncated_file_refused(index_ip, tmp_path, name):
    d = _copy(index_ip, tmp_path)
    p = d / name
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(CorruptFileError, match="truncated"):
        open_index(d)
    with pytest.raises(CorruptFileError, match="truncated"):
        open_index(d, verify_checksums=False)  # sizes are always checked


@pytest.mark.parametrize("name", [layout.COARSE, layout.DENSE["float32"], layout.IDS_INT])
def test_flipped_byte_refused(index_ip, tmp_path, name):
    d = _copy(index_ip, tmp_path)
    p = d / name
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="sha256"):
        open_index(d)


def test_missing_manifest_and_files(index_ip, tmp_path):
    d = _copy(index_ip, tmp_path)
    (d / layout.DENSE["float32"]).unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        open_index(d)
    (d / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match="unfinished build"):
        open_index(d)
    with pytest.raises(IndexFormatError, match="not a directory"):
        open_index(tmp_path / "nope")


@pytest.mark.parametrize("version", ["3.0", "0.9", "", "banana"])
def test_unknown_format_version(index_ip, tmp_path, version):
    d = _copy(index_ip, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = version
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestVersionError):
        open_index(d)


def test_malformed_manifest(index_ip, tmp_path):
    d = _copy(index_ip, tmp_path)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="unreadable"):
        open_index(d)
    m = json.loads((index_ip / "manifest.json").read_text())
    del m["spec"]
    (d / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(IndexFormatError, match="malformed"):
        open_index(d)
    for bad in ("../etc", "/etc/passwd", "encoder/../../x", ".hidden", "a\\..\\b"):
        m = json.loads((index_ip / "manifest.json").read_text())
        m["files"][bad] = {"bytes": 1, "sha256": "0"}
        (d / "manifest.json").write_text(json.dumps(seal(m)))
        with pytest.raises(IndexFormatError, match="escapes"):
            open_index(d)


def test_manifest_disagrees_with_coarse(index_ip, tmp_path):
    d = _copy(index_ip, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["spec"] = "IVF32,PQ8"
    (d / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(CorruptFileError, match="nlist"):
        open_index(d)


def test_failed_build_leaves_nothing(tmp_path, ds_ip, monkeypatch):
    import ebr.index.writer as w

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(w, "write_manifest", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_index(tmp_path / "idx", ds_ip.xb, P)
    assert list(tmp_path.iterdir()) == []


def test_existing_index_kept_unless_overwrite(tmp_path, ds_ip):
    write_index(tmp_path / "idx", ds_ip.xb, P)
    before = (tmp_path / "idx" / "manifest.json").read_text()
    with pytest.raises(InputError, match="exists"):
        write_index(tmp_path / "idx", ds_ip.xb[:500], P)
    assert (tmp_path / "idx" / "manifest.json").read_text() == before
    write_index(tmp_path / "idx", ds_ip.xb[:500], P, overwrite=True)
    assert open_index(tmp_path / "idx").ntotal == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_build_input_errors(tmp_path, ds_ip):
    bad = ds_ip.xb.copy()
    bad[10, 3] = np.inf
    with pytest.raises(InputError, match="row 10"):
        write_index(tmp_path / "a", bad, P)
    with pytest.raises(SpecError, match="divisible"):
        write_index(tmp_path / "a", ds_ip.xb[:, :30], P)
    with pytest.raises(SpecError, match="training vectors"):
        write_index(tmp_path / "a", ds_ip.xb[:100], P)  # < 256 for 8-bit PQ
    with pytest.raises(InputError, match="unique"):
        write_index(tmp_path / "a", ds_ip.xb, P, ids=[1] * len(ds_ip.xb))
    with pytest.raises(InputError, match="ids"):
        write_index(tmp_path / "a", ds_ip.xb, P, ids=[1, 2])
    assert list(tmp_path.iterdir()) == []


def test_opq_build(tmp_path, ds_ip):
    params = BuildParams(spec=IndexSpec.parse("IVF8,PQ8"), codebooks="opq", kmeans_niter=5)
    write_index(tmp_path / "o", ds_ip.xb, params)
    oi = open_index(tmp_path / "o")
    assert oi.spec.opq and oi.manifest.codebooks["method"] == "opq"
    assert isinstance(oi.coarse, faiss.IndexPreTransform)
    res, _ = Searcher(oi).search(ds_ip.xq, SearchParams(k=5, nprobe=8, candidates=len(ds_ip.xb)))
    from ebr.search.exact import exact_search

    np.testing.assert_array_equal(res.ids, exact_search(ds_ip.xq, ds_ip.xb, 5, Metric.IP).ids)


def test_opq_to_fewer_dimensions_builds_serves_and_writes(tmp_path, ds_ip):
    """OPQ8_16 on 32-d vectors: the IVF and the PQ work in 16 dimensions, the re-rank in 32:
    every candidate re-ranked gives exact search; the graph probe gives the flat probe's
    results; a written document is found first by its own vector."""
    from ebr.index.live import open_live
    from ebr.search.exact import exact_search
    from ebr.search.live import LiveSearcher

    params = BuildParams(spec=IndexSpec.parse("OPQ8_16,IVF8,PQ8"), codebooks="opq",
                         kmeans_niter=5)
    write_index(tmp_path / "o", ds_ip.xb, params)
    oi = open_index(tmp_path / "o")
    assert str(oi.spec) == "OPQ8_16,IVF8,PQ8" and oi.ivfpq.d == 16 and oi.dim == 32
    full = SearchParams(k=5, nprobe=8, candidates=len(ds_ip.xb))
    res, _ = Searcher(oi).search(ds_ip.xq, full)
    np.testing.assert_array_equal(res.ids, exact_search(ds_ip.xq, ds_ip.xb, 5, Metric.IP).ids)
    graph = open_index(tmp_path / "o", probe="hnsw")
    assert graph.probe is not None and graph.probe.graph.d == 16
    p = SearchParams(k=10, nprobe=3, candidates=100)
    np.testing.assert_array_equal(Searcher(graph).search(ds_ip.xq, p)[0].ids,
                                  Searcher(oi).search(ds_ip.xq, p)[0].ids)
    live = open_live(oi, tmp_path / "o")
    x = ds_ip.xq[:1] * 10.0
    live.upsert([99_999], x, None)
    searcher = LiveSearcher(live)
    hit = searcher.search(x, SearchParams(k=1, nprobe=8, candidates=50))[0]
    assert searcher.external_ids(hit.ids[0]) == [99_999]
