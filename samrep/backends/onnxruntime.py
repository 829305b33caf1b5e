"""`onnxruntime`: samrep's ONNX export run by ONNX Runtime, one session per graph.

CPU: CPUExecutionProvider, fp32. CUDA (`onnxruntime-gpu`): CUDAExecutionProvider, fp32 (TF32
off), tf32, or fp16 (the fp16 encoder graph). Torch CUDA tensors are bound by name (IO binding);
ORT computes on a torch stream of its own, ordered after torch's current stream (where the core
region copied the inputs, non_blocking) and before it again (where the outputs are read).
ORT ignores a `user_compute_stream` of 0, the handle of torch's default stream, and then runs on
a stream it creates non-blocking, unordered with torch's copies: the fp16 rows' wrong masks.
Memory: by default ORT allocates through torch's caching allocator, so the row's framework peak
(torch.cuda.max_memory_allocated) is ORT's real need; `allocator: arena` gives ORT its own arena,
grown as requested (kSameAsRequested), optionally limited.
"""

from __future__ import annotations

import ctypes
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from samrep.backends.base import BackendUnavailable
from samrep.backends.onnx_engine import EngineOptions, OnnxEngine, check_tensors
from samrep.backends.onnx_engine import contract, match_contract
from samrep.export import INPUT_POINTS, PIXEL_VALUES
from samrep.progress import log

ORT_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}
NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16}
ALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)
FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
MATH = {
    "fp32": "fp32 (TF32 off)",
    "tf32": "fp32 weights, TF32 matmuls",
    "fp16": "fp16 image encoder, fp32 prompt encoder + mask decoder",
}


class OrtOptions(EngineOptions):
    io_binding: bool = Field(True, description="CUDA: bind torch tensors (else copy via numpy)")
    allocator: Literal["torch", "arena"] = Field(
        "torch", description="CUDA: ORT allocates through torch's caching allocator, or its arena"
    )
    gpu_mem_limit_gib: float | None = Field(None, gt=0, description="CUDA arena limit, GiB")
    cuda_graph: bool = Field(
        False, description="CUDA: ORT's enable_cuda_graph (static batch, every node on CUDA)"
    )
    threads: int = Field(0, ge=0, description="CPU intra-op threads (0: ORT's default)")


def stream_option(handle: int) -> str:
    """The `user_compute_stream` value of a CUDA stream; 0 is refused: ORT reads it as "none"."""
    if not handle:
        raise ValueError(
            "ORT ignores user_compute_stream 0 (torch's default stream) and runs on "
            "a non-blocking stream of its own: pass a torch.cuda.Stream's handle"
        )
    return str(handle)


class OnnxRuntimeBackend(OnnxEngine):
    name = "onnxruntime"
    precisions = ("fp32", "tf32", "fp16")
    Options = OrtOptions

    def __init__(self, device, precision, options, workdir, bs=1):
        super().__init__(device, precision, options, workdir, bs)
        if self.opts.cuda_graph and (self.opts.allocator == "torch" or self.opts.dynamic_batch):
            raise ValueError(
                "onnxruntime: options.cuda_graph needs allocator: arena and "
                "dynamic_batch: false (a graph replays fixed addresses and shapes)"
            )
        self.sessions, self.buffers, self.stream = {}, {}, None

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        super().check_available(device, precision)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from exc
        if device == "cpu" and precision != "fp32":
            raise BackendUnavailable(f"onnxruntime on the CPU runs fp32 only, not {precision}")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable(
                "onnxruntime build has no CUDA execution provider (has: "
                f"{', '.join(ort.get_available_providers())}); install "
                "onnxruntime-gpu"
            )

    def check_providers(self) -> list:
        """An fp16 graph is checked on the GPU (ORT's CPU fp16 is slow), fp32 on the CPU."""
        gpu = self.device.type == "cuda" and self.precision == "fp16"
        return (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else super().check_providers()
        )

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
        if o.allocator == "torch":  # ORT's buffers come from torch's caching allocator

            def alloc(n: int) -> int:
                return torch.cuda.caching_allocator_alloc(n, index, self.stream) if n else 0

            def free(p: int) -> None:
                if p:
                    torch.cuda.caching_allocator_delete(p)

            self._alloc, self._free = ALLOC(alloc), FREE(free)  # kept alive with the sessions
            cuda["gpu_external_alloc"] = str(ctypes.cast(self._alloc, ctypes.c_void_p).value)
            cuda["gpu_external_free"] = str(ctypes.cast(self._free, ctypes.c_void_p).value)
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]

    def build(self, model, inputs) -> None:
        """Export (or reuse), one session per graph, its I/O checked against the contract; on
        CUDA one batch of bs runs here (cuDNN's search and any graph capture are build time)."""
        import onnxruntime as ort

        info = self.export_onnx(model, inputs)
        so = ort.SessionOptions()
        so.log_severity_level, so.intra_op_num_threads = 3, self.opts.threads
        providers, batch = self._providers(), None if self.opts.dynamic_batch else self.bs
        self.run_options = ort.RunOptions()
        # ordering with torch is by stream events (run); no host sync inside ORT's run
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self.specs = {}
        for graph, path in info.paths.items():
            s = self.sessions[graph] = ort.InferenceSession(str(path), so, providers=providers)
            label = f"onnxruntime {graph} graph"
            if self.device.type == "cuda" and "CUDAExecutionProvider" not in s.get_providers():
                raise BackendUnavailable(f"{label}: no CUDA provider (CUDA/cuDNN libraries?)")
            want = contract(model.config, graph, batch)
            self.specs[graph] = [
                match_contract(w, {a.name: (ORT_DTYPES.get(a.type), a.shape) for a in args}, label)
                for w, args in zip(want, (s.get_inputs(), s.get_outputs()))
            ]
        self.math_mode = MATH[self.precision] if self.device.type == "cuda" else "fp32"
        log(
            f"onnxruntime: {', '.join(self.sessions)} on {providers[0][0] if self.stream else 'CPU'}"
            f" ({self.math_mode}, allocator {self.opts.allocator})"
        )
        if self.device.type == "cuda":
            self.run(
                *(
                    t.expand(self.bs, *t.shape[1:]).contiguous().to(self.device)
                    for t in (inputs.pixel_values, inputs.input_points)
                )
            )

    def run(self, pixel_values, input_points):
        """(B,3,1024,1024), (B,1,1,2) float32 on the device -> (B,3,256,256) logits, (B,3)."""
        cuda = self.device.type == "cuda" and self.opts.io_binding
        current = torch.cuda.current_stream(self.device) if cuda else None
        pool = {PIXEL_VALUES: pixel_values, INPUT_POINTS: input_points}
        for graph in self.sessions:  # encoder then decoder, or the one whole graph
            ins, outs = self.specs[graph]
            feeds = {s.name: pool[s.name] for s in ins}
            label = f"onnxruntime {graph} graph"
            # by value, where the graph takes fp16 (never a reinterpretation of bytes)
            feeds = {
                s.name: feeds[s.name].to(s.dtype)
                if feeds[s.name].is_floating_point()
                else feeds[s.name]
                for s in ins
            }
            batch = check_tensors(ins, feeds, label, self.device.type)
            if not cuda:
                got = self.sessions[graph].run(
                    [s.name for s in outs], {k: v.cpu().numpy() for k, v in feeds.items()}
                )
                pool.update(
                    {
                        s.name: torch.from_numpy(a).to(self.device)
                        for s, a in zip(outs, got, strict=True)
                    }
                )
                continue
            binding = self.sessions[graph].io_binding()
            for s in ins + outs:
                t = feeds.get(s.name)
                if self.opts.cuda_graph:  # fixed addresses: copy into persistent buffers
                    buf = self.buffers.setdefault(
                        s.name,
                        torch.empty((batch, *s.shape[1:]), dtype=s.dtype, device=self.device),
                    )
                    t = buf.copy_(t) if t is not None else buf
                elif t is None:  # outputs: allocated on torch's stream, which reads them
                    t = torch.empty((batch, *s.shape[1:]), dtype=s.dtype, device=self.device)
                bind = binding.bind_input if s in ins else binding.bind_output
                bind(
                    s.name,
                    "cuda",
                    self.device.index or 0,
                    NP_DTYPES[s.dtype],
                    list(t.shape),
                    t.data_ptr(),
                )
                pool[s.name] = t
            self.stream.wait_stream(current)  # after torch's copies (and casts) of the inputs
            self.sessions[graph].run_with_iobinding(binding, self.run_options)
            current.wait_stream(self.stream)  # torch reads the outputs after ORT wrote them
        out = [pool[n].float() for n in ("low_res_masks", "iou_scores")]
        return [t.clone() for t in out] if self.opts.cuda_graph else out

    def framework_peak_gib(self) -> float | None:
        """ORT's own peak, GiB: with allocator torch, torch's peak holds ORT's buffers; None with
        ORT's arena (NVML's figure is then the measure)."""
        if self.device.type != "cuda" or self.opts.allocator != "torch":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**30

    def versions(self) -> dict:
        import onnx
        import onnxruntime as ort

        v = {
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "torch": torch.__version__,
            "options": self.opts.model_dump(),
        }
        v["providers"] = {g: s.get_providers()[0] for g, s in self.sessions.items()}
        if self.export_info is not None:
            v.update(exporter=self.export_info.exporter, onnx_folder=self.export_info.folder.name)
        return v
