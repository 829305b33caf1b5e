"""One row: build -> engine check -> measure (with repeats) -> score -> validity -> record.

The same function serves one process and every torchrun worker: a worker passes its process
group (samrep.distributed.TorchGroup), which adds the barriers, the agreement on failures
(a row that fails on one rank fails on all, naming the rank) and the gather to rank 0. A
backend's own failure becomes a "failed" or "not_run" record; Ctrl-C is not caught here.
"""

from __future__ import annotations

import gc
import time
import traceback
from dataclasses import dataclass

import torch

from samrep.backends import BackendUnavailable, backend_code, get_backend
from samrep.config import HwParams, RunParams
from samrep.data import RepeatedDataset
from samrep.energy import EnergyMeter
from samrep.env import environment
from samrep.errors import SamrepError
from samrep.faults import checkpoint
from samrep.flops import ORIGINAL_FLOPS_PER_IMAGE, mfu, sam_flops
from samrep.groundtruth import GroundTruth, load_ground_truth, load_params_model
from samrep.memory import MemoryMonitor, current_nvml_index
from samrep.metrics import MaskScore, postprocess_masks, rel_l2
from samrep.progress import Progress, log
from samrep.record import Record
from samrep.store import code_digest, digest
from samrep.timing import aggregate, measure, median_timing
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
    def load(cls, params: HwParams) -> RowContext:
        """The ground truth and the model it was made with (else a one-line error)."""
        gt = load_ground_truth(params)
        t0 = time.perf_counter()
        model, weights = load_params_model(params)
        if weights.sha256 != gt.manifest["weights"]["sha256"]:
            raise SamrepError(
                f"{params.data_path / 'manifest.json'}: made with other weights; "
                "rerun groundtruth --force"
            )
        return cls(params, gt, model, weights.sha256, time.perf_counter() - t0)


def row_stamp(params: HwParams, run: RunParams, gt_stamp: str, world_size: int = 1) -> dict:
    """What a row's result depends on: its params, the weights/ground truth and its code."""
    data = params.data.model_dump(exclude={"data_dir"})
    return {
        "run": run.model_dump(),
        "model": params.model.model_dump(),
        "data": data,
        "device": params.device,
        "peak": params.peaks.get(run.precision),
        "ground_truth": gt_stamp,
        "world_size": world_size,
        "code": code_digest(*ROW_CODE, *backend_code(run.backend)),
    }


class _Stop(Exception):
    def __init__(self, stage: str, status: str, reason: str, tb: str | None = None):
        super().__init__(reason)
        self.stage, self.status, self.reason, self.tb = stage, status, reason, tb


def _reason(exc: BaseException, bs: int) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"{type(exc).__name__}: {first}"
    oom = isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError))
    return f"out of memory at bs {bs} ({reason})" if oom else reason


def _stage(group, name: str, bs: int, fn):
    """Run one stage on every rank; all ranks stop together if any failed."""
    error = None
    try:
        out = fn()
    except BackendUnavailable as exc:
        error = ("not_run", str(exc), None)
    except Exception as exc:  # a failed row, not a failed run (torch's OOM is an Exception)
        error = ("failed", _reason(exc, bs), traceback.format_exc(limit=6))
    error = group.agree(error)
    if error:
        raise _Stop(name, *error)
    return out


def run_row(
    ctx: RowContext, run: RunParams, group=None, repeats: int | None = None
) -> Record | None:
    """Build and measure one row -> its Record (None on ranks other than 0)."""
    group = group or LocalGroup()
    p, gt = ctx.params, ctx.gt
    repeats = repeats or p.data.measure_repeats
    base = {
        "hw": p.hw,
        "key": run.key,
        "row": run.model_dump(),
        "stamp": digest(row_stamp(p, run, gt.manifest["stamp"], group.world_size)),
        "inputs": {
            "image": gt.manifest["image"],
            "weights": gt.manifest["weights"],
            "ground_truth": {"order": gt.order, "area_fractions": gt.manifest["area_fractions"]},
        },
        "dataset": p.data.model_dump(),
        "environment": environment(p.device),
    }
    start_state = device_state(p.device)  # before this row allocates anything
    try:
        record = _measured(ctx, run, group, repeats, base, start_state)
    except _Stop as stop:
        log(
            f"{run.key}: {'not run' if stop.status == 'not_run' else 'FAILED in ' + stop.stage}: {stop.reason}"
        )
        record = Record(
            **base,
            status=stop.status,
            reason=stop.reason,
            failed_stage=stop.stage,
            traceback=stop.tb,
        )
    finally:
        gc.collect()
        if p.device == "cuda":
            torch.cuda.empty_cache()  # so the next row's NVML baseline is clean
    return record if group.rank == 0 else None


def _measured(ctx, run, group, repeats, base, start_state) -> Record:
    p, gt, bs = ctx.params, ctx.gt, run.bs
    cls = _stage(group, "lookup", bs, lambda: get_backend(run.backend))
    _stage(group, "check", bs, lambda: cls.check_available(p.device, run.precision))
    backend = _stage(
        group,
        "check",
        bs,
        lambda: cls(p.device, run.precision, run.options, p.data_path / "engines", bs=bs),
    )
    log(f"{run.key}: building")
    index = current_nvml_index() if p.device == "cuda" else None
    t0 = time.perf_counter()
    with MemoryMonitor(p.device, p.memory_sample_ms, index) as mon:
        _stage(
            group, "build", bs, lambda: group.in_turn(lambda: _build(backend, ctx.model, gt, run))
        )
        build_s = time.perf_counter() - t0
        check = _stage(group, "engine check", bs, lambda: backend.verify(gt))
        dataset = RepeatedDataset(
            gt.inputs, p.data.datasize // group.world_size, bs, pin_memory=p.device == "cuda"
        )
        meter, score, first = (
            EnergyMeter(p.device, index),
            MaskScore(gt.masks.to(backend.device), gt.order),
            [],
        )

        def after_batch(low_res_masks, iou_scores):
            if not first:  # the first image's logits (+ embeddings), for fidelity and the report
                emb = getattr(backend, "last_embeddings", None)
                first.append(low_res_masks[:1].float().clone())
                first.append(None if emb is None else emb[:1].float().clone())
            score.update(
                postprocess_masks(low_res_masks, gt.inputs.reshaped_size, gt.inputs.original_size)
            )

        def one(progress=None, barrier=None, meter=None):
            d = p.data
            return measure(
                backend, dataset, d.repeat, d.warmup, after_batch, progress, barrier, meter
            )

        def measurements():
            checkpoint(f"evaluate:measure:{run.key}")  # test hook (samrep.faults)
            single = group.alone(lambda: one().p_core)  # rank 0 alone: the single-GPU figure
            progress = Progress(f"{run.key}: measuring", len(dataset) * p.data.repeat * repeats)
            last = repeats - 1  # energy over the last measurement
            timings = [
                one(progress, group.barrier, meter if i == last else None) for i in range(repeats)
            ]
            progress.close()
            return single, timings

        t1 = time.perf_counter()
        single, timings = _stage(group, "measure", bs, measurements)
        measure_s = time.perf_counter() - t1
        emb = (
            first[1]
            if first[1] is not None
            else _stage(group, "score", bs, lambda: _embeddings(backend, gt, bs))
        )
    timing = median_timing(timings)
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
    distributed = None
    if group.world_size > 1:
        distributed = aggregate([r["timing"] for r in ranks], single) | {"per_rank": ranks}
        tdict.update(
            p_core=distributed["aggregate_p_core"], p_whole=distributed["aggregate_p_whole"]
        )
        scores |= {k: min(r["scores"][k] for r in ranks) for k in ("acc", "iou")}
        memory["peak_gib"] = max(r["memory"]["peak_gib"] for r in ranks)
        mine["validity"]["valid"] = all(r["validity"]["valid"] for r in ranks)
    p_core = tdict["p_core"] / group.world_size  # MFU: per GPU, against one GPU's peak
    flops, peak = sam_flops(ctx.model.config, 1, bs), p.peaks.get(run.precision)
    record = Record(
        **base,
        status="ok",
        math_mode=backend.math_mode,
        timing=tdict,
        scores=scores,
        memory=memory,
        energy=mine["energy"],
        validity=mine["validity"],
        engine_check=check,
        distributed=distributed,
        masks_file=f"{run.key}.masks.npz",
        versions=backend.versions(),
        flops=flops_section(flops, peak, run.precision, p_core, p.model.arch == "vit_h", p.path),
        stage_times={
            "load_s": ctx.load_s,
            "export_s": getattr(backend.export_info, "export_s", 0.0),
            "build_s": build_s,
            "measure_s": measure_s,
        },
    )
    record._first_masks = postprocess_masks(
        first[0], gt.inputs.reshaped_size, gt.inputs.original_size
    )[0].cpu()
    bad = [k for k, c in mine["validity"]["checks"].items() if c["ok"] is False]
    log(
        f"{run.key}: p_core {tdict['p_core']:.4g} img/s, acc {scores['acc']:.5f}, IoU "
        f"{scores['iou']:.4f}, mem {memory['peak_gib']:.1f} GiB"
        + (f"; INVALID: {bad}" if bad else "")
    )
    return record


def flops_section(flops, peak, precision: str, p_core: float, vit_h: bool, where: str) -> dict:
    """The record's flops: FLOPs per image by part, the peak used, true and original MFU."""
    if peak is None:
        return {
            "per_image": flops.total,
            "breakdown": flops.to_dict(),
            "peak_key": precision,
            "peak_source": f"not available: no {precision} peak in {where}",
            "achieved_tflops": p_core * flops.total / 1e12,
        }
    original = mfu(p_core, ORIGINAL_FLOPS_PER_IMAGE, peak.flops) if vit_h else None
    return {
        "per_image": flops.total,
        "breakdown": flops.to_dict(),
        "peak_key": precision,
        "peak_flops": peak.flops,
        "peak_source": peak.source,
        "mfu": mfu(p_core, flops.total, peak.flops),
        "mfu_original": original,
        "achieved_tflops": p_core * flops.total / 1e12,
    }


def _build(backend, model, gt, run) -> None:
    checkpoint(f"evaluate:build:{run.key}")  # test hook (samrep.faults)
    backend.build(model, gt.inputs)


def _embeddings(backend, gt, bs: int):
    """The backend's image embeddings of the sample (batch bs for static engines), or None."""
    if gt.ref_embeddings is None:
        return None
    pv = gt.inputs.pixel_values.expand(bs, -1, -1, -1).contiguous().to(backend.device)
    emb = backend.image_embeddings(pv)
    return None if emb is None else emb[:1].float()
