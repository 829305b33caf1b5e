"""Vendor engines (TensorRT, Kunlunxin XTCL) and the ONNX engine base they share.

Everywhere: samrep's own logic (options, the I/O contract and its checks, batch profiles, math
modes, "not run" reasons). With the toolkit and its device: the tiny model's engines against
eager PyTorch; otherwise those tests are skipped with the reason.
"""

import importlib.util

import pydantic
import pytest
import torch

from samrep.backends import BackendUnavailable, get_backend
from samrep.backends import onnx_engine as oe
from samrep.backends.tensorrt import TensorRTBackend
from samrep.backends.xtcl import XtclBackend, declared
from samrep.model import tiny_config

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_TVM = importlib.util.find_spec("tvm") is not None
CONFIG = tiny_config()


def test_registry_resolves_both_vendor_backends_without_their_toolkits():
    assert get_backend("tensorrt") is TensorRTBackend and get_backend("xtcl") is XtclBackend


@pytest.mark.skipif(HAVE_TRT and torch.cuda.is_available(), reason="TensorRT and a GPU are here")
@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_tensorrt_unavailable_here_says_why(device):
    with pytest.raises(BackendUnavailable) as exc:
        TensorRTBackend.check_available(device, "fp8")
    reason = str(exc.value)
    assert "tensorrt has no fp8 mode" in reason and "\n" not in reason  # one report cell
    assert HAVE_TRT or "TensorRT Python package not installed" in reason
    assert device == "cuda" or "NVIDIA GPUs (device cuda)" in reason


@pytest.mark.skipif(HAVE_TVM, reason="a `tvm` package is installed here")
def test_xtcl_unavailable_here_says_why():
    with pytest.raises(BackendUnavailable) as exc:
        XtclBackend.check_available("cuda", "fp16")
    assert str(exc.value).startswith("Kunlunxin XTCL not installed (not public)")
    assert "torch on the CPU" in str(exc.value)


# ---------------------------------------------------------------- the contract and its checks


def test_contract_names_dtypes_and_shapes():
    ins, outs = oe.contract(CONFIG, "decoder")
    assert [s.name for s in ins] == ["image_embeddings", "input_points"]
    assert [s.name for s in outs] == ["low_res_masks", "iou_scores"]
    assert ins[0] == oe.TensorSpec("image_embeddings", torch.float32, (None, 32, 64, 64))
    assert oe.contract(CONFIG, "encoder", batch=4)[0][0].shape == (4, 3, 1024, 1024)


def test_match_contract_takes_fp16_and_refuses_the_rest():
    want, _ = oe.contract(CONFIG, "encoder")
    got = oe.match_contract(want, {"pixel_values": (torch.float16, ("batch", 3, 1024, 1024))}, "e")
    assert got[0].dtype is torch.float16 and got[0].shape == (None, 3, 1024, 1024)
    assert oe.match_contract(want, {"pixel_values": (torch.float32, (2, 3, 1024, 1024))}, "e")[
        0
    ].shape == (2, 3, 1024, 1024)
    with pytest.raises(oe.EngineIOError, match="no 'pixel_values'"):
        oe.match_contract(want, {"images": (torch.float32, (-1, 3, 1024, 1024))}, "e")
    with pytest.raises(oe.EngineIOError, match="'pixel_values' is torch.int64"):
        oe.match_contract(want, {"pixel_values": (torch.int64, (-1, 3, 1024, 1024))}, "e")
    with pytest.raises(oe.EngineIOError, match="want"):
        oe.match_contract(want, {"pixel_values": (torch.float32, (-1, 3, 512, 512))}, "e")


def feeds(bs=2, points=torch.float32, device="cpu"):
    emb = torch.zeros(bs, 32, 64, 64, device=device)
    return {"image_embeddings": emb, "input_points": torch.zeros(bs, 1, 1, 2, dtype=points)}


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda f: f.update(input_points=f["input_points"].half()), "'input_points': dtype"),
        (lambda f: f.pop("input_points"), "given"),
        (lambda f: f.update(extra=torch.zeros(1)), "given"),
        (lambda f: f.update(input_points=torch.zeros(3, 1, 1, 2)), "'input_points': shape"),
        (lambda f: f.update(input_points=torch.zeros(2, 1, 1, 4)[..., ::2]), "contiguous"),
    ],
)
def test_check_tensors_names_the_tensor(change, match):
    ins, _ = oe.contract(CONFIG, "decoder")
    f = feeds()
    assert oe.check_tensors(ins, f, "dec", "cpu") == 2
    change(f)
    with pytest.raises(oe.EngineIOError, match=match):
        oe.check_tensors(ins, f, "dec", "cpu")
    with pytest.raises(oe.EngineIOError, match="on cuda"):
        oe.check_tensors(ins, feeds(), "dec", "cuda")


def test_batch_profile_is_1_to_bs():
    dyn, _ = oe.contract(CONFIG, "encoder")
    assert oe.batch_profile(dyn[0], 4) == ((1, 3, 1024, 1024), (4, 3, 1024, 1024)) + (
        (4, 3, 1024, 1024),
    )
    static, _ = oe.contract(CONFIG, "encoder", batch=2)
    assert oe.batch_profile(static[0], 2)[0] == (2, 3, 1024, 1024)
    with pytest.raises(oe.EngineIOError, match="static batch 2, the row bs 4"):
        oe.batch_profile(static[0], 4)


# ---------------------------------------------------------------- TensorRT and XTCL options


def test_trt_options_math_mode_and_part_precision(tmp_path):
    def trt(precision, **options):
        return TensorRTBackend("cuda", precision, options, tmp_path, bs=2)

    assert trt("fp32").math_mode == "fp32 (TF32 off)"  # the original's "fp32" ran TF32
    assert trt("tf32").math_mode == trt("fp32", allow_tf32=True).math_mode == "fp32 (TF32 allowed)"
    fp16 = trt("fp16")
    assert fp16.math_mode.startswith("fp16 image encoder (normalization, softmax fp32)")
    assert fp16.part_precision("decoder") == "fp32" and fp16.part_precision("encoder") == "fp16"
    assert trt("fp16", decoder_precision="same").part_precision("decoder") == "fp16"
    assert fp16.graph_precision() == "fp32"  # TensorRT lowers precision itself
    assert trt("fp16", workspace_gib=2).opts.workspace_gib == 2.0


@pytest.mark.parametrize(
    "options, field",
    [
        ({"workspce_gib": 4}, "workspce_gib"),
        ({"workspace_gib": 0}, "workspace_gib"),
        ({"opset": 14}, "opset"),
        ({"decoder_precision": "fp16"}, "decoder_precision"),
        ({"optimization_level": 9}, "optimization_level"),
        ({"fp32_layers": ["layernorm"]}, "fp32_layers"),
        ({"part": "encoder"}, "part"),
    ],
)
def test_trt_bad_options_name_the_field(tmp_path, options, field):
    with pytest.raises(pydantic.ValidationError, match=field):
        TensorRTBackend("cuda", "fp16", options, tmp_path, bs=2)


def test_trt_tf32_with_tf32_disallowed_is_a_contradiction(tmp_path):
    with pytest.raises(ValueError, match="contradicts precision tf32"):
        TensorRTBackend("cuda", "tf32", {"allow_tf32": False}, tmp_path)


def test_xtcl_options_and_math_mode(tmp_path):
    x = XtclBackend("cpu", "fp16", {}, tmp_path, bs=4)
    assert x.opts.part == "whole" and "published" in x.math_mode  # FlagPerf compiled one graph
    assert XtclBackend("cpu", "fp16", {"onnx_path": "x.onnx"}, tmp_path).export_onnx(0, 0) is None
    with pytest.raises(pydantic.ValidationError, match="executor"):
        XtclBackend("cpu", "fp16", {"executor": "vm"}, tmp_path)


def test_real_tiny_export_fits_the_contract(tiny_model, tmp_path):
    """samrep's graphs, read as XTCL reads them, match the contract the engines check."""
    import onnx

    x = XtclBackend("cpu", "fp32", {"part": "split"}, tmp_path, bs=4)
    info = x.export_onnx(tiny_model, None)
    for graph, path in info.paths.items():
        got = declared(onnx.load(str(path), load_external_data=False))
        for want in oe.contract(tiny_model.config, graph):
            specs = oe.match_contract(want, got, graph)
            assert all(s.dtype is torch.float32 and s.shape[0] is None for s in specs)
            assert {oe.batch_profile(s, 4)[1][0] for s in specs} == {4}


# ---------------------------------------------------------------- with the toolkits


@pytest.mark.skipif(not (HAVE_TRT and torch.cuda.is_available()), reason="no TensorRT + GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trt_tiny_engine_matches_eager(tiny_model, tmp_path, precision):
    from samrep.backends.onnx_export import example_batch
    from samrep.backends.torch_eager import TorchBackend

    pv, pts = (t.cuda() for t in example_batch(None, 2))
    inputs = type("Inputs", (), {"pixel_values": pv[:1].cpu(), "input_points": pts[:1].cpu()})
    ref = TorchBackend("cuda", "fp32", {}, tmp_path, bs=2)
    ref.build(tiny_model, inputs)
    backend = TensorRTBackend("cuda", precision, {}, tmp_path, bs=2)
    backend.build(tiny_model, inputs)
    (masks, _), (want, _) = backend.run(pv, pts), ref.run(pv, pts)
    assert ((masks > 0) == (want > 0)).float().mean().item() > 0.99
    with pytest.raises(oe.EngineIOError, match="'input_points': dtype"):
        backend.run(pv, pts.half())
