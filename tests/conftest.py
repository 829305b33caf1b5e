"""Shared fixtures and builders: one tiny model (with its sensitive variant) and one params
factory. Tests never use the network: the hub is forced offline unless a test serves files on
loopback itself."""

import copy
import math
import os
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

# before anything imports transformers, whose progress bars read these once
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from transformers import SamConfig, SamModel  # noqa: E402

from samrep.model import synthetic_init_, tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TEST_PARENTS = ("data", "reports", "build")


def remove_test_folder(path: Path) -> None:
    """Remove a test's own folder (data|reports|build/pytest-*), and only that."""
    path = Path(path).resolve()
    if path.parent in [REPO / p for p in TEST_PARENTS] and path.name.startswith("pytest-"):
        shutil.rmtree(path, ignore_errors=True)


def tiny_sam(seed: int = 0) -> SamModel:
    """The tiny SamModel (`tiny_config()`) with the seeded synthetic init, fp32, eval mode."""
    return synthetic_init_(SamModel(tiny_config()), seed).eval()


@pytest.fixture(scope="session")
def tiny_model():
    return tiny_sam(0)


# The sensitive variant, for the fast engine's equivalence tests: outputs that depend on every
# part of the image encoder. `synthetic_init_` keeps activations sane, but on `tiny_config()`
# (32 wide) its std-0.02 matrices give mask logits of ~1e-4 that barely see the encoder: zeroing
# every rel-pos table moves them by ~3e-7, and an equivalence test on that would pass for almost
# any encoder. `sensitive_tiny_sam` re-draws the matrices with std 1/sqrt(fan_in) and the rel-pos
# tables with std 0.5: logits are O(1) and zeroing the rel-pos tables flips ~6% of mask pixels.


def sensitive_init_(model: torch.nn.Module, seed: int, rel_pos_std: float = 0.5) -> torch.nn.Module:
    """In place: matrices (ndim >= 2, not norms or embedding tables) ~ N(0, 1/fan_in),
    rel-pos tables ~ N(0, rel_pos_std^2); everything else as `synthetic_init_` left it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            path, _, leaf = name.rpartition(".")
            owner = path.rpartition(".")[2]
            if leaf.startswith("rel_pos"):
                param.copy_(torch.randn(param.shape, generator=gen) * rel_pos_std)
            elif leaf == "weight" and param.ndim >= 2 and "norm" not in owner:
                if isinstance(model.get_submodule(path), torch.nn.Embedding):
                    continue
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
    return model


def sensitive_tiny_sam(
    seed: int = 0, attn_implementation: str = "sdpa", config: SamConfig | None = None
) -> SamModel:
    """`tiny_config()` SAM (1 windowed + 1 global block), fp32, eval, sensitive weights."""
    config = config or tiny_config()
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = synthetic_init_(SamModel(config), seed)
    return sensitive_init_(model, seed + 1).eval()


def sample_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """pixel_values (batch, 3, 1024, 1024) ~ N(0, 1) and one point per image (batch, 1, 1, 2)
    uniform in the 1024 frame."""
    gen = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, 1024, 1024, generator=gen)
    points = torch.rand(batch, 1, 1, 2, generator=gen) * 1024
    return pixel_values, points


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data):  # samrep refuses YAML aliases
        return True


def tiny_params(name: str, tag: str | None = None, **over) -> dict:
    """params/tiny.yaml as hw `name`, with its own folders data/<tag> and reports/<tag> (tag:
    pytest-<name> by default), `over` merged in (a list replaces a list)."""
    base = yaml.safe_load((REPO / "params" / "tiny.yaml").read_text())
    tag = tag or f"pytest-{name}"
    own = {"hw": name, "data": {"data_dir": f"data/{tag}"}, "report_dir": f"reports/{tag}"}
    return copy.deepcopy(_merge(_merge(base, own), over))  # callers mutate it


def write_params(folder: Path, name: str, doc: dict | str | bytes) -> Path:
    """`doc` (a dict is dumped as YAML without aliases, which samrep refuses) -> folder/name.yaml."""
    path = Path(folder) / f"{name}.yaml"
    text = yaml.dump(doc, Dumper=_NoAliases, sort_keys=False) if isinstance(doc, dict) else doc
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


class ParamsFactory:
    """Writes params/tiny.yaml with overrides into a private SAMREP_PARAMS_DIR, with private
    data and report folders (data/pytest-*, reports/pytest-*), and loads it."""

    def __init__(self, folder: Path):
        self.folder, self.made = folder, []

    def raw(self, name: str = "t", **over) -> dict:
        tag = f"pytest-{name}-{uuid.uuid4().hex[:6]}"
        self.made += [REPO / "data" / tag, REPO / "reports" / tag]
        return tiny_params(name, tag, **over)

    def write(self, raw: dict | str, name: str = "t") -> Path:
        return write_params(self.folder, name, raw)

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
