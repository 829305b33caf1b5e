"""Resumable stages: what a stage depends on (its stamp), and the record that says it finished.

Every output is written atomically (samrep.results.atomic_write_*: a temporary file in the same
folder, then a rename), so a killed run leaves the old file or the new one under the final name,
never a partial one; temporary files (".<name>.<random>.tmp") are never read. A stage's record,
`reports/<hw>/stages/<stage>.json`, is written after its outputs and removed before the stage
runs again, so a record on disk vouches for complete outputs.

A stage's stamp holds its inputs: the params file's hash, the code version (samrep's version and
a hash of its sources), the notebook's hash, and
- the ground-truth stage: the weights and the image, by file fingerprint (name, size, mtime);
  unknown (so the stage runs, and reuses its own outputs if their sha256 stamp still holds)
  when the hub might have newer files (HF_HUB_OFFLINE unset and nothing cached);
- the later stages: the ground truth's manifest stamp (image and weights sha256);
- the summary: also a hash of every result file it shows.
`make report` reuses a stage whose record has the stamp it would have now, whose outputs are
still there and which left nothing failed (failed rows and exports are retried); `FORCE=1`
redoes every stage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from samrep.config import HwParams
from samrep.data import file_sha256
from samrep.hub import offline_mode
from samrep.results import atomic_write_json, results_dir

STAGES_DIR = "stages"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """samrep's version plus a hash of its source files: a code change makes results stale."""
    import samrep

    pkg = Path(samrep.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(pkg.rglob("*.py")):
        h.update(path.relative_to(pkg).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{samrep.__version__}+{h.hexdigest()[:12]}"


def files_fingerprint(path: Path) -> str | None:
    """A cheap fingerprint of a file or folder: (relative name, size, mtime) of every file."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        return None
    entries = []
    for p in files:
        st = p.stat()
        entries.append(
            [p.relative_to(path).as_posix() if p != path else p.name, st.st_size, st.st_mtime_ns]
        )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _hub_cached(repo_id: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # not a valid repo id, no cache: not cached
        return None
    return Path(found) if isinstance(found, str) else None


def weights_fingerprint(params: HwParams) -> dict | None:
    """Which weights the ground truth would load, fingerprinted; None when that is unknown."""
    m = params.model
    local = params.weights_path
    if local is not None:
        files = files_fingerprint(local)
        return {"local": str(local), "files": files} if files else None
    if m.weights:
        config = _hub_cached(m.weights, "config.json")
        if config is not None:
            return {"hub": m.weights, "files": files_fingerprint(config.parent)}
        if not offline_mode():
            return None  # the hub may have them now
    if not m.allow_synthetic:
        return None
    folder = params.data_path / "weights" / f"synthetic-{m.arch}-seed{m.seed}"
    files = files_fingerprint(folder)
    return {"synthetic": folder.name, "files": files} if files else None


def image_fingerprint(params: HwParams) -> dict | None:
    """Which image the ground truth would load, fingerprinted; None when that is unknown."""
    from samrep.data import CAR, fallback_path

    if params.image_path is not None:
        files = files_fingerprint(params.image_path)
        return {"path": str(params.image_path), "files": files} if files else None
    choice = params.data.image
    if choice in ("auto", "car"):
        cached = _hub_cached(CAR.repo_id, CAR.filename)
        if cached is not None:
            return {"car": files_fingerprint(cached)}
        if not offline_mode() or choice == "car":
            return None  # the hub may have it now
    return {"fallback": files_fingerprint(fallback_path())}


def read_manifest_stamp(params: HwParams) -> dict | None:
    try:
        return json.loads((params.data_path / "manifest.json").read_text())["stamp"]
    except (OSError, ValueError, KeyError):
        return None


def _results_digest(params: HwParams) -> str:
    """A hash of every file the summary shows (results, stage tables, steps, notes)."""
    folder = params.report_path
    paths = sorted(results_dir(folder).glob("*.json")) + sorted(
        results_dir(folder).glob("*.masks.npz")
    )
    paths += [folder / n for n in ("export.json", "build.json", "steps.json", "NOTES.md")]
    h = hashlib.sha256()
    for p in paths:
        if p.is_file():
            h.update(p.name.encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()


def stage_kind(name: str) -> str:
    """ground_truth, evaluate, summary or other (export, build, ...), from a notebook's name."""
    for kind in ("ground_truth", "evaluate", "summary"):
        if kind in name:
            return kind
    return "other"


def stage_stamp(params: HwParams, name: str) -> dict | None:
    """What stage `name`'s outputs depend on now; None when that cannot be known cheaply."""
    from samrep.pipeline import NOTEBOOKS_DIR

    notebook = NOTEBOOKS_DIR / f"{name}.ipynb"
    stamp = {
        "params_sha256": params.sha256,
        "code": code_version(),
        "notebook_sha256": file_sha256(notebook) if notebook.is_file() else None,
    }
    if stage_kind(name) == "ground_truth":
        stamp["weights"] = weights_fingerprint(params)
        stamp["image"] = image_fingerprint(params)
        if stamp["weights"] is None or stamp["image"] is None:
            return None
        return stamp
    stamp["ground_truth"] = read_manifest_stamp(params)
    if stamp["ground_truth"] is None:
        return None
    if stage_kind(name) == "summary":
        stamp["results"] = _results_digest(params)
    return stamp


def stage_path(params: HwParams, name: str) -> Path:
    return params.report_path / STAGES_DIR / f"{name}.json"


def read_stage(params: HwParams, name: str) -> dict | None:
    try:
        return json.loads(stage_path(params, name).read_text())
    except (OSError, ValueError):
        return None


def clear_stage(params: HwParams, name: str) -> None:
    """Before a stage runs: its old record must not vouch for the outputs it is rewriting."""
    stage_path(params, name).unlink(missing_ok=True)


def write_stage(params: HwParams, name: str, status: str, seconds: float, reason: str = "") -> dict:
    """Record that stage `name` ended (status "ok" or "failed"), with its stamp as of now."""
    record = {
        "stage": name,
        "status": status,
        "reason": reason or None,
        "seconds": seconds,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "stamp": stage_stamp(params, name) if status == "ok" else None,
        "manifest_stamp": read_manifest_stamp(params),
        "failed": stage_failures(params, name),
    }
    atomic_write_json(stage_path(params, name), record)
    return record


def stage_failures(params: HwParams, name: str) -> list[str]:
    """What stage `name` left failed: configured rows (evaluate) or export/build entries."""
    kind = stage_kind(name)
    if kind == "evaluate":
        return failed_rows(params)
    if kind == "other":
        failed = []
        for table in ("export", "build"):
            if table in name:
                try:
                    entries = json.loads((params.report_path / f"{table}.json").read_text())["rows"]
                except (OSError, ValueError, KeyError):
                    return [f"{table}.json missing"]
                failed += [e["row"] for e in entries if e.get("status") == "failed"]
        return failed
    return []


def failed_rows(params: HwParams) -> list[str]:
    """Configured rows whose stored record says "failed"."""
    out = []
    for run in params.runs:
        try:
            rec = json.loads((results_dir(params.report_path) / f"{run.key}.json").read_text())
        except (OSError, ValueError):
            continue
        if rec.get("status") == "failed":
            out.append(run.key)
    return out


def _rows_complete(params: HwParams) -> bool:
    """Every configured row has a current record: ok, or not run for a reason that still holds."""
    from samrep.backends import BackendUnavailable, get_backend
    from samrep.evaluate import stored_record

    if getattr(params, "world_size", 1) != 1:  # resolved at run time (samrep.distributed)
        return False
    manifest = {"stamp": read_manifest_stamp(params)}
    for run in params.runs:
        rec = stored_record(params, run, manifest)
        if rec is None or rec.get("status") not in ("ok", "not_run"):
            return False
        if rec["status"] == "not_run":
            try:
                get_backend(run.backend).check_available(params.device, run.precision)
                return False  # it could run now
            except BackendUnavailable:
                pass
    return True


def fresh_stage(params: HwParams, name: str, output: Path) -> dict | None:
    """The record of stage `name` if it can be reused as is (else None)."""
    record = read_stage(params, name)
    if record is None or record.get("status") != "ok" or not output.is_file():
        return None
    stamp = stage_stamp(params, name)
    if stamp is None or record.get("stamp") != stamp:
        return None
    kind = stage_kind(name)
    if kind == "ground_truth" and record.get("manifest_stamp") != read_manifest_stamp(params):
        return None
    if stage_failures(params, name):
        return None  # retry what failed
    if kind == "evaluate" and not _rows_complete(params):
        return None
    return record


@dataclass
class ChainOutcome:
    """What `make report` did: stages reused, run and failed; configured rows that failed."""

    page: Path | None = None
    reused: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    failed_stages: dict[str, str] = field(default_factory=dict)
    failed_rows: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.failed_stages or self.failed_rows)

    def summary(self) -> str:
        return (
            f"reused {', '.join(self.reused) if self.reused else 'no stage'}; "
            f"ran {', '.join(self.ran) if self.ran else 'no stage'}"
        )

    def failure_message(self) -> str:
        parts = []
        if self.failed_rows:
            parts.append(f"failed rows: {', '.join(self.failed_rows)}")
        if self.failed_stages:
            parts.append(
                "failed stages: " + "; ".join(f"{k} ({v})" for k, v in self.failed_stages.items())
            )
        return "; ".join(parts)
