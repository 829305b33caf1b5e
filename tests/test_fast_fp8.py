"""samrep.fast.fp8: quantisation math and `_scaled_mm` layouts on the CPU (real path: CUDA)."""

import pytest
import torch
from torch import nn

from samrep.fast import build_fast_sam
from samrep.fast.fp8 import FP8_DTYPE, FP8_MAX, Fp8Linear, quantize, scaled_mm
from tests.conftest import sensitive_tiny_sam

# e4m3 has 3 mantissa bits: round-to-nearest relative error <= 2^-4 for normal values.
# Values below the smallest normal (2^-6 of the scale unit) have absolute error <= 2^-10 units.
E4M3_REL_ERR = 2.0**-4
# fp8 x fp8 linear vs fp32 (K=256, unit inputs, 1/sqrt(K) weights): measured relative
# Frobenius error 0.018 (about two independent 2^-4/sqrt(3) roundings).
LINEAR_REL_ERR = 0.04


def _linear(k: int = 256, n: int = 384, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.normal_(0, k**-0.5)
        lin.bias.normal_()
    return lin.bfloat16()


def test_quantize_roundtrip_error():
    x = torch.randn(64, 128) * torch.logspace(-3, 3, 64)[:, None]  # rows of very different size
    x8, scale = quantize(x)
    assert x8.dtype == FP8_DTYPE and scale.shape == (64, 1)
    err = (x8.float() * scale - x).abs()
    bound = E4M3_REL_ERR * x.abs() + scale * 2.0**-9  # relative + subnormal absolute
    assert (err <= bound * 1.0001).all()
    # every row uses the full e4m3 range
    torch.testing.assert_close(x8.float().abs().amax(1), torch.full((64,), FP8_MAX))


def test_quantize_zero_rows_are_finite():
    x8, scale = quantize(torch.zeros(4, 32))
    assert torch.isfinite(scale).all() and (x8.float() == 0).all()


@pytest.mark.parametrize("bias", [False, True])
def test_scaled_mm_close_to_fp32(bias):
    """The real `torch._scaled_mm` path (CPU kernel of torch >= 2.13): layouts, scales, bias."""
    lin = _linear()
    layer = Fp8Linear(lin)
    x = torch.randn(2, 50, 256)
    x8, scale = quantize(x.reshape(100, 256))
    try:
        got = scaled_mm(x8.reshape(2, 50, 256), scale, layer, bias=bias)
    except (RuntimeError, NotImplementedError) as exc:  # torch builds without a CPU kernel
        pytest.skip(f"no CPU torch._scaled_mm here: {exc}")
    want = x @ lin.weight.float().t() + (lin.bias.float() if bias else 0)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 50, 384)
    assert ((got.float() - want).norm() / want.norm()).item() < LINEAR_REL_ERR


def test_fp8_linear_survives_dtype_moves():
    layer = Fp8Linear(_linear())
    layer.to(torch.float32)  # Module.to(dtype) must not turn the fp8 weights into floats
    assert layer.weight_fp8.dtype == FP8_DTYPE and layer.weight_scale.dtype == torch.float32
    assert layer.weight_scale.shape == (1, 384) and layer.bias.dtype == torch.float32


def test_fp8_linear_rejects_unaligned_shapes():
    with pytest.raises(ValueError, match="16"):
        Fp8Linear(nn.Linear(24, 32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_build_with_fp8_raises_without_cuda():
    with pytest.raises(RuntimeError, match="compute capability"):
        build_fast_sam(
            sensitive_tiny_sam(0), precision="bf16", attention="kernel", fused=True, fp8_linear=True
        )


def test_fp8_needs_the_fused_blocks():
    with pytest.raises(ValueError, match="fused=True"):
        build_fast_sam(sensitive_tiny_sam(0), precision="bf16", fp8_linear=True)
