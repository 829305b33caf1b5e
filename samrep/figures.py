"""The summary's figures (matplotlib, no IPython), and `load_report`: what they draw. One plot of
a column against another (`plot_metric`), one drawing of masks against the truth (`mask_overlay`)."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import cbook
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from samrep.record import Record
from samrep.store import sha256_file
from samrep.tables import PUBLISHED_P_CORE, best_rows, fmt, label, load_records


@dataclass
class ReportData:
    """What one report folder holds: the records and, where they exist, the inputs to draw."""

    folder: Path
    records: list[Record]
    problems: list[str] = field(default_factory=list)  # one line per file that could not be read
    manifest: dict = field(default_factory=dict)
    gt: np.ndarray | None = None  # (3, H, W) bool, smallest mask first
    reference: str = "the ground truth"  # what the masks are compared with
    image: np.ndarray | None = None  # (H, W, 3) uint8
    masks: dict = field(default_factory=dict)  # key -> (3, H, W) bool, each best row's


def load_masks(data: ReportData, rec: Record) -> np.ndarray | None:
    """A row's first-image masks (3, H, W) bool; None (and a problem line) when unreadable."""
    path = data.folder / "results" / (rec.masks_file or f"{rec.key}.masks.npz")
    try:
        with np.load(path) as z:
            masks = z["masks"]
        if masks.ndim != 3 or (data.gt is not None and masks.shape[1:] != data.gt.shape[1:]):
            raise ValueError(f"shape {masks.shape}")
        return masks.astype(bool)
    except Exception as exc:  # a corrupt npz raises zipfile/pickle/key errors of many kinds
        data.problems.append(f"{path.name}: masks not readable ({type(exc).__name__}: {exc})")
        return None


def _image(info: dict) -> np.ndarray | None:
    """The image the ground truth used: its path, else matplotlib's copy of the fallback image."""
    path = Path(info.get("path") or "")
    if not path.is_file() and (info.get("name") or "").startswith("grace_hopper"):
        path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    if not path.is_file() or sha256_file(path) != info.get("sha256"):
        return None
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_report(folder: Path, data_dir: Path | None = None, keys=None) -> ReportData:
    """Records, ground truth (data_dir: manifest.json, sam_gt_*.pt), image and the best rows'
    masks; without the ground truth here, the fp32 HF eager row's masks stand in (`reference`)."""
    data = ReportData(Path(folder), *load_records(folder, keys))
    path = Path(data_dir or "") / "manifest.json"
    try:
        import torch

        data.manifest = json.loads(path.read_text())
        files = [Path(data_dir) / f"sam_gt_{i}.pt" for i in range(3)]  # smallest mask first
        data.gt = np.stack([torch.load(f, weights_only=True).numpy() for f in files]).astype(bool)
    except FileNotFoundError:
        pass
    except Exception as exc:
        data.problems.append(f"{path}: ground truth not readable ({type(exc).__name__}: {exc})")
    first = next((r for r in data.records if r.inputs.get("image")), None)
    data.image = _image(data.manifest.get("image") or (first.inputs["image"] if first else {}))
    ref = [r for r in data.records if r.row.phase == "val" and r.status == "ok" and r.masks_file]
    ref = sorted(ref, key=lambda r: (r.row.precision != "fp32", r.row.bs))[:1]
    if data.gt is None and ref and (gt := load_masks(data, ref[0])) is not None:
        data.gt = gt[(ref[0].inputs.get("ground_truth") or {}).get("order", [0, 1, 2])]
        data.reference = f"{ref[0].key}'s masks (the ground truth is not on this machine)"
    masks = {r.key: load_masks(data, r) for r in best_rows(data.records) if r.masks_file}
    data.masks = {k: m for k, m in masks.items() if m is not None}
    return data


LABELS = {"bs": "batch size", "p_core": "p_core [images/s]", "acc": "acc (pixel agreement)"}
MISSED, EXTRA = (0.9, 0.05, 0.05), (0.1, 0.35, 1.0)  # in the ground truth only / prediction only


def plot_metric(df: pd.DataFrame, y: str, x: str = "bs", ax=None, upper: str | None = None):
    """Column y against x of `tables.frame(records)`, a line per engine over its batch sizes (each
    point labelled with its bs where x is not bs); `upper`: a column drawn as a bar above it."""
    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    ok = df[(df["status"] == "ok") & df[y].notna() & df[x].notna()] if len(df) else df
    for name, g in ok.sort_values("bs").groupby("engine") if len(ok) else []:
        (line,) = ax.plot(g[x], g[y], marker="o", ms=4, label=name, lw=1 if x == "bs" else 0.6)
        if upper:
            ax.vlines(g[x], g[y], g[upper], color=line.get_color(), lw=2, alpha=0.5)
        if x != "bs":
            for xi, yi, bs in zip(g[x], g[y], g["bs"], strict=True):
                ax.annotate(f"bs{bs}", (xi, yi), fontsize=6)
    ax.set_xscale("log", base=2) if x == "bs" else None
    ax.set(xlabel=LABELS.get(x, x), ylabel=LABELS.get(y, y))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7) if len(ok) else None
    return ax


def headline_figure(records: list, df: pd.DataFrame):
    """Throughput against acc (every row) beside each engine's best p_core (bars)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), width_ratios=(1.2, 1))
    plot_metric(df, "p_core", x="acc", ax=a)
    a.set_title("Throughput against agreement, one point per engine, precision and bs", fontsize=8)
    best = best_rows(records)[::-1]  # fastest last: barh draws it at the top
    values = [r.timing.p_core for r in best]
    b.barh([label(r) for r in best], values, color="tab:blue")
    for i, v in enumerate(values):
        b.text(v, i, f" {v:.3g}", va="center", fontsize=7)
    top = max(values, default=0)  # a reference far off hides the bars
    refs = {f"A100 TRT {p} (published)": v for p, v in PUBLISHED_P_CORE.items() if v < 3 * top}
    for i, (name, x) in enumerate(refs.items()):
        b.axvline(x, color=f"C{i + 1}", ls="--", lw=1, label=name)
    b.legend(fontsize=7, loc="lower right") if refs else None  # the published rows, dashed
    b.set_xlabel(LABELS["p_core"])
    b.tick_params(axis="y", labelsize=7)
    b.set_title("Each engine's best p_core", fontsize=8)
    fig.tight_layout()
    return fig


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)-square, so that single pixels survive downscaling."""
    rows = sliding_window_view(np.pad(mask, ((r, r), (0, 0))), 2 * r + 1, axis=0).any(-1)
    return sliding_window_view(np.pad(rows, ((0, 0), (r, r))), 2 * r + 1, axis=1).any(-1)


def cluster_window(diff: np.ndarray, size: float = 0.25) -> tuple[slice, slice]:
    """The (size x image) window holding the most differing pixels (all of it when none)."""
    h, w = diff.shape
    wh, ww = max(8, int(h * size)), max(8, int(w * size))
    if not diff.any():
        return slice(0, h), slice(0, w)
    c = np.pad(diff.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = c[wh:, ww:] - c[:-wh, ww:] - c[wh:, :-ww] + c[:-wh, :-ww]
    y, x = np.unravel_index(np.argmax(sums), sums.shape)
    return slice(y, y + wh), slice(x, x + ww)


def mask_overlay(ax, image, gt: np.ndarray, pred: np.ndarray, window=None, r: int = 0) -> None:
    """The image greyed, the ground-truth mask tinted, pixels that differ coloured (red: missed,
    blue: extra), dilated by r; window: (rows, cols) slices to zoom on."""
    rgb = np.zeros((*gt.shape, 3)) + 0.6 if image is None else image.mean(-1, keepdims=True) / 255
    rgb = np.broadcast_to(rgb, (*gt.shape, 3)) * 0.55 + 0.4
    rgb = np.where(gt[..., None], rgb * (0.75, 0.9, 0.75), rgb)
    for where, colour in ((gt & ~pred, MISSED), (pred & ~gt, EXTRA)):
        rgb = np.where(dilate(where, r)[..., None], colour, rgb)
    ax.imshow(rgb[window or (slice(None), slice(None))], interpolation="nearest")
    ax.set(xticks=[], yticks=[])


def masks_figure(data: ReportData, keys: list[str] | None = None):
    """One figure row per record (`keys`, default: the best rows but the reference), each of its
    3 masks against data.gt whole, then zoomed onto where the differing pixels cluster."""
    by_key, rows = {r.key: r for r in data.records}, []
    for key in keys or [k for k in data.masks if not data.reference.startswith(k)]:
        rec = by_key[key]
        pred = data.masks[key] if key in data.masks else load_masks(data, rec)
        if pred is not None:
            order = (rec.inputs.get("ground_truth") or {}).get("order", [0, 1, 2])
            rows.append((f"{label(rec)}\nacc {fmt(rec.scores.acc)}", pred[order]))
    if not rows or data.gt is None:
        return None
    gt, (h, w) = data.gt, data.gt.shape[1:]
    size = (2 * len(gt) * 2.1, len(rows) * 2.1 * h / w + 0.5)
    fig, axes = plt.subplots(len(rows), 2 * len(gt), figsize=size, squeeze=False)
    r = max(1, w // 250)
    for ax_row, (title, pred) in zip(axes, rows, strict=True):
        for i, (g, p) in enumerate(zip(gt, pred, strict=True)):
            diff = g != p
            win = cluster_window(diff)
            mask_overlay(ax_row[2 * i], data.image, g, p, r=r)
            mask_overlay(ax_row[2 * i + 1], data.image, g, p, window=win, r=max(1, r // 2))
            agree = f"mask {i}: {100 * (1 - diff.mean()):.3f}% agree, {diff.sum()} px differ"
            ax_row[2 * i].set_title(agree, fontsize=7)
            ax_row[2 * i + 1].set_title(f"zoom: {diff[win].sum()} of them", fontsize=7)
        ax_row[0].set_ylabel(title, fontsize=7)
    fig.tight_layout(h_pad=0.3, w_pad=0.2)
    return fig


def plot_ground_truth(image, gt: np.ndarray, point, title: str = ""):
    """The image with its prompt point, then each ground-truth mask (smallest first)."""
    fig, axes = plt.subplots(1, 1 + len(gt), figsize=(3.2 * (1 + len(gt)), 3))
    axes[0].imshow(image if image is not None else np.ones((*gt.shape[1:], 3)))
    axes[0].set_title(title, fontsize=8)
    for i, (ax, mask) in enumerate(zip(axes[1:], gt, strict=True)):
        mask_overlay(ax, image, mask, mask)
        ax.set_title(f"sam_gt_{i}.pt: {100 * mask.mean():.1f}% of pixels", fontsize=8)
    for ax in axes:
        ax.plot(*point, marker="*", color="cyan", markersize=12, markeredgecolor="k")
        ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    return fig
