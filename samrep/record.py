"""The result record of one row (`reports/<hw>/results/<key>.json`), schema 2: each fact once.

`summary(record)` is the flat view tables and figures read; `read_record` upgrades schema-1 records.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

SCHEMA = 2


class _Section(BaseModel):
    # keeps what a newer writer adds (a reader must not drop it); the declared names are typed
    model_config = ConfigDict(extra="allow")


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    phase: Literal["val", "infer"]
    backend: str
    precision: str
    bs: int = Field(ge=1)
    options: dict[str, Any] = {}


class Timing(_Section):
    """One measured phase: throughputs in images/s, times in s, latencies in ms per batch."""

    p_core: float
    p_whole: float
    images: int
    batches: int
    core_s: float
    whole_s: float
    latency_ms: dict[str, float] = {}  # p50, p90, p99, min, max of the per-batch core time
    repeats: list[dict] = []  # every measurement when measure_repeats > 1 (this one: the median)


class Scores(_Section):
    acc: float  # mean pixel agreement with the ground truth (the case's `acc`)
    iou: float
    acc_per_mask: list[float] = []
    iou_per_mask: list[float] = []
    images_scored: int = 0
    # Relative L2 error against the fp32 reference (weight-independent, unlike acc):
    # ||x - ref|| / ||ref|| of the image embeddings and of the low-res mask logits.
    embeddings_rel_l2: float | None = None
    logits_rel_l2: float | None = None


class Flops(_Section):
    per_image: float
    peak_key: str
    peak_flops: float | None = None  # None fields are left out by dump(): default them
    peak_source: str
    mfu: float | None = None  # achieved / peak, true FLOPs (2 per multiply-add)
    mfu_original: float | None = None  # the original harness's 3.1e12 per image convention
    achieved_tflops: float


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: Literal[2] = Field(SCHEMA, alias="schema")
    hw: str
    key: str
    row: Row
    status: Literal["ok", "failed", "not_run"]
    reason: str | None = None
    failed_stage: str | None = None
    traceback: str | None = None
    stamp: str = ""
    inputs: dict[str, Any] = {}
    dataset: dict[str, Any] = {}
    environment: dict[str, Any] = {}
    math_mode: str | None = None
    timing: Timing | None = None
    scores: Scores | None = None
    memory: dict[str, Any] | None = None
    energy: dict[str, Any] | None = None
    flops: Flops | None = None
    validity: dict[str, Any] | None = None
    engine_check: dict[str, Any] | None = None
    stage_times: dict[str, float] = {}
    versions: dict[str, Any] = {}
    masks_file: str | None = None
    distributed: dict[str, Any] | None = None
    upgraded_from: int | None = None  # 1 for a schema-1 record read by `read_record`
    _first_masks: Any = PrivateAttr(None)  # (3, H, W) bool of the first image, saved beside

    def dump(self) -> dict:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def upgrade_v1(d: dict) -> dict:
    """A schema-1 record (metrics repeated in several sections) as a schema-2 mapping."""
    m, t, f = d.get("metrics") or {}, d.get("timing"), d.get("flops")
    new = {k: d[k] for k in ("hw", "key", "status")} | {"schema": SCHEMA, "upgraded_from": 1}
    new["row"] = {k: d[k] for k in ("phase", "backend", "precision", "bs")}
    new["row"]["options"] = d.get("options") or {}
    new["inputs"] = {k: d.get(k) for k in ("image", "weights", "ground_truth")}
    keep = ("reason", "failed_stage", "traceback", "math_mode", "memory", "validity", "scores")
    keep += ("masks_file", "distributed", "dataset", "environment", "stage_times", "versions")
    new |= {k: d[k] for k in keep if d.get(k)}
    if t:
        lat = dict(p50="core_batch_ms_median", min="core_batch_ms_min", max="core_batch_ms_max")
        timing = new["timing"] = {k: t[k] for k in ("images", "batches", "core_s", "whole_s")}
        timing |= {k: m.get(k, t.get(k)) for k in ("p_core", "p_whole")}
        timing["latency_ms"] = {k: t[v] for k, v in lat.items() if v in t}
        timing["repeats"] = t.get("repeats") or []
        if "p_core_repeats" in m:
            timing["p_core_spread"] = m["p_core_repeats"]
    if f:
        new["flops"] = {k: f[k] for k in ("per_image", "peak_key", "peak_flops", "peak_source")}
        new["flops"] |= {k: m.get(k) for k in ("mfu", "mfu_original")}
        new["flops"]["achieved_tflops"] = m.get("achieved_tflops", 0.0)
    return new


def read_record(d: Any, where: str = "record") -> Record:
    """Validate a record mapping (schema 2, or schema 1 upgraded); ValueError names `where`."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: not a JSON object")
    if d.get("schema") == 1:
        try:
            d = upgrade_v1(d)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where}: schema-1 record without {exc}") from None
    elif d.get("schema") != SCHEMA:
        raise ValueError(f"{where}: unknown record schema {d.get('schema')!r}")
    return Record.model_validate(d)


# summary column -> (section, key): one flat view, units in the names
_FLAT = {
    **{k: ("timing", k) for k in ("p_core", "p_whole")},
    **{k: ("scores", k) for k in ("acc", "iou", "embeddings_rel_l2", "logits_rel_l2")},
    **{k: ("flops", k) for k in ("mfu", "mfu_original")},
    **{f"mem_{k}": ("memory", k) for k in ("peak_gib", "total_gib", "framework_peak_gib")},
    **{k: ("energy", k) for k in ("j_per_image", "img_per_j")},
    "valid": ("validity", "valid"),
}


def summary(rec: Record) -> dict:
    """The flat view of a record that every table and figure reads (units in the names)."""
    d = rec.dump()
    out = {"hw": rec.hw, "key": rec.key, **rec.row.model_dump(exclude={"options"})}
    out |= {"status": rec.status, "reason": rec.reason, "math_mode": rec.math_mode}
    out |= {k: (d.get(sec) or {}).get(key) for k, (sec, key) in _FLAT.items()}
    lat = rec.timing.latency_ms if rec.timing else {}
    out |= {f"latency_{q}_ms": lat.get(q) for q in ("p50", "p90", "p99")}
    energy, checks = rec.energy or {}, (rec.validity or {}).get("checks") or {}
    # how it was measured, or why not ("not measured: no NVML energy counter on a CPU")
    reason = f": {energy['reason']}" if energy.get("reason") else ""
    out["energy"] = energy.get("method", "not measured") + reason
    out["failed_checks"] = [k for k, c in checks.items() if c.get("ok") is False]
    out["synthetic_weights"] = (rec.inputs.get("weights") or {}).get("synthetic")
    out["commit"] = rec.environment.get("git_commit")
    return out
