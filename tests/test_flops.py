"""samrep.flops: the analytic count equals torch's FlopCounterMode on the eager attention path.

Small SAMs run for real on the CPU; ViT-H is counted on the meta device (shapes only, no
math, well under a second) and against the constants measured once on a real forward.
"""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import SamConfig, SamModel
from transformers.models.sam.modeling_sam import SamVisionAttention

from samrep.flops import ORIGINAL_FLOPS_PER_IMAGE, FlopCount, mfu, sam_flops
from samrep.model import synthetic_init_, tiny_config, vit_h_config

# Measured once with FlopCounterMode on a real fp32 CPU forward of SamModel ViT-H
# (torch 2.13, transformers 5.24, eager attention, synthetic_init_ seed 0, batch 1,
# one point prompt, multimask): get_image_embeddings 5_961_082_830_848 FLOPs, whole model
# 5_964_707_533_824 FLOPs (aten.addmm 5_450_951_755_776, aten.bmm 497_379_117_056,
# aten.convolution 16_374_562_816, aten.mm 2_098_176). The vision encoder's own split, from the
# same counter's per-module table (meta device, same totals): addmm 5_449_030_041_600,
# bmm 496_483_532_800, convolution 15_569_256_448. In GFLOP: encoder 5961.08 = linear 5449.03
# + attention 481.28 + rel-pos 15.20 + conv 15.57; prompt encoder + decoder 3.62 (3.6226 per
# prompt + 0.0021 for the image-wide positional encoding, computed once per forward).
VIT_H_ENCODER = 5_961_082_830_848
VIT_H_TOTAL = 5_964_707_533_824
VIT_H_ENCODER_LINEAR = 5_449_030_041_600
VIT_H_ENCODER_BMM = 496_483_532_800  # attention matmuls + rel-pos einsums
VIT_H_ENCODER_CONV = 15_569_256_448


def _odd_config(use_rel_pos: bool) -> SamConfig:
    """A 512x512 SAM with another layout than `tiny_config`: window 12 on a 32x32 grid (padded
    to 36, 9 windows) or window 16 (no padding), global block first, 4 decoder heads, decoder
    downsample rate 4 (the final attention only: HF's blocks hard-code 2), 3 masks, IoU depth 4.
    """
    return SamConfig(
        vision_config=dict(
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            mlp_dim=80,
            global_attn_indexes=[0],
            window_size=12 if use_rel_pos else 16,
            use_rel_pos=use_rel_pos,
            image_size=512,
            output_channels=64,
            num_pos_feats=32,
        ),
        prompt_encoder_config=dict(hidden_size=64, image_size=512),
        mask_decoder_config=dict(
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            mlp_dim=96,
            attention_downsample_rate=4,
            num_multimask_outputs=2,
            iou_head_depth=4,
            iou_head_hidden_dim=40,
        ),
    )


def _eager_model(config: SamConfig, device: str = "cpu") -> SamModel:
    """SamModel with eager attention everywhere (SDPA hides attention FLOPs from the counter)."""
    with torch.device(device):
        model = SamModel._from_config(config, attn_implementation="eager")
    if device != "meta":
        synthetic_init_(model, seed=0)
    # FlopCounterMode's module tracker fails on outputs that are views of grad-requiring weights.
    model.eval().requires_grad_(False)
    assert all(type(layer.attn) is SamVisionAttention for layer in model.vision_encoder.layers)
    assert model.config.mask_decoder_config._attn_implementation == "eager"
    return model


def _inputs(config: SamConfig, batch: int, prompts: int, device: str) -> dict:
    size = config.vision_config.image_size
    gen = torch.Generator().manual_seed(0)
    return dict(
        pixel_values=torch.randn(batch, 3, size, size, generator=gen).to(device),
        input_points=(torch.rand(batch, prompts, 1, 2, generator=gen) * size).to(device),
        input_labels=torch.ones(batch, prompts, 1, dtype=torch.long).to(device),
    )


def _count(model: SamModel, batch: int, prompts: int, device: str = "cpu") -> FlopCounterMode:
    inputs = _inputs(model.config, batch, prompts, device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs, multimask_output=True)
    return counter


def _check_against_counter(counter: FlopCounterMode, expected: FlopCount, batch: int) -> None:
    """Whole model and the vision encoder's parts, per image, against the counter."""
    by_module = counter.get_flop_counts()
    enc = {str(op): flops for op, flops in by_module["SamModel.vision_encoder"].items()}
    assert counter.get_total_flops() == pytest.approx(expected.total * batch, rel=1e-12)
    assert enc.get("aten.convolution", 0) == expected.encoder_conv * batch
    assert enc.get("aten.addmm", 0) + enc.get("aten.mm", 0) == expected.encoder_linear * batch
    assert enc.get("aten.bmm", 0) == (expected.encoder_attention + expected.encoder_rel_pos) * batch
    assert sum(enc.values()) == expected.encoder * batch


CASES = {  # id: (config, batch, prompts)
    "tiny-b1": (tiny_config, 1, 1),
    "tiny-b2": (tiny_config, 2, 1),
    "tiny-b2-p3": (tiny_config, 2, 3),
    "window12-padded-b2-p3": (lambda: _odd_config(True), 2, 3),
    "window16-no-relpos-b2-p2": (lambda: _odd_config(False), 2, 2),
}


@pytest.mark.parametrize("make_config,batch,prompts", list(CASES.values()), ids=list(CASES))
def test_matches_flop_counter_on_real_forward(make_config, batch: int, prompts: int) -> None:
    config = make_config()
    model = _eager_model(config)
    expected = sam_flops(config, points_per_image=prompts, batch_size=batch)
    _check_against_counter(_count(model, batch, prompts), expected, batch)
    if not config.vision_config.use_rel_pos:
        assert expected.encoder_rel_pos == 0


def test_encoder_alone_via_get_image_embeddings() -> None:
    config = tiny_config()
    model = _eager_model(config)
    pixels = _inputs(config, 2, 1, "cpu")["pixel_values"]
    with FlopCounterMode(display=False) as counter:
        model.get_image_embeddings(pixels)
    assert counter.get_total_flops() == 2 * sam_flops(config).encoder


def test_vit_h_equals_measured_constants() -> None:
    f = sam_flops(vit_h_config())
    assert f.encoder == pytest.approx(VIT_H_ENCODER, rel=1e-6)
    assert f.total == pytest.approx(VIT_H_TOTAL, rel=1e-6)
    assert f.encoder_linear == pytest.approx(VIT_H_ENCODER_LINEAR, rel=1e-6)
    assert f.encoder_attention + f.encoder_rel_pos == pytest.approx(VIT_H_ENCODER_BMM, rel=1e-6)
    assert f.encoder_conv == pytest.approx(VIT_H_ENCODER_CONV, rel=1e-6)
    # The facts sheet's GFLOP table (rounded to 0.1 GFLOP; 0.01 for the decoder).
    gflop = {k: round(v / 1e9, 1) for k, v in f.to_dict().items()}
    assert gflop["encoder"] == 5961.1
    assert gflop["encoder_linear"] == 5449.0
    assert gflop["encoder_attention"] == 481.3
    assert gflop["encoder_rel_pos"] == 15.2
    assert gflop["encoder_conv"] == 15.6
    assert round(f.prompt_decoder / 1e9, 2) == 3.62
    # The original harness's 3.1e12 is (about) the multiply-add count, half the FLOPs.
    assert ORIGINAL_FLOPS_PER_IMAGE == pytest.approx(f.encoder / 2, rel=0.05)


def test_vit_h_counter_on_meta_device() -> None:
    """The whole ViT-H graph through FlopCounterMode without doing the math (~0.5 s)."""
    config = vit_h_config()
    model = _eager_model(config, device="meta")
    counter = _count(model, batch=2, prompts=3, device="meta")
    _check_against_counter(counter, sam_flops(config, points_per_image=3, batch_size=2), 2)


def test_prompts_and_batch_scaling() -> None:
    config = vit_h_config()
    one, three = sam_flops(config, 1), sam_flops(config, 3)
    per_prompt = (three.prompt_decoder - one.prompt_decoder) / 2
    assert per_prompt == pytest.approx(3.6226e9, rel=1e-4)
    assert three.encoder == one.encoder
    image_pe = 2 * 64 * 64 * 2 * 128  # computed once per forward, shared by the batch
    assert one.prompt_decoder - sam_flops(config, 1, batch_size=4).prompt_decoder == (
        pytest.approx(image_pe * 3 / 4)
    )
    with pytest.raises(ValueError):
        sam_flops(config, points_per_image=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.encoder_conv = 0.0  # type: ignore[misc]


def test_mfu_arithmetic() -> None:
    # 166 img/s x 5.961e12 FLOP/img on an H200 at 989.5e12 bf16 FLOP/s: ~100%.
    assert mfu(166.0, 5.961e12, 989.5e12) == pytest.approx(166.0 * 5.961e12 / 989.5e12)
    assert mfu(166.0, 5.961e12, 989.5e12) == pytest.approx(1.0, abs=0.001)
    assert mfu(10.0, 2e12, 100e12) == pytest.approx(0.2)
    assert mfu(0.0, 2e12, 100e12) == 0.0
    # The original convention (3.1e12 against the A100 fp16 peak) beside the true one.
    assert mfu(100.0, ORIGINAL_FLOPS_PER_IMAGE, 312e12) == pytest.approx(0.99358974, rel=1e-6)
    with pytest.raises(ValueError):
        mfu(10.0, 2e12, 0.0)
    with pytest.raises(ValueError):
        mfu(-1.0, 2e12, 100e12)
