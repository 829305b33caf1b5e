"""Export and build stages: the ONNX graphs and engine files the "infer" rows build from.

Both stages run ahead of the evaluation so their cost and failures show on their own (the
case's steps 3 and 4), and leave cached artifacts that the evaluation reuses:
- export: every infer row whose backend builds from ONNX (onnxruntime, tensorrt, xtcl) gets its
  export made or reused (samrep.export caches by weights, part, precision, opset, batch axis).
- build: every infer row whose backend leaves a persistent artifact (an ONNX Runtime session's
  export, a TensorRT engine) is built once here. torch.compile backends (inductor, fast) are
  built in the evaluation itself: their compiled code does not persist across processes.
Each stage writes reports/<hw>/<stage>.json (atomically): one entry per row, with its status.
"""

from __future__ import annotations

import time

from samrep.backends import BackendUnavailable, get_backend
from samrep.config import HwParams
from samrep.env import check_device
from samrep.faults import checkpoint
from samrep.groundtruth import load_ground_truth, load_params_model
from samrep.progress import log
from samrep.results import atomic_write_json


def _engine_rows(params: HwParams, want) -> list:
    """(run, backend class or None, reason) for every infer row whose backend satisfies want."""
    out = []
    for run in params.runs:
        if run.phase != "infer":
            continue
        try:
            cls = get_backend(run.backend)
        except BackendUnavailable as exc:
            out.append((run, None, str(exc)))
            continue
        if want(cls):
            out.append((run, cls, ""))
    return out


def _stage(params: HwParams, name: str, want, work, force: bool) -> list[dict]:
    check_device(params)
    rows = _engine_rows(params, want)
    entries, model, gt = [], None, None
    for run, cls, reason in rows:
        entry = {"row": run.key, "backend": run.backend, "precision": run.precision, "bs": run.bs}
        try:
            if cls is None:
                raise BackendUnavailable(reason)
            cls.check_available(params.device, run.precision)
            if model is None:
                gt = load_ground_truth(params)
                model, _ = load_params_model(params)
            backend = cls(
                params.device, run.precision, run.options, params.data_path / "engines", bs=run.bs
            )
            t0 = time.perf_counter()
            entry.update(work(backend, model, gt.inputs, force) or {})
            checkpoint(f"{name}:{run.key}")  # test hook (samrep.faults): made, not yet recorded
            entry.update(status="ok", seconds=time.perf_counter() - t0)
        except BackendUnavailable as exc:
            log(f"{name} {run.key}: not run: {exc}")
            entry.update(status="not_run", reason=str(exc))
        except Exception as exc:  # recorded; the evaluation of this row will fail too and say so
            log(f"{name} {run.key}: FAILED: {type(exc).__name__}: {exc}")
            entry.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        entries.append(entry)
    if not rows:
        log(f"{name}: no infer row of {params.path} needs this stage")
    atomic_write_json(params.report_path / f"{name}.json", {"hw": params.hw, "rows": entries})
    return entries


def _export(backend, model, inputs, force):
    info = backend.export_onnx(model, inputs, force=force)
    if info is None:
        return {"note": "uses an ONNX given in its options"}
    log(
        f"export {backend.name} {backend.precision}: {info.folder.name} "
        f"({'reused' if info.reused else f'made in {info.export_s:.1f} s'}), "
        f"{info.onnx_bytes / 1e9:.2f} GB"
    )
    return {
        "folder": info.folder.name,
        "graphs": sorted(info.paths),
        "exporter": info.exporter,
        "opsets": info.graph_opsets,
        "onnx_gb": info.onnx_bytes / 1e9,
        "export_s": info.export_s,
        "reused": info.reused,
        "max_abs_diff": info.max_abs_diff,
        "max_abs_ref": info.max_abs_ref,
        "check_providers": info.check_providers,
    }


def _build(backend, model, inputs, force):
    backend.build(model, inputs)
    backend.synchronize()
    return {"math_mode": backend.math_mode, "versions": backend.versions()}


def export_stage(params: HwParams, force: bool = False) -> list[dict]:
    """Make or reuse the ONNX export of every infer row that builds from ONNX."""
    return _stage(params, "export", lambda cls: cls.uses_onnx, _export, force)


def build_stage(params: HwParams, force: bool = False) -> list[dict]:
    """Build (or reuse) the persistent engine of every infer row that has one."""
    return _stage(params, "build", lambda cls: cls.persistent_build, _build, force)


def stage_table(entries: list[dict]):
    """A pandas table of a stage's entries (row, status, seconds, and what was made)."""
    import pandas as pd

    rows = []
    for e in entries:
        rows.append(
            {
                "row": e["row"],
                "status": e["status"] if e["status"] == "ok" else f"{e['status']}: {e['reason']}",
                "seconds": e.get("seconds"),
                "made in [s]": e.get("export_s"),
                "reused": e.get("reused"),
                "ONNX [GB]": e.get("onnx_gb"),
                "largest |ORT - PyTorch|": _largest(e.get("max_abs_diff")),
                "math mode": e.get("math_mode"),
            }
        )
    return pd.DataFrame(rows)


def _largest(diffs: dict | None):
    if not diffs:
        return None
    return max(v for graph in diffs.values() for v in graph.values())
