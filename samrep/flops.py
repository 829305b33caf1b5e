"""Analytic FLOPs of `transformers.SamModel`, from a `SamConfig` alone, and MFU.

One definition used everywhere in samrep. Conventions:

- 2 FLOPs per multiply-add (the original harness's 3.1e12 per image is the multiply-add count,
  kept as `ORIGINAL_FLOPS_PER_IMAGE` for comparison only).
- Exactly what `torch.utils.flop_counter.FlopCounterMode` counts on the eager attention path:
  matrix products (linear layers, `@`/matmul, bmm, einsum once lowered to bmm) and
  convolutions (transposed ones included), bias adds not included. Element-wise work
  (LayerNorm, softmax, GELU, adds, sin/cos) and the rel-pos interpolation are not counted.
- Windowed vision blocks pad the 64x64 token grid to a multiple of the window (64 -> 70 for
  window 14: 25 windows of 196 tokens): qkv, attention, rel-pos and the output projection run on
  the padded 4900 tokens; the MLP runs after un-partitioning, on the 4096 real tokens.
- Prompt encoder + mask decoder: `points_per_image` point prompts per image (the HF
  `point_batch_size`), one point each; HF appends one padding point to each prompt (no boxes),
  so the two-way transformer sees 1 IoU + 4 mask + 2 point tokens = 7 tokens per prompt. All
  4 masks are computed whether or not `multimask_output` is set (it only slices), so the count
  is the same either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import SamConfig

ORIGINAL_FLOPS_PER_IMAGE = 3.1e12
"""The original harness's "FLOPs" per image: really the ViT-H multiply-add count (~2.98e12 for
the encoder). samrep reports MFU with `sam_flops` and shows this convention beside it."""


@dataclass(frozen=True)
class FlopCount:
    """FLOPs per image (2 per multiply-add), by part.

    encoder_linear: qkv, attention output projection and MLP of every vision block.
    encoder_attention: the attention matmuls QK^T and PV of every vision block.
    encoder_rel_pos: the two decomposed relative-position einsums of every vision block.
    encoder_conv: patch embedding and the two neck convolutions.
    prompt_decoder: prompt encoder + mask decoder (two-way transformer, output upscaling,
        hypernetwork MLPs, mask product, IoU head, point and image-wide positional
        encodings) for all of the image's prompts.
    """

    encoder_linear: float
    encoder_attention: float
    encoder_rel_pos: float
    encoder_conv: float
    prompt_decoder: float

    @property
    def encoder(self) -> float:
        """Image encoder FLOPs per image."""
        return (
            self.encoder_linear + self.encoder_attention + self.encoder_rel_pos + self.encoder_conv
        )

    @property
    def total(self) -> float:
        """Whole-model FLOPs per image (encoder + prompt encoder + mask decoder)."""
        return self.encoder + self.prompt_decoder

    def to_dict(self) -> dict[str, float]:
        """Every part plus `encoder` and `total`, in FLOPs per image."""
        return {
            "encoder_linear": self.encoder_linear,
            "encoder_attention": self.encoder_attention,
            "encoder_rel_pos": self.encoder_rel_pos,
            "encoder_conv": self.encoder_conv,
            "encoder": self.encoder,
            "prompt_decoder": self.prompt_decoder,
            "total": self.total,
        }


def _mm(rows: int, inner: int, cols: int) -> int:
    """FLOPs of a (rows x inner) @ (inner x cols) product: 2 per multiply-add."""
    return 2 * rows * inner * cols


def _sam_attention(n_query: int, n_key: int, hidden: int, internal: int) -> int:
    """FLOPs of one `SamAttention` (decoder): q/k/v projections to `internal` channels,
    QK^T and PV over all heads (heads x head_dim = internal), output projection back."""
    projections = _mm(n_query, hidden, internal) + 2 * _mm(n_key, hidden, internal)
    matmuls = 2 * _mm(n_query, internal, n_key)
    return projections + matmuls + _mm(n_query, internal, hidden)


def _feed_forward(d_in: int, d_hidden: int, d_out: int, num_layers: int) -> int:
    """FLOPs of one token through `SamFeedForward` (proj_in, num_layers - 2 hidden, proj_out)."""
    return (
        _mm(1, d_in, d_hidden)
        + (num_layers - 2) * _mm(1, d_hidden, d_hidden)
        + _mm(1, d_hidden, d_out)
    )


def _encoder_flops(config: SamConfig) -> tuple[int, int, int, int]:
    """(linear, attention, rel_pos, conv) FLOPs of the vision encoder for one image."""
    v = config.vision_config
    grid = v.image_size // v.patch_size  # 64 tokens a side for 1024 / 16
    n = grid * grid
    c = v.hidden_size
    linear = attention = rel_pos = 0
    for i in range(v.num_hidden_layers):
        window = 0 if i in v.global_attn_indexes else v.window_size
        if window > 0:  # pad the grid to a multiple of the window: 64 -> 70 for window 14
            span = window  # rows (= columns) of tokens in one attention
            windows = math.ceil(grid / window) ** 2
        else:
            span, windows = grid, 1
        tokens = span * span  # tokens per attention (196 windowed, 4096 global for ViT-H)
        padded = windows * tokens
        linear += _mm(padded, c, 3 * c) + _mm(padded, c, c)  # qkv, proj: padded tokens
        linear += _mm(n, c, v.mlp_dim) + _mm(n, v.mlp_dim, c)  # MLP: real tokens only
        attention += windows * 2 * _mm(tokens, c, tokens)  # QK^T and PV, all heads
        if v.use_rel_pos:  # einsum bhwc,hkc->bhwk and bhwc,wkc->bhwk, all heads
            rel_pos += windows * 2 * _mm(tokens, c, span)
    out = v.output_channels
    conv = _mm(n, v.num_channels * v.patch_size**2, c)  # patch embedding
    conv += _mm(n, c, out) + _mm(n, out * 9, out)  # neck: 1x1 then 3x3
    return linear, attention, rel_pos, conv


def _prompt_decoder_flops(config: SamConfig, points_per_image: int, batch_size: int) -> float:
    """Prompt encoder + mask decoder FLOPs for one image with `points_per_image` prompts."""
    v, p, d = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    grid = v.image_size // v.patch_size
    m = grid * grid  # image tokens the decoder attends to
    hidden = d.hidden_size
    mask_tokens = d.num_multimask_outputs + 1
    tokens = 1 + mask_tokens + 2  # IoU token, mask tokens, the point and HF's padding point
    feats = v.num_pos_feats

    # Two-way transformer, per prompt (the image embedding is repeated for every prompt).
    # The blocks' cross attentions use SamTwoWayAttentionBlock's default downsample rate 2 (HF
    # does not pass the config's); the final token-to-image attention uses the config's.
    block = (
        _sam_attention(tokens, tokens, hidden, hidden)  # self attention, downsample 1
        + _sam_attention(tokens, m, hidden, hidden // 2)  # token -> image
        + _mm(tokens, hidden, d.mlp_dim)
        + _mm(tokens, d.mlp_dim, hidden)
        + _sam_attention(m, tokens, hidden, hidden // 2)  # image -> token
    )
    transformer = d.num_hidden_layers * block
    transformer += _sam_attention(tokens, m, hidden, hidden // d.attention_downsample_rate)

    # Output upscaling: two ConvTranspose2d, kernel 2 stride 2 (64 -> 128 -> 256 a side).
    upscale = _mm(m, hidden * 4, hidden // 4) + _mm(4 * m, (hidden // 4) * 4, hidden // 8)
    hyper = mask_tokens * _feed_forward(hidden, hidden, hidden // 8, 3)
    mask_product = _mm(mask_tokens, hidden // 8, 16 * m)
    iou = _feed_forward(hidden, d.iou_head_hidden_dim, mask_tokens, d.iou_head_depth)
    point_pe = 2 * _mm(1, 2, feats)  # random-Fourier encoding of the point and the pad point
    per_prompt = transformer + upscale + hyper + mask_product + iou + point_pe

    # Image-wide positional encoding: computed once per forward, then repeated over the batch.
    image_pe = _mm(p.image_embedding_size**2, 2, feats)
    return points_per_image * per_prompt + image_pe / batch_size


def sam_flops(config: SamConfig, points_per_image: int = 1, batch_size: int = 1) -> FlopCount:
    """FLOPs per image of one `SamModel` forward (1024x1024 input for ViT-H), by part.

    `points_per_image`: point prompts per image (each gets its own 3 masks + IoU scores).
    `batch_size`: images per forward; it only spreads the image-wide positional encoding
    (2 * 64 * 64 * 2 * 128 = 2.1 MFLOP for ViT-H, computed once per forward) over the batch.
    The result equals FlopCounterMode's count on the eager attention path divided by the batch.
    """
    if points_per_image < 1:
        raise ValueError(f"points_per_image must be >= 1, got {points_per_image}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    linear, attention, rel_pos, conv = _encoder_flops(config)
    return FlopCount(
        encoder_linear=float(linear),
        encoder_attention=float(attention),
        encoder_rel_pos=float(rel_pos),
        encoder_conv=float(conv),
        prompt_decoder=float(_prompt_decoder_flops(config, points_per_image, batch_size)),
    )


def mfu(images_per_s: float, flops_per_image: float, peak_flops_per_s: float) -> float:
    """Model FLOP utilisation: achieved FLOP/s (images/s x FLOPs/image) / peak FLOP/s.

    A fraction (0.25 = 25%). `peak_flops_per_s` is the device's dense peak at the precision
    that ran, in FLOP/s (e.g. 989.5e12 for H200 bf16); it must be positive.
    """
    if not peak_flops_per_s > 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak_flops_per_s}")
    if images_per_s < 0 or flops_per_image < 0:
        raise ValueError("images/s and FLOPs per image must be non-negative")
    return images_per_s * flops_per_image / peak_flops_per_s
