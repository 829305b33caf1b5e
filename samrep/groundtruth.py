"""Ground-truth stage: the HF docs example on the CPU in fp32 -> in `data_dir`: `sam_gt_{0,1,2}.pt`
(bool (H, W) at the original size, smallest first), `inputs.pt` (the preprocessed sample),
`reference.pt` (fp32 image embeddings (1, 256, 64, 64), low-res logits (1, 3, 256, 256)) and
`manifest.json` last (on disk: finished), whose stamp names the image, point, weights and code."""

import time
from dataclasses import dataclass, field

import torch

from samrep import store
from samrep.config import HwParams
from samrep.data import ModelInputs, load_params_sample, preprocess
from samrep.errors import SamrepError
from samrep.faults import checkpoint
from samrep.metrics import postprocess_masks
from samrep.model import load_model
from samrep.progress import log

NUM_MASKS = 3
MANIFEST = "manifest.json"
CODE = ("groundtruth", "data", "metrics", "model")  # the code the ground truth depends on
RERUN, REDO = "rerun `python -m samrep groundtruth --force`", "rerun groundtruth --force"


@dataclass
class GroundTruth:
    """The reference: masks (3, H, W) bool, smallest first; order[i] = model output index."""

    masks: torch.Tensor
    order: list[int]
    inputs: ModelInputs
    manifest: dict
    ref_embeddings: torch.Tensor | None = None  # (1, 256, 64, 64) fp32
    ref_logits: torch.Tensor | None = None  # (1, 3, 256, 256) fp32, model output order
    files_match: dict = field(default_factory=dict)  # file -> sha256 matches the manifest


def load_params_model(params: HwParams):
    """The fp32 CPU model and its WeightsInfo (synthetic weights cached in data_dir/weights)."""
    m, local, cache = params.model, params.weights_path, params.data_path / "weights"
    weights = str(local) if local else m.weights
    return load_model(weights, m.arch, m.allow_synthetic, m.seed, cache, m.attn_implementation)


def stamp(image_sha256: str, weights_sha256: str, point) -> dict:
    """What a ground truth depends on: the image, the weights, the point (x, y) and this code."""
    code = store.code_digest(*CODE)
    return {"image": image_sha256, "weights": weights_sha256, "point": list(point), "code": code}


def run_ground_truth(params: HwParams, force: bool = False) -> GroundTruth:
    """Make (or reuse, when its stamp holds) the ground truth of `params`."""
    data_dir = params.data_path
    sample = load_params_sample(params)
    model, weights = load_params_model(params)
    now = stamp(sample.sha256, weights.sha256, sample.spec.point)
    if (data_dir / MANIFEST).exists() and not force:
        try:  # a damaged ground truth is remade, said once; only a fresh, whole one is reused
            old = store.read_json(data_dir / MANIFEST, "manifest")
            fresh = isinstance(old, dict) and store.is_fresh(old.get("stamp"), now)
            gt = load_ground_truth(params) if fresh else None
            damage = "" if gt is None or all(gt.files_match.values()) else "files changed"
        except SamrepError as exc:
            gt, damage = None, str(exc).split("; rerun")[0]
        if gt is not None and not damage:
            log(f"ground truth: reusing {data_dir} (same image, point, weights and code)")
            return gt
        log(f"ground truth: {'damaged (' + damage + ')' if damage else 'stale'}; recomputing")
    log(f"ground truth: {sample.spec.name}, point {sample.spec.point}, fp32 on the CPU")
    t0 = time.perf_counter()
    inputs = preprocess(sample)
    with torch.inference_mode():
        emb = model.get_image_embeddings(inputs.pixel_values)
        out = model(image_embeddings=emb, input_points=inputs.input_points, multimask_output=True)
    masks = postprocess_masks(out.pred_masks[:, 0], inputs.reshaped_size, inputs.original_size)[0]
    areas, numel = masks.flatten(1).sum(1), masks[0].numel()
    for i, a in enumerate(areas.tolist()):
        if a in (0, numel):
            raise SamrepError(
                f"ground truth: mask {i} is {'empty' if a == 0 else 'full'} with "
                f"weights '{weights.name}': the weights or the prompt are broken"
            )
    order = torch.argsort(areas, stable=True).tolist()
    store.remove(data_dir / MANIFEST)  # the old manifest must not vouch for new files
    refs = {"image_embeddings": emb.clone(), "low_res_logits": out.pred_masks[:, 0].clone()}
    files = {f"sam_gt_{i}.pt": masks[j].clone() for i, j in enumerate(order)}  # clone: no views
    files |= {"inputs.pt": vars(inputs), "reference.pt": refs}  # inputs.pt: ModelInputs' fields
    hashes = {name: store.save_tensors(data_dir / name, obj) for name, obj in files.items()}
    checkpoint("groundtruth:written")  # test hook: files written, the manifest not yet
    point, point_1024 = list(sample.spec.point), inputs.input_points.flatten().tolist()
    manifest = dict(stamp=store.digest(now), image=sample.describe(), weights=weights.to_dict())
    manifest |= dict(point=point, point_1024=point_1024, original_size=list(inputs.original_size))
    manifest |= dict(reshaped_size=list(inputs.reshaped_size), files_sha256=hashes, order=order)
    manifest |= dict(area_fractions=[float(areas[i]) / numel for i in order])
    manifest |= dict(iou_scores=[float(out.iou_scores[0, 0, i]) for i in order])
    manifest["seconds"] = time.perf_counter() - t0
    store.write_json(data_dir / MANIFEST, manifest)
    log(f"ground truth: wrote {data_dir} (mask areas {manifest['area_fractions']})")
    return load_ground_truth(params)


def _load(path, what: str):
    if not path.is_file():
        raise SamrepError(f"{path}: {what} missing; {RERUN}")
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:
        raise SamrepError(f"{path}: unreadable {what} ({type(exc).__name__}); {RERUN}") from None


def load_ground_truth(params: HwParams) -> GroundTruth:
    """Read and check the ground truth of `params`: every file, dtype and shape."""
    data_dir, path = params.data_path, params.data_path / MANIFEST
    if not path.is_file():
        raise SamrepError(
            f"{path}: ground truth missing; run `python -m samrep groundtruth --hw {params.hw}` first"
        )
    manifest = store.read_json(path, "ground-truth manifest")
    if not isinstance(manifest, dict):
        raise SamrepError(f"{path}: ground-truth manifest is not a JSON object; rerun groundtruth")
    try:
        size, order = tuple(manifest["original_size"]), list(manifest["order"])
        hashes = dict(manifest["files_sha256"])
        manifest["weights"]["sha256"], manifest["image"]["sha256"]  # noqa: B018
    except KeyError as exc:
        raise SamrepError(f"{path}: manifest without {exc}; {REDO}") from None
    except TypeError as exc:
        raise SamrepError(f"{path}: malformed manifest ({exc}); {REDO}") from None
    masks = []
    for i in range(NUM_MASKS):
        m = _load(data_dir / f"sam_gt_{i}.pt", "ground-truth mask")
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != size:
            raise SamrepError(f"{data_dir / f'sam_gt_{i}.pt'}: not a bool mask of shape {size}")
        masks.append(m)
    raw = _load(data_dir / "inputs.pt", "ground-truth inputs")
    ref = _load(data_dir / "reference.pt", "fp32 reference")
    try:
        pv, points = raw["pixel_values"], raw["input_points"]
        inputs = ModelInputs(pv, points, tuple(raw["original_size"]), tuple(raw["reshaped_size"]))
        emb, logits = ref["image_embeddings"], ref["low_res_logits"]
    except (KeyError, TypeError, IndexError) as exc:
        raise SamrepError(
            f"{data_dir}: malformed inputs.pt or reference.pt ({type(exc).__name__}: {exc}); {REDO}"
        ) from None
    match = {}  # file -> its sha256 matches the manifest
    for name, sha in hashes.items():
        match[name] = (data_dir / name).is_file() and store.sha256_file(data_dir / name) == sha
    return GroundTruth(torch.stack(masks), order, inputs, manifest, emb, logits, match)
