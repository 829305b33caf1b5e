"""The result record of one row, schema 2: each fact stored once, declared as pydantic models.

A record is `reports/<hw>/results/<key>.json`. Its sections:
  row          what ran: phase, backend, precision, bs, options (the only place they are stored)
  status       "ok", "failed" (with reason, failed_stage) or "not_run" (with reason)
  stamp        the freshness digest of what the result depends on (samrep.store.Stamp)
  inputs       the image, the weights and the ground truth it was scored against
  dataset      datasize, repeat, warmup, measure_repeats, validity thresholds
  timing       p_core / p_whole [img/s], seconds, per-batch core latency percentiles [ms]
  scores       acc, IoU (and per mask), fidelity: relative L2 of embeddings / low-res logits
  memory, energy, flops (with MFU), validity, engine_check, stage_times, versions, environment
  distributed  several processes only: per-rank figures and the aggregate
`summary(record)` is the one flat view of it that tables and figures read. `read_record` also
reads schema-1 records (the committed reports before this schema) by upgrading them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

SCHEMA = 2
Status = Literal["ok", "failed", "not_run"]


class _Section(BaseModel):
    # Sections keep what a newer writer adds (a reader must not drop it), but the names declared
    # here are checked for type.
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
    status: Status
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


def row_key(row: Row) -> str:
    """File-name key of a row's result: <phase>-<backend>-<precision>-bs<bs>."""
    return f"{row.phase}-{row.backend}-{row.precision}-bs{row.bs}"


def upgrade_v1(d: dict) -> dict:
    """A schema-1 record (metrics repeated in several sections) as a schema-2 mapping."""
    m = d.get("metrics") or {}
    t, s, f = d.get("timing"), d.get("scores"), d.get("flops")
    new = {
        "schema": SCHEMA,
        "upgraded_from": 1,
        "hw": d["hw"],
        "key": d["key"],
        "row": {k: d[k] for k in ("phase", "backend", "precision", "bs")}
        | {"options": d.get("options") or {}},
        "status": d["status"],
        **{k: d[k] for k in ("reason", "failed_stage", "traceback") if d.get(k) is not None},
        "inputs": {
            "image": d.get("image"),
            "weights": d.get("weights"),
            "ground_truth": d.get("ground_truth"),
        },
        "dataset": d.get("dataset") or {},
        "environment": d.get("environment") or {},
        **{
            k: d[k]
            for k in ("math_mode", "memory", "validity", "masks_file", "distributed")
            if d.get(k)
        },
        "stage_times": d.get("stage_times") or {},
        "versions": d.get("versions") or {},
    }
    if t:
        med = {
            k: t[k]
            for k in ("core_batch_ms_median", "core_batch_ms_min", "core_batch_ms_max")
            if k in t
        }
        new["timing"] = {
            **{k: t[k] for k in ("images", "batches", "core_s", "whole_s")},
            "p_core": m.get("p_core", t.get("p_core")),
            "p_whole": m.get("p_whole", t.get("p_whole")),
            "latency_ms": {
                k.replace("core_batch_ms_", "").replace("median", "p50"): v for k, v in med.items()
            },
            "repeats": t.get("repeats") or [],
        }
        if "p_core_repeats" in m:
            new["timing"]["p_core_spread"] = m["p_core_repeats"]
    if s:
        new["scores"] = {k: v for k, v in s.items()}
    if f:
        new["flops"] = {
            **{k: f[k] for k in ("per_image", "peak_key", "peak_flops", "peak_source")},
            "mfu": m.get("mfu"),
            "mfu_original": m.get("mfu_original"),
            "achieved_tflops": m.get("achieved_tflops", 0.0),
        }
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


def summary(rec: Record) -> dict:
    """The flat view of a record that every table and figure reads (units in the names)."""
    t, s, f = rec.timing, rec.scores, rec.flops
    mem, energy, valid = rec.memory or {}, rec.energy or {}, rec.validity or {}
    weights = rec.inputs.get("weights") or {}
    lat = t.latency_ms if t else {}
    return {
        "hw": rec.hw,
        "key": rec.key,
        **rec.row.model_dump(exclude={"options"}),
        "status": rec.status,
        "reason": rec.reason,
        "math_mode": rec.math_mode,
        "p_core": t.p_core if t else None,
        "p_whole": t.p_whole if t else None,
        "latency_p50_ms": lat.get("p50"),
        "latency_p90_ms": lat.get("p90"),
        "latency_p99_ms": lat.get("p99"),
        "acc": s.acc if s else None,
        "iou": s.iou if s else None,
        "embeddings_rel_l2": s.embeddings_rel_l2 if s else None,
        "logits_rel_l2": s.logits_rel_l2 if s else None,
        "mfu": f.mfu if f else None,
        "mfu_original": f.mfu_original if f else None,
        "mem_peak_gib": mem.get("peak_gib"),
        "mem_total_gib": mem.get("total_gib"),
        "mem_framework_peak_gib": mem.get("framework_peak_gib"),
        "j_per_image": energy.get("j_per_image"),
        "img_per_j": energy.get("img_per_j"),
        "valid": valid.get("valid"),
        "synthetic_weights": weights.get("synthetic"),
        "commit": rec.environment.get("git_commit"),
    }
