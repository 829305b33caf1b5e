"""The sample: car.png through the real hub client (a loopback imitation of the hub), the offline
fallback, image checks, SAM preprocessing and the repeated dataset. Nothing leaves 127.0.0.1."""

import dataclasses
import hashlib
import io
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image

from samrep.config import REPO_ROOT
from samrep.data import (
    CAR,
    FALLBACK,
    ModelInputs,
    RepeatedDataset,
    fetch_car,
    load_sample,
    open_image,
    preprocess,
)
from samrep.errors import SamrepError
from samrep.hub import hub_reachable

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = f"/{CAR.repo_id}/resolve/main/{CAR.filename}"


def png_bytes(width: int, height: int) -> bytes:
    """A small deterministic RGB PNG (a gradient: every pixel row and column differs)."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) % 256], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# Wider than the point's x (450) and taller than its y (600); the real car.png is 2646x1764.
CAR_PNG = png_bytes(480, 640)
CAR_SHA = hashlib.sha256(CAR_PNG).hexdigest()


class HubImitation:
    """The part of the Hugging Face hub that `hf_hub_download` talks to, for one LFS file.

    HEAD/GET /<repo>/resolve/main/<file>: 200 with X-Repo-Commit, ETag, X-Linked-Etag,
    X-Linked-Size and Content-Length (as the hub answers a resolve); anything else is a 404 with
    X-Error-Code: EntryNotFound. Every request is recorded as (method, path).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str]] = []
        imitation = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: shutdown never waits

            def _answer(self, body: bool) -> None:
                imitation.requests.append((self.command, self.path))
                data = imitation.files.get(self.path.split("?")[0])
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                digest = hashlib.sha256(data).hexdigest()
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{digest}"')
                self.send_header("X-Linked-Etag", f'"{digest}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):  # noqa: N802
                self._answer(body=False)

            def do_GET(self):  # noqa: N802
                self._answer(body=True)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=10)
            self.running = False


def closed_loopback_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def use_hf_hub(monkeypatch, home: Path, endpoint: str, offline: bool) -> Path:
    """Point the hub client at an empty cache under `home` and at `endpoint`; returns the cache.

    The environment variables are what a user sets. huggingface_hub reads them once, when it is
    imported (and it already is: samrep imports transformers), so its module constants are set to
    the values a fresh process would derive from the same variables.
    """
    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)
    return cache


@pytest.fixture
def hub():
    imitation = HubImitation({RESOLVE: CAR_PNG})
    yield imitation
    imitation.stop()


@pytest.fixture
def online(monkeypatch, tmp_path, hub):
    """Online against the loopback hub with an empty cache: (hub, cache folder)."""
    cache = use_hf_hub(monkeypatch, tmp_path / "hf", hub.url, offline=False)
    return hub, cache


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty cache (and an endpoint nothing listens on)."""
    return use_hf_hub(monkeypatch, tmp_path / "hf", closed_loopback_url(), offline=True)


# --- download and cache --------------------------------------------------------------------


def test_hub_reachable_sees_the_loopback_server(online):
    hub, _ = online
    assert hub_reachable(timeout_s=2)
    hub.stop()
    assert not hub_reachable(timeout_s=2)


def test_fetch_car_downloads_into_the_cache_then_reuses_it(online, monkeypatch):
    hub, cache = online
    assert not cache.exists() or not any(cache.iterdir())

    path, why = fetch_car()
    assert why == ""
    assert path is not None and path.is_file()
    assert path.resolve().is_relative_to(cache.resolve())
    assert path.read_bytes() == CAR_PNG
    assert ("HEAD", RESOLVE) in hub.requests and ("GET", RESOLVE) in hub.requests

    # cached: a second call does not ask the hub again
    seen = len(hub.requests)
    assert fetch_car() == (path, "")
    assert len(hub.requests) == seen

    # server gone: still found in the cache
    hub.stop()
    assert not hub_reachable(timeout_s=2)
    assert fetch_car() == (path, "")

    # and with HF_HUB_OFFLINE set
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    sample = load_sample("car")
    assert sample.path == str(path) and not sample.fallback


def test_fetch_car_reports_a_missing_file(online):
    hub, _ = online
    path, why = fetch_car(dataclasses.replace(CAR, filename="assets/no-such-car.png"))
    assert path is None
    assert why.startswith("download failed"), why
    assert any("no-such-car.png" in p for _, p in hub.requests)


def test_fetch_car_honours_env_vars_in_a_fresh_process(tmp_path, hub):
    """What a user does: only HF_ENDPOINT and HF_HOME, in a new interpreter."""
    home = tmp_path / "hf_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=hub.url, HF_HOME=str(home), NO_PROXY="127.0.0.1", PYTHONPATH=str(REPO_ROOT)
    )
    code = "from samrep.data import fetch_car; p, why = fetch_car(); print(p); print(repr(why))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[1] == "''", proc.stdout + proc.stderr
    path = Path(out[0])
    assert path.resolve().is_relative_to((home / "hub").resolve())
    assert path.read_bytes() == CAR_PNG
    assert ("GET", RESOLVE) in hub.requests


def test_load_sample_car_checks_the_sha256(online):
    with pytest.raises(SamrepError) as info:
        load_sample("car", car_sha256="0" * 64)
    message = str(info.value)
    path, _ = fetch_car()  # downloaded by the call above
    assert str(path) in message
    assert "sha256" in message and CAR_SHA in message and "0" * 64 in message

    sample = load_sample("car", car_sha256=CAR_SHA)
    assert sample.sha256 == CAR_SHA
    assert sample.fallback is False
    assert sample.spec == CAR
    assert sample.path == str(path)
    assert sample.image.shape == (640, 480, 3) and sample.image.dtype == np.uint8
    assert np.array_equal(sample.image, np.asarray(Image.open(io.BytesIO(CAR_PNG))))
    assert sample.describe()["sha256"] == CAR_SHA


def test_load_sample_auto_prefers_car_when_available(online):
    sample = load_sample("auto")
    assert sample.fallback is False
    assert sample.sha256 == CAR_SHA


# --- offline / unreachable -----------------------------------------------------------------


def test_offline_auto_falls_back_to_grace_hopper(offline):
    sample = load_sample("auto")
    assert sample.fallback is True
    assert sample.spec == FALLBACK
    assert sample.sha256 == FALLBACK.sha256
    assert Path(sample.path).name == "grace_hopper.jpg"
    assert sample.image.shape == (FALLBACK.size[1], FALLBACK.size[0], 3)
    assert sample.describe()["fallback"] is True
    assert not any(offline.rglob("*.png"))


def test_offline_car_is_an_error(offline):
    with pytest.raises(SamrepError) as info:
        load_sample("car")
    message = str(info.value)
    assert "car" in message and "HF_HUB_OFFLINE" in message


def test_unreachable_hub_falls_back_or_errors(monkeypatch, tmp_path):
    use_hf_hub(monkeypatch, tmp_path / "hf", closed_loopback_url(), offline=False)
    assert not hub_reachable(timeout_s=2)
    assert load_sample("auto").fallback is True
    with pytest.raises(SamrepError, match="unreachable"):
        load_sample("car")


def test_fallback_choice_never_asks_the_hub(monkeypatch, tmp_path, hub):
    use_hf_hub(monkeypatch, tmp_path / "hf", hub.url, offline=False)
    assert load_sample("fallback").fallback is True
    assert hub.requests == []


def test_unknown_image_choice():
    with pytest.raises(SamrepError, match="data.image"):
        load_sample("bicycle")


# --- image checks --------------------------------------------------------------------------


def test_undecodable_image_names_the_path(tmp_path):
    path = tmp_path / "car.png"
    path.write_bytes(b"this is not a png at all")
    with pytest.raises(SamrepError) as info:
        open_image(path, CAR, None)
    assert str(path) in str(info.value) and "decode" in str(info.value)


def test_truncated_png_names_the_path(tmp_path):
    path = tmp_path / "car.png"
    path.write_bytes(CAR_PNG[: len(CAR_PNG) // 2])
    with pytest.raises(SamrepError) as info:
        open_image(path, CAR, None)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("size", [(450, 640), (480, 600), (100, 100)])
def test_point_outside_the_image(tmp_path, size):
    path = tmp_path / "small.png"
    path.write_bytes(png_bytes(*size))
    with pytest.raises(SamrepError) as info:
        open_image(path, CAR, None)
    message = str(info.value)
    assert str(path) in message and "outside" in message and f"{size[0]}x{size[1]}" in message


def test_point_just_inside_is_fine(tmp_path):
    path = tmp_path / "edge.png"
    path.write_bytes(png_bytes(451, 601))
    sample = open_image(path, CAR, hashlib.sha256(path.read_bytes()).hexdigest())
    assert sample.image.shape == (601, 451, 3)


def test_grayscale_is_converted_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((700, 500), 77, np.uint8), mode="L").save(path)
    sample = open_image(path, CAR, None)
    assert sample.image.shape == (700, 500, 3)
    assert (sample.image == 77).all()


# --- preprocessing and dataset -------------------------------------------------------------


@pytest.fixture(scope="module")
def car_sized_inputs(tmp_path_factory) -> ModelInputs:
    """An image of the real car.png size (2646x1764) through open_image and preprocess."""
    path = tmp_path_factory.mktemp("img") / "car.png"
    path.write_bytes(png_bytes(*CAR.size))
    return preprocess(open_image(path, CAR, None))


def test_preprocess_shapes_and_point(car_sized_inputs):
    inputs = car_sized_inputs
    width, height = CAR.size
    scale = 1024 / max(width, height)
    assert inputs.pixel_values.shape == (1, 3, 1024, 1024)
    assert inputs.pixel_values.dtype == torch.float32
    assert inputs.input_points.shape == (1, 1, 1, 2)
    assert inputs.input_points.dtype == torch.float32
    assert inputs.original_size == (height, width)
    assert inputs.reshaped_size == (round(height * scale), 1024)
    x, y = inputs.input_points[0, 0, 0].tolist()
    assert x == pytest.approx(CAR.point[0] * scale, abs=0.5)
    assert y == pytest.approx(CAR.point[1] * scale, abs=0.5)
    # resized into the top-left corner, zero padding below
    rows = inputs.reshaped_size[0]
    assert inputs.pixel_values[..., rows:, :].abs().max() == 0
    assert inputs.pixel_values[..., :rows, :].abs().amax(dim=(0, 1, 3)).min() > 0
    # normalized (ImageNet mean/std), not raw 0..255
    assert -3 < inputs.pixel_values.min() < 0 < inputs.pixel_values.max() < 3


def test_preprocess_fallback_portrait(offline):
    inputs = preprocess(load_sample("auto"))
    width, height = FALLBACK.size  # 512x600: portrait, height is the longest side
    scale = 1024 / height
    assert inputs.pixel_values.shape == (1, 3, 1024, 1024)
    assert inputs.original_size == (height, width)
    assert inputs.reshaped_size == (1024, round(width * scale))
    x, y = inputs.input_points[0, 0, 0].tolist()
    assert x == pytest.approx(FALLBACK.point[0] * scale, abs=0.5)
    assert y == pytest.approx(FALLBACK.point[1] * scale, abs=0.5)


@pytest.mark.parametrize(
    ("datasize", "bs", "batches"), [(5, 2, 2), (4, 2, 2), (3, 3, 1), (7, 1, 7)]
)
def test_repeated_dataset_drops_the_last_batch(car_sized_inputs, datasize, bs, batches):
    data = RepeatedDataset(car_sized_inputs, datasize=datasize, bs=bs)
    assert len(data) == datasize // bs == batches
    seen = list(data)
    assert len(seen) == batches
    for pixel_values, input_points in seen:
        assert pixel_values.shape == (bs, 3, 1024, 1024)
        assert input_points.shape == (bs, 1, 1, 2)
        assert pixel_values.is_contiguous() and input_points.is_contiguous()
        assert torch.equal(pixel_values[-1], car_sized_inputs.pixel_values[0])
        assert torch.equal(input_points[-1], car_sized_inputs.input_points[0])


@pytest.mark.parametrize("bs", [1, 2])
def test_repeated_dataset_batches_are_fresh_copies(car_sized_inputs, bs):
    """Every batch is its own copy (the per-batch "data loading"), at bs=1 too."""
    source = car_sized_inputs
    before = source.pixel_values.clone()
    kept = []  # keep every batch alive so no storage can be recycled between batches
    for pixel_values, input_points in RepeatedDataset(source, datasize=2 * bs, bs=bs):
        assert pixel_values.untyped_storage().data_ptr() != source.pixel_values.data_ptr()
        assert input_points.untyped_storage().data_ptr() != source.input_points.data_ptr()
        for old, _ in kept:
            assert pixel_values.data_ptr() != old.data_ptr()
        pixel_values.zero_()  # a consumer writing into its batch must not change the source
        kept.append((pixel_values, input_points))
    assert len(kept) == 2
    assert torch.equal(source.pixel_values, before)


@pytest.mark.parametrize(("datasize", "bs"), [(4, 0), (4, 5)])
def test_repeated_dataset_rejects_bad_bs(car_sized_inputs, datasize, bs):
    with pytest.raises(SamrepError, match="bs"):
        RepeatedDataset(car_sized_inputs, datasize=datasize, bs=bs)
