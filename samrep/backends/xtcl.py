"""`xtcl`: Kunlunxin XTCL (a TVM fork, not public) compiling samrep's ONNX, as FlagPerf's sam_h.

Never run by samrep's authors: every XTCL call follows FlagPerf's inference_engine/kunlunxin/
xtcl.py at 98d85df9 (XTCL 2.0.0.67, R200) or upstream TVM's Relay API; "UNVERIFIED" marks the
calls not checked against XTCL. Torch runs on the CPU (device cpu): run() copies to the XPU and
back. Fixes of the original: only samrep's own options are read (its engine read a ResNet-50
key: defect 8); inputs are set by name at the ONNX's dtype, converted by value (defect 3); the
outputs are named from the ONNX and checked against the contract (defect 4).
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from pydantic import Field

from samrep.backends import onnx_engine as oe
from samrep.backends.base import BackendUnavailable
from samrep.errors import SamrepError

NOT_INSTALLED = "Kunlunxin XTCL not installed (not public)"
# The published build (FlagPerf configs/sam_h/vendor_config/kunlunxin_configurations.yaml):
# FuseWithoutPattern [FuseConv2dTransposeBiasAdd], pattern_match [fuse_attention_sam],
# disabled_pass [xgraph_layout_opt], opt_level 3, fp16 XPUOutDtypeConfig; set in build().
ENVIRONMENT = {"XTCL_USE_NEW_ALTER_PASS": "1"}  # FlagPerf's, both precisions
# FlagPerf's "fp32" also set XTCL_USE_FP16=1 and XTCL_QUANTIZE_WEIGHT=1 (so it ran fp16 with
# quantized weights); samrep's fp32 does not.
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
        self.modules, self.math_mode = [], f"{precision} ({MATH[precision]})"

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        why = [] if precision in cls.precisions else [f"xtcl has no {precision} mode"]
        try:
            import tvm
            from tvm.contrib import xpu_config  # noqa: F401  (Kunlunxin's extension)

            if not tvm.device("xpu", 0).exist:  # UNVERIFIED: upstream TVM's Device API
                why.append("no Kunlunxin XPU visible to XTCL")
        except ImportError as exc:
            why.insert(0, f"{NOT_INSTALLED} ({exc})")
        if device != "cpu":
            why.append(f"xtcl runs its own XPU runtime with torch on the CPU, not {device}")
        if why:
            raise BackendUnavailable("; ".join(why))

    def export_onnx(self, model, inputs, force: bool = False):
        return None if self.opts.onnx_path else super().export_onnx(model, inputs, force)

    def build(self, model, inputs) -> None:
        """Compile each graph with the published options, static at the row's bs, for the
        Relay VM (FlagPerf's sam_h executor)."""
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
        chip = os.environ.get("XPUSIM_DEVICE_MODEL", "KUNLUN1")[-1]  # FlagPerf's VM target
        for graph, path in paths.items():
            proto = onnx.load(str(path))
            ins, outs = (
                oe.match_contract(w, declared(proto), f"xtcl {graph}")
                for w in oe.contract(model.config, graph)
            )
            shapes = {s.name: oe.batch_profile(s, self.bs)[1] for s in ins}  # static at bs
            mod, params = relay.frontend.from_onnx(proto, shape=shapes)
            os.environ.update(ENVIRONMENT)  # UNVERIFIED whether XTCL reads it at build or run
            with tvm.transform.PassContext(3, config=config, disabled_pass=["xgraph_layout_opt"]):
                target = f"llvm -acc=xpu{chip}"
                exe = relay.backend.vm.compile(
                    mod, target=target, target_host=target, params=params
                )
            self.modules.append((f"xtcl {graph}", VirtualMachine(exe, dev), ins, outs, dev, tvm))

    def run(self, pixel_values, input_points):
        """(B,3,1024,1024), (B,1,1,2) on the CPU -> (B,3,256,256) logits, (B,3); the copies to
        and from the XPU are inside."""
        pool = {"pixel_values": pixel_values, "input_points": input_points}
        for label, vm, ins, outs, dev, tvm in self.modules:
            feeds = {s.name: pool[s.name].to(s.dtype) for s in ins}  # by name, by value
            oe.check_tensors(ins, feeds, label, "cpu")
            for name, t in feeds.items():
                vm.set_one_input("main", name, tvm.nd.array(t.numpy(), dev))
            result = vm.run()  # UNVERIFIED: FlagPerf read vm.get_output(i), upstream returns
            results = [result] if hasattr(result, "numpy") else list(result)
            got = {s.name: torch.from_numpy(r.numpy()) for s, r in zip(outs, results, strict=True)}
            oe.check_tensors(outs, {s.name: got[s.name].to(s.dtype) for s in outs}, label, "cpu")
            pool.update(got)  # named in the ONNX's output order, then checked by shape
        return pool["low_res_masks"].float(), pool["iou_scores"].float()

    def versions(self) -> dict:
        import tvm

        return {"torch": torch.__version__, "tvm": tvm.__version__}


def declared(proto) -> dict:
    """{name: (torch dtype, shape)} of an ONNX graph's inputs (weights excluded) and outputs."""
    from onnx.helper import tensor_dtype_to_np_dtype

    weights = {i.name for i in proto.graph.initializer}
    values = [v for v in [*proto.graph.input, *proto.graph.output] if v.name not in weights]
    dtype = {
        v.name: getattr(torch, tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name)
        for v in values
    }
    return {
        v.name: (dtype[v.name], tuple(d.dim_value or None for d in v.type.tensor_type.shape.dim))
        for v in values
    }
