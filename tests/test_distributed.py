"""Scale-out (samrep.distributed): two gloo processes on the CPU with the tiny config, and the
arithmetic, the torchrun command line and the world_size validation without launching."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from samrep.config import REPO_ROOT, RunParams, load_params, parse_world_size
from samrep.distributed import (
    NO_MULTICAST,
    TMP_PREFIX,
    Launch,
    _remove_tmp,
    aggregate,
    launch_env,
    resolve_world_size,
    torchrun_command,
)
from samrep.errors import SamrepError
from tests.folders import safe_rmtree
from tests.test_pipeline import write_params

ROW = {"phase": "infer", "backend": "torch", "precision": "fp32", "bs": 1}


def write_world(tmp_path: Path, world_size, runs=(ROW,), **data) -> Path:
    path = write_params(tmp_path, runs=list(runs), **data)
    raw = yaml.safe_load(path.read_text())
    raw["world_size"] = world_size
    path.write_text(yaml.safe_dump(raw))
    return path


def test_two_gloo_processes_gather_to_one_record(tmp_path, capfd):
    from samrep.evaluate import row_stamp, run_evaluation
    from samrep.groundtruth import run_ground_truth
    from samrep.tables import as_records, scaling_table

    params = load_params(str(write_world(tmp_path, 2, datasize=4, repeat=1)))
    try:
        gt = run_ground_truth(params)
        (rec,) = run_evaluation(params)
        assert rec["status"] == "ok", (rec.get("reason"), rec.get("log_tail"))
        d, m = rec["distributed"], rec["metrics"]
        assert d["world_size"] == 2 and len(d["per_rank"]) == 2
        assert [r["rank"] for r in d["per_rank"]] == [0, 1]
        # Each rank: datasize // 2 = 2 images, 1 pass.
        assert [r["images"] for r in d["per_rank"]] == [2, 2] and d["images"] == 4
        images = sum(r["images"] for r in d["per_rank"])
        slowest_core = max(r["core_s"] for r in d["per_rank"])
        slowest_whole = max(r["whole_s"] for r in d["per_rank"])
        assert d["aggregate_p_core"] == pytest.approx(images / slowest_core)
        assert d["aggregate_p_whole"] == pytest.approx(images / slowest_whole)
        assert m["p_core"] == d["aggregate_p_core"] and m["p_whole"] == d["aggregate_p_whole"]
        for r in d["per_rank"]:
            assert r["p_core"] == pytest.approx(r["images"] / r["core_s"])
            assert r["acc"] >= 0.9999 and r["iou"] >= 0.999  # fp32 against the fp32 reference
        assert d["acc_min"] == min(r["acc"] for r in d["per_rank"]) == m["acc"]
        assert d["iou_min"] == min(r["iou"] for r in d["per_rank"]) == m["iou"]
        assert d["single_gpu_p_core"] > 0
        assert d["scaling_efficiency"] == pytest.approx(
            d["aggregate_p_core"] / (2 * d["single_gpu_p_core"])
        )
        assert m["mem_peak_gib"] == max(r["mem_peak_gib"] for r in d["per_rank"])
        assert d["nvls_disabled"] is True and d["process_group"] == "gloo"
        assert d["environment"] == NO_MULTICAST
        assert d["start_skew_ms"] is not None and d["start_skew_ms"] < 2000
        assert rec["timing"]["images"] == 4 == rec["scores"]["images_scored"]
        assert rec["stamp"]["world_size"] == 2
        assert rec["stamp"] == row_stamp(params, params.runs[0], gt)
        assert (params.report_path / "results" / rec["masks_file"]).is_file()
        table = scaling_table(as_records([rec]))
        assert table.iloc[0]["world size"] == 2
        capfd.readouterr()
        (again,) = run_evaluation(params)
        assert "reusing the result" in capfd.readouterr().err
        assert again == rec
    finally:
        safe_rmtree(params.data_path)
        safe_rmtree(params.report_path)


def test_aggregate_arithmetic():
    per_rank = [
        {"images": 64, "core_s": 2.0, "whole_s": 2.5, "acc": 0.99, "iou": 0.98, "mem_peak_gib": 5},
        {"images": 64, "core_s": 4.0, "whole_s": 5.0, "acc": 0.97, "iou": 0.99, "mem_peak_gib": 7},
    ]
    for i, r in enumerate(per_rank):
        r["start_time"] = 100.0 + 0.001 * i
    agg = aggregate(per_rank, single_gpu_p_core=40.0)
    assert agg["images"] == 128
    assert agg["aggregate_p_core"] == pytest.approx(128 / 4.0)  # the slowest rank paces it
    assert agg["aggregate_p_whole"] == pytest.approx(128 / 5.0)
    assert agg["scaling_efficiency"] == pytest.approx(32.0 / (2 * 40.0))
    assert agg["acc_min"] == 0.97 and agg["iou_min"] == 0.98 and agg["mem_peak_gib_max"] == 7
    assert agg["start_skew_ms"] == pytest.approx(1.0)


def test_torchrun_command_standalone_and_rendezvous_passthrough(tmp_path):
    run = RunParams("fast", "bf16", 32)
    cmd = torchrun_command("p.yaml", [run], tmp_path, Launch(2))
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    assert cmd[5] == "--standalone"
    i = cmd.index("-m", 3)
    assert cmd[i + 1] == "samrep.distributed" and cmd[cmd.index("--out") + 1] == str(tmp_path)
    assert cmd[cmd.index("--params") + 1] == "p.yaml"
    assert '"backend": "fast"' in cmd[cmd.index("--rows") + 1]
    launch = Launch(
        4,
        nnodes="2",
        node_rank=1,
        rdzv_backend="c10d",
        rdzv_endpoint="host0:29500",
        rdzv_id="job7",
        rdzv_conf="timeout=900",
    )
    args = launch.rendezvous_args()
    assert "--standalone" not in args
    assert args == shlex.split(
        "--nnodes 2 --node-rank 1 --rdzv-backend c10d --rdzv-endpoint host0:29500 "
        "--rdzv-id job7 --rdzv-conf timeout=900"
    )


def test_torchrun_args_from_the_environment_and_env(monkeypatch):
    monkeypatch.setenv("SAMREP_TORCHRUN_ARGS", "--nnodes 2 --rdzv-endpoint 'h:1'")
    assert Launch.from_env(8).rendezvous_args() == ["--nnodes", "2", "--rdzv-endpoint", "h:1"]
    monkeypatch.delenv("SAMREP_TORCHRUN_ARGS")
    assert Launch.from_env(8).rendezvous_args() == ["--standalone"]
    env = launch_env({"PATH": "/bin", "NCCL_NVLS_ENABLE": "1"})
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["PATH"] == "/bin"
    assert env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert env["PYTHONPATH"].split(":")[0] == str(REPO_ROOT)


def test_world_size_validation(tmp_path):
    assert parse_world_size(1) == 1 and parse_world_size("auto") == "auto"
    assert parse_world_size("4") == 4
    for bad in (0, -2, "two", 1.5, True):
        with pytest.raises(SamrepError, match="world_size: expected an int >= 1 or 'auto'"):
            parse_world_size(bad, "x.yaml: world_size")
    with pytest.raises(SamrepError, match=r"world_size: expected an int >= 1 or 'auto', got 0"):
        load_params(str(write_world(tmp_path, 0)))
    params = load_params(str(write_world(tmp_path, "auto")))
    assert params.world_size == "auto" and resolve_world_size(params) == 1  # a CPU config
    assert resolve_world_size(load_params("tiny")) == 1
    assert resolve_world_size(load_params("h200x2")) == 2
    assert resolve_world_size(dataclasses.replace(params, world_size=3)) == 3


def test_temporary_folder_cleanup_refuses_other_paths(tmp_path):
    for path in (REPO_ROOT, REPO_ROOT.parent, tmp_path, Path("/tmp")):
        with pytest.raises(RuntimeError, match="refusing to delete"):
            _remove_tmp(path)
    import tempfile

    ok = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    _remove_tmp(ok)
    assert not ok.exists()


def test_a_crashed_launch_is_a_failed_record(tmp_path, monkeypatch):
    from samrep import distributed
    from samrep.groundtruth import run_ground_truth

    params = load_params(str(write_world(tmp_path, 2)))
    try:
        run_ground_truth(params)
        monkeypatch.setattr(
            distributed,
            "_run_tee",
            lambda cmd, env: (1, ["Traceback", "RuntimeError: boom on rank 1", "exitcode  : 1"]),
        )
        (rec,) = distributed.run_distributed(params, list(params.runs))
        assert rec["status"] == "failed" and rec["failed_stage"] == "launch"
        assert rec["reason"] == "torchrun exited with code 1: RuntimeError: boom on rank 1"
        assert rec["stamp"]["world_size"] == 2
    finally:
        safe_rmtree(params.data_path)
        safe_rmtree(params.report_path)


def test_error_line_of_a_killed_worker_names_the_root_cause():
    from samrep.distributed import _error_line

    # torchrun's summary after rank 1 was killed and rank 0 stopped.
    tail = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 2732)  (SIGTERM)
  traceback : Signal 15 (SIGTERM) received by PID 2732
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 2733)
  traceback : Signal 9 (SIGKILL) received by PID 2733""".splitlines()
    assert _error_line(tail) == (
        "rank 1 (local_rank: 1) exited with code -9 (pid: 2733) "
        "(Signal 9 (SIGKILL) received by PID 2733)"
    )
    assert _error_line(["x", "torch.OutOfMemoryError: CUDA out of memory.", *tail]) == (
        "torch.OutOfMemoryError: CUDA out of memory."
    )
