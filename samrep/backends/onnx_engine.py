"""The base of the engines built from samrep's ONNX export (onnxruntime, tensorrt, xtcl): one
`export_onnx`, one I/O contract (`contract`), one check of bound tensors (`check_tensors`), one
batch planner (`batch_profile`) and the engine check (`verify`) the row runs after the build."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from samrep import export as ex
from samrep.backends.base import Backend
from samrep.errors import SamrepError

# The engine check: lowest acc (pixel agreement with the fp32 ground truth) of the engine's own
# run on the ground-truth sample before its row is measured. fp32: rounding only separates an
# fp32 engine from PyTorch fp32 (1.0000 measured, CPU and H200), so 0.999 (0.1% of the pixels,
# a boundary band) already means a wrong engine. fp16/bf16: HF eager fp16 scores 0.9995 on the
# H200; the wrong engines seen score 0.89 (the published TensorRT fp16) and 0.74-0.86 (ORT with
# its inputs copied on another stream): 0.99 is 10x nearer the right figure than the wrong ones.
MIN_ACC = {"fp32": 0.999, "tf32": 0.999, "fp16": 0.99, "bf16": 0.99}


class EngineCheckFailed(SamrepError):
    """The engine's masks on the ground-truth sample agree less than MIN_ACC allows."""


class EngineIOError(SamrepError):
    """A tensor handed to an engine does not match the engine's tensor of that name."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph or engine input/output: shape[0] is the batch, None where it is dynamic."""

    name: str
    dtype: torch.dtype
    shape: tuple


def contract(config, graph: str, batch: int | None = None) -> tuple[list, list]:
    """(inputs, outputs) of an exported graph: float32 by name whatever the precision inside;
    `batch` for a static-batch export."""
    shapes = ex.graph_shapes(config)
    spec = [
        [TensorSpec(n, torch.float32, (batch, *shapes[n][1:])) for n in names]
        for names in ex.GRAPH_IO[graph]
    ]
    return spec[0], spec[1]


def match_contract(want: list, got: dict[str, tuple], label: str) -> list:
    """The engine's declared {name: (dtype, shape)} checked against the contract `want`: every
    name there, same non-batch sizes, float32 or float16 (fed by a value cast). -> its specs."""
    missing = [s.name for s in want if s.name not in got]
    if missing:
        raise EngineIOError(f"{label}: no '{missing[0]}' (declares {sorted(got)})")
    specs = []
    for s in want:
        dtype, shape = got[s.name]
        batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        if tuple(shape[1:]) != tuple(s.shape[1:]) or dtype not in (torch.float32, torch.float16):
            raise EngineIOError(f"{label}: '{s.name}' is {dtype} {tuple(shape)}, want {s.shape}")
        specs.append(TensorSpec(s.name, dtype, (batch, *s.shape[1:])))
    return specs


def check_tensors(specs: list, feeds: dict, label: str, device: str) -> int:
    """Raise EngineIOError naming the tensor unless `feeds` are exactly the `specs`: by name,
    dtype, shape (one batch for all), dense, on `device` ("cpu"/"cuda"). -> the batch."""
    if sorted(feeds) != sorted(s.name for s in specs):
        raise EngineIOError(f"{label}: given {sorted(feeds)}, inputs {[s.name for s in specs]}")
    batch = next(iter(feeds.values())).shape[0]
    for s in specs:
        t, where = feeds[s.name], f"{label}: input '{s.name}'"
        if t.dtype != s.dtype:  # never a reinterpretation of bytes (the original's defect 3)
            raise EngineIOError(f"{where}: dtype {t.dtype}, the engine takes {s.dtype}")
        if tuple(t.shape) != (s.shape[0] or batch, *s.shape[1:]) or t.shape[0] != batch:
            raise EngineIOError(f"{where}: shape {tuple(t.shape)}, the engine takes {s.shape}")
        if not t.is_contiguous() or t.device.type != device:
            raise EngineIOError(f"{where}: must be contiguous on {device}, is on {t.device}")
    return batch


def batch_profile(spec: TensorSpec, bs: int) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) shapes for the row's bs: batch 1..bs, opt bs (static: must be bs)."""
    rest = tuple(spec.shape[1:])
    if spec.shape[0] is None:
        return (1, *rest), (bs, *rest), (bs, *rest)
    if spec.shape[0] != bs:
        raise EngineIOError(f"'{spec.name}' has a static batch {spec.shape[0]}, the row bs {bs}")
    return (bs, *rest), (bs, *rest), (bs, *rest)


class EngineOptions(BaseModel):
    """The export options every ONNX-built engine shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    part: Literal["split", "whole"] = Field("split", description="encoder + decoder, or one")
    opset: int = Field(17, ge=17, description="ONNX opset (>= 17: LayerNormalization one node)")
    exporter: Literal["torchscript", "dynamo"] = Field("torchscript", description="tracer")
    dynamic_batch: bool = Field(True, description="dynamic batch axis (else fixed at the bs)")


class OnnxEngine(Backend):
    """A backend that builds from samrep's export; subclasses declare `Options` and `build`."""

    uses_onnx = True
    persistent_build = True
    Options: ClassVar[type[EngineOptions]] = EngineOptions

    def __init__(self, device, precision, options, workdir, bs=1):
        super().__init__(device, precision, options, workdir, bs)
        self.opts = self.Options.model_validate(self.options)

    def graph_precision(self) -> str:
        """The precision of the graph it builds from (TensorRT: fp32, it lowers precision)."""
        return ex.export_precision(self.precision)

    def check_providers(self) -> list:
        """ONNX Runtime providers the export's check runs with."""
        return ["CPUExecutionProvider"]

    def export_onnx(self, model, inputs, force: bool = False):
        """The cached export this engine builds from (samrep.export) -> ExportInfo."""
        from samrep.model import weights_sha256

        o, p, providers = self.opts, self.graph_precision(), self.check_providers()
        req = ex.ExportRequest(
            p, o.part, o.opset, o.dynamic_batch, 2 if o.dynamic_batch else self.bs
        )
        req = dataclasses.replace(req, exporter=o.exporter)
        pair = None if inputs is None else (inputs.pixel_values, inputs.input_points)
        sha = weights_sha256(model)
        self.export_info = ex.export_sam(model, sha, self.workdir, req, pair, providers, force)
        return self.export_info

    def verify(self, gt) -> dict:
        """The engine check: this engine's `run` on the ground-truth sample at the row's bs,
        scored against the ground truth (3 masks). Inputs arrive as in the core region: from
        pinned memory, non_blocking, into device memory poisoned with NaN first, so an engine
        that reads them before torch's copy lands fails. Raises EngineCheckFailed below
        MIN_ACC; -> {"acc", "iou", "threshold", "bs"} for the record."""
        from samrep.metrics import MaskScore, postprocess_masks

        cuda = self.device.type == "cuda"
        feeds = []
        for t in (gt.inputs.pixel_values, gt.inputs.input_points):
            host = t.float().expand(self.bs, *t.shape[1:]).contiguous()
            dst = torch.full(host.shape, float("nan"), device=self.device)
            feeds.append(dst.copy_(host.pin_memory() if cuda else host, non_blocking=cuda))
        masks, _ = self.run(*feeds)
        score = MaskScore(gt.masks.to(self.device), gt.order)
        score.update(postprocess_masks(masks, gt.inputs.reshaped_size, gt.inputs.original_size))
        r = score.result()
        threshold = MIN_ACC[self.precision]
        if not r["acc"] >= threshold:  # NaN fails too
            why = f"acc {r['acc']:.4f} < {threshold} on the ground truth (IoU {r['iou']:.4f})"
            raise EngineCheckFailed(f"{self.name} {self.precision} bs {self.bs}: {why}")
        return {"acc": r["acc"], "iou": r["iou"], "threshold": threshold, "bs": self.bs}
