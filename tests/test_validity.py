"""Validity checks in every result (samrep.validity) and run-to-run spread (repeats)."""

from __future__ import annotations

import re
import shutil
import uuid

import pytest
import torch
import yaml

from samrep.cli import main
from samrep.config import REPO_ROOT, load_params
from tests.folders import safe_rmtree

ROW = "val-torch-fp32-bs2"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One tiny ground truth shared by the tests of this module (each has its own report)."""
    from samrep.groundtruth import run_ground_truth

    tag = f"pytest-{uuid.uuid4().hex[:8]}"
    run_ground_truth(load_params(str(params_file(tmp_path_factory.mktemp("gt"), f"data/{tag}"))))
    yield f"data/{tag}"
    safe_rmtree(REPO_ROOT / "data" / tag)


def params_file(tmp_path, data_dir: str, **data):
    raw = yaml.safe_load((REPO_ROOT / "params/tiny.yaml").read_text())
    raw["data"]["data_dir"] = data_dir
    raw["report_dir"] = f"build/pytest-{uuid.uuid4().hex[:8]}"
    raw["data"].update(data)
    raw["runs"] = [{"phase": "val", "backend": "torch", "precision": "fp32", "bs": 2}]
    path = tmp_path / f"{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def make(tmp_path, data_dir):
    """make(**data) -> params with the shared ground truth and a report folder of their own."""
    made = []

    def _make(data_dir=data_dir, **data):
        params = load_params(str(params_file(tmp_path, data_dir, **data)))
        made.append(params)
        return params

    yield _make
    for p in made:
        safe_rmtree(p.report_path)


def evaluate(params) -> dict:
    from samrep.evaluate import run_evaluation

    (record,) = run_evaluation(params)
    assert record["status"] == "ok", record.get("reason")
    return record


def test_every_result_carries_its_validity_checks(make):
    record = evaluate(make())
    validity = record["validity"]
    assert validity["valid"] is True
    checks = validity["checks"]
    assert set(checks) == {
        "iterations",
        "seconds",
        "warmup_excluded",
        "device_idle",
        "clock",
        "ground_truth_hash",
        "weights_hash",
    }
    assert checks["iterations"]["value"] == 4 and checks["iterations"]["required"] == 4
    assert checks["seconds"]["value"] == pytest.approx(record["timing"]["core_s"])
    assert checks["warmup_excluded"]["ok"] and checks["warmup_excluded"]["value"] == 1
    cpu = checks["device_idle"]
    assert cpu["ok"] is None and "informational" in cpu["detail"] and cpu["load1"] is not None
    assert checks["clock"]["ok"] and checks["clock"]["clock"] == "time.perf_counter"
    assert checks["ground_truth_hash"]["ok"] and checks["weights_hash"]["ok"]


def test_a_result_failing_checks_is_kept_and_marked_invalid(make):
    from samrep.tables import as_records, details_table, spec_table

    params = make(min_iterations=100, min_seconds=1000, warmup=0)
    record = evaluate(params)
    assert record["status"] == "ok" and record["metrics"]["p_core"] > 0  # kept, not dropped
    assert record["validity"]["valid"] is False
    failed = {k for k, c in record["validity"]["checks"].items() if c["ok"] is False}
    assert failed == {"iterations", "seconds", "warmup_excluded"}
    table, notes = spec_table(as_records([record]))
    assert "<sup>" in table.iloc[0]["engine"]
    assert f"{ROW}: measurement invalid (iterations, seconds, warmup_excluded)" in notes
    assert details_table(as_records([record])).iloc[0]["valid"] == "no"


def test_ground_truth_changed_after_its_manifest_makes_results_invalid(make, data_dir, tmp_path):
    tag = f"pytest-{uuid.uuid4().hex[:8]}"
    shutil.copytree(REPO_ROOT / data_dir, REPO_ROOT / "data" / tag)
    try:
        mask = torch.load(REPO_ROOT / "data" / tag / "sam_gt_0.pt", weights_only=True)
        mask[0, 0] = ~mask[0, 0]  # same dtype and shape: only the hash tells
        torch.save(mask, REPO_ROOT / "data" / tag / "sam_gt_0.pt")
        record = evaluate(make(data_dir=f"data/{tag}"))
        check = record["validity"]["checks"]["ground_truth_hash"]
        assert check["ok"] is False and "sam_gt_0.pt" in check["detail"]
        assert record["validity"]["valid"] is False
    finally:
        safe_rmtree(REPO_ROOT / "data" / tag)


def test_weights_other_than_the_manifests_make_a_result_invalid(make):
    from samrep.config import RunParams
    from samrep.evaluate import evaluate_row
    from samrep.groundtruth import load_ground_truth, load_params_model

    params = make()
    model, _ = load_params_model(params)
    gt = load_ground_truth(params)
    record = evaluate_row(params, RunParams("torch", "fp32", 2, "val"), gt, model, 0.0, "0" * 64)
    assert record["validity"]["checks"]["weights_hash"]["ok"] is False
    assert record["validity"]["valid"] is False


def test_repeats_report_median_and_min_max(make):
    from samrep.tables import as_records, spec_table

    record = evaluate(make(measure_repeats=3))
    rep = record["metrics"]["p_core_repeats"]
    assert rep["n"] == 3 and len(rep["values"]) == 3 and len(record["timing"]["repeats"]) == 3
    assert rep["min"] <= rep["median"] == record["metrics"]["p_core"] <= rep["max"]
    assert record["timing"]["images"] == 8  # one measurement's images (4 batches of 2)
    cell = spec_table(as_records([record]))[0].iloc[0]["p_val_core"]
    assert re.fullmatch(r"\d+\.\d+ \[\d+\.\d+-\d+\.\d+\]", cell), cell


def test_bench_repeats_prints_the_spread_and_keeps_the_record(make, capfd):
    import json

    params = make()
    argv = ["bench", "--hw", params.path, "--backend", "torch", "--precision", "fp32", "--bs", "2"]
    assert main([*argv, "--repeats", "2"]) == 0
    out = capfd.readouterr().out
    assert re.search(r"p_infer_core \d+\.\d\d img/s \(median of 2 repeats, min-max ", out), out
    record = json.loads((params.report_path / "bench" / "infer-torch-fp32-bs2.json").read_text())
    assert record["metrics"]["p_core_repeats"]["n"] == 2 and record["validity"]["valid"]
    assert main([*argv, "--repeats", "0"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["samrep: error: --repeats: must be >= 1, got 0"]
