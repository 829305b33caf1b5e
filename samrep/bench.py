"""Quick measurements outside the report: one configuration (`bench`), and the fast backend's
optimisation steps one on top of the other (`steps`)."""

from samrep.config import HwParams, RunParams
from samrep.distributed import resolve_world_size, run_distributed
from samrep.env import environment
from samrep.flops import mfu, sam_flops
from samrep.metrics import MaskScore, postprocess_masks
from samrep.progress import log
from samrep.record import Record, summary
from samrep.row import RowContext, run_row
from samrep.stages import hw_lock
from samrep.store import write_json


def headline(rec: Record) -> str:
    """One line with the figures an engineer looks at first, each with its unit."""
    if rec.status != "ok":
        return f"{rec.key}: {rec.status.replace('_', ' ')}: {rec.reason}"
    s, t = summary(rec), rec.timing
    spread = getattr(t, "p_core_spread", None)
    mfu_s = f"{100 * s['mfu']:.2f}%" if s["mfu"] is not None else "not available: peak unknown"
    energy = f", {s['img_per_j']:.3g} img/J" if s["img_per_j"] else ""
    return (
        f"{rec.key} ({rec.math_mode}) on {rec.environment.get('device')}: p_infer_core "
        f"{s['p_core']:.4g} img/s"
        + (f" (min-max {spread[0]:.4g}-{spread[1]:.4g})" if spread else "")
        + f", latency p50/p99 {s['latency_p50_ms']:.1f}/{s['latency_p99_ms']:.1f} ms, MFU {mfu_s}, "
        f"acc {s['acc']:.5f}, IoU {s['iou']:.4f}, logits rel. L2 {s['logits_rel_l2'] or float('nan'):.2e}, "
        f"peak memory {s['mem_peak_gib']:.2f}/{s['mem_total_gib']:.1f} GiB{energy} [{t.images} images]"
        + ("" if s["valid"] else " INVALID")
    )


def bench(params: HwParams, run: RunParams, repeats: int | None = None) -> Record:
    """Measure one row with the params' data and model -> reports/<hw>/bench/<row>.json."""
    with hw_lock(params, [run]):
        n = resolve_world_size(params)
        if n > 1:
            (record,) = run_distributed(params, [run], n)
        else:
            record = run_row(RowContext.load(params), run, repeats=repeats)
        path = params.report_path / "bench" / f"{run.key}{f'-ws{n}' if n > 1 else ''}.json"
        write_json(path, record.dump())
    print(headline(record))
    log(f"bench: wrote {path}")
    return record


def steps(params: HwParams, bs: int, precision: str, iters: int, only=None) -> list[dict]:
    """Time samrep.fast's cumulative optimisation steps (`only`: these alone; fp8 steps in bf16
    only, steps 0 and 8 on a CPU) -> reports/<hw>/steps.json."""
    from samrep.fast.steps import FP8_STEPS, STEP_NAMES, optimisation_steps

    with hw_lock(params, []):
        ctx = RowContext.load(params)
        gt, flops = ctx.gt, sam_flops(ctx.model.config, 1, bs)
        peak, inputs = params.peaks.get(precision), ctx.gt.inputs
        todo = [i for i in range(len(STEP_NAMES)) if precision == "bf16" or i not in FP8_STEPS]
        allowed = todo if params.device == "cuda" else (0, 8)
        todo = tuple(i for i in allowed if not only or i in only)
        log(f"steps: {precision} bs{bs}, {iters} iterations per step")

        def score(logits):
            """acc and IoU of one step's masks (B, 1, 3, 256, 256) against the fp32 ground truth."""
            s = MaskScore(gt.masks.to(logits.device), gt.order)
            s.update(postprocess_masks(logits[:, 0], inputs.reshaped_size, inputs.original_size))
            return {k: v for k, v in s.result().items() if k in ("acc", "iou")}

        options = dict(bs=bs, precision=precision, device=params.device, iters=iters, warmup=3)
        images = inputs.pixel_values, inputs.input_points
        rows = optimisation_steps(ctx.model, *images, steps=todo, score=score, **options)
        for r in rows:
            if "img_per_s" in r:
                r["mfu"] = mfu(r["img_per_s"], flops.total, peak.flops) if peak else None
                acc = r.get("acc", float("nan"))
                log(f"step {r['step']} {r['name']}: {r['img_per_s']:.2f} img/s, acc {acc:.5f}")
            else:
                log(f"step {r['step']} {r['name']}: error {r.get('error')}")
        out = dict(bs=bs, precision=precision, iters=iters, weights=gt.manifest["weights"])
        out |= dict(environment=environment(params.device), flops_per_image=flops.total)
        out |= dict(peak=peak.model_dump() if peak else None, steps=rows)
        write_json(params.report_path / "steps.json", out)
    return rows
