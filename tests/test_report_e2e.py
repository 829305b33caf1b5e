"""The whole `make report HW=tiny` path: papermill notebooks, nbconvert HTML."""

import re
import subprocess
import sys

import pytest

from samrep.config import REPO_ROOT, load_params
from tests.browser import check_page, find_chromium

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium not found: `apt-get install chromium` (make test tries) or set SAMREP_CHROMIUM",
)


@pytest.fixture(scope="module")
def tiny_report():
    params = load_params("tiny")
    index = REPO_ROOT / "reports" / "index.html"
    committed = index.read_bytes() if index.is_file() else None  # the report rewrites it
    proc = subprocess.run(
        ["make", "report", "HW=tiny", f"PY={sys.executable}", "SETUP=", "FORCE=1"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
    )
    listed = index.read_text() if index.is_file() else ""
    if committed is not None:
        index.write_bytes(committed)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tiny/index.html" in listed  # the index lists the new report
    return params, proc


def test_report_html_has_the_metrics_table_and_figures(tiny_report):
    params, proc = tiny_report
    # Progress: one line per stage reaches the terminal.
    for stage in ("notebook 01_ground_truth", "notebook 04_evaluate", "notebook 99_summary"):
        assert stage in proc.stderr
    html = (params.report_path / "index.html").read_text()
    assert "<title>samrep report: tiny</title>" in html
    tables = re.findall(r"<table.*?</table>", html, re.S)
    metrics = next(t for t in tables if "p_val_whole" in t)
    header = re.search(r"<thead>.*?</thead>", metrics, re.S).group(0)
    for col in ("p_val_whole", "p_val_core", "p_infer_core", "MFU", "acc", "mem", "e2e_time"):
        assert col in header
    first_row = re.search(r"<tbody>\s*<tr>(.*?)</tr>", metrics, re.S).group(1)
    cells = [
        re.sub(r"<[^>]+>", "", c).strip()
        for c in re.findall(r"<td[^>]*>(.*?)</td>", first_row, re.S)
    ]
    assert len([c for c in cells if re.fullmatch(r"\d+(\.\d+)?%?", c)]) >= 4, cells
    assert "Headline: the fastest engine per precision" in html
    # A toolkit this machine lacks is a "not run" row with its reason (a footnote), never a number.
    assert "TensorRT Python package not installed" in html
    assert "synthetic weights" in html.lower() and "grace_hopper.jpg" in html
    assert "data:image/png;base64," in html and "data:image/jpeg;base64," in html
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
    assert out.read_text().count("image/png") >= 1  # the masks figure


@needs_chromium
def test_report_html_in_a_browser(tiny_report):
    """reports/tiny/index.html in headless Chromium at 1280 px: nothing wrong a reader would see."""
    params, _ = tiny_report
    shot = REPO_ROOT / "test-artifacts" / "report-tiny.png"
    page = check_page(params.report_path / "index.html", screenshot=shot)
    assert page.problems(min_images=2, min_tables=4) == []
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
