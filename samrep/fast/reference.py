"""Plain-torch oracles of the Triton kernels (the tests' references, the custom ops' CPU
kernels): `reference_attention` (`triton_attention`), `rel_terms_reference` (`triton_relpos`).
fp32 math, CPU or GPU.
"""

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
    """SAM's decomposed rel-pos terms for every grid token, in the kernel's layout: q (B, S, S,
    heads, head_dim) unscaled as in SAM (a strided view of qkv is fine), grid_h, grid_w (S, GP,
    head_dim) from `grid_tables` (GP = rel_width(G)) -> rel_h, rel_w, each (B, heads, S * S, GP)
    contiguous (columns >= G zero): rel_h[b, n, y*S + x, r] = q[b, y, x, n] . grid_h[y, r];
    rel_w likewise with grid_w[x, c]."""
    rel_h = torch.einsum("byxnc,ykc->bnyxk", q, grid_h).flatten(2, 3)
    rel_w = torch.einsum("byxnc,xkc->bnyxk", q, grid_w).flatten(2, 3)
    return rel_h.contiguous(), rel_w.contiguous()


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
    """What `windowed_attention` computes (same arguments and result), in fp32: the grid padded
    to whole windows with qkv(0) = qkv_bias tokens, the (T, T) logits of each window with the
    rel-pos bias materialised (rel_h / rel_w may be G or rel_width(G) wide)."""
    b, s, _, three_c = qkv.shape
    g = window
    sp = -(-s // g) * g
    nw = sp // g
    pad = qkv_bias.float() if qkv_bias is not None else qkv.new_zeros(three_c).float()
    full = pad.expand(b, sp, sp, three_c).clone()
    full[:, :s, :s] = qkv.float()

    def windows(t: torch.Tensor) -> torch.Tensor:
        """(B, sp, sp, ...) -> (B * windows, T, ...), windows row-major as the kernel's."""
        t = t.reshape(b, nw, g, nw, g, *t.shape[3:]).transpose(2, 3)
        return t.reshape(b * nw * nw, g * g, *t.shape[5:])

    # (3, windows, heads, T, head_dim)
    q, k, v = windows(full).unflatten(-1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4)
    rel = torch.stack([rel_h[..., :g], rel_w[..., :g]]).float()  # (2, B, heads, S*S, G)
    rel = rel.reshape(2, b, num_heads, s, s, g).permute(1, 3, 4, 0, 2, 5)
    rel = F.pad(rel, (0, 0, 0, 0, 0, 0, 0, sp - s, 0, sp - s))  # padding queries: 0
    rh, rw = windows(rel).permute(2, 0, 3, 1, 4)  # (2, windows, heads, T, G)
    key = torch.arange(g * g, device=qkv.device)
    logits = q @ k.transpose(-1, -2) * scale + rh[..., key // g] + rw[..., key % g]
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, nw, nw, g, g, -1)
    return out.transpose(2, 3).reshape(b, sp, sp, -1)[:, :s, :s].to(qkv.dtype)
