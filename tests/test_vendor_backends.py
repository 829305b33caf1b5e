"""Vendor engines: TensorRT (NVIDIA) and Kunlunxin XTCL.

Everywhere: the plain-Python parts (options, dtype table, cache keys, by-name I/O checks, the
published XTCL options) and the "not run" path on a machine without the toolkit. With the toolkit
and its device: build the tiny model's engines and compare them with eager PyTorch; otherwise
those tests are SKIPPED with the reason.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import json
import sys
import types
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from samrep.backends import BackendUnavailable, get_backend
from samrep.backends import tensorrt as trt_backend
from samrep.backends import xtcl as xtcl_backend
from samrep.backends.tensorrt import EngineIOError, TensorRTBackend, TensorSpec
from samrep.backends.xtcl import XtclBackend
from samrep.config import REPO_ROOT, load_params
from samrep.errors import SamrepError
from tests.folders import safe_rmtree

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_TVM = importlib.util.find_spec("tvm") is not None

# ---------------------------------------------------------------- both: registry and "not run"


def test_registry_resolves_both_vendor_backends_without_their_toolkits():
    assert get_backend("tensorrt") is TensorRTBackend
    assert get_backend("xtcl") is XtclBackend


@pytest.mark.skipif(HAVE_TRT and torch.cuda.is_available(), reason="TensorRT and a GPU are here")
@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_tensorrt_unavailable_here_says_why(device):
    with pytest.raises(BackendUnavailable) as exc:
        TensorRTBackend.check_available(device, "fp16")
    reason = str(exc.value)
    if not HAVE_TRT:
        assert "TensorRT Python package not installed" in reason and "NVIDIA" in reason
    if device == "cpu":
        assert "NVIDIA GPUs (device cuda)" in reason and "cpu" in reason
    elif not torch.cuda.is_available():
        assert "no CUDA GPU visible" in reason
    assert "\n" not in reason  # one line: it is the report cell "not run: <reason>"


def test_tensorrt_unknown_precision_is_unavailable():
    with pytest.raises(BackendUnavailable, match="tensorrt has no fp8 mode"):
        TensorRTBackend.check_available("cuda", "fp8")


@pytest.mark.skipif(HAVE_TVM, reason="a `tvm` package is installed here")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_xtcl_unavailable_here_says_why(device):
    with pytest.raises(BackendUnavailable) as exc:
        XtclBackend.check_available(device, "fp16")
    reason = str(exc.value)
    assert reason.startswith("Kunlunxin XTCL not installed (not public)")
    if device == "cuda":
        assert "torch on the CPU" in reason


def write_params(tmp_path, runs):
    raw = yaml.safe_load((REPO_ROOT / "params/tiny.yaml").read_text())
    tag = f"pytest-{uuid.uuid4().hex[:8]}"
    raw["data"]["data_dir"] = f"data/{tag}"
    raw["report_dir"] = f"build/{tag}"
    raw["runs"] = runs
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(str(path))


def test_vendor_rows_become_not_run_records(tmp_path):
    """tiny params run on the CPU: both vendor rows are "not_run" with a reason, torch runs."""
    from samrep.evaluate import run_evaluation

    from samrep.groundtruth import run_ground_truth

    params = write_params(
        tmp_path,
        [
            {"phase": "val", "backend": "torch", "precision": "fp32", "bs": 1},
            {"phase": "infer", "backend": "tensorrt", "precision": "fp16", "bs": 2},
            {"phase": "infer", "backend": "xtcl", "precision": "fp16", "bs": 2},
        ],
    )
    try:
        run_ground_truth(params)
        torch_row, trt_row, xtcl_row = run_evaluation(params)
        assert torch_row["status"] == "ok"
        assert trt_row["status"] == "not_run" and "NVIDIA GPUs" in trt_row["reason"]
        assert xtcl_row["status"] == "not_run"
        if not HAVE_TVM:
            assert xtcl_row["reason"].startswith("Kunlunxin XTCL not installed (not public)")
        # the stage where it was found unavailable: the backend's availability check
        assert trt_row["failed_stage"] == "check" and "metrics" not in trt_row
    finally:
        safe_rmtree(params.data_path)
        safe_rmtree(params.report_path)


# ---------------------------------------------------------------- TensorRT: plain-Python parts


def test_trt_dtype_table_maps_names_and_refuses_the_rest():
    assert trt_backend.torch_dtype("FLOAT") is torch.float32
    assert trt_backend.torch_dtype("HALF") is torch.float16
    assert trt_backend.torch_dtype("BF16") is torch.bfloat16
    assert trt_backend.torch_dtype("INT64") is torch.int64
    assert trt_backend.torch_dtype("BOOL") is torch.bool
    with pytest.raises(EngineIOError, match=r"'x'.*INT4 has no torch dtype"):
        trt_backend.torch_dtype("INT4", "x")


def test_trt_options_defaults_and_tf32():
    s = trt_backend.resolve_options({}, "fp32")
    assert s["tf32"] is False and s["opset"] >= 17
    assert s["fp32_layers"] == ["NORMALIZATION", "SOFTMAX"]
    assert trt_backend.resolve_options({}, "tf32")["tf32"] is True
    assert trt_backend.resolve_options({"allow_tf32": True}, "fp32")["tf32"] is True
    assert trt_backend.resolve_options({"workspace_gib": 2}, "fp16")["workspace_gib"] == 2


@pytest.mark.parametrize(
    "options, match",
    [
        ({"workspce_gib": 4}, r"options\.workspce_gib: unknown option \(known: allow_tf32"),
        ({"allow_tf32": 1}, r"options\.allow_tf32: expected bool, got int"),
        ({"workspace_gib": True}, r"options\.workspace_gib: expected int or float, got bool"),
        ({"workspace_gib": 0}, r"options\.workspace_gib: must be > 0"),
        ({"opset": 14}, r"options\.opset: 14 < 17"),
        ({"decoder_precision": "fp16"}, r"options\.decoder_precision: 'fp16'"),
        ({"optimization_level": 9}, r"options\.optimization_level: must be 0-5"),
        ({"fp32_layers": ["layernorm"]}, r"options\.fp32_layers: 'layernorm'"),
        ({"fp32_layers": "SOFTMAX"}, r"options\.fp32_layers: expected list"),
    ],
)
def test_trt_bad_options_are_named(options, match):
    with pytest.raises(SamrepError, match=match):
        trt_backend.resolve_options(options, "fp16")


def test_trt_tf32_precision_with_tf32_disallowed_is_a_contradiction():
    with pytest.raises(SamrepError, match="contradicts precision tf32"):
        trt_backend.resolve_options({"allow_tf32": False}, "tf32")


def test_trt_backend_rejects_unknown_option_at_construction(tmp_path):
    with pytest.raises(SamrepError, match="options.bogus: unknown option"):
        TensorRTBackend("cuda", "fp32", {"bogus": 1}, tmp_path, bs=2)


def test_trt_math_mode_says_what_runs(tmp_path):
    def mode(precision, **options):
        return TensorRTBackend("cuda", precision, options, tmp_path, bs=2).math_mode

    assert mode("fp32") == "fp32 (TF32 off)"  # the original's "fp32" ran TF32 (defect 2)
    assert mode("tf32") == "fp32 (TF32 allowed)"
    assert mode("fp32", allow_tf32=True) == "fp32 (TF32 allowed)"
    fp16 = mode("fp16")
    assert fp16.startswith("fp16 image encoder (normalization, softmax layers fp32)")
    assert "fp32 prompt encoder + mask decoder" in fp16 and "TF32 off" in fp16
    assert "bf16 prompt encoder" in mode("bf16", decoder_precision="same", fp32_layers=[])


def test_trt_part_precision_keeps_the_decoder_fp32():
    assert trt_backend.part_precision("decoder", "fp16", "fp32") == "fp32"
    assert trt_backend.part_precision("decoder", "fp16", "same") == "fp16"
    assert trt_backend.part_precision("encoder", "fp16", "fp32") == "fp16"
    assert trt_backend.part_precision("decoder", "tf32", "fp32") == "tf32"


def test_trt_profile_is_batch_1_to_bs():
    assert trt_backend.profile_shapes("pixel_values", (-1, 3, 1024, 1024), 4) == (
        (1, 3, 1024, 1024),
        (4, 3, 1024, 1024),
        (4, 3, 1024, 1024),
    )
    assert trt_backend.profile_shapes("input_points", (2, 1, 1, 2), 2) is None
    with pytest.raises(SamrepError, match="static batch 1, the row has bs 4"):
        trt_backend.profile_shapes("pixel_values", (1, 3, 1024, 1024), 4)
    with pytest.raises(SamrepError, match="only the batch axis may be dynamic"):
        trt_backend.profile_shapes("pixel_values", (-1, 3, -1, 1024), 4)


def key_fields(**over):
    fields = {
        "part": "encoder",
        "onnx_sha256": "a" * 64,
        "weights_sha256": "b" * 64,
        "opset": 17,
        "precision": "fp16",
        "tf32": False,
        "fp32_layers": ["NORMALIZATION", "SOFTMAX"],
        "bs": 4,
        "workspace_gib": 8.0,
        "optimization_level": 3,
        "tensorrt": "10.13.0.35",
        "gpu": "NVIDIA-H200-sm90",
    }
    return {**fields, **over}


def test_trt_engine_cache_key_covers_every_input():
    base = key_fields()
    assert trt_backend.engine_cache_key(base) == trt_backend.engine_cache_key(
        dict(reversed(list(base.items())))
    )
    for change in [
        {"onnx_sha256": "c" * 64},
        {"precision": "fp32"},
        {"tf32": True},
        {"bs": 2},
        {"tensorrt": "10.14.1"},
        {"gpu": "NVIDIA-A100-SXM4-40GB-sm80"},
        {"fp32_layers": []},
    ]:
        assert trt_backend.engine_cache_key(key_fields(**change)) != trt_backend.engine_cache_key(
            base
        ), change


def test_trt_engine_file_name_is_readable():
    name = trt_backend.engine_file_name(key_fields())
    assert name.startswith("encoder-fp16-bs4-trt10.13.0.35-") and name.endswith(".engine")
    assert "-tf32-" in trt_backend.engine_file_name(key_fields(precision="fp32", tf32=True))
    assert "-tf32-tf32" not in trt_backend.engine_file_name(key_fields(precision="tf32", tf32=True))


DECODER_SPECS = {
    "image_embeddings": TensorSpec(
        "image_embeddings",
        True,
        torch.float32,
        (-1, 256, 64, 64),
        (1, 256, 64, 64),
        (4, 256, 64, 64),
    ),
    "input_points": TensorSpec(
        "input_points", True, torch.float32, (-1, 1, 1, 2), (1, 1, 1, 2), (4, 1, 1, 2)
    ),
    "low_res_masks": TensorSpec("low_res_masks", False, torch.float32, (-1, 3, 256, 256)),
    "iou_scores": TensorSpec("iou_scores", False, torch.float32, (-1, 3)),
}


def feeds(bs=2, points_dtype=torch.float32, device="meta"):
    # "meta" tensors: shapes and dtypes without memory; the device check is tested separately.
    return {
        "image_embeddings": torch.empty(bs, 256, 64, 64, device=device),
        "input_points": torch.empty(bs, 1, 1, 2, dtype=points_dtype, device=device),
    }


def check(f):
    trt_backend.check_io(DECODER_SPECS, f, "decoder")


def test_trt_io_check_names_the_tensor_with_a_wrong_dtype():
    """The original's defect 3: fp16 points copied into an fp32 engine buffer by byte count."""
    with pytest.raises(EngineIOError, match=r"input 'input_points': dtype torch.float16.*float32"):
        check(feeds(points_dtype=torch.float16))


def test_trt_io_check_shapes_names_and_profile():
    f = feeds()
    f["input_points"] = torch.empty(2, 1, 2, 2, device="meta")
    with pytest.raises(EngineIOError, match=r"input 'input_points': shape \(2, 1, 2, 2\)"):
        check(f)
    with pytest.raises(EngineIOError, match=r"outside the engine's profile"):
        check(feeds(bs=8))
    f = feeds()
    del f["input_points"]
    with pytest.raises(EngineIOError, match=r"no tensor for engine input 'input_points'"):
        check(f)
    f = {**feeds(), "input_labels": torch.empty(2, 1, 1, device="meta")}
    with pytest.raises(EngineIOError, match=r"'input_labels' is not an input of this engine"):
        check(f)


def test_trt_io_check_wants_contiguous_cuda_memory():
    with pytest.raises(EngineIOError, match=r"'image_embeddings': on cpu"):
        check(feeds(device="cpu"))
    f = feeds()
    f["image_embeddings"] = torch.empty(2, 64, 64, 256, device="meta").permute(0, 3, 1, 2)
    with pytest.raises(EngineIOError, match="not contiguous"):
        check(f)


def test_trt_io_check_accepts_matching_tensors_up_to_the_device():
    # Without a GPU the last check, the device, is the only one matching tensors can fail.
    with pytest.raises(EngineIOError, match="on meta"):
        check(feeds(bs=1))
    with pytest.raises(EngineIOError, match="on meta"):
        check(feeds(bs=4))


# ---------------------------------------------------------------- XTCL: plain-Python parts


def test_xtcl_published_build_options_are_the_case():
    """../shared/spec/sam_h_case.md section 5 (FlagPerf's sam_h Kunlunxin config)."""
    opts = xtcl_backend.build_options("fp16")
    assert opts["FuseWithoutPattern"] == ["FuseConv2dTransposeBiasAdd"]
    assert opts["pattern_match"] == ["fuse_attention_sam"]
    assert opts["disabled_pass"] == ["xgraph_layout_opt"]
    assert opts["out_precision"] == "float16" and opts["opt_level"] == 3
    assert xtcl_backend.build_options("fp32")["out_precision"] is None
    assert "XTCL_USE_FP16" not in opts["environment"]  # FlagPerf's "fp32" was secretly fp16
    assert (xtcl_backend.PUBLISHED_ONNX_PRECISION, xtcl_backend.PUBLISHED_ONNX_BS) == ("fp16", 4)
    assert xtcl_backend.vm_target("KUNLUN2") == "llvm -acc=xpu2"


@pytest.mark.parametrize(
    "options, match",
    [
        ({"resnet50_fuse": True}, r"options\.resnet50_fuse: unknown option"),  # defect 8's key
        ({"executor": "aot"}, r"options\.executor: 'aot'"),
        ({"device_id": "0"}, r"options\.device_id: expected int"),
        ({"part": "encoder"}, r"options\.part: 'encoder'"),
    ],
)
def test_xtcl_bad_options_are_named(options, match):
    with pytest.raises(SamrepError, match=match):
        xtcl_backend.resolve_options(options)


def test_xtcl_onnx_io_and_static_batch(tmp_path):
    from onnx import TensorProto, helper

    def vi(name, elem, dims):
        return helper.make_tensor_value_info(name, elem, dims)

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_points"], ["iou_scores"])],
        "g",
        [
            vi("pixel_values", TensorProto.FLOAT16, ["batch", 3, 1024, 1024]),
            vi("input_points", TensorProto.FLOAT, ["batch", 1, 1, 2]),
            vi("w", TensorProto.FLOAT, [2]),
        ],
        [
            vi("low_res_masks", TensorProto.FLOAT, ["batch", 3, 256, 256]),
            vi("iou_scores", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [2], [0.0, 1.0])],
    )
    model = helper.make_model(graph)
    ins, outs = xtcl_backend.graph_io(model)
    assert [(i.name, i.dtype) for i in ins] == [
        ("pixel_values", "float16"),
        ("input_points", "float32"),
    ]
    assert [o.name for o in outs] == ["low_res_masks", "iou_scores"]  # the ONNX's order
    assert xtcl_backend.batch_shapes(ins, 4)["pixel_values"] == (4, 3, 1024, 1024)
    static = [xtcl_backend.IOSpec("pixel_values", "float16", (4, 3, 1024, 1024))]
    with pytest.raises(SamrepError, match="static batch 4, the row has bs 2"):
        xtcl_backend.batch_shapes(static, 2)


def test_xtcl_output_check_catches_a_swap():
    good = {"low_res_masks": torch.zeros(2, 3, 256, 256), "iou_scores": torch.zeros(2, 3)}
    xtcl_backend.check_outputs(good, 2)
    swapped = {"low_res_masks": good["iou_scores"], "iou_scores": good["low_res_masks"]}
    with pytest.raises(xtcl_backend.XtclIOError, match=r"output 'low_res_masks': shape \(2, 3\)"):
        xtcl_backend.check_outputs(swapped, 2)


def test_xtcl_input_check_names_the_tensor():
    spec = xtcl_backend.IOSpec("input_points", "float32", (2, 1, 1, 2))
    xtcl_backend.check_input(spec, (2, 1, 1, 2), torch.zeros(2, 1, 1, 2))
    with pytest.raises(xtcl_backend.XtclIOError, match=r"'input_points': shape \(4, 1, 1, 2\)"):
        xtcl_backend.check_input(spec, (2, 1, 1, 2), torch.zeros(4, 1, 1, 2))
    with pytest.raises(xtcl_backend.XtclIOError, match=r"'input_points': dtype torch.int64"):
        xtcl_backend.check_input(spec, (2, 1, 1, 2), torch.zeros(2, 1, 1, 2, dtype=torch.long))


def test_xtcl_environment_is_restored(monkeypatch):
    monkeypatch.delenv("XTCL_USE_NEW_ALTER_PASS", raising=False)
    import os

    with xtcl_backend.environment({"XTCL_USE_NEW_ALTER_PASS": "1"}):
        assert os.environ["XTCL_USE_NEW_ALTER_PASS"] == "1"
    assert "XTCL_USE_NEW_ALTER_PASS" not in os.environ


# ---------------------------------------------------------------- both: the real ONNX export


@pytest.mark.parametrize("part", ["split", "whole"])
def test_real_tiny_export_fits_both_backends(tiny_model, tmp_path, part):
    """samrep.export's graphs, read as the engines read them: names, dtypes, only batch dynamic."""
    import onnx

    from samrep.export import export_sam
    from samrep.model import weights_sha256

    info = export_sam(tiny_model, weights_sha256(tiny_model), tmp_path, part=part)
    graphs = trt_backend.onnx_parts(info)
    assert [g for g, _ in graphs] == (["encoder", "decoder"] if part == "split" else ["model"])
    produced = {"pixel_values", "input_points"}
    for _, path in graphs:
        ins, outs = xtcl_backend.graph_io(onnx.load(str(path)))
        assert {i.name for i in ins} <= produced  # every input comes from the pool, by name
        assert all(i.dtype == "float32" for i in ins + outs)
        for i in ins:
            lo, opt, hi = trt_backend.profile_shapes(i.name, i.shape, 4)
            assert lo[0] == 1 and opt[0] == hi[0] == 4
        assert xtcl_backend.batch_shapes(ins, 4)
        produced |= {o.name for o in outs}
    assert {"low_res_masks", "iou_scores"} <= produced


# ---------------------------------------------------------------- TensorRT build, on a fake


class FakeTrt:
    """The slice of the TensorRT 10 Python API that build() uses, recording what it is told.

    A stand-in written from NVIDIA's API docs (names, enums, call shapes), so that build()'s
    control flow, flags, profile and engine cache run here; it proves nothing about TensorRT.
    """

    __version__ = "10.99.0"
    DataType = enum.Enum("DataType", "FLOAT HALF BF16")
    float32 = DataType.FLOAT
    LayerType = enum.Enum("LayerType", "CONVOLUTION MATRIX_MULTIPLY NORMALIZATION SOFTMAX")
    BuilderFlag = enum.Enum("BuilderFlag", "TF32 FP16 BF16 OBEY_PRECISION_CONSTRAINTS")
    MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    IO = {  # part -> (inputs, outputs) as (name, shape)
        "encoder": (
            [("pixel_values", (-1, 3, 1024, 1024))],
            [("image_embeddings", (-1, 256, 64, 64))],
        ),
        "decoder": (
            [("image_embeddings", (-1, 256, 64, 64)), ("input_points", (-1, 1, 1, 2))],
            [("low_res_masks", (-1, 3, 256, 256)), ("iou_scores", (-1, 3))],
        ),
    }
    builds = 0

    class Logger:
        WARNING, INFO = "WARNING", "INFO"

        def __init__(self, severity):
            self.severity = severity

    class Layer:
        def __init__(self, kind):
            self.type, self.precision, self.num_outputs, self.outputs = kind, None, 1, {}

        def set_output_type(self, index, dtype):
            self.outputs[index] = dtype

    class Network:
        def __init__(self):
            self.inputs, self.layers = [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_layers = property(lambda self: len(self.layers))

        def get_input(self, i):
            return self.inputs[i]

        def get_layer(self, i):
            return self.layers[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            part = Path(path).stem
            self.network.part = part
            for name, shape in FakeTrt.IO[part][0]:
                self.network.inputs.append(types.SimpleNamespace(name=name, shape=shape))
            self.network.layers = [FakeTrt.Layer(t) for t in FakeTrt.LayerType]
            return True

    class Config:
        def __init__(self):
            self.flags, self.pools, self.profiles, self.cache = (
                {FakeTrt.BuilderFlag.TF32},
                {},
                [],
                None,
            )

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            return types.SimpleNamespace(serialize=lambda: b"timing")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Profile(dict):
        def set_shape(self, name, lo, opt, hi):
            self[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return FakeTrt.Network()

        def create_builder_config(self):
            return FakeTrt.Config()

        def create_optimization_profile(self):
            return FakeTrt.Profile()

        def build_serialized_network(self, network, config):
            FakeTrt.builds += 1
            state = {
                "part": network.part,
                "flags": sorted(f.name for f in config.flags),
                "workspace": config.pools[FakeTrt.MemoryPoolType.WORKSPACE],
                "profile": [dict(p) for p in config.profiles],
                "fp32": sorted(
                    layer.type.name
                    for layer in network.layers
                    if layer.precision is FakeTrt.float32 and layer.outputs == {0: FakeTrt.float32}
                ),
            }
            return json.dumps(state).encode()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return FakeTrt.Engine(json.loads(bytes(data)))

    class Engine:
        def __init__(self, state):
            self.state = state
            ins, outs = FakeTrt.IO[state["part"]]
            self.io = [(n, s, FakeTrt.TensorIOMode.INPUT) for n, s in ins]
            self.io += [(n, s, FakeTrt.TensorIOMode.OUTPUT) for n, s in outs]
            self.num_io_tensors, self.num_optimization_profiles = len(self.io), 1

        def get_tensor_name(self, i):
            return self.io[i][0]

        def _get(self, name):
            return next(t for t in self.io if t[0] == name)

        def get_tensor_mode(self, name):
            return self._get(name)[2]

        def get_tensor_shape(self, name):
            return self._get(name)[1]

        def get_tensor_dtype(self, name):
            return FakeTrt.DataType.FLOAT

        def get_tensor_profile_shape(self, name, profile):
            return self.state["profile"][profile][name]

        def create_execution_context(self):
            return object()


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """`tensorrt` and `samrep.export` replaced by fakes; torch.cuda answers as one GPU would."""
    FakeTrt.builds = 0
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTrt)

    def export_sam(model, weights_sha256, workdir, precision="fp32", opset=17, part="split", **kw):
        assert (precision, part) == ("fp32", "split") and opset >= 17 and len(weights_sha256) == 64
        folder = Path(workdir) / "onnx" / "fake"
        folder.mkdir(parents=True, exist_ok=True)
        paths = {p: folder / f"{p}.onnx" for p in ("encoder", "decoder")}
        for p, path in paths.items():
            path.write_bytes(f"{p} graph".encode())
        return types.SimpleNamespace(paths=paths)  # the fields of samrep.export.ExportInfo used

    monkeypatch.setitem(sys.modules, "samrep.export", types.SimpleNamespace(export_sam=export_sam))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake H200")
    return tmp_path


def built(fake_trt, model, precision, bs=4, **options):
    backend = TensorRTBackend("cuda", precision, options, fake_trt, bs=bs)
    backend.build(model, inputs=None)
    return backend, {e.label.split()[1]: e.engine.state for e in backend.engines}


def test_trt_build_fp32_clears_tf32_and_profiles_the_batch(fake_trt, tiny_model):
    backend, state = built(fake_trt, tiny_model, "fp32")
    assert list(state) == ["encoder", "decoder"]
    assert state["encoder"]["flags"] == [] and state["decoder"]["flags"] == []  # TF32 cleared
    assert state["encoder"]["workspace"] == 8 * 2**30
    assert state["encoder"]["profile"] == [
        {"pixel_values": [[1, 3, 1024, 1024], [4, 3, 1024, 1024], [4, 3, 1024, 1024]]}
    ]
    assert set(state["decoder"]["profile"][0]) == {"image_embeddings", "input_points"}
    enc, dec = backend.engines
    assert enc.input_names == ["pixel_values"] and dec.output_names == [
        "low_res_masks",
        "iou_scores",
    ]
    assert enc.specs["pixel_values"].max_shape == (4, 3, 1024, 1024)
    files = sorted(p.name for p in (fake_trt / "tensorrt").iterdir())
    assert len([f for f in files if f.endswith(".engine")]) == 2
    assert any(f.startswith("timing-trt10.99.0-Fake-H200-sm90") for f in files)


def test_trt_build_tf32_and_fp16_flags(fake_trt, tiny_model):
    _, state = built(fake_trt, tiny_model, "tf32")
    assert state["encoder"]["flags"] == ["TF32"] and state["decoder"]["flags"] == ["TF32"]
    _, state = built(fake_trt, tiny_model, "fp16")
    assert state["encoder"]["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert state["encoder"]["fp32"] == ["NORMALIZATION", "SOFTMAX"]
    assert state["decoder"]["flags"] == []  # the decoder engine stays fp32, TF32 off
    _, state = built(fake_trt, tiny_model, "bf16", fp32_layers=[], decoder_precision="same")
    assert state["encoder"]["flags"] == ["BF16"] and state["decoder"]["flags"] == ["BF16"]


def test_trt_build_reuses_the_engine_cache_until_the_key_changes(fake_trt, tiny_model):
    built(fake_trt, tiny_model, "fp16")
    assert FakeTrt.builds == 2
    again, _ = built(fake_trt, tiny_model, "fp16")
    assert FakeTrt.builds == 2 and all(i["reused"] for i in again.build_info.values())
    built(fake_trt, tiny_model, "fp16", bs=2)  # another profile: another engine
    assert FakeTrt.builds == 4
    built(fake_trt, tiny_model, "fp16", rebuild=True)
    assert FakeTrt.builds == 6
    sidecar = next((fake_trt / "tensorrt").glob("encoder-fp16-bs4-*.json"))
    assert json.loads(sidecar.read_text())["tensorrt"] == "10.99.0"


# ---------------------------------------------------------------- with the toolkits


def tiny_inputs(bs: int, device: str):
    from samrep.data import ModelInputs

    gen = torch.Generator().manual_seed(0)
    pv = torch.randn(1, 3, 1024, 1024, generator=gen)
    pts = torch.tensor([[[[174.15, 232.31]]]])
    inputs = ModelInputs(pv, pts, (1764, 2646), (683, 1024))
    batch = (
        pv.expand(bs, -1, -1, -1).contiguous().to(device),
        pts.expand(bs, -1, -1, -1).contiguous().to(device),
    )
    return inputs, batch


@pytest.fixture(scope="module")
def trt_ready():
    pytest.importorskip(
        "tensorrt", reason="TensorRT not installed (pip `tensorrt` from NVIDIA's index)"
    )
    if not torch.cuda.is_available():
        pytest.skip("TensorRT tests need a CUDA GPU; torch sees none")
    reasons = trt_backend.unavailable_reasons("cuda", "fp32")
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.fixture(scope="module")
def eager_reference(tiny_model):
    """Eager fp32 PyTorch on the GPU, TF32 off: the reference for the engines."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from samrep.backends.torch_eager import TorchBackend

    inputs, batch = tiny_inputs(2, "cuda")
    ref = TorchBackend("cuda", "fp32", {}, "unused", bs=2)
    ref.build(tiny_model, inputs)
    return ref.run(*batch)


@pytest.mark.parametrize("precision, rtol", [("fp32", 1e-3), ("fp16", 3e-2)])
def test_trt_tiny_engine_matches_eager(
    trt_ready, tiny_model, eager_reference, tmp_path, precision, rtol
):
    inputs, batch = tiny_inputs(2, "cuda")
    backend = TensorRTBackend("cuda", precision, {}, tmp_path, bs=2)
    backend.build(tiny_model, inputs)
    masks, scores = backend.run(*batch)
    torch.cuda.synchronize()
    ref_masks, ref_scores = eager_reference
    assert masks.shape == (2, 3, 256, 256) and scores.shape == (2, 3)
    scale = ref_masks.abs().max().item()
    torch.testing.assert_close(masks, ref_masks, rtol=rtol, atol=rtol * scale)
    torch.testing.assert_close(scores, ref_scores, rtol=rtol, atol=rtol)
    agree = ((masks > 0) == (ref_masks > 0)).float().mean().item()
    assert agree > (0.9999 if precision == "fp32" else 0.99)
    assert all(not info["reused"] for info in backend.build_info.values())
    if precision == "fp16":
        assert backend.build_info["encoder"]["fp32_layers"]["NORMALIZATION"] > 0


def test_trt_engine_cache_is_reused(trt_ready, tiny_model, tmp_path):
    inputs, batch = tiny_inputs(2, "cuda")
    first = TensorRTBackend("cuda", "fp32", {}, tmp_path, bs=2)
    first.build(tiny_model, inputs)
    again = TensorRTBackend("cuda", "fp32", {}, tmp_path, bs=2)
    again.build(tiny_model, inputs)
    assert all(info["reused"] for info in again.build_info.values())
    a, b = first.run(*batch), again.run(*batch)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # one engine file, two contexts
    other_bs = TensorRTBackend("cuda", "fp32", {}, tmp_path, bs=1)
    other_bs.build(tiny_model, inputs)
    assert not any(info["reused"] for info in other_bs.build_info.values())


def test_trt_mismatched_input_dtype_raises_by_name(trt_ready, tiny_model, tmp_path):
    inputs, (pv, pts) = tiny_inputs(2, "cuda")
    backend = TensorRTBackend("cuda", "fp32", {}, tmp_path, bs=2)
    backend.build(tiny_model, inputs)
    with pytest.raises(EngineIOError, match=r"input 'input_points': dtype torch.float16"):
        backend.run(pv, pts.half())
    with pytest.raises(EngineIOError, match=r"input 'pixel_values'.*outside the engine's profile"):
        backend.run(torch.cat([pv, pv]), torch.cat([pts, pts]))
    engine = backend.engines[0]
    assert set(engine.input_names) == {"pixel_values"}
    assert set(engine.output_names) == {"image_embeddings"}


@pytest.fixture(scope="module")
def xtcl_ready():
    pytest.importorskip("tvm", reason="Kunlunxin XTCL not installed (not public)")
    reasons = xtcl_backend.unavailable_reasons("cpu", "fp16")
    if reasons:
        pytest.skip("; ".join(reasons))


def test_xtcl_tiny_module_agrees_with_eager(xtcl_ready, tiny_model, tmp_path):
    inputs, batch = tiny_inputs(2, "cpu")
    backend = XtclBackend("cpu", "fp16", {}, tmp_path, bs=2)
    backend.build(tiny_model, inputs)
    masks, scores = backend.run(*batch)
    with torch.inference_mode():
        ref = tiny_model(pixel_values=batch[0], input_points=batch[1], multimask_output=True)
    ref_masks = ref.pred_masks[:, 0]
    assert masks.shape == ref_masks.shape and scores.shape == (2, 3)
    assert ((masks > 0) == (ref_masks > 0)).float().mean().item() > 0.99
