"""Where the fast backend's time goes: torch.profiler over fast-backend iterations.

Usage (on a GPU): python tools/profile_fast.py --hw h200 --bs 16 --precision bf16 > profile.txt
Prints the top CUDA kernels by total device time, grouped into matmul / attention / other.
`--options '{"gelu_epilogue": true}'`: backend options (FastOptions). `--ops`: instead, time
the fused ops of samrep.fast.fused_ops against their unfused forms at ViT-H's bs-16 shapes.
"""

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile

from samrep.backends import get_backend
from samrep.config import load_params
from samrep.groundtruth import load_ground_truth, load_params_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hw", default="h200")
    ap.add_argument("--bs", type=int, default=16)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--options", default="{}", help="fast backend options, JSON")
    ap.add_argument("--ops", action="store_true", help="time the fused ops instead")
    args = ap.parse_args()
    if args.ops:
        from tools.fused_ops_bench import main as ops_main

        return ops_main(args.bs)
    params = load_params(args.hw)
    gt = load_ground_truth(params)
    model, _ = load_params_model(params)
    options = json.loads(args.options)
    backend = get_backend("fast")("cuda", args.precision, options, params.data_path, bs=args.bs)
    backend.build(model, gt.inputs)
    pv = gt.inputs.pixel_values.expand(args.bs, -1, -1, -1).contiguous().cuda()
    pts = gt.inputs.input_points.expand(args.bs, -1, -1, -1).contiguous().cuda()
    for _ in range(3):
        backend.run(pv, pts)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(args.iters):
            backend.run(pv, pts)
        torch.cuda.synchronize()
    # device kernels only: not the CPU-side ranges ("## Call CompiledFxGraph ##", "Command
    # Buffer Full") whose "device time" spans the kernels they launched
    events = [
        e
        for e in prof.key_averages()
        if e.device_type.name == "CUDA"
        and e.self_device_time_total > 0
        and not e.key.startswith(("##", "Command Buffer"))
    ]
    if not events:  # a profiler that labels kernels otherwise: every event with device time
        events = [
            e
            for e in prof.key_averages()
            if e.self_device_time_total > 0 and not e.key.startswith(("##", "Command Buffer"))
        ]
    total = sum(e.self_device_time_total for e in events)
    groups = {"gemm (matmul)": 0.0, "attention (flash/sdpa)": 0.0, "other": 0.0}
    for e in events:
        n = e.key.lower()
        if (
            any(k in n for k in ("gemm", "matmul", "sm90", "cutlass", "mm_", "_mm"))
            and "flash" not in n
        ):
            groups["gemm (matmul)"] += e.self_device_time_total
        elif any(k in n for k in ("flash", "attention", "fmha", "sdpa")):
            groups["attention (flash/sdpa)"] += e.self_device_time_total
        else:
            groups["other"] += e.self_device_time_total
    per_iter_ms = total / 1000 / args.iters
    print(
        f"{backend.math_mode}; kernel time per iteration (bs {args.bs}, "
        f"{args.precision}): {per_iter_ms:.1f} ms "
        f"-> {args.bs / per_iter_ms * 1000:.1f} img/s if the GPU were never idle"
    )
    for k, v in groups.items():
        print(f"  {k:28s} {100 * v / total:5.1f}%  {v / 1000 / args.iters:8.2f} ms/iter")
    print(
        prof.key_averages().table(
            sort_by="self_device_time_total", row_limit=25, max_name_column_width=90
        )
    )


if __name__ == "__main__":
    main()
