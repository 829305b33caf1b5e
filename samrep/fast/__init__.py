"""A faster SAM image encoder with the exact math of transformers' SamModel (see model.py).

build_fast_sam(model, precision=..., attention=..., fp8_linear=...) -> FastSam, whose
forward(pixel_values, input_points) returns (low-res mask logits, iou scores) in float32.
optimisation_steps(...) measures the optimisations one on top of the other (steps.py).
"""

from samrep.fast.attention import FastVisionAttention
from samrep.fast.model import DTYPES, FastSam, build_fast_sam, converted_copy
from samrep.fast.relpos import cache_hf_rel_pos_index_
from samrep.fast.steps import STEP_NAMES, optimisation_steps

__all__ = [
    "DTYPES",
    "STEP_NAMES",
    "FastSam",
    "FastVisionAttention",
    "build_fast_sam",
    "cache_hf_rel_pos_index_",
    "converted_copy",
    "optimisation_steps",
]
