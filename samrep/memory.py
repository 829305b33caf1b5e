"""Memory measurement: device memory by NVML sampling on GPUs, process RSS on the CPU. A sampling
process keeps the peak of one measured phase, read every `interval_ms` (not a 5 s poll over every
phase: the original's defect 6); torch.cuda.max_memory_allocated is reported beside it."""

import contextlib
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
    # Parent gone (EOF, psutil's NoSuchProcess): exit quietly; one still waiting gets EOFError.
    with contextlib.suppress(Exception):
        read, total = _read_fn(method, target)
        peak, samples = read(), 1
        conn.send((peak, total))  # the baseline
        while not conn.poll(interval_s):  # the poll timeout is the sampling interval
            peak, samples = max(peak, read()), samples + 1
        conn.recv()
        conn.send((max(peak, read()), samples + 1))


def current_nvml_index() -> int:
    """NVML's index of the current CUDA device (NVML numbers every GPU of the host, CUDA the visible
    ones): matched by UUID, else through CUDA_VISIBLE_DEVICES, else the CUDA index itself."""
    import torch

    idx = torch.cuda.current_device()
    with contextlib.suppress(Exception):  # no NVML, no UUID or not found: CUDA_VISIBLE_DEVICES
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(idx).uuid).removeprefix("GPU-")
        return pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}"))
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
        self.method, target = "rss", os.getpid()
        if self.device == "cuda":
            import torch

            if self.index is None:  # this process's GPU, not always GPU 0
                self.index = current_nvml_index()
            self.method, target = "nvml", self.index
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        ctx = multiprocessing.get_context("spawn")  # no fork of a CUDA-initialised process
        self._conn, child = ctx.Pipe()
        args = (self.method, target, self.interval_ms / 1000.0, child)
        self._proc = ctx.Process(target=_sampler_main, args=args, daemon=True)
        # SIGINT stays blocked (across exec too) while the sampler starts, so an early Ctrl-C prints
        # no traceback from its imports; the parent gets its own Ctrl-C when unblocked, right after.
        resource_tracker.ensure_running()  # first: starting it unblocks SIGINT
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
