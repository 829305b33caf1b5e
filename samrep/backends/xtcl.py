"""`xtcl`: Kunlunxin XTCL (a TVM fork, not public) compiling samrep's ONNX as FlagPerf's sam_h
did (inference_engine/kunlunxin/xtcl.py at 98d85df9, XTCL 2.0.0.67); never run by samrep's
authors ("UNVERIFIED": not checked against XTCL). Torch on the CPU; run() copies to the XPU and
back. Only its own options are read (defect 8); I/O by name, cast by value (defects 3, 4)."""

import os
from typing import Literal

import torch
from pydantic import Field

from samrep.backends import onnx_engine as oe
from samrep.backends.base import BackendUnavailable
from samrep.errors import SamrepError

ENVIRONMENT = {"XTCL_USE_NEW_ALTER_PASS": "1"}  # FlagPerf's, both precisions
# FlagPerf's "fp32" also set XTCL_USE_FP16=1, XTCL_QUANTIZE_WEIGHT=1 (fp16, quantized): not here.
MATH = {"fp16": "XTCL, float16 outputs: the published build", "fp32": "XTCL, no fp16 flags"}


class XtclOptions(oe.EngineOptions):
    part: Literal["split", "whole"] = Field("whole", description="'whole' as published, or split")
    onnx_path: str = Field("", description="an existing ONNX to compile ('' = samrep's export)")
    device_id: int = Field(0, ge=0, description="XPU index")


class XtclBackend(oe.OnnxEngine):
    name = "xtcl"
    precisions = ("fp16", "fp32")
    devices = ("cpu",)
    Options = XtclOptions

    def __init__(self, device, precision, options, workdir, bs=1):
        super().__init__(device, precision, options, workdir, bs)
        self.modules, self.math_mode = {}, f"{precision} ({MATH[precision]})"

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        why = [] if precision in cls.precisions else [f"xtcl has no {precision} mode"]
        if device != "cpu":
            why.append(f"xtcl runs its own XPU runtime with torch on the CPU, not {device}")
        try:
            import tvm
            from tvm.contrib import xpu_config  # noqa: F401  (Kunlunxin's extension)

            why += [] if tvm.device("xpu", 0).exist else ["no Kunlunxin XPU visible"]  # UNVERIFIED
        except ImportError as exc:
            why.insert(0, f"Kunlunxin XTCL not installed (not public) ({exc})")
        if why:
            raise BackendUnavailable("; ".join(why))

    def export_onnx(self, model, inputs, force: bool = False):
        return None if self.opts.onnx_path else super().export_onnx(model, inputs, force)

    def build(self, model, inputs) -> None:
        """Compile each graph with the published options (FlagPerf's kunlunxin_configurations
        .yaml), static at the row's bs, for the Relay VM (FlagPerf's sam_h executor)."""
        import onnx
        import tvm
        from tvm import relay
        from tvm.contrib import xpu_config
        from tvm.runtime.vm import VirtualMachine

        o, dev = self.opts, tvm.device("xpu", self.opts.device_id)
        if o.onnx_path and not os.path.isfile(o.onnx_path):
            raise SamrepError(f"xtcl: options.onnx_path: {o.onnx_path}: no such file")
        paths = {"model": o.onnx_path} if o.onnx_path else self.export_onnx(model, inputs).paths
        match = xpu_config.XPUGraphMatchConfig(pattern_match=["fuse_attention_sam"]).value()
        config = {"FuseWithoutPattern": ["FuseConv2dTransposeBiasAdd"], "XPUFuzzyMatch": match}
        if self.precision == "fp16":
            config["XPUOutDtypeConfig"] = xpu_config.XPUOutDtypeConfig(
                default_precision="float16", config_last_node=True, config_map={}
            ).value()
        target = f"llvm -acc=xpu{os.environ.get('XPUSIM_DEVICE_MODEL', 'KUNLUN1')[-1]}"
        for graph, path in paths.items():
            proto = onnx.load(str(path))
            self.bind_contract(model.config, graph, declared(proto))
            shapes = {s.name: oe.batch_profile(s, self.bs)[1] for s in self.specs[graph][0]}
            mod, params = relay.frontend.from_onnx(proto, shape=shapes)
            os.environ.update(ENVIRONMENT)  # UNVERIFIED whether XTCL reads it at build or run
            with tvm.transform.PassContext(3, config=config, disabled_pass=["xgraph_layout_opt"]):
                exe = relay.backend.vm.compile(mod, target, target_host=target, params=params)
            self.modules[graph] = VirtualMachine(exe, dev), dev, tvm

    def run_graph(self, graph: str, feeds: dict, outs: list, batch: int) -> dict:
        """On CPU tensors (static shapes: bs); the copies to and from the XPU are inside."""
        vm, dev, tvm = self.modules[graph]
        for name, t in feeds.items():
            vm.set_one_input("main", name, tvm.nd.array(t.numpy(), dev))
        result = vm.run()  # UNVERIFIED: FlagPerf read vm.get_output(i); upstream returns them
        results = [result] if hasattr(result, "numpy") else list(result)
        got = {s.name: torch.from_numpy(r.numpy()) for s, r in zip(outs, results, strict=True)}
        oe.check_tensors(outs, {s.name: got[s.name].to(s.dtype) for s in outs}, graph, "cpu")
        return got  # named in the ONNX's output order, checked by dtype and shape

    def versions(self) -> dict:
        return {"torch": torch.__version__, "tvm": __import__("tvm").__version__}


def declared(proto) -> dict:
    """{name: (torch dtype, shape)} of an ONNX graph's inputs (weights excluded) and outputs."""
    from onnx.helper import tensor_dtype_to_np_dtype

    weights, out = {i.name for i in proto.graph.initializer}, {}
    for v in [v for v in [*proto.graph.input, *proto.graph.output] if v.name not in weights]:
        t = v.type.tensor_type
        dtype = getattr(torch, tensor_dtype_to_np_dtype(t.elem_type).name)
        out[v.name] = dtype, tuple(d.dim_value or None for d in t.shape.dim)
    return out
