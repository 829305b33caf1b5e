"""Shared fixtures: one tiny model and one params factory. Tests never use the network: the hub
is forced offline unless a test serves files on loopback itself."""

import os
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parent.parent
TEST_PARENTS = ("data", "reports", "build")


def remove_test_folder(path: Path) -> None:
    """Remove a test's own folder (data|reports|build/pytest-*), and only that."""
    path = Path(path).resolve()
    if path.parent in [REPO / p for p in TEST_PARENTS] and path.name.startswith("pytest-"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny SamModel with the seeded synthetic init, fp32, eval mode."""
    from transformers import SamModel

    from samrep.model import synthetic_init_, tiny_config

    return synthetic_init_(SamModel(tiny_config()), seed=0).eval()


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data):  # samrep refuses YAML aliases
        return True


class ParamsFactory:
    """Writes params/tiny.yaml with overrides into a private SAMREP_PARAMS_DIR, with private
    data and report folders (data/pytest-*, reports/pytest-*), and loads it."""

    def __init__(self, folder: Path):
        self.folder, self.made = folder, []

    def raw(self, name: str = "t", **over) -> dict:
        base = yaml.safe_load((REPO / "params" / "tiny.yaml").read_text())
        tag = f"pytest-{name}-{uuid.uuid4().hex[:6]}"
        self.made += [REPO / "data" / tag, REPO / "reports" / tag]
        base = _merge(
            base, {"hw": name, "data": {"data_dir": f"data/{tag}"}, "report_dir": f"reports/{tag}"}
        )
        return _merge(base, over)

    def write(self, raw: dict | str, name: str = "t") -> Path:
        path = self.folder / f"{name}.yaml"
        path.write_text(raw if isinstance(raw, str) else yaml.dump(raw, Dumper=_NoAliases))
        return path

    def __call__(self, name: str = "t", **over):
        from samrep.config import load_params

        self.write(self.raw(name, **over), name)
        return load_params(name)


@pytest.fixture
def make_params(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMREP_PARAMS_DIR", str(tmp_path))
    factory = ParamsFactory(tmp_path)
    yield factory
    from samrep.store import confine

    confine()  # a stage confined writes to this test's folders
    for folder in factory.made:
        remove_test_folder(folder)
