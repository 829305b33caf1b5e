"""Scale-out with torchrun: one process per GPU (on one host or several) runs samrep.row.run_row
on its share (data.datasize // world_size images) with a `TorchGroup`, which adds:
- in_turn: rank 0 builds first, then the others (a persistent engine or cache is written once);
- alone: rank 0 measures its share alone while the others wait (the single-GPU p_core);
- barrier: after its warm-up every rank waits, so all timed loops start together;
- agree: after every stage all ranks learn whether any failed (then all stop, naming the rank);
- gather: rank 0 receives every rank's timing, scores, memory and validity (samrep.timing.aggregate).
Rank 0 writes the records into a temporary folder that the launcher reads back."""

import argparse
import collections
import json
import os
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from samrep.config import HwParams, RunParams, load_params
from samrep.errors import SamrepError
from samrep.progress import log
from samrep.record import Record, read_record
from samrep.row import RowContext, row_stamp, run_row
from samrep.store import REPO_ROOT, digest, read_json, remove, write_json

NO_MULTICAST = dict(
    NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1"
)  # NVLink multicast off: not every lent machine supports it


def resolve_world_size(params: HwParams) -> int:
    """world_size as a number: "auto" is every visible GPU (1 on a CPU)."""
    if params.world_size != "auto":
        return int(params.world_size)
    return max(1, torch.cuda.device_count()) if params.device == "cuda" else 1


def run_distributed(params: HwParams, runs: list[RunParams], n: int) -> list[Record]:
    """Measure `runs` with n worker_main processes under torchrun ($SAMREP_TORCHRUN_ARGS replaces
    --standalone, for several hosts); one record per row ("failed" ones for a dead launch)."""
    if params.device == "cuda" and n > (gpus := torch.cuda.device_count()):
        raise SamrepError(f"{params.path}: world_size {n}: this host has {gpus} GPU(s)")
    out = params.report_path / f".dist.tmp{os.getpid()}"
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, **NO_MULTICAST, PYTHONPATH=pythonpath)
    rendezvous = shlex.split(os.environ.get("SAMREP_TORCHRUN_ARGS", "")) or ["--standalone"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n)]
    rows = json.dumps([r.key for r in runs])
    worker = ["-m", "samrep.distributed", "--hw", params.hw, "--rows", rows, "--out", str(out)]
    log(f"distributed: torchrun with {n} processes, {len(runs)} row(s)")
    pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    proc = subprocess.Popen([*torchrun, *rendezvous, *worker], cwd=REPO_ROOT, env=env, **pipe)
    tail = collections.deque(maxlen=60)
    for line in proc.stdout:
        sys.stderr.write(line)
        tail.append(line.rstrip())
    rc = proc.wait()
    errors = [ln for ln in tail if "Error" in ln and "ChildFailedError" not in ln]
    why = errors[-1].strip()[:300] if errors else (tail[-1] if tail else "")
    try:
        records = []
        for run in runs:
            path, masks = out / f"{run.key}.json", out / f"{run.key}.npy"
            if path.is_file():
                records.append(rec := read_record(read_json(path), str(path)))
                rec._first_masks = np.load(masks) if masks.is_file() else None
                continue
            gt_stamp = read_json(params.data_path / "manifest.json")["stamp"]
            stamp = digest(row_stamp(params, run, gt_stamp, n))
            reason = f"torchrun exited with code {rc}: {why}"
            failed = dict(status="failed", failed_stage="launch", reason=reason, stamp=stamp)
            records.append(Record(hw=params.hw, key=run.key, row=run.model_dump(), **failed))
        return records
    finally:
        remove(out)


class TorchGroup:
    """The process group a torchrun worker passes to samrep.row.run_row (gloo for host sync)."""

    def __init__(self, dist):  # torch.distributed, initialised
        self.dist, self.rank, self.world_size = dist, dist.get_rank(), dist.get_world_size()
        self.host = dist.new_group(backend="gloo", timeout=timedelta(minutes=30))

    def barrier(self) -> None:
        self.dist.barrier(group=self.host)

    def agree(self, error):
        errors = [None] * self.world_size
        self.dist.all_gather_object(errors, error, group=self.host)
        failed = [(r, e) for r, e in enumerate(errors) if e]
        if not failed:
            return None
        rank, (status, reason, tb) = failed[0]
        return status, f"rank {rank}: {reason}", tb

    def gather(self, obj):
        out = [None] * self.world_size if self.rank == 0 else None
        self.dist.gather_object(obj, out, dst=0, group=self.host)
        return out

    def in_turn(self, fn):
        out = self.alone(fn)  # rank 0 first, then the others
        return out if self.rank == 0 else fn()

    def alone(self, fn):
        out = fn() if self.rank == 0 else None
        self.barrier()
        return out


def worker_main(argv: list[str] | None = None) -> int:
    """One torchrun process: every row with a TorchGroup; rank 0 writes the records."""
    os.environ.update(NO_MULTICAST)  # again, before NCCL starts
    args = argparse.ArgumentParser(prog="samrep.distributed")
    for name in ("--hw", "--rows", "--out"):
        args.add_argument(name, required=True)
    a = args.parse_args(argv)
    params, out = load_params(a.hw), Path(a.out)
    if params.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if params.device == "cuda" else "gloo")
    group, ctx = TorchGroup(dist), RowContext.load(params)
    for run in (r for r in params.runs if r.key in json.loads(a.rows)):
        record = run_row(ctx, run, group)
        if record is None:
            continue  # not rank 0
        write_json(out / f"{run.key}.json", record.dump())  # creates `out`
        if record._first_masks is not None:
            np.save(out / f"{run.key}.npy", record._first_masks.numpy())
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
