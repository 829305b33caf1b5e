"""A faster SAM image encoder with the math of transformers' SamModel (`build_fast_sam`); the
optimisation steps measured one on top of the other: `steps.optimisation_steps`."""

from samrep.fast.model import DTYPES, FastSam, build_fast_sam, converted_copy

__all__ = ["DTYPES", "FastSam", "build_fast_sam", "converted_copy"]
