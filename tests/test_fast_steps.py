"""samrep.fast.steps on the CPU: steps 0 and 8 on the tiny config run and agree (timings
unchecked; 8 runs eagerly on the kernels' torch references)."""

import torch

from samrep.fast.steps import STEP_NAMES, _batched, optimisation_steps
from tests.conftest import sample_inputs, sensitive_tiny_sam

# fp32 low-res logits vs step 0: measured ~1.5e-6 (step 8)
STEP_ATOL_FP32 = 1e-5


def test_steps_on_cpu():
    pixel_values, points = sample_inputs(1)
    rows = optimisation_steps(
        sensitive_tiny_sam(0),
        pixel_values,
        points,
        bs=1,
        precision="fp32",
        device="cpu",
        iters=1,
        warmup=0,
        steps=(0, 3, 8, 10),
        score=lambda logits: {"acc": float(logits.shape[0]), "seen": tuple(logits.shape)},
    )
    # 3 is a removed step: skipped
    assert [r["step"] for r in rows] == [0, 8, 10]
    assert [r["name"] for r in rows] == [STEP_NAMES[i] for i in (0, 8, 10)]
    for row in rows[:2]:
        assert "error" not in row, row
        assert row["img_per_s"] > 0 and row["bs"] == 1 and row["compile_s"] == 0.0
        assert row["max_abs_diff"] <= STEP_ATOL_FP32 and row["mask_agreement"] >= 0.999
        # each measured step's last logits went through `score`, and its dict into the row
        assert row["seen"] == (1, 1, 3, 256, 256) and row["acc"] == 1.0
    assert "fused add+ln" in rows[1]["math_mode"]
    # a step that cannot run becomes an error row, not an exception
    assert "bf16 only" in rows[2]["error"]


def test_batched_slices_or_tiles():
    x = torch.arange(3).reshape(3, 1)
    assert _batched(x, 2).flatten().tolist() == [0, 1]
    assert _batched(x, 7).flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_steps_entry_point_scores_each_step(make_params):
    """`python -m samrep steps` (samrep.bench.steps) on the tiny params: steps.json holds each
    step's acc and IoU against the fp32 ground truth (fp32 on the CPU: the same masks)."""
    import json

    from samrep import stages
    from samrep.bench import steps

    params = make_params("steps")
    stages.groundtruth(params)
    steps(params, 1, "fp32", 1)
    saved = json.loads((params.report_path / "steps.json").read_text())
    assert [r["step"] for r in saved["steps"]] == [0, 8]
    for row in saved["steps"]:
        assert row["acc"] >= 0.999 and row["iou"] >= 0.99, row
