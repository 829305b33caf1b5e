"""`inductor`: torch.compile of the HF SamModel (same mixed precision as `torch`), compiled in
the evaluation (its code does not persist across processes); the time in `versions.compile_s`."""

import importlib.util
import shutil
import time
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from samrep.backends.base import BackendUnavailable, HFBackend
from samrep.progress import log

Mode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class InductorOptions(BaseModel):  # torch.compile's keyword arguments
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Mode = Field("default", description="torch.compile mode")
    dynamic: bool = Field(False, description="dynamic shapes (false: specialised to the row's bs)")
    fullgraph: bool = Field(False, description="fail on a graph break instead of running eager")


class InductorBackend(HFBackend):
    name = "inductor"
    Options = InductorOptions

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        super().check_available(device, precision)
        if device == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            raise BackendUnavailable("inductor on the CPU needs a C++ compiler (none found)")
        if device == "cuda" and importlib.util.find_spec("triton") is None:
            raise BackendUnavailable("inductor on CUDA needs triton (not installed)")

    def build(self, model, inputs) -> None:
        """Copy, compile, run a batch of bs (twice with CUDA graphs, recorded on the second)."""
        o = self.opts
        super().build(model, inputs)
        self.model.eval()
        self.math_mode += f"; torch.compile {o.mode}"
        torch._dynamo.reset()  # Dynamo caches per code object: start each row from an empty cache
        self.compiled = torch.compile(self.model, **o.model_dump())
        pv = inputs.pixel_values.expand(self.bs, -1, -1, -1).contiguous().to(self.device)
        pts = inputs.input_points.expand(self.bs, -1, -1, -1).contiguous().to(self.device)
        t0 = time.perf_counter()
        self.run(pv, pts)
        self.synchronize()
        self.compile_s, self.warm_batches = time.perf_counter() - t0, 1
        if o.mode in ("reduce-overhead", "max-autotune"):
            self.run(pv, pts)
            self.warm_batches = 2
        log(f"inductor: compiled (mode {o.mode}, bs {self.bs}) in {self.compile_s:.1f} s")

    @torch.no_grad()
    def run(self, pixel_values, input_points):
        masks, iou = self.compiled(pixel_values, input_points)
        if self.opts.mode in ("reduce-overhead", "max-autotune"):  # CUDA graphs: static outputs
            return masks.clone(), iou.clone()  # that the next replay overwrites
        return masks, iou

    def versions(self) -> dict:
        return {**super().versions(), "compile_s": round(getattr(self, "compile_s", 0.0), 2)}
