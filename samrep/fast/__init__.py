"""A faster SAM image encoder with the exact math of transformers' SamModel (see model.py)."""

from samrep.fast.attention import FastVisionAttention
from samrep.fast.model import DTYPES, FastSam, build_fast_sam, converted_copy
from samrep.fast.relpos import cache_hf_rel_pos_index_

__all__ = [
    "DTYPES",
    "FastSam",
    "FastVisionAttention",
    "build_fast_sam",
    "cache_hf_rel_pos_index_",
    "converted_copy",
]
