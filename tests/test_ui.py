"""The web page at /ui, driven in Debian's chromium by Playwright: the rows it shows carry
exactly the ids that ``POST /search`` returns for the same parameters, the generation it
shows is the manifest's and follows a hot reload, and a bad input shows the API's message.

The browser is the system's (``/usr/bin/chromium``; ``playwright install`` cannot download
one here). ``scripts/test.sh`` installs it and sets ``EBR_REQUIRE_BROWSER=1``, so in CI a
missing browser fails these tests instead of skipping them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import served, wait_for

from ebr.client import Client
from ebr.index.reader import open_index
from ebr.index.writer import write_index
from ebr.metric import Metric
from ebr.spec import BuildParams, IndexSpec

CHROMIUM = os.environ.get("EBR_CHROMIUM", "/usr/bin/chromium")
ADMIN, READ = "admin-key-0123456789", "read-key-0123456789"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
D = 16


def _missing(what: str) -> None:
    if os.environ.get("EBR_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} (scripts/test.sh installs it)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed")
    if not Path(CHROMIUM).exists():
        _missing(f"no browser at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _build(path: Path, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2000, D)).astype(np.float32)
    payloads = [(i, {"title": f"doc {i}", "text": "lorem ipsum " * (i % 5),
                     "lang": ["en", "de"][i % 2]}) for i in range(2000)]
    write_index(path, x, BuildParams(spec=IndexSpec.parse("IVF16,PQ4"), metric=Metric.IP,
                                     kmeans_niter=5, seed=seed),
                payloads=payloads, index_fields={"lang": "keyword"}, overwrite=True)
    return x


@pytest.fixture()
def page_on_server(browser, tmp_path: Path):
    x = _build(tmp_path / "idx", 0)
    with served(tmp_path / "idx", tmp_path / "log", admin_keys=ADMIN,
                api_keys=READ) as (url, _):
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/ui/")
        page.get_by_test_id("api-key").fill(ADMIN)
        page.get_by_test_id("api-key").dispatch_event("change")
        yield page, url, x, tmp_path
        assert errors == []  # no script error on the page
        page.close()


def _search_in_page(page, vector: list[float], k: int, nprobe: int, candidates: int) -> None:
    page.get_by_test_id("query").fill(str(vector))
    page.get_by_test_id("k").fill(str(k))
    page.get_by_test_id("nprobe").fill(str(nprobe))
    page.get_by_test_id("candidates").fill(str(candidates))
    page.get_by_test_id("search").click()


def test_rows_shown_are_the_ids_search_returns(page_on_server) -> None:
    page, url, x, _ = page_on_server
    with Client(url, api_key=ADMIN) as c:
        for i, (k, nprobe, cand) in enumerate([(10, 4, 50), (5, 1, 5), (20, 16, 200)]):
            q = (x[i] + 0.3 * x[i + 1]).round(4).tolist()
            _search_in_page(page, q, k, nprobe, cand)
            page.wait_for_function(
                "n => document.querySelectorAll('[data-testid=hit]').length === n", arg=k)
            shown = [int(t) for t in page.get_by_test_id("hit-id").all_inner_texts()]
            want = c.search(q, k=k, nprobe=nprobe, candidates=cand)
            assert shown == want.ids
            stats = page.get_by_test_id("stats").inner_text()
            assert f"nprobe {nprobe}" in stats and "re-rank" in stats
        # the coarse rank column shows what the re-rank changed
        ranks = page.locator("[data-testid=hit] td:nth-child(5)").all_inner_texts()
        assert all(r.split()[0].isdigit() for r in ranks)
        assert "doc " in page.locator("[data-testid=hit] td.payload").first.inner_text()
        # a filter on a declared field
        page.get_by_test_id("filter").fill('{"must": [{"key": "lang", "match": {"value": "de"}}]}')
        _search_in_page(page, x[0].round(4).tolist(), 5, 4, 50)
        page.wait_for_function("() => document.querySelector('[data-testid=stats]')"
                               ".textContent.includes('match the filter')")
        shown = [int(t) for t in page.get_by_test_id("hit-id").all_inner_texts()]
        assert len(shown) == 5 and all(i % 2 == 1 for i in shown)
        assert shown == c.search(x[0].round(4).tolist(), k=5, nprobe=4, candidates=50,
                                 filter={"must": [{"key": "lang",
                                                   "match": {"value": "de"}}]}).ids


def test_generation_matches_the_manifest_and_follows_a_reload(page_on_server) -> None:
    page, url, _, tmp_path = page_on_server
    m = open_index(tmp_path / "idx").manifest
    page.wait_for_function("() => document.querySelector('[data-testid=manifest-sha256]')")
    assert page.get_by_test_id("manifest-sha256").inner_text() == m.digest()
    assert page.get_by_test_id("spec").inner_text() == "IVF16,PQ4"
    assert page.get_by_test_id("count").inner_text() == "2,000"
    first = page.get_by_test_id("index-version").inner_text()
    assert first.endswith(m.files["coarse.index"].sha256[:12])
    assert page.get_by_test_id("generation").inner_text().startswith("generation 1 ")
    _build(tmp_path / "idx", 1)  # a new build published in place; the server reloads it
    with Client(url, api_key=ADMIN) as c:
        assert wait_for(lambda: c.index_info().generation == 2, 20)
    m2 = open_index(tmp_path / "idx").manifest
    page.wait_for_function("() => document.querySelector('[data-testid=generation]')"
                           ".textContent.startsWith('generation 2 ')", timeout=10_000)
    page.wait_for_function(
        "d => document.querySelector('[data-testid=manifest-sha256]').textContent === d",
        arg=m2.digest(), timeout=10_000)
    assert page.get_by_test_id("index-version").inner_text() != first


def test_bad_input_shows_the_api_error(page_on_server) -> None:
    page, url, x, _ = page_on_server
    _search_in_page(page, [1.0, 2.0, 3.0], 10, 4, 50)
    err = page.get_by_test_id("error")
    err.wait_for(state="visible")
    assert "422" in err.inner_text() and "dimension 3 does not match" in err.inner_text()
    _search_in_page(page, x[0].tolist(), 10, 999, 50)  # nprobe past nlist: the API's words
    page.wait_for_function("() => document.querySelector('[data-testid=error]')"
                           ".textContent.includes('nprobe')")
    assert "params.nprobe" in err.inner_text()
    page.get_by_test_id("filter").fill('{"must": [{"key": "year", "match": {"value": 1}}]}')
    _search_in_page(page, x[0].tolist(), 10, 4, 50)
    page.wait_for_function("() => document.querySelector('[data-testid=error]')"
                           ".textContent.includes('not a filterable field')")
    page.get_by_test_id("api-key").fill("wrong-key-0123456789")
    page.get_by_test_id("api-key").dispatch_event("change")
    page.get_by_test_id("filter").fill("")
    _search_in_page(page, x[0].tolist(), 10, 4, 50)
    page.wait_for_function("() => document.querySelector('[data-testid=error]')"
                           ".textContent.includes('403')")
    assert page.get_by_test_id("hit").count() == 0


def test_more_like_this_and_recall_panel(page_on_server) -> None:
    page, url, x, tmp_path = page_on_server
    page.check("input[name=mode][value=like]")
    page.get_by_test_id("query").fill("17")
    page.get_by_test_id("exact").check()
    page.get_by_test_id("k").fill("3")
    page.get_by_test_id("search").click()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=hit]').length === 3")
    with Client(url, api_key=ADMIN) as c:
        assert [int(t) for t in page.get_by_test_id("hit-id").all_inner_texts()] == \
            c.search(x[17], k=3, exact=True).ids
    page.get_by_test_id("measure").click()
    page.get_by_test_id("recall").wait_for(state="visible", timeout=30_000)
    rows = page.locator("[data-testid=recall] tbody tr").all_inner_texts()
    assert len(rows) >= 3
    recalls = [float(r.split("\t")[2]) for r in rows]
    assert recalls[-1] >= recalls[0] and recalls[-1] > 0.5  # more lists, more recall
    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("EBR_UI_SCREENSHOT"):
        shutil.copy(shot, os.environ["EBR_UI_SCREENSHOT"])
