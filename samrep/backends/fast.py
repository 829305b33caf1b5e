"""`fast`: the same SAM weights and math through a faster image encoder (samrep.fast).

The image encoder is `samrep.fast.build_fast_sam`'s (decomposed rel-pos bias folded into the
attention dot product so flash attention runs, rel-pos index tables cached on the device,
optional fp8 linear layers), compiled with torch.compile (CUDA graphs on a GPU by default);
the prompt encoder and mask decoder are HF's, in fp32 as in every backend.
"""

from __future__ import annotations

import copy

import torch

from samrep.backends.base import Backend, BackendUnavailable

DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8": torch.bfloat16,
}
OPTIONS = {
    "compile": "torch.compile the image encoder (default: true on CUDA, false on the CPU)",
    "mode": "torch.compile mode (default: 'reduce-overhead', i.e. CUDA graphs, on CUDA; 'default' on the CPU)",
    "fold_rel_pos": "fold the rel-pos bias into q/k so flash attention runs (default: true)",
}


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
        fast = build_fast_sam(
            source,
            precision="bf16" if self.precision == "fp8" else self.precision,
            fold_rel_pos=bool(self.options.get("fold_rel_pos", True)),
            fp8_linear=self.precision == "fp8",
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
