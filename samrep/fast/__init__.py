"""A faster SAM image encoder with the math of transformers' SamModel (model.py, fused.py).

build_fast_sam(model, ...) -> FastSam; optimisation_steps(...) in steps.py measures the
optimisations one on top of the other.
"""

from samrep.fast.model import DTYPES, FastSam, build_fast_sam, converted_copy

__all__ = ["DTYPES", "FastSam", "build_fast_sam", "converted_copy"]
