"""The backend registry, `onnxruntime` and `inductor` on the tiny config, and "not run" rows.

Measured on the tiny model (CPU, fp32) against the eager `torch` backend: onnxruntime max
|diff| 1.8e-6 on low_res_masks (max |ref| ~1) and 6.6e-7 on iou_scores; inductor 1.1e-6 and
4.8e-7. The tests allow 1e-4, and >= 0.999 agreement of the post-processed masks.
"""

from types import SimpleNamespace

import pydantic
import pytest
import torch

from samrep.backends import BACKENDS, BackendUnavailable, get_backend
from samrep.backends.onnx_engine import MIN_ACC, EngineCheckFailed, EngineIOError
from samrep.backends.onnx_export import example_batch
from samrep.backends.onnxruntime import OnnxRuntimeBackend, stream_option
from samrep.data import ModelInputs
from samrep.errors import SamrepError
from samrep.metrics import postprocess_masks
from samrep.model import synthetic_init_, tiny_config

RESHAPED, ORIGINAL = (683, 1024), (1764, 2646)  # the car image's sizes
ATOL = 1e-4
MIN_AGREEMENT = 0.999


@pytest.fixture(scope="module")
def model():
    from transformers import SamModel

    torch.manual_seed(0)  # the prompt encoder's random Fourier features are a buffer
    return synthetic_init_(SamModel(tiny_config()), 0).eval()


@pytest.fixture(scope="module")
def batch2():
    """Two distinct images and points: (2, 3, 1024, 1024), (2, 1, 1, 2)."""
    return example_batch(None, 2)


@pytest.fixture(scope="module")
def inputs(batch2):
    pixel_values, input_points = batch2
    return ModelInputs(pixel_values[:1], input_points[:1], ORIGINAL, RESHAPED)


@pytest.fixture(scope="module")
def reference(model, inputs, batch2, tmp_path_factory):
    backend = get_backend("torch")("cpu", "fp32", {}, tmp_path_factory.mktemp("torch"), bs=2)
    backend.build(model, inputs)
    return backend.run(*batch2)


def assert_matches(outputs, reference, batch):
    masks, iou = outputs
    want_masks, want_iou = (t[:batch] for t in reference)
    assert masks.shape == (batch, 3, 256, 256) and iou.shape == (batch, 3)
    assert masks.dtype == iou.dtype == torch.float32
    assert (masks - want_masks).abs().max().item() <= ATOL
    assert (iou - want_iou).abs().max().item() <= ATOL
    got = postprocess_masks(masks, RESHAPED, ORIGINAL)
    want = postprocess_masks(want_masks, RESHAPED, ORIGINAL)
    assert (got == want).float().mean().item() >= MIN_AGREEMENT


# ---------------------------------------------------------------- registry


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(SamrepError) as err:
        get_backend("tensorflow")
    message = str(err.value)
    assert "unknown backend 'tensorflow'" in message
    assert all(name in message for name in BACKENDS)


def test_a_backend_module_that_cannot_import_is_unavailable(monkeypatch):
    monkeypatch.setitem(BACKENDS, "missing", ("samrep.backends.no_such_toolkit:Backend", ()))
    with pytest.raises(BackendUnavailable, match="cannot import"):
        get_backend("missing")


def test_registered_names_resolve():
    assert get_backend("onnxruntime").name == "onnxruntime"
    assert get_backend("inductor").name == "inductor"


# ---------------------------------------------------------------- onnxruntime


def test_onnxruntime_without_cuda_provider_is_unavailable_on_cuda():
    import onnxruntime as ort

    if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()):
        pytest.skip("this onnxruntime has a CUDA execution provider")
    with pytest.raises(BackendUnavailable, match="no CUDA provider in this onnxruntime"):
        get_backend("onnxruntime").check_available("cuda", "fp32")


@pytest.mark.parametrize("precision", ["tf32", "fp16", "bf16"])
def test_onnxruntime_cpu_runs_fp32_only(precision):
    with pytest.raises(BackendUnavailable):
        get_backend("onnxruntime").check_available("cpu", precision)


def test_onnxruntime_rejects_bad_options(tmp_path):
    cls = get_backend("onnxruntime")
    with pytest.raises(pydantic.ValidationError, match="fp16_layernorm"):
        cls("cpu", "fp32", {"fp16_layernorm": True}, tmp_path)
    with pytest.raises(pydantic.ValidationError, match="gpu_mem_limit_gib"):
        cls("cuda", "fp16", {"gpu_mem_limit_gib": 0}, tmp_path)
    with pytest.raises(ValueError, match="cuda_graph: needs a static batch"):
        cls("cuda", "fp16", {"cuda_graph": True}, tmp_path)


def test_ort_is_never_given_torchs_default_stream():
    """ORT reads user_compute_stream 0 (the handle of torch's default stream) as "none" and then
    runs on a non-blocking stream of its own, unordered with torch's non_blocking input copies:
    the wrong fp16 masks of issue 12. The backend gives ORT a stream of its own, never 0."""
    with pytest.raises(ValueError, match="user_compute_stream 0"):
        stream_option(0)
    assert stream_option(0x7F00DEAD) == str(0x7F00DEAD)


@pytest.fixture(scope="module")
def ort_cpu(model, inputs, tmp_path_factory):
    backend = get_backend("onnxruntime")("cpu", "fp32", {}, tmp_path_factory.mktemp("ort"), bs=2)
    backend.check_available("cpu", "fp32")
    backend.build(model, inputs)
    return backend


def test_onnxruntime_matches_torch(ort_cpu, batch2, reference):
    assert ort_cpu.math_mode == "fp32" and ort_cpu.verify  # the engine check exists
    assert ort_cpu.versions()["providers"] == {"encoder": "CPUExecutionProvider"} | {
        "decoder": "CPUExecutionProvider"
    }
    for batch in (2, 1):  # one export, dynamic batch
        pixel_values, input_points = (t[:batch] for t in batch2)
        assert_matches(ort_cpu.run(pixel_values, input_points), reference, batch)
    with pytest.raises(EngineIOError, match="'pixel_values': dtype torch.float64"):
        ort_cpu.run(batch2[0].double(), batch2[1])


def test_onnxruntime_whole_graph_matches_torch(model, inputs, batch2, reference, tmp_path):
    backend = get_backend("onnxruntime")("cpu", "fp32", {"part": "whole"}, tmp_path, bs=2)
    backend.build(model, inputs)
    assert list(backend.sessions) == ["model"]
    assert_matches(backend.run(*batch2), reference, 2)


# ---------------------------------------------------------------- the engine check


@pytest.fixture(scope="module")
def ground_truth(model, inputs):
    """A ground truth duck-typed as samrep.groundtruth.GroundTruth: the fp32 PyTorch masks of
    the sample at a small original size (the check's arithmetic does not depend on it)."""
    small = ModelInputs(inputs.pixel_values, inputs.input_points, (300, 450), (683, 1024))
    with torch.no_grad():
        out = model(pixel_values=small.pixel_values, input_points=small.input_points)
    masks = postprocess_masks(out.pred_masks[:, 0], small.reshaped_size, small.original_size)[0]
    return SimpleNamespace(inputs=small, masks=masks, order=[0, 1, 2])


def test_engine_check_passes_a_right_engine(ort_cpu, ground_truth):
    record = ort_cpu.verify(ground_truth)
    assert record["acc"] >= 0.9999 and record["threshold"] == MIN_ACC["fp32"] == 0.999
    assert record["bs"] == 2 and set(record) == {"acc", "iou", "threshold", "bs"}


class EarlyReader(OnnxRuntimeBackend):
    """Reads its input buffers before torch's copy into them landed (what ORT on a stream of its
    own did): the engine check poisons them with NaN before the copy, so it sees NaN."""

    def run(self, pixel_values, input_points):
        return super().run(torch.full_like(pixel_values, float("nan")), input_points)


class WrongBinding(OnnxRuntimeBackend):
    """Binds the image of another batch entry (a batch-axis / binding mix-up)."""

    def run(self, pixel_values, input_points):
        return super().run(pixel_values.flip(-1), input_points)


@pytest.mark.parametrize("cls", [EarlyReader, WrongBinding])
def test_engine_check_fails_a_wrong_engine_with_both_figures(ort_cpu, ground_truth, cls):
    wrong = cls.__new__(cls)
    wrong.__dict__.update(ort_cpu.__dict__)  # the same built sessions, another run()
    with pytest.raises(EngineCheckFailed) as err:
        wrong.verify(ground_truth)
    message = str(err.value)
    acc = float(message.split("acc ")[1].split(" ")[0])
    assert acc < 0.999 and "< 0.999" in message and "onnxruntime fp32 bs 2" in message


# ---------------------------------------------------------------- inductor


# torch's own compile path warns that torch.jit.script_method is deprecated: not ours to fix
@pytest.mark.filterwarnings("ignore:.*script_method.*:DeprecationWarning")
def test_inductor_matches_eager(model, inputs, batch2, reference, tmp_path):
    """One compile at bs 2 (~45 s cold on 2 cores), then bs 1 (a recompile, ~25 s)."""
    backend = get_backend("inductor")("cpu", "fp32", {}, tmp_path, bs=2)
    backend.check_available("cpu", "fp32")
    backend.build(model, inputs)
    assert backend.math_mode.startswith("fp32") and backend.versions()["compile_s"] > 0
    assert_matches(backend.run(*batch2), reference, 2)
    assert_matches(backend.run(*(t[:1] for t in batch2)), reference, 1)


def test_inductor_refusals(tmp_path):
    cls = get_backend("inductor")
    with pytest.raises(BackendUnavailable, match="TF32"):
        cls.check_available("cpu", "tf32")
    with pytest.raises(BackendUnavailable, match="fp16"):
        cls.check_available("cpu", "fp16")
    with pytest.raises(ValueError, match="backend"):  # an unknown option: pydantic names it
        cls("cpu", "fp32", {"backend": "eager"}, tmp_path)


# ---------------------------------------------------------------- evaluate: ok and "not run"


def test_evaluate_onnxruntime_row_and_a_not_run_row(make_params):
    from samrep import stages

    runs = [
        {"phase": "infer", "backend": "onnxruntime", "precision": "fp32", "bs": 2},
        {"phase": "infer", "backend": "onnxruntime", "precision": "tf32", "bs": 1},
    ]
    params = make_params("ortrow", runs=runs)
    stages.groundtruth(params)
    ok, not_run = stages.evaluate(params)
    assert ok.status == "ok", ok.reason
    assert ok.scores.acc >= MIN_AGREEMENT  # ground truth is PyTorch fp32 on these weights
    assert ok.engine_check["acc"] >= 0.999 and ok.engine_check["bs"] == 2
    assert ok.math_mode == "fp32" and "onnxruntime" in ok.versions
    assert ok.scores.embeddings_rel_l2 < 1e-4 and ok.scores.logits_rel_l2 < 1e-4
    assert (params.data_path / "engines" / "onnx").is_dir()  # the export cache, per hw
    assert not_run.status == "not_run" and "fp32 only, not tf32" in not_run.reason
