"""fp8 (e4m3) linear layers for the SAM vision encoder, via `torch._scaled_mm`.

Weights are quantized once (scales precomputed), activations on the fly, both with row-wise
scales by default (one scale per token row of x and per output row of W):

    x ~ x8 * sx[:, None],   W ~ w8 * sw[:, None],   y = (x8 @ w8.T) * sx[:, None] * sw[None, :] + b

e4m3 keeps 3 mantissa bits (relative rounding error <= 2^-4 per element), so this is an
approximation of the bf16 model, not the same math: compare its masks, not its bits.

The real path runs only on CUDA with compute capability >= 8.9 (Ada, Hopper and later);
`check_fp8_supported` raises a RuntimeError elsewhere. `fp8_linear_emulated` is the same
quantization with the matmul done in fp32 on dequantized values: a CPU reference for tests.
"""

from __future__ import annotations

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# Floor for amax so an all-zero row gets a finite scale (and quantizes to zeros).
_AMAX_FLOOR = 1e-12
GRANULARITIES = ("rowwise", "tensor")


def check_fp8_supported(device: torch.device | str | None = None) -> None:
    """Raise RuntimeError unless `device` (default: the current CUDA device) can run fp8 matmuls."""
    device = torch.device(device) if device is not None else None
    if (device is not None and device.type != "cuda") or not torch.cuda.is_available():
        where = device.type if device is not None else "this machine (no CUDA)"
        raise RuntimeError(
            f"fp8 linear layers need a CUDA GPU with compute capability >= 8.9; got {where}"
        )
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        raise RuntimeError(
            f"fp8 linear layers need compute capability >= 8.9 (Ada/Hopper); this GPU is "
            f"{cap[0]}.{cap[1]} ({torch.cuda.get_device_name(device)})"
        )


def default_granularity(device: torch.device | str | None = None) -> str:
    """'rowwise' on Hopper and later (sm90+, where `_scaled_mm` has row-wise scales), else 'tensor'."""
    if torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (9, 0):
        return "rowwise"
    return "tensor"


def quantize(x: torch.Tensor, granularity: str = "rowwise") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D tensor (M, K) to e4m3.

    Returns (x8 (M, K) float8_e4m3fn, scale float32): scale (M, 1) for 'rowwise', (1, 1) for
    'tensor'; x ~ x8.float() * scale. The largest |x| of each row (or of the tensor) maps to
    448, the e4m3 maximum.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    xf = x.float()
    if granularity == "rowwise":
        amax = xf.abs().amax(dim=-1, keepdim=True)
    else:
        amax = xf.abs().amax().reshape(1, 1)
    scale = amax.clamp(min=_AMAX_FLOOR) / FP8_MAX
    # clamp: x / scale can round a hair past 448; an out-of-range cast is not saturating on
    # every device (it may give NaN).
    x8 = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return x8, scale


def dequantize(x8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values of a quantized tensor: x8 (M, K) * scale ((M, 1) or (1, 1))."""
    return x8.float() * scale


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def fp8_linear(
    x: torch.Tensor,
    weight_fp8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    granularity: str = "rowwise",
    use_fast_accum: bool = False,
) -> torch.Tensor:
    """y = x @ W.T + b with an fp8 matmul (`torch._scaled_mm`), output bf16.

    x: (..., K) any float dtype; weight_fp8 (N, K) e4m3; weight_scale (1, N) float32 for
    'rowwise' or (1, 1) for 'tensor'; bias (N,) or None. Returns (..., N) bfloat16.
    Device-agnostic math: no device check here (`Fp8Linear` does that); torch >= 2.13 also has
    a CPU `_scaled_mm`, which the tests use to check layouts and scales.
    """
    x8, x_scale = quantize(_flatten(x), granularity)
    # _scaled_mm wants a row-major A and a column-major B: weight_fp8.t() is (K, N) col-major
    out = torch._scaled_mm(
        x8,
        weight_fp8.t(),
        scale_a=x_scale,
        scale_b=weight_scale,
        out_dtype=torch.bfloat16,
        use_fast_accum=use_fast_accum,
    )
    if bias is not None:
        # added outside _scaled_mm: its bias argument is not accepted with row-wise scales in
        # every torch version; torch.compile fuses this add anyway.
        out = out + bias.to(out.dtype)
    return out.reshape(*x.shape[:-1], weight_fp8.shape[0])


def fp8_linear_emulated(
    x: torch.Tensor,
    weight_fp8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    granularity: str = "rowwise",
) -> torch.Tensor:
    """The same quantization as `fp8_linear`, matmul in fp32 on dequantized values (CPU test
    reference). Returns (..., N) float32."""
    x8, x_scale = quantize(_flatten(x), granularity)
    w = weight_fp8.float() * weight_scale.reshape(-1, 1)  # (N, K); (1,1) broadcasts too
    out = dequantize(x8, x_scale) @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.reshape(*x.shape[:-1], weight_fp8.shape[0])


class Fp8Linear(nn.Module):
    """An `nn.Linear` whose matmul runs in fp8 e4m3 (weights quantized once, at construction).

    Input any float dtype, output bfloat16. forward raises RuntimeError off CUDA.
    `weight_fp8` (N, K) e4m3 and `weight_scale` ((1, N) or (1, 1) float32) are views of integer
    buffers; bias (N,) stays a parameter in the model's dtype.
    """

    def __init__(self, linear: nn.Linear, granularity: str = "rowwise", use_fast_accum=False):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if self.in_features % 16 or self.out_features % 16:
            # _scaled_mm needs K and N multiples of 16
            raise ValueError(
                f"fp8 linear needs in/out features divisible by 16, got {self.in_features}x"
                f"{self.out_features}"
            )
        self.granularity = granularity
        self.use_fast_accum = bool(use_fast_accum)
        with torch.no_grad():
            weight_fp8, scale = quantize(linear.weight.detach(), granularity)  # scale (N,1)/(1,1)
        # Stored as integer bit patterns: `Module.to(dtype)` converts every floating buffer
        # (float8 counts as floating), which would silently turn these into bf16 copies.
        self.register_buffer("weight_bits", weight_fp8.view(torch.uint8))
        self.register_buffer("scale_bits", scale.reshape(1, -1).contiguous().view(torch.int32))
        self.bias = linear.bias

    @property
    def weight_fp8(self) -> torch.Tensor:
        """(N, K) float8_e4m3fn."""
        return self.weight_bits.view(FP8_DTYPE)

    @property
    def weight_scale(self) -> torch.Tensor:
        """(1, N) float32 for 'rowwise', (1, 1) for 'tensor'."""
        return self.scale_bits.view(torch.float32)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"granularity={self.granularity}, use_fast_accum={self.use_fast_accum}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda":
            raise RuntimeError(
                f"Fp8Linear runs only on CUDA (compute capability >= 8.9); input is on {x.device}"
            )
        return fp8_linear(
            x, self.weight_fp8, self.weight_scale, self.bias, self.granularity, self.use_fast_accum
        )


_BIAS_IN_MM: list[bool] = [True]  # False once `_scaled_mm` has refused a rowwise bias


def scaled_mm(
    x8: torch.Tensor, x_scale: torch.Tensor, linear: Fp8Linear, bias: bool = False
) -> torch.Tensor:
    """x8 @ W.T (+ b with bias) from an already quantised input, bf16 out: no quantise pass.

    x8 (..., K) e4m3 contiguous, x_scale (rows, 1) float32 (x ~ x8 * x_scale); `linear` gives
    W's e4m3 values and (1, N) scales. Returns (..., N) bfloat16. The bias goes into the GEMM
    epilogue where this torch accepts it with rowwise scales, else a separate add.
    """
    a = x8.reshape(-1, x8.shape[-1])
    kw = dict(scale_a=x_scale, scale_b=linear.weight_scale, out_dtype=torch.bfloat16)
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


def swap_linears_to_fp8_(
    module: nn.Module, granularity: str = "rowwise", use_fast_accum: bool = False
) -> int:
    """Replace every `nn.Linear` under `module` by an `Fp8Linear` (in place). Returns the count."""
    targets = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in targets:
        setattr(parent, name, Fp8Linear(child, granularity, use_fast_accum))
    return len(targets)
