"""The stages: ground truth, export, build, evaluate; which rows run and which are reused.

Each stage checks its input (`prepare`), takes the hw's lock, removes dead runs' temporaries and
reuses an output only when its stamp is current (store.is_fresh); rows run here or under torchrun.
"""

import contextlib
import io
import math
import os
import time

import numpy as np
from filelock import FileLock, Timeout
from pydantic import ValidationError

from samrep import store
from samrep.backends import BACKENDS, BackendUnavailable, get_backend
from samrep.config import HwParams, RunParams, error_line
from samrep.distributed import resolve_world_size, run_distributed
from samrep.env import check_device
from samrep.errors import SamrepError
from samrep.faults import checkpoint
from samrep.groundtruth import load_ground_truth, run_ground_truth
from samrep.progress import log
from samrep.record import Record, read_record
from samrep.row import RowContext, row_stamp, run_row

SUBFOLDERS = (("weights", "engines"), ("results", "bench"))  # of data_dir, of report_dir


def check_rows(params: HwParams, runs=None) -> None:
    """Every row names a known backend, a precision it has and options it takes (exit 2)."""
    known = ", ".join(sorted(BACKENDS))
    for i, run in enumerate(runs or params.runs):
        where = f"{params.path}: runs[{i}]"
        if run.backend not in BACKENDS:
            raise SamrepError(f"{where}.backend: unknown backend '{run.backend}' (known: {known})")
        try:
            cls = get_backend(run.backend)
        except BackendUnavailable:
            continue  # its module needs a toolkit this machine lacks: a "not run" row
        if run.precision not in cls.precisions:
            has = f"has no {run.precision} mode (has {', '.join(cls.precisions)})"
            raise SamrepError(f"{where}.precision: backend '{run.backend}' {has}")
        try:
            cls.Options.model_validate(run.options)
        except ValidationError as exc:
            line = error_line(f"{where}.options", exc).replace("options: ", "options.")
            raise SamrepError(line) from None


def prepare(params: HwParams, runs=None) -> None:
    """Check everything a stage needs before it writes anything, and confine its writes."""
    check_rows(params, runs)
    check_device(params)
    folders = {"data.data_dir": params.data_path, "report_dir": params.report_path}
    for (key, top), names in zip(folders.items(), SUBFOLDERS, strict=True):
        for sub in (top / name for name in names):
            if sub.is_symlink() and top.resolve() not in sub.resolve().parents:
                raise SamrepError(f"{sub}: a symbolic link to {sub.resolve()}, outside {top}")
        existing = next(p for p in (top, *top.parents) if p.exists())
        if not os.access(existing, os.W_OK):  # read-only: refused now, not after a measurement
            raise SamrepError(f"{params.path}: {key}: {existing} is not writable")
    # and reports/index.html beside the hw's folders, the one file written outside them
    store.confine(*folders.values(), store.REPO_ROOT / "reports" / "index.html")


def lock_timeout() -> float:
    """$SAMREP_LOCK_TIMEOUT in seconds: unset or negative waits as long as it takes, 0 refuses at
    once; anything but a number is bad input."""
    text = os.environ.get("SAMREP_LOCK_TIMEOUT", "").strip()
    with contextlib.suppress(ValueError):
        if not math.isnan(wait := float(text or -1)):
            return wait
    raise SamrepError(f"SAMREP_LOCK_TIMEOUT: must be a number of seconds, got {text!r}")


@contextlib.contextmanager
def hw_lock(params: HwParams, runs=None):
    """prepare(params, runs), then one writing run per hw: a second waits up to lock_timeout(), then
    refuses (exit 2). data_dir/.samrep.lock is a filelock: the OS drops it when its holder dies."""
    prepare(params, runs)
    wait, lock = lock_timeout(), FileLock(store.checked(params.data_path / ".samrep.lock"))
    params.data_path.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another samrep run on hw '{params.hw}' (lock {lock.lock_file})")
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            held = f"{lock.lock_file}: another samrep run holds hw '{params.hw}'"
            raise SamrepError(f"{held} (waited {wait:g} s)") from None
    try:
        for folder in (params.data_path, params.report_path):
            if store.remove_stale_temporaries(folder):
                log(f"removed temporaries of an interrupted run in {folder}")
        yield
    finally:
        lock.release()


def groundtruth(params: HwParams, force: bool = False):
    with hw_lock(params, runs=[]):
        return run_ground_truth(params, force)


def stored(params: HwParams, run: RunParams, gt_stamp: str, world_size: int = 1) -> Record | None:
    """The stored ok record of `run` if its stamp is current and its masks load, else None."""
    path = params.report_path / "results" / f"{run.key}.json"
    if not path.exists():
        return None
    try:
        rec = read_record(store.read_json(path), str(path))
        if rec.status != "ok":
            return None  # a failed or not-run row is tried again
        with np.load(path.parent / str(rec.masks_file)) as z:
            z["masks"].shape  # noqa: B018  (a damaged masks file raises here)
    except (SamrepError, ValueError, OSError, KeyError, TypeError, EOFError) as exc:
        log(f"{path}: damaged result ({str(exc).splitlines()[0][:120]}); measuring it again")
        return None
    return rec if store.is_fresh(rec.stamp, row_stamp(params, run, gt_stamp, world_size)) else None


def save(params: HwParams, record: Record) -> None:
    """The masks first, then the record (a record on disk vouches for its masks)."""
    folder = params.report_path / "results"
    if (masks := record._first_masks) is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, masks=np.asarray(masks, dtype=bool))
        store.write_bytes(folder / record.masks_file, buf.getvalue())
    store.write_json(folder / f"{record.key}.json", record.dump())


def evaluate(params: HwParams, force: bool = False, only: list[str] | None = None) -> list[Record]:
    """Evaluate every row (or those in `only`), reusing fresh results; failed rows are retried."""
    if only and (missing := sorted(set(only) - {r.key for r in params.runs})):
        raise SamrepError(f"{params.path}: runs: no row '{missing[0]}'")
    runs = [r for r in params.runs if not only or r.key in only]
    with hw_lock(params, runs):
        gt_stamp, n = load_ground_truth(params).manifest["stamp"], resolve_world_size(params)
        done = {r.key: rec for r in runs if not force and (rec := stored(params, r, gt_stamp, n))}
        for key in done:
            log(f"{key}: reusing its fresh result")
        todo = [r for r in runs if r.key not in done]
        if todo and n > 1:
            for record in run_distributed(params, todo, n):
                save(params, record)
                done[record.key] = record
        elif todo:
            ctx = RowContext.load(params)
            for i, run in enumerate(todo):
                log(f"row {i + 1}/{len(todo)}: {run.key}")
                done[run.key] = record = run_row(ctx, run)
                save(params, record)
                checkpoint(f"evaluate:saved:{run.key}")
    return [done[r.key] for r in runs]


def engines(params: HwParams, stage: str, force: bool = False) -> list[dict]:
    """The export stage (every infer row built from ONNX) or the build stage (every row with a
    persistent engine): made ahead of the evaluation, so their cost and failures show alone."""
    want = {"export": lambda c: c.uses_onnx, "build": lambda c: c.persistent_build}[stage]
    entries, ctx, folder = [], None, params.data_path / "engines"
    with hw_lock(params):
        for run in (r for r in params.runs if r.phase == "infer"):
            entry, t0 = {"row": run.key, "status": "ok"}, time.perf_counter()
            try:
                cls = get_backend(run.backend)
                if not want(cls):
                    continue
                cls.check_available(params.device, run.precision)
            except BackendUnavailable as exc:
                entries.append(dict(entry, status="not_run", reason=str(exc), seconds=0.0))
                log(f"{stage} {run.key}: not_run {exc}")
                continue
            # outside the row's try: a missing or damaged ground truth is bad input (exit 2),
            # not a failed row, and nothing is written
            ctx = ctx or RowContext.load(params)
            try:
                backend = cls(params.device, run.precision, run.options, folder, run.bs)
                backend.reference = ctx.gt.ref_embeddings
                if stage == "export":
                    backend.export_onnx(ctx.model, ctx.gt.inputs, force=force)
                else:
                    backend.build(ctx.model, ctx.gt.inputs)
                    entry.update(math_mode=backend.math_mode)
                checkpoint(f"{stage}:{run.key}")
            except BackendUnavailable as exc:
                entry.update(status="not_run", reason=str(exc))
            except Exception as exc:  # recorded; the row's evaluation fails too and says so
                entry.update(status="failed", reason=f"{type(exc).__name__}: {exc}".splitlines()[0])
            entry["seconds"] = time.perf_counter() - t0
            log(f"{stage} {run.key}: {entry['status']} {entry.get('reason', '')}")
            entries.append(entry)
        store.write_json(params.report_path / f"{stage}.json", {"hw": params.hw, "rows": entries})
    return entries
