"""The `fast` backend (samrep.fast encoder + fp32 HF decoder) against the torch backend."""

import pydantic
import pytest
import torch

from samrep.backends import get_backend
from samrep.backends.base import BackendUnavailable
from samrep.data import ModelInputs
from samrep.metrics import postprocess_masks


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    return ModelInputs(
        torch.randn(1, 3, 1024, 1024, generator=gen),
        torch.tensor([[[[300.0, 500.0]]]]),
        (600, 512),
        (1024, 874),
    )


@pytest.mark.parametrize("bs", [1, 3])
def test_fast_backend_matches_torch_backend_fp32(tiny_model, inputs, tmp_path, bs):
    ref = get_backend("torch")("cpu", "fp32", {}, tmp_path, bs=bs)
    fast = get_backend("fast")("cpu", "fp32", {}, tmp_path, bs=bs)
    ref.build(tiny_model, inputs)
    fast.build(tiny_model, inputs)
    pv = inputs.pixel_values.expand(bs, -1, -1, -1).contiguous()
    pts = inputs.input_points.expand(bs, -1, -1, -1).contiguous()
    (ref_masks, ref_iou), (masks, iou) = ref.run(pv, pts), fast.run(pv, pts)
    assert masks.shape == (bs, 3, 256, 256) and iou.shape == (bs, 3)
    # Measured: max |diff| ~1e-6 of logits with std ~0.2 (fp32 reassociation only).
    assert torch.allclose(masks, ref_masks, atol=1e-4, rtol=0)
    assert torch.allclose(iou, ref_iou, atol=1e-4, rtol=0)
    a = postprocess_masks(masks, inputs.reshaped_size, inputs.original_size)
    b = postprocess_masks(ref_masks, inputs.reshaped_size, inputs.original_size)
    assert (a == b).float().mean() >= 0.999
    # The caller's fp32 CPU model is untouched (fp32 shares nothing it could move).
    assert next(tiny_model.parameters()).dtype == torch.float32


def test_fast_backend_refuses_fp8_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailable, match="fp8"):
        get_backend("fast").check_available("cpu", "fp8")


def test_fast_backend_rejects_unknown_options(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="modee"):
        get_backend("fast")("cpu", "fp32", {"modee": "x"}, tmp_path)
    with pytest.raises(pydantic.ValidationError, match="gelu_epilogue"):
        get_backend("fast")("cpu", "fp32", {"gelu_epilogue": "maybe"}, tmp_path)


def test_fast_backend_attention_option(tiny_model, inputs, tmp_path):
    from samrep.backends.fast import default_attention

    # the kernel needs CUDA and 16-bit inputs; the CPU and fp32 get the folded path
    assert default_attention(torch.device("cpu"), "bf16") == "folded"
    assert default_attention(torch.device("cuda"), "fp32") == "folded"
    fast = get_backend("fast")("cpu", "fp32", {"attention": "folded"}, tmp_path)
    fast.build(tiny_model, inputs)
    assert fast.attention == "folded" and "attn folded" in fast.math_mode
    with pytest.raises(pydantic.ValidationError, match="attention"):
        get_backend("fast")("cpu", "fp32", {"attention": "masked"}, tmp_path)
    with pytest.raises(BackendUnavailable, match="'kernel' needs a CUDA GPU"):
        get_backend("fast")("cpu", "bf16", {"attention": "kernel"}, tmp_path).build(
            tiny_model, inputs
        )
