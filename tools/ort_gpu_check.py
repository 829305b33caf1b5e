"""The onnxruntime backend on a GPU, row by row: build, engine check, a short measurement, memory.

    python tools/ort_gpu_check.py --hw h200 --prepare          # ground truth + the fp32 export
    python tools/ort_gpu_check.py --hw h200 fp32:8 fp16:16 old:fp16:16

A row is PRECISION:BS; `old:` runs it as the code before the fix did: ORT handed torch's default
stream (user_compute_stream 0, which ORT reads as none), its own arena, a host sync per run.
Prints one JSON line per row (throughput in images/s, memory in GiB).
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from samrep.backends.onnx_engine import EngineCheckFailed
from samrep.backends.onnxruntime import OnnxRuntimeBackend
from samrep.config import load_params
from samrep.data import RepeatedDataset
from samrep.groundtruth import load_ground_truth, load_params_model, run_ground_truth
from samrep.memory import MemoryMonitor
from samrep.metrics import MaskScore, postprocess_masks
from samrep.timing import measure


class DefaultStreamOrt(OnnxRuntimeBackend):
    """The code before the fix: ORT given torch's current stream handle, 0 on the default one."""

    def _providers(self):
        providers = super()._providers()
        providers[0][1]["user_compute_stream"] = str(torch.cuda.current_stream().cuda_stream)
        return providers

    def build(self, model, inputs):
        import onnxruntime as ort

        super().build(model, inputs)
        self.run_options = ort.RunOptions()  # ORT syncs its own stream at the end of each run


def row(params, gt, model, spec: str, images: int) -> dict:
    *old, precision, bs = spec.split(":")
    cls, bs = (DefaultStreamOrt if old else OnnxRuntimeBackend), int(bs)
    options = {"allocator": "arena"} if old else {}
    backend = cls("cuda", precision, options, params.data_path / "engines", bs=bs)
    backend.check_available("cuda", precision)
    out = {"row": spec, "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    t0 = time.perf_counter()
    backend.export_onnx(model, gt.inputs)
    out["export_s"] = round(time.perf_counter() - t0, 1)
    with MemoryMonitor("cuda", 1.0) as mon:
        t0 = time.perf_counter()
        backend.build(model, gt.inputs)
        backend.synchronize()
        out["build_s"] = round(time.perf_counter() - t0, 1)
        opts = next(iter(backend.sessions.values())).get_provider_options()
        out["has_user_compute_stream"] = opts["CUDAExecutionProvider"]["has_user_compute_stream"]
        try:
            out["check"] = backend.verify(gt)
        except EngineCheckFailed as exc:
            out["check_failed"] = str(exc)
        score = MaskScore(gt.masks.cuda(), gt.order)

        def after(masks, _):
            size = gt.inputs.reshaped_size, gt.inputs.original_size
            score.update(postprocess_masks(masks, *size))

        dataset = RepeatedDataset(gt.inputs, images, bs, pin_memory=True)
        timing = measure(backend, dataset, repeat=1, warmup=1, after_batch=after)
    r = score.result()
    out.update(p_core=round(timing.p_core, 2), p_whole=round(timing.p_whole, 2), images=images)
    out.update(acc=round(r["acc"], 5), iou=round(r["iou"], 4), math_mode=backend.math_mode)
    out.update(
        nvml_peak_gib=round(mon.report.peak_gib, 2), ort_peak_gib=backend.framework_peak_gib()
    )
    out["torch_peak_gib"] = round(mon.report.framework_peak_gib, 2)
    out["versions"] = {k: v for k, v in backend.versions().items() if k != "options"}
    del backend
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hw", default="h200")
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("rows", nargs="*")
    a = ap.parse_args()
    params = load_params(a.hw)
    if a.prepare:
        run_ground_truth(params)
    gt = load_ground_truth(params)
    model, _ = load_params_model(params)
    if a.prepare:  # the fp32 graph, traced and checked on the CPU (any onnxruntime will do)
        OnnxRuntimeBackend("cpu", "fp32", {}, params.data_path / "engines").export_onnx(
            model, gt.inputs
        )
    for spec in a.rows:
        print(json.dumps(row(params, gt, model, spec, a.images)), flush=True)


if __name__ == "__main__":
    main()
