"""The whole `make report HW=tiny` path: papermill notebooks, nbconvert HTML."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from samrep.config import REPO_ROOT, load_params
from tests.browser import Chromium, find_chromium

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium not found: `apt-get install chromium` (make test tries) or set SAMREP_CHROMIUM",
)


@pytest.fixture(scope="module")
def tiny_report():
    params = load_params("tiny")
    proc = subprocess.run(
        ["make", "report", "HW=tiny", f"PY={sys.executable}", "SETUP=", "FORCE=1"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return params, proc


def test_report_html_has_the_metrics_table_and_figures(tiny_report):
    params, proc = tiny_report
    # Progress: one line per stage reaches the terminal.
    for stage in ("notebook 01_ground_truth", "notebook 04_evaluate", "notebook 99_summary"):
        assert stage in proc.stderr
    html = (params.report_path / "index.html").read_text()
    tables = re.findall(r"<table.*?</table>", html, re.S)
    metrics = next(t for t in tables if "p_val_whole" in t)
    header = re.search(r"<thead>.*?</thead>", metrics, re.S).group(0)
    for col in ("p_val_whole", "p_val_core", "p_infer_core", "MFU", "acc", "mem", "e2e_time"):
        assert col in header
    # The first table's first data row carries numbers for the val columns.
    first_row = re.search(r"<tbody>\s*<tr>(.*?)</tr>", metrics, re.S).group(1)
    cells = [
        re.sub(r"<[^>]+>", "", c).strip()
        for c in re.findall(r"<td[^>]*>(.*?)</td>", first_row, re.S)
    ]
    numeric = [c for c in cells if re.fullmatch(r"\d+(\.\d+)?%?", c)]
    assert len(numeric) >= 4, cells
    assert "not run: no engine configured" in html
    # Figures embedded: throughput/memory + one mask figure per ok row.
    from samrep.results import load_records

    records = load_records(params.report_path)
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) >= 3 and {r["phase"] for r in ok} == {"val", "infer"}
    assert html.count("data:image/png;base64,") >= 1 + len(ok)
    # A toolkit this machine lacks is a "not run" row with its reason, never a number.
    assert "not run: TensorRT Python package not installed" in html
    assert "synthetic weights" in html.lower()
    assert "grace_hopper.jpg" in html  # which image was used is said
    assert "import samrep" not in html and "load_params(" not in html  # code hidden
    # Opens offline: nothing loaded from a CDN (nbconvert's require.js, MathJax, mermaid...).
    assert "<script src=" not in html and "cdnjs" not in html
    assert (REPO_ROOT / "reports" / "index.html").is_file()


def test_explore_masks_notebook_runs(tiny_report, tmp_path):
    import papermill

    out = tmp_path / "explore.ipynb"
    papermill.execute_notebook(
        str(REPO_ROOT / "notebooks/explore_masks.ipynb"),
        str(out),
        parameters={"hw": "tiny", "row": ""},
        kernel_name="python3",
        progress_bar=False,
        cwd=str(REPO_ROOT),
    )
    assert out.read_text().count("image/png") >= 2


@needs_chromium
def test_report_html_in_a_browser(tiny_report):
    """reports/tiny/index.html in headless Chromium from file://: no errors, no network,
    the metrics table shown, every figure decoded and drawn."""
    from samrep.results import load_records

    params, _ = tiny_report
    ok = [r for r in load_records(params.report_path) if r["status"] == "ok"]
    shot = REPO_ROOT / "test-artifacts" / "report-tiny.png"
    with Chromium() as browser:
        page = browser.check_page(params.report_path / "index.html", screenshot=shot)
    print(f"\n{page.summary()}\nscreenshot: {shot}")
    assert page.errors() == []
    assert page.outside_requests == []
    assert page.metrics_table is not None, [t["header"] for t in page.tables]
    assert page.metrics_table["rows"] >= 3
    assert len(page.images) >= 1 + len(ok)
    assert page.broken_images == []
    assert page.problems(min_images=1 + len(ok)) == []
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_chromium
def test_browser_check_catches_a_broken_page(tmp_path):
    """The checker itself: a page with a broken image, a JS error, a console.error and a
    script from the network must be reported as such."""
    page_file = tmp_path / "broken.html"
    page_file.write_text(
        # TEST-NET-1 (RFC 5737): never routed; the driver blocks http anyway.
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<script src='http://192.0.2.1/lib.js'></script></head><body>"
        "<img src='missing.png' width='10' height='10'>"
        "<script>console.error('boom from console'); undefinedFunctionCall();</script>"
        "</body></html>"
    )
    with Chromium() as browser:
        page = browser.check_page(page_file)
    assert any("missing.png" in i["src"] for i in page.broken_images), page.images
    assert any("undefinedFunctionCall" in e for e in page.exceptions), page.exceptions
    assert any("boom from console" in e for e in page.console_errors), page.console_errors
    assert "http://192.0.2.1/lib.js" in page.outside_requests, page.requests
    assert any("missing.png" in f for f in page.failed_loads), page.failed_loads
    problems = page.problems()
    assert any("no visible table" in p for p in problems)
    assert any("image not decoded" in p for p in problems)
