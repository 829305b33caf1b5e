"""Failures become rows: a backend that fails mid-run (out of memory, a failed build), a missing
toolkit and a notebook that raises are recorded with their reason and stage; the summary still
renders, and the run exits non-zero naming what failed.

Faults are injected with the test hook SAMREP_TEST_FAIL_AT (samrep.faults).
"""

from __future__ import annotations

import pytest

from tests.test_resume import ROW2, Run, cleanup, make_params

VAL_FP32 = "val-torch-fp32-bs2"
VAL_BF16 = "val-torch-bf16-bs2"
TRT = "infer-tensorrt-fp32-bs2"
RUNS = [
    {"phase": "val", "backend": "torch", "precision": "fp32", "bs": 2},
    {"phase": "infer", "backend": "torch", "precision": "fp32", "bs": 2},
    {"phase": "val", "backend": "torch", "precision": "bf16", "bs": 2},
    {"phase": "infer", "backend": "tensorrt", "precision": "fp32", "bs": 2},
]


@pytest.fixture
def params(tmp_path):
    from samrep.groundtruth import run_ground_truth

    p = make_params(tmp_path, runs=RUNS)
    run_ground_truth(p)
    yield p
    cleanup(p)


def test_backend_failing_mid_run_is_a_failed_row_and_the_summary_shows_it(
    params, monkeypatch, capfd
):
    from samrep.evaluate import run_evaluation
    from samrep.results import load_records
    from samrep.tables import as_records, math_table, spec_table

    monkeypatch.setenv(
        "SAMREP_TEST_FAIL_AT", f"evaluate:measure:{ROW2}=oom,evaluate:build:{VAL_BF16}"
    )
    records = {r["key"]: r for r in run_evaluation(params)}
    assert records[VAL_FP32]["status"] == "ok"
    oom = records[ROW2]
    assert oom["status"] == "failed" and oom["failed_stage"] == "measure"
    assert oom["reason"].startswith("out of memory at bs 2 (OutOfMemoryError: CUDA out of memory")
    build = records[VAL_BF16]
    assert build["status"] == "failed" and build["failed_stage"] == "build"
    assert "InjectedFault" in build["reason"]
    missing = records[TRT]
    assert missing["status"] == "not_run" and missing["failed_stage"] == "check"
    assert "TensorRT" in missing["reason"]

    # The summary renders: failed rows in their place with their reason, the others intact.
    on_disk = load_records(params.report_path)
    table, notes = spec_table(as_records(on_disk))
    table = table.set_index("engine")
    torch_row = table.loc["torch"]
    assert torch_row.p_infer_core.startswith("failed<sup>") and float(torch_row.p_val_core) > 0
    assert any(n.startswith(f"{ROW2} (measure): out of memory at bs 2") for n in notes), notes
    assert table.loc["tensorrt"].p_infer_core.startswith("not run<sup>")
    assert any("TensorRT" in n for n in notes) and float(table.loc["tensorrt"].p_val_core) > 0
    assert table.loc["HF eager (val only)"].p_val_core.startswith("failed<sup>")
    assert any(n.startswith(f"{VAL_BF16} (build): InjectedFault") for n in notes), notes
    rows = math_table(as_records(on_disk)).set_index("row")
    assert rows.loc[VAL_FP32, "status"] == "ok" and rows.loc[ROW2, "status"].startswith("failed")

    # Run again without the faults: the ok row is reused, the failed ones are measured again.
    monkeypatch.delenv("SAMREP_TEST_FAIL_AT")
    capfd.readouterr()
    again = {r["key"]: r for r in run_evaluation(params)}
    err = capfd.readouterr().err
    assert f"{VAL_FP32}: reusing" in err and f"{ROW2}: reusing" not in err
    assert again[ROW2]["status"] == again[VAL_BF16]["status"] == "ok"


def test_cli_evaluate_exits_1_and_names_the_failed_rows(params, tmp_path):
    run = Run(
        ["evaluate", "--hw", str(tmp_path / "tiny.yaml"), "--only", VAL_FP32, ROW2],
        fail_at=f"evaluate:measure:{ROW2}",
    )
    assert run.finish() == 1, run.err
    assert run.lines[-1] == f"samrep: failed rows: {ROW2}", run.err
    assert f"{ROW2}: FAILED in measure: InjectedFault" in run.err
    assert (params.report_path / "results" / f"{VAL_FP32}.json").is_file()


def test_report_with_a_notebook_that_raises_renders_and_exits_1(
    params, tmp_path, monkeypatch, capsys
):
    """04_evaluate raises after a row failed; the summary still renders both rows."""
    from samrep import pipeline
    from samrep.cli import main

    monkeypatch.setattr(pipeline, "CHAIN", ("04_evaluate", "99_summary"))
    monkeypatch.setenv("SAMREP_TEST_FAIL_AT", f"evaluate:measure:{ROW2}=oom,evaluate:saved:{ROW2}")
    rc = main(["report", "--hw", str(tmp_path / "tiny.yaml")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        f"samrep: report rendered; failed rows: {ROW2}; failed stages: 04_evaluate (notebook "
        "04_evaluate failed (InjectedFault"
    ), err[-1]
    html = (params.report_path / "index.html").read_text()
    assert "Stage 04_evaluate failed" in html
    assert f"{ROW2} (measure): out of memory at bs 2" in html
    stage = (params.report_path / "stages" / "04_evaluate.json").read_text()
    assert '"status": "failed"' in stage


def test_summary_that_raises_renders_its_failed_copy(tmp_path, monkeypatch):
    """The summary notebook raises half-way; its executed part is still the page."""
    from samrep import pipeline

    params = make_params(tmp_path, runs=RUNS[:1])
    try:
        monkeypatch.setattr(pipeline, "CHAIN", ("99_summary",))
        monkeypatch.setenv("SAMREP_TEST_FAIL_AT", "summary:masks")
        outcome = pipeline.run_report(str(tmp_path / "tiny.yaml"))
        assert list(outcome.failed_stages) == ["99_summary"] and outcome.failed
        assert "InjectedFault" in outcome.failed_stages["99_summary"]
        html = outcome.page.read_text()
        assert outcome.page == params.report_path / "index.html"
        assert "Headline: the fastest engine per precision" in html
        assert (params.report_path / "99_summary.failed.ipynb").is_file()
    finally:
        cleanup(params)


def test_report_names_every_commit_of_its_rows():
    from samrep.record import Record, Row
    from samrep.tables import commits

    def rec(commit):
        row = Row(phase="val", backend="torch", precision="fp32", bs=1)
        return Record(hw="x", key="k", row=row, status="ok", environment={"git_commit": commit})

    assert commits([rec("aaa"), rec("aaa")]) == "aaa"
    assert commits([]) == "unknown"
    assert commits([rec("aaa"), rec("bbb"), rec("aaa")]) == "aaa (2 rows), bbb (1 row)"
