"""Plain-torch oracles for the Triton kernels (tests, CPU kernels of the custom ops).

`reference_attention`: SAM's windowed / global attention with the rel-pos bias materialised
(what `triton_attention.windowed_attention` computes); `rel_terms_reference`: the rel-pos
terms by einsum (what `triton_relpos.rel_terms` computes). fp32 math, CPU or GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rel_width(window: int) -> int:
    """The rel_h / rel_w terms' width: `window` rounded up to a power of two >= 16 (14 -> 16,
    64 -> 64), as tl.dot needs; the kernel never reads columns beyond `window`."""
    return max(16, 1 << (window - 1).bit_length())


def grid_tables(table: torch.Tensor, size: int) -> torch.Tensor:
    """A window's table (G, G, head_dim) over a `size`-long grid axis: row y is table[y % G]
    zero-padded to rel_width(G) key positions, (size, rel_width(G), head_dim)."""
    g = table.shape[0]
    grid = table[torch.arange(size, device=table.device) % g]
    return F.pad(grid, (0, 0, 0, rel_width(g) - g))


def rel_terms_reference(
    q: torch.Tensor, grid_h: torch.Tensor, grid_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decomposed rel-pos terms for every token of the grid, in the kernel's layout.

    q: (B, S, S, heads, head_dim) (a strided view of qkv is fine), unscaled as in SAM;
    grid_h, grid_w: (S, GP, head_dim) from `grid_tables` (GP = rel_width(G)).
    Returns rel_h, rel_w, each (B, heads, S * S, GP) contiguous (columns >= G are zero):
    rel_h[b, n, y*S + x, r] = q[b, y, x, n] . grid_h[y, r]; rel_w likewise with grid_w[x, c].
    """
    b, s, _, heads, _ = q.shape
    rel_h = torch.einsum("byxnc,ykc->bnyxk", q, grid_h)
    rel_w = torch.einsum("byxnc,xkc->bnyxk", q, grid_w)
    g = grid_h.shape[1]
    return (
        rel_h.reshape(b, heads, s * s, g).contiguous(),
        rel_w.reshape(b, heads, s * s, g).contiguous(),
    )


def reference_attention(
    qkv: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    *,
    num_heads: int,
    window: int,
    scale: float,
) -> torch.Tensor:
    """What `windowed_attention` computes, in plain torch and fp32 (the tests' oracle).

    Pads the grid to whole windows with qkv(0) = qkv_bias tokens, partitions, materialises
    the (T, T) logits with the rel-pos bias, softmaxes, crops. Same arguments and result
    (rel_h / rel_w may be G or rel_width(G) wide; only the first G columns count).
    """
    b, s, _, three_c = qkv.shape
    hd = three_c // (3 * num_heads)
    g = window
    sp = -(-s // g) * g
    x = qkv.float()
    pad = torch.zeros(three_c, dtype=torch.float32, device=qkv.device)
    if qkv_bias is not None:
        pad = qkv_bias.float()
    full = pad.expand(b, sp, sp, three_c).clone()
    full[:, :s, :s] = x
    nw = sp // g
    win = full.reshape(b, nw, g, nw, g, 3, num_heads, hd).permute(5, 0, 1, 3, 6, 2, 4, 7)
    q, k, v = win.reshape(3, b, nw, nw, num_heads, g * g, hd).unbind(0)
    logits = torch.einsum("bwvnic,bwvnjc->bwvnij", q, k) * scale

    def padded_rel(t):  # (B, heads, S*S, >=G) -> (B, nw, nw, heads, T, G); padding queries: 0
        grid = t[..., :g].float().reshape(b, num_heads, s, s, g)
        full_t = grid.new_zeros(b, num_heads, sp, sp, g)
        full_t[:, :, :s, :s] = grid
        return (
            full_t.reshape(b, num_heads, nw, g, nw, g, g)
            .permute(0, 2, 4, 1, 3, 5, 6)
            .reshape(b, nw, nw, num_heads, g * g, g)
        )

    rh, rw = padded_rel(rel_h), padded_rel(rel_w)
    key_row = torch.arange(g * g, device=qkv.device) // g
    key_col = torch.arange(g * g, device=qkv.device) % g
    logits = logits + rh[..., key_row] + rw[..., key_col]
    out = torch.einsum("bwvnij,bwvnjc->bwvnic", F.softmax(logits, dim=-1), v)
    out = out.reshape(b, nw, nw, num_heads, g, g, hd).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(b, sp, sp, num_heads * hd)[:, :s, :s].to(qkv.dtype)
