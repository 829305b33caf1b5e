"""Validity checks of a measurement, kept in every result as `validity: {checks, valid}`.

A failing result is marked invalid (which check, why), never dropped. A check is {"ok": True |
False | None (informational), "detail": str, ...}: iterations, seconds, warm-up outside the clock,
an idle GPU at the start, a monotonic sub-us clock, ground truth and weights as the manifest's."""

import os
import time

from samrep.memory import current_nvml_index
from samrep.timing import CLOCK


def _check(ok: bool | None, detail: str, **facts) -> dict:
    return {"ok": ok, "detail": detail, **facts}


def device_state(device: str) -> dict:
    """The device_idle check, read at the start of a row (before its build): who else uses it."""
    if device != "cuda":
        state = {"method": "loadavg", "load1": None, "cpu_count": os.cpu_count()}
        try:
            state["load1"] = os.getloadavg()[0]
        except OSError:
            return _check(None, "no load average on this system (informational)", **state)
        info = "(informational: on a CPU it cannot tell other processes from this run)"
        load = f"1-minute load average {state['load1']:.2f} on {state['cpu_count']} cores"
        return _check(None, f"{load} at the start {info}", **state)
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        index = current_nvml_index()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        procs += pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle)
        pids = sorted({p.pid for p in procs})
        others = [p for p in pids if p != os.getpid()]
        if len(others) == len(pids) and others and torch.cuda.is_initialized():
            # In a container NVML reports host pids: one of them is this process's context.
            others = others[1:]
        util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
    except Exception as exc:  # NVML missing or not permitted: say so, do not judge
        error = f"{type(exc).__name__}: {exc}"
        return _check(None, f"NVML unavailable ({error}); not checked", method="nvml", error=error)
    detail = f"{len(others)} other process(es) on the GPU at the start (NVML pids {pids})"
    detail = detail if others else "no other process on the GPU at the start"
    detail += f" (utilisation {util}% over NVML's last sample period)"
    state = dict(method="nvml", nvml_index=index, pids=pids, other_pids=others, util_pct=util)
    return _check(not others, detail, **state)


def clock_check() -> dict:
    info = time.get_clock_info("perf_counter")
    impl, mono, res = info.implementation, info.monotonic, info.resolution
    ok = CLOCK == "time.perf_counter" and mono and res <= 1e-6
    detail = f"{CLOCK} ({impl}, monotonic {mono}, resolution {res:.0e} s)"
    return _check(ok, detail, clock=CLOCK, implementation=impl, monotonic=mono, resolution_s=res)


def validity(params, timings: list, start_state: dict, gt, weights_sha256: str | None) -> dict:
    """One row's checks (`timings`: a timing.Timing per repeat; `start_state`: device_state's)."""
    min_it, min_s = params.data.min_iterations, params.data.min_seconds
    batches, core_s = min(t.batches for t in timings), min(t.core_s for t in timings)
    warmup = min(t.warmup_batches for t in timings)
    iterations = f"{batches} timed batches per measurement (data.min_iterations {min_it})"
    seconds = f"{core_s:.3f} s of core time per measurement (data.min_seconds {min_s:g})"
    warm = "no warm-up batch (data.warmup 0): the first, cold batch is timed"
    warm = f"{warmup} warm-up batches before the clock started, excluded" if warmup else warm
    gt_files = gt.files_match  # file -> its sha256 matches the manifest's
    gt_bad = sorted(k for k, v in gt_files.items() if not v)
    gt_hash = "every ground-truth file matches the manifest's sha256"
    gt_hash = f"differs from the manifest: {gt_bad}" if gt_bad else gt_hash
    gt_hash = gt_hash if gt_files else "the manifest lists no sha256 of its files"
    want = gt.manifest["weights"].get("sha256")
    weights_ok = weights_sha256 is not None and weights_sha256 == want
    weights = f"weights sha256 {str(weights_sha256)[:12]} is not the manifest's {str(want)[:12]}"
    weights = "the weights that ran are the manifest's" if weights_ok else weights
    checks = {
        "iterations": _check(batches >= min_it, iterations, value=batches, required=min_it),
        "seconds": _check(core_s >= min_s, seconds, value=core_s, required=min_s),
        "warmup_excluded": _check(warmup >= 1, warm, value=warmup),
        "device_idle": start_state,
        "clock": clock_check(),
        "ground_truth_hash": _check(bool(gt_files) and not gt_bad, gt_hash),
        "weights_hash": _check(weights_ok, weights),
    }
    return {"checks": checks, "valid": all(c["ok"] is not False for c in checks.values())}
