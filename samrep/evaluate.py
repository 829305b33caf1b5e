"""Evaluation stage: every configured row (phase, backend, precision, bs) -> one result record.

Each row: build the backend, then under one memory monitor run the repeated dataset through the
core/whole timed regions (samrep.timing), post-process and score every batch against the ground
truth held in device memory. A row that cannot run (toolkit or device missing) is a "not_run"
record; one that fails (out of memory, a build error) is a "failed" record; the rest go on.
"""

from __future__ import annotations

import dataclasses
import time
import traceback

import torch

import samrep
from samrep.backends import BackendUnavailable, get_backend
from samrep.config import HwParams, RunParams
from samrep.data import RepeatedDataset
from samrep.env import check_device, environment
from samrep.errors import SamrepError
from samrep.flops import ORIGINAL_FLOPS_PER_IMAGE, mfu, sam_flops
from samrep.groundtruth import GroundTruth, load_ground_truth, load_params_model
from samrep.memory import MemoryMonitor
from samrep.metrics import MaskScore, postprocess_masks
from samrep.progress import Progress, log
from samrep.results import SCHEMA, results_dir, save_masks, save_record

# Which peak a precision is measured against: fp32 with TF32 off is the SIMT fp32 peak.
PEAK_KEY = {"fp32": "fp32", "tf32": "tf32", "fp16": "fp16", "bf16": "bf16", "fp8": "fp8"}


def row_stamp(params: HwParams, run: RunParams, gt: GroundTruth, world_size=None) -> dict:
    """What a result depends on; a stored result with the same stamp is reused."""
    stamp = {
        "run": dataclasses.asdict(run),
        "model": dataclasses.asdict(params.model),
        "data": dataclasses.asdict(params.data),
        "device": params.device,
        "peaks": {k: dataclasses.asdict(v) for k, v in params.peaks.items()},
        "ground_truth": gt.manifest["stamp"],
        "samrep_version": samrep.__version__,
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


def evaluate_row(params: HwParams, run: RunParams, gt: GroundTruth, model, load_s: float) -> dict:
    """Build and measure one row; never raises for a backend's own failure."""
    record = base_record(params, run, gt)
    record["environment"] = environment(params.device)
    stage = "lookup"
    try:
        cls = get_backend(run.backend)
        cls.check_available(params.device, run.precision)
        stage = "build"
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
            dataset = RepeatedDataset(
                gt.inputs, params.data.datasize, run.bs, pin_memory=params.device == "cuda"
            )
            score = MaskScore(gt.masks.to(backend.device), gt.order)
            first: list[torch.Tensor] = []

            def after_batch(low_res_masks, iou_scores):
                masks = postprocess_masks(
                    low_res_masks, gt.inputs.reshaped_size, gt.inputs.original_size
                )
                if not first:
                    first.append(masks[0].cpu())
                score.update(masks)

            progress = Progress(f"{run.key}: measuring", len(dataset) * params.data.repeat)
            t1 = time.perf_counter()
            timing = measure_row(backend, dataset, params, after_batch, progress)
            measure_s = time.perf_counter() - t1
            progress.close()
    except BackendUnavailable as exc:
        log(f"{run.key}: not run: {exc}")
        record.update(status="not_run", reason=str(exc))
        return record
    except (Exception, torch.cuda.OutOfMemoryError) as exc:  # a failed row, not a failed report
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
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
    metrics = {
        "p_whole": timing.p_whole,
        "p_core": timing.p_core,
        "acc": scores["acc"],
        "iou": scores["iou"],
        "mem_peak_gib": mon.report.peak_gib,
        "mem_total_gib": mon.report.total_gib,
        "mem_delta_gib": mon.report.delta_gib,
        "mem_framework_peak_gib": mon.report.framework_peak_gib,
        "mfu": mfu(timing.p_core, flops.total, peak.flops) if peak else None,
        # The original's 3.1e12 "FLOPs" is ViT-H's multiply-add count: meaningless for other archs.
        "mfu_original": (
            mfu(timing.p_core, ORIGINAL_FLOPS_PER_IMAGE, peak.flops)
            if peak and params.model.arch == "vit_h"
            else None
        ),
        "achieved_tflops": timing.p_core * flops.total / 1e12,
    }
    record.update(
        status="ok",
        math_mode=backend.math_mode,
        metrics=metrics,
        scores=scores,
        timing=timing.to_dict(),
        memory=mon.report.to_dict(),
        flops={
            "per_image": flops.total,
            "breakdown": dataclasses.asdict(flops),
            "peak_key": PEAK_KEY[run.precision],
            "peak_flops": peak.flops if peak else None,
            "peak_source": peak.source if peak else f"no {run.precision} peak in {params.path}",
            "original_per_image": ORIGINAL_FLOPS_PER_IMAGE,
        },
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
    log(
        f"{run.key}: p_core {timing.p_core:.2f} img/s, p_whole {timing.p_whole:.2f} img/s, "
        f"acc {scores['acc']:.5f}, IoU {scores['iou']:.4f}, "
        f"mem {mon.report.peak_gib:.1f}/{mon.report.total_gib:.1f} GiB ({mon.report.method})"
    )
    del backend
    return record


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
    """Evaluate every row of `params` (or those whose key is in `only`), reusing fresh results."""
    import json

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
        path = out_dir / f"{run.key}.json"
        if path.is_file() and not force:
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError:
                old = {}
            if old.get("stamp") == row_stamp(params, run, gt) and old.get("status") == "ok":
                log(f"{run.key}: reusing the result in {path}")
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
            record = evaluate_row(params, run, gt, model, load_s)
            save_record(params.report_path, record)
            release_device_memory(params.device)
            records[run.key] = record
    return [records[r.key] for r in runs]
