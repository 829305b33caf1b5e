"""Hardware configs: `params/<hw>.yaml` loaded into frozen dataclasses and validated.

An unknown key, a wrong type, a missing file or an unknown backend is a `SamrepError` whose
message names the file and the key. Paths in the file are relative to the repo root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from samrep.errors import SamrepError

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_DIR = REPO_ROOT / "params"
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")
PHASES = ("val", "infer")


@dataclass(frozen=True)
class Peak:
    """A device's dense peak at one precision, in FLOP/s, with where the figure comes from."""

    flops: float
    source: str


@dataclass(frozen=True)
class ModelParams:
    arch: str = "vit_h"  # a key of samrep.model.ARCHITECTURES
    weights: str = "facebook/sam-vit-huge"  # hub id or a local folder (save_pretrained)
    allow_synthetic: bool = True  # fall back to seeded synthetic weights when not available
    seed: int = 0
    attn_implementation: str = "sdpa"  # "sdpa" (HF default) or "eager"


@dataclass(frozen=True)
class DataParams:
    data_dir: str = "data/cpu"  # ground truth, inputs and caches for this hw
    datasize: int = 1000  # copies of the one sample in the throughput dataset
    repeat: int = 5  # passes over the dataset per phase
    warmup: int = 2  # batches run before timing starts (excluded from every figure)
    # "auto" (car.png, else the offline fallback), "car", "fallback", or the path of an image
    # inside data_dir (relative to the repo root), whose prompt point is then `point`.
    image: str = "auto"
    point: list = field(default_factory=list)  # [x, y] in original pixels (a path image only)
    # Validity of every measurement (each result says whether it met them; none is dropped):
    min_iterations: int = 5  # timed batches per measurement, at least
    min_seconds: float = 1.0  # summed core time per measurement, at least
    measure_repeats: int = 1  # measurements per row (built once); median [min-max] reported


@dataclass(frozen=True)
class RunParams:
    """One row of the benchmark: a backend at a precision and batch size in a phase."""

    backend: str
    precision: str
    bs: int
    phase: str = "infer"  # "val" (the PyTorch reference phase) or "infer" (an engine)
    options: dict = field(default_factory=dict)  # backend-specific build options

    @property
    def key(self) -> str:
        """File-name key of this row's result: <phase>-<backend>-<precision>-bs<bs>."""
        return f"{self.phase}-{self.backend}-{self.precision}-bs{self.bs}"


@dataclass(frozen=True)
class HwParams:
    hw: str
    description: str
    device: str  # torch device type: "cpu" or "cuda"
    requires: str  # substring the device name must contain ("" for any), e.g. "A100"
    peaks: dict[str, Peak]
    model: ModelParams
    data: DataParams
    runs: tuple[RunParams, ...]
    memory_sample_ms: float = 1.0  # NVML / RSS sampling interval
    report_dir: str = ""  # defaults to reports/<hw>
    path: str = ""  # the file this came from
    sha256: str = ""  # hash of the file's parsed content (stage stamps)
    # Processes (GPUs) on this host: an int >= 1 or "auto" (all visible GPUs); > 1 runs the rows
    # with torchrun (samrep.distributed).
    world_size: int | str = 1

    @property
    def data_path(self) -> Path:
        return resolve_inside(self.data.data_dir, "data.data_dir", self.path)

    @property
    def report_path(self) -> Path:
        return resolve_inside(self.report_dir or f"reports/{self.hw}", "report_dir", self.path)

    @property
    def weights_path(self) -> Path | None:
        """model.weights as a local folder (inside data_dir), or None for a hub id / synthetic."""
        if not is_local_path(self.model.weights):
            return None
        return resolve_within(self.model.weights, "model.weights", self.path, self.data_path)

    @property
    def image_path(self) -> Path | None:
        """data.image as a file (inside data_dir), or None for auto / car / fallback."""
        if self.data.image in IMAGE_CHOICES:
            return None
        return resolve_within(self.data.image, "data.image", self.path, self.data_path)


IMAGE_CHOICES = ("auto", "car", "fallback")
# Folders of the repository that hold code or configuration: never an output folder.
SOURCE_DIRS = (".git", "samrep", "params", "notebooks", "tests", "tools")


def is_local_path(weights: str) -> bool:
    """Is model.weights a local folder (not a hub id such as facebook/sam-vit-huge)?"""
    return bool(weights) and (weights.startswith((".", "/", "~")) or (REPO_ROOT / weights).is_dir())


def resolve_inside(rel: str, key: str, where: str) -> Path:
    """An output folder of the params, relative to the repo root: inside the repo, and neither
    the repo root itself nor one of its code folders (results must not overwrite sources)."""
    root = REPO_ROOT.resolve()
    p = (REPO_ROOT / rel).resolve()
    if root not in p.parents:
        if p == root:
            raise SamrepError(f"{where}: {key} = '{rel}' is the repository root itself")
        raise SamrepError(f"{where}: {key} = '{rel}' points outside the repository")
    top = p.relative_to(root).parts[0]
    if top in SOURCE_DIRS:
        raise SamrepError(f"{where}: {key} = '{rel}' is inside the code folder '{top}/'")
    return p


def resolve_within(rel: str, key: str, where: str, folder: Path) -> Path:
    """An input path of the params, relative to the repo root: it must stay inside `folder`."""
    p = (REPO_ROOT / Path(rel).expanduser()).resolve()
    if folder != p and folder not in p.parents:
        shown = folder.relative_to(REPO_ROOT.resolve())
        raise SamrepError(f"{where}: {key} = '{rel}' is outside data.data_dir ({shown}/)")
    return p


def _check_type(value, annotation, where: str):
    """Check (and lightly coerce: int -> float) a YAML value against a dataclass annotation."""
    origin = typing.get_origin(annotation)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads "3.3e11" (no dot) as a string; accept it as the number it is.
        try:
            return float(value)
        except ValueError:
            raise SamrepError(f"{where}: expected a number, got {value!r}") from None
    if annotation in (int, float, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise SamrepError(
                f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise SamrepError(f"{where}: expected a mapping, got {type(value).__name__}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    return value


def _build(cls, raw, where: str):
    """Make dataclass `cls` from mapping `raw`; unknown keys and bad types name `where.key`."""
    if not isinstance(raw, dict):
        raise SamrepError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise SamrepError(f"{where}.{unknown[0]}: unknown key (allowed: {sorted(names)})")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise SamrepError(f"{where}: {exc}") from None


def _check_image(data: DataParams, where: str) -> None:
    """data.image is a choice, or a path with its prompt point data.point = [x, y]."""
    if data.image in IMAGE_CHOICES:
        if data.point:
            raise SamrepError(
                f"{where}: data.point: only for an image path (data.image = '{data.image}' "
                "has its own point)"
            )
        return
    if not data.image:
        raise SamrepError(f"{where}: data.image: empty (one of auto, car, fallback, or a path)")
    point = data.point
    if (
        not isinstance(point, list)
        or len(point) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)
    ):
        raise SamrepError(
            f"{where}: data.point: an image path needs its prompt point [x, y], got {point!r}"
        )


def _check_precision(run: RunParams, where: str) -> None:
    """The precision must be one the backend has at all (whether it runs *here* is checked at
    run time: a "not run" row). A backend whose module cannot be imported is left to that."""
    from samrep.backends import BackendUnavailable, get_backend

    try:
        cls = get_backend(run.backend)
    except BackendUnavailable:
        return
    if run.precision not in cls.precisions:
        raise SamrepError(
            f"{where}: backend '{run.backend}' has no {run.precision} mode "
            f"(has {', '.join(cls.precisions)})"
        )


def load_params(hw: str) -> HwParams:
    """Load and validate `params/<hw>.yaml` (or a path to a YAML file)."""
    from samrep.backends import BACKENDS  # the registry; no toolkit is imported here

    path = Path(hw) if hw.endswith((".yaml", ".yml")) else PARAMS_DIR / f"{hw}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))
        raise SamrepError(f"{path}: no such params file (known hw: {', '.join(known)})")
    resolved = path.resolve()
    where = str(resolved.relative_to(REPO_ROOT) if resolved.is_relative_to(REPO_ROOT) else path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise SamrepError(f"{where}:{at} malformed YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise SamrepError(f"{where}: expected a mapping at the top level")

    top = {
        "hw",
        "description",
        "device",
        "requires",
        "peaks",
        "model",
        "data",
        "runs",
        "memory_sample_ms",
        "report_dir",
        "world_size",
    }
    unknown = sorted(set(raw) - top)
    if unknown:
        raise SamrepError(f"{where}: {unknown[0]}: unknown key (allowed: {sorted(top)})")
    for key in ("hw", "device", "peaks", "runs"):
        if key not in raw:
            raise SamrepError(f"{where}: {key}: missing required key")

    def typed(key, t, default):
        return _check_type(raw.get(key, default), t, f"{where}: {key}")

    device = typed("device", str, "cpu")
    if device not in ("cpu", "cuda"):
        raise SamrepError(f"{where}: device: '{device}' is not one of cpu, cuda")
    peaks = {}
    if not isinstance(raw["peaks"], dict):
        raise SamrepError(f"{where}: peaks: expected a mapping of precision -> {{flops, source}}")
    for prec, entry in raw["peaks"].items():
        if prec not in PRECISIONS:
            raise SamrepError(f"{where}: peaks.{prec}: unknown precision (known: {PRECISIONS})")
        peaks[prec] = _build(Peak, entry, f"{where}: peaks.{prec}")
    model = _build(ModelParams, raw.get("model", {}), f"{where}: model")
    data = _build(DataParams, raw.get("data", {}), f"{where}: data")
    for key in ("datasize", "repeat", "min_iterations", "measure_repeats"):
        if getattr(data, key) < 1:
            raise SamrepError(f"{where}: data.{key}: must be >= 1, got {getattr(data, key)}")
    for key in ("warmup", "min_seconds"):
        if getattr(data, key) < 0:
            raise SamrepError(f"{where}: data.{key}: must be >= 0, got {getattr(data, key)}")
    _check_image(data, where)
    from samrep.model import ARCHITECTURES

    if model.arch not in ARCHITECTURES:
        raise SamrepError(f"{where}: model.arch: unknown '{model.arch}' ({list(ARCHITECTURES)})")
    if model.attn_implementation not in ("sdpa", "eager"):
        raise SamrepError(f"{where}: model.attn_implementation: '{model.attn_implementation}'")

    if not isinstance(raw["runs"], list) or not raw["runs"]:
        raise SamrepError(f"{where}: runs: expected a non-empty list of runs")
    runs = []
    for i, entry in enumerate(raw["runs"]):
        run = _build(RunParams, entry, f"{where}: runs[{i}]")
        if run.backend not in BACKENDS:
            raise SamrepError(
                f"{where}: runs[{i}].backend: unknown backend '{run.backend}' "
                f"(known: {', '.join(sorted(BACKENDS))})"
            )
        if run.precision not in PRECISIONS:
            raise SamrepError(
                f"{where}: runs[{i}].precision: unknown '{run.precision}' (known: {PRECISIONS})"
            )
        if run.phase not in PHASES:
            raise SamrepError(f"{where}: runs[{i}].phase: '{run.phase}' is not one of {PHASES}")
        if run.bs < 1:
            raise SamrepError(f"{where}: runs[{i}].bs: must be >= 1, got {run.bs}")
        if run.bs > data.datasize:
            raise SamrepError(
                f"{where}: runs[{i}].bs: {run.bs} is larger than data.datasize {data.datasize}"
            )
        _check_precision(run, f"{where}: runs[{i}].precision")
        runs.append(run)
    keys = [r.key for r in runs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup:
        raise SamrepError(f"{where}: runs: '{dup}' is listed twice")

    params = HwParams(
        hw=typed("hw", str, ""),
        description=typed("description", str, ""),
        device=device,
        requires=typed("requires", str, ""),
        peaks=peaks,
        model=model,
        data=data,
        runs=tuple(runs),
        memory_sample_ms=typed("memory_sample_ms", float, 1.0),
        report_dir=typed("report_dir", str, ""),
        world_size=parse_world_size(raw.get("world_size", 1), f"{where}: world_size"),
        path=where,
        sha256=hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest(),
    )
    params.weights_path  # noqa: B018  (a local weights folder stays inside data_dir)
    params.image_path  # noqa: B018  (an image file stays inside data_dir)
    if params.hw != path.stem and not hw.endswith((".yaml", ".yml")):
        raise SamrepError(f"{where}: hw: '{params.hw}' does not match the file name '{path.stem}'")
    params.data_path  # noqa: B018  (validates that the paths stay inside the repo)
    params.report_path  # noqa: B018
    return params


def parse_world_size(value, where: str = "world_size") -> int | str:
    """world_size: an int >= 1 or "auto" (every visible GPU; one process on a CPU)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SamrepError(f"{where}: expected an int >= 1 or 'auto', got {value!r}")
    return value
