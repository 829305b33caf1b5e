"""Tables and plots of the summary notebook, from the result records of one hardware report.

`spec_table` lays the rows out in the case's column order (sam_h_case.md section 4): each engine
("infer") row is joined with the PyTorch ("val") row at the same precision and batch size, as the
published table did. A cell that does not apply, or a row that did not run, says why in words.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

SPEC_COLUMNS = [
    "engine",
    "precision",
    "bs",
    "e2e_time",
    "p_val_whole",
    "p_val_core",
    "p_infer_whole",
    "p_infer_core",
    "MFU",
    "acc",
    "mem",
]
UNITS = {
    "e2e_time": "s",
    "p_val_whole": "img/s",
    "p_val_core": "img/s",
    "p_infer_whole": "img/s",
    "p_infer_core": "img/s",
    "mem": "GiB",
}

# Published FlagPerf sam_h rows (NVIDIA A100-SXM4-40GB, TensorRT 8.6.1, CUDA 12.1), as printed.
PUBLISHED_A100 = pd.DataFrame(
    [
        ["tensorrt", "fp16", 4, 1895.1, 9.3, 10.7, 7.9, 11.8, "11.8%", "0.89/1.0", "23.7/40.0"],
        ["tensorrt", "fp32", 2, 1895.1, 6.8, 7.5, 5.5, 7.0, "13.9%", "1.0/1.0", "18.1/40.0"],
    ],
    columns=SPEC_COLUMNS,
)
PUBLISHED_NOTE = (
    "Published by FlagPerf (case sam_h) on an NVIDIA A100-SXM4-40GB, TensorRT 8.6.1. Its MFU uses "
    "3.1e12 FLOPs per image (the multiply-add count) against hard-coded A100 peaks; its 'fp32' "
    "engine ran with TF32 allowed; both rows show the same e2e_time (a copy error); mem is "
    "whole-device memory polled every 5 s over the whole run."
)


def _num(x, fmt="{:.2f}"):
    return fmt.format(x) if isinstance(x, (int, float)) and x is not None else x


def _why(rec: dict | None, what: str) -> str:
    if rec is None:
        return f"not run: no {what} row configured"
    if rec["status"] == "not_run":
        return f"not run: {rec['reason']}"
    if rec["status"] == "failed":
        return f"failed ({rec.get('failed_stage')}): {rec['reason']}"
    return ""


def _ok(rec):
    return rec is not None and rec.get("status") == "ok"


def _stage_total(rec: dict | None) -> float:
    if not _ok(rec):
        return 0.0
    t = rec.get("stage_times", {})
    return sum(v for v in t.values() if isinstance(v, (int, float)))


def _p_core(rec: dict) -> str:
    """p_core, as "median [min-max]" when the row was measured several times."""
    m = rec["metrics"]
    r = m.get("p_core_repeats")
    if r:
        return f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"
    return _num(m["p_core"])


def _validity(recs: list[dict | None]) -> str:
    """The validity cell: yes, "no: <failed checks>" (samrep.validity) or "-" (no ok record)."""
    from samrep.validity import failed_checks

    ok = [r for r in recs if _ok(r) and r.get("validity")]
    if not ok:
        return "-"
    failed = []
    for r in ok:
        prefix = f"{r['phase']}: " if len(ok) > 1 else ""
        failed += [prefix + c for c in failed_checks(r)]
    return "no: " + ", ".join(failed) if failed else "yes"


def _pair(infer, val, key, fmt):
    a = _num(infer["metrics"][key], fmt) if _ok(infer) else "–"
    b = _num(val["metrics"][key], fmt) if _ok(val) else "–"
    return f"{a}/{b}"


def spec_table(records: list[dict], gt_seconds: float | None = None) -> pd.DataFrame:
    """The metrics table in the spec's column order, one row per engine row (or val-only row).

    Numbers carry the units of UNITS; acc is "infer/val"; mem is "peak/total" GiB of the headline
    phase (infer when there is one); MFU is true-FLOP MFU of the headline phase against the
    params' peak at that precision; e2e_time sums ground truth, the val row and the engine row.
    """
    val = {(r["precision"], r["bs"]): r for r in records if r["phase"] == "val"}
    used = set()
    rows = []
    infer_rows = [r for r in records if r["phase"] == "infer"]
    for inf in infer_rows:
        key = (inf["precision"], inf["bs"])
        v = val.get(key) or (val.get(("fp32", inf["bs"])) if inf["precision"] == "tf32" else None)
        if v is not None:
            used.add((v["precision"], v["bs"]))
        rows.append(_row(inf["backend"], inf, v, gt_seconds))
    for key, v in sorted(val.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if key not in used:
            rows.append(_row("(val only)", None, v, gt_seconds))
    return pd.DataFrame(
        rows,
        columns=SPEC_COLUMNS
        + ["IoU", "MFU (3.1e12 conv.)", "math mode", "weights", "valid", "notes"],
    )


def _row(engine: str, inf: dict | None, val: dict | None, gt_seconds: float | None) -> list:
    head = inf if inf is not None else val
    precision = head["precision"]
    math = head.get("math_mode") or precision  # what really ran, e.g. "fp32 (TF32 off)"
    e2e = (gt_seconds or 0.0) + _stage_total(val) + _stage_total(inf)
    notes = []
    if engine == "(val only)":
        p_infer_core = "not run: no engine configured at this precision and bs"
        p_infer_whole = "not run"
    elif _ok(inf):
        p_infer_whole = _num(inf["metrics"]["p_whole"])
        p_infer_core = _p_core(inf)
    else:
        # The reason once, in the headline cell; the row's other cells just say so.
        p_infer_core = _why(inf, "engine")
        p_infer_whole = p_infer_core.split(":")[0]
    if _ok(val):
        p_val_whole, p_val_core = _num(val["metrics"]["p_whole"]), _p_core(val)
    else:
        p_val_core = _why(val, "val")
        p_val_whole = p_val_core.split(":")[0]
    if _ok(head):
        m = head["metrics"]
        mfu = f"{100 * m['mfu']:.2f}%" if m.get("mfu") is not None else "n/a: no peak in params"
        mfu_orig = f"{100 * m['mfu_original']:.2f}%" if m.get("mfu_original") is not None else "n/a"
        mem = f"{m['mem_peak_gib']:.1f}/{m['mem_total_gib']:.1f}"
        if head["memory"]["method"] == "rss":
            notes.append("mem = process RSS / host RAM (no device memory on a CPU)")
        if head["flops"]["peak_source"].startswith("estimate"):
            notes.append("MFU against an estimated CPU peak")
    else:
        mfu = mfu_orig = mem = _why(head, "engine" if inf is not None else "val").split(":")[0]
    acc = _pair(inf, val, "acc", "{:.4f}") if inf is not None else _pair(None, val, "acc", "{:.4f}")
    iou = _pair(inf, val, "iou", "{:.4f}") if inf is not None else _pair(None, val, "iou", "{:.4f}")
    weights = (head.get("weights") or {}).get("synthetic")
    weights_label = "synthetic weights" if weights else (head.get("weights") or {}).get("name", "")
    if any((r or {}).get("status") == "failed" for r in (inf, val)):
        notes.append("FAILED row")
    return [
        engine,
        precision,
        head["bs"],
        _num(e2e, "{:.1f}"),
        p_val_whole,
        p_val_core,
        p_infer_whole,
        p_infer_core,
        mfu,
        acc,
        mem,
        iou,
        mfu_orig,
        math,
        weights_label,
        _validity([inf, val]),
        "; ".join(notes),
    ]


def rows_table(records: list[dict]) -> pd.DataFrame:
    """Every record as measured: phase, backend, math mode, status and the raw figures."""
    out = []
    for r in records:
        m = r.get("metrics") or {}
        st = r.get("stage_times") or {}
        out.append(
            {
                "row": r["key"],
                "status": r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}",
                "math mode": r.get("math_mode", r["precision"]),
                "p_core [img/s]": m.get("p_core"),
                "p_core min-max [img/s]": (
                    f"{m['p_core_repeats']['min']:.2f}-{m['p_core_repeats']['max']:.2f} "
                    f"({m['p_core_repeats']['n']} repeats)"
                    if m.get("p_core_repeats")
                    else None
                ),
                "p_whole [img/s]": m.get("p_whole"),
                "MFU [%]": 100 * m["mfu"] if m.get("mfu") is not None else None,
                "acc": m.get("acc"),
                "IoU": m.get("iou"),
                "mem peak [GiB]": m.get("mem_peak_gib"),
                "mem delta [GiB]": m.get("mem_delta_gib"),
                "framework peak [GiB]": m.get("mem_framework_peak_gib"),
                "load [s]": st.get("load_s"),
                "build [s]": st.get("build_s"),
                "measure [s]": st.get("measure_s"),
                "images timed": (r.get("timing") or {}).get("images"),
                "valid": _validity([r]),
                "failed stage": r.get("failed_stage"),
            }
        )
    return pd.DataFrame(out)


def commits_label(records: list[dict]) -> str:
    """Every code version the records come from, with its row count, e.g. "1de0b70 (14 rows),
    b25e2ea (4 rows)" (rows re-measured later keep their own commit)."""
    counts: dict[str, int] = {}
    for r in records:
        commit = (r.get("environment") or {}).get("git_commit")
        if commit:
            counts[commit] = counts.get(commit, 0) + 1
    if len(counts) <= 1:
        return next(iter(counts), "-")
    return ", ".join(f"{c} ({n} row{'s' * (n != 1)})" for c, n in counts.items())


def provenance(records: list[dict]) -> dict:
    """What the report ran on: image, weights and environment of the first complete record;
    git_commit names every commit among the records (`commits_label`)."""
    rec = next((r for r in records if r.get("environment")), records[0] if records else {})
    env = rec.get("environment", {})
    image = rec.get("image", {})
    weights = rec.get("weights", {})
    return {
        "image": image.get("name"),
        "image_fallback": image.get("fallback"),
        "image_sha256": image.get("sha256"),
        "weights": weights.get("name"),
        "weights_synthetic": weights.get("synthetic"),
        "weights_sha256": weights.get("sha256"),
        "device": env.get("device"),
        "driver": env.get("driver"),
        "cuda": env.get("cuda"),
        "cpu": env.get("cpu"),
        "torch": (env.get("versions") or {}).get("torch"),
        "transformers": (env.get("versions") or {}).get("transformers"),
        "git_commit": commits_label(records) if records else env.get("git_commit"),
    }


def plot_throughput(records: list[dict], ax=None):
    """p_core (img/s) against batch size, one line per (phase, backend, precision)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4))[1]
    groups: dict[str, list] = {}
    for r in records:
        if _ok(r):
            label = f"{r['phase']}: {r['backend']} {r.get('math_mode', r['precision'])}"
            groups.setdefault(label, []).append((r["bs"], r["metrics"]["p_core"]))
    for label, pts in sorted(groups.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("p_core [images/s]")
    ax.set_title("Throughput (core region)")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=7)
    return ax


def plot_memory(records: list[dict], ax=None):
    """Peak memory (GiB) against batch size, one line per (phase, backend, precision)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4))[1]
    groups: dict[str, list] = {}
    method = ""
    for r in records:
        if _ok(r):
            label = f"{r['phase']}: {r['backend']} {r['precision']}"
            m = r["metrics"]
            value = m["mem_framework_peak_gib"] or m["mem_peak_gib"]
            groups.setdefault(label, []).append((r["bs"], m["mem_peak_gib"], value))
            method = r["memory"]["method"]
    for label, pts in sorted(groups.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    what = "device memory used (NVML)" if method == "nvml" else "process RSS"
    ax.set_ylabel(f"peak {what} [GiB]")
    ax.set_title("Peak memory")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=7)
    return ax


def load_image(manifest: dict) -> np.ndarray | None:
    """The image the ground truth used, if its file is on this machine."""
    from PIL import Image

    image = manifest.get("image", {})
    path = Path(image.get("path", ""))
    if not path.is_file() and image.get("fallback"):
        # Rendered on another machine than the run: its own copy of the same file will do.
        from samrep.data import fallback_path, file_sha256

        path = fallback_path()
        if not path.is_file() or file_sha256(path) != image.get("sha256"):
            return None
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def plot_masks(
    image: np.ndarray | None,
    point: tuple[float, float],
    gt_masks: np.ndarray,
    pred_masks: np.ndarray,
    order: list[int],
    title: str,
):
    """One row per ground-truth mask: ground truth, prediction, and where they differ.

    gt_masks: (3, H, W) bool, smallest first; pred_masks: (3, H, W) bool in model output order;
    order[i] is the output index compared with gt_masks[i].
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(order), 3, figsize=(10, 2.6 * len(order)), squeeze=False)
    for i, idx in enumerate(order):
        gt, pred = gt_masks[i], pred_masks[idx]
        diff = gt != pred
        agree = 1.0 - diff.mean()
        for j, (mask, name) in enumerate(((gt, "ground truth"), (pred, "prediction"))):
            ax = axes[i, j]
            if image is not None:
                ax.imshow(image)
            ax.imshow(np.ma.masked_where(~mask, mask), alpha=0.5, cmap="autumn")
            ax.plot(*point, marker="*", color="cyan", markersize=12, markeredgecolor="k")
            ax.set_title(f"mask {i}: {name} ({100 * mask.mean():.1f}% of pixels)", fontsize=8)
        ax = axes[i, 2]
        ax.imshow(diff, cmap="gray_r")
        ax.set_title(f"differ: {diff.sum()} px; agreement {agree:.5f}", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def read_manifest(data_dir: Path) -> dict:
    return json.loads((Path(data_dir) / "manifest.json").read_text())


def manifest_table(manifest: dict) -> pd.DataFrame:
    """The ground truth's provenance and masks, one row per mask file."""
    img, w = manifest["image"], manifest["weights"]
    rows = []
    for i, name in enumerate(manifest["files"]):
        rows.append(
            {
                "file": name,
                "model output index": manifest["order"][i],
                "area [% of pixels]": 100 * manifest["area_fractions"][i],
                "predicted IoU score": manifest["iou_scores"][i],
                "image": img["name"],
                "weights": ("SYNTHETIC " if w["synthetic"] else "") + w["name"],
            }
        )
    return pd.DataFrame(rows)


def plot_ground_truth(image: np.ndarray | None, manifest: dict):
    """The image with its prompt point, and the 3 ground-truth masks (smallest first)."""
    import matplotlib.pyplot as plt

    from samrep.config import REPO_ROOT  # noqa: F401  (the data dir is repo-relative)

    files = manifest["files"]
    fig, axes = plt.subplots(1, 1 + len(files), figsize=(4 * (1 + len(files)), 3.4))
    point = manifest["point"]
    data_dir = Path(manifest.get("data_dir", ""))
    masks = load_gt_masks(data_dir, manifest) if data_dir.is_dir() else None
    if image is not None:
        axes[0].imshow(image)
    axes[0].plot(*point, marker="*", color="cyan", markersize=14, markeredgecolor="k")
    axes[0].set_title(f"{manifest['image']['name']}\npoint {point}", fontsize=8)
    for i in range(len(files)):
        ax = axes[i + 1]
        if image is not None:
            ax.imshow(image)
        if masks is not None:
            ax.imshow(np.ma.masked_where(~masks[i], masks[i]), alpha=0.55, cmap="autumn")
        ax.plot(*point, marker="*", color="cyan", markersize=12, markeredgecolor="k")
        ax.set_title(
            f"sam_gt_{i}.pt: {100 * manifest['area_fractions'][i]:.1f}% of pixels", fontsize=8
        )
    for ax in axes:
        ax.axis("off")
    fig.suptitle(_weights_label(manifest["weights"]), fontsize=8)
    fig.tight_layout()
    return fig


def _weights_label(weights: dict) -> str:
    if weights.get("synthetic"):
        return f"SYNTHETIC weights ({weights['name']}, sha256 {weights['sha256'][:12]})"
    return f"weights {weights['name']} (sha256 {weights['sha256'][:12]})"


def load_gt_masks(data_dir: Path, manifest: dict) -> np.ndarray:
    import torch

    return np.stack(
        [torch.load(Path(data_dir) / f, weights_only=True).numpy() for f in manifest["files"]]
    )


def load_row_masks(report_path: Path, key: str) -> np.ndarray:
    from samrep.results import load_masks, results_dir

    return load_masks(results_dir(report_path) / f"{key}.masks.npz")


def table_caption(records: list[dict]) -> str:
    p = provenance(records)
    image = p["image"] or "?"
    weights = "SYNTHETIC weights" if p["weights_synthetic"] else f"weights {p['weights']}"
    return f"Image: {image}. {weights}. Device: {p['device']}."


def header_markdown(params, records: list[dict], manifest: dict) -> str:
    """Title, provenance and what the weights and image mean for `acc`."""
    p = provenance(records)
    lines = [
        f"# samrep report: {params.hw}",
        f"{params.description}",
        "",
        "| what | value |",
        "|---|---|",
        f"| device | {p['device']} |",
        f"| driver / CUDA | {p['driver'] or '-'} / {p['cuda'] or '-'} |",
        f"| CPU | {p['cpu']} |",
        f"| torch / transformers | {p['torch']} / {p['transformers']} |",
        f"| git commit | `{p['git_commit']}` |",
        f"| image | {manifest['image']['name']} (sha256 `{manifest['image']['sha256'][:16]}`) |",
        f"| prompt point | {manifest['point']} (x, y original pixels) |",
        f"| weights | {_weights_label(manifest['weights'])} |",
        f"| params | `{params.path}` |",
        f"| dataset | {params.data.datasize} copies x {params.data.repeat} passes, "
        f"{params.data.warmup} warm-up batches (published case: 1000 x 5) |",
        "",
    ]
    if manifest["weights"].get("synthetic"):
        lines.append(
            "**These results use synthetic weights** (seeded, the exact architecture): speed and "
            "memory are those of the real model, but `acc` only measures agreement with the fp32 "
            "reference of the same synthetic weights, not segmentation quality; numeric drift "
            "may differ from the real weights'."
        )
    if manifest["image"].get("fallback"):
        lines.append(
            "\n**The case's image car.png was not available here**: the offline fallback image "
            "(matplotlib's grace_hopper.jpg, with its own point) was used for the ground truth "
            "and every row."
        )
    failed = [r["key"] for r in records if r["status"] == "failed"]
    if failed:
        lines.append(f"\n**Failed rows**: {', '.join(failed)} (reasons in the tables below).")
    invalid = [r["key"] for r in records if _ok(r) and _validity([r]).startswith("no")]
    if invalid:
        lines.append(
            f"\n**Invalid measurements** (kept, marked in the `valid` column): {', '.join(invalid)}"
        )
    for stage in sorted((params.report_path / "stages").glob("*.json")):
        info = json.loads(stage.read_text())
        if info.get("status") == "failed":
            lines.append(f"\n**Stage {info['stage']} failed**: {info.get('reason')}")
    return "\n".join(lines)


def show_row_masks(records: list[dict], params, manifest: dict) -> None:
    """One mask figure per ok row (first image of the row against the ground truth)."""
    import matplotlib.pyplot as plt

    image = load_image(manifest)
    gt = load_gt_masks(params.data_path, manifest)
    for r in records:
        if not _ok(r):
            continue
        pred = load_row_masks(params.report_path, r["key"])
        title = (
            f"{r['key']} ({r.get('math_mode')}): acc {r['metrics']['acc']:.5f}, IoU "
            f"{r['metrics']['iou']:.4f}. {table_caption(records)}"
        )
        plot_masks(image, manifest["point"], gt, pred, manifest["order"], title)
        plt.show()


def plot_differences(image, gt: np.ndarray, pred: np.ndarray, order: list[int], title: str):
    """Zoom on the pixels where prediction and ground truth differ (red: missed, blue: extra)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(order), figsize=(5 * len(order), 4), squeeze=False)
    for i, idx in enumerate(order):
        ax = axes[0, i]
        missed, extra = gt[i] & ~pred[idx], pred[idx] & ~gt[i]
        ys, xs = np.nonzero(missed | extra)
        if image is not None:
            ax.imshow(image, alpha=0.6)
        overlay = np.zeros((*gt[i].shape, 4))
        overlay[missed] = (1, 0, 0, 1)
        overlay[extra] = (0, 0, 1, 1)
        ax.imshow(overlay)
        if len(xs):
            pad = 20
            ax.set_xlim(max(xs.min() - pad, 0), xs.max() + pad)
            ax.set_ylim(ys.max() + pad, max(ys.min() - pad, 0))
        ax.set_title(f"mask {i}: {missed.sum()} missed, {extra.sum()} extra px", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


METHOD_MARKDOWN = """\
## How these numbers were measured
- **p_*_core**: images / sum of core times; core = synchronize, host-to-device copy, forward,
  synchronize (`time.perf_counter` after the first and the last sync). **p_*_whole**: images /
  wall time of the whole loop (building each batch in host memory, core, post-processing to the
  original image size, scoring against the ground truth held in device memory). Warm-up batches
  are excluded from both. The dataset is the one sample repeated `datasize` times (drop_last),
  `repeat` passes.
- **acc**: mean over the 3 masks and every image of pixel agreement `(pred == gt).sum() / numel`
  at the original image size (not IoU, not top-1); shown as infer/val. **IoU** beside it.
- **MFU**: p_core x analytic FLOPs per image (encoder + prompt encoder + mask decoder, 2 FLOPs
  per multiply-add, from the model config; checked against `torch.utils.flop_counter`) / the
  params' dense peak at the precision that ran (fp32 means TF32 off). The original's convention
  (3.1e12 "FLOPs" per image, really the multiply-add count) is shown beside it.
- **mem**: on a GPU, whole-device used memory sampled by NVML every `memory_sample_ms` during
  build + measurement, peak / total GiB, with the framework's own peak; on a CPU, this process's
  resident set size / host RAM.
- **Precision**: the image encoder runs in the row's precision; the prompt encoder and mask
  decoder stay fp32 in every backend, so point coordinates are never rounded (the original's
  fp16 accuracy loss).
- **e2e_time**: ground truth + the val row (weights load, build, measurement) + the engine row
  (ONNX export when it was made, build or compile, measurement).
- **valid** (`samrep.validity`): every measurement timed at least `data.min_iterations` batches
  and `data.min_seconds` of core time, after at least one warm-up batch (excluded); the clock is
  `time.perf_counter` (monotonic, sub-microsecond); on a GPU no other process was on it at the
  start of the row (NVML; on a CPU the 1-minute load average is recorded, informational only);
  the ground-truth files and the weights match the manifest's sha256. A result failing a check
  is kept and marked "no: <checks>". With `data.measure_repeats` > 1 (or `bench --repeats`)
  each row is built once and measured that many times: p_core is the median, [min-max] beside it.
"""


def notes_markdown(params) -> str:
    """reports/<hw>/NOTES.md, if present: how a report was made and what to know about it."""
    path = params.report_path / "NOTES.md"
    return path.read_text() if path.is_file() else ""


def show_steps(params) -> None:
    """The fast backend's optimisation steps (reports/<hw>/steps.json), as a table and a plot."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    path = params.report_path / "steps.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    rows = [
        {
            "step": s["step"],
            "what": s["name"],
            "img/s": s.get("img_per_s"),
            "MFU [%]": 100 * s["mfu"] if s.get("mfu") is not None else None,
            "acc": s.get("acc"),  # vs the fp32 ground truth (steps.json from before: absent)
            "IoU": s.get("iou"),
            "max |logit diff| vs step 0": s.get("max_abs_diff"),
            "logit sign agreement vs step 0": s.get("mask_agreement"),
            "compile/capture [s]": s.get("compile_s"),
            "error": s.get("error", ""),
        }
        for s in data["steps"]
    ]
    df = pd.DataFrame(rows)
    display(
        Markdown(
            f"## Optimisation steps of the `fast` backend ({data['precision']}, bs "
            f"{data['bs']}, {data['iters']} timed iterations each, one run on "
            f"{data['environment'].get('device')}; core region without the host-to-device copy)"
        )
    )
    display(df.style.hide(axis="index").format(precision=4, na_rep="-"))
    ok = df.dropna(subset=["img/s"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(ok["what"][::-1], ok["img/s"][::-1], color="tab:blue")
    for y, v in enumerate(ok["img/s"][::-1]):
        ax.text(v, y, f" {v:.1f}", va="center", fontsize=8)
    ax.set_xlabel("images/s (whole model, one point)")
    ax.set_title("Each optimisation step, cumulative", fontsize=9)
    fig.tight_layout()
    plt.show()


def show_stage_files(params) -> None:
    """The export and build stages' tables (reports/<hw>/export.json, build.json), if any."""
    from IPython.display import Markdown, display

    from samrep.engines import stage_table

    for name, title in (("export", "ONNX exports"), ("build", "Engine builds")):
        path = params.report_path / f"{name}.json"
        if path.is_file():
            entries = json.loads(path.read_text())["rows"]
            if entries:
                display(Markdown(f"## {title}"))
                display(
                    stage_table(entries).style.hide(axis="index").format(precision=3, na_rep="-")
                )


def scaling_table(records: list[dict]) -> pd.DataFrame:
    """Rows measured on several processes (samrep.distributed): one line each.

    aggregate p_core = images of all ranks / the slowest rank's core time; efficiency =
    aggregate / (world size x the single-GPU p_core of the same run); acc and IoU are the
    minimum over ranks; memory is the largest per-GPU peak.
    """
    out = []
    for r in records:
        d = r.get("distributed") or {}
        if not _ok(r) or "per_rank" not in d:
            continue
        n = d["world_size"]
        out.append(
            {
                "row": r["key"],
                "world size": n,
                "single-GPU p_core [img/s]": d["single_gpu_p_core"],
                "ideal [img/s]": n * d["single_gpu_p_core"],
                "aggregate p_core [img/s]": d["aggregate_p_core"],
                "scaling efficiency [%]": 100 * d["scaling_efficiency"],
                "aggregate p_whole [img/s]": d["aggregate_p_whole"],
                "per-rank p_core [img/s]": " / ".join(f"{x['p_core']:.2f}" for x in d["per_rank"]),
                "acc (min over ranks)": d["acc_min"],
                "IoU (min over ranks)": d["iou_min"],
                "peak mem per GPU [GiB]": d["mem_peak_gib_max"],
                "start skew [ms]": d.get("start_skew_ms"),
            }
        )
    return pd.DataFrame(out)


def plot_scaling(records: list[dict], ax=None):
    """Per-rank p_core, the aggregate and the ideal (world size x single GPU), per row."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4))[1]
    rows = [r for r in records if _ok(r) and "per_rank" in (r.get("distributed") or {})]
    for i, r in enumerate(rows):
        d = r["distributed"]
        ranks = [x["p_core"] for x in d["per_rank"]]
        width = 0.8 / (len(ranks) + 2)
        x0 = i - 0.4 + width / 2
        ax.bar(x0, d["single_gpu_p_core"], width, color="tab:gray", label="single GPU" * (i == 0))
        for k, p in enumerate(ranks):
            ax.bar(x0 + (k + 1) * width, p, width, color="tab:blue", label="rank" * (i == k == 0))
        ax.bar(
            x0 + (len(ranks) + 1) * width,
            d["aggregate_p_core"],
            width,
            color="tab:green",
            label="aggregate" * (i == 0),
        )
        ax.hlines(
            d["world_size"] * d["single_gpu_p_core"],
            i - 0.45,
            i + 0.45,
            colors="black",
            linestyles="dashed",
            label="ideal (N x single)" * (i == 0),
        )
        ax.annotate(
            f"{100 * d['scaling_efficiency']:.0f}%",
            (x0 + (len(ranks) + 1) * width, d["aggregate_p_core"]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(
        range(len(rows)), [f"{r['key']}\n{r['distributed']['world_size']} ranks" for r in rows]
    )
    ax.set_ylabel("p_core [images/s]")
    ax.set_title("Scaling: per rank, aggregate and ideal")
    ax.grid(alpha=0.3, axis="y")
    if rows:
        ax.legend(fontsize=7)
    return ax


def show_scaling(records: list[dict]) -> None:
    """The scale-out table and plot, when any row ran on several processes."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    table = scaling_table(records)
    if table.empty:
        return
    display(Markdown("## Scale-out (torchrun, one process per GPU)"))
    display(table.style.hide(axis="index").format(precision=3, na_rep="-"))
    plot_scaling(records)
    plt.show()
