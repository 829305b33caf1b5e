"""SAM's decomposed rel-pos terms for every token (`reference.rel_terms_reference`), read
straight from the qkv projection. As two einsums: permuted copies of q plus small GEMMs, ~0.38 ms
per ViT-H layer at bs16 on an H200. Here one Triton program per grid line (row y for rel_h,
column x for rel_w), head and image reads q once and does (S x D) @ (D x GP) on tensor cores,
in the attention's layout.
"""

import torch

from samrep.fast.reference import rel_terms_reference
from samrep.fast.triton_attention import split_head_dim, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _rel_terms_kernel(
        qkv_ptr,  # (B, S, S, 3, H, D) contiguous; q is [..., 0, :, :]
        tab_h_ptr,  # (S, GP, D): grid_h
        tab_w_ptr,  # (S, GP, D): grid_w
        out_h_ptr,  # (B, H, S*S, GP)
        out_w_ptr,  # (B, H, S*S, GP)
        H: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, GP: tl.constexpr,
        D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
    ):  # fmt: skip
        line = tl.program_id(0)  # y for rel_h, x for rel_w
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        along = tl.arange(0, SP)  # x for rel_h, y for rel_w
        ok = along < S
        if tl.program_id(2) == 0:
            tok = line * S + along
            tab_ptr, out_ptr = tab_h_ptr, out_h_ptr
        else:
            tok = along * S + line
            tab_ptr, out_ptr = tab_w_ptr, out_w_ptr
        tok = tl.where(ok, tok, 0)
        q_rows = qkv_ptr + (b.to(tl.int64) * S * S + tok[:, None]) * (3 * H * D) + h * D
        r = tl.arange(0, GP)
        t_rows = tab_ptr + (line * GP + r[:, None]) * D
        d0 = tl.arange(0, D0)
        q0 = tl.load(q_rows + d0[None, :], mask=ok[:, None], other=0.0)
        acc = tl.dot(q0, tl.trans(tl.load(t_rows + d0[None, :])))
        if D1 > 0:
            d1 = D0 + tl.arange(0, D1)
            q1 = tl.load(q_rows + d1[None, :], mask=ok[:, None], other=0.0)
            acc += tl.dot(q1, tl.trans(tl.load(t_rows + d1[None, :])))
        out = out_ptr + (bh.to(tl.int64) * S * S + tok[:, None]) * GP + r[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=ok[:, None])


def rel_terms_triton(qkv, grid_h, grid_w, num_heads: int):
    """`rel_terms` by the Triton kernel (CUDA, or the CPU under TRITON_INTERPRET=1)."""
    qkv = qkv.contiguous()
    b, s, _, three_c = qkv.shape
    head_dim = three_c // (3 * num_heads)
    d0, d1 = split_head_dim(head_dim)
    gp = grid_h.shape[1]
    rel_h = torch.empty(b, num_heads, s * s, gp, dtype=qkv.dtype, device=qkv.device)
    rel_w = torch.empty_like(rel_h)
    _rel_terms_kernel[(s, b * num_heads, 2)](
        qkv, grid_h.to(qkv.dtype).contiguous(), grid_w.to(qkv.dtype).contiguous(), rel_h,
        rel_w, H=num_heads, S=s, SP=max(16, triton.next_power_of_2(s)), GP=gp, D=head_dim,
        D0=d0, D1=d1, num_warps=4,
    )  # fmt: skip
    return rel_h, rel_w


@torch.library.custom_op("samrep::rel_terms", mutates_args=())
def rel_terms(
    qkv: torch.Tensor, grid_h: torch.Tensor, grid_w: torch.Tensor, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rel_h, rel_w), each (B, heads, S*S, GP), from qkv (B, S, S, 3*heads*head_dim)
    contiguous and grid_h, grid_w (S, GP, head_dim). Triton on CUDA, einsum on the CPU."""
    q = qkv.unflatten(-1, (3, num_heads, -1))[..., 0, :, :]
    return rel_terms_reference(q, grid_h, grid_w)


rel_terms.register_kernel("cuda")(rel_terms_triton)
