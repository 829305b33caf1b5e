"""Memory measurement: device memory by NVML sampling on GPUs, process RSS on the CPU.

A sampling process reads the figure every `interval_ms` and keeps the peak, so the peak of one
measured phase is known, not a whole-device poll every 5 s over every phase (the original's
defect 6). The framework's own peak (torch.cuda.max_memory_allocated) is reported beside it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import asdict, dataclass

GIB = 1024**3


@dataclass
class MemoryReport:
    """Peak memory of one measured phase, in GiB; peak_gib / total_gib is the spec's `mem`."""

    method: str  # "nvml" (whole-device used memory, sampled) or "rss" (this process's resident set)
    peak_gib: float
    total_gib: float
    baseline_gib: float  # idle, taken just before the phase
    delta_gib: float  # peak minus baseline
    framework_peak_gib: float | None  # the framework's own allocator peak (None on the CPU)
    samples: int
    interval_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def _sampler_main(method: str, target: int, interval_s: float, conn) -> None:
    """Sampler process: send (baseline, total), sample until told to stop, send (peak, n)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if method == "nvml":  # target: the NVML index
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(target)
        info = pynvml.nvmlDeviceGetMemoryInfo
        read, total = (lambda: info(handle).used), info(handle).total
    else:  # target: the pid
        import psutil

        proc = psutil.Process(target)
        read, total = (lambda: proc.memory_info().rss), psutil.virtual_memory().total
    baseline = read()
    try:
        conn.send((baseline, total))
        peak, samples = baseline, 1
        while not conn.poll(interval_s):  # the poll timeout is the sampling interval
            peak, samples = max(peak, read()), samples + 1
        conn.recv()
        conn.send((max(peak, read()), samples + 1))
    except (EOFError, OSError):  # the parent went away (interrupted): exit quietly
        pass


def current_nvml_index() -> int:
    """NVML's index of the current CUDA device (NVML numbers every GPU of the host, ignoring
    CUDA_VISIBLE_DEVICES): matched by UUID, else through CUDA_VISIBLE_DEVICES, else the CUDA one."""
    import torch

    idx = torch.cuda.current_device()
    try:
        import pynvml

        uuid = str(torch.cuda.get_device_properties(idx).uuid).lower().removeprefix("gpu-")
        pynvml.nvmlInit()
        for i in range(pynvml.nvmlDeviceGetCount()):
            nv = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            nv = (nv.decode() if isinstance(nv, bytes) else nv).lower().removeprefix("gpu-")
            if uuid and nv == uuid:
                return i
    except Exception:  # no NVML or no UUID: fall back to CUDA_VISIBLE_DEVICES
        pass
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    return int(visible[idx]) if idx < len(visible) and visible[idx].isdigit() else idx


class MemoryMonitor:
    """`with MemoryMonitor(device, 1.0) as mon: ...; mon.report`. The sampler runs in its own
    process, so a 1 ms sampling loop never competes with the measured code for Python's GIL."""

    def __init__(self, device: str, interval_ms: float = 1.0, device_index: int | None = None):
        self.device, self.interval_ms, self.index = device, interval_ms, device_index
        self.report: MemoryReport | None = None

    def __enter__(self) -> MemoryMonitor:
        cuda = self.device == "cuda"
        self.method = "nvml" if cuda else "rss"
        if cuda:
            import torch

            if self.index is None:
                self.index = current_nvml_index()  # this process's GPU, not always GPU 0
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        ctx = multiprocessing.get_context("spawn")  # no fork of a CUDA-initialised process
        self._conn, child = ctx.Pipe()
        args = (self.method, self.index if cuda else os.getpid(), self.interval_ms / 1000.0, child)
        self._proc = ctx.Process(target=_sampler_main, args=args, daemon=True)
        self._proc.start()
        self.baseline, self.total = self._conn.recv()
        return self

    def __exit__(self, *exc) -> None:
        framework = None
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            framework = torch.cuda.max_memory_allocated() / GIB
        self._conn.send("stop")
        peak, samples = self._conn.recv()
        self._proc.join(timeout=10)
        gib = [x / GIB for x in (peak, self.total, self.baseline, peak - self.baseline)]
        self.report = MemoryReport(self.method, *gib, framework, samples, self.interval_ms)
