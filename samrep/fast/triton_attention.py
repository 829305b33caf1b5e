"""SAM's windowed and global vision attention as one Triton flash-attention kernel.

It reads q, k, v straight from the qkv projection of the *unpadded* (B, 64, 64) grid (a key in
a window's zero padding is qkv(0) = the qkv bias, what SAM attends to), adds the rel-pos bias
(`samrep.fast.attention`) from the (N, window) rel_h / rel_w terms (`triton_relpos`) so q.k and
p.v stay 80-dim, and writes (B, 64, 64, heads, head_dim), the layout proj reads. Online softmax
in fp32; dots accumulate in fp32 from fp16/bf16. head_dim: a power of two >= 16 or the sum of
two (80 = 64 + 16). On a CPU the kernel runs only under TRITON_INTERPRET=1.
"""

import torch

from samrep.fast.reference import grid_tables, reference_attention, rel_width

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU wheel of torch brings no Triton; callers check `available()`
    triton = None


__all__ = ["available", "grid_tables", "reference_attention", "rel_width", "windowed_attention"]


def available() -> bool:
    """Whether Triton imports (the kernel's only requirement besides a CUDA GPU)."""
    return triton is not None


def split_head_dim(head_dim: int) -> tuple[int, int]:
    """head_dim as (d0, d1), powers of two >= 16 (d1 may be 0): 80 -> (64, 16); else
    ValueError (the kernel cannot run)."""
    d0 = 1 << (head_dim.bit_length() - 1)
    d1 = head_dim - d0
    if d0 < 16 or (d1 and (d1 < 16 or d1 & (d1 - 1))):
        raise ValueError(
            f"head_dim {head_dim} is not a power of two >= 16 or the sum of two such powers"
        )
    return d0, d1


if triton is not None:

    @triton.jit
    def _relpos_attention_kernel(
        qkv_ptr,  # (B, S, S, 3, H, D) contiguous: the qkv projection of the unpadded grid
        bias_ptr,  # (3, H, D): the qkv bias, i.e. qkv of a zero (padding) token
        relh_ptr,  # (B, H, S*S, GP): rel_h[b, h, token, key_row], columns >= G unused
        relw_ptr,  # (B, H, S*S, GP): rel_w[b, h, token, key_col]
        out_ptr,  # (B, S, S, H, D) contiguous
        scale,
        # S grid side (64), G window side (14; S if global), GP = G rounded up to a power of
        # two >= 16, NWIN = ceil(S / G) windows per side, D = D0 + D1 (split_head_dim)
        H: tl.constexpr, S: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
        NWIN: tl.constexpr, D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid = tl.program_id(1)  # ((b * NWIN + wy) * NWIN + wx) * H + h
        h = pid % H
        win = pid // H
        wx = win % NWIN
        wy = (win // NWIN) % NWIN
        b = win // (NWIN * NWIN)
        T: tl.constexpr = G * G  # tokens per (padded) window
        # Each key block is exactly one key row (global attention, BLOCK_N == G): the rel_h
        # term is one column per block and the rel_w term the same tile for every block.
        ROW_BLOCKS: tl.constexpr = BLOCK_N == G

        # queries: window-local index i -> grid position (y, x); padding queries are skipped
        i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        qy = wy * G + i // G
        qx = wx * G + i % G
        q_ok = (i < T) & (qy < S) & (qx < S)
        q_tok = tl.where(q_ok, qy * S + qx, 0)
        row_stride = 3 * H * D
        base = qkv_ptr + b.to(tl.int64) * S * S * row_stride + h * D
        d0 = tl.arange(0, D0)
        q_rows = base + q_tok[:, None] * row_stride
        q0 = tl.load(q_rows + d0[None, :], mask=q_ok[:, None], other=0.0)
        if D1 > 0:
            d1 = D0 + tl.arange(0, D1)
            q1 = tl.load(q_rows + d1[None, :], mask=q_ok[:, None], other=0.0)

        rel_base = (b.to(tl.int64) * H + h) * S * S * GP
        relh_rows = relh_ptr + rel_base + q_tok * GP  # (BLOCK_M,) row starts
        relw_rows = relw_ptr + rel_base + q_tok * GP
        if ROW_BLOCKS:
            c = tl.arange(0, BLOCK_N)
            relw_tile = tl.load(relw_rows[:, None] + c[None, :], mask=q_ok[:, None], other=0.0)
            relw_tile = relw_tile.to(tl.float32)
        else:
            # the bias as two small dots with one-hot matrices built in registers:
            # rel_h[i, row(j)] = sum_r rel_h[i, r] * (r == row(j)), exact in fp32
            r = tl.arange(0, GP)
            r_ok = q_ok[:, None] & (r[None, :] < G)
            relh_tile = tl.load(relh_rows[:, None] + r[None, :], mask=r_ok, other=0.0)
            relw_tile = tl.load(relw_rows[:, None] + r[None, :], mask=r_ok, other=0.0)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc0 = tl.zeros([BLOCK_M, D0], tl.float32)
        if D1 > 0:
            acc1 = tl.zeros([BLOCK_M, D1], tl.float32)
        if HAS_BIAS:
            bk0 = tl.load(bias_ptr + (H + h) * D + d0)
            bv0 = tl.load(bias_ptr + (2 * H + h) * D + d0)
            if D1 > 0:
                bk1 = tl.load(bias_ptr + (H + h) * D + d1)
                bv1 = tl.load(bias_ptr + (2 * H + h) * D + d1)
        log2e = 1.4426950408889634

        for start in range(0, T, BLOCK_N):
            j = start + tl.arange(0, BLOCK_N)
            ky = j // G
            kx = j % G
            gy = wy * G + ky
            gx = wx * G + kx
            k_in = j < T  # beyond the window: masked out
            k_real = k_in & (gy < S) & (gx < S)  # inside the window and the image
            k_pad = k_in & ((gy >= S) | (gx >= S))  # window padding: qkv(0) = bias
            k_tok = tl.where(k_real, gy * S + gx, 0)
            k_rows = base + k_tok[:, None] * row_stride
            k0 = tl.load(k_rows + H * D + d0[None, :], mask=k_real[:, None], other=0.0)
            v0 = tl.load(k_rows + 2 * H * D + d0[None, :], mask=k_real[:, None], other=0.0)
            if HAS_BIAS:
                k0 = tl.where(k_pad[:, None], bk0[None, :], k0)
                v0 = tl.where(k_pad[:, None], bv0[None, :], v0)
            s = tl.dot(q0, tl.trans(k0))
            if D1 > 0:
                k1 = tl.load(k_rows + H * D + d1[None, :], mask=k_real[:, None], other=0.0)
                v1 = tl.load(k_rows + 2 * H * D + d1[None, :], mask=k_real[:, None], other=0.0)
                if HAS_BIAS:
                    k1 = tl.where(k_pad[:, None], bk1[None, :], k1)
                    v1 = tl.where(k_pad[:, None], bv1[None, :], v1)
                s += tl.dot(q1, tl.trans(k1))
            s = s * scale
            if ROW_BLOCKS:
                col = tl.load(relh_rows + start // G, mask=q_ok, other=0.0).to(tl.float32)
                s += relw_tile + col[:, None]
            else:
                onehot_h = (r[:, None] == ky[None, :]).to(relh_tile.dtype)
                onehot_w = (r[:, None] == kx[None, :]).to(relw_tile.dtype)
                s += tl.dot(relh_tile, onehot_h) + tl.dot(relw_tile, onehot_w)
            s = tl.where(k_in[None, :], s, float("-inf"))

            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2((m_i - m_new) * log2e)
            p = tl.exp2((s - m_new[:, None]) * log2e)
            l_i = l_i * alpha + tl.sum(p, 1)
            p = p.to(v0.dtype)
            acc0 = acc0 * alpha[:, None] + tl.dot(p, v0)
            if D1 > 0:
                acc1 = acc1 * alpha[:, None] + tl.dot(p, v1)
            m_i = m_new

        out_rows = out_ptr + b.to(tl.int64) * S * S * H * D + q_tok[:, None] * (H * D) + h * D
        inv = 1.0 / tl.where(q_ok, l_i, 1.0)
        out_ty = out_ptr.dtype.element_ty
        tl.store(out_rows + d0[None, :], (acc0 * inv[:, None]).to(out_ty), mask=q_ok[:, None])
        if D1 > 0:
            out1 = (acc1 * inv[:, None]).to(out_ty)
            tl.store(out_rows + d1[None, :], out1, mask=q_ok[:, None])


def windowed_attention(
    qkv: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    *,
    num_heads: int,
    window: int,
    scale: float,
    block: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """SAM vision attention on a square grid, windowed (window < S) or global.

    qkv (B, S, S, 3 * heads * head_dim) of the unpadded grid; qkv_bias (3 * heads * head_dim,)
    or None (padding tokens project to zero); rel_h, rel_w (B, heads, S * S, rel_width(window))
    contiguous. Returns (B, S, S, heads * head_dim) in qkv's dtype, before proj."""
    if triton is None:
        raise RuntimeError("the Triton attention kernel needs the triton package")
    b, s, s2, three_c = qkv.shape
    head_dim = three_c // (3 * num_heads)
    if s != s2 or three_c != 3 * num_heads * head_dim:
        raise ValueError(f"qkv must be (B, S, S, 3*heads*head_dim), got {tuple(qkv.shape)}")
    d0, d1 = split_head_dim(head_dim)
    expected = (b, num_heads, s * s, rel_width(window))
    for name, t in (("rel_h", rel_h), ("rel_w", rel_w)):
        if tuple(t.shape) != expected or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous {expected}, got {tuple(t.shape)}")
    qkv = qkv.contiguous()
    out = torch.empty(b, s, s, num_heads * head_dim, dtype=qkv.dtype, device=qkv.device)
    nwin = -(-s // window)
    # (BLOCK_M, BLOCK_N, num_warps, num_stages): the fastest of a sweep on one H200 (bf16,
    # bs16; reports/h200/attention_sweep.txt): windowed 0.87 ms, global 5.85 ms per layer
    fastest = (256, 64, 8, 2) if window * window <= 256 else (128, 64, 4, 2)
    block_m, block_n, warps, stages = block or fastest
    grid = (triton.cdiv(window * window, block_m), b * nwin * nwin * num_heads)
    bias = qkv_bias if qkv_bias is not None else qkv.new_zeros(3 * num_heads * head_dim)
    _relpos_attention_kernel[grid](
        qkv, bias.to(qkv.dtype).contiguous(), rel_h, rel_w, out, float(scale), H=num_heads,
        S=s, G=window, GP=rel_width(window), NWIN=nwin, D=head_dim, D0=d0, D1=d1,
        HAS_BIAS=qkv_bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
        num_stages=stages,
    )  # fmt: skip
    return out


@torch.library.custom_op("samrep::relpos_attention", mutates_args=())
def relpos_attention(
    qkv: torch.Tensor,
    qkv_bias: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    num_heads: int,
    window: int,
    scale: float,
) -> torch.Tensor:
    """`windowed_attention` as a custom op; on the CPU `reference_attention`, so modules around
    it test against transformers without a GPU."""
    return windowed_attention(
        qkv, qkv_bias, rel_h, rel_w, num_heads=num_heads, window=window, scale=scale
    )


@relpos_attention.register_kernel("cpu")
def _(qkv, qkv_bias, rel_h, rel_w, num_heads, window, scale):
    return reference_attention(
        qkv, qkv_bias, rel_h, rel_w, num_heads=num_heads, window=window, scale=scale
    )
