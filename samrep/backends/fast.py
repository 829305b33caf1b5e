"""`fast`: the same SAM weights and math through a faster image encoder (samrep.fast).

The image encoder is `samrep.fast.build_fast_sam`'s: on CUDA with Triton, attention is one
Triton flash kernel per layer that adds SAM's decomposed rel-pos bias itself and reads the
unpadded token grid (no window partition); elsewhere the bias is folded into q/k so SDPA's
flash attention runs. Rel-pos tables are gathered once; fp8 linear layers are optional. It is
compiled with torch.compile (CUDA graphs on a GPU by default); the prompt encoder and mask
decoder are HF's, in fp32 as in every backend.
"""

from __future__ import annotations

import copy

import torch

from samrep.backends.base import Backend, BackendUnavailable
from samrep.fast.model import ATTENTION

DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8": torch.bfloat16,
}
OPTIONS = {
    "compile": "torch.compile the image encoder (default: true on CUDA, false on the CPU)",
    "mode": "torch.compile mode (default: 'reduce-overhead', i.e. CUDA graphs, on CUDA; 'default' on the CPU)",
    "attention": "'kernel' (Triton, CUDA only), 'folded' (bias folded into q/k, flash SDPA) or "
    "'masked' (bias as an SDPA mask, as transformers); default: 'kernel' on CUDA with Triton, "
    "else 'folded'",
    "fp32_residual": "keep the encoder's residual stream and LayerNorms in fp32 (default: true "
    "for fp16, false otherwise)",
}


def default_attention(device: torch.device, precision: str) -> str:
    """'kernel' where the Triton kernel runs (CUDA, triton importable, 16-bit inputs: its
    tl.dot would round fp32 inputs to TF32), else 'folded'."""
    from samrep.fast import triton_attention

    usable = device.type == "cuda" and triton_attention.available() and precision != "fp32"
    return "kernel" if usable else "folded"


def decoder_copy(model):
    """An fp32 copy of `model` without its image encoder (prompt encoder + mask decoder only)."""
    encoder = model.vision_encoder
    model.vision_encoder = None  # not copied: only the 3.6 GFLOP decoder side is needed
    try:
        return copy.deepcopy(model)
    finally:
        model.vision_encoder = encoder


class FastBackend(Backend):
    name = "fast"
    precisions = ("fp32", "fp16", "bf16", "fp8")

    def __init__(self, device, precision, options, workdir, bs=1):
        super().__init__(device, precision, options, workdir, bs)
        unknown = sorted(set(self.options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"fast: unknown option '{unknown[0]}' (known: {sorted(OPTIONS)})")

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        super().check_available(device, precision)
        if precision == "fp8":
            if device != "cuda" or not torch.cuda.is_available():
                raise BackendUnavailable("fp8 linear layers need a CUDA GPU (sm89+)")
            if torch.cuda.get_device_capability() < (8, 9):
                raise BackendUnavailable("fp8 linear layers need compute capability 8.9 or newer")

    def build(self, model, inputs) -> None:
        from samrep.fast import build_fast_sam

        cuda = self.device.type == "cuda"
        if cuda:  # fp32 means fp32: TF32 off, as in the torch backend
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.dtype = DTYPES[self.precision]
        source = copy.deepcopy(model) if self.precision == "fp32" else model  # fp32 shares weights
        default = default_attention(self.device, self.precision)
        self.attention = self.options.get("attention", default)
        if self.attention not in ATTENTION:
            raise ValueError(f"fast: option attention must be one of {ATTENTION}")
        if self.attention == "kernel" and (not cuda or self.precision == "fp32"):
            raise BackendUnavailable("fast: attention 'kernel' needs a CUDA GPU and 16-bit inputs")
        residual = self.options.get("fp32_residual")
        fast = build_fast_sam(
            source,
            precision="bf16" if self.precision == "fp8" else self.precision,
            attention=self.attention,
            fp8_linear=self.precision == "fp8",
            fp32_residual=None if residual is None else bool(residual),
        )
        self.encoder = fast.vision_encoder.to(self.device)
        self.decoder = decoder_copy(model).to(self.device).eval()
        if self.options.get("compile", cuda):
            mode = self.options.get("mode", "reduce-overhead" if cuda else "default")
            self.encoder = torch.compile(self.encoder, mode=mode, dynamic=False)
        self.math_mode = {
            "fp32": "fp32 (TF32 off)" if cuda else "fp32",
            "fp8": "fp8 e4m3 encoder linears, bf16 elsewhere; fp32 decoder",
        }.get(self.precision, f"{self.precision} image encoder, fp32 prompt encoder + mask decoder")
        self.math_mode += f"; attention: {self.attention}"
        # Compile and capture now, at the row's batch size, so build time holds it.
        bs = self.bs
        pv = inputs.pixel_values.expand(bs, -1, -1, -1).contiguous().to(self.device)
        pts = inputs.input_points.expand(bs, -1, -1, -1).contiguous().to(self.device)
        for _ in range(2):
            self.run(pv, pts)

    @torch.inference_mode()
    def run(self, pixel_values, input_points):
        image_embeddings = self.encoder(pixel_values.to(self.dtype)).float()
        out = self.decoder(
            image_embeddings=image_embeddings, input_points=input_points, multimask_output=True
        )
        return out.pred_masks[:, 0].float(), out.iou_scores[:, 0].float()

    def versions(self) -> dict:
        import transformers

        return {"torch": torch.__version__, "transformers": transformers.__version__}
