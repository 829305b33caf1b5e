"""The base of the engines built from samrep's ONNX export (onnxruntime, tensorrt, xtcl): one
`export_onnx`, one I/O contract (`contract`), one check of bound tensors (`check_tensors`), one
batch planner (`batch_profile`) and the engine check (`verify`) the row runs after the build."""

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from samrep.backends import onnx_export as ex
from samrep.backends.base import Backend
from samrep.errors import SamrepError

# The engine check's lowest acc (pixel agreement with the fp32 ground truth). fp32 engines differ
# by rounding only (1.0000 measured): 0.1% of pixels off is a wrong engine. fp16/bf16: HF eager
# fp16 0.9995 (H200), wrong ones 0.89 (published TensorRT fp16), 0.74-0.86 (ORT on another stream).
MIN_ACC = {"fp32": 0.999, "tf32": 0.999, "fp16": 0.99, "bf16": 0.99}


class EngineCheckFailed(SamrepError):
    """The engine's masks on the ground-truth sample agree less than MIN_ACC allows."""


class EngineIOError(SamrepError):
    """A tensor handed to an engine does not match the engine's tensor of that name."""


@dataclass(frozen=True)
class TensorSpec:  # one graph or engine input/output; shape[0] the batch, None if dynamic
    name: str
    dtype: torch.dtype
    shape: tuple


def contract(config, graph: str, batch: int | None = None) -> tuple[list, list]:
    """(inputs, outputs) of an exported graph: float32 whatever is inside; `batch` if static."""
    shapes, io = ex.graph_shapes(config), ex.GRAPH_IO[graph]
    return tuple([TensorSpec(n, torch.float32, (batch, *shapes[n][1:])) for n in g] for g in io)


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
    rest, b = tuple(spec.shape[1:]), spec.shape[0]
    if b is not None and b != bs:
        raise EngineIOError(f"'{spec.name}' has a static batch {b}, the row bs {bs}")
    return (b or 1, *rest), (bs, *rest), (bs, *rest)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.dtype == torch.float32 and dtype.is_floating_point else t


class EngineOptions(BaseModel):  # the export options every ONNX-built engine shares
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
        self.specs: dict[str, tuple[list, list]] = {}  # graph -> the engine's (inputs, outputs)

    def bind_contract(self, config, graph: str, declared: dict) -> None:
        """Check the engine's declared {name: (dtype, shape)} against the contract; keep it."""
        want = contract(config, graph, None if self.opts.dynamic_batch else self.bs)
        self.specs[graph] = tuple(match_contract(w, declared, f"{self.name} {graph}") for w in want)

    def run(self, pixel_values, input_points):
        """(B,3,1024,1024), (B,1,1,2) float32 -> (B,3,256,256) logits, (B,3): graphs in order,
        fed by name (cast by value where one takes fp16), every input checked first."""
        pool = {"pixel_values": pixel_values, "input_points": input_points}
        for graph, (ins, outs) in self.specs.items():
            feeds = {s.name: _cast(pool[s.name], s.dtype) for s in ins}
            batch = check_tensors(ins, feeds, f"{self.name} {graph}", self.device.type)
            pool.update(self.run_graph(graph, feeds, outs, batch))
        self.last_embeddings = pool.get("image_embeddings")  # spares the harness an encoder pass
        return pool["low_res_masks"].float(), pool["iou_scores"].float()

    def run_graph(self, graph: str, feeds: dict, outs: list, batch: int) -> dict:
        """One engine on checked `feeds` -> {output name: tensor}."""
        raise NotImplementedError

    def graph_precision(self) -> str:  # of the graph it builds from
        return ex.export_precision(self.precision)

    def check_providers(self) -> list:  # ONNX Runtime's, for the export's check
        return ["CPUExecutionProvider"]

    def export_onnx(self, model, inputs, force: bool = False):
        """The cached export this engine builds from (onnx_export) -> ExportInfo."""
        from samrep.model import weights_sha256

        o, p, batch = self.opts, self.graph_precision(), 2 if self.opts.dynamic_batch else self.bs
        req = ex.ExportRequest(p, o.part, o.opset, o.dynamic_batch, batch, o.exporter)
        eg = None if inputs is None else (inputs.pixel_values, inputs.input_points, self.reference)
        sha, providers = weights_sha256(model), self.check_providers()
        self.export_info = ex.export_sam(model, sha, self.workdir, req, eg, providers, force)
        return self.export_info

    def verify(self, gt) -> dict:
        """`run` on the ground truth's sample at the row's bs, copied in (pinned, non_blocking) over
        NaN: EngineCheckFailed below MIN_ACC, else {"acc", "iou", "threshold", "bs"}."""
        from samrep.metrics import MaskScore, postprocess_masks

        cuda, feeds = self.device.type == "cuda", []
        for t in (gt.inputs.pixel_values, gt.inputs.input_points):  # as the core region copies
            host = t.float().expand(self.bs, *t.shape[1:]).contiguous()
            dst = torch.full(host.shape, float("nan"), device=self.device)  # read early: NaN
            feeds.append(dst.copy_(host.pin_memory() if cuda else host, non_blocking=cuda))
        masks, _ = self.run(*feeds)
        self.warm_batches += 1
        score = MaskScore(gt.masks.to(self.device), gt.order)
        score.update(postprocess_masks(masks, gt.inputs.reshaped_size, gt.inputs.original_size))
        r, threshold = score.result(), MIN_ACC[self.precision]
        if not r["acc"] >= threshold:  # NaN fails too
            why = f"acc {r['acc']:.4f} < {threshold} on the ground truth (IoU {r['iou']:.4f})"
            raise EngineCheckFailed(f"{self.name} {self.precision} bs {self.bs}: {why}")
        return {"acc": r["acc"], "iou": r["iou"], "threshold": threshold, "bs": self.bs}
