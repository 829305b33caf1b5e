"""A SAM ViT block whose memory-bound work is fused into its neighbours (bf16 or fp8 GEMMs).

`FusedVisionLayer` computes `SamVisionLayer`'s output with the rel-pos attention kernel
(`GridVisionAttention`) and: residual add + LayerNorm in one Triton pass (the block's last
residual add is deferred into the next block's first norm: the stream is x + (d + d_bias));
GELU "exact" (erf, SAM's) or "tanh" in fc1's cuBLASLt epilogue; fp8 qkv/fc1/fc2 (e4m3, per-row
dynamic activation scales, per-channel weight scales), each input quantised by its producer:
the LayerNorms for qkv and fc1, `fused_ops.gelu_quant` (bias + GELU) for fc2. proj stays bf16:
the attention kernel writes bf16 (a row spans all heads: no one program sees its max).
Shapes: x, d (B, S, S, C) in the activation dtype (bf16 for fp8), contiguous.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import SamVisionLayer

from samrep.fast.attention import GridVisionAttention
from samrep.fast.fp8 import Fp8Linear, scaled_mm
from samrep.fast.fused_ops import add_layernorm, gelu_quant

GELU = ("exact", "tanh")
FP8_LINEARS = ("qkv", "fc1", "fc2")


def linear_gelu_tanh(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """tanh-GELU(x @ W.T + b) in one cuBLASLt GEMM (GELU-bias epilogue). x (..., K).
    Off CUDA the same function unfused: the CPU `_addmm_activation` applies erf GELU."""
    if x.device.type != "cuda":
        return F.gelu(linear(x), approximate="tanh")
    flat = x.reshape(-1, x.shape[-1])
    out = torch._addmm_activation(linear.bias, flat, linear.weight.t(), use_gelu=True)
    return out.reshape(*x.shape[:-1], out.shape[-1])


class FastMLP(nn.Module):
    """SAM's MLP (lin1, GELU, lin2; shares the HF weights) with the GELU in fc1's epilogue."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.lin1, self.lin2 = mlp.lin1, mlp.lin2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(linear_gelu_tanh(x, self.lin1))


class FusedVisionLayer(nn.Module):
    """One SAM ViT block, fused (module docstring). forward(x, d, d_bias) -> (x', d', d_bias')
    with x' + (d' + d_bias') the block's output; d None for the first block.
    fp8: which of `FP8_LINEARS` run in fp8 (True: all three, False: none)."""

    def __init__(self, layer: SamVisionLayer, grid: int, *, gelu: str, fp8=False, fast_accum=False):
        super().__init__()
        if gelu not in GELU:
            raise ValueError(f"gelu must be one of {GELU}, got {gelu!r}")
        self.norm1, self.norm2 = layer.layer_norm1, layer.layer_norm2
        self.attn = GridVisionAttention(layer.attn, grid, int(layer.window_size))
        self.fc1, self.fc2 = layer.mlp.lin1, layer.mlp.lin2
        self.gelu, self.approximate = gelu, "tanh" if gelu == "tanh" else "none"
        self.fp8 = FP8_LINEARS if fp8 is True else tuple(fp8 or ())
        linears = {"qkv": layer.attn.qkv, "fc1": self.fc1, "fc2": self.fc2}
        # rowwise (per output channel) weight scales, quantised once here
        self.fp8_linears = nn.ModuleDict({k: Fp8Linear(linears[k], fast_accum) for k in self.fp8})

    def extra_repr(self) -> str:
        return f"gelu={self.gelu}, fp8={self.fp8}"

    def _norm(self, norm: nn.LayerNorm, x, d, d_bias, fp8: bool):
        s, y, scale = add_layernorm(x, d, d_bias, norm.weight, norm.bias, norm.eps, fp8)
        return (x if d is None else s), y, scale

    def forward(
        self, x: torch.Tensor, d: torch.Tensor | None, d_bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        q8, f1, f2 = (name in self.fp8 for name in FP8_LINEARS)
        lin8 = self.fp8_linears
        x, y, y_scale = self._norm(self.norm1, x, d, d_bias, q8)
        qkv = scaled_mm(y, y_scale, lin8["qkv"], bias=True) if q8 else self.attn.qkv(y)
        h = self.attn.proj(self.attn.attend(qkv))
        x, y, y_scale = self._norm(self.norm2, x, h, None, f1)
        if f2:  # fc1's bias and GELU in the quantising kernel, fc2's bias in the next norm
            h = scaled_mm(y, y_scale, lin8["fc1"]) if f1 else F.linear(y, self.fc1.weight)
            h8, h_scale = gelu_quant(h, self.fc1.bias, self.approximate)
            return x, scaled_mm(h8, h_scale, lin8["fc2"]), self.fc2.bias
        if f1:
            h = F.gelu(scaled_mm(y, y_scale, lin8["fc1"], bias=True), approximate=self.approximate)
        elif self.gelu == "tanh":
            h = linear_gelu_tanh(y, self.fc1)
        else:
            h = F.gelu(self.fc1(y))
        return x, self.fc2(h), None


def run_fused_layers(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """The residual stream through `FusedVisionLayer`s: (B, S, S, C) -> (B, S, S, C)."""
    d = d_bias = None
    for layer in layers:
        x, d, d_bias = layer(x, d, d_bias)
    if d_bias is not None:
        d = (d.float() + d_bias.float()).to(d.dtype)  # as the bf16 GEMM epilogue rounds
    return x + d
