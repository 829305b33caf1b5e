"""The summary's tables from one hardware report's records (no IPython here); `spec_table`: the
case's columns and order (sam_h_case.md section 4), notes as footnotes, to fit a 1280-px page."""

import json
import math
from html import escape
from pathlib import Path

import pandas as pd

from samrep.record import Record, read_record, summary

SPEC_COLUMNS = ["engine", "precision", "bs", "e2e_time", "p_val_whole", "p_val_core"]
SPEC_COLUMNS += ["p_infer_whole", "p_infer_core", "MFU", "acc", "mem"]
PRECISIONS, PCT = ["fp32", "tf32", "fp16", "bf16", "fp8"], (50, 90, 99)
# Published FlagPerf sam_h rows (NVIDIA A100-SXM4-40GB, TensorRT 8.6.1, CUDA 12.1), as printed.
_PUBLISHED = """\
tensorrt fp16 4 1895.1 9.3 10.7 7.9 11.8 11.8% 0.89/1.0 23.7/40.0
tensorrt fp32 2 1895.1 6.8 7.5 5.5 7.0 13.9% 1.0/1.0 18.1/40.0"""
PUBLISHED_A100 = pd.DataFrame([r.split() for r in _PUBLISHED.splitlines()], columns=SPEC_COLUMNS)
PUBLISHED_P_CORE = {"fp16": 11.8, "fp32": 7.0}  # half precisions vs fp16, fp32/tf32 vs "fp32"
PUBLISHED_NOTE = (
    "Published by FlagPerf (case sam_h) on an NVIDIA A100-SXM4-40GB, TensorRT 8.6.1. Its MFU uses "
    "3.1e12 FLOPs per image (the multiply-add count) against hard-coded A100 peaks; its 'fp32' "
    "engine ran with TF32 allowed; both rows show the same e2e_time (a copy error); mem is "
    "whole-device memory polled every 5 s over the whole run."
)


def num(x, sig: int = 3) -> str:
    """`sig` significant digits, at least one decimal: 0.0263, 7.00, 74.1, 1895.1; None -> "–"."""
    if isinstance(x, str | int):  # ints (bools too) and strings as they are
        return str(x)
    if x is None or math.isnan(x):
        return "–"
    return f"{x:.{max(1, sig - 1 - math.floor(math.log10(abs(x))))}f}" if x else "0"


def fmt(x, spec: str = ".4f") -> str:
    """x formatted (".4f": acc and IoU, fractions near 1; ".2e": relative errors); None -> "–"."""
    return "–" if x is None else format(x, spec)


def pct(x) -> str:
    return "–" if x is None else f"{num(100 * x)}%"


def load_records(folder: Path, keys: list[str] | None = None) -> tuple[list[Record], list[str]]:
    """Records in folder/results (`keys` only, in order, if given); a line per unreadable file."""
    records, problems = [], []
    for p in sorted((Path(folder) / "results").glob("*.json")):
        try:
            records.append(read_record(json.loads(p.read_text()), p.name))
        except (OSError, ValueError) as exc:  # JSONDecodeError, pydantic's ValidationError
            problems.append(f"{p.name}: not a readable record ({str(exc).splitlines()[0]})")
    by_key = {r.key: r for r in records}
    return [by_key[k] for k in keys if k in by_key] if keys is not None else records, problems


def engine(rec: Record) -> str:
    """An engine and precision: "HF eager" for the val phase (backend torch), else the backend."""
    eager = rec.row.phase == "val" and rec.row.backend == "torch"
    return f"{'HF eager' if eager else rec.row.backend} {rec.row.precision}"


def label(rec: Record) -> str:
    return f"{engine(rec)} bs{rec.row.bs}"


def frame(records: list[Record]) -> pd.DataFrame:
    """summary() of every record, one row each, with its `engine` (the figures' line label)."""
    return pd.DataFrame([summary(r) | {"engine": engine(r)} for r in records])


def best_rows(records: list[Record]) -> list[Record]:
    """Per (phase, backend, precision) its ok row with the highest p_core, fastest first."""
    best: dict = {}
    for r in records:
        if r.status == "ok" and r.timing:
            k = (r.row.phase, r.row.backend, r.row.precision)
            if k not in best or r.timing.p_core > best[k].timing.p_core:
                best[k] = r
    return sorted(best.values(), key=lambda r: -r.timing.p_core)


def headline(records: list[Record]) -> pd.DataFrame:
    """Per precision: the fastest row, its speed-up over HF eager (the best val torch row at that
    precision) and over the published A100 TensorRT row, its acc and IoU."""
    rows, best = [], best_rows(records)
    for p in PRECISIONS + sorted({r.row.precision for r in records} - set(PRECISIONS)):
        ok = [r for r in best if r.row.precision == p]
        base = "bf16" if p == "fp8" else p  # HF eager has no fp8 mode: fp8 is set against bf16
        eager = [r.timing.p_core for r in best if engine(r) == f"HF eager {base}"]
        ref = "fp32" if p in ("fp32", "tf32") else "fp16"
        for top in ok[:1]:
            x, s, pub = top.timing.p_core, summary(top), PUBLISHED_P_CORE[ref]
            vs = f" (vs {base})" if base != p else ""
            speed = [num(x), f"{num(x / eager[0])}×{vs}" if eager else "–"]
            speed += [f"{num(x / pub)}× ({ref}: {pub} img/s)"]
            rows.append([p, label(top), *speed, fmt(s["acc"]), fmt(s["iou"])])
    columns = ["precision", "fastest", "p_infer_core [img/s]", "× HF eager"]
    return pd.DataFrame(rows, columns=columns + ["× A100 TensorRT (published)", "acc", "IoU"])


def headline_line(records: list[Record]) -> str:
    """One line for reports/index.html: the fastest row and how it compares."""
    table = headline(records)
    if table.empty:
        return "no row measured"
    b = table.iloc[table["p_infer_core [img/s]"].astype(float).argmax()]
    return (
        f"fastest: {b['fastest']}, {b['p_infer_core [img/s]']} img/s, {b['× HF eager']} HF eager, "
        f"{b['× A100 TensorRT (published)']} the published A100 TensorRT row; acc {b['acc']}, "
        f"IoU {b['IoU']}"
    )


def spec_table(records: list[Record], gt_seconds: float | None = None):
    """(table, footnotes): the case's columns; p_* in img/s, e2e_time in s, acc infer/val,
    mem peak/total GiB of the headline phase, MFU true-FLOP against the device's peak."""
    notes: list[str] = []

    def mark(text: str) -> str:  # the footnote's number; each note listed once
        notes.append(text) if text not in notes else None
        return f"<sup>{notes.index(text) + 1}</sup>"

    def p(rec, key) -> str:  # a throughput, with its min-max over repeats, or why there is none
        if rec is None:
            return "–"
        if rec.status != "ok":
            stage = f" ({rec.failed_stage})" if rec.status == "failed" else ""
            return rec.status.replace("_", " ") + mark(f"{rec.key}{stage}: {rec.reason}")
        spread = (rec.timing.model_extra or {}).get(f"{key}_spread")  # [min, max]; schema 1: dict
        lo, hi = (spread["min"], spread["max"]) if isinstance(spread, dict) else spread or (0, 0)
        x = num(getattr(rec.timing, key))
        return f"{x} [{num(lo)}-{num(hi)}]" if spread else x

    val = {(r.row.precision, r.row.bs): r for r in records if r.row.phase == "val"}
    pairs = [(r, val.get((r.row.precision, r.row.bs))) for r in records if r.row.phase == "infer"]
    used = {id(v) for _, v in pairs}
    pairs += [(None, v) for v in val.values() if id(v) not in used]
    rows = []
    for inf, v in pairs:
        head = inf or v
        s, ok, mfu, mem = summary(head), head.status == "ok", "–", "–"
        e2e = (gt_seconds or 0) + sum(sum((r.stage_times or {}).values()) for r in (inf, v) if r)
        if ok and head.flops:
            mfu = pct(s["mfu"]) if s["mfu"] is not None else "not available: peak unknown"
            if "estimate" in head.flops.peak_source:
                mfu += mark("MFU against an estimated CPU peak (params' peak source)")
        if ok and s["mem_peak_gib"] is not None:
            mem = f"{num(s['mem_peak_gib'])}/{num(s['mem_total_gib'])}"
            if (head.memory or {}).get("method") == "rss":
                mem += mark("mem: process RSS / host RAM (a CPU has no device memory)")
        acc = "/".join(fmt(r.scores.acc) if r and r.scores else "–" for r in (inf, v))
        name = inf.row.backend if inf else "HF eager (val only)"
        if s["valid"] is False:
            name += mark(f"{head.key}: measurement invalid ({', '.join(s['failed_checks'])})")
        row = [name, head.row.precision, head.row.bs, num(e2e), p(v, "p_whole"), p(v, "p_core")]
        rows.append(row + [p(inf, "p_whole"), p(inf, "p_core"), mfu, acc, mem])
    return pd.DataFrame(rows, columns=SPEC_COLUMNS), notes


def table(items: list, spec: dict) -> pd.DataFrame:
    """One row per item, spec: {column: function of the item -> cell}."""
    return pd.DataFrame([{c: f(i) for c, f in spec.items()} for i in items], columns=list(spec))


# The details table: column -> its cell from a row's summary().
DETAILS = {
    "row": lambda s: s["key"],
    "p_core [img/s]": lambda s: num(s["p_core"]),
    "latency p50/p90/p99 [ms]": lambda s: "/".join(num(s[f"latency_p{n}_ms"]) for n in PCT),
    "MFU (3.1e12 conv.)": lambda s: pct(s["mfu_original"]),
    "acc": lambda s: fmt(s["acc"]),
    "IoU": lambda s: fmt(s["iou"]),
    "embeddings rel. L2": lambda s: fmt(s["embeddings_rel_l2"], ".2e"),
    "logits rel. L2": lambda s: fmt(s["logits_rel_l2"], ".2e"),
    "framework peak [GiB]": lambda s: num(s["mem_framework_peak_gib"]),
    "img/J": lambda s: s["energy"] if s["img_per_j"] is None else num(s["img_per_j"]),
    "valid": lambda s: {True: "yes", False: "no", None: "–"}[s["valid"]],
}
MATH = {
    "row": lambda r: r.key,
    "math mode": lambda r: r.math_mode or r.row.precision,
    "status": lambda r: r.status if r.status == "ok" else f"{r.status}: {r.reason}",
    "stage times [s]": lambda r: (
        ", ".join(f"{k.removesuffix('_s')} {num(v)}" for k, v in r.stage_times.items() if v) or "–"
    ),
}


def details_table(records: list[Record]) -> pd.DataFrame:
    """Every ok row's figures the case's table has no room for: latency, fidelity, energy."""
    return table([summary(r) for r in records if r.status == "ok"], DETAILS)


def math_table(records: list[Record]) -> pd.DataFrame:
    """What ran: each row's math mode, status and stage times [s]."""
    return table(records, MATH)


def json_table(path: Path, columns: dict[str, str], key: str = "rows") -> pd.DataFrame | None:
    """The JSON list path[key] as a table, columns {json key: column}; None if there is no file."""
    if not Path(path).is_file():
        return None
    items = json.loads(Path(path).read_text())[key]
    return table(items, {c: (lambda i, k=k: num(i.get(k))) for k, c in columns.items()})


STEP_COLUMNS = {"step": "step", "name": "what", "img_per_s": "img/s", "acc": "acc", "iou": "IoU"}
STEP_COLUMNS |= {"mask_agreement": "sign agreement vs step 0", "compile_s": "compile [s]"}
STAGE_COLUMNS = {"row": "row", "status": "status", "seconds": "seconds", "reused": "reused"}
STAGE_COLUMNS |= {"onnx_gb": "ONNX [GB]", "math_mode": "math mode", "reason": "reason"}
INTERACTIVE_COLUMNS = {"backend": "backend", "precision": "precision", "ms_per_click": "ms/click"}
INTERACTIVE_COLUMNS |= {"prompts_per_s_16": "prompts/s, 16 points/image"}
INTERACTIVE_COLUMNS |= {"prompts_per_s_64": "prompts/s, 64 points/image"}
SCALING = {
    "row": lambda r: r.key,
    "world size": lambda r: r.distributed["world_size"],
    "single-GPU p_core [img/s]": lambda r: num(r.distributed["single_gpu_p_core"]),
    "aggregate p_core [img/s]": lambda r: num(r.distributed["aggregate_p_core"]),
    "efficiency": lambda r: pct(r.distributed["scaling_efficiency"]),
    "acc (min over ranks)": lambda r: fmt(r.distributed.get("acc_min")),
}


def scaling_table(records: list[Record]) -> pd.DataFrame:
    """Rows measured on several processes: aggregate p_core against one GPU's."""
    rows = [r for r in records if r.status == "ok" and "aggregate_p_core" in (r.distributed or {})]
    return table(rows, SCALING)


def commits(records: list[Record]) -> str:
    """Every commit among the records, with its row count when there are several."""
    counts = pd.Series([r.environment.get("git_commit") for r in records]).value_counts(sort=False)
    rows = [f" ({n} row{'s' * (n != 1)})" if len(counts) > 1 else "" for n in counts]
    return ", ".join(f"{c}{n}" for c, n in zip(counts.index, rows, strict=True)) or "unknown"


def index_html(entries: list[dict]) -> str:
    """reports/index.html: entries [{hw, href, line (headline_line), device}], published rows."""
    items = "".join(
        f"<li><a href='{escape(e['href'])}'>{escape(e['hw'])}</a>: {escape(e.get('device') or '')}"
        f" — {escape(e.get('line') or '')}</li>"
        for e in entries
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>samrep reports</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}td,th{padding:2px 8px}"
        "</style></head><body><h1>samrep: SAM ViT-H inference reports</h1>"
        f"<ul>{items}</ul><h2>Published reference (FlagPerf sam_h)</h2>"
        + PUBLISHED_A100.to_html(index=False)
        + f"<p>{escape(PUBLISHED_NOTE)}</p></body></html>"
    )
