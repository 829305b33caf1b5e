"""Validity checks of a measurement, kept in every result as `validity: {checks, valid}`.

A result that fails a check is marked invalid (the report says which check and why), never
dropped. Each check is {"ok": True | False | None, "detail": str, ...}; None is informational
(recorded, not judged) and does not make a result invalid.

- iterations: every measurement timed at least `data.min_iterations` batches;
- seconds: every measurement's summed core time is at least `data.min_seconds`;
- warmup_excluded: warm-up batches ran before the clock started (samrep.timing excludes them);
- device_idle: on CUDA, no other process on the GPU at the start of the row (NVML); on the CPU,
  the 1-minute load average against the core count, informational only (the load average
  cannot tell other processes' work from this process's own previous rows);
- clock: the timer is time.perf_counter, monotonic, with sub-microsecond resolution;
- ground_truth_hash / weights_hash: the ground-truth files and the weights that ran are the
  ones the ground-truth manifest names (sha256).
"""

from __future__ import annotations

import os
import time

from samrep.timing import CLOCK


def device_state(device: str) -> dict:
    """Who else is using the device, read at the start of a row (before its build)."""
    if device == "cuda":
        return _gpu_state()
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = None
    return {"method": "loadavg", "load1": load1, "cpu_count": os.cpu_count()}


def _nvml_index() -> int:
    """NVML's index of the current CUDA device (NVML ignores CUDA_VISIBLE_DEVICES)."""
    import torch

    index = torch.cuda.current_device()
    try:  # torch's own mapping (handles UUIDs in CUDA_VISIBLE_DEVICES)
        return int(torch.cuda._get_nvml_device_index(index))
    except Exception:
        return index


def _gpu_state() -> dict:
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        index = _nvml_index()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        procs += pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle)
        pids = sorted({p.pid for p in procs})
        others = [p for p in pids if p != os.getpid()]
        if len(others) == len(pids) and others and torch.cuda.is_initialized():
            # In a container NVML reports host pids: one of them is this process's context.
            others = others[1:]
        util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        return {
            "method": "nvml",
            "nvml_index": index,
            "pids": pids,
            "other_pids": others,
            "util_pct": util,
        }
    except Exception as exc:  # NVML missing or not permitted: say so, do not judge
        return {"method": "nvml", "error": f"{type(exc).__name__}: {exc}"}


def _device_check(state: dict) -> dict:
    if state.get("method") == "loadavg":
        load1, cores = state.get("load1"), state.get("cpu_count")
        return {
            "ok": None,
            "detail": f"1-minute load average {load1:.2f} on {cores} cores at the start "
            "(informational: on a CPU it cannot tell other processes from this run)"
            if load1 is not None
            else "no load average on this system (informational)",
            **state,
        }
    if "error" in state:
        return {"ok": None, "detail": f"NVML unavailable ({state['error']}); not checked", **state}
    others = state["other_pids"]
    return {
        "ok": not others,
        "detail": (
            f"{len(others)} other process(es) on the GPU at the start (NVML pids {state['pids']})"
            if others
            else "no other process on the GPU at the start"
        )
        + f" (utilisation {state['util_pct']}% over NVML's last sample period)",
        **state,
    }


def clock_check() -> dict:
    info = time.get_clock_info("perf_counter")
    ok = CLOCK == "time.perf_counter" and info.monotonic and info.resolution <= 1e-6
    return {
        "ok": ok,
        "detail": f"{CLOCK} ({info.implementation}, monotonic {info.monotonic}, resolution "
        f"{info.resolution:.0e} s)",
        "clock": CLOCK,
        "implementation": info.implementation,
        "monotonic": info.monotonic,
        "resolution_s": info.resolution,
    }


def validity(params, timings: list, start_state: dict, gt, weights_sha256: str | None) -> dict:
    """The checks of one row's measurements (`timings`: one samrep.timing.Timing per repeat)."""
    data = params.data
    batches = min(t.batches for t in timings)
    core_s = min(t.core_s for t in timings)
    warmup = min(t.warmup_batches for t in timings)
    manifest = gt.manifest
    gt_files = getattr(gt, "files_match", None)
    manifest_weights = manifest["weights"].get("sha256")
    checks = {
        "iterations": {
            "ok": batches >= data.min_iterations,
            "detail": f"{batches} timed batches per measurement (data.min_iterations "
            f"{data.min_iterations})",
            "value": batches,
            "required": data.min_iterations,
        },
        "seconds": {
            "ok": core_s >= data.min_seconds,
            "detail": f"{core_s:.3f} s of core time per measurement (data.min_seconds "
            f"{data.min_seconds:g})",
            "value": core_s,
            "required": data.min_seconds,
        },
        "warmup_excluded": {
            "ok": warmup >= 1,
            "detail": f"{warmup} warm-up batches before the clock started, excluded"
            if warmup
            else "no warm-up batch (data.warmup 0): the first, cold batch is timed",
            "value": warmup,
        },
        "device_idle": _device_check(start_state),
        "clock": clock_check(),
        "ground_truth_hash": {
            "ok": bool(gt_files) and all(gt_files.values()),
            "detail": "every ground-truth file matches the manifest's sha256"
            if gt_files and all(gt_files.values())
            else (
                f"differs from the manifest: {sorted(k for k, v in gt_files.items() if not v)}"
                if gt_files
                else "the manifest lists no sha256 of its files"
            ),
        },
        "weights_hash": {
            "ok": weights_sha256 is not None and weights_sha256 == manifest_weights,
            "detail": "the weights that ran are the manifest's"
            if weights_sha256 is not None and weights_sha256 == manifest_weights
            else f"weights sha256 {str(weights_sha256)[:12]} is not the manifest's "
            f"{str(manifest_weights)[:12]}",
        },
    }
    return {"checks": checks, "valid": all(c["ok"] is not False for c in checks.values())}


def failed_checks(record: dict) -> list[str]:
    """Names of the checks a record failed ([] when valid or when it has no validity)."""
    checks = (record.get("validity") or {}).get("checks") or {}
    return [k for k, c in checks.items() if c.get("ok") is False]
