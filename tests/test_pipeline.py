"""Ground truth and evaluation stages on the tiny config, in a private data/report folder."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from samrep.config import REPO_ROOT, load_params
from samrep.errors import SamrepError
from tests.folders import safe_rmtree


def write_params(tmp_path: Path, runs=None, **data) -> Path:
    """A copy of params/tiny.yaml with its own data and report folders (inside the repo)."""
    raw = yaml.safe_load((REPO_ROOT / "params/tiny.yaml").read_text())
    tag = f"pytest-{uuid.uuid4().hex[:8]}"
    raw["data"]["data_dir"] = f"data/{tag}"
    raw["report_dir"] = f"build/{tag}"
    raw["data"].update(data)
    if runs is not None:
        raw["runs"] = runs
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def params_path(tmp_path):
    path = write_params(tmp_path)
    yield path
    p = load_params(str(path))
    safe_rmtree(p.data_path)
    safe_rmtree(p.report_path)


def test_ground_truth_files_order_and_reuse(params_path, capfd):
    from samrep.groundtruth import load_ground_truth, run_ground_truth

    params = load_params(str(params_path))
    gt = run_ground_truth(params)
    manifest = json.loads((params.data_path / "manifest.json").read_text())
    assert manifest["areas"] == sorted(manifest["areas"])  # smallest first
    assert sorted(manifest["order"]) == [0, 1, 2]
    for i in range(3):
        m = torch.load(params.data_path / f"sam_gt_{i}.pt", weights_only=True)
        assert m.dtype == torch.bool and tuple(m.shape) == tuple(manifest["original_size"])
        assert int(m.sum()) == manifest["areas"][i]
        assert torch.equal(m, gt.masks[i])
    assert 0 < min(manifest["area_fractions"]) and max(manifest["area_fractions"]) < 1
    assert manifest["weights"]["synthetic"] is True
    capfd.readouterr()
    again = run_ground_truth(params)
    assert "ground truth: reusing" in capfd.readouterr().err
    assert torch.equal(again.masks, load_ground_truth(params).masks)


def test_evaluate_scores_and_reuses(params_path, capfd):
    from samrep.evaluate import run_evaluation
    from samrep.groundtruth import run_ground_truth

    params = load_params(str(params_path))
    run_ground_truth(params)
    records = run_evaluation(params)
    assert [r["key"] for r in records] == [r.key for r in params.runs]
    assert {r["key"]: r["status"] for r in records if r["status"] != "ok"} == {
        "infer-tensorrt-fp32-bs2": "not_run"  # no TensorRT on a CPU machine
    }
    records = [r for r in records if r["status"] == "ok"]
    for r in records:
        assert r["validity"]["valid"], r["validity"]
        m = r["metrics"]
        assert m["p_core"] > 0 and m["p_whole"] > 0 and m["p_core"] >= m["p_whole"]
        assert 0 < m["mfu"] < 1
        expected_images = (params.data.datasize // r["bs"]) * r["bs"] * params.data.repeat
        assert r["timing"]["images"] == expected_images == r["scores"]["images_scored"]
        assert r["weights"]["synthetic"] is True
        assert (params.report_path / "results" / r["masks_file"]).is_file()
    fp32 = [r for r in records if r["precision"] == "fp32"]
    # Same weights, same fp32 CPU math as the ground truth; only the batch layout and thread
    # scheduling differ (seen: 1 pixel of 307200 flipped in one mask).
    assert all(r["metrics"]["acc"] >= 0.9999 and r["metrics"]["iou"] >= 0.999 for r in fp32), [
        (r["key"], r["scores"]) for r in fp32
    ]
    bf16 = [r for r in records if r["precision"] == "bf16"]
    assert all(r["metrics"]["acc"] > 0.99 for r in bf16)
    capfd.readouterr()
    run_evaluation(params)
    err = capfd.readouterr().err
    assert err.count("reusing the result") == len(records)  # the ok rows; not-run rows rerun


def test_evaluate_without_ground_truth_is_an_error(params_path):
    from samrep.evaluate import run_evaluation

    with pytest.raises(SamrepError, match="ground truth missing"):
        run_evaluation(load_params(str(params_path)))


def test_ground_truth_of_wrong_shape_is_an_error(params_path):
    from samrep.groundtruth import load_ground_truth, run_ground_truth

    params = load_params(str(params_path))
    run_ground_truth(params)
    bad = params.data_path / "sam_gt_1.pt"
    torch.save(torch.zeros(10, 10, dtype=torch.bool), bad)
    with pytest.raises(SamrepError, match=r"sam_gt_1\.pt: expected a bool mask of shape"):
        load_ground_truth(params)
    torch.save(torch.zeros(600, 512, dtype=torch.float32), bad)
    with pytest.raises(SamrepError, match="torch.float32"):
        load_ground_truth(params)


def test_unavailable_backend_is_a_not_run_row(tmp_path):
    from samrep.evaluate import run_evaluation
    from samrep.groundtruth import run_ground_truth
    from samrep.tables import as_records, spec_table

    runs = [
        {"phase": "val", "backend": "torch", "precision": "fp32", "bs": 1},
        # TF32 is a CUDA math mode: the torch backend refuses it on the CPU.
        {"phase": "infer", "backend": "torch", "precision": "tf32", "bs": 1},
    ]
    params = load_params(str(write_params(tmp_path, runs=runs)))
    try:
        run_ground_truth(params)
        records = run_evaluation(params)
        assert records[0]["status"] == "ok"
        assert records[1]["status"] == "not_run" and "TF32" in records[1]["reason"]
        table, notes = spec_table(as_records(records))
        row = table[table.engine == "torch"].iloc[0]
        assert row.p_infer_core.startswith("not run<sup>") and "TF32" in notes[0]
    finally:
        safe_rmtree(params.data_path)
        safe_rmtree(params.report_path)


def test_report_for_a_gpu_config_on_this_cpu_says_what_is_missing():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    before = set((REPO_ROOT / "reports").rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "samrep", "report", "--hw", "a100"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "params/a100.yaml: needs a CUDA GPU (A100)" in lines[0]
    assert "this machine has none" in lines[0]
    assert set((REPO_ROOT / "reports").rglob("*")) == before  # nothing written


def test_missing_weights_without_synthetic_is_an_error(tmp_path):
    raw = yaml.safe_load(write_params(tmp_path).read_text())
    raw["model"].update(weights="facebook/sam-vit-huge", allow_synthetic=False, arch="vit_h")
    path = tmp_path / "noweights.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "samrep", "groundtruth", "--hw", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)},
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("samrep: error: weights 'facebook/sam-vit-huge' not available")
    assert "allow_synthetic is false" in last
    assert not (REPO_ROOT / raw["data"]["data_dir"] / "manifest.json").exists()


def test_records_of_rows_no_longer_configured_are_not_shown(params_path):
    from samrep.results import atomic_write_json, current_records, results_dir

    params = load_params(str(params_path))
    stale = {"schema": 1, "key": "val-torch-bf16-bs64", "status": "ok"}
    atomic_write_json(results_dir(params.report_path) / "val-torch-bf16-bs64.json", stale)
    assert current_records(params) == []  # nothing measured yet, and the stale row is hidden
