"""Interrupted runs: a stage killed (SIGKILL) or interrupted (SIGINT) at a chosen point, then run
again. The point is chosen with the test hook SAMREP_TEST_PAUSE_AT (samrep.faults): the process
prints "PAUSED at <point>" and sleeps there until the signal arrives.

Checked every time: no partial file is read as complete, only the unfinished work is redone,
and the final results equal those of an uninterrupted run (masks and scores; timings differ).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from samrep.config import REPO_ROOT, load_params
from samrep.errors import SamrepError
from tests.folders import is_test_folder, safe_rmtree

ROW1 = "val-torch-fp32-bs1"
ROW2 = "infer-torch-fp32-bs2"
RUNS = [
    {"phase": "val", "backend": "torch", "precision": "fp32", "bs": 1},
    {"phase": "infer", "backend": "torch", "precision": "fp32", "bs": 2},
]


def make_params(tmp_path: Path, runs=RUNS, name: str = "tiny.yaml", **data):
    """A copy of params/tiny.yaml with its own data and report folders (inside the repo)."""
    raw = yaml.safe_load((REPO_ROOT / "params/tiny.yaml").read_text())
    tag = f"pytest-{uuid.uuid4().hex[:8]}"
    raw["data"]["data_dir"] = f"data/{tag}"
    raw["report_dir"] = f"build/{tag}"
    raw["data"].update(data)
    raw["runs"] = runs
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return load_params(str(path))


def cleanup(*params) -> None:
    for p in params:
        safe_rmtree(p.data_path)
        safe_rmtree(p.report_path)


class Run:
    """`python -m samrep <args>` in the background; stderr collected line by line."""

    def __init__(self, args: list[str], pause_at: str = "", fail_at: str = ""):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("SAMREP_TEST_PAUSE_AT", None)
        env.pop("SAMREP_TEST_FAIL_AT", None)
        if pause_at:
            env["SAMREP_TEST_PAUSE_AT"] = pause_at
        if fail_at:
            env["SAMREP_TEST_FAIL_AT"] = fail_at
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "samrep", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A shell without job control starts background jobs (CI runners, `cmd &`) with
            # SIGINT ignored, and the child would inherit that: restore the default so SIGINT
            # is the Ctrl-C these tests mean (Python then raises KeyboardInterrupt).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def err(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, marker: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.reader.join(5)
                pytest.fail(f"never reached '{marker}' (rc {self.proc.returncode}):\n{self.err}")
            time.sleep(0.1)

    def signal(self, sig: int, timeout: float = 120) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.reader.join(10)
        return rc

    def finish(self, timeout: float = 400) -> int:
        self.proc.wait(timeout)
        self.reader.join(10)
        return self.proc.returncode


def kill_at(args: list[str], point: str, sig: int) -> Run:
    """Run until the pause point, then send `sig`; SIGINT must end it as "interrupted" (130)."""
    run = Run(args, pause_at=point)
    run.wait_for(f"PAUSED at {point}")
    rc = run.signal(sig)
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:
        assert rc == 130, run.err
        assert run.lines[-1] == "samrep: interrupted", run.err
    time.sleep(1.5)  # a notebook kernel notices its parent is gone within a second and exits
    return run


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if p.is_file())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: ground truth and both rows, in-process."""
    from samrep.evaluate import run_evaluation
    from samrep.groundtruth import run_ground_truth

    params = make_params(tmp_path_factory.mktemp("ref"))
    gt = run_ground_truth(params)
    records = {r["key"]: r for r in run_evaluation(params)}
    yield params, gt, records
    cleanup(params)


def assert_same_results(params, reference) -> None:
    """Every row ok, with the masks and scores of the uninterrupted run."""
    from samrep.results import load_masks, load_records, results_dir

    ref_params, _, ref_records = reference
    records = {r["key"]: r for r in load_records(params.report_path)}
    assert sorted(records) == sorted(ref_records)
    for key, ref in ref_records.items():
        rec = records[key]
        assert rec["status"] == "ok", rec.get("reason")
        assert rec["scores"] == ref["scores"], key
        assert rec["timing"]["images"] == ref["timing"]["images"]
        assert rec["validity"]["valid"], rec["validity"]
        mine = load_masks(results_dir(params.report_path) / rec["masks_file"])
        theirs = load_masks(results_dir(ref_params.report_path) / ref["masks_file"])
        assert np.array_equal(mine, theirs), key


def test_cleanup_only_ever_removes_test_folders():
    """The predicate safe_rmtree trusts (never called on the others here)."""
    for rel in (".", "data", "build", "samrep", "data/cpu", "reports/tiny", "build/x/pytest-1"):
        assert not is_test_folder(REPO_ROOT / rel), rel
    assert not is_test_folder(REPO_ROOT / "build" / "pytest-1" / "..")
    mine = REPO_ROOT / "build" / f"pytest-{uuid.uuid4().hex[:8]}"
    assert is_test_folder(mine)
    (mine / "sub").mkdir(parents=True)
    safe_rmtree(mine)
    assert not mine.exists()


@pytest.mark.parametrize(
    "point, sig",
    [("groundtruth:written", signal.SIGKILL), ("write:manifest.json", signal.SIGINT)],
    ids=["masks-written-SIGKILL", "manifest-being-written-SIGINT"],
)
def test_ground_truth_interrupted_then_rerun(tmp_path, reference, point, sig, capfd):
    from samrep.groundtruth import load_ground_truth, run_ground_truth

    params = make_params(tmp_path)
    try:
        kill_at(["groundtruth", "--hw", str(tmp_path / "tiny.yaml")], point, sig)
        # The masks may be on disk, but without the manifest nothing vouches for them.
        assert not (params.data_path / "manifest.json").exists()
        with pytest.raises(SamrepError, match="ground truth missing"):
            load_ground_truth(params)
        if sig == signal.SIGINT:  # an interrupted atomic write removes its temporary file
            assert temporaries(params.data_path) == []
        capfd.readouterr()
        gt = run_ground_truth(params)
        err = capfd.readouterr().err
        assert "ground truth: reusing" not in err and "ground truth: wrote" in err  # redone
        _, ref_gt, _ = reference
        assert torch.equal(gt.masks, ref_gt.masks)
        again = load_ground_truth(params)
        assert all(again.files_match.values()) and len(again.files_match) == 4
        assert again.manifest["files_sha256"] == ref_gt.manifest["files_sha256"]
    finally:
        cleanup(params)


@pytest.mark.parametrize(
    "point, sig",
    [(f"evaluate:measure:{ROW2}", signal.SIGINT), (f"write:{ROW2}.json", signal.SIGKILL)],
    ids=["mid-row-SIGINT", "record-being-written-SIGKILL"],
)
def test_evaluate_interrupted_then_only_the_unfinished_row_reruns(
    tmp_path, reference, point, sig, capfd
):
    from samrep.evaluate import run_evaluation
    from samrep.groundtruth import run_ground_truth
    from samrep.results import load_records, results_dir

    params = make_params(tmp_path)
    try:
        run_ground_truth(params)
        kill_at(["evaluate", "--hw", str(tmp_path / "tiny.yaml")], point, sig)
        out = results_dir(params.report_path)
        assert (out / f"{ROW1}.json").is_file()
        assert not (out / f"{ROW2}.json").exists()
        if sig == signal.SIGKILL:  # the half-done write is left as a temporary file...
            assert [p.name.startswith(f".{ROW2}.json.") for p in temporaries(out)] == [True]
        # ...that is never read as a result
        assert [r["key"] for r in load_records(params.report_path)] == [ROW1]
        capfd.readouterr()
        run_evaluation(params)
        err = capfd.readouterr().err
        assert f"{ROW1}: reusing the result" in err
        assert f"{ROW2}: reusing" not in err and f"row 1/1: {ROW2}" in err
        assert_same_results(params, reference)
    finally:
        cleanup(params)


@pytest.mark.parametrize("stage", ["export", "build"])
def test_export_or_build_killed_then_rerun_reuses_what_was_made(tmp_path, stage, capfd):
    from samrep.engines import build_stage, export_stage
    from samrep.groundtruth import run_ground_truth

    row = "infer-onnxruntime-fp32-bs2"
    params = make_params(
        tmp_path, runs=[{"phase": "infer", "backend": "onnxruntime", "precision": "fp32", "bs": 2}]
    )
    try:
        run_ground_truth(params)
        kill_at([stage, "--hw", str(tmp_path / "tiny.yaml")], f"{stage}:{row}", signal.SIGKILL)
        assert not (params.report_path / f"{stage}.json").exists()  # the stage did not finish
        capfd.readouterr()
        (entry,) = (export_stage if stage == "export" else build_stage)(params)
        assert entry["status"] == "ok", entry
        if stage == "export":
            assert entry["reused"] is True  # the export the killed run made is complete
        else:
            assert "export: reusing" in capfd.readouterr().err  # the build reused the export
        rows = json.loads((params.report_path / f"{stage}.json").read_text())["rows"]
        assert [e["row"] for e in rows] == [row]
    finally:
        cleanup(params)


def test_report_interrupted_twice_then_finishes_redoing_only_unfinished_stages(tmp_path, reference):
    """`make report` killed in the evaluation, interrupted before rendering, then run again."""
    params = make_params(tmp_path)
    args = ["report", "--hw", str(tmp_path / "tiny.yaml")]
    stages = params.report_path / "stages"
    try:
        # 1. SIGKILL while the second row is being measured, inside the 04_evaluate notebook.
        first = kill_at(args, f"evaluate:measure:{ROW2}", signal.SIGKILL)
        for name in ("01_ground_truth", "02_export_onnx", "03_build_engine"):
            assert f"notebook {name}: done" in first.err
        assert sorted(p.stem for p in stages.glob("*.json")) == [
            "01_ground_truth",
            "02_export_onnx",
            "03_build_engine",
        ]
        assert not (params.report_path / "04_evaluate.ipynb").exists()
        # 2. SIGINT after the summary notebook ran, before the HTML is written.
        second = kill_at(args, "report:render", signal.SIGINT)
        for name in ("01_ground_truth", "02_export_onnx", "03_build_engine"):
            assert f"notebook {name}: reused" in second.err
        assert f"{ROW1}: reusing the result" in second.err
        assert f"row 1/1: {ROW2}" in second.err
        assert not (params.report_path / "index.html").exists()
        assert not (stages / "99_summary.json").exists()
        # 3. Uninterrupted: only the summary is redone.
        third = Run(args)
        assert third.finish() == 0, third.err
        assert (
            "report: reused 01_ground_truth, 02_export_onnx, 03_build_engine, 04_evaluate; "
            "ran 99_summary" in third.err
        )
        html = (params.report_path / "index.html").read_text()
        assert ROW1 in html and ROW2 in html and "valid" in html
        assert_same_results(params, reference)
        # 4. Once more: everything is reused.
        fourth = Run(args)
        assert fourth.finish() == 0, fourth.err
        assert "ran no stage" in fourth.err and "notebook 99_summary: reused" in fourth.err
    finally:
        cleanup(params)
