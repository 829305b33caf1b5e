"""`onnxruntime`: samrep's ONNX export in ONNX Runtime, one session per graph; CPU fp32, or CUDA
(`onnxruntime-gpu`) fp32 (TF32 off), tf32, fp16 (the fp16 encoder graph). On CUDA, torch tensors
are bound by name and ORT computes on a torch stream of its own, ordered after torch's current
stream (where the core region copied the inputs, non_blocking) and before it again. ORT ignores
a `user_compute_stream` of 0 (torch's default stream) and runs on a non-blocking stream of its
own, unordered with torch's copies: the wrong fp16 masks. ORT allocates through torch's caching
allocator (`allocator: torch`, the row's framework peak is then ORT's need) or an arena grown as
requested (`allocator: arena`, optionally limited)."""

from __future__ import annotations

import ctypes
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from samrep.backends import onnx_engine as oe
from samrep.backends.base import BackendUnavailable
from samrep.progress import log

ORT_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}
NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16}
ALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)  # ORT's gpu_external_alloc
FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
MATH = {"fp32": "fp32 (TF32 off)", "tf32": "fp32 weights, TF32 matmuls"}
MATH["fp16"] = "fp16 image encoder, fp32 prompt encoder + mask decoder"


def half(t: torch.Tensor) -> torch.Tensor:
    return t.half() if t.dtype == torch.float32 else t


class OrtOptions(oe.EngineOptions):
    allocator: Literal["torch", "arena"] = Field("torch", description="CUDA: ORT's allocations")
    gpu_mem_limit_gib: float | None = Field(None, gt=0, description="CUDA arena limit, GiB")
    cuda_graph: bool = Field(False, description="CUDA graphs (arena, static batch, all on CUDA)")


def stream_option(handle: int) -> str:
    """The `user_compute_stream` value of a CUDA stream; 0 is refused: ORT reads it as "none"."""
    if not handle:
        raise ValueError("ORT reads user_compute_stream 0 (torch's default) as none: no order")
    return str(handle)


class OnnxRuntimeBackend(oe.OnnxEngine):
    name = "onnxruntime"
    precisions = ("fp32", "tf32", "fp16")
    Options = OrtOptions

    def __init__(self, device, precision, options, workdir, bs=1):
        super().__init__(device, precision, options, workdir, bs)
        if self.opts.cuda_graph and (self.opts.allocator == "torch" or self.opts.dynamic_batch):
            raise ValueError("onnxruntime: options.cuda_graph: needs allocator arena, static batch")
        self.sessions, self.buffers, self.stream = {}, {}, None

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        super().check_available(device, precision)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from exc
        have = ort.get_available_providers()
        if device == "cpu" and precision != "fp32":
            raise BackendUnavailable(
                f"onnxruntime on the CPU runs fp32 only, not {precision} (TF32 and fp16 are CUDA math here)"
            )
        if device == "cuda" and "CUDAExecutionProvider" not in have:
            raise BackendUnavailable(
                f"this onnxruntime has no CUDA provider ({have}): pip "
                "install onnxruntime-gpu (README)"
            )

    def check_providers(self) -> list:  # an fp16 graph is checked on the GPU: ORT CPU fp16 is slow
        gpu = self.device.type == "cuda" and self.precision == "fp16"
        return ["CUDAExecutionProvider"] * gpu + ["CPUExecutionProvider"]

    def _providers(self) -> list:
        if self.device.type == "cpu":
            return ["CPUExecutionProvider"]
        o, index = self.opts, self.device.index or 0
        self.stream = torch.cuda.Stream(self.device)  # ORT's own, never torch's default (0)
        cuda = {
            "device_id": index,
            "use_tf32": int(self.precision == "tf32"),
            "user_compute_stream": stream_option(self.stream.cuda_stream),
            "arena_extend_strategy": "kSameAsRequested",
            "enable_cuda_graph": int(o.cuda_graph),
        }
        if o.gpu_mem_limit_gib:
            cuda["gpu_mem_limit"] = int(o.gpu_mem_limit_gib * 2**30)
        if o.allocator == "torch":  # ORT's buffers from torch's caching allocator, on ORT's stream
            alloc = torch.cuda.caching_allocator_alloc
            self._fns = ALLOC(lambda n: alloc(n, index, self.stream) if n else 0), FREE(self._free)
            for key, fn in zip(("gpu_external_alloc", "gpu_external_free"), self._fns, strict=True):
                cuda[key] = str(ctypes.cast(fn, ctypes.c_void_p).value)
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]

    @staticmethod
    def _free(ptr: int) -> None:
        if ptr:
            torch.cuda.caching_allocator_delete(ptr)

    def build(self, model, inputs) -> None:
        """Export (or reuse), one session per graph, its I/O checked against the contract; on
        CUDA one batch of bs runs here (cuDNN's search and any graph capture are build time)."""
        import onnxruntime as ort

        so, providers, self.specs = ort.SessionOptions(), self._providers(), {}
        so.log_severity_level = 3
        self.run_options = ort.RunOptions()  # ordered with torch by stream events, no host sync
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        for graph, path in self.export_onnx(model, inputs).paths.items():
            s = self.sessions[graph] = ort.InferenceSession(str(path), so, providers=providers)
            label = f"onnxruntime {graph} graph"
            if self.stream is not None and "CUDAExecutionProvider" not in s.get_providers():
                raise BackendUnavailable(f"{label}: no CUDA provider (CUDA/cuDNN libraries?)")
            io = s.get_inputs() + s.get_outputs()
            declared = {a.name: (ORT_DTYPES.get(a.type), a.shape) for a in io}
            want = oe.contract(model.config, graph, None if self.opts.dynamic_batch else self.bs)
            self.specs[graph] = [oe.match_contract(w, declared, label) for w in want]
        self.math_mode = MATH[self.precision] if self.stream is not None else "fp32"
        log(f"onnxruntime: {', '.join(self.sessions)} ({self.math_mode}, {self.opts.allocator})")
        if self.stream is not None:
            pair = (inputs.pixel_values, inputs.input_points)
            self.run(*(t.expand(self.bs, *t.shape[1:]).contiguous().to(self.device) for t in pair))

    def run(self, pixel_values, input_points):
        """(B,3,1024,1024), (B,1,1,2) float32 on the device -> (B,3,256,256) logits, (B,3)."""
        pool = {"pixel_values": pixel_values, "input_points": input_points}
        for graph, session in self.sessions.items():  # encoder then decoder, or the whole graph
            ins, outs = self.specs[graph]
            # float32 cast by value where the graph takes fp16 (never a reinterpretation of bytes)
            feeds = {
                s.name: half(pool[s.name]) if s.dtype == torch.float16 else pool[s.name]
                for s in ins
            }
            batch = oe.check_tensors(ins, feeds, f"onnxruntime {graph} graph", self.device.type)
            if self.stream is None:
                got = session.run([s.name for s in outs], {k: v.numpy() for k, v in feeds.items()})
                pool.update({s.name: torch.from_numpy(a) for s, a in zip(outs, got, strict=True)})
                continue
            binding, dev = session.io_binding(), self.device.index or 0
            for s in ins + outs:  # outputs allocated on torch's stream, which reads them
                t = feeds.get(s.name)
                if self.opts.cuda_graph or t is None:
                    buf = torch.empty((batch, *s.shape[1:]), dtype=s.dtype, device=self.device)
                    if self.opts.cuda_graph:  # a graph replays fixed addresses: keep buffers
                        buf = self.buffers.setdefault(s.name, buf)
                    t = buf if t is None else buf.copy_(t)
                bind = binding.bind_input if s in ins else binding.bind_output
                bind(s.name, "cuda", dev, NP_DTYPES[s.dtype], list(t.shape), t.data_ptr())
                pool[s.name] = t
            current = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(current)  # after torch's copies and casts of the inputs
            session.run_with_iobinding(binding, self.run_options)
            current.wait_stream(self.stream)  # torch reads the outputs after ORT wrote them
        out = [pool[n].float() for n in ("low_res_masks", "iou_scores")]
        return [t.clone() for t in out] if self.opts.cuda_graph else out

    def framework_peak_gib(self) -> float | None:
        """ORT's own peak, GiB (torch's, holding ORT's buffers); None with ORT's arena."""
        if self.stream is None or self.opts.allocator != "torch":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**30

    def versions(self) -> dict:
        import onnx
        import onnxruntime as ort

        v = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "torch": torch.__version__}
        v["providers"] = {g: s.get_providers()[0] for g, s in self.sessions.items()}
        return {**v, "options": self.opts.model_dump()}
