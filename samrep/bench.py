"""Quick measurements outside the report: one configuration (`bench`), and the fast backend's
optimisation steps one on top of the other (`steps`)."""

from __future__ import annotations

import dataclasses
import json

from samrep.config import HwParams, RunParams
from samrep.env import check_device, environment
from samrep.errors import SamrepError
from samrep.flops import mfu, sam_flops
from samrep.progress import log
from samrep.results import atomic_write_json


def bench(
    params: HwParams,
    backend: str,
    precision: str,
    bs: int,
    phase: str = "infer",
    launch=None,
    repeats: int | None = None,
) -> dict:
    """Measure one row with the params' data and model; print the headline figures.

    On several GPUs (`launch`, a samrep.distributed.Launch, or params world_size > 1) the row
    runs with torchrun; the aggregate and per-rank figures are printed and the record is saved
    as reports/<hw>/bench/<row>-ws<N>.json.

    On one device, `repeats` measurements (default data.measure_repeats) follow one build:
    p_infer_core is their median, printed with the min-max; the record goes to
    reports/<hw>/bench/<row>.json.
    """
    from samrep.backends import BACKENDS
    from samrep.config import PRECISIONS
    from samrep.evaluate import evaluate_row, load_ground_truth
    from samrep.groundtruth import load_params_model

    if backend not in BACKENDS:
        raise SamrepError(f"--backend: unknown '{backend}' (known: {', '.join(sorted(BACKENDS))})")
    if precision not in PRECISIONS:
        raise SamrepError(f"--precision: unknown '{precision}' (known: {', '.join(PRECISIONS)})")
    if not 1 <= bs <= params.data.datasize:
        raise SamrepError(f"--bs: must be between 1 and data.datasize {params.data.datasize}")
    if repeats is not None and repeats < 1:
        raise SamrepError(f"--repeats: must be >= 1, got {repeats}")
    check_device(params)
    from samrep.distributed import Launch, resolve_world_size

    if launch is None and resolve_world_size(params) != 1:
        launch = Launch.from_env(resolve_world_size(params))
    if launch is not None:
        return _bench_distributed(params, RunParams(backend, precision, bs, phase), launch)
    gt = load_ground_truth(params)
    model, weights = load_params_model(params)
    run = RunParams(backend, precision, bs, phase)
    record = evaluate_row(params, run, gt, model, 0.0, weights.sha256, repeats)
    path = params.report_path / "bench" / f"{run.key}.json"
    atomic_write_json(path, record)
    log(f"bench: wrote {path}")
    if record["status"] != "ok":
        print(f"{record['key']}: {record['status']}: {record['reason']}")
        return record
    m = record["metrics"]
    fw = m["mem_framework_peak_gib"]
    rep = m.get("p_core_repeats")
    spread = (
        f" (median of {rep['n']} repeats, min-max {rep['min']:.2f}-{rep['max']:.2f}, spread "
        f"{100 * (rep['max'] - rep['min']) / rep['median']:.1f}%)"
        if rep
        else ""
    )
    failed = [k for k, c in record["validity"]["checks"].items() if c["ok"] is False]
    print(
        f"{record['key']} ({record['math_mode']}) on {record['environment']['device']}: "
        f"p_infer_core {m['p_core']:.2f} img/s{spread}, MFU {100 * m['mfu']:.2f}% (true FLOPs; "
        f"{m['achieved_tflops']:.1f} TFLOP/s), acc {m['acc']:.5f}, IoU {m['iou']:.4f}, "
        f"peak memory {m['mem_peak_gib']:.2f}/{m['mem_total_gib']:.1f} GiB"
        + (f" (framework {fw:.2f} GiB)" if fw is not None else "")
        + f" [{record['timing']['images']} images, weights "
        f"{'synthetic' if record['weights']['synthetic'] else record['weights']['name']}]"
        + (f" INVALID: {', '.join(failed)}" if failed else "")
    )
    return record


def _bench_distributed(params: HwParams, run: RunParams, launch) -> dict:
    from samrep.distributed import print_summary, run_distributed

    (record,) = run_distributed(params, [run], launch)
    print_summary(record)
    if record["status"] == "ok":
        n = record["distributed"]["world_size"]
        path = params.report_path / "bench" / f"{run.key}-ws{n}.json"
        atomic_write_json(path, record)
        log(f"bench: wrote {path}")
    return record


def steps(
    params: HwParams, bs: int, precision: str, iters: int, only: tuple[int, ...] | None = None
) -> list[dict]:
    """Time samrep.fast's cumulative optimisation steps (`only`: these alone); write
    reports/<hw>/steps.json."""
    from samrep.evaluate import mask_scorer
    from samrep.fast.steps import FP8_STEPS, STEP_NAMES, optimisation_steps
    from samrep.groundtruth import load_ground_truth, load_params_model

    check_device(params)
    gt = load_ground_truth(params)
    model, weights = load_params_model(params)
    flops = sam_flops(model.config, points_per_image=1, batch_size=bs)
    peak = params.peaks.get(precision)
    todo = tuple(i for i in range(len(STEP_NAMES)) if precision == "bf16" or i not in FP8_STEPS)
    if params.device != "cuda":
        todo = (0, 1, 2)
    todo = tuple(i for i in todo if only is None or i in only)
    log(f"steps: {precision} bs{bs}, {iters} iterations per step")

    def score(logits):
        """acc and IoU of one step's masks against the fp32 ground truth (the report's)."""
        after_batch, scores, _ = mask_scorer(gt, logits.device)
        after_batch(logits[:, 0], None)
        result = scores.result()
        return {"acc": result["acc"], "iou": result["iou"]}

    rows = optimisation_steps(
        model,
        gt.inputs.pixel_values,
        gt.inputs.input_points,
        bs=bs,
        precision=precision,
        device=params.device,
        iters=iters,
        warmup=3,
        steps=todo,
        score=score,
    )
    for r in rows:
        if "img_per_s" in r:
            r["mfu"] = mfu(r["img_per_s"], flops.total, peak.flops) if peak else None
            log(
                f"step {r['step']} {r['name']}: {r['img_per_s']:.2f} img/s, MFU "
                f"{100 * r['mfu']:.2f}%"
                if r["mfu"] is not None
                else f"step {r['step']}"
            )
        else:
            log(f"step {r['step']} {r['name']}: error {r['error']}")
    out = {
        "bs": bs,
        "precision": precision,
        "iters": iters,
        "weights": dataclasses.asdict(weights) if dataclasses.is_dataclass(weights) else weights,
        "environment": environment(params.device),
        "flops_per_image": flops.total,
        "peak": dataclasses.asdict(peak) if peak else None,
        "steps": rows,
    }
    path = params.report_path / "steps.json"
    atomic_write_json(path, json.loads(json.dumps(out, default=str)))
    log(f"steps: wrote {path}")
    return rows
