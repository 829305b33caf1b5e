"""samrep.fast.fused (fused blocks, GELU epilogue, fp8 from the producers) vs transformers (CPU).

On the CPU the fused ops run their torch references (`fused_ops`, `triton_relpos`, the
attention op); the Triton kernels themselves are checked against those references in
tests/test_fast_fused_ops.py. Tiny config: block 0 windowed (14, padded 64 -> 70), block 1
global; `sensitive_tiny_sam` makes the encoder matter (O(1) logits).
"""

import pytest
import torch
from torch import nn

from samrep.fast import build_fast_sam, converted_copy
from samrep.fast.fused import FastMLP, FusedVisionLayer, run_fused_layers
from tests.conftest import sample_inputs, sensitive_tiny_sam

# fp32, same math reassociated: measured max |fused - HF| 2.1e-6 (windowed), 2.3e-6 (global)
# on block outputs |max| ~5; low-res logits 2.6e-6 (whole model, B=1).
LAYER_ATOL_FP32 = 2e-5
MASK_ATOL_FP32 = 1e-5
# fp8 (qkv, fc1, fc2 in e4m3, rowwise) block vs the fp32 HF block: measured relative
# Frobenius error 0.037 (windowed), 0.032 (global), the bf16 fused block 0.0048 (HF bf16
# 0.0057). e4m3's 2^-4 relative rounding of both GEMM operands gives ~0.03 per GEMM.
FP8_LAYER_REL_ERR = 0.06
BF16_LAYER_REL_ERR = 0.01


@pytest.fixture(scope="module")
def model():
    return sensitive_tiny_sam(0)


def _hf_layer(layer, x):
    out = layer(x)
    return out[0] if isinstance(out, tuple) else out


def _fused(layers, x):
    return run_fused_layers(nn.ModuleList(layers), x)


def _rel_err(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("index", [0, 1], ids=["windowed", "global"])
def test_fused_layer_matches_hf_fp32(model, index, batch):
    layer = model.vision_encoder.layers[index]
    x = torch.randn(batch, 64, 64, 32, generator=torch.Generator().manual_seed(index + batch))
    with torch.no_grad():
        want = _hf_layer(layer, x)
        got = _fused([FusedVisionLayer(layer, 64, gelu="exact")], x)
    torch.testing.assert_close(got, want, atol=LAYER_ATOL_FP32, rtol=0)


def test_tanh_gelu_matches_hf_with_tanh_activation(model):
    """gelu="tanh" is HF's block with GELU(approximate='tanh'): equal to that, near erf's."""
    tanh_model = sensitive_tiny_sam(0)
    for layer in tanh_model.vision_encoder.layers:
        layer.mlp.act = nn.GELU(approximate="tanh")
    x = torch.randn(1, 64, 64, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for i in (0, 1):
            want = _hf_layer(tanh_model.vision_encoder.layers[i], x)
            got = _fused([FusedVisionLayer(model.vision_encoder.layers[i], 64, gelu="tanh")], x)
            torch.testing.assert_close(got, want, atol=LAYER_ATOL_FP32, rtol=0)
            mlp = FastMLP(model.vision_encoder.layers[i].mlp)
            torch.testing.assert_close(
                mlp(x), tanh_model.vision_encoder.layers[i].mlp(x), atol=1e-5, rtol=0
            )
            exact = _hf_layer(model.vision_encoder.layers[i], x)
            assert 0 < _rel_err(got, exact) < 1e-2  # the approximation shows, but is small


def test_fused_whole_model_matches_hf_fp32(model):
    """Batch 1 here; batch 3 per block in test_fused_layer_matches_hf_fp32 (keeps this fast)."""
    batch = 1
    pixel_values, points = sample_inputs(batch, seed=batch)
    with torch.no_grad():
        want = model(pixel_values=pixel_values, input_points=points, multimask_output=True)
        fast = build_fast_sam(model, precision="fp32", attention="kernel", fused=True)
        masks, iou = fast(pixel_values, points)
    torch.testing.assert_close(masks, want.pred_masks, atol=MASK_ATOL_FP32, rtol=0)
    torch.testing.assert_close(iou, want.iou_scores, atol=2e-6, rtol=0)


@pytest.mark.parametrize("index", [0, 1], ids=["windowed", "global"])
def test_fp8_layer_close_to_hf(model, index):
    """bf16 activations, e4m3 qkv/fc1/fc2 quantised by the norms and the GELU kernel (CPU
    `torch._scaled_mm`), against the fp32 HF block; the bf16 fused block for scale."""
    bf16 = converted_copy(model, torch.bfloat16).eval()
    x = torch.randn(3, 64, 64, 32, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        want = _hf_layer(model.vision_encoder.layers[index], x)
        layer = bf16.vision_encoder.layers[index]
        try:
            got8 = _fused([FusedVisionLayer(layer, 64, gelu="exact", fp8=True)], x.bfloat16())
        except (RuntimeError, NotImplementedError) as exc:  # torch without a CPU _scaled_mm
            pytest.skip(f"no CPU torch._scaled_mm: {exc}")
        got16 = _fused([FusedVisionLayer(layer, 64, gelu="exact")], x.bfloat16())
    assert got8.dtype == torch.bfloat16 and torch.isfinite(got8).all()
    assert _rel_err(got16, want) < BF16_LAYER_REL_ERR
    assert _rel_err(got16, want) < _rel_err(got8, want) < FP8_LAYER_REL_ERR
    if index == 0:  # a subset: fc1 alone in fp8 (fc2 then runs bf16 on an erf GELU)
        partial = FusedVisionLayer(layer, 64, gelu="exact", fp8=("fc1",))
        with torch.no_grad():
            assert _rel_err(_fused([partial], x.bfloat16()), want) < FP8_LAYER_REL_ERR
        assert set(partial.fp8_linears) == {"fc1"}


def test_fused_needs_the_kernel_attention(model):
    with pytest.raises(ValueError, match="attention='kernel'"):
        build_fast_sam(model, precision="bf16", attention="folded", fused=True)
    with pytest.raises(ValueError, match="gelu"):
        build_fast_sam(model, precision="bf16", gelu="sigmoid")
