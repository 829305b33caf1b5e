"""`tensorrt`: TensorRT 10 engines from samrep's fp32 export, encoder then decoder on the GPU.
Bound by name on torch's stream (tensor-name API, no pycuda: defect 5), checked against each
engine's dtypes and shapes (defects 3, 4); fp32 clears TF32 (defect 2); fp16/bf16 are builder
flags, LayerNorm and Softmax kept fp32. Cached in <workdir>/tensorrt/ by a hash of their inputs."""

import hashlib
import json
from typing import Literal

import torch
from pydantic import Field

from samrep.backends import onnx_engine as oe
from samrep.backends.base import BackendUnavailable
from samrep.progress import log
from samrep.store import write_bytes

# trt.DataType name -> torch dtype (by name: the table exists without TensorRT)
TRT_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16}
FLAGS = {"fp16": "FP16", "bf16": "BF16"}
LAYERS = ("NORMALIZATION", "SOFTMAX", "MATRIX_MULTIPLY", "ELEMENTWISE", "REDUCE", "UNARY")


class TrtOptions(oe.EngineOptions):
    allow_tf32: bool = Field(False, description="fp32 layers may use TF32 (precision tf32 sets it)")
    workspace_gib: float = Field(8.0, gt=0, description="builder workspace limit, GiB")
    fp32_layers: tuple[Literal[LAYERS], ...] = Field(  # type: ignore[valid-type]
        ("NORMALIZATION", "SOFTMAX"), description="trt.LayerType kept fp32 in fp16/bf16 engines"
    )
    decoder_precision: Literal["fp32", "same"] = Field("fp32", description="decoder engine")
    optimization_level: int = Field(3, ge=0, le=5, description="builder_optimization_level")
    rebuild: bool = Field(False, description="build even when a cached engine matches")


class TensorRTBackend(oe.OnnxEngine):
    name = "tensorrt"
    precisions = ("fp32", "tf32", "fp16", "bf16")
    devices = ("cuda",)
    Options = TrtOptions

    def __init__(self, device, precision, options, workdir, bs=1):
        super().__init__(device, precision, options, workdir, bs)
        if precision == "tf32" and options.get("allow_tf32") is False:
            raise ValueError("tensorrt: options.allow_tf32: false contradicts precision tf32")
        self.tf32, self.contexts, self.built = precision == "tf32" or self.opts.allow_tf32, {}, {}
        tf32, kept = "TF32 allowed" if self.tf32 else "TF32 off", ", ".join(self.opts.fp32_layers)
        low = f"{precision} image encoder ({kept.lower()} fp32), {self.part_precision('decoder')} "
        self.math_mode = f"{low}decoder, {tf32}" if precision in FLAGS else f"fp32 ({tf32})"

    def graph_precision(self) -> str:
        return "fp32"  # reduced precision is a builder flag: TensorRT places it, fp32 kept apart

    def part_precision(self, part: str) -> str:
        keep = part == "decoder" and self.opts.decoder_precision == "fp32"
        return "fp32" if keep and self.precision in FLAGS else self.precision

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        why = [] if precision in cls.precisions else [f"tensorrt has no {precision} mode"]
        try:
            import tensorrt as trt

            if int(trt.__version__.split(".")[0]) < 10:
                why.append(f"TensorRT {trt.__version__}: samrep needs >= 10 (tensor names)")
        except ImportError as exc:
            why.append(f"TensorRT Python package not installed (pip `tensorrt`): {exc}")
        if device != "cuda":
            why.append(f"TensorRT runs on NVIDIA GPUs (device cuda), this row's is {device}")
        elif not torch.cuda.is_available():
            why.append(f"no CUDA GPU visible to torch {torch.__version__}")
        if why:
            raise BackendUnavailable("; ".join(why))

    def build(self, model, inputs) -> None:
        """Export (cached), then build or reuse one engine per graph, its I/O checked."""
        import tensorrt as trt

        info, o = self.export_onnx(model, inputs), self.opts
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime, gpu = trt.Runtime(self.logger), torch.cuda.get_device_name(self.device)
        for part, path in info.paths.items():
            precision = self.part_precision(part)
            fields = {"part": part, "onnx": info.folder.name, "precision": precision}
            fields.update(tf32=self.tf32, bs=self.bs, trt=trt.__version__, gpu=gpu)
            fields["opts"] = o.model_dump(exclude={"rebuild"})
            key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
            file = self.workdir / "tensorrt" / f"{part}-{precision}-bs{self.bs}-{key}.engine"
            cached = file.is_file() and not o.rebuild
            engine = runtime.deserialize_cuda_engine(file.read_bytes()) if cached else None
            self.built[part] = {"engine": file.name, "reused": engine is not None}
            if engine is None:
                blob = self._build(trt, path, fields)
                write_bytes(file, blob)  # atomically: never a half-written engine
                engine = runtime.deserialize_cuda_engine(blob)
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            dtype = {n: TRT_DTYPES.get(engine.get_tensor_dtype(n).name) for n in names}
            declared = {n: (dtype[n], tuple(engine.get_tensor_shape(n))) for n in names}
            self.bind_contract(model.config, part, declared)
            self.contexts[part] = engine.create_execution_context()

    def _build(self, trt, onnx_path, fields: dict) -> bytes:
        builder, precision, o = trt.Builder(self.logger), fields["precision"], self.opts
        network = builder.create_network(0)  # explicit batch: TensorRT 10's only mode
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):  # from a file: external weights load
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"tensorrt: cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(o.workspace_gib * 2**30))
        config.builder_optimization_level = o.optimization_level
        (config.set_flag if self.tf32 else config.clear_flag)(trt.BuilderFlag.TF32)
        if precision in FLAGS:
            config.set_flag(getattr(trt.BuilderFlag, FLAGS[precision]))
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            kept = {getattr(trt.LayerType, n) for n in o.fp32_layers}
            for layer in (network.get_layer(i) for i in range(network.num_layers)):
                if layer.type in kept:  # LayerNorm statistics and softmax sums overflow fp16
                    layer.precision = trt.float32
                    for j in range(layer.num_outputs):
                        layer.set_output_type(j, trt.float32)
        profile = builder.create_optimization_profile()
        for t in (network.get_input(i) for i in range(network.num_inputs)):
            batch = None if t.shape[0] < 0 else t.shape[0]
            spec = oe.TensorSpec(t.name, torch.float32, (batch, *tuple(t.shape)[1:]))
            profile.set_shape(t.name, *oe.batch_profile(spec, self.bs))
        config.add_optimization_profile(profile)
        log(f"tensorrt: {fields['part']}: building a {precision} engine (bs 1..{self.bs})")
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise RuntimeError(f"tensorrt: {fields['part']}: the build failed (see the log)")
        return bytes(blob)

    def run_graph(self, graph: str, feeds: dict, outs: list, batch: int) -> dict:
        ctx, label, dev = self.contexts[graph], f"tensorrt {graph}", self.device
        got = {s.name: torch.empty((batch, *s.shape[1:]), dtype=s.dtype, device=dev) for s in outs}
        for name, t in (*feeds.items(), *got.items()):
            if name in feeds and not ctx.set_input_shape(name, tuple(t.shape)):
                raise oe.EngineIOError(f"{label}: shape {tuple(t.shape)} of {name} refused")
            ctx.set_tensor_address(name, t.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"{label}: execute_async_v3 failed (see the TensorRT log)")
        return got

    def versions(self) -> dict:
        v = {"tensorrt": __import__("tensorrt").__version__, "torch": torch.__version__}
        return {**v, "engines": self.built, "options": self.opts.model_dump()}
