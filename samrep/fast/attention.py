"""SAM vision attention: the rel-pos bias folded into the dot product, or the Triton kernel.

SAM adds to every attention logit a decomposed relative-position bias (MViTv2):

    logit[i, j] = scale * q_i . k_j + rel_h[i, row(j)] + rel_w[i, col(j)]
    rel_h[i, r] = q_i . R_h[row(i), r],   rel_w[i, c] = q_i . R_w[col(i), c]   (q unscaled)

transformers materialises the (B, heads, N, N) bias as an SDPA mask (no flash attention). The
same logits are one dot product of q'_i = [scale * q_i, rel_h[i, :], rel_w[i, :], 0...] and
k'_j = [k_j, onehot(row(j)), onehot(col(j)), 0...], so flash SDPA(q', k', v, scale=1) runs
without a mask (`FastVisionAttention`, the CPU fallback; ViT-H: 208 dims global, 112 windowed).
`GridVisionAttention` runs `samrep.fast.triton_attention`'s kernel on the unpadded grid.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import SamVisionAttention

from samrep.fast.triton_attention import grid_tables, relpos_attention, split_head_dim
from samrep.fast.triton_relpos import rel_terms


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


def rel_pos_tables(attn: SamVisionAttention, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(table_h, table_w), each (size, size, head_dim): table_h[i, j] embeds the row offset
    i - j, gathered once by HF's own `get_rel_pos` (its resize kept)."""
    with torch.no_grad():
        table_h = SamVisionAttention.get_rel_pos(attn, size, size, attn.rel_pos_h)
        table_w = SamVisionAttention.get_rel_pos(attn, size, size, attn.rel_pos_w)
    return table_h.detach().clone(), table_w.detach().clone()


def key_position_onehot(grid: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """The folded keys' rel-pos part, (grid*grid, width): one-hot of the key's row in columns
    [0, grid), of its column in [grid, 2*grid), zeros beyond (row-major tokens)."""
    tokens = torch.arange(grid * grid)
    onehot = torch.zeros(grid * grid, width, dtype=dtype)
    onehot[tokens, tokens // grid] = 1
    onehot[tokens, grid + tokens % grid] = 1
    return onehot


class FastVisionAttention(nn.Module):
    """SAM vision attention (same weights and math) on one `grid` x `grid` token grid, the
    bias folded into q/k (module docstring); shares the HF module's qkv and proj, its rel-pos
    tables gathered once. v is padded to the folded head dim: torch's flash kernel needs one
    head dim for q, k and v (else SDPA falls back to memory-efficient attention)."""

    def __init__(self, attn: SamVisionAttention, grid: int):
        super().__init__()
        self.qkv, self.proj = attn.qkv, attn.proj
        self.num_heads = int(attn.num_attention_heads)
        self.head_dim = attn.qkv.out_features // (3 * self.num_heads)
        self.scale = float(attn.scale)
        self.grid = int(grid)
        self.use_rel_pos = bool(attn.use_rel_pos)
        self.qk_dim = self.head_dim
        if self.use_rel_pos:
            table_h, table_w = rel_pos_tables(attn, self.grid)  # (grid, grid, head_dim) each
            self.register_buffer("table_h", table_h, persistent=False)
            self.register_buffer("table_w", table_w, persistent=False)
            self.qk_dim = round_up(self.head_dim + 2 * self.grid, 8)
            extra = key_position_onehot(self.grid, self.qk_dim - self.head_dim, table_h.dtype)
            self.register_buffer("key_extra", extra.to(table_h.device), persistent=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, grid, grid, hidden) -> (B, grid, grid, hidden), B = images x windows."""
        b, height, width, channels = hidden_states.shape
        if height != self.grid or width != self.grid:
            raise ValueError(
                f"attention built for a {self.grid}x{self.grid} grid, got {height}x{width}"
            )
        n, heads, hd = height * width, self.num_heads, self.head_dim
        # (3, B, heads, N, head_dim), the layout transformers uses
        qkv = self.qkv(hidden_states).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(head_dim), as HF
        else:
            q_grid = q.reshape(b, heads, height, width, hd)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, self.table_h).reshape(b, heads, n, -1)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, self.table_w).reshape(b, heads, n, -1)
            q_fold = torch.cat([q * self.scale, rel_h, rel_w], dim=-1)
            q_fold = F.pad(q_fold, (0, self.qk_dim - q_fold.shape[-1]))
            k_fold = torch.cat([k, self.key_extra.expand(b, heads, n, -1)], dim=-1)
            v = F.pad(v, (0, self.qk_dim - hd))
            # scale=1: the softmax scale is already in q_fold (and must not touch the bias)
            out = F.scaled_dot_product_attention(q_fold, k_fold, v, scale=1.0)[..., :hd]
        out = out.reshape(b, heads, height, width, hd).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(b, height, width, channels))


class GridVisionAttention(nn.Module):
    """SAM vision attention (same weights and math) on the whole unpadded token grid, windowed
    (`window` < S) or global: (B, S, S, hidden) -> (B, S, S, hidden), no window partition.
    `samrep::rel_terms` and `samrep::relpos_attention` (Triton on CUDA) take the window padding
    as qkv(0) tokens and add the rel-pos bias. Shares qkv and proj with the HF module."""

    def __init__(self, attn: SamVisionAttention, size: int, window: int):
        super().__init__()
        if not attn.use_rel_pos:
            raise ValueError("GridVisionAttention needs SAM's rel-pos attention (use_rel_pos)")
        self.qkv, self.proj = attn.qkv, attn.proj
        self.num_heads = int(attn.num_attention_heads)
        self.head_dim = attn.qkv.out_features // (3 * self.num_heads)
        split_head_dim(self.head_dim)  # ValueError now rather than at the first forward
        self.scale = float(attn.scale)
        self.size = int(size)
        self.window = int(window) or self.size
        table_h, table_w = rel_pos_tables(attn, self.window)
        self.register_buffer("grid_h", grid_tables(table_h, self.size), persistent=False)
        self.register_buffer("grid_w", grid_tables(table_w, self.size), persistent=False)
        # the op takes the qkv bias (what a padding token projects to); without one, zeros
        weight = attn.qkv.weight
        zeros = None if attn.qkv.bias is not None else weight.new_zeros(weight.shape[0])
        self.register_buffer("zero_bias", zeros, persistent=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, height, width, channels = hidden_states.shape
        if height != self.size or width != self.size:
            raise ValueError(
                f"attention built for a {self.size}x{self.size} grid, got {height}x{width}"
            )
        return self.proj(self.attend(self.qkv(hidden_states)))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3 * hidden) qkv projection -> (B, S, S, hidden) attention before proj."""
        rel_h, rel_w = rel_terms(qkv, self.grid_h, self.grid_w, self.num_heads)
        bias = self.qkv.bias if self.zero_bias is None else self.zero_bias
        return relpos_attention(qkv, bias, rel_h, rel_w, self.num_heads, self.window, self.scale)
