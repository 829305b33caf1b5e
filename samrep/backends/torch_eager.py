"""`torch`: the HF SamModel in eager PyTorch (SDPA attention): the case's "val" phase."""

import torch

from samrep.backends.base import HFBackend


class TorchBackend(HFBackend):
    name = "torch"
    keep_embeddings = True  # eager: `run` keeps its embeddings, no extra encoder pass

    @torch.inference_mode()
    def run(self, pixel_values, input_points):
        return self.model(pixel_values, input_points)

    @property
    def last_embeddings(self):  # the row's fidelity check reads the first batch's
        return self.model.last_embeddings

    @torch.inference_mode()
    def image_embeddings(self, pixel_values):
        return self.model.embed(pixel_values)
