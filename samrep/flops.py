"""Analytic FLOPs of `transformers.SamModel`, from a `SamConfig` alone, and MFU. 2 FLOPs per
multiply-add, exactly what torch's `FlopCounterMode` counts on the eager attention path (matmuls and
convolutions only). Windowed blocks pad the 64x64 grid to the window (70 for 14): qkv, attention,
rel-pos and out projection run on 4900 tokens, the MLP on 4096. The decoder sees 7 tokens per
prompt and computes all 4 masks whatever `multimask_output` says (it only slices)."""

import dataclasses
import math

from transformers import SamConfig

# Really the ViT-H multiply-add count (~2.98e12 for the encoder); shown beside MFU for comparison.
ORIGINAL_FLOPS_PER_IMAGE = 3.1e12


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs per image (2 per multiply-add), by part; encoder parts sum over every vision block."""

    encoder_linear: float  # qkv, attention output projection and MLP
    encoder_attention: float  # the attention matmuls QK^T and PV
    encoder_rel_pos: float  # the two decomposed relative-position einsums
    encoder_conv: float  # patch embedding and the two neck convolutions
    prompt_decoder: float  # prompt encoder + mask decoder, for all of the image's prompts

    @property
    def encoder(self) -> float:
        return sum(dataclasses.astuple(self)[:4])  # the four encoder_* parts

    @property
    def total(self) -> float:
        """Whole model: encoder + prompt encoder + mask decoder."""
        return self.encoder + self.prompt_decoder

    def to_dict(self) -> dict[str, float]:
        """Every part plus `encoder` and `total`."""
        parts = dataclasses.asdict(self)
        decoder = parts.pop("prompt_decoder")
        return {**parts, "encoder": self.encoder, "prompt_decoder": decoder, "total": self.total}


def _mm(rows: int, inner: int, cols: int) -> int:
    """FLOPs of a (rows x inner) @ (inner x cols) product."""
    return 2 * rows * inner * cols


def _sam_attention(n_query: int, n_key: int, hidden: int, internal: int) -> int:
    """One decoder `SamAttention`: q/k/v projections to `internal`, QK^T and PV, out projection."""
    projections = _mm(n_query, hidden, internal) + 2 * _mm(n_key, hidden, internal)
    return projections + 2 * _mm(n_query, internal, n_key) + _mm(n_query, internal, hidden)


def _feed_forward(d_in: int, d_hidden: int, d_out: int, num_layers: int) -> int:
    """One token through `SamFeedForward` (proj_in, num_layers - 2 hidden layers, proj_out)."""
    hidden_layers = (num_layers - 2) * _mm(1, d_hidden, d_hidden)
    return _mm(1, d_in, d_hidden) + hidden_layers + _mm(1, d_hidden, d_out)


def sam_flops(config: SamConfig, points_per_image: int = 1, batch_size: int = 1) -> FlopCount:
    """FLOPs per image of one `SamModel` forward, by part (FlopCounterMode's count / batch).
    `batch_size` (images per forward) only spreads the image-wide positional encoding (2.1 MFLOP
    for ViT-H, once per forward) over the batch; each of `points_per_image` gets its own masks."""
    if points_per_image < 1:
        raise ValueError(f"points_per_image must be >= 1, got {points_per_image}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    v, p, d = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    grid = v.image_size // v.patch_size  # 64 tokens a side for 1024 / 16
    n, c = grid * grid, v.hidden_size
    linear = attention = rel_pos = 0
    for i in range(v.num_hidden_layers):
        windowed = i not in v.global_attn_indexes and v.window_size > 0
        span = v.window_size if windowed else grid  # tokens a side of one attention
        windows = math.ceil(grid / span) ** 2  # the grid padded to a multiple of the window
        tokens = span * span  # per attention: 196 windowed, 4096 global for ViT-H
        linear += _mm(windows * tokens, c, 3 * c) + _mm(windows * tokens, c, c)  # qkv, proj
        linear += _mm(n, c, v.mlp_dim) + _mm(n, v.mlp_dim, c)  # MLP: real tokens only
        attention += windows * 2 * _mm(tokens, c, tokens)  # QK^T and PV, all heads
        if v.use_rel_pos:  # einsum bhwc,hkc->bhwk and bhwc,wkc->bhwk, all heads
            rel_pos += windows * 2 * _mm(tokens, c, span)
    out = v.output_channels
    conv = _mm(n, v.num_channels * v.patch_size**2, c)  # patch embedding
    conv += _mm(n, c, out) + _mm(n, out * 9, out)  # neck: 1x1 then 3x3

    # Decoder, per prompt (the image embedding is repeated for every prompt); n image tokens.
    hidden, masks = d.hidden_size, d.num_multimask_outputs + 1
    t = 1 + masks + 2  # IoU token, mask tokens, the point and HF's padding point
    # The blocks' cross attentions use SamTwoWayAttentionBlock's default downsample rate 2 (HF
    # does not pass the config's); the final token-to-image attention uses the config's.
    cross = _sam_attention(t, n, hidden, hidden // 2) + _sam_attention(n, t, hidden, hidden // 2)
    block = _sam_attention(t, t, hidden, hidden) + cross + 2 * _mm(t, hidden, d.mlp_dim)  # + MLP
    per_prompt = d.num_hidden_layers * block
    per_prompt += _sam_attention(t, n, hidden, hidden // d.attention_downsample_rate)
    # Output upscaling: two ConvTranspose2d, kernel 2 stride 2 (64 -> 128 -> 256 a side).
    per_prompt += _mm(n, hidden * 4, hidden // 4) + _mm(4 * n, (hidden // 4) * 4, hidden // 8)
    per_prompt += masks * _feed_forward(hidden, hidden, hidden // 8, 3)  # hypernetwork MLPs
    per_prompt += _mm(masks, hidden // 8, 16 * n)  # mask product
    per_prompt += _feed_forward(hidden, d.iou_head_hidden_dim, masks, d.iou_head_depth)
    per_prompt += 2 * _mm(1, 2, v.num_pos_feats)  # random-Fourier encoding of the 2 points
    # Image-wide positional encoding: computed once per forward, then repeated over the batch.
    image_pe = _mm(p.image_embedding_size**2, 2, v.num_pos_feats)
    decoder = points_per_image * per_prompt + image_pe / batch_size
    return FlopCount(*(float(x) for x in (linear, attention, rel_pos, conv, decoder)))


def mfu(images_per_s: float, flops_per_image: float, peak_flops_per_s: float) -> float:
    """Model FLOP utilisation, a fraction: images/s x FLOPs/image / `peak_flops_per_s`, the
    device's dense peak FLOP/s at the precision that ran (989.5e12 for H200 bf16)."""
    if not peak_flops_per_s > 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak_flops_per_s}")
    if images_per_s < 0 or flops_per_image < 0:
        raise ValueError("images/s and FLOPs per image must be non-negative")
    return images_per_s * flops_per_image / peak_flops_per_s


def flops_section(config, bs: int, peak, precision: str, p_core: float, vit_h: bool, where) -> dict:
    """A record's flops: FLOPs per image by part (batch `bs`), the peak used, true and original
    MFU (`p_core`: images/s per GPU; `peak`: params' Peak or None, named by `where`)."""
    flops = sam_flops(config, 1, bs)
    out = {"per_image": flops.total, "breakdown": flops.to_dict(), "peak_key": precision}
    if peak is None:
        out["peak_source"] = f"not available: no {precision} peak in {where}"
    else:
        true = mfu(p_core, flops.total, peak.flops)
        original = mfu(p_core, ORIGINAL_FLOPS_PER_IMAGE, peak.flops) if vit_h else None
        out |= dict(peak_flops=peak.flops, peak_source=peak.source, mfu=true, mfu_original=original)
    return out | {"achieved_tflops": p_core * flops.total / 1e12}
