"""`torch`: the HF SamModel in eager PyTorch (SDPA attention): the case's "val" phase."""

from __future__ import annotations

import torch
import transformers

from samrep.backends.base import Backend, MixedPrecisionSam, check_tf32, math_mode, set_tf32


class TorchBackend(Backend):
    name = "torch"
    precisions = ("fp32", "tf32", "fp16", "bf16")

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        super().check_available(device, precision)
        check_tf32(device, precision)

    def build(self, model, inputs) -> None:
        if self.device.type == "cuda":
            set_tf32(self.precision == "tf32")
        self.model = MixedPrecisionSam(model, self.device, self.precision, keep_embeddings=True)
        self.math_mode = math_mode(self.device.type, self.precision)

    @torch.inference_mode()
    def run(self, pixel_values, input_points):
        return self.model(pixel_values, input_points)

    @property
    def last_embeddings(self):  # the row's fidelity check reads the first batch's
        return self.model.last_embeddings

    @torch.inference_mode()
    def image_embeddings(self, pixel_values):
        return self.model.embed(pixel_values)

    def versions(self) -> dict:
        return {"torch": torch.__version__, "transformers": transformers.__version__}
