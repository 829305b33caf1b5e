"""samrep.fast.fp8: quantization math and layouts on the CPU (the real path is CUDA-only)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from samrep.fast import build_fast_sam
from samrep.fast.fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    GRANULARITIES,
    Fp8Linear,
    dequantize,
    fp8_linear,
    fp8_linear_emulated,
    quantize,
    swap_linears_to_fp8_,
)
from samrep.fast.testing import sensitive_tiny_sam

# e4m3 has 3 mantissa bits: round-to-nearest relative error <= 2^-4 for normal values.
# Values below the smallest normal (2^-6 of the scale unit) have absolute error <= 2^-10 units.
E4M3_REL_ERR = 2.0**-4
# fp8 x fp8 linear vs fp32 (K=256, unit inputs, 1/sqrt(K) weights): measured relative
# Frobenius error 0.018 for both granularities (about two independent 2^-4/sqrt(3) roundings).
LINEAR_REL_ERR = 0.04
# CPU `torch._scaled_mm` (bf16 out) vs the fp32 emulation: measured max 0.017 on outputs ~4.6,
# i.e. bf16 output rounding (ulp 0.03 at 4.6).
REAL_VS_EMULATED_ATOL = 0.05


def _linear(k: int = 256, n: int = 384, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.normal_(0, k**-0.5)
        lin.bias.normal_()
    return lin.bfloat16()


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_quantize_roundtrip_error(granularity):
    x = torch.randn(64, 128) * torch.logspace(-3, 3, 64)[:, None]  # rows of very different size
    x8, scale = quantize(x, granularity)
    assert x8.dtype == FP8_DTYPE
    assert scale.shape == ((64, 1) if granularity == "rowwise" else (1, 1))
    assert x8.float().abs().max() <= FP8_MAX
    err = (dequantize(x8, scale) - x).abs()
    bound = E4M3_REL_ERR * x.abs() + scale * 2.0**-9  # relative + subnormal absolute
    assert (err <= bound * 1.0001).all()
    if granularity == "rowwise":  # every row uses the full e4m3 range
        torch.testing.assert_close(x8.float().abs().amax(1), torch.full((64,), FP8_MAX))


def test_quantize_zero_rows_are_finite():
    x8, scale = quantize(torch.zeros(4, 32))
    assert torch.isfinite(scale).all() and (x8.float() == 0).all()


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_emulated_linear_close_to_fp32(granularity):
    lin = _linear()
    layer = Fp8Linear(lin, granularity)
    x = torch.randn(2, 50, 256)
    expected = x @ lin.weight.float().t() + lin.bias.float()
    got = fp8_linear_emulated(x, layer.weight_fp8, layer.weight_scale, layer.bias, granularity)
    assert got.shape == (2, 50, 384)
    assert ((got - expected).norm() / expected.norm()).item() < LINEAR_REL_ERR


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_real_scaled_mm_matches_emulation(granularity):
    """Checks the real path's layouts and scale shapes with torch's CPU `_scaled_mm`."""
    lin = _linear()
    layer = Fp8Linear(lin, granularity)
    x = torch.randn(2, 50, 256).bfloat16()
    emulated = fp8_linear_emulated(x, layer.weight_fp8, layer.weight_scale, layer.bias, granularity)
    try:
        real = fp8_linear(x, layer.weight_fp8, layer.weight_scale, layer.bias, granularity)
    except (RuntimeError, NotImplementedError) as exc:  # torch builds without a CPU kernel
        pytest.skip(f"no CPU torch._scaled_mm here: {exc}")
    assert real.dtype == torch.bfloat16 and real.shape == (2, 50, 384)
    torch.testing.assert_close(real.float(), emulated, atol=REAL_VS_EMULATED_ATOL, rtol=0)


def test_fp8_linear_refuses_cpu_and_survives_dtype_moves():
    layer = Fp8Linear(_linear())
    with pytest.raises(RuntimeError, match="CUDA"):
        layer(torch.randn(3, 256))
    layer.to(torch.float32)  # Module.to(dtype) must not turn the fp8 weights into floats
    assert layer.weight_fp8.dtype == FP8_DTYPE and layer.weight_scale.dtype == torch.float32
    assert layer.bias.dtype == torch.float32


def test_fp8_linear_rejects_unaligned_shapes():
    with pytest.raises(ValueError, match="16"):
        Fp8Linear(nn.Linear(24, 32))


def test_swap_linears_covers_the_encoder():
    fast = build_fast_sam(sensitive_tiny_sam(0), precision="bf16")
    count = swap_linears_to_fp8_(fast.vision_encoder)
    assert count == 4 * len(fast.vision_encoder.layers)  # qkv, proj, lin1, lin2
    assert isinstance(fast.vision_encoder.layers[1].attn.qkv, Fp8Linear)
    assert not any(isinstance(m, Fp8Linear) for m in fast.mask_decoder.modules())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_build_with_fp8_raises_without_cuda():
    with pytest.raises(RuntimeError, match="compute capability"):
        build_fast_sam(sensitive_tiny_sam(0), precision="bf16", fp8_linear=True)
