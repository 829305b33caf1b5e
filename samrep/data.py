"""The one sample of the case: the image, its prompt point, SAM preprocessing, the repeated dataset.
The image is `car.png` of the HF SamModel docs (hub `ybelkada/segment-anything`, 2646x1764, point
(450, 600)), through the hub client's cache. With neither network nor cache it falls back to
matplotlib's `grace_hopper.jpg` (512x600, point (400, 450) on her jacket), named in every result."""

import contextlib
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from samrep.errors import SamrepError
from samrep.hub import hub_reachable, offline_mode
from samrep.progress import log
from samrep.store import sha256_file


@dataclass(frozen=True)
class ImageSpec:
    """An image of the benchmark and its prompt: one positive point (x, y) in original pixels."""

    name: str
    point: tuple[float, float]
    sha256: str | None  # pinned hash; None until a run has seen the file (then it is recorded)
    size: tuple[int, int]  # (width, height) as documented
    repo_id: str = ""
    filename: str = ""


# sha256 not pinned yet: no machine this project has run on could reach the hub. The first run
# that downloads it records the hash in the ground-truth manifest; pin it here then.
CAR = ImageSpec(
    "car.png", (450.0, 600.0), None, (2646, 1764), "ybelkada/segment-anything", "assets/car.png"
)
FALLBACK = ImageSpec(
    name="grace_hopper.jpg (matplotlib sample data; offline fallback)",
    point=(400.0, 450.0),
    sha256="a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
    size=(512, 600),
)


@dataclass(frozen=True)
class Sample:
    """The loaded image with its provenance. `image` is RGB, HWC uint8 in [0, 255]."""

    spec: ImageSpec
    image: np.ndarray
    path: str
    sha256: str
    fallback: bool

    def describe(self) -> dict:
        return asdict(self.spec) | dict(path=self.path, sha256=self.sha256, fallback=self.fallback)


MIN_IMAGE_SIDE = 16  # below it, the pixel-agreement metric has almost no pixels
HIGH_BIT_DEPTH_MODES = ("I", "F")  # > 8 bits per channel: RGB conversion clips (I;16 -> white)


def open_image(path: Path, spec: ImageSpec, expected_sha256: str | None) -> Sample:
    """Open and check an image: checksum, decodability, RGB conversion, size, point inside."""

    def bad(why: str) -> SamrepError:  # every error names the file
        return SamrepError(f"{path}: {why}")

    if not Path(path).is_file():
        raise bad("image file not found")
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256:
        raise bad(f"sha256 {digest} does not match the pinned {expected_sha256} for {spec.name}")
    try:
        with Image.open(path) as im:
            mode, (width, height), limit = im.mode, im.size, Image.MAX_IMAGE_PIXELS
            if width * height > limit:
                raise bad(f"image is {width}x{height}, more than PIL's limit of {limit} pixels")
            if mode.split(";")[0] in HIGH_BIT_DEPTH_MODES:
                raise bad(
                    f"image mode {mode} has more than 8 bits per channel; converting it to 8-bit "
                    "RGB would clip it (save it as 8-bit RGB first)"
                )
            image = np.asarray(im.convert("RGB"))
    except SamrepError:
        raise
    except Exception as exc:  # PIL raises several types for undecodable files
        raise bad(f"cannot decode image ({exc})") from None
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = f"{image.dtype} {image.shape}"
        raise bad(f"RGB conversion of mode {mode} gave {shape}, not (H, W, 3) uint8")
    height, width = image.shape[:2]
    if min(width, height) < MIN_IMAGE_SIDE:
        raise bad(f"image is {width}x{height}; each side must be at least {MIN_IMAGE_SIDE} px")
    x, y = spec.point
    if not (0 <= x < width and 0 <= y < height):
        raise bad(f"prompt point ({x}, {y}) is outside the {width}x{height} image")
    if spec.size != (0, 0) and (width, height) != spec.size:
        log(f"image: {path} is {width}x{height}, documented {spec.size[0]}x{spec.size[1]}")
    return Sample(spec=spec, image=image, path=str(path), sha256=digest, fallback=False)


def load_params_sample(params) -> Sample:
    """The image of `params`: data.image as a choice (load_sample) or a file with data.point."""
    path = params.image_path
    if path is None:
        return load_sample(params.data.image)
    point = tuple(float(v) for v in params.data.point)
    spec = ImageSpec(params.data.image, point, sha256=None, size=(0, 0))  # size: whatever it is
    return open_image(path, spec, None)


def fetch_car(spec: ImageSpec = CAR) -> tuple[Path | None, str]:
    """car.png via the hub: its cache, else the network if allowed; (path, "") or (None, why)."""
    from huggingface_hub import hf_hub_download

    kwargs = dict(repo_id=spec.repo_id, filename=spec.filename)
    with contextlib.suppress(Exception):  # LocalEntryNotFoundError and friends: not cached
        return Path(hf_hub_download(**kwargs, local_files_only=True)), ""
    if offline_mode():
        return None, "not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return None, "not in the Hugging Face cache and the hub is unreachable"
    log(f"image: downloading {spec.repo_id}/{spec.filename}")
    try:
        return Path(hf_hub_download(**kwargs)), ""
    except Exception as exc:
        return None, f"download failed: {str(exc).splitlines()[0]}"


def load_sample(choice: str = "auto", car_sha256: str | None = CAR.sha256) -> Sample:
    """The benchmark's image: "car" (must be available), "fallback", or "auto" (car, else fallback)."""
    if choice not in ("auto", "car", "fallback"):
        raise SamrepError(f"data.image: '{choice}' is not one of auto, car, fallback")
    if choice in ("auto", "car"):
        path, reason = fetch_car(CAR)
        if path is not None:
            return open_image(path, CAR, car_sha256)
        if choice == "car":
            raise SamrepError(f"data.image = car: {CAR.repo_id}/{CAR.filename} {reason}")
        log(f"image: car.png {reason}; using the FALLBACK image grace_hopper.jpg")
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return replace(open_image(path, FALLBACK, FALLBACK.sha256), fallback=True)


@dataclass(frozen=True)
class ModelInputs:
    """SamProcessor output for the sample (batch 1), as the model takes it."""

    pixel_values: torch.Tensor  # (1, 3, 1024, 1024) float32: longest side 1024, normalized, padded
    input_points: torch.Tensor  # (1, 1, 1, 2) float32: (x, y) in the resized 1024 frame
    original_size: tuple[int, int]  # (H, W) of the image
    reshaped_size: tuple[int, int]  # (h, w) after resizing, before padding


def preprocess(sample: Sample) -> ModelInputs:
    """The standard SamProcessor preprocessing of the HF docs example."""
    from transformers import SamImageProcessor, SamProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torchvision-less fallback warns; it is the same math
        processor = SamProcessor(image_processor=SamImageProcessor())
        x, y = sample.spec.point
        enc = processor(images=sample.image, input_points=[[[x, y]]], return_tensors="pt")
    sizes = [tuple(int(v) for v in enc[k][0]) for k in ("original_sizes", "reshaped_input_sizes")]
    return ModelInputs(enc["pixel_values"].float(), enc["input_points"].float(), *sizes)


class RepeatedDataset:
    """One sample repeated `datasize` times, in batches of `bs` (drop_last, as the original), each
    built from host memory every time (that copy is the "data loading" of the whole region)."""

    def __init__(self, inputs: ModelInputs, datasize: int, bs: int, pin_memory: bool = False):
        if bs < 1:
            raise SamrepError(f"bs: must be >= 1, got {bs}")
        if bs > datasize:
            raise SamrepError(f"bs: {bs} is larger than datasize {datasize}")
        self.inputs, self.datasize, self.bs, self.pin = inputs, datasize, bs, pin_memory

    def __len__(self) -> int:
        return self.datasize // self.bs

    def __iter__(self):
        # clone, not contiguous(): at bs=1 the expand is already contiguous and would be the
        # source tensor itself (no copy, and one tensor shared by every batch)
        inputs = self.inputs
        views = [t.expand(self.bs, -1, -1, -1) for t in (inputs.pixel_values, inputs.input_points)]
        for _ in range(len(self)):
            batch = [t.clone(memory_format=torch.contiguous_format) for t in views]
            yield tuple(t.pin_memory() for t in batch) if self.pin else tuple(batch)
