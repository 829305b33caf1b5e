"""Progress output: one line per step on stderr, with the elapsed time of the run."""

import sys
import time

_T0 = time.perf_counter()


def log(message: str) -> None:
    """Print one progress line, prefixed with seconds since the process started."""
    print(f"[samrep {time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


class Progress:
    """Progress over `total` steps of a loop: on a TTY a line rewritten in place; otherwise
    (papermill, CI, logs) a line at the start, at most one every `every_s` s, one at the end."""

    def __init__(self, label: str, total: int, every_s: float = 10.0):
        self.label, self.total, self.every_s, self.done = label, total, every_s, 0
        self.tty = sys.stderr.isatty()
        self.t0 = self.last = time.perf_counter()
        log(f"{label}: 0/{total}")

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.tty:
            print(f"\r  {self.label}: {self.done}/{self.total}", end="", file=sys.stderr)
        elif now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            log(f"{self.label}: {self.done}/{self.total} ({now - self.t0:.0f} s)")

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)
        log(f"{self.label}: {self.done}/{self.total} done in {time.perf_counter() - self.t0:.1f} s")
