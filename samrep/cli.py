"""Command line: `python -m samrep <stage> --hw <hw>` runs every stage without Jupyter.

Exit codes: 0 done; 1 a row or stage failed (named on stderr); 2 bad input (one line naming the
file, key or path, before anything is written); 130 interrupted (Ctrl-C). An unexpected error is
one line naming its type and where; SAMREP_DEBUG=1 shows the traceback.
"""

import argparse
import os
import sys
import traceback

from samrep.errors import SamrepError

STAGES = {
    "groundtruth": "fp32 CPU reference masks -> data/<hw>/sam_gt_{0,1,2}.pt + manifest.json",
    "export": "ONNX export of every infer row that builds from ONNX (cached) -> export.json",
    "build": "build every infer row's persistent engine (cached) -> build.json",
    "evaluate": "every row of params/<hw>.yaml -> reports/<hw>/results/<row>.json",
    "summary": "print the metrics table of reports/<hw>/results",
    "report": "the whole chain with papermill + nbconvert -> reports/<hw>/index.html",
    "bench": "one configuration, printed: p_infer_core, latency, MFU, acc, IoU, memory, energy",
    "steps": "the fast backend's optimisation steps, one on top of the other -> steps.json",
    "interactive": "prompt encoder + mask decoder on cached embeddings: ms/click, prompts/s",
}


def _count(low: int, high: int):
    def parse(text: str) -> int:
        if text.strip().isdigit() and low <= int(text) <= high:
            return int(text)
        raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {text!r}")

    return parse


def _world_size(text: str) -> int | str:
    return text if text == "auto" else _count(1, 1024)(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other bad input
        raise SamrepError(f"{self.prog}: {message}")


def parser() -> argparse.ArgumentParser:
    epilog = "stages:\n" + "\n".join(f"  {k:<12} {v}" for k, v in STAGES.items())
    epilog += "\n\nexit codes: 0 ok, 1 rows/stages failed, 2 bad input, 130 interrupted"
    epilog += "\nSAMREP_LOCK_TIMEOUT=S: wait at most S s for another run on the same hw"
    epilog += " (default: wait; 0: refuse at once)"
    raw = dict(epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    top = _Parser("python -m samrep", description="samrep: SAM ViT-H inference benchmark", **raw)
    sub = top.add_subparsers(dest="stage", required=True, metavar="stage", parser_class=_Parser)
    hw_help = "a params/<hw>.yaml name, or auto (default: cpu)"
    for name, text in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--hw", default="cpu", help=hw_help)
        if name in ("groundtruth", "export", "build", "evaluate", "report"):
            p.add_argument("--force", action="store_true", help="redo what is already done")
    e = sub.choices["evaluate"]
    e.add_argument("--only", nargs="+", metavar="ROW", help="row keys, e.g. val-torch-fp32-bs1")
    b = sub.choices["bench"]
    b.add_argument("--backend", required=True, help="a backend name, e.g. torch, fast")
    b.add_argument("--precision", required=True, choices=("fp32", "tf32", "fp16", "bf16", "fp8"))
    b.add_argument("--bs", type=_count(1, 4096), required=True, help="batch size")
    b.add_argument("--phase", default="infer", choices=("val", "infer"))
    b.add_argument("--repeats", type=_count(1, 100), help="measurements after one build")
    b.add_argument("--world-size", type=_world_size, help="processes (GPUs): N or auto")
    s = sub.choices["steps"]
    s.add_argument("--bs", type=_count(1, 4096), default=16, help="batch size (default 16)")
    s.add_argument("--precision", default="bf16", choices=("fp32", "fp16", "bf16"))
    s.add_argument("--iters", type=_count(1, 100_000), default=20, help="timed iterations per step")
    s.add_argument("--only", type=_count(0, 99), nargs="+", metavar="STEP", help="only these")
    return top


def _say(line: str) -> None:
    print(f"samrep: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(parser().parse_args(argv))
    except SamrepError as exc:
        _say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted; the row in flight was not recorded (rerun to resume)")
        return 130
    except Exception as exc:  # the last resort: one line, the traceback only when asked for
        if os.environ.get("SAMREP_DEBUG") == "1":
            traceback.print_exc()
        where = traceback.extract_tb(exc.__traceback__)[-1]
        what = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        at = f"{os.path.basename(where.filename)}:{where.lineno}"
        _say(f"internal error: {what} (at {at}; SAMREP_DEBUG=1 for the traceback)")
        return 1


def _failed(what: str, keys: list[str] | dict[str, str]) -> int:
    if keys:
        _say(f"{what} failed: {', '.join(keys)}")
    return 1 if keys else 0


def _run(args) -> int:
    # imported here, not at the top: `--help` and bad arguments answer without loading torch
    import pandas as pd

    from samrep import bench, config, gpus, groundtruth, interactive, pipeline, stages, tables

    if args.hw == "auto":
        args.hw = gpus.auto_hw()
    if args.stage == "report":
        outcome = pipeline.run_report(args.hw, force=args.force)
        print(outcome.page)
        return _failed("stages", outcome.failed_stages) or _failed("rows", outcome.failed_rows)
    params = config.load_params(args.hw)
    if args.stage == "groundtruth":
        stages.groundtruth(params, force=args.force)
    elif args.stage in ("export", "build"):
        entries = stages.engines(params, args.stage, force=args.force)
        return _failed(args.stage, [e["row"] for e in entries if e["status"] == "failed"])
    elif args.stage == "evaluate":
        records = stages.evaluate(params, force=args.force, only=args.only)
        return _failed("rows", [r.key for r in records if r.status == "failed"])
    elif args.stage == "summary":
        records, problems = tables.load_records(params.report_path, [r.key for r in params.runs])
        table, notes = tables.spec_table(records)
        with pd.option_context("display.max_columns", None, "display.width", 250):
            print(table.replace(r"<sup>(\d+)</sup>", r" [\1]", regex=True).to_string(index=False))
        for i, line in enumerate(notes, 1):
            print(f"[{i}] {line}")
        for line in problems:
            _say(f"could not read {line}")
    elif args.stage == "bench":
        if args.world_size is not None:
            params = params.model_copy(update={"world_size": args.world_size})
        row = {k: getattr(args, k) for k in ("backend", "precision", "bs", "phase")}
        run = config.RunParams(**row)
        if run.bs > (n := params.data.datasize):
            raise SamrepError(f"--bs: {run.bs} is larger than data.datasize {n} of {params.path}")
        stages.prepare(params, [run])  # the row's checks first, then
        groundtruth.load_ground_truth(params)  # before torchrun: one line, not one per rank
        return 0 if bench.bench(params, run, args.repeats).status == "ok" else 1
    elif args.stage == "interactive":
        interactive.interactive(params)
    elif args.stage == "steps":
        bench.steps(params, args.bs, args.precision, args.iters, args.only)
    return 0
