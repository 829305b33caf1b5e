"""Test hooks (a no-op unless the tests set them): pause or fail at a named point of a run.
SAMREP_TEST_PAUSE_AT=<point>,...: log "PAUSED at <point>" and sleep (for a SIGKILL or SIGINT).
SAMREP_TEST_FAIL_AT=<point>[=error|oom],...: raise InjectedFault or torch.cuda.OutOfMemoryError.
Points (fnmatch patterns): groundtruth:written, write:<file> (before the rename), export:<row>,
build:<row>, evaluate:{build,measure,saved}:<row>, report:<notebook>, report:render, summary:masks.
"""

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
