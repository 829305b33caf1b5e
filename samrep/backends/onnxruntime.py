"""`onnxruntime`: samrep's ONNX export (samrep.export) run by ONNX Runtime.

Build = export (cached under `<workdir>/onnx/`, checked against PyTorch) + one InferenceSession
per graph: encoder then decoder (part "split", the default) or the one whole-model graph.
Inputs and outputs are bound by name, and their dtype (float32) is checked, never by position
or byte count (the original harness's defects 3 and 4).

Execution providers:
* device "cpu": CPUExecutionProvider, fp32 only. fp16 is not a CPU compute precision here (the
  base class says so for every backend), TF32 is a CUDA math mode, and bf16 is not exported
  (samrep.export: ONNX Conv has no bf16 before opset 22, and ORT lacks bf16 kernels for it).
* device "cuda": CUDAExecutionProvider (option provider "cuda", the default), fp32 with TF32
  off (`use_tf32=0`), tf32 (`use_tf32=1`) or fp16 (the encoder graph exported in fp16, decoder
  fp32). TensorrtExecutionProvider with option provider "tensorrt": it cannot turn TensorRT's
  TF32 off and, with fp16 enabled, may run any layer in fp16, so its math_mode says so; the
  `tensorrt` backend is the controlled TensorRT path. Tensors stay on the GPU: inputs and
  outputs are torch CUDA tensors bound through io_binding, and ORT runs on torch's current
  stream (`user_compute_stream`), so no copies and no extra syncs. A pip `onnxruntime` wheel
  has no CUDA provider: the row is then "not run" (install `onnxruntime-gpu`).
"""

from __future__ import annotations

import numpy as np
import torch

from samrep.backends.base import Backend, BackendUnavailable
from samrep.backends.torch_eager import math_mode
from samrep.export import (
    DECODER,
    ENCODER,
    GRAPH_IO,
    IMAGE_EMBEDDINGS,
    INPUT_POINTS,
    PIXEL_VALUES,
    WHOLE,
    export_precision,
    graph_shapes,
)
from samrep.progress import log

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# option -> (default, meaning)
OPTIONS = {
    "part": ("split", "'split' (encoder + decoder sessions) or 'whole' (one graph, as published)"),
    "opset": (17, "ONNX opset of the export (>= 17: LayerNormalization stays one node)"),
    "dynamic_batch": (True, "export with a dynamic batch axis (else fixed at the row's bs)"),
    "exporter": ("auto", "'auto' (torchscript, then dynamo), 'torchscript' or 'dynamo'"),
    "check_batch": (2, "images in the export's ONNX Runtime vs PyTorch check (dynamic batch)"),
    "provider": ("cuda", "on CUDA: 'cuda' (CUDAExecutionProvider) or 'tensorrt' (TensorRT EP)"),
    "io_binding": (True, "on CUDA: bind torch GPU tensors by name (else copy through numpy)"),
    "threads": (0, "CPU: intra-op threads (0 = ONNX Runtime's default, one per core)"),
}


def resolve_options(options: dict) -> dict:
    """`options` completed with the defaults; an unknown key or bad value is a ValueError."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(
            f"onnxruntime: options.{unknown[0]}: unknown option (known: {', '.join(OPTIONS)})"
        )
    out = {k: options.get(k, default) for k, (default, _) in OPTIONS.items()}
    if out["part"] not in ("split", "whole"):
        raise ValueError(f"onnxruntime: options.part: '{out['part']}' is not split or whole")
    if out["provider"] not in ("cuda", "tensorrt"):
        raise ValueError(f"onnxruntime: options.provider: '{out['provider']}' is not cuda/tensorrt")
    return out


class OnnxRuntimeBackend(Backend):
    uses_onnx = True
    persistent_build = True
    name = "onnxruntime"
    precisions = ("fp32", "tf32", "fp16")

    def __init__(self, device, precision, options, workdir, bs=1):
        super().__init__(device, precision, options, workdir, bs)
        self.settings = resolve_options(self.options)
        self.sessions: dict = {}

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        super().check_available(device, precision)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from exc
        have = ort.get_available_providers()
        if device == "cpu":
            if precision != "fp32":
                raise BackendUnavailable(
                    f"onnxruntime on the CPU runs fp32 only ({precision}: TF32 is a CUDA math "
                    "mode; CPU fp16/bf16 are not offered)"
                )
        elif not set(GPU_PROVIDERS) & set(have):
            raise BackendUnavailable(
                f"onnxruntime build has no CUDA execution provider (has: {', '.join(have)}); "
                "install onnxruntime-gpu"
            )

    # -- build

    def _providers(self) -> list:
        """The provider list for every session of this row (GPU first, CPU as ORT's fallback)."""
        if self.device.type == "cpu":
            return ["CPUExecutionProvider"]
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        cuda = {
            "device_id": index,
            # fp32 means fp32 (the original's "fp32" engine ran TF32: defect 2)
            "use_tf32": int(self.precision == "tf32"),
            # ORT computes on torch's stream: the H2D copy before run() is ordered before it
            "user_compute_stream": str(torch.cuda.current_stream(self.device).cuda_stream),
        }
        providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        if self.settings["provider"] == "tensorrt":
            cache = self.workdir / "onnxruntime-trt"
            cache.mkdir(parents=True, exist_ok=True)
            trt = {
                "device_id": index,
                "trt_fp16_enable": self.precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "user_compute_stream": cuda["user_compute_stream"],
            }
            providers.insert(0, ("TensorrtExecutionProvider", trt))
        return providers

    def export_onnx(self, model, inputs, force: bool = False):
        """The cached ONNX export this backend's sessions open (see samrep.export)."""
        from samrep.export import export_sam
        from samrep.model import weights_sha256

        s = self.settings
        fp32_graph = export_precision(self.precision) == "fp32"
        self.export_info = export_sam(
            model,
            weights_sha256(model),
            self.workdir,
            precision=self.precision,
            opset=s["opset"],
            part=s["part"],
            dynamic_batch=s["dynamic_batch"],
            # static: built and checked at the row's bs; dynamic: checked at check_batch
            # (default 2, where a batch-axis bug would show)
            batch=s["check_batch"] if s["dynamic_batch"] else self.bs,
            exporter=s["exporter"],
            example=None if inputs is None else (inputs.pixel_values, inputs.input_points),
            # An fp32 graph is checked exactly: PyTorch and ORT on the CPU (shared by the fp32
            # and tf32 rows, whose engine math then differs). An fp16 graph is traced and
            # checked on the GPU, with this row's providers (CPU fp16 is slow).
            device="cpu" if fp32_graph else self.device,
            check_providers=["CPUExecutionProvider"] if fp32_graph else self._providers(),
            force=force,
        )
        return self.export_info

    def build(self, model, inputs) -> None:
        """Export (or reuse) the ONNX graphs, open one session per graph, check the providers.

        `model`: fp32 SamModel on the CPU; `inputs`: samrep.data.ModelInputs (batch 1), the
        example the export traces and checks with. On CUDA one batch of the row's bs runs here,
        so cuDNN's algorithm search (and the TensorRT EP's engine build) counts as build time.
        """
        import onnxruntime as ort

        s = self.settings
        providers = self._providers()
        cpu = self.device.type == "cpu"
        self.export_onnx(model, inputs)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if s["threads"]:
            so.intra_op_num_threads = int(s["threads"])
        self.sessions = {
            graph: ort.InferenceSession(str(path), sess_options=so, providers=providers)
            for graph, path in self.export_info.paths.items()
        }
        for graph, session in self.sessions.items():
            self._check_io(graph, session)
            used = session.get_providers()
            if not cpu and not set(GPU_PROVIDERS) & set(used):
                # ORT falls back to the CPU silently when the CUDA libraries fail to load.
                raise BackendUnavailable(
                    f"onnxruntime could not start a CUDA provider for the {graph} graph (session "
                    f"providers: {', '.join(used)}; CUDA/cuDNN libraries missing?)"
                )
        self.shapes = graph_shapes(model.config)
        self.math_mode = self._math_mode()
        log(
            f"onnxruntime: {', '.join(self.sessions)} on "
            f"{self.sessions[next(iter(self.sessions))].get_providers()[0]} ({self.math_mode})"
        )
        if not cpu:
            pv = inputs.pixel_values.expand(self.bs, -1, -1, -1).contiguous().to(self.device)
            pts = inputs.input_points.expand(self.bs, -1, -1, -1).contiguous().to(self.device)
            self.run(pv, pts)

    def _check_io(self, graph: str, session) -> None:
        """Every input/output the graph contract names is there, float32."""
        want_in, want_out = GRAPH_IO[graph]
        have = {a.name: a for a in list(session.get_inputs()) + list(session.get_outputs())}
        for name in want_in + want_out:
            if name not in have:
                raise RuntimeError(f"onnxruntime: {graph} graph has no '{name}' ({list(have)})")
            if have[name].type != "tensor(float)":
                raise RuntimeError(
                    f"onnxruntime: {graph} graph '{name}' is {have[name].type}, not tensor(float)"
                )

    def _math_mode(self) -> str:
        base = math_mode(self.device.type, self.precision)
        if self.device.type == "cpu":
            return base
        if self.settings["provider"] == "tensorrt":
            extra = "TF32 allowed (TensorRT default)"
            if self.precision == "fp16":
                extra += ", fp16 allowed in any layer"
            return f"{base}; TensorRT EP: {extra}"
        return base

    # -- run

    def run(self, pixel_values, input_points):
        """(B,3,1024,1024) f32, (B,1,1,2) f32 on the device -> (B,3,256,256) f32 logits,
        (B,3) f32 IoU, on the device."""
        for name, t in ((PIXEL_VALUES, pixel_values), (INPUT_POINTS, input_points)):
            if t.dtype != torch.float32:  # never reinterpret another dtype's bytes (defect 3)
                raise TypeError(f"onnxruntime: {name} must be float32, got {t.dtype}")
        if ENCODER in self.sessions:
            (emb,) = self._run(ENCODER, {PIXEL_VALUES: pixel_values})
            feeds = {IMAGE_EMBEDDINGS: emb, INPUT_POINTS: input_points}
            masks, iou = self._run(DECODER, feeds)
        else:
            masks, iou = self._run(WHOLE, {PIXEL_VALUES: pixel_values, INPUT_POINTS: input_points})
        return masks, iou

    def _run(self, graph: str, feeds: dict) -> list[torch.Tensor]:
        session = self.sessions[graph]
        outputs = GRAPH_IO[graph][1]
        batch = next(iter(feeds.values())).shape[0]
        if self.device.type == "cuda" and self.settings["io_binding"]:
            return self._run_bound(session, feeds, outputs, batch)
        got = session.run(
            list(outputs), {k: v.detach().contiguous().cpu().numpy() for k, v in feeds.items()}
        )
        return [torch.from_numpy(a).to(self.device) for a in got]

    def _run_bound(self, session, feeds: dict, outputs: tuple, batch: int) -> list[torch.Tensor]:
        """Bind torch CUDA tensors by name (inputs as given, outputs preallocated) and run."""
        binding = session.io_binding()
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        keep = []  # contiguous copies must outlive the run
        for name, t in feeds.items():
            t = t.contiguous()
            keep.append(t)
            binding.bind_input(name, "cuda", index, np.float32, list(t.shape), t.data_ptr())
        result = []
        for name in outputs:
            shape = (batch, *self.shapes[name][1:])
            out = torch.empty(shape, dtype=torch.float32, device=self.device)
            binding.bind_output(name, "cuda", index, np.float32, list(shape), out.data_ptr())
            result.append(out)
        session.run_with_iobinding(binding)
        return result

    def versions(self) -> dict:
        import onnx
        import onnxruntime as ort
        import transformers

        v = {
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        if self.sessions:
            v["providers"] = {g: s.get_providers()[0] for g, s in self.sessions.items()}
        if self.export_info is not None:
            v["exporter"] = self.export_info.exporter
            v["onnx_opsets"] = self.export_info.graph_opsets
            v["onnx_folder"] = self.export_info.folder.name
        return v
