"""samrep.fast.steps on the CPU: steps 0-2 on the tiny config run and agree (timings unchecked)."""

from __future__ import annotations

import torch

from samrep.fast.steps import STEP_NAMES, _batched, optimisation_steps
from samrep.fast.testing import sample_inputs, sensitive_tiny_sam

# fp32 low-res logits vs step 0: measured 0 (step 1: same gathered values), ~1.5e-6 (step 2)
STEP_ATOL_FP32 = 1e-5


def test_steps_0_to_2_on_cpu():
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
        steps=(0, 1, 2, 4),
    )
    assert [r["step"] for r in rows] == [0, 1, 2, 4]
    assert [r["name"] for r in rows] == [STEP_NAMES[i] for i in (0, 1, 2, 4)]
    for row in rows[:3]:
        assert "error" not in row, row
        assert row["img_per_s"] > 0 and row["bs"] == 1 and row["compile_s"] == 0.0
        assert row["max_abs_diff"] <= STEP_ATOL_FP32 and row["mask_agreement"] >= 0.999
    assert rows[1]["max_abs_diff"] == 0.0
    # a step that cannot run becomes an error row, not an exception
    assert "CUDA" in rows[3]["error"]


def test_batched_slices_or_tiles():
    x = torch.arange(3).reshape(3, 1)
    assert _batched(x, 2).flatten().tolist() == [0, 1]
    assert _batched(x, 7).flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]
