"""`onnxruntime`: samrep's export in ONNX Runtime, a session per graph: CPU fp32; CUDA fp32 (TF32
off), tf32, fp16, torch tensors bound by name, ORT on a torch stream of its own ordered with torch's
current one (`stream_option`). ORT allocates from its arena, grown as requested (maybe limited);
its peak is the device memory it added (`framework_peak_gib`). Not offered: `gpu_external_alloc`
(torch's allocator): ORT refuses it with `user_compute_stream`, without which it runs unordered."""

import numpy as np
import torch
from pydantic import Field

from samrep.backends import onnx_engine as oe
from samrep.backends import onnx_export as ex
from samrep.backends.base import MATH, BackendUnavailable
from samrep.progress import log

ORT_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}
NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16}


class OrtOptions(oe.EngineOptions):
    gpu_mem_limit_gib: float | None = Field(None, gt=0, description="CUDA arena limit, GiB")
    cuda_graph: bool = Field(False, description="CUDA graphs (static batch, all on CUDA)")


def stream_option(handle: int) -> str:
    """The `user_compute_stream` value of a CUDA stream. 0 (torch's default) is refused: ORT reads
    it as none and runs unordered with torch's non_blocking input copies (wrong fp16 masks)."""
    if not handle:
        raise ValueError("ORT reads user_compute_stream 0 (torch's default) as none: no order")
    return str(handle)


class OnnxRuntimeBackend(oe.OnnxEngine):
    name = "onnxruntime"
    precisions = ("fp32", "tf32", "fp16")
    Options = OrtOptions

    def __init__(self, device, precision, options, workdir, bs=1):
        super().__init__(device, precision, options, workdir, bs)
        if self.opts.cuda_graph and self.opts.dynamic_batch:
            raise ValueError("onnxruntime: options.cuda_graph: needs a static batch")
        self.sessions, self.buffers, self.stream, self.base = {}, {}, None, None

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        super().check_available(device, precision)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from exc
        have = ort.get_available_providers()
        if device == "cpu" and precision != "fp32":
            raise BackendUnavailable(f"onnxruntime on the CPU runs fp32 only, not {precision}")
        if device == "cuda" and "CUDAExecutionProvider" not in have:
            raise BackendUnavailable(f"no CUDA provider in this onnxruntime ({have}): README")

    def check_providers(self) -> list:  # an fp16 graph is checked on the GPU: ORT CPU fp16 is slow
        gpu = self.device.type == "cuda" and self.precision == "fp16"
        return ["CUDAExecutionProvider"] * gpu + ["CPUExecutionProvider"]

    def _providers(self) -> list:
        if self.device.type == "cpu":
            return ["CPUExecutionProvider"]
        o, index = self.opts, self.device.index or 0
        self.stream = torch.cuda.Stream(self.device)  # ORT's own, never torch's default (0)
        cuda = {"device_id": index, "user_compute_stream": stream_option(self.stream.cuda_stream)}
        cuda.update(use_tf32=int(self.precision == "tf32"), enable_cuda_graph=int(o.cuda_graph))
        cuda["arena_extend_strategy"] = "kSameAsRequested"  # not the next power of two
        if o.gpu_mem_limit_gib:
            cuda["gpu_mem_limit"] = int(o.gpu_mem_limit_gib * 2**30)
        self.base = self._not_torch()  # before ORT's sessions exist
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]

    def _not_torch(self) -> int:
        """Device bytes in use (cudaMemGetInfo) that torch's caching allocator does not hold."""
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free - torch.cuda.memory_reserved(self.device)

    def build(self, model, inputs) -> None:
        """Export (or reuse), one session per graph, its I/O checked against the contract; on
        CUDA one batch of bs runs here (cuDNN's search and any graph capture are build time)."""
        import onnxruntime as ort

        providers = self._providers()
        self.run_options = ort.RunOptions()  # ordered with torch by stream events, no host sync
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        for graph, path in self.export_onnx(model, inputs).paths.items():
            s = self.sessions[graph] = ex.session(path, providers)
            label = f"onnxruntime {graph} graph"
            if self.stream is not None and "CUDAExecutionProvider" not in s.get_providers():
                raise BackendUnavailable(f"{label}: no CUDA provider (CUDA/cuDNN libraries?)")
            io = s.get_inputs() + s.get_outputs()
            declared = {a.name: (ORT_DTYPES.get(a.type), a.shape) for a in io}
            self.bind_contract(model.config, graph, declared)
        self.math_mode = MATH[self.precision] if self.stream is not None else "fp32"
        log(f"onnxruntime: {', '.join(self.sessions)} ({self.math_mode})")
        if self.stream is not None:
            pair = (inputs.pixel_values, inputs.input_points)
            self.run(*(t.expand(self.bs, *t.shape[1:]).contiguous().to(self.device) for t in pair))
            self.warm_batches += 1

    def run_graph(self, graph: str, feeds: dict, outs: list, batch: int) -> dict:
        session = self.sessions[graph]
        if self.stream is None:  # the CPU: through numpy
            got = session.run([s.name for s in outs], {k: v.numpy() for k, v in feeds.items()})
            return {s.name: torch.from_numpy(a) for s, a in zip(outs, got, strict=True)}
        got = {s.name: self._buffer(s.name, (batch, *s.shape[1:]), s.dtype) for s in outs}
        if self.opts.cuda_graph:  # a CUDA graph replays fixed addresses: inputs into buffers
            feeds = {k: self._buffer(k, t.shape, t.dtype).copy_(t) for k, t in feeds.items()}
        binding, dev = session.io_binding(), self.device.index or 0
        for bind, tensors in ((binding.bind_input, feeds), (binding.bind_output, got)):
            for name, t in tensors.items():
                bind(name, "cuda", dev, NP_DTYPES[t.dtype], list(t.shape), t.data_ptr())
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)  # after torch's copies and casts of the inputs
        session.run_with_iobinding(binding, self.run_options)
        current.wait_stream(self.stream)  # torch reads the outputs after ORT wrote them
        return {k: v.clone() for k, v in got.items()} if self.opts.cuda_graph else got

    def _buffer(self, name: str, shape, dtype) -> torch.Tensor:  # on torch's (reading) stream
        t = torch.empty(shape, dtype=dtype, device=self.device)
        return self.buffers.setdefault(name, t) if self.opts.cuda_graph else t

    def framework_peak_gib(self) -> float | None:
        """ORT's peak, GiB (None on the CPU): device memory outside torch's allocator added since
        before its sessions (its arena, which only grows, and cuDNN's and cuBLAS's workspaces)."""
        return None if self.base is None else (self._not_torch() - self.base) / 2**30

    def versions(self) -> dict:
        v = {m: __import__(m).__version__ for m in ("onnxruntime", "onnx", "torch")}
        v["providers"] = {g: s.get_providers()[0] for g, s in self.sessions.items()}
        return {**v, "options": self.opts.model_dump()}
