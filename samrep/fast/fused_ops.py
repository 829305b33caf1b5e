"""Memory-bound ops of a ViT block fused into single passes (Triton on CUDA, torch elsewhere):
`add_layernorm` (s = x + (d + d_bias), y = LayerNorm(s); fp8: y as e4m3 rows with float32
scales max|y_row| / 448 for the next GEMM) and `gelu_quant` (GELU(h + bias) likewise, fc1 -> fc2).

Rounding follows the bf16 model: d + d_bias is rounded to the activation dtype before the add
(as a GEMM epilogue rounds), s before the norm; the norm runs in fp32. Both are `torch.library`
custom ops: the bodies are the torch references (CPU, the tests' oracles), CUDA runs Triton.
Shapes: x, d (..., C) contiguous; weight, bias, d_bias (C,); scale (rows, 1) float32.
"""

import torch
import torch.nn.functional as F

from samrep.fast.fp8 import FP8_DTYPE, quantize
from samrep.fast.triton_attention import triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _quant_store(y_ptr, s_ptr, row, cols, ok, y, C: tl.constexpr):
        """Store one fp32 row as e4m3 with scale max|y| / 448, as `fp8.quantize` (rowwise)."""
        amax = tl.maximum(tl.max(tl.where(ok, tl.abs(y), 0.0), 0), 1e-12)
        scale = amax / 448.0
        # times the reciprocal, not a division per element (the GELU kernel was ALU-bound)
        y8 = tl.clamp(y * (448.0 / amax), -448.0, 448.0)
        tl.store(y_ptr + row * C + cols, y8.to(y_ptr.dtype.element_ty), mask=ok)
        tl.store(s_ptr + row, scale)

    @triton.jit
    def _add_layernorm_kernel(
        x_ptr, d_ptr, db_ptr, sum_ptr, w_ptr, b_ptr, y_ptr, s_ptr, eps,
        C: tl.constexpr, BLOCK: tl.constexpr, HAS_D: tl.constexpr, HAS_DB: tl.constexpr,
        FP8: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < C
        x = tl.load(x_ptr + row * C + cols, mask=ok, other=0.0)
        if HAS_D:
            d = tl.load(d_ptr + row * C + cols, mask=ok, other=0.0)
            if HAS_DB:
                db = tl.load(db_ptr + cols, mask=ok, other=0.0)
                d = (d.to(tl.float32) + db.to(tl.float32)).to(x.dtype)
            x = (x.to(tl.float32) + d.to(tl.float32)).to(x.dtype)
            tl.store(sum_ptr + row * C + cols, x, mask=ok)
        xf = x.to(tl.float32)
        mean = tl.sum(xf, 0) / C
        diff = tl.where(ok, xf - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, 0) / C + eps)
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        y = diff * rstd * w + b
        if FP8:
            _quant_store(y_ptr, s_ptr, row, cols, ok, y, C)
        else:
            tl.store(y_ptr + row * C + cols, y.to(y_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _gelu_quant_kernel(
        h_ptr, b_ptr, y_ptr, s_ptr, C: tl.constexpr, BLOCK: tl.constexpr, TANH: tl.constexpr
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < C
        h = tl.load(h_ptr + row * C + cols, mask=ok, other=0.0)
        b = tl.load(b_ptr + cols, mask=ok, other=0.0)
        h = (h.to(tl.float32) + b.to(tl.float32)).to(h.dtype).to(tl.float32)
        if TANH:  # 0.5 h (1 + tanh(u)) = h * sigmoid(2u): one exp and one approximate
            # division (an IEEE one costs ~20 instructions: the kernel was ALU-bound)
            u2 = 1.5957691216057308 * (h + 0.044715 * h * h * h)
            y = tl.fdiv(h, 1.0 + tl.exp(-u2), ieee_rounding=False)
        else:
            y = 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))
        _quant_store(y_ptr, s_ptr, row, cols, ok, y, C)


def _launch_rows(kernel, rows: int, c: int, *args, **meta) -> None:
    block = triton.next_power_of_2(c)
    kernel[(rows,)](*args, C=c, BLOCK=block, num_warps=min(16, max(4, block // 256)), **meta)


def add_layernorm_triton(x, d, d_bias, weight, bias, eps: float, fp8: bool, q_dtype=FP8_DTYPE):
    """`add_layernorm` by the Triton kernel (CUDA, or the CPU under TRITON_INTERPRET=1).
    q_dtype: what y is stored as with fp8 (tests pass float32: Triton's interpreter casts
    to e4m3 wrongly for a few values, so they check the scaled values and cast in torch)."""
    c = x.shape[-1]
    rows = x.numel() // c
    s = torch.empty_like(x) if d is not None else x.new_empty(0)
    y = torch.empty(x.shape, dtype=q_dtype if fp8 else x.dtype, device=x.device)
    scale = torch.empty(rows if fp8 else 0, 1, dtype=torch.float32, device=x.device)
    _launch_rows(
        _add_layernorm_kernel, rows, c, x, d if d is not None else x,
        d_bias if d_bias is not None else weight, s, weight, bias, y, scale, float(eps),
        HAS_D=d is not None, HAS_DB=d_bias is not None, FP8=fp8,
    )  # fmt: skip
    return s, y, scale


@torch.library.custom_op("samrep::add_layernorm", mutates_args=())
def add_layernorm(
    x: torch.Tensor,
    d: torch.Tensor | None,
    d_bias: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    fp8: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, y, scale): s = x + (d + d_bias) (empty when d is None: s is x), y = LayerNorm(s) in
    x's dtype, or e4m3 with fp8 (scale (rows, 1) float32; empty without fp8)."""
    s = x
    if d is not None:
        s = x + (d if d_bias is None else (d.float() + d_bias.float()).to(x.dtype))
    y = F.layer_norm(s.float(), s.shape[-1:], weight.float(), bias.float(), eps)
    s = s if d is not None else x.new_empty(0)
    if not fp8:
        return s, y.to(x.dtype), x.new_empty(0, 1, dtype=torch.float32)
    y8, scale = quantize(y.reshape(-1, y.shape[-1]))
    return s, y8.reshape(x.shape), scale


add_layernorm.register_kernel("cuda")(add_layernorm_triton)


def gelu_quant_triton(h, bias, approximate: str, q_dtype=FP8_DTYPE):
    """`gelu_quant` by the Triton kernel (CUDA, or the CPU under TRITON_INTERPRET=1)."""
    c = h.shape[-1]
    rows = h.numel() // c
    y = torch.empty(h.shape, dtype=q_dtype, device=h.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=h.device)
    _launch_rows(_gelu_quant_kernel, rows, c, h, bias, y, scale, TANH=approximate == "tanh")
    return y, scale


@torch.library.custom_op("samrep::gelu_quant", mutates_args=())
def gelu_quant(
    h: torch.Tensor, bias: torch.Tensor, approximate: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y8, scale): GELU(h + bias) (h (..., C) contiguous, bias (C,)) as e4m3 rows with
    float32 scales (rows, 1). approximate: "none" (erf) or "tanh"."""
    y = F.gelu((h.float() + bias.float()).to(h.dtype).float(), approximate=approximate)
    y8, scale = quantize(y.reshape(-1, h.shape[-1]))
    return y8.reshape(h.shape), scale


gelu_quant.register_kernel("cuda")(gelu_quant_triton)
