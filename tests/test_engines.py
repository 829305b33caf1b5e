"""Export and build stages on the tiny config: artifacts made once, reused, and not-run rows."""

import json

import pytest

from samrep.config import load_params
from tests.folders import safe_rmtree
from tests.test_pipeline import write_params

RUNS = [
    {"phase": "val", "backend": "torch", "precision": "fp32", "bs": 1},
    {"phase": "infer", "backend": "onnxruntime", "precision": "fp32", "bs": 2},
    {"phase": "infer", "backend": "tensorrt", "precision": "fp32", "bs": 2},
    {"phase": "infer", "backend": "torch", "precision": "fp32", "bs": 2},
]


@pytest.fixture
def params(tmp_path):
    from samrep.groundtruth import run_ground_truth

    p = load_params(str(write_params(tmp_path, runs=RUNS)))
    run_ground_truth(p)
    yield p
    safe_rmtree(p.data_path)
    safe_rmtree(p.report_path)


def test_export_stage_makes_then_reuses_and_reports_not_run(params):
    from samrep.engines import export_stage

    first = {e["row"]: e for e in export_stage(params)}
    # Only backends that build from ONNX take part; the torch infer row does not.
    assert set(first) == {"infer-onnxruntime-fp32-bs2", "infer-tensorrt-fp32-bs2"}
    ort = first["infer-onnxruntime-fp32-bs2"]
    assert (
        ort["status"] == "ok" and ort["reused"] is False and ort["graphs"] == ["decoder", "encoder"]
    )
    assert max(v for g in ort["max_abs_diff"].values() for v in g.values()) < 1e-4
    trt = first["infer-tensorrt-fp32-bs2"]
    assert trt["status"] == "not_run" and "TensorRT" in trt["reason"]
    second = {e["row"]: e for e in export_stage(params)}
    assert second["infer-onnxruntime-fp32-bs2"]["reused"] is True
    assert second["infer-onnxruntime-fp32-bs2"]["folder"] == ort["folder"]
    on_disk = json.loads((params.report_path / "export.json").read_text())
    assert [e["row"] for e in on_disk["rows"]] == [e["row"] for e in second.values()]


def test_build_stage_builds_persistent_engines_only(params):
    from samrep.engines import build_stage

    entries = {e["row"]: e for e in build_stage(params)}
    assert set(entries) == {"infer-onnxruntime-fp32-bs2", "infer-tensorrt-fp32-bs2"}
    assert entries["infer-onnxruntime-fp32-bs2"]["status"] == "ok"
    assert entries["infer-onnxruntime-fp32-bs2"]["math_mode"] == "fp32"
    assert entries["infer-tensorrt-fp32-bs2"]["status"] == "not_run"
