"""Hardware configs: `params/<hw>.yaml` as declared pydantic schemas.

Every error is one SamrepError line naming the file and key path (`params/x.yaml: runs[0].bs: must
be >= 1, got 0`). Unknown keys, non-finite numbers, YAML aliases, duplicate keys and deep nesting
are refused; paths are relative to the repository root. samrep.stages checks backends and options.
"""

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic import StrictBool as Bool  # `bs: true` or `bs: "2"` is refused, not read as 1 or 2
from pydantic import StrictInt as Int

from samrep.errors import SamrepError
from samrep.store import REPO_ROOT, sha256_bytes

PARAMS_DIR = REPO_ROOT / "params"  # SAMREP_PARAMS_DIR moves it (tests, private configs)
Precision = Literal["fp32", "tf32", "fp16", "bf16", "fp8"]
# Folders of the repository that hold code, configuration or the environment: never outputs.
PROTECTED = (".git", ".venv", "samrep", "params", "notebooks", "tests", "tools", ".ci")
IMAGE_CHOICES = ("auto", "car", "fallback")
MAX_PARAMS_BYTES, MAX_DEPTH = 1 << 20, 12


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Peak(_Schema):
    """A device's dense peak at one precision [FLOP/s], with where the figure comes from."""

    flops: Annotated[float, Field(gt=0)]
    source: str


class ModelParams(_Schema):
    arch: Literal["vit_h", "tiny"] = "vit_h"  # keys of samrep.model.ARCHITECTURES
    weights: str = "facebook/sam-vit-huge"  # hub id, or a local folder inside data_dir
    allow_synthetic: Bool = True  # seeded synthetic weights when the real ones are unavailable
    seed: Annotated[Int, Field(ge=0, le=2**32 - 1)] = 0
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"


class DataParams(_Schema):
    data_dir: str = "data/cpu"  # ground truth, inputs, weights cache and engines of this hw
    datasize: Annotated[Int, Field(ge=1, le=1_000_000)] = 1000  # copies of the one sample
    repeat: Annotated[Int, Field(ge=1, le=1000)] = 5  # passes over the dataset per measurement
    warmup: Annotated[Int, Field(ge=0, le=10_000)] = 2  # untimed batches before the clock
    # "auto" (car.png, else the fallback), "car", "fallback", or an image file inside data_dir
    # whose prompt point is then `point` [x, y] in original pixels.
    image: str = "auto"
    point: list[Annotated[float, Field(ge=0)]] = []
    min_iterations: Annotated[Int, Field(ge=1, le=100_000)] = 5  # validity: timed batches
    min_seconds: Annotated[float, Field(ge=0, le=86_400)] = 1.0  # validity: summed core time
    measure_repeats: Annotated[Int, Field(ge=1, le=100)] = 1  # measurements per build

    @model_validator(mode="after")
    def _image_point(self):
        is_path, point = self.image not in IMAGE_CHOICES, self.point
        if not is_path and point:
            raise ValueError(f"point: only for an image path ('{self.image}' has its own)")
        if is_path and len(point) != 2:
            raise ValueError(f"point: an image path needs its prompt point [x, y], got {point}")
        return self


class RunParams(_Schema):
    """One row: a backend at a precision and batch size in a phase."""

    backend: str
    precision: Precision
    bs: Annotated[Int, Field(ge=1, le=4096)]
    phase: Literal["val", "infer"] = "infer"
    options: dict[str, Any] = {}  # the backend's Options (checked by samrep.stages)

    @property
    def key(self) -> str:
        return f"{self.phase}-{self.backend}-{self.precision}-bs{self.bs}"


class HwParams(_Schema):
    hw: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    device: Literal["cpu", "cuda"]
    requires: str = ""  # a substring the GPU's name must contain ("" for any)
    peaks: dict[Precision, Peak]
    model: ModelParams = ModelParams()
    data: DataParams = DataParams()
    runs: Annotated[list[RunParams], Field(min_length=1, max_length=500)]
    memory_sample_ms: Annotated[float, Field(ge=0.1, le=10_000)] = 1.0  # sampling period
    report_dir: str = ""  # default reports/<hw>
    world_size: Int | Literal["auto"] = Field(1, ge=1, le=1024)  # processes (GPUs) on this host
    path: str = Field("", exclude=True)  # the file it came from
    sha256: str = Field("", exclude=True)  # of its parsed content

    @model_validator(mode="after")
    def _rows(self):
        keys, size = [r.key for r in self.runs], self.data.datasize
        for i, r in enumerate(self.runs):
            if r.bs > size:
                raise ValueError(f"runs[{i}].bs: {r.bs} is larger than data.datasize {size}")
            if keys.count(r.key) > 1:
                raise ValueError(f"runs[{i}]: '{r.key}' is listed twice")
        return self

    @property
    def data_path(self) -> Path:
        return output_folder(self.data.data_dir, "data.data_dir", self.path)

    @property
    def report_path(self) -> Path:
        return output_folder(self.report_dir or f"reports/{self.hw}", "report_dir", self.path)

    @property
    def weights_path(self) -> Path | None:
        """model.weights as a local folder inside data_dir; None for a hub id."""
        w = self.model.weights
        local = w and (w.startswith((".", "/", "~")) or (REPO_ROOT / w).is_dir())
        return inside(w, "model.weights", self.path, self.data_path) if local else None

    @property
    def image_path(self) -> Path | None:
        """data.image as a file inside data_dir; None for auto / car / fallback."""
        if self.data.image in IMAGE_CHOICES:
            return None
        return inside(self.data.image, "data.image", self.path, self.data_path)


def output_folder(rel: str, key: str, where: str) -> Path:
    """An output folder: inside the repository, not the root, a code folder or a file."""
    root, p, at = REPO_ROOT.resolve(), (REPO_ROOT / rel).resolve(), f"{where}: {key}: '{rel}' is"
    if p == root or root not in p.parents:
        raise SamrepError(at + (" the repository root" if p == root else " outside the repository"))
    if p.relative_to(root).parts[0] in PROTECTED:
        raise SamrepError(f"{at} inside '{p.relative_to(root).parts[0]}/'")
    if p.exists() and not p.is_dir():
        raise SamrepError(f"{at} a file, not a folder")
    return p


def inside(rel: str, key: str, where: str, folder: Path) -> Path:
    """An input path of the params: it must resolve inside `folder`."""
    p = (REPO_ROOT / Path(rel).expanduser()).resolve()
    if folder != p and folder not in p.parents:
        raise SamrepError(f"{where}: {key}: '{rel}' is outside data.data_dir ({folder})")
    return p


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without anchors/aliases (a 1 KB alias bomb exhausts memory), duplicate keys
    (silently the last value otherwise) or nesting deeper than MAX_DEPTH."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            line = self.peek_event().start_mark.line + 1
            raise yaml.YAMLError(f"line {line}: aliases are not allowed")
        depth = getattr(self, "_depth", 0)
        if depth > MAX_DEPTH:
            raise yaml.YAMLError(f"nesting deeper than {MAX_DEPTH} levels")
        self._depth = depth + 1
        node = super().compose_node(parent, index)  # (an error ends the load: no reset needed)
        self._depth = depth
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: duplicate key '{key}'")
            seen.add(key)
        return super().construct_mapping(node, deep)


# pydantic error type -> the message (ctx fields filled in); others keep pydantic's own text
_MESSAGES = dict(greater_than_equal="must be >= {ge}", greater_than="must be > {gt}")
_MESSAGES |= dict(less_than_equal="must be <= {le}", less_than="must be < {lt}")
_MESSAGES |= dict(missing="missing required key", finite_number="must be a finite number")
_MESSAGES |= dict(extra_forbidden="unknown key", literal_error="must be one of {expected}")
_MESSAGES |= dict(string_pattern_mismatch="must match {pattern}", int_type="must be an integer")
_MESSAGES |= dict(bool_type="must be true or false", string_type="must be a string")
_MESSAGES |= dict(float_parsing="must be a number", float_type="must be a number")
_MESSAGES |= dict(dict_type="must be a mapping", list_type="must be a list")
_MESSAGES |= dict(too_short="must have at least {min_length} item(s)")
_MESSAGES |= dict(too_long="must have at most {max_length} items")
_UNION_TAGS = {"int", "float", "str", "bool"}  # pydantic names a union's member in the key path


def error_line(where: str, exc: ValidationError) -> str:
    """The first error of a pydantic ValidationError as one line: `<where>: <key>: <what>`."""
    e, key = exc.errors()[0], ""
    for part in e["loc"]:  # ("runs", 0, "bs") -> "runs[0].bs", without pydantic's own tags
        if isinstance(part, int):
            key += f"[{part}]"
        elif not ("[" in part or part.startswith("function-") or part in _UNION_TAGS):
            key += f".{part}" if key else part
    what = _MESSAGES.get(e["type"], e["msg"].replace("Value error, ", ""))
    got = "" if e["type"] in ("missing", "value_error") else f", got {e['input']!r}"[:80]
    return f"{where}: {key + ': ' if key else ''}{what.format(**e.get('ctx') or {})}{got}"


def load_params(hw: str) -> HwParams:
    """Load and check `params/<hw>.yaml` (`hw` a name; SAMREP_PARAMS_DIR moves the folder)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", hw or ""):
        raise SamrepError(f"--hw '{hw}': a hw is a name of params/ (letters, digits, '-', '_')")
    folder = Path(os.environ.get("SAMREP_PARAMS_DIR") or PARAMS_DIR)
    path = folder / f"{hw}.yaml"
    where = str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise SamrepError(f"{where}: no such params file (known hw: {known})")
    data = path.read_bytes()[: MAX_PARAMS_BYTES + 1]
    if len(data) > MAX_PARAMS_BYTES:
        raise SamrepError(f"{where}: larger than {MAX_PARAMS_BYTES} bytes")
    try:
        raw = yaml.load(data.decode("utf-8"), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as exc:
        raise SamrepError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:  # ValueError: a 5000-digit int
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or exc
        at = f" line {mark.line + 1}:" if mark else ""
        raise SamrepError(f"{where}:{at} malformed YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise SamrepError(f"{where}: expected a mapping at the top level")
    try:
        params = HwParams.model_validate(raw)
    except ValidationError as exc:
        raise SamrepError(error_line(where, exc)) from None
    if params.hw != hw:
        raise SamrepError(f"{where}: hw: '{params.hw}' does not match the file name '{hw}'")
    params = params.model_copy(update={"path": where, "sha256": sha256_bytes(data)})
    for prop in ("data_path", "report_path", "weights_path", "image_path"):
        getattr(params, prop)  # each path is checked now, before any work
    return params
