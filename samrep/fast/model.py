"""A faster SamModel for one point prompt per image: the same weights and the same math.

`build_fast_sam(model)` returns a `FastSam` whose forward(pixel_values, input_points) gives
what `model(pixel_values=..., input_points=..., multimask_output=True)` gives (pred_masks,
iou_scores), up to floating-point rounding. What changes, in the image encoder only:

* attention (`attention=`): "kernel": `GridVisionAttention`, one Triton flash kernel per layer
  over the unpadded 64x64 grid with SAM's rel-pos bias added in the kernel (no window
  partition; `samrep.fast.triton_attention`); "folded": `FastVisionAttention` on partitioned
  windows, the bias folded into q/k so SDPA's flash kernel runs; "masked": the bias as an SDPA
  mask. Rel-pos tables are gathered once into buffers in every mode;
* the patch-embedding conv as one GEMM (`PatchEmbedGemm`, `patch_gemm=`);
* precision: weights and activations in fp32, fp16 or bf16. For fp16 the residual stream and
  every LayerNorm run in fp32 (ViT-H in fp16 overflows there otherwise; `fp32_residual=`);
  matmuls stay fp16;
* optional fp8 e4m3 linear layers (`samrep.fast.fp8`, CUDA sm89+ only);
* `fused=True`: `samrep.fast.fused.FusedVisionLayer` blocks (residual add + LayerNorm in one
  Triton pass; with fp8 the producers quantise), and `gelu="tanh"`: GELU in fc1's epilogue.

Window padding keeps SAM's exact semantics: tokens are zero-padded 64 -> 70 a side after the
first LayerNorm and are not masked (their keys/values are qkv(0) = the bias; the kernel
substitutes the qkv bias for them instead of computing qkv on zeros).

The prompt encoder and mask decoder are the transformers modules (copied); the image-wide
positional embedding, which depends only on weights, is computed once at build time.
Everything in forward has static shapes and no host syncs or data-dependent Python branches,
so it suits torch.compile and CUDA graphs.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamModel
from transformers.models.sam.modeling_sam import SamVisionEncoder, SamVisionLayer

from samrep.fast.attention import FastVisionAttention, GridVisionAttention
from samrep.fast.fp8 import check_fp8_supported, default_granularity, swap_linears_to_fp8_
from samrep.fast.fused import GELU, FastMLP, FusedVisionLayer, run_fused_layers

# How the image encoder's attention runs (see FastVisionLayer).
ATTENTION = ("kernel", "folded", "masked")

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def converted_copy(
    module: nn.Module, dtype: torch.dtype, device: torch.device | str | None = None
) -> nn.Module:
    """A deep copy of `module` with floating parameters/buffers in `dtype` (and on `device`).

    Never touches `module`. Where dtype and device already match, the copy's tensors share
    storage with the original (new Parameter objects, no extra memory), so an fp32 copy of
    ViT-H costs nothing; tied parameters stay tied. Copied parameters do not require grad.
    """
    memo: dict[int, object] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if id(tensor) in memo:
            continue
        floating = tensor.is_floating_point()
        new = tensor.detach().to(device=device, dtype=dtype if floating else None)
        if isinstance(tensor, nn.Parameter):
            new = nn.Parameter(new, requires_grad=False)
        memo[id(tensor)] = new
    return copy.deepcopy(module, memo)


class UpcastLayerNorm(nn.Module):
    """LayerNorm computed in float32, output in the weight dtype (fp16 mode).

    Wraps the weights of an `nn.LayerNorm` (or SAM's channels-first `SamLayerNorm`).
    Input (..., C) (or (B, C, H, W) when channels_first) in any float dtype.
    """

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
    """SAM's patch embedding (a 16x16 stride-16 conv) as one GEMM over unfolded patches.

    Same weights and math: each output token is the conv kernel dotted with its 3x16x16
    patch, flattened in the conv weight's (channel, row, column) order. cuDNN runs this conv
    with a slow non-tensor-core kernel (7.5 ms per bf16 batch of 16 on an H200); as a GEMM
    it is a (B*4096, 768) x (768, 1280) product. Shares the HF conv's parameters.
    (B, 3, H, W) -> (B, H/16, W/16, hidden).
    """

    def __init__(self, patch_embed: nn.Module):
        super().__init__()
        conv = patch_embed.projection
        self.weight, self.bias = conv.weight, conv.bias  # (hidden, 3, p, p), (hidden,)
        self.patch = int(conv.kernel_size[0])
        if (
            tuple(conv.kernel_size) != tuple(conv.stride)
            or conv.kernel_size[0] != conv.kernel_size[1]
        ):
            raise ValueError("PatchEmbedGemm needs a square conv with stride == kernel size")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, c, h, w = pixel_values.shape
        p = self.patch
        patches = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(b, h // p, w // p, c * p * p)
        return F.linear(patches, self.weight.flatten(1), self.bias)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, window, window, C), zero-padding H, W up to multiples.

    As SAM's: the padding is zeros (applied after the norm) and is not masked later.
    Returns the windows and the padded (H, W).
    """
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: (B * windows, window, window, C) -> (B, H, W, C)."""
    (hp, wp), (h, w) = padded, size
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.reshape(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :]


class FastVisionLayer(nn.Module):
    """One SAM ViT block (`SamVisionLayer`) with a faster attention; shares the HF weights.

    (B, 64, 64, C) -> (B, 64, 64, C) in the residual dtype (fp32 with `upcast_norm`).
    attention: "kernel": `GridVisionAttention` (Triton kernel on the unpadded grid, no window
        partition); "folded": `FastVisionAttention` with the rel-pos bias folded into q/k
        (flash SDPA) on partitioned windows; "masked": the bias materialised as an SDPA mask.
    """

    def __init__(
        self,
        layer: SamVisionLayer,
        grid: int,
        *,
        attention: str = "folded",
        upcast_norm: bool,
        gelu: str = "exact",
    ):
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        self.window_size = int(layer.window_size)
        norm = UpcastLayerNorm if upcast_norm else (lambda m: m)
        self.layer_norm1 = norm(layer.layer_norm1)
        self.partition = attention != "kernel"
        if self.partition:
            self.attn = FastVisionAttention(
                layer.attn, self.window_size or grid, fold_rel_pos=attention == "folded"
            )
        else:
            self.attn = GridVisionAttention(layer.attn, grid, self.window_size)
        self.layer_norm2 = norm(layer.layer_norm2)
        self.mlp = FastMLP(layer.mlp) if gelu == "tanh" else layer.mlp

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm1(hidden_states)
        if self.partition and self.window_size > 0:
            size = (h.shape[1], h.shape[2])
            windows, padded = window_partition(h, self.window_size)
            h = window_unpartition(self.attn(windows), self.window_size, padded, size)
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
        patch_gemm, gelu, self.fused, fp8 = kw["patch_gemm"], kw["gelu"], kw["fused"], kw["fp8"]
        if gelu not in GELU:
            raise ValueError(f"gelu must be one of {GELU}, got {gelu!r}")
        if self.fused and (upcast_norm or attention != "kernel"):
            raise ValueError("fused layers need attention='kernel' and no fp32 residual")
        self.patch_embed = (
            PatchEmbedGemm(encoder.patch_embed) if patch_gemm else encoder.patch_embed
        )
        self.pos_embed = encoder.pos_embed  # (1, 64, 64, C) parameter, or None
        self.layers = nn.ModuleList(
            FusedVisionLayer(layer, grid, gelu=gelu, fp8=fp8)
            if self.fused
            else FastVisionLayer(
                layer, grid, attention=attention, upcast_norm=upcast_norm, gelu=gelu
            )
            for layer in encoder.layers
        )
        # SAM's neck (SamVisionNeck: 1x1 conv, LN, 3x3 conv, LN, channels first), its modules
        # held here so the fp16 LayerNorm swap never touches the HF module
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
        if self.upcast_norm:
            # fp16: keep the residual stream in fp32 (the layers' fp16 outputs promote into it)
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
    """SAM with `FastVisionEncoder` and transformers' prompt encoder and mask decoder.

    forward(pixel_values (B, 3, 1024, 1024) float, input_points (B, P, n, 2) float pixel
    coordinates (x, y) in the 1024 frame, all labels 1) ->
    (low_res_masks (B, P, 3, 256, 256) float32 logits, iou_scores (B, P, 3) float32),
    i.e. `SamModel(..., multimask_output=True)`'s pred_masks and iou_scores.
    """

    def __init__(self, hf: SamModel, *, attention: str, upcast_norm: bool, **kw):
        super().__init__()
        self.precision_dtype = hf.vision_encoder.patch_embed.projection.weight.dtype
        self.vision_encoder = FastVisionEncoder(
            hf.vision_encoder, attention=attention, upcast_norm=upcast_norm, **kw
        )
        self.prompt_encoder = hf.prompt_encoder
        self.mask_decoder = hf.mask_decoder
        with torch.no_grad():
            # depends on weights only: (1, 256, 64, 64), computed by HF in the model dtype
            image_pe = hf.get_image_wide_positional_embeddings()
        self.register_buffer("image_pe", image_pe.detach().clone(), persistent=False)

    def forward(
        self, pixel_values: torch.Tensor, input_points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image_embeddings = self.vision_encoder(pixel_values)
        batch = image_embeddings.shape[0]
        labels = torch.ones_like(input_points[..., 0], dtype=torch.int)  # as SamModel does
        sparse, dense = self.prompt_encoder(
            input_points=input_points, input_labels=labels, input_boxes=None, input_masks=None
        )
        masks, iou = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=self.image_pe.expand(batch, -1, -1, -1),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        return masks.float(), iou.float()


def build_fast_sam(
    model: SamModel,
    *,
    precision: str = "bf16",
    attention: str = "folded",
    fp8_linear: bool = False,
    fp32_residual: bool | None = None,
    patch_gemm: bool = True,
    gelu: str = "exact",
    fused: bool = False,
) -> FastSam:
    """A `FastSam` (eval mode, no grads) with `model`'s weights, on `model`'s device.

    precision: "fp32" (weights shared with `model`, no copy), "fp16" or "bf16" (converted
        copies). `model` itself is never modified.
    attention: "folded" (rel-pos bias folded into q/k, flash SDPA), "kernel" (the Triton
        kernel of `samrep.fast.triton_attention` on CUDA, its torch reference on the CPU) or
        "masked" (bias as an SDPA mask, as transformers does). See `FastVisionLayer`.
    fp8_linear: the image encoder's linear layers (qkv, proj, MLP) in fp8 e4m3 with row-wise
        scales (per-tensor below sm90); needs precision "bf16" and a CUDA GPU with compute
        capability >= 8.9 (RuntimeError otherwise). An approximation, not the same math.
    fp32_residual: keep the encoder's residual stream and its LayerNorms in fp32 while the
        matmuls run in `precision` (default: on for fp16, where ViT-H overflows otherwise).
    patch_gemm: run the patch-embedding conv as a GEMM (`PatchEmbedGemm`).
    gelu: "exact" (erf, SAM's) or "tanh" (fc1's cuBLASLt epilogue; an approximation).
    fused: `FusedVisionLayer` blocks (needs attention "kernel"); with fp8_linear the fused fp8
        path (producers quantise; qkv, fc1, fc2 in fp8, proj bf16) replaces `Fp8Linear` swaps.
    Move the result with `.to(device)` only (not `.to(dtype)`): the precision is fixed here.
    """
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    if fp8_linear:
        if precision != "bf16":
            raise ValueError(f"fp8_linear needs precision='bf16', got {precision!r}")
        check_fp8_supported()
    hf = converted_copy(model, DTYPES[precision]).eval()
    if fp32_residual is None:
        fp32_residual = precision == "fp16"
    fast = FastSam(
        hf,
        attention=attention,
        upcast_norm=bool(fp32_residual),
        patch_gemm=bool(patch_gemm),
        gelu=gelu,
        fused=bool(fused),
        fp8=bool(fp8_linear and fused),
    )
    if fp8_linear and not fused:
        swap_linears_to_fp8_(fast.vision_encoder, granularity=default_granularity())
    return fast.eval().requires_grad_(False)
