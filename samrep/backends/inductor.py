"""`inductor`: the HF SamModel through torch.compile (TorchInductor), same math as `torch`.

The model is `torch_eager.mixed_precision_model` (image encoder in the row's precision, prompt
encoder + mask decoder fp32) and one function, encoder -> decoder, is compiled. The compile
happens in `build`, by running one batch of the row's batch size (twice: the second call
checks that nothing recompiles), so the row's build time holds the compile time and the
timed loop holds none. With `dynamic: false` (the default) the graph is specialized to that
batch size; the dataset's batches all have it (drop_last).
"""

from __future__ import annotations

import importlib.util
import shutil
import time

import torch
import transformers

from samrep.backends.base import Backend, BackendUnavailable
from samrep.backends.torch_eager import (
    DTYPES,
    math_mode,
    mixed_precision_forward,
    mixed_precision_model,
    set_tf32,
)
from samrep.progress import log

# option -> (default, meaning)
OPTIONS = {
    "mode": ("default", "torch.compile mode: default, reduce-overhead, max-autotune, ..."),
    "dynamic": (False, "torch.compile dynamic shapes (false: specialized to the row's bs)"),
    "fullgraph": (False, "fail on any graph break instead of running it in eager"),
}


def resolve_options(options: dict) -> dict:
    """`options` completed with the defaults; an unknown key is a ValueError naming the known."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(
            f"inductor: options.{unknown[0]}: unknown option (known: {', '.join(OPTIONS)})"
        )
    return {k: options.get(k, default) for k, (default, _) in OPTIONS.items()}


class InductorBackend(Backend):
    name = "inductor"
    precisions = ("fp32", "tf32", "fp16", "bf16")

    def __init__(self, device, precision, options, workdir, bs=1):
        super().__init__(device, precision, options, workdir, bs)
        self.settings = resolve_options(self.options)
        self.compile_s = None

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        super().check_available(device, precision)
        if device == "cpu":
            if precision == "tf32":
                raise BackendUnavailable("TF32 is a CUDA math mode; there is none on the CPU")
            # Inductor's CPU code is C++ built at compile time.
            if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
                raise BackendUnavailable("inductor on the CPU needs a C++ compiler (none found)")
        elif importlib.util.find_spec("triton") is None:
            raise BackendUnavailable("inductor on CUDA needs triton (not installed)")

    def build(self, model, inputs) -> None:
        """Copy the model to the device in the precision, compile, run one batch of bs.

        `model`: fp32 SamModel on the CPU; `inputs`: samrep.data.ModelInputs (batch 1), expanded
        to the row's bs for the compiling call.
        """
        s = self.settings
        if self.device.type == "cuda":
            set_tf32(self.precision == "tf32")
        self.dtype = DTYPES[self.precision]
        self.model = mixed_precision_model(model, self.device, self.precision).eval()
        self.math_mode = math_mode(self.device.type, self.precision)
        # Dynamo caches compiled code per code object (this class's _forward) and falls back to
        # eager after a few recompiles: start each row from an empty cache.
        torch._dynamo.reset()
        self.compiled = torch.compile(
            self._forward, mode=s["mode"], dynamic=s["dynamic"], fullgraph=s["fullgraph"]
        )
        pv = inputs.pixel_values.expand(self.bs, -1, -1, -1).contiguous().to(self.device)
        pts = inputs.input_points.expand(self.bs, -1, -1, -1).contiguous().to(self.device)
        t0 = time.perf_counter()
        self.run(pv, pts)
        self.synchronize()
        self.compile_s = time.perf_counter() - t0
        # A second call: modes like reduce-overhead record CUDA graphs on it, not the first.
        self.run(pv, pts)
        log(f"inductor: compiled (mode {s['mode']}, bs {self.bs}) in {self.compile_s:.1f} s")

    def _forward(self, pixel_values, input_points):
        return mixed_precision_forward(self.model, self.dtype, pixel_values, input_points)

    @torch.no_grad()
    def run(self, pixel_values, input_points):
        """(B,3,1024,1024) f32, (B,1,1,2) f32 on the device -> (B,3,256,256) f32 logits,
        (B,3) f32 IoU, on the device."""
        masks, iou = self.compiled(pixel_values, input_points)
        # reduce-overhead replays CUDA graphs into static buffers the next call overwrites
        if self.settings["mode"] in ("reduce-overhead", "max-autotune"):
            masks, iou = masks.clone(), iou.clone()
        return masks, iou

    def versions(self) -> dict:
        v = {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "compile_mode": self.settings["mode"],
            "compile_dynamic": self.settings["dynamic"],
        }
        if self.compile_s is not None:
            v["compile_s"] = round(self.compile_s, 2)
        if self.device.type == "cuda" and importlib.util.find_spec("triton") is not None:
            import triton

            v["triton"] = triton.__version__
        return v
