"""The Triton rel-pos attention kernel against its torch reference (Triton's interpreter).

The kernel itself runs on the CPU only under TRITON_INTERPRET=1, which Triton reads when the
kernel is defined, so it runs in a child process. The reference is checked against
transformers through the fast model's tests (tests/test_fast_model.py, attention="kernel").
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from samrep.fast import triton_attention as ta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (batch, grid side S, window G, heads, head_dim, qkv bias, block sizes or None)
CASES = [
    (1, 20, 7, 2, 80, True, (16, 16, 4, 1)),  # windowed, padded windows, head_dim 64 + 16
    (2, 16, 16, 1, 32, True, None),  # global (G == S), 256 tokens, two query blocks
    (1, 9, 4, 2, 16, False, (16, 16, 4, 1)),  # no qkv bias: padding tokens project to zero
    (1, 16, 16, 2, 80, True, (32, 16, 4, 1)),  # global, one key row per block (BLOCK_N == G)
]


def test_split_head_dim():
    assert ta.split_head_dim(80) == (64, 16)
    assert ta.split_head_dim(64) == (64, 0)
    assert ta.split_head_dim(16) == (16, 0)
    for bad in (8, 72, 100):
        with pytest.raises(ValueError, match=f"head_dim {bad}"):
            ta.split_head_dim(bad)


def test_grid_tables_repeat_window_rows():
    table = torch.randn(3, 3, 4)
    grid = ta.grid_tables(table, 7)
    assert grid.shape == (7, 16, 4)  # 3 key positions zero-padded to rel_width(3) = 16
    for y in range(7):
        assert torch.equal(grid[y, :3], table[y % 3])
    assert grid[:, 3:].abs().sum() == 0
    assert [ta.rel_width(g) for g in (3, 14, 16, 17, 64)] == [16, 16, 16, 32, 64]


def test_reference_padding_is_the_qkv_bias():
    """A key in the window padding is qkv(0) = bias: with a huge bias key it takes the softmax."""
    s, g, heads, hd = 5, 3, 1, 16
    qkv = torch.zeros(1, s, s, 3 * heads * hd)
    qkv[..., :hd] = 1.0  # every query (1, ..., 1)
    bias = torch.zeros(3 * heads * hd)
    bias[hd : 2 * hd] = 10.0  # padding keys align with every query
    bias[2 * hd :] = 7.0  # and carry the value 7
    zeros = torch.zeros(1, heads, s * s, ta.rel_width(g))
    out = ta.reference_attention(qkv, bias, zeros, zeros, num_heads=heads, window=g, scale=1.0)
    # window (0, 0) has no padding: all-zero v; window (1, 1) is mostly padding: ~7
    assert out[0, 0, 0].abs().max() == 0
    torch.testing.assert_close(out[0, 4, 4], torch.full((hd,), 7.0))


@pytest.mark.skipif(not ta.available(), reason="triton is not installed (it runs the kernel)")
def test_kernel_matches_reference_in_interpreter():
    script = textwrap.dedent(
        f"""
        import torch
        from samrep.fast import triton_attention as ta
        torch.manual_seed(0)
        for b, s, g, heads, hd, has_bias, block in {CASES!r}:
            qkv = torch.randn(b, s, s, 3 * heads * hd)
            bias = torch.randn(3 * heads * hd) if has_bias else None
            rel_h = torch.randn(b, heads, s * s, ta.rel_width(g))
            rel_w = torch.randn(b, heads, s * s, ta.rel_width(g))
            kw = dict(num_heads=heads, window=g, scale=hd ** -0.5)
            got = ta.windowed_attention(qkv, bias, rel_h, rel_w, block=block, **kw)
            want = ta.reference_attention(qkv, bias, rel_h, rel_w, **kw)
            err = (got - want).abs().max().item()
            print(b, s, g, heads, hd, has_bias, err)
            assert err < 1e-4, err
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=REPO)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(done.stdout.strip().splitlines()) == len(CASES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_matches_reference_on_gpu(dtype):
    torch.manual_seed(0)
    b, s, heads, hd = 2, 64, 16, 80
    for g in (14, 64):
        qkv = torch.randn(b, s, s, 3 * heads * hd, device="cuda", dtype=dtype)
        bias = torch.randn(3 * heads * hd, device="cuda", dtype=dtype)
        rel_h = torch.randn(b, heads, s * s, ta.rel_width(g), device="cuda", dtype=dtype)
        rel_w = torch.randn_like(rel_h)
        kw = dict(num_heads=heads, window=g, scale=hd**-0.5)
        got = ta.windowed_attention(qkv, bias, rel_h, rel_w, **kw).float()
        want = ta.reference_attention(qkv, bias, rel_h, rel_w, **kw).float()
        assert (got - want).abs().max().item() < 2e-2
