"""Two runs on one hw: the second waits for the hw's lock with one line, or refuses after
SAMREP_LOCK_TIMEOUT seconds (exit 2); once the first ends it runs, so no two runs ever measure
or write the same hw at once."""

import json
import os
import signal

from tests.reliability import (
    ROW,
    error_lines,
    own_folders,
    own_hw_fixture,
    read_until,
    start_cli,
)

NAME = "concurrent"


hw = own_hw_fixture(NAME)


def test_a_second_run_waits_or_refuses_while_the_first_holds_the_hw(hw):
    record = own_folders(NAME)[1] / "results" / f"{ROW}.json"
    first = start_cli(hw, "evaluate", "--hw", NAME, SAMREP_TEST_PAUSE_AT=f"evaluate:measure:{ROW}")
    waiting = refusing = None
    try:
        read_until(first, "PAUSED at")  # measuring, with the lock held
        refusing = start_cli(hw, "evaluate", "--hw", NAME, SAMREP_LOCK_TIMEOUT="1")
        waiting = start_cli(hw, "evaluate", "--hw", NAME)
        _, err = refusing.communicate(timeout=60)
        assert refusing.returncode == 2, err
        assert f"waiting for another samrep run on hw '{NAME}'" in err
        (line,) = error_lines(err)
        assert line.startswith("samrep: error: ") and line.endswith(
            f".samrep.lock: another samrep run holds hw '{NAME}' (waited 1 s)"
        )
        seen = read_until(waiting, "waiting for another samrep run")
        assert waiting.poll() is None and not record.exists()

        os.killpg(first.pid, signal.SIGINT)  # the first run ends: the waiting one goes on
        first.communicate(timeout=60)
        assert first.returncode == 130
        _, rest = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, seen + rest
        assert error_lines(seen + rest) == []
        rec = json.loads(record.read_text())
        assert rec["status"] == "ok" and rec["validity"]["valid"] is True
    finally:
        for proc in (first, waiting, refusing):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
