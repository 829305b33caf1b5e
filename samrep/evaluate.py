"""Evaluation stage: every configured row (phase, backend, precision, bs) -> one result record.

Each row: build the backend, then under one memory monitor run the repeated dataset through the
core/whole timed regions (samrep.timing), post-process and score every batch against the ground
truth held in device memory. A row that cannot run (toolkit or device missing) is a "not_run"
record; one that fails (out of memory, a build error) is a "failed" record; the rest go on.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
import traceback

import torch

from samrep.backends import BackendUnavailable, get_backend
from samrep.config import HwParams, RunParams
from samrep.data import RepeatedDataset
from samrep.env import check_device, environment
from samrep.errors import SamrepError
from samrep.faults import checkpoint
from samrep.flops import ORIGINAL_FLOPS_PER_IMAGE, mfu, sam_flops
from samrep.groundtruth import GroundTruth, load_ground_truth, load_params_model
from samrep.memory import MemoryMonitor
from samrep.metrics import MaskScore, postprocess_masks
from samrep.progress import Progress, log
from samrep.results import SCHEMA, results_dir, save_masks, save_record
from samrep.resume import code_version
from samrep.validity import device_state, validity

# Which peak a precision is measured against: fp32 with TF32 off is the SIMT fp32 peak.
PEAK_KEY = {"fp32": "fp32", "tf32": "tf32", "fp16": "fp16", "bf16": "bf16", "fp8": "fp8"}


def row_stamp(params: HwParams, run: RunParams, gt: GroundTruth | dict, world_size=None) -> dict:
    """What a result depends on; a stored result with the same stamp is reused.

    `gt`: the ground truth, or its manifest (only its "stamp": image and weights sha256).
    """
    manifest = gt if isinstance(gt, dict) else gt.manifest
    stamp = {
        "run": dataclasses.asdict(run),
        "model": dataclasses.asdict(params.model),
        "data": dataclasses.asdict(params.data),
        "device": params.device,
        "peaks": {k: dataclasses.asdict(v) for k, v in params.peaks.items()},
        "ground_truth": manifest["stamp"],
        "code_version": code_version(),
    }
    # Several processes (samrep.distributed): the world size is part of the result.
    from samrep.distributed import resolve_world_size

    world_size = resolve_world_size(params) if world_size is None else world_size
    if world_size != 1:
        stamp["world_size"] = world_size
    return stamp


def base_record(params: HwParams, run: RunParams, gt: GroundTruth) -> dict:
    return {
        "schema": SCHEMA,
        "hw": params.hw,
        "key": run.key,
        "phase": run.phase,
        "backend": run.backend,
        "precision": run.precision,
        "bs": run.bs,
        "options": run.options,
        "status": None,
        "reason": None,
        "failed_stage": None,
        "image": gt.manifest["image"],
        "weights": gt.manifest["weights"],
        "ground_truth": {
            "order": gt.order,
            "area_fractions": gt.manifest["area_fractions"],
            "image_sha256": gt.manifest["stamp"]["image_sha256"],
        },
        "dataset": dataclasses.asdict(params.data),
        "stamp": row_stamp(params, run, gt),
    }


def flops_record(flops, peak, run: RunParams, params: HwParams) -> dict:
    """The record's `flops` section: FLOPs per image, their parts, and the peak used for MFU."""
    return {
        "per_image": flops.total,
        "breakdown": dataclasses.asdict(flops),
        "peak_key": PEAK_KEY[run.precision],
        "peak_flops": peak.flops if peak else None,
        "peak_source": peak.source if peak else f"no {run.precision} peak in {params.path}",
        "original_per_image": ORIGINAL_FLOPS_PER_IMAGE,
    }


def mask_scorer(gt: GroundTruth, device):
    """The scoring inside the whole region, for samrep.timing.measure's `after_batch`.

    Returns (after_batch, score, first): after_batch post-processes each batch's low-res masks
    to the original size and adds them to `score` (a MaskScore on `device`); `first` keeps the
    first image's masks ((3, H, W) bool, on the CPU) for the record.
    """
    score = MaskScore(gt.masks.to(device), gt.order)
    first: list[torch.Tensor] = []

    def after_batch(low_res_masks, iou_scores):
        masks = postprocess_masks(low_res_masks, gt.inputs.reshaped_size, gt.inputs.original_size)
        if not first:
            first.append(masks[0].cpu())
        score.update(masks)

    return after_batch, score, first


def evaluate_row(
    params: HwParams,
    run: RunParams,
    gt: GroundTruth,
    model,
    load_s: float,
    weights_sha256: str | None = None,
    repeats: int | None = None,
) -> dict:
    """Build and measure one row; never raises for a backend's own failure.

    `repeats` measurements (default data.measure_repeats) follow one build; the metrics are their
    medians, with the spread in metrics.p_core_repeats. `weights_sha256`: of the weights that
    run (the validity check compares it with the ground truth's manifest).
    """
    repeats = repeats or params.data.measure_repeats
    record = base_record(params, run, gt)
    record["environment"] = environment(params.device)
    start_state = device_state(params.device)  # before this row allocates anything
    stage = "lookup"
    try:
        cls = get_backend(run.backend)
        stage = "check"
        cls.check_available(params.device, run.precision)
        stage = "build"
        checkpoint(f"evaluate:build:{run.key}")
        backend = cls(
            params.device, run.precision, run.options, params.data_path / "engines", bs=run.bs
        )
        log(f"{run.key}: building")
        t0 = time.perf_counter()
        with MemoryMonitor(params.device, params.memory_sample_ms) as mon:
            backend.build(model, gt.inputs)
            backend.synchronize()
            build_s = time.perf_counter() - t0
            stage = "measure"
            checkpoint(f"evaluate:measure:{run.key}")
            dataset = RepeatedDataset(
                gt.inputs, params.data.datasize, run.bs, pin_memory=params.device == "cuda"
            )
            after_batch, score, first = mask_scorer(gt, backend.device)

            progress = Progress(
                f"{run.key}: measuring", len(dataset) * params.data.repeat * repeats
            )
            t1 = time.perf_counter()
            timings = [
                measure_row(backend, dataset, params, after_batch, progress) for _ in range(repeats)
            ]
            measure_s = time.perf_counter() - t1
            progress.close()
    except BackendUnavailable as exc:
        log(f"{run.key}: not run: {exc}")
        record.update(status="not_run", reason=str(exc), failed_stage=stage)
        return record
    except (Exception, torch.cuda.OutOfMemoryError) as exc:  # a failed row, not a failed report
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
            reason = f"out of memory at bs {run.bs} ({reason})"
        log(f"{run.key}: FAILED in {stage}: {reason}")
        record.update(
            status="failed",
            reason=reason,
            failed_stage=stage,
            traceback=traceback.format_exc(limit=8),
        )
        if params.device == "cuda":
            torch.cuda.empty_cache()
        return record

    scores = score.result()
    flops = sam_flops(model.config, points_per_image=1, batch_size=run.bs)
    peak = params.peaks.get(PEAK_KEY[run.precision])
    p_cores = [t.p_core for t in timings]
    p_core = statistics.median(p_cores)
    # The timing shown in full is the median measurement's (the lower median for even counts).
    timing = sorted(timings, key=lambda t: t.p_core)[(len(timings) - 1) // 2]
    metrics = {
        "p_whole": statistics.median(t.p_whole for t in timings),
        "p_core": p_core,
        "acc": scores["acc"],
        "iou": scores["iou"],
        "mem_peak_gib": mon.report.peak_gib,
        "mem_total_gib": mon.report.total_gib,
        "mem_delta_gib": mon.report.delta_gib,
        "mem_framework_peak_gib": mon.report.framework_peak_gib,
        "mfu": mfu(p_core, flops.total, peak.flops) if peak else None,
        # The original's 3.1e12 "FLOPs" is ViT-H's multiply-add count: meaningless for other archs.
        "mfu_original": (
            mfu(p_core, ORIGINAL_FLOPS_PER_IMAGE, peak.flops)
            if peak and params.model.arch == "vit_h"
            else None
        ),
        "achieved_tflops": p_core * flops.total / 1e12,
    }
    if repeats > 1:
        metrics["p_core_repeats"] = spread(p_cores)
        metrics["p_whole_repeats"] = spread([t.p_whole for t in timings])
    record.update(
        status="ok",
        math_mode=backend.math_mode,
        metrics=metrics,
        scores=scores,
        timing={
            **timing.to_dict(),
            **({"repeats": [t.to_dict() for t in timings]} if repeats > 1 else {}),
        },
        validity=validity(params, timings, start_state, gt, weights_sha256),
        memory=mon.report.to_dict(),
        flops=flops_record(flops, peak, run, params),
        stage_times={
            "load_s": load_s,
            # The ONNX export's own time (made in the export stage, reused by this build).
            "export_s": backend.export_info.export_s if backend.export_info else 0.0,
            "build_s": build_s,
            "measure_s": measure_s,
        },
        versions=backend.versions(),
        masks_file=f"{run.key}.masks.npz",
    )
    save_masks(results_dir(params.report_path) / record["masks_file"], first[0].numpy())
    spread_note = (
        f" (median of {repeats}: {min(p_cores):.2f}-{max(p_cores):.2f})" if repeats > 1 else ""
    )
    failed = [k for k, c in record["validity"]["checks"].items() if c["ok"] is False]
    log(
        f"{run.key}: p_core {p_core:.2f} img/s{spread_note}, p_whole "
        f"{metrics['p_whole']:.2f} img/s, acc {scores['acc']:.5f}, IoU {scores['iou']:.4f}, "
        f"mem {mon.report.peak_gib:.1f}/{mon.report.total_gib:.1f} GiB ({mon.report.method})"
        + (f"; INVALID: {', '.join(failed)}" if failed else "")
    )
    del backend
    return record


def spread(values: list[float]) -> dict:
    """Median, min and max of repeated measurements, and the values themselves."""
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def stored_record(params: HwParams, run: RunParams, gt: GroundTruth | dict) -> dict | None:
    """The stored record of `run` if its stamp is current and it is complete, else None."""
    path = results_dir(params.report_path) / f"{run.key}.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if old.get("stamp") != row_stamp(params, run, gt):
        return None
    if old.get("status") == "ok" and not (path.parent / str(old.get("masks_file"))).is_file():
        return None
    return old


def release_device_memory(device: str) -> None:
    """Free the last row's cached blocks, so NVML's baseline for the next row is clean."""
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def measure_row(backend, dataset, params: HwParams, after_batch, progress):
    from samrep.timing import measure

    return measure(backend, dataset, params.data.repeat, params.data.warmup, after_batch, progress)


def run_evaluation(
    params: HwParams, force: bool = False, only: list[str] | None = None
) -> list[dict]:
    """Evaluate every row of `params` (or those whose key is in `only`), reusing fresh results.

    A stored "ok" record whose stamp is current (and whose masks file is there) is reused;
    every other row (missing, stale, failed, not run) is measured again.
    """
    check_device(params)
    gt = load_ground_truth(params)
    out_dir = results_dir(params.report_path)
    runs = [r for r in params.runs if only is None or r.key in only]
    if only:
        missing = sorted(set(only) - {r.key for r in params.runs})
        if missing:
            raise SamrepError(f"{params.path}: runs: no row '{missing[0]}'")
    todo, records = [], {}
    for run in runs:
        old = None if force else stored_record(params, run, gt)
        if old is not None and old.get("status") == "ok":
            log(f"{run.key}: reusing the result in {out_dir / (run.key + '.json')}")
            records[run.key] = old
            continue
        todo.append(run)
    from samrep.distributed import resolve_world_size, run_distributed

    if todo and resolve_world_size(params) != 1:  # several GPUs: torchrun (samrep.distributed)
        for record in run_distributed(params, todo):
            save_record(params.report_path, record)
            records[record["key"]] = record
        todo = []
    if todo:
        t0 = time.perf_counter()
        model, weights = load_params_model(params)
        load_s = time.perf_counter() - t0
        if weights.sha256 != gt.manifest["weights"]["sha256"]:
            raise SamrepError(
                f"{params.data_path / 'manifest.json'}: ground truth was made with other weights "
                f"({gt.manifest['weights']['name']}); rerun the groundtruth stage with --force"
            )
        for i, run in enumerate(todo):
            log(f"row {i + 1}/{len(todo)}: {run.key}")
            record = evaluate_row(params, run, gt, model, load_s, weights.sha256)
            save_record(params.report_path, record)
            checkpoint(f"evaluate:saved:{run.key}")
            release_device_memory(params.device)
            records[run.key] = record
    return [records[r.key] for r in runs]
