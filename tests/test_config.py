"""params/<hw>.yaml: every shipped file loads; every bad file is one SamrepError naming file and key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from samrep.backends import BACKENDS
from samrep.config import PARAMS_DIR, REPO_ROOT, HwParams, load_params
from samrep.errors import SamrepError

SHIPPED = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))


def base_params() -> dict:
    """A valid params mapping (the shipped tiny.yaml), to break one key at a time."""
    return yaml.safe_load((PARAMS_DIR / "tiny.yaml").read_text())


def write(tmp_path: Path, content: dict | str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def expect_error(path: Path, *fragments: str) -> str:
    """load_params(path) must raise SamrepError whose message names the file and every fragment."""
    with pytest.raises(SamrepError) as info:
        load_params(str(path))
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message, message
    return message


def test_shipped_params_are_found():
    assert {"cpu", "tiny", "a100", "h200"} <= set(SHIPPED)


@pytest.mark.parametrize("hw", SHIPPED)
def test_shipped_params_load(hw):
    params = load_params(hw)
    assert isinstance(params, HwParams)
    assert params.hw == hw
    assert params.path == f"params/{hw}.yaml"
    assert params.runs, hw
    assert all(run.backend in BACKENDS for run in params.runs)
    assert all(run.bs <= params.data.datasize for run in params.runs)
    assert params.data_path.is_relative_to(REPO_ROOT)
    assert len(params.sha256) == 64
    # the same file by path gives the same parsed content
    assert load_params(str(PARAMS_DIR / f"{hw}.yaml")).sha256 == params.sha256


def test_relative_yaml_path_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    params = load_params("params/tiny.yaml")
    assert params.hw == "tiny"
    assert params.path == "params/tiny.yaml"


def test_valid_copy_in_tmp_loads(tmp_path):
    """The base of every error test below is itself valid: each error comes from the one change."""
    params = load_params(str(write(tmp_path, base_params(), "ok.yaml")))
    assert params.hw == "tiny"
    assert params.path == str(tmp_path / "ok.yaml")


def test_malformed_yaml(tmp_path):
    path = write(tmp_path, "hw: tiny\ndevice: cpu\nruns: [\n  {backend: torch\n")
    message = expect_error(path, "malformed YAML")
    assert " line " in message


def test_top_level_not_a_mapping(tmp_path):
    expect_error(write(tmp_path, "- just\n- a list\n"), "mapping")


def test_unknown_top_level_key(tmp_path):
    raw = base_params()
    raw["colour"] = "red"
    expect_error(write(tmp_path, raw), "colour", "unknown key")


def test_unknown_nested_key(tmp_path):
    raw = base_params()
    raw["model"]["foo"] = 1
    expect_error(write(tmp_path, raw), "model.foo", "unknown key")


def test_unknown_key_in_a_run(tmp_path):
    raw = base_params()
    raw["runs"][1]["batch"] = 2
    expect_error(write(tmp_path, raw), "runs[1].batch", "unknown key")


def test_wrong_type(tmp_path):
    raw = base_params()
    raw["data"]["datasize"] = "ten"
    expect_error(write(tmp_path, raw), "data.datasize", "expected int", "'ten'")


def test_bool_is_not_an_int(tmp_path):
    raw = base_params()
    raw["data"]["repeat"] = True
    expect_error(write(tmp_path, raw), "data.repeat", "expected int")


def test_wrong_type_bool(tmp_path):
    raw = base_params()
    raw["model"]["allow_synthetic"] = "yes please"
    expect_error(write(tmp_path, raw), "model.allow_synthetic", "expected bool")


def test_unknown_hw_lists_known():
    with pytest.raises(SamrepError) as info:
        load_params("no_such_hw")
    message = str(info.value)
    assert "no_such_hw.yaml" in message
    for hw in SHIPPED:
        assert hw in message


def test_missing_yaml_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(SamrepError) as info:
        load_params(str(path))
    assert str(path) in str(info.value)


def test_unknown_backend_lists_known(tmp_path):
    raw = base_params()
    raw["runs"][0]["backend"] = "warp9"
    message = expect_error(write(tmp_path, raw), "runs[0].backend", "'warp9'")
    for name in BACKENDS:
        assert name in message


def test_unknown_precision(tmp_path):
    raw = base_params()
    raw["runs"][2]["precision"] = "fp64"
    expect_error(write(tmp_path, raw), "runs[2].precision", "fp64")


def test_unknown_arch(tmp_path):
    raw = base_params()
    raw["model"]["arch"] = "vit_z"
    expect_error(write(tmp_path, raw), "model.arch", "vit_z", "vit_h")


@pytest.mark.parametrize("bs", [0, -1])
def test_bs_below_one(tmp_path, bs):
    raw = base_params()
    raw["runs"][0]["bs"] = bs
    expect_error(write(tmp_path, raw), "runs[0].bs", ">= 1")


def test_bs_larger_than_datasize(tmp_path):
    raw = base_params()
    raw["data"]["datasize"] = 4
    raw["runs"][1]["bs"] = 5
    expect_error(write(tmp_path, raw), "runs[1].bs", "data.datasize")


def test_bs_equal_to_datasize_is_fine(tmp_path):
    raw = base_params()
    raw["data"]["datasize"] = 2
    assert max(run["bs"] for run in raw["runs"]) == 2
    assert load_params(str(write(tmp_path, raw))).data.datasize == 2


def test_duplicate_run(tmp_path):
    raw = base_params()
    raw["runs"].append(dict(raw["runs"][0]))
    expect_error(write(tmp_path, raw), "runs", "listed twice")


@pytest.mark.parametrize("data_dir", ["../outside", "/tmp/samrep-elsewhere", "data/../../x"])
def test_data_dir_outside_repo(tmp_path, data_dir):
    raw = base_params()
    raw["data"]["data_dir"] = data_dir
    expect_error(write(tmp_path, raw), "data.data_dir", "outside the repository")


def test_report_dir_outside_repo(tmp_path):
    raw = base_params()
    raw["report_dir"] = "../reports"
    expect_error(write(tmp_path, raw), "report_dir", "outside the repository")


@pytest.mark.parametrize("key", ["hw", "device", "peaks", "runs"])
def test_missing_required_top_level_key(tmp_path, key):
    raw = base_params()
    del raw[key]
    expect_error(write(tmp_path, raw), key, "missing required key")


def test_missing_required_key_in_a_run(tmp_path):
    raw = base_params()
    del raw["runs"][0]["bs"]
    expect_error(write(tmp_path, raw), "runs[0]", "'bs'")


def test_missing_required_key_in_a_peak(tmp_path):
    raw = base_params()
    del raw["peaks"]["fp32"]["source"]
    expect_error(write(tmp_path, raw), "peaks.fp32", "'source'")


def test_empty_runs(tmp_path):
    raw = base_params()
    raw["runs"] = []
    expect_error(write(tmp_path, raw), "runs", "non-empty")


def test_cli_bad_params_is_one_line_exit_2(tmp_path):
    raw = base_params()
    raw["data"]["datasize"] = "ten"
    path = write(tmp_path, raw)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [sys.executable, "-m", "samrep", "groundtruth", "--hw", str(path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("samrep: error:"), lines[0]
    assert str(path) in lines[0] and "data.datasize" in lines[0]
    assert proc.stdout == ""
