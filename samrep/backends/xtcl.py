"""`xtcl`: Kunlunxin XTCL, the graph compiler of the case's Kunlunxin R200 setup.

XTCL is not public: it ships with Kunlunxin's SDK as a fork of Apache TVM (imported as `tvm`, with
Kunlunxin modules such as `tvm.contrib.xpu_config`). samrep's authors have never run it. Every
XTCL-specific call here is taken from the one public program that drove XTCL for this case,
FlagPerf's inference/inference_engine/kunlunxin/xtcl.py at commit 98d85df9 ("kunlunxin sam_h
(#244)", XTCL 2.0.0.67 on an R200), and the rest from upstream TVM's documented Relay API.
Each "UNVERIFIED" comment marks a call we could not check against XTCL itself.

The XPU is not a torch device (the published setup ran torch 1.13 on the CPU): rows run with
torch device "cpu"; run() copies the inputs to the XPU and the outputs back, so XTCL's core time
holds those copies (FlagPerf's did too).

What this fixes of the original (../shared/spec/sam_h_case.md section 6): defect 8, its engine
read `config.resnet50_fuse`, a key only the ResNet-50 case defines (samrep reads only its own
options); inputs are set BY NAME with the dtype the ONNX declares, converted explicitly (defect 3);
outputs are named from the ONNX graph's output list, which Relay's ONNX importer keeps in order,
and their shapes are checked so a swap cannot pass silently (defect 4).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import torch

from samrep.backends.base import Backend, BackendUnavailable
from samrep.errors import SamrepError
from samrep.progress import log

NOT_INSTALLED = "Kunlunxin XTCL not installed (not public)"

# --- The published build options (../shared/spec/sam_h_case.md section 5; FlagPerf
# inference/configs/sam_h/vendor_config/kunlunxin_configurations.yaml at commit 98d85df9):
#   build_config: {FuseWithoutPattern: [FuseConv2dTransposeBiasAdd],
#                  pattern_match: [fuse_attention_sam]}
#   disabled_pass: [xgraph_layout_opt]
#   exist_onnx_path: onnxs/sam_h_bs4_pytorch_fp16True.onnx  (exported on NVIDIA, fp16, bs 4)
# and, from the engine, fp16 output precision (XPUOutDtypeConfig default_precision float16).
FUSE_WITHOUT_PATTERN = ("FuseConv2dTransposeBiasAdd",)
PATTERN_MATCH = ("fuse_attention_sam",)
DISABLED_PASSES = ("xgraph_layout_opt",)
OUT_PRECISION = "float16"
OPT_LEVEL = 3
PUBLISHED_ONNX = "onnxs/sam_h_bs4_pytorch_fp16True.onnx"
PUBLISHED_ONNX_PRECISION, PUBLISHED_ONNX_BS = "fp16", 4
# Set by FlagPerf's engine for both precisions (UNVERIFIED whether XTCL reads it at build or run
# time: samrep sets it around the build only).
BUILD_ENVIRONMENT = {"XTCL_USE_NEW_ALTER_PASS": "1"}
# FlagPerf's "fp32" mode also set these: they make XTCL run fp16 with quantized weights, so its
# "fp32" was not fp32. samrep's fp32 does not set them (kept here to say so, never applied).
FLAGPERF_FP32_ENVIRONMENT = {"XTCL_USE_FP16": "1", "XTCL_QUANTIZE_WEIGHT": "1"}
# Targets, as FlagPerf wrote them: the VM compiles for "llvm -acc=xpu<N>", N the last character
# of $XPUSIM_DEVICE_MODEL (default KUNLUN1); the graph executor for the fixed string below.
DEFAULT_DEVICE_MODEL = "KUNLUN1"
GRAPH_TARGET = "xpu -libs=xdnn -split-device-funcs -device-type=xpu2"

OUTPUT_SHAPES = {"low_res_masks": (3, 256, 256), "iou_scores": (3,)}  # after the batch axis

OPTIONS = {
    "onnx_path": "an existing ONNX to compile (the published run reused the NVIDIA-exported one); "
    "'' = samrep.export's, at the row's precision",
    "executor": "'vm' (Relay VM, what FlagPerf's sam_h ran: its config sets no vm_enable) or 'graph'",
    "device_id": "XPU index (default 0)",
    "device_model": "XPUSIM_DEVICE_MODEL for the VM target (default: the environment's, else KUNLUN1)",
    "opset": "ONNX opset of samrep's export (default 17)",
    "part": "samrep's export: 'whole' (one graph, as published) or 'split' (encoder + decoder)",
}
DEFAULTS = {
    "onnx_path": "",
    "executor": "vm",
    "device_id": 0,
    "device_model": "",
    "opset": 17,
    "part": "whole",
}


class XtclIOError(SamrepError):
    """A tensor does not match the compiled module's input or output of that name."""


@dataclasses.dataclass(frozen=True)
class IOSpec:
    """A graph input or output as the ONNX declares it (numpy dtype name, static shape)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


# ---------------------------------------------------------------- plain-Python helpers


def resolve_options(options: dict) -> dict:
    """`options` completed with DEFAULTS; an unknown key or bad value is a SamrepError."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SamrepError(
            f"xtcl: options.{unknown[0]}: unknown option (known: {', '.join(sorted(OPTIONS))})"
        )
    out = {**DEFAULTS, **options}
    for key, default in DEFAULTS.items():
        if type(out[key]) is not type(default):
            raise SamrepError(
                f"xtcl: options.{key}: expected {type(default).__name__}, got {out[key]!r}"
            )
    if out["executor"] not in ("vm", "graph"):
        raise SamrepError(f"xtcl: options.executor: '{out['executor']}' is not vm or graph")
    if out["part"] not in ("whole", "split"):
        raise SamrepError(f"xtcl: options.part: '{out['part']}' is not whole or split")
    return out


def build_options(precision: str) -> dict:
    """The published build options as plain data: what build() turns into XTCL objects."""
    return {
        "opt_level": OPT_LEVEL,
        "FuseWithoutPattern": list(FUSE_WITHOUT_PATTERN),
        "pattern_match": list(PATTERN_MATCH),
        "disabled_pass": list(DISABLED_PASSES),
        "out_precision": OUT_PRECISION if precision == "fp16" else None,
        "environment": dict(BUILD_ENVIRONMENT),
    }


def vm_target(device_model: str) -> str:
    """FlagPerf's VM target string: 'llvm -acc=xpu<N>', N the model name's last character."""
    return f"llvm -acc=xpu{device_model[-1]}"


def math_mode(precision: str) -> str:
    if precision == "fp16":
        return "fp16 (XTCL XPUOutDtypeConfig float16, the published build options)"
    return "fp32 (XTCL defaults; without FlagPerf's XTCL_USE_FP16 / XTCL_QUANTIZE_WEIGHT)"


def graph_io(onnx_model) -> tuple[list[IOSpec], list[IOSpec]]:
    """Inputs (initializers excluded: old exports list weights as inputs) and outputs, in order."""
    from onnx import helper

    def spec(value_info) -> IOSpec:
        t = value_info.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return IOSpec(value_info.name, helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims)

    weights = {init.name for init in onnx_model.graph.initializer}
    inputs = [spec(v) for v in onnx_model.graph.input if v.name not in weights]
    return inputs, [spec(v) for v in onnx_model.graph.output]


def batch_shapes(inputs: list[IOSpec], bs: int) -> dict[str, tuple[int, ...]]:
    """Static input shapes for Relay at batch `bs` (XTCL compiles static shapes; FlagPerf also
    set dim 0 to the batch size). Any other unknown dimension is an error naming the input."""
    shapes = {}
    for s in inputs:
        if not s.shape or any(d < 0 for d in s.shape[1:]):
            raise SamrepError(
                f"xtcl: ONNX input '{s.name}' shape {s.shape}: only the batch may vary"
            )
        if s.shape[0] >= 0 and s.shape[0] != bs:
            raise SamrepError(
                f"xtcl: ONNX input '{s.name}' has a static batch {s.shape[0]}, the row has bs {bs}"
            )
        shapes[s.name] = (bs, *s.shape[1:])
    return shapes


def check_input(spec: IOSpec, shape: tuple[int, ...], t: torch.Tensor) -> None:
    if tuple(t.shape) != shape:
        raise XtclIOError(
            f"xtcl: input '{spec.name}': shape {tuple(t.shape)}, compiled for {shape}"
        )
    if t.is_floating_point() != (spec.dtype.startswith("float")):
        raise XtclIOError(
            f"xtcl: input '{spec.name}': dtype {t.dtype}, the ONNX declares {spec.dtype}"
        )


def check_outputs(named: dict[str, torch.Tensor], bs: int) -> None:
    """low_res_masks (bs,3,256,256) and iou_scores (bs,3): a swapped order cannot pass."""
    for name, rest in OUTPUT_SHAPES.items():
        if name not in named:
            raise XtclIOError(f"xtcl: no output named '{name}' (outputs: {sorted(named)})")
        if tuple(named[name].shape) != (bs, *rest):
            raise XtclIOError(
                f"xtcl: output '{name}': shape {tuple(named[name].shape)}, expected {(bs, *rest)}"
            )


def unavailable_reasons(device: str, precision: str, device_id: int = 0) -> list[str]:
    """Why XTCL cannot run a row here ([] when it can)."""
    reasons = []
    if precision not in XtclBackend.precisions:
        reasons.append(f"xtcl has no {precision} mode (has {', '.join(XtclBackend.precisions)})")
    try:
        import tvm
    except ImportError:
        reasons.append(NOT_INSTALLED)
    else:
        try:
            from tvm.contrib import xpu_config  # noqa: F401  (Kunlunxin's extension)
        except ImportError:
            reasons.append(f"{NOT_INSTALLED}: this `tvm` has no tvm.contrib.xpu_config")
        else:
            try:  # UNVERIFIED: .exist on XTCL's "xpu" device (upstream TVM's Device API)
                present = tvm.device("xpu", device_id).exist
            except Exception as exc:  # an unknown device type raises in TVM
                present, why = False, f" ({exc})"
            else:
                why = ""
            if not present:
                reasons.append(f"no Kunlunxin XPU {device_id} visible to XTCL{why}")
    if device != "cpu":
        reasons.append(
            f"xtcl runs its own XPU runtime with torch on the CPU (device cpu), not {device}"
        )
    return reasons


# ---------------------------------------------------------------- XTCL-facing code


@contextlib.contextmanager
def environment(values: dict):
    """Set environment variables for the block, then restore the previous values."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pass_config(xpu_config, opts: dict) -> dict:
    """PassContext config, built as FlagPerf built it (UNVERIFIED beyond that program): the fuse
    list passed as is, pattern_match wrapped as "XPUFuzzyMatch", fp16 as "XPUOutDtypeConfig"."""
    config = {
        "FuseWithoutPattern": opts["FuseWithoutPattern"],
        "XPUFuzzyMatch": xpu_config.XPUGraphMatchConfig(
            pattern_match=opts["pattern_match"]
        ).value(),
    }
    if opts["out_precision"]:
        config["XPUOutDtypeConfig"] = xpu_config.XPUOutDtypeConfig(
            default_precision=opts["out_precision"], config_last_node=True, config_map={}
        ).value()
    return config


def _flatten(result) -> list:
    """NDArrays of a VM result: one NDArray, or a (nested) ADT tuple of them."""
    if hasattr(result, "numpy"):
        return [result]
    out = []
    for i in range(len(result)):
        out.extend(_flatten(result[i]))
    return out


class XtclModule:
    """One compiled ONNX graph, called with named torch tensors."""

    def __init__(self, tvm, executor, kind: str, dev, inputs, outputs, shapes, label: str):
        self.tvm, self.executor, self.kind, self.dev = tvm, executor, kind, dev
        self.inputs, self.outputs, self.shapes, self.label = inputs, outputs, shapes, label

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import numpy as np

        for spec in self.inputs:
            if spec.name not in feeds:
                raise XtclIOError(f"{self.label}: no tensor for input '{spec.name}'")
            t = feeds[spec.name]
            check_input(spec, self.shapes[spec.name], t)
            # An explicit, by-name conversion to the declared dtype (the published ONNX took fp16
            # pixels): a value cast, never a byte reinterpretation (the original's defect 3).
            arr = np.ascontiguousarray(t.detach().cpu().numpy().astype(spec.dtype, copy=False))
            value = self.tvm.nd.array(arr, self.dev)
            if self.kind == "vm":
                self.executor.set_one_input("main", spec.name, value)
            else:
                self.executor.set_input(spec.name, value)
        if self.kind == "vm":
            # UNVERIFIED: FlagPerf read vm.get_output(i) / vm.get_num_outputs(), which upstream
            # TVM's VirtualMachine does not expose; upstream's run() returns the result.
            results = _flatten(self.executor.run())
        else:
            self.executor.run()
            results = [self.executor.get_output(i) for i in range(self.executor.get_num_outputs())]
        if len(results) != len(self.outputs):
            raise XtclIOError(
                f"{self.label}: {len(results)} outputs, the ONNX declares "
                f"{[o.name for o in self.outputs]}"
            )
        return {
            o.name: torch.from_numpy(r.numpy()) for o, r in zip(self.outputs, results, strict=True)
        }


class XtclBackend(Backend):
    uses_onnx = True
    name = "xtcl"
    precisions = ("fp16", "fp32")
    devices = ("cpu",)

    def __init__(self, device, precision, options, workdir, bs=1):
        super().__init__(device, precision, options, workdir, bs)
        self.settings = resolve_options(self.options)
        self.math_mode = math_mode(precision)
        self.modules: list[XtclModule] = []

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        reasons = unavailable_reasons(device, precision)
        if reasons:
            raise BackendUnavailable("; ".join(reasons))

    def _onnx_paths(self, model, inputs) -> list[tuple[str, Path]]:
        if self.settings["onnx_path"]:
            path = Path(self.settings["onnx_path"])
            if not path.is_file():
                raise SamrepError(f"xtcl: options.onnx_path: {path}: no such file")
            return [("full", path)]
        from samrep.backends.tensorrt import onnx_parts

        return onnx_parts(self.export_onnx(model, inputs))

    def export_onnx(self, model, inputs, force: bool = False):
        """The ONNX XTCL compiles (cached by samrep.export); None with options.onnx_path."""
        if self.settings["onnx_path"]:
            return None
        from samrep.export import export_sam
        from samrep.model import weights_sha256

        self.export_info = export_sam(
            model,
            weights_sha256(model),
            self.workdir,
            precision=self.precision,
            opset=self.settings["opset"],
            part=self.settings["part"],
            example=None if inputs is None else (inputs.pixel_values, inputs.input_points),
            force=force,
        )
        return self.export_info

    def build(self, model, inputs) -> None:
        """Compile each ONNX graph with the published options (no artifact cache: UNVERIFIED how
        XTCL serializes a compiled module)."""
        import onnx

        try:
            import tvm
            from tvm import relay
            from tvm.contrib import graph_executor, xpu_config
            from tvm.runtime.vm import VirtualMachine
        except ImportError as exc:
            raise BackendUnavailable(f"{NOT_INSTALLED}: {exc}") from exc
        s, opts = self.settings, build_options(self.precision)
        dev = tvm.device("xpu", s["device_id"])
        model_name = (
            s["device_model"] or os.environ.get("XPUSIM_DEVICE_MODEL") or DEFAULT_DEVICE_MODEL
        )
        for part, path in self._onnx_paths(model, inputs):
            onnx_model = onnx.load(str(path))  # external weights load from beside the file
            ins, outs = graph_io(onnx_model)
            shapes = batch_shapes(ins, self.bs)
            dtypes = {i.name: i.dtype for i in ins}
            mod, params = relay.frontend.from_onnx(onnx_model, shape=shapes, dtype=dtypes)
            log(f"xtcl: {part}: compiling {path.name} ({self.precision}, bs {self.bs})")
            with (
                environment(opts["environment"]),
                tvm.transform.PassContext(
                    opt_level=opts["opt_level"],
                    config=pass_config(xpu_config, opts),
                    disabled_pass=opts["disabled_pass"],
                ),
            ):
                if s["executor"] == "vm":
                    target = vm_target(model_name)
                    exe = relay.backend.vm.compile(
                        mod, target=target, target_host=target, params=params
                    )
                    executor = VirtualMachine(exe, dev)
                else:
                    # FlagPerf's form: relay.build unpacked to (graph, lib, params), which
                    # upstream TVM keeps for compatibility.
                    graph, lib, built_params = relay.build(mod, target=GRAPH_TARGET, params=params)
                    executor = graph_executor.create(graph, lib, dev)
                    executor.set_input(**built_params)
            self.modules.append(
                XtclModule(tvm, executor, s["executor"], dev, ins, outs, shapes, f"xtcl {part}")
            )

    def run(self, pixel_values, input_points):
        """(B,3,1024,1024), (B,1,1,2) on the CPU -> (B,3,256,256) f32 logits, (B,3) f32 scores.

        Includes the host -> XPU copies of the inputs and the XPU -> host copies of the outputs.
        """
        if not self.modules:
            raise RuntimeError("xtcl: run() before build()")
        pool = {"pixel_values": pixel_values, "input_points": input_points}
        for module in self.modules:
            pool.update(module({s.name: pool[s.name] for s in module.inputs if s.name in pool}))
        check_outputs(pool, self.bs)
        return pool["low_res_masks"].float(), pool["iou_scores"].float()

    def versions(self) -> dict:
        out = {"torch": torch.__version__}
        try:
            import tvm

            out["tvm"] = tvm.__version__  # XTCL's own version string is not known to us
        except ImportError:
            out["tvm"] = None
        return out
