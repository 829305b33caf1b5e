"""`torch`: the HF SamModel in eager PyTorch (SDPA attention): the case's "val" phase."""

from __future__ import annotations

import copy

import torch
import transformers

from samrep.backends.base import Backend

DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def set_tf32(enabled: bool) -> None:
    """TF32 on or off for matmuls and convolutions (a global torch setting)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def math_mode(device: str, precision: str) -> str:
    """What the matmuls really ran in: the original's "fp32" engine ran TF32 (defect 2)."""
    if precision == "fp32":
        return "fp32 (TF32 off)" if device == "cuda" else "fp32"
    if precision == "tf32":
        return "fp32 weights, TF32 matmuls"
    return f"{precision} image encoder, fp32 prompt encoder + mask decoder"


def mixed_precision_model(model, device: torch.device, precision: str):
    """A copy of `model` on `device` with the image encoder in the precision.

    The prompt encoder and mask decoder (0.06% of the FLOPs) stay fp32 so the point coordinates
    are never rounded to fp16/bf16 (the original's fp16 acc loss, defect 3).
    """
    dtype = DTYPES[precision]
    if device.type == "cpu" and dtype == torch.float32:
        return model  # nothing to convert: share the fp32 CPU weights
    m = copy.deepcopy(model).to(device)
    m.vision_encoder.to(dtype)
    return m


def mixed_precision_forward(model, dtype, pixel_values, input_points):
    """A `mixed_precision_model` forward: encoder in `dtype`, prompt encoder + decoder in fp32.

    pixel_values (B, 3, 1024, 1024), input_points (B, 1, 1, 2) -> low_res_masks
    (B, 3, 256, 256) float32 logits, iou_scores (B, 3) float32.
    """
    image_embeddings = model.vision_encoder(pixel_values.to(dtype)).last_hidden_state
    out = model(
        image_embeddings=image_embeddings.float(), input_points=input_points, multimask_output=True
    )
    return out.pred_masks[:, 0].float(), out.iou_scores[:, 0].float()


class TorchBackend(Backend):
    name = "torch"
    precisions = ("fp32", "tf32", "fp16", "bf16")

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        super().check_available(device, precision)
        if device == "cpu" and precision == "tf32":
            from samrep.backends.base import BackendUnavailable

            raise BackendUnavailable("TF32 is a CUDA math mode; there is none on the CPU")

    def build(self, model, inputs) -> None:
        if self.device.type == "cuda":
            set_tf32(self.precision == "tf32")
        self.dtype = DTYPES[self.precision]
        self.model = mixed_precision_model(model, self.device, self.precision)
        self.math_mode = math_mode(self.device.type, self.precision)

    @torch.inference_mode()
    def run(self, pixel_values, input_points):
        return mixed_precision_forward(self.model, self.dtype, pixel_values, input_points)

    def versions(self) -> dict:
        return {"torch": torch.__version__, "transformers": transformers.__version__}
