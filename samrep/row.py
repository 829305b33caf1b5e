"""One row: build -> engine check -> measure (with repeats) -> score -> validity -> record.

One process and every torchrun worker run it; a worker's group (samrep.distributed.TorchGroup)
adds the barriers, the agreement on failures (one rank's failure fails all, naming the rank) and
the gather to rank 0. A backend's failure becomes a "failed" or "not_run" record; Ctrl-C is not."""

import gc
import time
import traceback
from dataclasses import dataclass
from functools import partial

import torch

from samrep.backends import BackendUnavailable, backend_code, get_backend
from samrep.config import HwParams, RunParams
from samrep.data import RepeatedDataset
from samrep.energy import EnergyMeter
from samrep.env import environment
from samrep.errors import SamrepError
from samrep.faults import checkpoint
from samrep.flops import flops_section
from samrep.groundtruth import MANIFEST, REDO, GroundTruth, load_ground_truth, load_params_model
from samrep.memory import MemoryMonitor, current_nvml_index
from samrep.metrics import MaskScore, postprocess_masks, rel_l2
from samrep.progress import Progress, log
from samrep.record import Record
from samrep.store import code_digest, digest
from samrep.timing import aggregate, measure
from samrep.validity import device_state, validity

# The code every row's result depends on, beside its backend's.
ROW_CODE = ("row", "timing", "metrics", "memory", "energy", "flops", "validity", "data")


class LocalGroup:
    """One process: no barrier, nothing to agree on, nothing to gather, no one to wait for."""

    rank, world_size = 0, 1
    barrier = staticmethod(lambda: None)
    agree = staticmethod(lambda error: error)
    gather = staticmethod(lambda obj: [obj])
    in_turn = staticmethod(lambda fn: fn())
    alone = staticmethod(lambda fn: None)  # the single-process figure is the measurement itself


@dataclass
class RowContext:
    """What every row of a run shares: the params, the ground truth and the fp32 CPU model."""

    params: HwParams
    gt: GroundTruth
    model: object
    weights_sha256: str
    load_s: float = 0.0

    @classmethod
    def load(cls, params: HwParams) -> "RowContext":
        """The ground truth and the model it was made with (else a one-line error)."""
        gt = load_ground_truth(params)
        t0 = time.perf_counter()
        model, weights = load_params_model(params)
        if weights.sha256 != gt.manifest["weights"]["sha256"]:
            raise SamrepError(f"{params.data_path / MANIFEST}: made with other weights; {REDO}")
        return cls(params, gt, model, weights.sha256, time.perf_counter() - t0)


def row_stamp(params: HwParams, run: RunParams, gt_stamp: str, world_size: int = 1) -> dict:
    """What a row's result depends on: its params, the weights/ground truth and its code."""
    return {
        "run": run.model_dump(),
        "model": params.model.model_dump(),
        "data": params.data.model_dump(exclude={"data_dir"}),
        "device": params.device,
        "peak": params.peaks.get(run.precision),
        "ground_truth": gt_stamp,
        "world_size": world_size,
        "code": code_digest(*ROW_CODE, *backend_code(run.backend)),
    }


class _Stop(Exception):
    """A failed stage; args[0]: the record's status, reason, failed_stage and traceback."""


def _stage(group, bs: int, name: str, fn):
    """Run one stage on every rank; all ranks stop together if any failed."""
    error = None
    try:
        out = fn()
    except BackendUnavailable as exc:
        error = ("not_run", str(exc), None)
    except Exception as exc:  # a failed row, not a failed run (torch's OOM is an Exception)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {first}"
        if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
            reason = f"out of memory at bs {bs} ({reason})"
        error = ("failed", reason, traceback.format_exc(limit=6))
    if error := group.agree(error):
        raise _Stop(dict(status=error[0], reason=error[1], failed_stage=name, traceback=error[2]))
    return out


def run_row(ctx: RowContext, run: RunParams, group=None, repeats=None) -> Record | None:
    """Build and measure one row -> its Record (None on ranks other than 0)."""
    group = group or LocalGroup()
    p, gt = ctx.params, ctx.gt
    repeats = repeats or p.data.measure_repeats
    m = gt.manifest
    truth = {"order": gt.order, "area_fractions": m["area_fractions"]}
    base = {
        "hw": p.hw,
        "key": run.key,
        "row": run.model_dump(),
        "stamp": digest(row_stamp(p, run, m["stamp"], group.world_size)),
        "inputs": {"image": m["image"], "weights": m["weights"], "ground_truth": truth},
        "dataset": p.data.model_dump(),
        "environment": environment(p.device),
    }
    start_state = device_state(p.device)  # before this row allocates anything
    try:
        record = _measured(ctx, run, group, repeats, base, start_state)
    except _Stop as stop:
        f = stop.args[0]
        what = "not run" if f["status"] == "not_run" else f"FAILED in {f['failed_stage']}"
        log(f"{run.key}: {what}: {f['reason']}")
        record = Record(**base, **f)
    finally:
        gc.collect()
        if p.device == "cuda":
            torch.cuda.empty_cache()  # so the next row's NVML baseline is clean
    return record if group.rank == 0 else None


def _measured(ctx, run, group, repeats, base, start_state) -> Record:
    p, gt, bs = ctx.params, ctx.gt, run.bs
    stage = partial(_stage, group, bs)
    sizes = gt.inputs.reshaped_size, gt.inputs.original_size
    cls = stage("lookup", lambda: get_backend(run.backend))

    def make():
        cls.check_available(p.device, run.precision)
        return cls(p.device, run.precision, run.options, p.data_path / "engines", bs=bs)

    def build():
        checkpoint(f"evaluate:build:{run.key}")  # test hook (samrep.faults)
        backend.reference = gt.ref_embeddings
        backend.build(ctx.model, gt.inputs)

    backend = stage("check", make)
    log(f"{run.key}: building")
    index = current_nvml_index() if p.device == "cuda" else None
    t0 = time.perf_counter()
    with MemoryMonitor(p.device, p.memory_sample_ms, index) as mon:
        stage("build", lambda: group.in_turn(build))
        build_s = time.perf_counter() - t0
        check = stage("engine check", lambda: backend.verify(gt))
        per_rank = p.data.datasize // group.world_size
        dataset = RepeatedDataset(gt.inputs, per_rank, bs, pin_memory=p.device == "cuda")
        meter, first = EnergyMeter(p.device, index), []
        score = MaskScore(gt.masks.to(backend.device), gt.order)

        def after_batch(low_res_masks, iou_scores):
            if not first:  # the first image's logits (+ embeddings), for fidelity and the report
                emb = getattr(backend, "last_embeddings", None)
                first.append(low_res_masks[:1].float().clone())
                first.append(None if emb is None else emb[:1].float().clone())
            score.update(postprocess_masks(low_res_masks, *sizes))

        # one measurement: one(progress, barrier, meter) -> Timing
        one = partial(measure, backend, dataset, p.data.repeat, p.data.warmup, after_batch)

        def measurements():
            checkpoint(f"evaluate:measure:{run.key}")  # test hook (samrep.faults)
            single = group.alone(lambda: one().p_core)  # rank 0 alone: the single-GPU figure
            progress = Progress(f"{run.key}: measuring", len(dataset) * p.data.repeat * repeats)
            meters = [None] * (repeats - 1) + [meter]  # energy over the last measurement
            timings = [one(progress, group.barrier, m) for m in meters]
            progress.close()
            return single, timings

        t1 = time.perf_counter()
        single, timings = stage("measure", measurements)
        measure_s = time.perf_counter() - t1
        emb = first[1] if first[1] is not None else stage("score", lambda: _embeddings(backend, gt))
    timing = sorted(timings, key=lambda t: t.p_core)[(len(timings) - 1) // 2]  # (lower) median
    scores = score.result() | {
        "logits_rel_l2": rel_l2(first[0], gt.ref_logits) if gt.ref_logits is not None else None,
        "embeddings_rel_l2": rel_l2(emb, gt.ref_embeddings) if emb is not None else None,
    }
    memory = mon.report.to_dict()
    if backend.framework_peak_gib() is not None:
        memory["framework_peak_gib"] = backend.framework_peak_gib()
    mine = {
        "timing": timing.to_dict(),
        "scores": scores,
        "memory": memory,
        "validity": validity(p, timings, start_state, gt, ctx.weights_sha256),
        "energy": meter.section(timing.images),
    }
    ranks = group.gather(mine)
    if group.rank != 0:
        return None
    tdict = dict(timing.to_dict(), repeats=[t.to_dict() for t in timings] if repeats > 1 else [])
    if repeats > 1:
        tdict["p_core_spread"] = [min(t.p_core for t in timings), max(t.p_core for t in timings)]
    dist = None
    if group.world_size > 1:
        dist = aggregate([r["timing"] for r in ranks], single) | {"per_rank": ranks}
        tdict.update(p_core=dist["aggregate_p_core"], p_whole=dist["aggregate_p_whole"])
        scores |= {k: min(r["scores"][k] for r in ranks) for k in ("acc", "iou")}
        memory["peak_gib"] = max(r["memory"]["peak_gib"] for r in ranks)
        mine["validity"]["valid"] = all(r["validity"]["valid"] for r in ranks)
    p_core = tdict["p_core"] / group.world_size  # MFU: per GPU, against one GPU's peak
    peak, vit_h = p.peaks.get(run.precision), p.model.arch == "vit_h"
    export_s = getattr(backend.export_info, "export_s", 0.0)
    times = dict(load_s=ctx.load_s, export_s=export_s, build_s=build_s, measure_s=measure_s)
    record = Record(
        **base,
        **mine | {"timing": tdict},  # rank 0's scores, memory, validity and energy (all updated)
        status="ok",
        math_mode=backend.math_mode,
        engine_check=check,
        distributed=dist,
        masks_file=f"{run.key}.masks.npz",
        versions=backend.versions(),
        flops=flops_section(ctx.model.config, bs, peak, run.precision, p_core, vit_h, p.path),
        stage_times=times,
    )
    record._first_masks = postprocess_masks(first[0], *sizes)[0].cpu()
    bad = [k for k, c in mine["validity"]["checks"].items() if c["ok"] is False]
    invalid = f"; INVALID: {bad}" if bad else ""
    figures = f"acc {scores['acc']:.5f}, IoU {scores['iou']:.4f}, mem {memory['peak_gib']:.1f} GiB"
    log(f"{run.key}: p_core {tdict['p_core']:.4g} img/s, {figures}{invalid}")
    return record


def _embeddings(backend, gt):
    """The backend's image embeddings of the sample (batch bs for static engines), or None."""
    if gt.ref_embeddings is None:
        return None
    pv = gt.inputs.pixel_values.expand(backend.bs, -1, -1, -1).contiguous().to(backend.device)
    emb = backend.image_embeddings(pv)
    return None if emb is None else emb[:1].float()
