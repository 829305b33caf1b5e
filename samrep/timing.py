"""The two timed regions of the case, defined once and used by every backend.

core  = synchronize, host-to-device copy, forward, synchronize (clock read after the first sync
        and after the last): the engine's own speed. p_core = images / sum of core times.
whole = the wall time of the whole measured loop: building each batch from host memory, the core
        region, post-processing to the original image size and scoring against the ground truth
        held in device memory. p_whole = images / whole time.
Warm-up batches run first and are excluded from both. The clock is time.perf_counter.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

CLOCK = "time.perf_counter"


@dataclass
class Timing:
    """Throughput of one measured phase. Times in seconds, throughputs in images/s."""

    images: int
    batches: int
    bs: int
    repeat: int
    warmup_batches: int
    whole_s: float
    core_s: float
    core_batch_ms_median: float
    core_batch_ms_min: float
    core_batch_ms_max: float
    clock: str = CLOCK

    @property
    def p_whole(self) -> float:
        return self.images / self.whole_s

    @property
    def p_core(self) -> float:
        return self.images / self.core_s

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(p_whole=self.p_whole, p_core=self.p_core)
        return d


def core_step(backend, pixel_values: torch.Tensor, input_points: torch.Tensor):
    """One core region: returns ((low_res_masks, iou_scores) on the device, seconds)."""
    backend.synchronize()
    t0 = time.perf_counter()
    pv = pixel_values.to(backend.device, non_blocking=True)
    pts = input_points.to(backend.device, non_blocking=True)
    outputs = backend.run(pv, pts)
    backend.synchronize()
    return outputs, time.perf_counter() - t0


def measure(
    backend,
    dataset,
    repeat: int,
    warmup: int,
    after_batch: Callable[[torch.Tensor, torch.Tensor], None],
    progress=None,
    barrier: Callable[[], None] | None = None,
) -> Timing:
    """Run `repeat` passes over `dataset` through `backend`, timing core and whole.

    after_batch(low_res_masks (B,3,256,256), iou_scores (B,3)) does post-processing and scoring
    inside the whole region. `progress.update()` is called once per batch, outside the core.
    barrier() (several processes: samrep.distributed) runs after the warm-up has synchronised and
    before the timed loop, so every process starts its timed regions together.
    """
    batches = iter(dataset)
    for _ in range(warmup):
        try:
            pv, pts = next(batches)
        except StopIteration:
            batches = iter(dataset)
            pv, pts = next(batches)
        core_step(backend, pv, pts)
    backend.synchronize()
    if barrier is not None:
        barrier()

    core_times: list[float] = []
    t_whole = time.perf_counter()
    for _ in range(repeat):
        for pv, pts in dataset:
            (low_res_masks, iou_scores), seconds = core_step(backend, pv, pts)
            core_times.append(seconds)
            after_batch(low_res_masks, iou_scores)
            if progress is not None:
                progress.update()
    backend.synchronize()
    whole = time.perf_counter() - t_whole

    ms = [t * 1000 for t in core_times]
    return Timing(
        images=len(core_times) * dataset.bs,
        batches=len(core_times),
        bs=dataset.bs,
        repeat=repeat,
        warmup_batches=warmup,
        whole_s=whole,
        core_s=sum(core_times),
        core_batch_ms_median=statistics.median(ms),
        core_batch_ms_min=min(ms),
        core_batch_ms_max=max(ms),
    )
