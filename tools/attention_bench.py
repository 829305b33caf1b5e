"""Time one ViT-H attention layer's core on a GPU: the Triton kernel vs the folded SDPA path.

Usage (on a GPU): python tools/attention_bench.py [--bs 16] > attention.txt
For the windowed (14) and global (64) blocks of ViT-H (16 heads, head_dim 80, 64x64 tokens),
bf16: ms per call (triton.testing.do_bench, median) of
  kernel   samrep::relpos_attention on qkv of the unpadded grid (rel terms given)
  folded   window partition + folded q/k + flash SDPA (samrep.fast.attention, attention only)
  no-bias  plain SDPA at head_dim 80 without any rel-pos bias: a lower bound, not SAM's math
and the kernel's max abs difference from the torch reference.
"""

import argparse

import torch
import torch.nn.functional as F
from transformers.models.sam.modeling_sam import SamVisionLayer
from triton.testing import do_bench

from samrep.fast import triton_attention as ta
from samrep.fast.attention import key_position_onehot, round_up

# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried by --sweep
SWEEP = {
    14: [
        (64, 64, 4, 2),
        (64, 32, 4, 2),
        (32, 32, 4, 2),
        (128, 64, 8, 2),
        (64, 64, 4, 3),
        (128, 32, 4, 2),
        (256, 64, 8, 2),
        (64, 16, 4, 2),
    ],
    64: [
        (128, 64, 8, 3),
        (128, 64, 8, 2),
        (64, 64, 4, 3),
        (128, 64, 4, 3),
        (64, 64, 4, 2),
        (256, 64, 8, 3),
        (128, 64, 4, 2),
        (128, 32, 8, 3),
    ],
}


def bench_window(g: int, b: int, sweep: bool = False) -> None:
    """Print the three timings for window side `g` (14 or 64) at batch `b`."""
    s, heads, hd, dt = 64, 16, 80, torch.bfloat16
    qkv = torch.randn(b, s, s, 3 * heads * hd, device="cuda", dtype=dt)
    bias = torch.randn(3 * heads * hd, device="cuda", dtype=dt)
    rel_h = torch.randn(b, heads, s * s, ta.rel_width(g), device="cuda", dtype=dt)
    rel_w = torch.randn_like(rel_h)
    kw = dict(num_heads=heads, window=g, scale=hd**-0.5)

    def kernel():
        return ta.windowed_attention(qkv, bias, rel_h, rel_w, **kw)

    # error on two images (the reference materialises fp32 logits: 4096^2 per head and image)
    ref = ta.reference_attention(qkv[:2], bias, rel_h[:2], rel_w[:2], **kw).float()
    err = kernel()[:2].float() - ref
    # folded path: partition the padded grid, build q', k', padded v, flash SDPA
    qk_dim = round_up(hd + 2 * g, 8)
    extra = key_position_onehot(g, qk_dim - hd, dt).cuda()
    n_win = b * (-(-s // g)) ** 2
    rh = torch.randn(n_win, heads, g * g, g, device="cuda", dtype=dt)  # stands in for rel_h/w

    def windows():
        """q, k, v of every (zero-padded) window: (windows, heads, g*g, hd) each."""
        win = SamVisionLayer.window_partition(None, qkv, g)[0] if g < s else qkv
        n = win.shape[0]
        return win.reshape(n, g * g, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)

    def folded():
        q, k, v = windows()
        n = q.shape[0]
        qf = F.pad(torch.cat([q * hd**-0.5, rh, rh], -1), (0, qk_dim - hd - 2 * g))
        kf = torch.cat([k, extra.expand(n, heads, -1, -1)], -1)
        vf = F.pad(v, (0, qk_dim - hd))
        return F.scaled_dot_product_attention(qf, kf, vf, scale=1.0)[..., :hd]

    def nobias():
        return F.scaled_dot_product_attention(*windows())

    times = {
        name: do_bench(fn)
        for name, fn in (("kernel", kernel), ("folded", folded), ("no-bias", nobias))
    }
    for block in SWEEP[g] if sweep else ():
        try:
            ms = do_bench(
                lambda blk=block: ta.windowed_attention(qkv, bias, rel_h, rel_w, block=blk, **kw)
            )
            got = ta.windowed_attention(qkv[:2], bias, rel_h[:2], rel_w[:2], block=block, **kw)
            diff = (got.float() - ref).abs().max().item()
            print(f"  window {g} block {block}: {ms:.3f} ms, max|diff| {diff:.2e}", flush=True)
        except Exception as exc:  # a config that does not compile (e.g. out of shared memory)
            print(f"  window {g} block {block}: failed: {type(exc).__name__}: {str(exc)[:200]}")
    print(
        f"window {g:2d} bs {b}: "
        + ", ".join(f"{k} {v:.3f} ms" for k, v in times.items())
        + f"; kernel max|diff| vs reference {err.abs().max().item():.2e}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bs", type=int, default=16)
    ap.add_argument("--sweep", action="store_true", help="also time the SWEEP block sizes")
    args = ap.parse_args()
    torch.manual_seed(0)
    for g in (14, 64):
        bench_window(g, args.bs, args.sweep)


if __name__ == "__main__":
    main()
