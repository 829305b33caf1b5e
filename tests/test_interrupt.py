"""Ctrl-C and kills: a Ctrl-C during a measurement exits 130 without recording the row, with no
traceback (the memory sampler exits quietly) and nothing half-written; a rerun completes the row.
A killed run's temporaries (an atomic write's file, an ONNX export's folder) are removed by the
next run; a live process's are not."""

import json
import os
import signal
import subprocess
import sys

from tests.reliability import (
    ROW,
    error_lines,
    own_folders,
    own_hw_fixture,
    read_until,
    run_cli,
    start_cli,
    temporaries,
)

NAME = "interrupt"


hw = own_hw_fixture(NAME)


def test_ctrl_c_during_a_measurement_records_nothing_and_a_rerun_completes_the_row(hw, capfd):
    data, report = own_folders(NAME)
    record = report / "results" / f"{ROW}.json"
    proc = start_cli(hw, "evaluate", "--hw", NAME, SAMREP_TEST_PAUSE_AT=f"evaluate:measure:{ROW}")
    seen = read_until(proc, f"PAUSED at evaluate:measure:{ROW}")
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the sampler gets it too
    _, rest = proc.communicate(timeout=60)
    stderr = seen + rest

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert error_lines(stderr) == [
        "samrep: interrupted; the row in flight was not recorded (rerun to resume)"
    ]
    assert not record.exists() and temporaries(data, report) == []

    assert run_cli(hw, "evaluate", "--hw", NAME) == 0
    assert json.loads(record.read_text())["status"] == "ok"
    assert "reusing its fresh result" not in capfd.readouterr().err  # measured now


def test_a_killed_run_leaves_temporaries_that_the_next_run_removes(hw, capfd):
    data, report = own_folders(NAME)
    proc = start_cli(
        hw, "evaluate", "--hw", NAME, "--force", SAMREP_TEST_PAUSE_AT=f"write:{ROW}.json"
    )
    read_until(proc, f"PAUSED at write:{ROW}.json")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    left = temporaries(report)
    assert [p.endswith(f".tmp{proc.pid}") for p in left] == [True], left
    # A killed ONNX export's folder (backends/onnx_export.py names it <folder>.tmp<pid>) and a live one's.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    killed_export = data / "engines" / f"onnx-fp32-bs1.tmp{dead}"
    live_export = data / "engines" / f"onnx-fp16-bs1.tmp{os.getpid()}"
    for folder in (killed_export, live_export):
        (folder / "raw").mkdir(parents=True)
        (folder / "raw" / "model.onnx").write_bytes(b"\0" * 1000)

    assert run_cli(hw, "evaluate", "--hw", NAME, "--only", ROW) == 0
    assert "removed temporaries of an interrupted run" in capfd.readouterr().err
    assert temporaries(data, report) == [str(live_export)]
    live_export.rename(live_export.with_name("done"))  # tidy: not a temporary any more
