"""A faster SamModel for one point prompt per image: the same weights and the same math.

`build_fast_sam(model)` returns a `FastSam` whose forward(pixel_values, input_points) gives
`model(pixel_values=..., input_points=..., multimask_output=True)`'s (pred_masks, iou_scores)
up to rounding. Only the image encoder changes: attention "kernel" (`GridVisionAttention`,
Triton on the unpadded grid) or "folded" (`FastVisionAttention` on SAM's zero-padded windows);
rel-pos tables and the image PE computed once; the patch conv as one GEMM; fp16 keeps the
residual stream and LayerNorms in fp32 (ViT-H overflows otherwise); `fused=True`:
`samrep.fast.fused` blocks, optionally with fp8 linears. Static shapes, no host syncs.
"""

import copy
import itertools
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamModel
from transformers.models.sam.modeling_sam import SamVisionEncoder, SamVisionLayer

from samrep.fast.attention import FastVisionAttention, GridVisionAttention
from samrep.fast.fp8 import check_fp8_supported
from samrep.fast.fused import GELU, FastMLP, FusedVisionLayer, run_fused_layers

ATTENTION = ("kernel", "folded")  # how the image encoder's attention runs (FastVisionLayer)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def converted_copy(
    module: nn.Module, dtype: torch.dtype, device: torch.device | str | None = None
) -> nn.Module:
    """A deep copy of `module` with floating tensors in `dtype` (and on `device`); `module`
    is untouched. Tensors already in dtype/device share storage (an fp32 copy costs nothing);
    tied parameters stay tied; no grads."""
    memo: dict[int, object] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):  # tied: listed once
        new = tensor.detach().to(device=device, dtype=dtype if tensor.is_floating_point() else None)
        if isinstance(tensor, nn.Parameter):
            new = nn.Parameter(new, requires_grad=False)
        memo[id(tensor)] = new
    return copy.deepcopy(module, memo)


class UpcastLayerNorm(nn.Module):
    """An `nn.LayerNorm` (or channels-first `SamLayerNorm`) computed in fp32, output in the
    weight dtype (fp16 mode). Input (..., C), or (B, C, H, W) when channels first."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias = norm.weight, norm.bias
        self.eps = float(norm.eps)
        self.normalized_shape = tuple(norm.normalized_shape)
        self.channels_first = getattr(norm, "data_format", "channels_last") == "channels_first"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            x = x.permute(0, 2, 3, 1)
        y = F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(self.weight.dtype)
        return y.permute(0, 3, 1, 2) if self.channels_first else y


class PatchEmbedGemm(nn.Module):
    """SAM's patch embedding (16x16 stride-16 conv) as one GEMM over unfolded patches, sharing
    the conv's parameters: (B, 3, H, W) -> (B, H/16, W/16, hidden). cuDNN runs this conv with
    a slow non-tensor-core kernel (7.5 ms per bf16 batch of 16 on an H200)."""

    def __init__(self, patch_embed: nn.Module):
        super().__init__()
        conv = patch_embed.projection
        self.weight, self.bias = conv.weight, conv.bias  # (hidden, 3, p, p), (hidden,)
        self.patch = int(conv.kernel_size[0])
        if tuple(conv.kernel_size) != tuple(conv.stride) or len(set(conv.kernel_size)) != 1:
            raise ValueError("PatchEmbedGemm needs a square conv with stride == kernel size")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        (b, c, h, w), p = pixel_values.shape, self.patch
        patches = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(b, h // p, w // p, c * p * p)
        return F.linear(patches, self.weight.flatten(1), self.bias)


class FastVisionLayer(nn.Module):
    """One SAM ViT block (`SamVisionLayer`) with a faster attention (module docstring); shares
    the HF weights. (B, 64, 64, C) -> (B, 64, 64, C) in the residual dtype."""

    def __init__(self, layer: SamVisionLayer, grid: int, *, attention="folded", **kw):
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        self.window_size = int(layer.window_size)
        norm = UpcastLayerNorm if kw.get("upcast_norm") else (lambda m: m)
        self.layer_norm1 = norm(layer.layer_norm1)
        self.partition = attention == "folded"
        if self.partition:
            self.attn = FastVisionAttention(layer.attn, self.window_size or grid)
        else:
            self.attn = GridVisionAttention(layer.attn, grid, self.window_size)
        self.layer_norm2 = norm(layer.layer_norm2)
        self.mlp = FastMLP(layer.mlp) if kw.get("gelu") == "tanh" else layer.mlp

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm1(hidden_states)
        if self.partition and self.window_size > 0:  # HF's own (zero) padding and partition
            size, hf = (h.shape[1], h.shape[2]), SamVisionLayer
            windows, padded = hf.window_partition(self, h, self.window_size)
            h = hf.window_unpartition(self, self.attn(windows), self.window_size, padded, size)
        else:
            h = self.attn(h)
        hidden_states = hidden_states + h
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class FastVisionEncoder(nn.Module):
    """SAM's image encoder: (B, 3, 1024, 1024) float -> (B, 256, 64, 64) in the model dtype."""

    def __init__(self, encoder: SamVisionEncoder, *, attention: str, upcast_norm: bool, **kw):
        super().__init__()
        cfg = encoder.config
        grid = cfg.image_size // cfg.patch_size
        self.upcast_norm = bool(upcast_norm)
        gelu, self.fused, fp8 = kw["gelu"], kw["fused"], kw["fp8"]
        if gelu not in GELU:
            raise ValueError(f"gelu must be one of {GELU}, got {gelu!r}")
        if self.fused and (upcast_norm or attention != "kernel"):
            raise ValueError("fused layers need attention='kernel' and no fp32 residual")
        self.patch_embed = PatchEmbedGemm(encoder.patch_embed)
        self.pos_embed = encoder.pos_embed  # (1, 64, 64, C) parameter, or None
        if self.fused:
            make = partial(FusedVisionLayer, gelu=gelu, fp8=fp8, fast_accum=kw["fast_accum"])
        else:
            make = partial(FastVisionLayer, attention=attention, upcast_norm=upcast_norm, gelu=gelu)
        self.layers = nn.ModuleList(make(layer, grid) for layer in encoder.layers)
        # SAM's neck (1x1 conv, LN, 3x3 conv, LN), held here: the fp16 LN swap leaves HF's alone
        norm = UpcastLayerNorm if upcast_norm else (lambda m: m)
        self.neck_conv1 = encoder.neck.conv1
        self.neck_norm1 = norm(encoder.neck.layer_norm1)
        self.neck_conv2 = encoder.neck.conv2
        self.neck_norm2 = norm(encoder.neck.layer_norm2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.neck_conv1.weight.dtype
        hidden_states = self.patch_embed(pixel_values.to(dtype))
        if self.pos_embed is not None:
            hidden_states = hidden_states + self.pos_embed
        if self.upcast_norm:  # fp16: the residual stream in fp32 (fp16 layer outputs promote)
            hidden_states = hidden_states.float()
        if self.fused:
            hidden_states = run_fused_layers(self.layers, hidden_states)
        else:
            for layer in self.layers:
                hidden_states = layer(hidden_states)
        x = hidden_states.to(dtype).permute(0, 3, 1, 2)
        x = self.neck_norm1(self.neck_conv1(x))
        return self.neck_norm2(self.neck_conv2(x))


class FastSam(nn.Module):
    """SAM with `FastVisionEncoder` and HF's prompt encoder and mask decoder: forward(
    pixel_values (B, 3, 1024, 1024), input_points (B, P, n, 2) pixel (x, y), labels 1) ->
    (low-res mask logits (B, P, 3, 256, 256), iou scores (B, P, 3)), float32."""

    def __init__(self, hf: SamModel, **kw):
        super().__init__()
        self.precision_dtype = hf.vision_encoder.patch_embed.projection.weight.dtype
        self.vision_encoder = FastVisionEncoder(hf.vision_encoder, **kw)
        self.prompt_encoder, self.mask_decoder = hf.prompt_encoder, hf.mask_decoder
        with torch.no_grad():  # weights only: (1, 256, 64, 64), computed by HF in the model dtype
            image_pe = hf.get_image_wide_positional_embeddings()
        self.register_buffer("image_pe", image_pe.detach().clone(), persistent=False)

    def forward(self, pixel_values: torch.Tensor, input_points: torch.Tensor):
        image_embeddings = self.vision_encoder(pixel_values)
        labels = torch.ones_like(input_points[..., 0], dtype=torch.int)  # as SamModel does
        sparse, dense = self.prompt_encoder(
            input_points=input_points, input_labels=labels, input_boxes=None, input_masks=None
        )
        masks, iou = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=self.image_pe.expand(len(image_embeddings), -1, -1, -1),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        return masks.float(), iou.float()


def build_fast_sam(
    model: SamModel, *, precision: str = "bf16", attention: str = "folded",
    fp8_linear: bool | tuple[str, ...] = False, fp32_residual: bool | None = None,
    gelu: str = "exact", fused: bool = False, fp8_fast_accum: bool = False,
) -> FastSam:  # fmt: skip
    """A `FastSam` (eval, no grads) with `model`'s weights on its device; `model` untouched;
    move it with `.to(device)` only. precision: "fp32" (weights shared), "fp16" or "bf16".
    attention: "folded" or "kernel" (Triton on CUDA, its torch reference on the CPU); fused:
    `FusedVisionLayer` blocks (attention "kernel", no fp32_residual: fp32 residual stream and
    norms, default for fp16 only); gelu: "exact" (erf, SAM's) or "tanh" (fc1's epilogue).
    fp8_linear (fused, bf16, CUDA sm90+): qkv/fc1/fc2 or the named subset in e4m3, quantised by
    their producers, fp8_fast_accum: see `Fp8Linear`; an approximation, not the same math."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    if fp8_linear:
        if precision != "bf16" or not fused:
            raise ValueError(f"fp8_linear needs fused=True and precision='bf16', got {precision!r}")
        check_fp8_supported()
    hf = converted_copy(model, DTYPES[precision]).eval()
    residual = precision == "fp16" if fp32_residual is None else fp32_residual
    layers = dict(gelu=gelu, fused=fused, fp8=fp8_linear, fast_accum=fp8_fast_accum)
    fast = FastSam(hf, attention=attention, upcast_norm=residual, **layers)
    return fast.eval().requires_grad_(False)
