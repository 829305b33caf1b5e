"""Bad input: the image, the prompt point, the ground-truth masks, the params and the weights.

Each is one error line naming the cause ("samrep: error: ..."), exit status 2, and no result
written. The CLI runs in this process (samrep.cli.main) to keep the tests fast; the exit
status of a real process is checked in tests/test_config.py.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from samrep.cli import main
from samrep.config import REPO_ROOT
from tests.folders import safe_rmtree


def write_params(tmp_path: Path, runs=None, model=None, top=None, **data) -> tuple[Path, dict]:
    """A copy of params/tiny.yaml with its own (not yet existing) data and report folders."""
    raw = yaml.safe_load((REPO_ROOT / "params/tiny.yaml").read_text())
    tag = f"pytest-{uuid.uuid4().hex[:8]}"
    raw["data"]["data_dir"] = f"data/{tag}"
    raw["report_dir"] = f"build/{tag}"
    raw["runs"] = runs or [{"phase": "val", "backend": "torch", "precision": "fp32", "bs": 1}]
    raw["data"].update(data)
    raw["model"].update(model or {})
    raw.update(top or {})
    path = tmp_path / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw


@pytest.fixture
def folders():
    """Removes the test's own data and report folders (data/pytest-*, build/pytest-* only)."""
    made: list[dict] = []
    yield made
    for raw in made:
        safe_rmtree(REPO_ROOT / raw["data"]["data_dir"])
        safe_rmtree(REPO_ROOT / raw["report_dir"])


def expect_error(argv: list[str], capfd, *needles: str) -> str:
    """The command fails with exit 2 and exactly one error line, its last, naming `needles`."""
    capfd.readouterr()
    rc = main(argv)
    lines = capfd.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("samrep: error:")]
    assert rc == 2, lines
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def nothing_written(raw: dict) -> None:
    data, report = REPO_ROOT / raw["data"]["data_dir"], REPO_ROOT / raw["report_dir"]
    assert not (data / "manifest.json").exists()
    assert not list(data.glob("sam_gt_*.pt")) if data.is_dir() else True
    assert not list((report / "results").glob("*.json")) if report.is_dir() else True


# --- the image and its prompt point ---------------------------------------------------------


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    if mode == "I;16":
        Image.fromarray(np.full((height, width), 4000, np.uint16)).save(buf, format="PNG")
    else:
        Image.new(mode, (width, height), 100).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = {
    "undecodable": (b"this is not an image", [10, 10], "cannot decode image"),
    "truncated": (png(200, 160)[:60], [10, 10], "cannot decode image"),
    "16-bit": (png(200, 160, "I;16"), [10, 10], "mode I;16 has more than 8 bits per channel"),
    "too-small": (png(8, 200), [2, 2], "image is 8x200; each side must be at least 16 px"),
    "point-outside": (png(200, 160), [150, 170], "prompt point (150.0, 170.0) is outside"),
    "point-negative": (png(200, 160), [-1, 10], "prompt point (-1.0, 10.0) is outside"),
}


@pytest.mark.parametrize("case", IMAGES)
def test_bad_image_or_point(case, tmp_path, folders, capfd):
    content, point, cause = IMAGES[case]
    path, raw = write_params(tmp_path, image=None, point=point)
    folders.append(raw)
    image = REPO_ROOT / raw["data"]["data_dir"] / "image.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(content)
    raw["data"]["image"] = str(image.relative_to(REPO_ROOT))
    path.write_text(yaml.safe_dump(raw))
    error = expect_error(["groundtruth", "--hw", str(path)], capfd, cause)
    assert str(image) in error
    nothing_written(raw)


def test_good_image_path_is_converted_to_rgb(tmp_path, folders):
    """The positive control: a grayscale file inside data_dir, with its point, runs."""
    from samrep.config import load_params
    from samrep.groundtruth import run_ground_truth

    path, raw = write_params(tmp_path, image=None, point=[30, 40])
    folders.append(raw)
    image = REPO_ROOT / raw["data"]["data_dir"] / "gray.png"
    image.parent.mkdir(parents=True)
    yy, xx = np.mgrid[0:160, 0:200]
    Image.fromarray(((xx * 3 + yy) % 256).astype(np.uint8), mode="L").save(image)
    raw["data"]["image"] = str(image.relative_to(REPO_ROOT))
    path.write_text(yaml.safe_dump(raw))
    gt = run_ground_truth(load_params(str(path)))
    assert tuple(gt.masks.shape) == (3, 160, 200)
    assert gt.manifest["image"]["name"] == raw["data"]["image"]
    assert gt.manifest["point"] == [30.0, 40.0]


# --- the params -------------------------------------------------------------------------------

PARAMS = {
    "bs-0": (dict(runs=[{"backend": "torch", "precision": "fp32", "bs": 0}]), "runs[0].bs"),
    "repeat-0": (dict(repeat=0), "data.repeat: must be >= 1"),
    "datasize-0": (dict(datasize=0), "data.datasize: must be >= 1"),
    "min-iterations-0": (dict(min_iterations=0), "data.min_iterations: must be >= 1"),
    "measure-repeats-0": (dict(measure_repeats=0), "data.measure_repeats: must be >= 1"),
    "min-seconds-negative": (dict(min_seconds=-1), "data.min_seconds: must be >= 0"),
    "precision-ort-bf16": (
        dict(runs=[{"backend": "onnxruntime", "precision": "bf16", "bs": 1}]),
        "runs[0].precision: backend 'onnxruntime' has no bf16 mode (has fp32, tf32, fp16)",
    ),
    "precision-torch-fp8": (
        dict(runs=[{"backend": "torch", "precision": "fp8", "bs": 1}]),
        "backend 'torch' has no fp8 mode",
    ),
    "image-outside-data-dir": (dict(image="params/tiny.yaml", point=[1, 1]), "data.image"),
    "image-escapes-with-dotdot": (dict(image="data/../README.md", point=[1, 1]), "data.image"),
    "image-path-without-point": (dict(image="data/x.png"), "data.point: an image path needs"),
    "point-with-a-choice": (dict(point=[1, 2]), "data.point: only for an image path"),
    "data-dir-in-code": (dict(data_dir="samrep/out"), "inside the code folder 'samrep/'"),
    "report-dir-repo-root": (dict(top={"report_dir": "."}), "is the repository root itself"),
    "report-dir-outside": (dict(top={"report_dir": "/tmp/x"}), "outside the repository"),
    "weights-outside-data-dir": (
        dict(model={"weights": "/tmp/sam-weights"}),
        "model.weights = '/tmp/sam-weights' is outside data.data_dir",
    ),
}


@pytest.mark.parametrize("case", PARAMS)
def test_bad_params(case, tmp_path, folders, capfd):
    kwargs, cause = PARAMS[case]
    kwargs = dict(kwargs)
    runs, model, top = kwargs.pop("runs", None), kwargs.pop("model", None), kwargs.pop("top", None)
    path, raw = write_params(tmp_path, runs=runs, model=model, top=top, **kwargs)
    folders.append(raw)
    error = expect_error(["groundtruth", "--hw", str(path)], capfd, cause)
    assert str(path) in error  # names the file
    nothing_written(raw)


# --- the weights ------------------------------------------------------------------------------


def test_weights_of_another_architecture(tmp_path, folders, tiny_model, capfd):
    """A local folder (inside data_dir) holding tiny weights while the params say ViT-H."""
    path, raw = write_params(tmp_path, model={"arch": "vit_h", "allow_synthetic": False})
    folders.append(raw)
    folder = REPO_ROOT / raw["data"]["data_dir"] / "weights" / "mine"
    tiny_model.save_pretrained(folder)
    raw["model"]["weights"] = str(folder.relative_to(REPO_ROOT))
    path.write_text(yaml.safe_dump(raw))
    expect_error(
        ["groundtruth", "--hw", str(path)],
        capfd,
        "weights are not the 'vit_h' architecture (vision hidden_size = 32, expected 1280)",
    )
    nothing_written(raw)


# --- the ground-truth masks -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    """One tiny ground truth; each test corrupts a copy of it."""
    from samrep.config import load_params
    from samrep.groundtruth import run_ground_truth

    path, raw = write_params(tmp_path_factory.mktemp("gt"))
    run_ground_truth(load_params(str(path)))
    yield REPO_ROOT / raw["data"]["data_dir"]
    safe_rmtree(REPO_ROOT / raw["data"]["data_dir"])


def _drop_a_file(data: Path) -> None:
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["files"] = manifest["files"][:2]
    (data / "manifest.json").write_text(json.dumps(manifest))


GT = {
    "count": (_drop_a_file, "manifest.json: expected 3 masks, lists 2"),
    "dtype": (
        lambda d: torch.save(torch.zeros(600, 512), d / "sam_gt_1.pt"),
        "sam_gt_1.pt: expected a bool mask of shape (600, 512), got torch.float32 (600, 512)",
    ),
    "shape": (
        lambda d: torch.save(torch.zeros(512, 600, dtype=torch.bool), d / "sam_gt_2.pt"),
        "sam_gt_2.pt: expected a bool mask of shape (600, 512), got torch.bool (512, 600)",
    ),
    "missing": (lambda d: (d / "sam_gt_0.pt").unlink(), "sam_gt_0.pt: ground-truth mask missing"),
    "not-a-tensor-file": (
        lambda d: (d / "sam_gt_0.pt").write_bytes(b"garbage"),
        "sam_gt_0.pt: unreadable ground-truth mask",
    ),
}


@pytest.mark.parametrize("case", GT)
def test_bad_ground_truth(case, ground_truth, tmp_path, folders, capfd):
    corrupt, cause = GT[case]
    path, raw = write_params(tmp_path)
    folders.append(raw)
    data = REPO_ROOT / raw["data"]["data_dir"]
    shutil.copytree(ground_truth, data)
    corrupt(data)
    expect_error(["evaluate", "--hw", str(path)], capfd, cause)
    assert not (REPO_ROOT / raw["report_dir"] / "results").exists()
