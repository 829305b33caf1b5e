"""The one interface every engine implements.

A backend is built once (from the PyTorch model, or from the ONNX export) into an artifact it
may cache under `workdir`, then runs batches: pixel_values (B, 3, 1024, 1024) float32 and
input_points (B, 1, 1, 2) float32 (x, y in the 1024 frame), both already on its device, to
low_res_masks (B, 3, 256, 256) logits and iou_scores (B, 3), on the device. Timing, scoring and
memory are done around it by samrep.timing / metrics / memory, identically for every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch


class BackendUnavailable(Exception):
    """This backend cannot run here (toolkit or device missing); the row says "not run: <why>"."""


class Backend(ABC):
    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]  # precisions it can run at all
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    # Builds from an ONNX export (the export stage makes it ahead of the build).
    uses_onnx: ClassVar[bool] = False
    # Its build leaves an artifact on disk that later processes reuse (an engine file, an
    # export): the build stage makes it ahead of the evaluation. torch.compile's does not.
    persistent_build: ClassVar[bool] = False

    def __init__(self, device: str, precision: str, options: dict, workdir: Path, bs: int = 1):
        self.device = torch.device(device)
        self.bs = bs  # the row's batch size: engines with a static batch build for it
        self.precision = precision
        self.options = dict(options)
        self.workdir = Path(workdir)
        self.math_mode = precision  # what actually ran, e.g. "fp32 (TF32 off)"
        self.export_info = None  # samrep.export.ExportInfo of the ONNX this backend built from

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        """Raise BackendUnavailable with the reason when this backend cannot run here."""
        if device not in cls.devices:
            raise BackendUnavailable(f"{cls.name} does not run on {device}")
        if precision not in cls.precisions:
            raise BackendUnavailable(
                f"{cls.name} has no {precision} mode (has {', '.join(cls.precisions)})"
            )
        if device == "cpu" and precision == "fp16":
            raise BackendUnavailable("fp16 is not a CPU compute precision here")

    def export_onnx(self, model, inputs, force: bool = False):
        """Export (or reuse) the ONNX this backend builds from -> ExportInfo; None if it uses none."""
        return None

    @abstractmethod
    def build(self, model, inputs) -> None:
        """Prepare the engine from `model` (fp32 SamModel on the CPU) and example `inputs`."""

    @abstractmethod
    def run(
        self, pixel_values: torch.Tensor, input_points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,1024,1024), (B,1,1,2) on the device -> (B,3,256,256) logits, (B,3) scores."""

    def verify(self, gt) -> dict | None:
        """The engine check after the build (onnx_engine.OnnxEngine.verify); None: none here."""
        return None

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def versions(self) -> dict:
        return {"torch": torch.__version__}
