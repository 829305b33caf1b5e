"""samrep.fast.model (FastSam) vs transformers' SamModel on the tiny config (CPU).

The tiny model (`sensitive_tiny_sam`: 1 windowed + 1 global block, 1024x1024 input, 64x64
tokens, windows padded 64 -> 70) has O(1) logits that depend on the encoder: zeroing its
rel-pos tables flips ~7.5% of mask pixels, so these checks are not vacuous.
"""

import pytest
import torch

from samrep.fast import build_fast_sam, converted_copy
from samrep.fast.model import ATTENTION, FastVisionLayer, PatchEmbedGemm, UpcastLayerNorm
from tests.conftest import sample_inputs, sensitive_tiny_sam

# fp32 tolerances, measured on this config (2-core x86 CPU, torch 2.13):
MASK_ATOL_FP32 = 1e-5  # low-res logits, |max| ~1.2: max |fast - HF| 1.2e-6 (B=1), 1.4e-6 (B=3)
IOU_ATOL_FP32 = 2e-6  # iou scores: 1.8e-7
EMB_ATOL_FP32 = 2e-5  # image embeddings (B, 32, 64, 64), |max| ~4: 2.5e-6
LAYER_ATOL_FP32 = 2e-5  # one ViT block output, |max| ~5: ~2e-6
MIN_AGREEMENT = 0.999  # fraction of (logit > 0) equal to HF's: measured 1.0
# bf16 / fp16 vs the fp32 HF model, 2 images: fast and HF in the same precision err alike.
# Measured over 2 models x 2 input seeds (B=2): mean |logit error| bf16 fast/HF ratio
# 0.91 .. 1.15, sign agreement fast - HF -0.0008 .. +0.0006; fp16 ratio 0.95 .. 1.16,
# -0.0001 .. +0.0001. The max error is too noisy to compare (one pixel; ratio up to 1.5).
LOW_PRECISION_ERR_RATIO = 1.5  # on the mean |error|
LOW_PRECISION_AGREEMENT_SLACK = 0.002


@pytest.fixture(scope="module")
def model():
    return sensitive_tiny_sam(0)


@pytest.fixture(scope="module")
def eager_model():
    return sensitive_tiny_sam(0, attn_implementation="eager")


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a > 0) == (b > 0)).float().mean().item()


def _run_hf(model, pixel_values, points):
    """HF forward -> (pred_masks, iou_scores, image embeddings), one encoder pass."""
    seen = []
    hook = model.vision_encoder.register_forward_hook(
        lambda mod, args, out: seen.append(out.last_hidden_state)
    )
    try:
        with torch.no_grad():
            out = model(pixel_values=pixel_values, input_points=points, multimask_output=True)
    finally:
        hook.remove()
    return out.pred_masks, out.iou_scores, seen[0]


def _run_fast(fast, pixel_values, points):
    """FastSam forward -> (masks, iou, image embeddings), one encoder pass."""
    seen = []
    hook = fast.vision_encoder.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        with torch.no_grad():
            masks, iou = fast(pixel_values, points)
    finally:
        hook.remove()
    return masks, iou, seen[0]


_REFERENCES: dict[int, tuple] = {}


def _reference(model, batch: int):
    """Inputs and fp32 HF outputs for `batch` images (cached: the model fixture is shared)."""
    if batch not in _REFERENCES:
        pixel_values, points = sample_inputs(batch, seed=batch)
        _REFERENCES[batch] = (pixel_values, points, *_run_hf(model, pixel_values, points))
    return _REFERENCES[batch]


def test_patch_embed_gemm_matches_hf_conv(model):
    patch_embed = model.vision_encoder.patch_embed
    x = torch.randn(2, 3, 1024, 1024, generator=torch.Generator().manual_seed(4))
    gemm = PatchEmbedGemm(patch_embed)
    assert gemm.weight is patch_embed.projection.weight  # shared, not copied
    with torch.no_grad():
        expected, got = patch_embed(x), gemm(x)
    assert got.shape == expected.shape == (2, 64, 64, 32)
    # fp32, same products summed in another order: measured max |diff| ~1e-6
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", ["folded", "kernel"])
@pytest.mark.parametrize("index", [0, 1], ids=["windowed", "global"])
def test_layer_matches_hf(model, index, attention):
    layer = model.vision_encoder.layers[index]
    fast = FastVisionLayer(layer, 64, attention=attention, upcast_norm=False)
    x = torch.randn(2, 64, 64, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = layer(x)
        got = fast(x)
    expected = expected[0] if isinstance(expected, tuple) else expected
    torch.testing.assert_close(got, expected, atol=LAYER_ATOL_FP32, rtol=0)


@pytest.mark.parametrize("attention", ["folded", "kernel"])
@pytest.mark.parametrize("batch", [1, 3])
def test_whole_model_fp32_matches_hf(model, batch, attention):
    pixel_values, points, ref_masks, ref_iou, ref_emb = _reference(model, batch)
    fast = build_fast_sam(model, precision="fp32", attention=attention)
    masks, iou, emb = _run_fast(fast, pixel_values, points)
    assert masks.shape == (batch, 1, 3, 256, 256) and masks.dtype == torch.float32
    assert iou.shape == (batch, 1, 3) and iou.dtype == torch.float32
    torch.testing.assert_close(emb, ref_emb, atol=EMB_ATOL_FP32, rtol=0)
    torch.testing.assert_close(masks, ref_masks, atol=MASK_ATOL_FP32, rtol=0)
    torch.testing.assert_close(iou, ref_iou, atol=IOU_ATOL_FP32, rtol=0)
    assert _agreement(masks, ref_masks) >= MIN_AGREEMENT


def test_whole_model_matches_hf_eager_attention(eager_model):
    pixel_values, points = sample_inputs(1, seed=5)
    ref, _, _ = _run_hf(eager_model, pixel_values, points)
    for attention in ATTENTION:
        fast = build_fast_sam(eager_model, precision="fp32", attention=attention)
        masks, _, _ = _run_fast(fast, pixel_values, points)
        torch.testing.assert_close(masks, ref, atol=MASK_ATOL_FP32, rtol=0)
        assert _agreement(masks, ref) >= MIN_AGREEMENT


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_errs_like_hf(model, precision):
    """fast-in-precision vs fp32 HF is no worse than HF-in-precision vs fp32 HF."""
    pixel_values, points, ref, _, _ = _reference(model, 2)
    fast = build_fast_sam(model, precision=precision)
    dtype = fast.precision_dtype
    hf_masks, _, _ = _run_hf(converted_copy(model, dtype).eval(), pixel_values.to(dtype), points)
    layer_out_dtypes = []
    fast.vision_encoder.layers[0].register_forward_hook(
        lambda mod, args, out: layer_out_dtypes.append(out.dtype)
    )
    masks, _, emb = _run_fast(fast, pixel_values, points)
    hf_err = (hf_masks.float() - ref).abs().mean().item()
    fast_err = (masks - ref).abs().mean().item()
    assert fast_err <= LOW_PRECISION_ERR_RATIO * hf_err
    hf_agree = _agreement(hf_masks, ref)
    assert _agreement(masks, ref) >= hf_agree - LOW_PRECISION_AGREEMENT_SLACK
    assert emb.dtype == dtype and torch.isfinite(emb).all()
    layer = fast.vision_encoder.layers[0]
    assert layer.attn.qkv.weight.dtype == dtype
    if precision == "fp16":  # norms computed in fp32 and residual stream kept in fp32
        assert isinstance(layer.layer_norm1, UpcastLayerNorm)
        assert isinstance(fast.vision_encoder.neck_norm2, UpcastLayerNorm)
        assert layer_out_dtypes == [torch.float32]
    else:
        assert layer_out_dtypes == [torch.bfloat16]


def test_build_leaves_hf_model_alone(model):
    params = dict(model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    fast32 = build_fast_sam(model, precision="fp32")
    build_fast_sam(model, precision="bf16")
    fast32.half()  # converting the fast copy must not convert the HF model either
    for name, p in model.named_parameters():
        assert p is params[name] and p.dtype == torch.float32
        assert torch.equal(p, before[name]), name
    # fp32 shares storage with the HF model (no copy of the weights)
    shared = build_fast_sam(model, precision="fp32").vision_encoder.layers[0].attn.qkv.weight
    hf_weight = model.vision_encoder.layers[0].attn.qkv.weight
    assert shared.data_ptr() == hf_weight.data_ptr() and shared is not hf_weight
    assert not shared.requires_grad


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="precision"):
        build_fast_sam(model, precision="int8")
    with pytest.raises(ValueError, match="bf16"):
        build_fast_sam(model, precision="fp32", fp8_linear=True)
