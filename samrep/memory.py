"""Memory measurement: device memory by NVML sampling on GPUs, process RSS on the CPU.

A sampling process keeps the peak of one measured phase, read every `interval_ms` (not a 5 s poll
over every phase: the original's defect 6); torch.cuda.max_memory_allocated is reported beside it.
"""

import multiprocessing
import os
import signal
from dataclasses import asdict, dataclass
from multiprocessing import resource_tracker

GIB = 1024**3


@dataclass
class MemoryReport:
    """Peak memory of one measured phase [GiB]; peak / total is the spec's `mem`, delta the peak
    minus the baseline taken just before. method: "nvml" (whole device) or "rss" (this process)."""

    method: str
    peak_gib: float
    total_gib: float
    baseline_gib: float
    delta_gib: float
    framework_peak_gib: float | None  # the framework's allocator peak (None on the CPU)
    samples: int
    interval_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def _read_fn(method: str, target: int):
    """A zero-argument reader of used memory in bytes, and the total, for the sampler process."""
    if method == "nvml":
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(target)
        total = pynvml.nvmlDeviceGetMemoryInfo(handle).total
        return (lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used), total
    import psutil

    proc = psutil.Process(target)
    return (lambda: proc.memory_info().rss), psutil.virtual_memory().total


def _sampler_main(method: str, target: int, interval_s: float, conn) -> None:
    """Sampler process: send (baseline, total), sample until told to stop, send (peak, n)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since its start
    try:
        read, total = _read_fn(method, target)
        baseline = read()
        conn.send((baseline, total))
        peak, samples = baseline, 1
        while not conn.poll(interval_s):  # the poll timeout is the sampling interval
            peak, samples = max(peak, read()), samples + 1
        conn.recv()
        conn.send((max(peak, read()), samples + 1))
    except Exception:  # the parent went away (interrupted, killed: EOF, psutil's NoSuchProcess)
        pass  # exit quietly; a parent still waiting gets EOFError and fails the row


def current_nvml_index() -> int:
    """NVML's index of the current CUDA device (NVML numbers every GPU of the host, CUDA the visible
    ones): matched by UUID, else through CUDA_VISIBLE_DEVICES, else the CUDA index itself."""
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
    if idx < len(visible) and visible[idx].isdigit():
        return int(visible[idx])
    return idx


class MemoryMonitor:
    """`with MemoryMonitor(device, 1.0) as mon: ...; mon.report`. The sampler is a process of its
    own, so a 1 ms sampling loop never competes with the measured code for Python's GIL."""

    def __init__(self, device: str, interval_ms: float = 1.0, device_index: int | None = None):
        self.device, self.interval_ms, self.index = device, interval_ms, device_index
        self.report: MemoryReport | None = None

    def __enter__(self) -> "MemoryMonitor":
        self.method = "nvml" if self.device == "cuda" else "rss"
        if self.method == "nvml" and self.index is None:
            self.index = current_nvml_index()  # this process's GPU, not always GPU 0
        target = self.index if self.method == "nvml" else os.getpid()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        ctx = multiprocessing.get_context("spawn")  # no fork of a CUDA-initialised process
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_sampler_main,
            args=(self.method, target, self.interval_ms / 1000.0, child),
            daemon=True,
        )
        # SIGINT blocked while the sampler starts: a blocked signal stays blocked across exec,
        # so a Ctrl-C in its first second (before it ignores SIGINT) cannot print a traceback
        # from its imports; the parent's own Ctrl-C is delivered when unblocked, right after.
        # (The resource tracker first: starting it unblocks SIGINT.)
        resource_tracker.ensure_running()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
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
        gib = (v / GIB for v in (peak, self.total, self.baseline, peak - self.baseline))
        self.report = MemoryReport(self.method, *gib, framework, samples, self.interval_ms)
