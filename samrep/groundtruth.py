"""Ground-truth stage: the HF docs example on the CPU in fp32 -> 3 boolean masks.

Writes into `data_dir`: `sam_gt_0.pt`..`sam_gt_2.pt` (bool (H, W) at the original image size,
ordered from the smallest mask to the largest), `inputs.pt` (the preprocessed sample every later
stage uses), and `manifest.json` last, so a manifest on disk means the stage finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from samrep.config import HwParams
from samrep.data import ModelInputs, load_params_sample, preprocess
from samrep.errors import SamrepError
from samrep.faults import checkpoint
from samrep.metrics import postprocess_masks
from samrep.model import WeightsInfo, load_model
from samrep.progress import log
from samrep.results import atomic_write_bytes, atomic_write_json

NUM_MASKS = 3
MANIFEST = "manifest.json"


@dataclass
class GroundTruth:
    """The reference: masks (3, H, W) bool, smallest first; order[i] = model output index."""

    masks: torch.Tensor
    order: list[int]
    inputs: ModelInputs
    manifest: dict
    # file name -> whether its sha256 matches the manifest's (empty: the manifest has none)
    files_match: dict = field(default_factory=dict)


def _save_tensor(path: Path, obj) -> str:
    """Save atomically; returns the file's sha256 (kept in the manifest)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def weights_cache(params: HwParams) -> Path:
    return params.data_path / "weights"


def load_params_model(params: HwParams):
    """The model and its WeightsInfo for these params (synthetic weights cached in data_dir)."""
    m = params.model
    local = params.weights_path  # a local folder, resolved from the repo root (inside data_dir)
    return load_model(
        str(local) if local is not None else m.weights,
        m.arch,
        m.allow_synthetic,
        m.seed,
        weights_cache(params),
        m.attn_implementation,
    )


def reference_masks(model, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 CPU forward, multimask -> (masks (3, H, W) bool in model order, iou_scores (3,))."""
    with torch.inference_mode():
        out = model(
            pixel_values=inputs.pixel_values,
            input_points=inputs.input_points,
            multimask_output=True,
        )
    masks = postprocess_masks(out.pred_masks[:, 0], inputs.reshaped_size, inputs.original_size)
    return masks[0], out.iou_scores[0, 0]


def run_ground_truth(params: HwParams, force: bool = False) -> GroundTruth:
    """Make (or reuse) the ground truth of `params`."""
    data_dir = params.data_path
    sample = load_params_sample(params)
    model, weights = load_params_model(params)
    stamp = _stamp(sample.sha256, weights, params)
    manifest_path = data_dir / MANIFEST
    if manifest_path.is_file() and not force:
        old = json.loads(manifest_path.read_text())
        if old.get("stamp") == stamp:
            log(f"ground truth: reusing {data_dir} (same image, weights and point)")
            return load_ground_truth(params)
        log("ground truth: stale (image, weights or point changed); recomputing")

    log(f"ground truth: {sample.spec.name}, point {sample.spec.point}, fp32 on the CPU")
    t0 = time.perf_counter()
    inputs = preprocess(sample)
    masks, iou_scores = reference_masks(model, inputs)
    areas = masks.flatten(1).sum(1)
    numel = masks[0].numel()
    for i, a in enumerate(areas.tolist()):
        if a == 0 or a == numel:
            raise SamrepError(
                f"ground truth: mask {i} is {'empty' if a == 0 else 'full'} with weights "
                f"'{weights.name}': the weights or the prompt are broken"
            )
    order = torch.argsort(areas, stable=True).tolist()
    data_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # the old manifest must not vouch for new files
    hashes = {}
    for i, idx in enumerate(order):
        hashes[f"sam_gt_{i}.pt"] = _save_tensor(data_dir / f"sam_gt_{i}.pt", masks[idx].clone())
    hashes["inputs.pt"] = _save_tensor(
        data_dir / "inputs.pt",
        {
            "pixel_values": inputs.pixel_values,
            "input_points": inputs.input_points,
            "original_size": inputs.original_size,
            "reshaped_size": inputs.reshaped_size,
        },
    )
    checkpoint("groundtruth:written")  # test hook: files written, the manifest not yet
    manifest = {
        "stamp": stamp,
        "image": sample.describe(),
        "weights": weights.to_dict(),
        "point": list(sample.spec.point),
        "point_1024": inputs.input_points.flatten().tolist(),
        "original_size": list(inputs.original_size),
        "reshaped_size": list(inputs.reshaped_size),
        "files": [f"sam_gt_{i}.pt" for i in range(NUM_MASKS)],
        "files_sha256": hashes,
        "order": order,
        "order_meaning": "sam_gt_i.pt is model output mask order[i]; smallest area first",
        "areas": [int(areas[i]) for i in order],
        "area_fractions": [float(areas[i]) / numel for i in order],
        "iou_scores": [float(iou_scores[i]) for i in order],
        "precision": "fp32",
        "device": "cpu",
        "data_dir": str(data_dir),
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_json(manifest_path, manifest)
    log(f"ground truth: wrote {data_dir} (mask areas {manifest['area_fractions']})")
    return GroundTruth(masks[order].clone(), order, inputs, manifest, dict.fromkeys(hashes, True))


def _stamp(image_sha256: str, weights: WeightsInfo, params: HwParams) -> dict:
    from samrep.resume import code_version

    return {
        "image_sha256": image_sha256,
        "weights_sha256": weights.sha256,
        "arch": params.model.arch,
        "image_choice": params.data.image,
        "point": list(params.data.point),
        "code_version": code_version(),
    }


def load_ground_truth(params: HwParams) -> GroundTruth:
    """Read and check the ground truth of `params`: count, dtype and shape of every mask."""
    data_dir = params.data_path
    manifest_path = data_dir / MANIFEST
    if not manifest_path.is_file():
        raise SamrepError(
            f"{manifest_path}: ground truth missing; run `python -m samrep groundtruth "
            f"--hw {params.hw}` first"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        size = tuple(manifest["original_size"])
        files = list(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SamrepError(
            f"{manifest_path}: unreadable manifest ({exc}); rerun groundtruth"
        ) from None
    if len(files) != NUM_MASKS:
        raise SamrepError(f"{manifest_path}: expected {NUM_MASKS} masks, lists {len(files)}")
    masks = []
    for name in files:
        path = data_dir / name
        if not path.is_file():
            raise SamrepError(f"{path}: ground-truth mask missing")
        try:
            m = torch.load(path, weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SamrepError(
                f"{path}: unreadable ground-truth mask ({type(exc).__name__}: {first})"
            ) from None
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != size:
            what = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m)
            raise SamrepError(f"{path}: expected a bool mask of shape {size}, got {what}")
        masks.append(m)
    if not (data_dir / "inputs.pt").is_file():
        raise SamrepError(f"{data_dir / 'inputs.pt'}: ground-truth inputs missing")
    raw = torch.load(data_dir / "inputs.pt", weights_only=True)
    inputs = ModelInputs(
        raw["pixel_values"],
        raw["input_points"],
        tuple(raw["original_size"]),
        tuple(raw["reshaped_size"]),
    )
    hashes = manifest.get("files_sha256") or {}
    files_match = {n: _file_sha256(data_dir / n) == h for n, h in hashes.items()}
    return GroundTruth(torch.stack(masks), list(manifest["order"]), inputs, manifest, files_match)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
