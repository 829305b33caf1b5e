"""Scale-out: the benchmark on several GPUs of one host (or of several hosts) with torchrun.

One process per GPU, each running the same engine on its share of the dataset. Definitions
(used by the record, `bench`, and the report's scaling table):

- share: every rank measures data.datasize // world_size copies of the sample, `repeat` passes,
  after `warmup` untimed batches; the core and whole regions are those of samrep.timing.
- start: after its warm-up has synchronised its device, every rank waits at a host barrier
  (gloo); all ranks leave it together and start their timed loops (timing.measure(barrier=)).
- per rank: p_core = its images / its summed core time; p_whole = its images / its whole loop.
- aggregate p_core = the images of all ranks / the slowest rank's summed core time (aggregate
  p_whole likewise with the slowest whole loop): the N GPUs as one machine, paced by the slowest.
- single-GPU p_core: rank 0 measures the same share alone, in the same run (same build, same
  process), while the other ranks wait; with world size 1 it is the one measurement.
- scaling efficiency = aggregate p_core / (N x single-GPU p_core); 1.0 is perfect scaling.
- acc and IoU are computed on every rank against the ground truth; the record's are the minimum
  over ranks. Memory: every rank samples its own GPU (samrep.memory.current_nvml_index); the
  record's is the largest per-GPU peak. MFU = (aggregate p_core / N) x FLOPs per image / one
  GPU's peak; achieved_tflops is the aggregate of all GPUs.

The launcher (`run_distributed`) runs `python -m torch.distributed.run --nproc-per-node N
(--standalone | rendezvous options) -m samrep.distributed ...` with NVLink SHARP / multicast off
(NO_MULTICAST; the worker sets it again before NCCL starts). Extra torchrun options for several
hosts come from `bench`'s options or the environment variable SAMREP_TORCHRUN_ARGS. Rank 0 writes
one record per row into a temporary folder; the launcher reads them back. Ranks agree after every
stage whether all of them succeeded, so a row that fails on one rank is skipped by all (a
"failed" or "not_run" record naming the rank) instead of hanging; a launch that dies (a crashed
process) becomes a "failed" record with torchrun's exit code and the last error line.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from samrep.config import REPO_ROOT, HwParams, RunParams
from samrep.errors import SamrepError
from samrep.progress import log

# NVLink SHARP (NVLS) / multicast objects off: not every lent machine supports them.
NO_MULTICAST = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
TORCHRUN_ARGS_ENV = "SAMREP_TORCHRUN_ARGS"
TMP_PREFIX = "samrep-dist-"
TIMEOUT = timedelta(minutes=30)  # a collective waits this long (rank 0 measuring alone)
AGGREGATE_DEFINITION = (
    "aggregate p_core = images of all ranks / the slowest rank's summed core time; "
    "scaling_efficiency = aggregate p_core / (world_size x single-GPU p_core)"
)


def resolve_world_size(params: HwParams) -> int:
    """params.world_size as a number: "auto" is every visible GPU (one process on a CPU)."""
    ws = getattr(params, "world_size", 1)
    if ws == "auto":
        if params.device != "cuda":
            return 1
        import torch

        return max(torch.cuda.device_count(), 1)
    return int(ws)


@dataclass(frozen=True)
class Launch:
    """How torchrun starts the processes: N per host, and the rendezvous (default standalone)."""

    nproc_per_node: int
    nnodes: str | None = None  # "2" or "1:4"
    node_rank: int | None = None
    rdzv_backend: str | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    rdzv_conf: str | None = None
    extra: tuple[str, ...] = ()  # further torchrun options, passed as they are

    @classmethod
    def from_env(cls, nproc_per_node: int) -> Launch:
        """N processes here; torchrun options from SAMREP_TORCHRUN_ARGS (several hosts)."""
        return cls(nproc_per_node, extra=tuple(shlex.split(os.environ.get(TORCHRUN_ARGS_ENV, ""))))

    def rendezvous_args(self) -> list[str]:
        args = []
        for flag, value in (
            ("--nnodes", self.nnodes),
            ("--node-rank", self.node_rank),
            ("--rdzv-backend", self.rdzv_backend),
            ("--rdzv-endpoint", self.rdzv_endpoint),
            ("--rdzv-id", self.rdzv_id),
            ("--rdzv-conf", self.rdzv_conf),
        ):
            if value is not None:
                args += [flag, str(value)]
        args += list(self.extra)
        return args or ["--standalone"]  # one host: a private rendezvous on a free port


def params_file(params: HwParams) -> str:
    """The params file the workers load (params.path is relative to the repo root)."""
    p = Path(params.path)
    if p.is_absolute():
        return str(p)
    if (REPO_ROOT / p).is_file():
        return str(REPO_ROOT / p)
    return str(p.resolve())


def torchrun_command(params_path: str, runs: list[RunParams], out: Path, launch: Launch) -> list:
    """The command line of one launch: every row of `runs`, records into `out`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(launch.nproc_per_node),
        *launch.rendezvous_args(),
        "-m",
        "samrep.distributed",
        "--params",
        params_path,
        "--rows",
        json.dumps([dataclasses.asdict(r) for r in runs]),
        "--out",
        str(out),
    ]


def launch_env(base: dict | None = None) -> dict:
    """The launch's environment: this one, multicast off, the repository importable."""
    env = dict(os.environ if base is None else base)
    env.update(NO_MULTICAST)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    return env


def aggregate(per_rank: list[dict], single_gpu_p_core: float) -> dict:
    """The aggregate figures of one row from its per-rank entries (see the module docstring)."""
    n = len(per_rank)
    images = sum(r["images"] for r in per_rank)
    agg_core = images / max(r["core_s"] for r in per_rank)
    starts = [r["start_time"] for r in per_rank if r.get("start_time") is not None]
    return {
        "world_size": n,
        "images": images,
        "aggregate_p_core": agg_core,
        "aggregate_p_whole": images / max(r["whole_s"] for r in per_rank),
        "acc_min": min(r["acc"] for r in per_rank),
        "iou_min": min(r["iou"] for r in per_rank),
        "single_gpu_p_core": single_gpu_p_core,
        "scaling_efficiency": agg_core / (n * single_gpu_p_core),
        "mem_peak_gib_max": max(r["mem_peak_gib"] for r in per_rank),
        "start_skew_ms": 1000 * (max(starts) - min(starts)) if starts else None,
    }


# ---------------------------------------------------------------------------------------------
# Launcher


def _remove_tmp(path: Path) -> None:
    """Remove a launch's temporary folder; refuse anything else (never the repo or a parent)."""
    path = Path(path).resolve()
    tmp = Path(tempfile.gettempdir()).resolve()
    repo = REPO_ROOT.resolve()
    if path.parent != tmp or not path.name.startswith(TMP_PREFIX) or path in (repo, *repo.parents):
        raise RuntimeError(f"refusing to delete {path}: not a {TMP_PREFIX}* folder in {tmp}")
    shutil.rmtree(path, ignore_errors=True)


def _run_tee(cmd: list, env: dict) -> tuple[int, list[str]]:
    """Run `cmd`, echoing its output to stderr; return the exit code and the last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=80)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        tail.append(line.rstrip())
    return proc.wait(), list(tail)


def _error_line(tail: list[str]) -> str:
    """The most telling line of a crashed launch's output: a worker's exception, else torchrun's
    root cause (rank, exit code, signal), else the last line."""
    skip = ("ChildFailedError", "elastic")
    errors = [
        ln.strip()
        for ln in tail
        if re.search(r"^\s*[\w.]*(Error|Exception)\b.*:", ln) and not any(s in ln for s in skip)
    ]
    if errors:
        return errors[-1][:300]
    if any("Root Cause" in ln for ln in tail):
        cause = tail[max(i for i, ln in enumerate(tail) if "Root Cause" in ln) :]
        fields = {}
        for ln in cause:
            m = re.match(r"\s*(rank|exitcode|traceback)\s*:\s*(.*)", ln)
            if m and m.group(1) not in fields:
                fields[m.group(1)] = m.group(2).strip()
        if "exitcode" in fields:
            signal = fields.get("traceback", "")
            return (
                f"rank {fields.get('rank', '?')} exited with code {fields['exitcode']}"
                + (f" ({signal})" if signal.startswith("Signal") else "")
            )[:300]
    lines = [ln.strip() for ln in tail if ln.strip()]
    return lines[-1][:300] if lines else ""


def _launch_record(params, run, gt, launch: Launch, status: str, reason: str, **extra) -> dict:
    from samrep.evaluate import base_record, row_stamp

    record = base_record(params, run, gt)
    record["stamp"] = row_stamp(params, run, gt, world_size=launch.nproc_per_node)
    record.update(status=status, reason=reason, **extra)
    record["distributed"] = {"world_size": launch.nproc_per_node, "nvls_disabled": True}
    return record


def run_distributed(
    params: HwParams, runs: list[RunParams], launch: Launch | None = None
) -> list[dict]:
    """Measure `runs` with torchrun; one record per row (written by rank 0, read back here)."""
    from samrep.groundtruth import load_ground_truth

    launch = launch or Launch.from_env(resolve_world_size(params))
    if params.device == "cuda":
        import torch

        have = torch.cuda.device_count()
        if launch.nproc_per_node > have:
            raise SamrepError(
                f"{params.path}: world_size {launch.nproc_per_node}: this host has {have} GPU(s)"
            )
    gt = load_ground_truth(params)
    out = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    try:
        cmd = torchrun_command(params_file(params), runs, out, launch)
        log(
            f"distributed: {launch.nproc_per_node} process(es) per host, torchrun "
            f"{' '.join(launch.rendezvous_args())}, {len(runs)} row(s)"
        )
        t0 = time.perf_counter()
        rc, tail = _run_tee(cmd, launch_env())
        log(f"distributed: torchrun exited with code {rc} after {time.perf_counter() - t0:.1f} s")
        records = []
        for run in runs:
            path = out / f"{run.key}.json"
            if path.is_file():
                records.append(json.loads(path.read_text()))
            elif rc == 0 and launch.rendezvous_args() != ["--standalone"]:
                records.append(
                    _launch_record(
                        params, run, gt, launch, "not_run", "gathered on another host (rank 0)"
                    )
                )
            else:
                why = _error_line(tail)
                reason = f"torchrun exited with code {rc}" + (f": {why}" if why else "")
                if rc == 0:
                    reason = "torchrun finished without a record for this row"
                records.append(
                    _launch_record(
                        params,
                        run,
                        gt,
                        launch,
                        "failed",
                        reason,
                        failed_stage="launch",
                        log_tail=tail[-30:],
                    )
                )
        return records
    finally:
        _remove_tmp(out)


def print_summary(record: dict) -> None:
    """bench's output of a distributed row: the aggregate line, then one line per rank."""
    if record["status"] != "ok":
        print(f"{record['key']}: {record['status']}: {record['reason']}")
        return
    d, m = record["distributed"], record["metrics"]
    print(
        f"{record['key']} ({record['math_mode']}) on {d['world_size']} x "
        f"{record['environment']['device']}: aggregate p_infer_core "
        f"{d['aggregate_p_core']:.2f} img/s (single GPU {d['single_gpu_p_core']:.2f}, "
        f"scaling efficiency {100 * d['scaling_efficiency']:.1f}%), aggregate p_infer_whole "
        f"{d['aggregate_p_whole']:.2f} img/s, MFU per GPU "
        + (f"{100 * m['mfu']:.2f}%" if m["mfu"] is not None else "n/a")
        + f", acc min {d['acc_min']:.5f}, IoU min {d['iou_min']:.4f}, peak memory per GPU "
        f"{m['mem_peak_gib']:.2f}/{m['mem_total_gib']:.1f} GiB [{d['images']} images]"
    )
    for r in d["per_rank"]:
        print(
            f"  rank {r['rank']} ({r['host']}, {r['device']}): p_core {r['p_core']:.2f} img/s, "
            f"p_whole {r['p_whole']:.2f} img/s, acc {r['acc']:.5f}, IoU {r['iou']:.4f}, "
            f"mem {r['mem_peak_gib']:.2f}/{r['mem_total_gib']:.1f} GiB, {r['images']} images"
        )


# ---------------------------------------------------------------------------------------------
# Worker (one process per GPU, started by torchrun)


@dataclass
class _Ctx:
    rank: int
    world: int
    local_rank: int
    local_world: int
    host: object  # the gloo process group for host-side barriers and gathers


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _stage(ctx: _Ctx, name: str, fn):
    """Run fn() here; every rank learns whether all succeeded -> (value, None) or (None, error).

    error = (status, reason, stage, traceback) of the first failed rank ("failed" before
    "not_run"); every rank gets the same one, so all skip the row together.
    """
    import torch
    import torch.distributed as dist

    from samrep.backends import BackendUnavailable

    value, err = None, None
    try:
        value = fn()
    except BackendUnavailable as exc:
        err = ("not_run", str(exc), name, None)
    except (Exception, torch.cuda.OutOfMemoryError) as exc:
        err = ("failed", _reason(exc), name, traceback.format_exc(limit=8))
    errs = [None] * ctx.world
    dist.all_gather_object(errs, err, group=ctx.host)
    bad = [(r, e) for r, e in enumerate(errs) if e is not None]
    if not bad:
        return value, None
    r, e = min(bad, key=lambda b: (b[1][0] != "failed", b[0]))
    reason = f"rank {r}: {e[1]}" if ctx.world > 1 else e[1]
    if ctx.rank == 0:
        log(f"{name}: {e[0]} on rank {r}: {e[1]}")
    return None, (e[0], reason, name, e[3])


def distributed_row(
    params: HwParams, run: RunParams, gt, model, load_s: float, ctx: _Ctx
) -> dict | None:
    """One row on every rank; rank 0 returns the record, the others None."""
    import torch
    import torch.distributed as dist

    from samrep.backends import get_backend
    from samrep.data import RepeatedDataset
    from samrep.env import environment
    from samrep.evaluate import PEAK_KEY, base_record, flops_record, mask_scorer, row_stamp
    from samrep.flops import ORIGINAL_FLOPS_PER_IMAGE, mfu, sam_flops
    from samrep.memory import MemoryMonitor
    from samrep.progress import Progress
    from samrep.results import results_dir, save_masks
    from samrep.timing import measure

    record = base_record(params, run, gt)
    record["stamp"] = row_stamp(params, run, gt, world_size=ctx.local_world)
    if ctx.world != ctx.local_world:
        record["stamp"]["world_size_total"] = ctx.world
    record["environment"] = environment(params.device)
    share = params.data.datasize // ctx.world
    cuda = params.device == "cuda"
    state: dict = {}

    def lookup():
        if share < run.bs:
            raise ValueError(
                f"data.datasize {params.data.datasize} // world_size {ctx.world} = {share} "
                f"images per rank is less than bs {run.bs}"
            )
        cls = get_backend(run.backend)
        cls.check_available(params.device, run.precision)
        state["cls"] = cls

    def build():
        t0 = time.perf_counter()
        backend = state["cls"](
            params.device, run.precision, run.options, params.data_path / "engines", bs=run.bs
        )
        backend.build(model, gt.inputs)
        backend.synchronize()
        state["backend"], state["build_s"] = backend, time.perf_counter() - t0

    def measure_share(label: str, barrier=None) -> dict:
        backend = state["backend"]
        dataset = RepeatedDataset(gt.inputs, share, run.bs, pin_memory=cuda)
        after_batch, score, first = mask_scorer(gt, backend.device)

        total = len(dataset) * params.data.repeat
        progress = Progress(f"{run.key}: {label}", total) if ctx.rank == 0 else None
        t0 = time.perf_counter()
        timing = measure(
            backend, dataset, params.data.repeat, params.data.warmup, after_batch, progress, barrier
        )
        seconds = time.perf_counter() - t0
        if progress is not None:
            progress.close()
        return {"timing": timing, "scores": score.result(), "first": first, "seconds": seconds}

    starts: list[float] = []

    def barrier():
        dist.barrier(group=ctx.host)
        starts.append(time.time())

    def stages():
        _, err = _stage(ctx, "lookup", lookup)
        if err:
            return err
        if ctx.rank == 0:
            others = f", then on the other {ctx.world - 1} rank(s)" if ctx.world > 1 else ""
            log(f"{run.key}: building on rank 0{others}")
        # Rank 0 builds first (it writes any persistent engine or cache); the others then read it.
        for first_turn in (True, False):
            if ctx.world == 1 and not first_turn:
                break
            mine = (ctx.rank == 0) == first_turn
            _, err = _stage(ctx, "build", build if mine else lambda: None)
            if err:
                return err
        if ctx.world > 1:
            # The single-GPU figure: rank 0 alone, the others wait in the agreement.
            alone = (lambda: measure_share("measuring alone")) if ctx.rank == 0 else lambda: None
            state["single"], err = _stage(ctx, "measure", alone)
            if err:
                return err
        state["together"], err = _stage(
            ctx, "measure", lambda: measure_share(f"measuring on {ctx.world} ranks", barrier)
        )
        return err

    with MemoryMonitor(params.device, params.memory_sample_ms) as mon:
        err = stages()
    if err:
        status, reason, stage, tb = err
        record.update(status=status, reason=reason)
        if status == "failed":
            record.update(failed_stage=stage, traceback=tb)
        record["distributed"] = {"world_size": ctx.world, "nvls_disabled": _nvls_disabled()}
        state.clear()
        if cuda:
            torch.cuda.empty_cache()
        return record if ctx.rank == 0 else None

    mine = state["together"]
    t, scores, rep = mine["timing"], mine["scores"], mon.report
    entry = {
        "rank": ctx.rank,
        "local_rank": ctx.local_rank,
        "host": socket.gethostname(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "nvml_index": mon.index if cuda else None,
        "images": t.images,
        "batches": t.batches,
        "core_s": t.core_s,
        "whole_s": t.whole_s,
        "p_core": t.p_core,
        "p_whole": t.p_whole,
        "core_batch_ms_median": t.core_batch_ms_median,
        "acc": scores["acc"],
        "iou": scores["iou"],
        "scores": scores,
        "mem_peak_gib": rep.peak_gib,
        "mem_total_gib": rep.total_gib,
        "mem_delta_gib": rep.delta_gib,
        "mem_framework_peak_gib": rep.framework_peak_gib,
        "memory": rep.to_dict(),
        "build_s": state["build_s"],
        "start_time": starts[0] if starts else None,
    }
    per_rank = [None] * ctx.world
    dist.all_gather_object(per_rank, entry, group=ctx.host)
    if ctx.rank != 0:
        state.clear()
        return None

    single = state.get("single") or mine
    agg = aggregate(per_rank, single["timing"].p_core)
    backend = state["backend"]
    flops = sam_flops(model.config, points_per_image=1, batch_size=run.bs)
    peak = params.peaks.get(PEAK_KEY[run.precision])
    per_gpu = agg["aggregate_p_core"] / ctx.world
    worst = max(per_rank, key=lambda r: r["mem_peak_gib"])
    lowest = min(per_rank, key=lambda r: r["acc"])
    frameworks = [r["mem_framework_peak_gib"] for r in per_rank]
    metrics = {
        "p_whole": agg["aggregate_p_whole"],
        "p_core": agg["aggregate_p_core"],
        "acc": agg["acc_min"],
        "iou": agg["iou_min"],
        "mem_peak_gib": worst["mem_peak_gib"],
        "mem_total_gib": worst["mem_total_gib"],
        "mem_delta_gib": max(r["mem_delta_gib"] for r in per_rank),
        "mem_framework_peak_gib": None if None in frameworks else max(frameworks),
        "mfu": mfu(per_gpu, flops.total, peak.flops) if peak else None,
        "mfu_original": (
            mfu(per_gpu, ORIGINAL_FLOPS_PER_IMAGE, peak.flops)
            if peak and params.model.arch == "vit_h"
            else None
        ),
        "achieved_tflops": agg["aggregate_p_core"] * flops.total / 1e12,
    }
    timing = t.to_dict()
    timing.update(
        images=agg["images"],
        batches=sum(r["batches"] for r in per_rank),
        core_s=max(r["core_s"] for r in per_rank),
        whole_s=max(r["whole_s"] for r in per_rank),
        p_core=agg["aggregate_p_core"],
        p_whole=agg["aggregate_p_whole"],
        images_per_rank=[r["images"] for r in per_rank],
    )
    record.update(
        status="ok",
        math_mode=backend.math_mode,
        metrics=metrics,
        scores={**lowest["scores"], "images_scored": sum(r["images"] for r in per_rank)},
        timing=timing,
        memory=worst["memory"],
        flops={
            **flops_record(flops, peak, run, params),
            "mfu_basis": "aggregate p_core / world_size against one GPU's peak",
        },
        stage_times={
            "load_s": load_s,
            "export_s": backend.export_info.export_s if backend.export_info else 0.0,
            "build_s": max(r["build_s"] for r in per_rank),
            "single_gpu_measure_s": state["single"]["seconds"] if "single" in state else 0.0,
            "measure_s": mine["seconds"],
        },
        versions=backend.versions(),
        masks_file=f"{run.key}.masks.npz",
        distributed={
            **agg,
            "per_rank": per_rank,
            "share_per_rank": share,
            "single_gpu_p_whole": single["timing"].p_whole,
            "single_gpu_acc": single["scores"]["acc"],
            "nnodes": ctx.world // max(ctx.local_world, 1),
            "process_group": dist.get_backend(),
            "nvls_disabled": _nvls_disabled(),
            "environment": {k: os.environ.get(k) for k in NO_MULTICAST},
            "definition": AGGREGATE_DEFINITION,
        },
    )
    save_masks(results_dir(params.report_path) / record["masks_file"], mine["first"][0].numpy())
    log(
        f"{run.key}: aggregate p_core {agg['aggregate_p_core']:.2f} img/s on {ctx.world} ranks "
        f"(single {agg['single_gpu_p_core']:.2f}, efficiency "
        f"{100 * agg['scaling_efficiency']:.1f}%), acc min {agg['acc_min']:.5f}"
    )
    state.clear()
    return record


def _nvls_disabled() -> bool:
    return os.environ.get("NCCL_NVLS_ENABLE") == "0"


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of one torchrun process: every row, rank 0 writes the records."""
    ap = argparse.ArgumentParser(prog="python -m samrep.distributed")
    ap.add_argument("--params", required=True, help="params YAML file")
    ap.add_argument("--rows", required=True, help="JSON list of rows (RunParams fields)")
    ap.add_argument("--out", required=True, help="folder for rank 0's records")
    args = ap.parse_args(argv)
    os.environ.update(NO_MULTICAST)  # again, before NCCL starts

    import torch
    import torch.distributed as dist

    from samrep.config import load_params
    from samrep.evaluate import release_device_memory
    from samrep.groundtruth import load_ground_truth, load_params_model
    from samrep.results import atomic_write_json

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    params = load_params(args.params)
    runs = [RunParams(**r) for r in json.loads(args.rows)]
    if params.device == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=torch.device("cuda", local_rank))
        host = dist.new_group(backend="gloo", timeout=TIMEOUT)
        # NCCL works (with NVLS off) before anything is measured.
        one = torch.ones(1, device="cuda")
        dist.all_reduce(one)
        torch.cuda.synchronize()
        assert int(one.item()) == world, f"NCCL all_reduce gave {one.item()}, expected {world}"
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
        host = dist.group.WORLD
    ctx = _Ctx(rank, world, local_rank, local_world, host)
    if rank == 0:
        log(
            f"distributed: {world} rank(s), {dist.get_backend()} + gloo, "
            f"NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE')}"
        )
    try:
        gt = load_ground_truth(params)
        t0 = time.perf_counter()
        model, _ = load_params_model(params)
        load_s = time.perf_counter() - t0
        for i, run in enumerate(runs):
            if rank == 0:
                log(f"row {i + 1}/{len(runs)}: {run.key} on {world} rank(s)")
            record = distributed_row(params, run, gt, model, load_s, ctx)
            if record is not None:
                atomic_write_json(Path(args.out) / f"{run.key}.json", record)
            release_device_memory(params.device)
        dist.barrier(group=host)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
