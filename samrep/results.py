"""Result records: one JSON file per (hw, phase, backend, precision, bs), written atomically.

A record's `status` is "ok", "failed" (with `reason` and `failed_stage`) or "not_run" (with
`reason`). The first image's predicted masks of an ok row are saved beside it as
`<key>.masks.npz` (bool, (3, H, W), model output order), so `acc` can be recomputed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from samrep.faults import checkpoint

SCHEMA = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results and reports are for everyone
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        checkpoint(f"write:{path.name}")  # test hook (samrep.faults): killed before the rename
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()
    )


def save_masks(path: Path, masks: np.ndarray) -> None:
    """masks: (3, H, W) bool -> compressed npz, atomically."""
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, masks=np.asarray(masks, dtype=bool))
    atomic_write_bytes(path, buf.getvalue())


def load_masks(path: Path) -> np.ndarray:
    with np.load(path) as z:
        return z["masks"]


def results_dir(report_path: Path) -> Path:
    return Path(report_path) / "results"


def save_record(report_path: Path, record: dict) -> Path:
    path = results_dir(report_path) / f"{record['key']}.json"
    atomic_write_json(path, record)
    return path


def load_records(report_path: Path) -> list[dict]:
    """Every record of a report, sorted by key. Unreadable files are skipped with a warning."""
    from samrep.progress import log

    records = []
    for p in sorted(results_dir(report_path).glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log(f"results: skipping unreadable {p} ({exc})")
            continue
        if rec.get("schema") == SCHEMA:
            records.append(rec)
    return records


def records_frame(records: list[dict]):
    """A flat pandas DataFrame of the records: one row each, the metrics as columns."""
    import pandas as pd

    rows = []
    for r in records:
        m = r.get("metrics") or {}
        rows.append(
            {
                "hw": r["hw"],
                "key": r["key"],
                "phase": r["phase"],
                "backend": r["backend"],
                "precision": r["precision"],
                "bs": r["bs"],
                "status": r["status"],
                "reason": r.get("reason"),
                "math_mode": r.get("math_mode"),
                "synthetic_weights": (r.get("weights") or {}).get("synthetic"),
                "image": (r.get("image") or {}).get("name"),
                **m,
            }
        )
    return pd.DataFrame(rows)


def current_records(params) -> list[dict]:
    """The records of the rows `params` configures now, in its order.

    A record left by a row since removed from the params (an older configuration) is not shown:
    it says so in the log instead.
    """
    from samrep.progress import log

    by_key = {r["key"]: r for r in load_records(params.report_path)}
    keys = [run.key for run in params.runs]
    stale = sorted(set(by_key) - set(keys))
    if stale:
        log(f"results: not showing {', '.join(stale)} (no longer in {params.path})")
    return [by_key[k] for k in keys if k in by_key]
