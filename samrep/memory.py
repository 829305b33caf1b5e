"""Memory measurement: device memory by NVML sampling on GPUs, process RSS on the CPU.

A sampling thread reads the figure every `interval_ms` and keeps the peak, so the peak of one
measured phase is known, not a whole-device poll every 5 s over every phase (the original's
defect 6). The framework's own peak (torch.cuda.max_memory_allocated) is reported beside it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

GIB = 1024**3


@dataclass
class MemoryReport:
    """Peak memory of one measured phase, in GiB.

    method: "nvml" (whole-device used memory, sampled) or "rss" (this process's resident set).
    peak_gib / total_gib is the spec's `mem`; delta_gib is the peak minus the idle baseline taken
    just before the phase; framework_peak_gib is the framework's own allocator peak (None on CPU).
    """

    method: str
    peak_gib: float
    total_gib: float
    baseline_gib: float
    delta_gib: float
    framework_peak_gib: float | None
    samples: int
    interval_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


class _Sampler(threading.Thread):
    def __init__(self, read, interval_s: float):
        super().__init__(daemon=True)
        self.read, self.interval_s = read, interval_s
        self.peak, self.samples = read(), 1
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            value = self.read()
            self.samples += 1
            if value > self.peak:
                self.peak = value
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, self.read())


class MemoryMonitor:
    """Context manager: `with MemoryMonitor(device, 1.0) as mon: ...; mon.report`."""

    def __init__(self, device: str, interval_ms: float = 1.0, device_index: int = 0):
        self.device, self.interval_ms, self.index = device, interval_ms, device_index
        self.report: MemoryReport | None = None

    def _reader(self):
        if self.device == "cuda":
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            total = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            return "nvml", (lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used), total
        import psutil

        proc = psutil.Process()
        return "rss", (lambda: proc.memory_info().rss), psutil.virtual_memory().total

    def __enter__(self) -> MemoryMonitor:
        self.method, read, self.total = self._reader()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.baseline = read()
        self.sampler = _Sampler(read, self.interval_ms / 1000.0)
        self.sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        framework = None
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            framework = torch.cuda.max_memory_allocated() / GIB
        self.sampler.stop()
        self.report = MemoryReport(
            method=self.method,
            peak_gib=self.sampler.peak / GIB,
            total_gib=self.total / GIB,
            baseline_gib=self.baseline / GIB,
            delta_gib=(self.sampler.peak - self.baseline) / GIB,
            framework_peak_gib=framework,
            samples=self.sampler.samples,
            interval_ms=self.interval_ms,
        )
