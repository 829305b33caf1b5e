"""samrep.backends.onnx_export, tiny config: contract, folding, ORT vs PyTorch, cache, cleanup.

Measured on the tiny model (torch 2.13, onnxruntime 1.32, CPU), batch 2: max |ORT - PyTorch|
3.8e-6 on image_embeddings (max |ref| 4.1), 1.2e-6 on low_res_masks (max |ref| 0.96), 1.0e-6 on
iou_scores; the fp16 encoder 3.2e-3 on image_embeddings. The tests allow 25x that or more.
"""

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from samrep.backends import onnx_export as ex
from samrep.backends.onnxruntime import OnnxRuntimeBackend
from samrep.backends.tensorrt import TensorRTBackend
from samrep.model import weights_sha256

MASK_ATOL = 1e-4  # logits


@pytest.fixture(scope="module")
def sha(tiny_model):
    return weights_sha256(tiny_model)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def split(tiny_model, sha, workdir):
    return ex.export_sam(tiny_model, sha, workdir)


def run(path, feeds, outputs):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return session.run(outputs, {k: v.numpy() for k, v in feeds.items()})


def ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_split_graphs_follow_the_contract_and_are_folded(split):
    assert split.reused is False and split.exporter == "torchscript"
    assert list(split.paths) == ["encoder", "decoder"]
    for graph, path in split.paths.items():
        assert (path.parent / (path.name + ".data")).is_file()  # weights as external data
        m = onnx.load(str(path), load_external_data=False)
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
        for got, want in zip((m.graph.input, m.graph.output), ex.GRAPH_IO[graph], strict=True):
            assert [v.name for v in got] == list(want)
            for v in got:
                assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
                dims = v.type.tensor_type.shape.dim
                assert dims[0].dim_param == "batch"  # only the batch axis is dynamic
                assert [d.dim_value for d in dims[1:]] == list(ex.graph_shapes(m_cfg())[v.name][1:])
    # LayerNorm one node (engines keep it fp32); the weight-only rel-pos Resize folded away
    assert "LayerNormalization" in ops(split.paths["encoder"])
    assert "Resize" not in ops(split.paths["encoder"])
    stamp = json.loads((split.folder / "export.json").read_text())
    assert stamp["max_abs_diff"] == split.max_abs_diff
    assert split.max_abs_diff["encoder"]["image_embeddings"] < 1e-4
    assert split.max_abs_diff["decoder"]["low_res_masks"] < MASK_ATOL


def m_cfg():
    from samrep.model import tiny_config

    return tiny_config()


def test_the_raw_trace_has_the_resize_that_folding_removes(tiny_model, tmp_path):
    raw = tmp_path / "encoder.onnx"
    pv, _ = ex.example_batch(None, 1)
    ex._trace(ex.SamGraph(tiny_model, "encoder"), (pv,), "encoder", raw, ex.ExportRequest())
    assert "Resize" in ops(raw)  # HF's get_rel_pos interpolates the tables on every call


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch(tiny_model, split, batch):
    pv, pts = ex.example_batch(None, batch)
    pv = pv.flip(-2)  # not the export's check inputs
    with torch.no_grad():
        emb = tiny_model.vision_encoder(pv).last_hidden_state
        out = tiny_model(image_embeddings=emb, input_points=pts, multimask_output=True)
    (got_emb,) = run(split.paths["encoder"], {"pixel_values": pv}, ["image_embeddings"])
    assert np.abs(got_emb - emb.numpy()).max() <= 1e-4 * emb.abs().max().item()
    feeds = {"image_embeddings": torch.from_numpy(got_emb), "input_points": pts}
    masks, iou = run(split.paths["decoder"], feeds, ["low_res_masks", "iou_scores"])
    assert masks.shape == (batch, 3, 256, 256) and iou.shape == (batch, 3)
    assert np.abs(masks - out.pred_masks[:, 0].numpy()).max() <= MASK_ATOL
    assert np.abs(iou - out.iou_scores[:, 0].numpy()).max() <= MASK_ATOL


def test_export_is_reused_until_forced(tiny_model, sha, workdir, split):
    mtimes = {p: p.stat().st_mtime_ns for p in split.folder.iterdir()}
    again = ex.export_sam(tiny_model, sha, workdir)
    assert again.reused and again.paths == split.paths and again.max_abs_diff == split.max_abs_diff
    assert {p: p.stat().st_mtime_ns for p in split.folder.iterdir()} == mtimes


def test_a_cpu_traced_export_is_reused_by_cuda_rows(tiny_model, workdir, split):
    """One graph serves every engine: CUDA rows of onnxruntime (fp32) and TensorRT (fp16, built
    from the fp32 graph) reuse the export a CPU row made; nothing is traced again."""
    for backend in (
        OnnxRuntimeBackend("cuda", "fp32", {}, workdir, bs=8),
        OnnxRuntimeBackend("cuda", "tf32", {}, workdir, bs=4),
        TensorRTBackend("cuda", "fp16", {}, workdir, bs=16),
    ):
        info = backend.export_onnx(tiny_model, None)
        assert info.reused and info.folder == split.folder, backend.name


def test_interrupted_exports_leave_nothing(tiny_model, sha, tmp_path, monkeypatch):
    req = ex.ExportRequest(part="whole")
    folder = req.folder(tmp_path, sha)
    dead = folder.with_name(folder.name + ".tmp999999999")  # a process that no longer runs
    live = folder.with_name(f"{folder.name}.tmp{os.getppid()}")  # one that does
    for f in (dead, live):
        (f / "raw").mkdir(parents=True)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "_finish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.export_sam(tiny_model, sha, tmp_path, req)
    assert sorted(p.name for p in folder.parent.iterdir()) == [live.name]  # own tmp removed too
    monkeypatch.undo()
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"truncated")  # unstamped: not trusted
    info = ex.export_sam(tiny_model, sha, tmp_path, req)
    assert not info.reused and list(info.paths) == ["model"]
    assert info.max_abs_diff["model"]["low_res_masks"] <= MASK_ATOL


def test_dynamo_and_static_batch_exports(tiny_model, sha, tmp_path):
    """facts.md: the dynamo exporter once broke the decoder's batch axis; its check is at 2."""
    req = ex.ExportRequest(exporter="dynamo", part="whole")  # the decoder in it, at batch 2
    info = ex.export_sam(tiny_model, sha, tmp_path, req)
    assert info.exporter == "dynamo" and info.max_abs_diff["model"]["low_res_masks"] <= MASK_ATOL
    static = ex.export_sam(
        tiny_model, sha, tmp_path, ex.ExportRequest(dynamic_batch=False, batch=3)
    )
    assert static.folder.name.endswith("-bs3-torchscript")
    m = onnx.load(str(static.paths["decoder"]), load_external_data=False)
    assert [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == [3, 3, 256, 256]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"precision": "bf16"}, "bf16"),
        ({"opset": 16}, "opset >= 17"),
        ({"part": "encoder"}, "part in"),
        ({"exporter": "tvm"}, "exporter in"),
        ({"batch": 1}, "batch >= 2 when dynamic"),
    ],
)
def test_bad_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ex.ExportRequest(**kwargs)


def test_fp16_export_keeps_float32_io_and_an_fp32_decoder(tiny_model, sha, workdir):
    """fp16: the folded fp32 encoder converted (fp16 weights, Casts at its I/O), decoder fp32."""
    info = ex.export_sam(tiny_model, sha, workdir, ex.ExportRequest(precision="fp16"))
    assert info.folder.name.split("-")[2] == "fp16"
    types = {}
    for graph, path in info.paths.items():
        m = onnx.load(str(path))
        for v in list(m.graph.input) + list(m.graph.output):
            assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, (graph, v.name)
        types[graph] = {i.data_type for i in m.graph.initializer if len(i.dims) >= 2}
    assert types == {"encoder": {onnx.TensorProto.FLOAT16}, "decoder": {onnx.TensorProto.FLOAT}}
    # its Softmax kept whole: an ORT CPU session would inline it into ReduceMax/Exp/ReduceSum,
    # which cuDNN refused on the H200 at bs16 (the global attention's 2^32 scores)
    ops = {
        n.op_type
        for n in onnx.load(str(info.paths["encoder"]), load_external_data=False).graph.node
    }
    assert "Softmax" in ops and "ReduceMax" not in ops
    assert info.max_abs_diff["encoder"]["image_embeddings"] <= 0.02 * 4  # vs PyTorch fp32


def test_the_check_uses_a_given_reference_for_image_0(tiny_model, sha, tmp_path):
    """The ground truth's embeddings stand in for the check's first PyTorch encoder pass: the
    right ones pass, wrong ones fail the export (so they are what the check compares)."""
    pv, pts = ex.example_batch(None, 1)
    with torch.no_grad():
        emb = tiny_model.vision_encoder(pv).last_hidden_state
    info = ex.export_sam(tiny_model, sha, tmp_path / "a", example=(pv, pts, emb))
    assert info.max_abs_diff["encoder"]["image_embeddings"] < 1e-4
    with pytest.raises(ex.ExportMismatch, match="image_embeddings"):
        ex.export_sam(tiny_model, sha, tmp_path / "b", example=(pv, pts, emb + 1.0))
