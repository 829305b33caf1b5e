"""The one interface every engine implements, and the HF mixed-precision forward two share.

A backend is built once (from the PyTorch model or the ONNX export, maybe cached under `workdir`),
then runs pixel_values (B,3,1024,1024), input_points (B,1,1,2) (x, y in the 1024 frame), float32
on its device, to low_res_masks (B,3,256,256) logits, iou_scores (B,3) there; options: its pydantic
`Options`. Timing, scores and memory are measured around it, alike for all."""

import copy
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

DTYPES = dict(fp32=torch.float32, tf32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)
# What the matmuls really ran in on CUDA: the original's "fp32" engine ran TF32 (defect 2)
MATH = {"fp32": "fp32 (TF32 off)", "tf32": "fp32 weights, TF32 matmuls"}
MATH |= {p: f"{p} image encoder, fp32 prompt encoder + mask decoder" for p in ("fp16", "bf16")}


class BackendUnavailable(Exception):
    """This backend cannot run here (toolkit or device missing); the row says "not run: <why>"."""


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Backend(ABC):
    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]  # precisions it can run at all
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    Options: ClassVar[type[BaseModel]] = NoOptions
    uses_onnx: ClassVar[bool] = False  # builds from the ONNX export (the export stage)
    # its build leaves an artifact (an engine file) later processes reuse: built in the build stage
    persistent_build: ClassVar[bool] = False

    def __init__(self, device: str, precision: str, options: dict, workdir: Path, bs: int = 1):
        self.device, self.precision, self.workdir = torch.device(device), precision, Path(workdir)
        self.bs = bs  # the row's batch size: engines with a static batch build for it
        self.opts = self.Options.model_validate(dict(options))
        self.math_mode = precision  # what actually ran, e.g. "fp32 (TF32 off)"
        self.export_info = None  # the ONNX export this backend built from, if any
        # the ground truth's fp32 embeddings (1,256,64,64): spare the export's check an encoder pass
        self.reference = None
        self.warm_batches = 0  # batches of the row's bs its build and engine check ran

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        """Raise BackendUnavailable with the reason when this backend cannot run here."""
        if device not in cls.devices:
            raise BackendUnavailable(f"{cls.name} does not run on {device}")
        if precision not in cls.precisions:
            raise BackendUnavailable(f"{cls.name} has no {precision} mode")
        if device == "cpu" and precision == "fp16":
            raise BackendUnavailable("fp16 is not a CPU compute precision here")

    def export_onnx(self, model, inputs, force: bool = False):
        """Export (or reuse) the ONNX this backend builds from; None if it uses none."""
        return None

    @abstractmethod
    def build(self, model, inputs) -> None:
        """Prepare the engine from `model` (fp32 SamModel on the CPU) and example `inputs`."""

    def verify(self, gt) -> dict | None:
        """Engine check after the build (ONNX-built engines): raises when the engine is wrong."""
        return None

    @abstractmethod
    def run(self, pixel_values: torch.Tensor, input_points: torch.Tensor):
        """(B,3,1024,1024), (B,1,1,2) on the device -> (B,3,256,256) logits, (B,3) scores."""

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """(B,3,1024,1024) -> (B,256,64,64) or None: an extra pass, spared by last_embeddings."""
        return None

    def framework_peak_gib(self) -> float | None:
        """The engine's own allocator peak where it is not torch's (torch's is read by memory)."""
        return None

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def versions(self) -> dict:
        return {"torch": torch.__version__}


class MixedPrecisionSam(torch.nn.Module):
    """HF SamModel on a device with the image encoder in the precision; the prompt encoder and
    mask decoder (0.06% of the FLOPs) stay fp32 so the point is never rounded (defect 3)."""

    def __init__(self, model, device: torch.device, precision: str, keep_embeddings=False):
        super().__init__()
        self.keep_embeddings, self.last_embeddings = keep_embeddings, None
        self.dtype = DTYPES[precision]
        share = device.type == "cpu" and self.dtype == torch.float32  # share the fp32 weights
        self.model = model if share else copy.deepcopy(model).to(device)
        self.model.vision_encoder.to(self.dtype)

    def embed(self, pixel_values):
        """(B,3,1024,1024) -> (B,256,64,64) fp32 image embeddings."""
        return self.model.vision_encoder(pixel_values.to(self.dtype)).last_hidden_state.float()

    def forward(self, pixel_values, input_points):
        """-> low_res_masks (B,3,256,256) fp32 logits, iou_scores (B,3) fp32."""
        emb = self.embed(pixel_values)
        if self.keep_embeddings:  # a reference, no copy (eager only: not under torch.compile)
            self.last_embeddings = emb
        out = self.model(image_embeddings=emb, input_points=input_points, multimask_output=True)
        return out.pred_masks[:, 0].float(), out.iou_scores[:, 0].float()


class HFBackend(Backend):
    """MixedPrecisionSam on the device (`torch` runs it, `inductor` compiles it); TF32 iff tf32."""

    precisions = ("fp32", "tf32", "fp16", "bf16")
    keep_embeddings: ClassVar[bool] = False  # see MixedPrecisionSam

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        super().check_available(device, precision)
        if device == "cpu" and precision == "tf32":
            raise BackendUnavailable("TF32 is a CUDA math mode; there is none on the CPU")

    def build(self, model, inputs) -> None:
        if self.device.type == "cuda":  # TF32 for matmuls and convolutions: a global setting
            torch.backends.cuda.matmul.allow_tf32 = self.precision == "tf32"
            torch.backends.cudnn.allow_tf32 = self.precision == "tf32"
        self.model = MixedPrecisionSam(model, self.device, self.precision, self.keep_embeddings)
        cpu32 = self.device.type == "cpu" and self.precision == "fp32"
        self.math_mode = "fp32" if cpu32 else MATH[self.precision]

    def versions(self) -> dict:
        return {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
