"""Test hooks: pause or fail at a named point of a run, chosen by environment variables.

For the tests of interruption and failure handling only; with the variables unset (always,
outside the tests) every hook is a no-op.

SAMREP_TEST_PAUSE_AT=<point>[,<point>...]
    At a matching point, print "[samrep ...] PAUSED at <point>" on stderr and sleep, so a test
    can send SIGKILL or SIGINT to the process at a known moment of a stage.
SAMREP_TEST_FAIL_AT=<point>[=<kind>][,...]
    At a matching point, raise an injected fault: kind "error" (RuntimeError, the default) or
    "oom" (torch.cuda.OutOfMemoryError, as a GPU out of memory raises it).

A point may be given as an fnmatch pattern ("evaluate:measure:*"). The points:
    groundtruth:written         ground-truth masks and inputs written, manifest not yet
    write:<file name>           atomic write: temporary file written, not yet renamed
    export:<row>, build:<row>   export / build stage: the row's artifact made, stage file not
    evaluate:build:<row>        evaluation of a row: before its backend builds
    evaluate:measure:<row>      evaluation of a row: built, before the timed measurement
    evaluate:saved:<row>        evaluation: the row's record written
    report:<notebook>           `make report`: before running a notebook
    report:render               `make report`: before rendering the HTML
    summary:masks               99_summary: before its masks section
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
    if kind is None:
        return
    if kind == "oom":
        import torch

        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected at {point} by {FAIL_ENV})")
    raise InjectedFault(f"injected fault at {point} ({FAIL_ENV})")
