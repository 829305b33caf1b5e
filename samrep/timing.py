"""The two timed regions of the case, defined once for every backend and process.

core  = sync, host-to-device copy, forward, sync (clock read after each sync): the engine's speed;
        p_core = images / sum of core times [img/s]; latency = each batch's core time [ms].
whole = wall time of the measured loop: batches from host memory, core, post-processing to the
        original size, scoring on the device; p_whole = images / whole. Warm-up runs outside both.
Percentiles are nearest-rank over the timed batches; the clock is time.perf_counter."""

import math
import time
from dataclasses import asdict, dataclass

CLOCK = "time.perf_counter"


@dataclass
class Timing:
    """One measurement: seconds, images/s, and each timed batch's core time in ms."""

    images: int
    batches: int
    bs: int
    repeat: int
    warmup_batches: int
    whole_s: float
    core_s: float
    batch_ms: list[float]

    @property
    def p_whole(self) -> float:
        return self.images / self.whole_s

    @property
    def p_core(self) -> float:
        return self.images / self.core_s

    def to_dict(self) -> dict:
        d, ms = {k: v for k, v in asdict(self).items() if k != "batch_ms"}, sorted(self.batch_ms)
        lat = {f"p{q}": ms[min(len(ms), math.ceil(q / 100 * len(ms))) - 1] for q in (50, 90, 99)}
        lat |= {"min": ms[0], "max": ms[-1]}
        return d | {"p_core": self.p_core, "p_whole": self.p_whole, "latency_ms": lat}


def core_step(backend, pv, pts):
    """One core region on a host batch (pixel values, points) -> ((masks, iou_scores), seconds)."""
    backend.synchronize()
    t0, device = time.perf_counter(), backend.device
    outputs = backend.run(pv.to(device, non_blocking=True), pts.to(device, non_blocking=True))
    backend.synchronize()
    return outputs, time.perf_counter() - t0


def measure(
    backend, dataset, repeat: int, warmup: int, after_batch, progress=None, barrier=None, meter=None
) -> Timing:
    """Run `repeat` passes over `dataset` through `backend`, timing core and whole. Inside whole,
    after_batch(low_res_masks (B,3,256,256), iou_scores (B,3)) post-processes and scores; barrier()
    (multi-process) starts each timed loop together; meter.start()/stop() (energy) bracket it."""
    batches, done = iter(dataset), backend.warm_batches  # batches of this shape already run
    for _ in range(warmup - done):
        pv, pts = next(batches, None) or next(iter(dataset))
        core_step(backend, pv, pts)
    backend.synchronize()
    if barrier is not None:
        barrier()
    if meter is not None:
        meter.start()
    core_times, t_whole = [], time.perf_counter()
    for _ in range(repeat):
        for pv, pts in dataset:
            (low_res_masks, iou_scores), seconds = core_step(backend, pv, pts)
            core_times.append(seconds)
            after_batch(low_res_masks, iou_scores)
            if progress is not None:
                progress.update()
    backend.synchronize()
    whole = time.perf_counter() - t_whole
    if meter is not None:
        meter.stop()
    n, ms = len(core_times), [t * 1000 for t in core_times]
    warm = max(warmup, done)
    return Timing(n * dataset.bs, n, dataset.bs, repeat, warm, whole, sum(core_times), ms)


def aggregate(per_rank: list[dict], single_p_core: float | None) -> dict:
    """Several processes measured at once (per_rank: each rank's Timing.to_dict()): aggregate
    p_core = images of all ranks / the slowest rank's summed core time (likewise p_whole);
    scaling efficiency = aggregate p_core / (ranks x the single-process p_core)."""
    n, images = len(per_rank), sum(r["images"] for r in per_rank)
    agg = images / max(r["core_s"] for r in per_rank)
    return {
        "world_size": n,
        "aggregate_p_core": agg,
        "aggregate_p_whole": images / max(r["whole_s"] for r in per_rank),
        "single_p_core": single_p_core,
        "scaling_efficiency": agg / (n * single_p_core) if single_p_core else None,
    }
