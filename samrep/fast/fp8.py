"""fp8 (e4m3) GEMMs via `torch._scaled_mm` with row-wise scales (CUDA sm90+; the tests use
torch >= 2.13's CPU kernel): y = (x8 @ w8.T) * sx[:, None] * sw[None, :] + b, weights scaled
per output channel once, activations per row by their producers (`samrep.fast.fused_ops`).
e4m3 keeps 3 mantissa bits (relative rounding <= 2^-4): an approximation of the bf16 model.
"""

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
_AMAX_FLOOR = 1e-12  # an all-zero row gets a finite scale (and quantises to zeros)


def check_fp8_supported(device: torch.device | str | None = None) -> None:
    """RuntimeError unless `device` (default: the current CUDA device) is CUDA sm90+, where
    `_scaled_mm` takes row-wise scales."""
    if torch.device(device or "cuda").type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("fp8 linear layers need a CUDA GPU with compute capability >= 9.0")
    cap = torch.cuda.get_device_capability(device)
    if cap < (9, 0):
        raise RuntimeError(f"fp8 rowwise linear layers need compute capability >= 9.0, got {cap}")


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> (e4m3 (M, K), float32 scale (M, 1)); each row's max |x| maps to 448."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=_AMAX_FLOOR) / FP8_MAX
    # clamp: x / scale can round a hair past 448, and a cast out of range may give NaN
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


class Fp8Linear(nn.Module):
    """An `nn.Linear`'s weights in e4m3 for `scaled_mm`: weight_fp8 (N, K) and weight_scale
    (1, N) float32, views of integer buffers so that `Module.to(dtype)` leaves them alone; bias
    (N,) the linear's. fast_accum: `_scaled_mm`'s use_fast_accum (Hopper: no periodic promotion
    of the tensor-core accumulator to fp32; faster, less exact)."""

    def __init__(self, linear: nn.Linear, fast_accum: bool = False):
        super().__init__()
        if linear.in_features % 16 or linear.out_features % 16:  # _scaled_mm needs this
            raise ValueError(f"fp8 linear needs features divisible by 16, got {linear}")
        self.fast_accum = bool(fast_accum)
        weight_fp8, scale = quantize(linear.weight.detach())
        self.register_buffer("weight_bits", weight_fp8.view(torch.uint8))
        self.register_buffer("scale_bits", scale.reshape(1, -1).contiguous().view(torch.int32))
        self.bias = linear.bias

    @property
    def weight_fp8(self) -> torch.Tensor:
        return self.weight_bits.view(FP8_DTYPE)

    @property
    def weight_scale(self) -> torch.Tensor:
        return self.scale_bits.view(torch.float32)

    def extra_repr(self) -> str:
        n, k = self.weight_bits.shape
        return f"in_features={k}, out_features={n}, fast_accum={self.fast_accum}"


_BIAS_IN_MM: list[bool] = [True]  # False once `_scaled_mm` has refused a rowwise bias


def scaled_mm(
    x8: torch.Tensor, x_scale: torch.Tensor, linear: Fp8Linear, bias: bool = False
) -> torch.Tensor:
    """x8 @ W.T (+ b with bias), bf16, from an already quantised x8 (..., K) e4m3 contiguous
    with x_scale (rows, 1) float32. The bias goes into the GEMM epilogue where this torch
    accepts it with rowwise scales (2.11 on an H200 does), else a separate add."""
    a = x8.reshape(-1, x8.shape[-1])
    kw = dict(scale_a=x_scale, scale_b=linear.weight_scale, out_dtype=torch.bfloat16)
    kw["use_fast_accum"] = linear.fast_accum
    out = None
    if bias and _BIAS_IN_MM[0]:
        try:
            out = torch._scaled_mm(a, linear.weight_fp8.t(), bias=linear.bias, **kw)
        except (RuntimeError, NotImplementedError):
            _BIAS_IN_MM[0] = False
    if out is None:
        out = torch._scaled_mm(a, linear.weight_fp8.t(), **kw)
        if bias:
            out = out + linear.bias.to(out.dtype)
    return out.reshape(*x8.shape[:-1], out.shape[-1])
