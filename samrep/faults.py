"""Test hooks: pause or fail at a named point of a run, chosen by environment variables.

For the tests of interruption and failure handling only; unset (always, outside the tests), a
no-op. SAMREP_TEST_PAUSE_AT=<point>,...: log "PAUSED at <point>" and sleep, for a test to SIGKILL
or SIGINT the process at a known moment. SAMREP_TEST_FAIL_AT=<point>[=<kind>],...: raise
InjectedFault (kind "error", the default) or torch.cuda.OutOfMemoryError (kind "oom").
Points (fnmatch patterns allowed: "evaluate:measure:*"): groundtruth:written (masks and inputs
written, manifest not), write:<file name> (temporary file written, not renamed), export:<row> and
build:<row> (artifact made, stage file not), evaluate:build:<row> (before the backend builds),
evaluate:measure:<row> (built, not yet timed), evaluate:saved:<row> (record written),
report:<notebook> (before running it), report:render (before rendering the HTML),
summary:masks (99_summary, before its masks section).
"""

from __future__ import annotations

import fnmatch
import os
import time

PAUSE_ENV = "SAMREP_TEST_PAUSE_AT"
FAIL_ENV = "SAMREP_TEST_FAIL_AT"


class InjectedFault(RuntimeError):
    """The error SAMREP_TEST_FAIL_AT raises (kind "error")."""


def _matches(env: str, point: str) -> str | None:
    """The kind of the first entry of $env matching `point` ("" if it has none), else None."""
    for entry in filter(None, (e.strip() for e in os.environ.get(env, "").split(","))):
        pattern, _, kind = entry.partition("=")
        if fnmatch.fnmatchcase(point, pattern):
            return kind
    return None


def checkpoint(point: str) -> None:
    """Pause (SAMREP_TEST_PAUSE_AT) or fail (SAMREP_TEST_FAIL_AT) here if asked to."""
    if _matches(PAUSE_ENV, point) is not None:
        from samrep.progress import log

        log(f"PAUSED at {point} (test hook {PAUSE_ENV}; pid {os.getpid()})")
        while True:  # until a signal ends or interrupts the process
            time.sleep(3600)
    kind = _matches(FAIL_ENV, point)
    if kind == "oom":
        import torch

        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected at {point} by {FAIL_ENV})")
    if kind is not None:
        raise InjectedFault(f"injected fault at {point} ({FAIL_ENV})")
