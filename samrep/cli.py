"""Command line: `python -m samrep <stage> --hw <hw>` runs every stage without Jupyter."""

from __future__ import annotations

import argparse
import sys

from samrep.errors import SamrepError

HELP = """stages:
  groundtruth   fp32 CPU reference masks -> data_dir/sam_gt_{0,1,2}.pt + manifest.json
  export        ONNX export of every infer row that builds from ONNX (cached) -> export.json
  build         build every infer row's persistent engine (cached) -> build.json
  evaluate      every row of params/<hw>.yaml -> reports/<hw>/results/<row>.json
  summary       print the metrics table of reports/<hw>/results
  report        the whole chain with papermill + nbconvert -> reports/<hw>/index.html
  bench         one configuration, printed: p_infer_core, MFU, acc, IoU, peak memory
  steps         the fast backend's optimisation steps, one on top of the other -> steps.json
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m samrep",
        description="samrep: SAM ViT-H inference benchmark",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="stage")
    for name, text in (
        ("groundtruth", "make the fp32 CPU ground truth"),
        ("export", "export the ONNX graphs the engines build from"),
        ("build", "build the engines that persist (TensorRT, ONNX Runtime)"),
        ("evaluate", "measure every configured row"),
        ("summary", "print the metrics table"),
        ("report", "run the notebooks and render the HTML report"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--hw", default="cpu", help="params/<hw>.yaml to use (default: cpu)")
        if name != "summary":
            p.add_argument("--force", action="store_true", help="redo finished stages/rows")
        if name == "evaluate":
            p.add_argument(
                "--only", nargs="+", metavar="ROW", help="row keys, e.g. val-torch-fp32-bs1"
            )
    bench = sub.add_parser("bench", help="measure one configuration and print it")
    bench.add_argument("--hw", default="cpu", help="params/<hw>.yaml (peaks, data, model)")
    bench.add_argument("--backend", required=True, help="a backend name, e.g. torch, fast")
    bench.add_argument("--precision", required=True, help="fp32, tf32, fp16, bf16 or fp8")
    bench.add_argument("--bs", type=int, required=True, help="batch size")
    bench.add_argument("--phase", default="infer", choices=("val", "infer"))
    bench.add_argument(
        "--repeats", type=int, help="measurements after one build (default: data.measure_repeats)"
    )
    dist = bench.add_argument_group(
        "several GPUs (torchrun; see README 'Several GPUs: torchrun')",
        "processes per host and torchrun's rendezvous options, passed through as they are",
    )
    dist.add_argument(
        "--world-size", help="processes (GPUs) on this host: N or auto (default: the params')"
    )
    dist.add_argument("--nnodes", help="torchrun --nnodes (hosts, e.g. 2 or 1:4)")
    dist.add_argument("--node-rank", type=int, help="torchrun --node-rank")
    dist.add_argument("--rdzv-backend", help="torchrun --rdzv-backend (e.g. c10d)")
    dist.add_argument("--rdzv-endpoint", help="torchrun --rdzv-endpoint (host:port)")
    dist.add_argument("--rdzv-id", help="torchrun --rdzv-id")
    dist.add_argument("--rdzv-conf", help="torchrun --rdzv-conf (key=value,...)")
    steps = sub.add_parser("steps", help="time the fast backend's optimisation steps")
    steps.add_argument("--hw", default="cpu", help="params/<hw>.yaml")
    steps.add_argument("--bs", type=int, default=16, help="batch size (default 16)")
    steps.add_argument("--precision", default="bf16", help="fp32, fp16 or bf16 (default bf16)")
    steps.add_argument("--iters", type=int, default=20, help="timed iterations per step")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except SamrepError as exc:
        print(f"samrep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("samrep: interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    from samrep.config import load_params

    if args.stage == "report":
        from samrep.pipeline import run_report

        outcome = run_report(args.hw, force=args.force)
        print(outcome.page)
        if outcome.failed:
            print(f"samrep: report rendered; {outcome.failure_message()}", file=sys.stderr)
            return 1
        return 0
    params = load_params(args.hw)
    if args.stage == "bench":
        from samrep.bench import bench

        params, launch = _launch(args, params)
        record = bench(
            params, args.backend, args.precision, args.bs, args.phase, launch, args.repeats
        )
        return 0 if record["status"] == "ok" else 1
    if args.stage == "steps":
        from samrep.bench import steps

        steps(params, args.bs, args.precision, args.iters)
        return 0
    if args.stage in ("export", "build"):
        from samrep import engines

        stage = engines.export_stage if args.stage == "export" else engines.build_stage
        entries = stage(params, force=args.force)
        failed = [e["row"] for e in entries if e["status"] == "failed"]
        if failed:
            print(f"samrep: {args.stage} failed for: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    if args.stage == "groundtruth":
        from samrep.groundtruth import run_ground_truth

        run_ground_truth(params, force=args.force)
    elif args.stage == "evaluate":
        from samrep.evaluate import run_evaluation

        records = run_evaluation(params, force=args.force, only=args.only)
        failed = [r["key"] for r in records if r["status"] == "failed"]
        if failed:
            print(f"samrep: failed rows: {', '.join(failed)}", file=sys.stderr)
            return 1
    elif args.stage == "summary":
        import pandas as pd

        from samrep.tables import load_records, spec_table

        records, problems = load_records(params.report_path, [run.key for run in params.runs])
        table, notes = spec_table(records)
        with pd.option_context("display.max_columns", None, "display.width", 250):
            print(table.replace(r"<sup>(\d+)</sup>", r" [\1]", regex=True).to_string(index=False))
        for i, line in enumerate(notes + problems, 1):
            print(f"[{i}] {line}" if i <= len(notes) else f"could not read {line}")
    return 0


def _launch(args, params):
    """(params, launch) of bench: --world-size overrides the params'; the rendezvous options
    make a torchrun launch (launch None: the params' world size decides)."""
    import dataclasses

    from samrep.config import parse_world_size
    from samrep.distributed import Launch, resolve_world_size

    if args.world_size is not None:
        ws = parse_world_size(args.world_size, "--world-size")
        params = dataclasses.replace(params, world_size=ws)
    rdzv = {
        k: getattr(args, k)
        for k in ("nnodes", "node_rank", "rdzv_backend", "rdzv_endpoint", "rdzv_id", "rdzv_conf")
        if getattr(args, k) is not None
    }
    return params, (Launch(resolve_world_size(params), **rdzv) if rdzv else None)
