"""samrep.fast attention and rel-pos pieces vs transformers' SAM vision attention (fp32, CPU)."""

import pytest
import torch
from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionSdpaAttention

from samrep.fast.attention import (
    FastVisionAttention,
    key_position_onehot,
    rel_pos_tables,
    round_up,
)
from samrep.model import tiny_config, vit_h_config
from tests.conftest import sensitive_init_

# fp32 attention output (|values| up to ~3.5): measured max |fast - HF| 2.3e-6 for both ViT-H
# shapes, 1.0e-6 .. 3.6e-6 on the tiny config (folded: q*scale is rounded before the dot
# product, the bias enters it instead of a separate add).
ATTN_ATOL_FP32 = 2e-5


def _attention(config, window_size: int, cls=SamVisionSdpaAttention, seed: int = 0):
    attn = cls(config, window_size)
    return sensitive_init_(attn, seed).eval()  # rel-pos std 0.5: the bias matters


@pytest.mark.parametrize("size", [14, 64])
def test_rel_pos_tables_match_hf(size):
    attn = _attention(tiny_config().vision_config, 0 if size == 64 else size)
    table_h, table_w = rel_pos_tables(attn, size)
    assert table_h.shape == (size, size, attn.rel_pos_h.shape[1])
    assert torch.equal(table_h, attn.get_rel_pos(size, size, attn.rel_pos_h))
    assert torch.equal(table_w, attn.get_rel_pos(size, size, attn.rel_pos_w))


def test_key_position_onehot():
    onehot = key_position_onehot(3, 8, torch.float32)
    assert onehot.shape == (9, 8)
    # token 5 = row 1, col 2
    assert onehot[5].tolist() == [0, 1, 0, 0, 0, 1, 0, 0]
    assert torch.equal(onehot.sum(1), torch.full((9,), 2.0))
    assert round_up(80 + 28, 8) == 112 and round_up(80 + 128, 8) == 208


def test_vit_h_head_dims():
    config = vit_h_config().vision_config
    windowed = FastVisionAttention(SamVisionSdpaAttention(config, 14), 14)
    global_ = FastVisionAttention(SamVisionSdpaAttention(config, 0), 64)
    assert (windowed.head_dim, windowed.qk_dim, global_.qk_dim) == (80, 112, 208)
    assert global_.key_extra.shape == (4096, 128)


@pytest.mark.parametrize("cls", [SamVisionSdpaAttention, SamVisionAttention])
@pytest.mark.parametrize("window_size,shape", [(14, (6, 14, 14, 32)), (0, (1, 64, 64, 32))])
def test_tiny_attention_matches_hf(cls, window_size, shape):
    attn = _attention(tiny_config().vision_config, window_size, cls)
    fast = FastVisionAttention(attn, shape[1])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = attn(x)[0]
        got = fast(x)
    torch.testing.assert_close(got, expected, atol=ATTN_ATOL_FP32, rtol=0)


def test_attention_rejects_other_grid():
    fast = FastVisionAttention(_attention(tiny_config().vision_config, 14), 14)
    with pytest.raises(ValueError, match="14x14"):
        fast(torch.zeros(1, 7, 7, 32))


@pytest.mark.parametrize(
    "window_size,shape", [(14, (25, 14, 14, 1280)), (0, (1, 64, 64, 1280))], ids=["win", "glob"]
)
def test_vit_h_attention_matches_hf(window_size, shape):
    """Real ViT-H dims (1280 wide, 16 heads of 80): one windowed and one global module."""
    attn = _attention(vit_h_config().vision_config, window_size)
    fast = FastVisionAttention(attn, shape[1])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = attn(x)[0]
        got = fast(x)
    torch.testing.assert_close(got, expected, atol=ATTN_ATOL_FP32, rtol=0)


def _tiny_no_qkv_bias():
    config = tiny_config()
    config.vision_config.qkv_bias = False  # padding tokens then project to zeros
    return config


@pytest.mark.parametrize(
    "config", [tiny_config, vit_h_config, _tiny_no_qkv_bias], ids=["tiny", "vit_h", "no_bias"]
)
@pytest.mark.parametrize("window_size", [14, 0], ids=["windowed", "global"])
def test_grid_attention_matches_hf(config, window_size):
    """GridVisionAttention on the whole 64x64 grid vs HF attention on SAM's zero-padded
    windows (partition -> attention -> unpartition, as SamVisionLayer does). On the CPU the
    `samrep::relpos_attention` op runs its torch reference; the kernel itself is checked
    against that reference in tests/test_triton_attention.py."""
    from transformers.models.sam.modeling_sam import SamVisionLayer

    from samrep.fast.attention import GridVisionAttention

    vision = config().vision_config
    attn = _attention(vision, window_size)
    grid = GridVisionAttention(attn, 64, window_size)
    x = torch.randn(1, 64, 64, vision.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        if window_size:
            windows, padded = SamVisionLayer.window_partition(None, x, window_size)
            expected = SamVisionLayer.window_unpartition(
                None, attn(windows)[0], window_size, padded, (64, 64)
            )
        else:
            expected = attn(x)[0]
        got = grid(x)
    torch.testing.assert_close(got, expected, atol=ATTN_ATOL_FP32, rtol=0)
