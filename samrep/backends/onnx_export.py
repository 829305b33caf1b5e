"""ONNX export of SamModel, traced from a CPU fp32 copy whatever the row's device (one graph
serves every engine), folded, checked by ONNX Runtime against PyTorch fp32, cached.

Graphs (I/O float32 by name, only the batch axis dynamic): `encoder` pixel_values (B,3,1024,1024)
-> image_embeddings (B,256,64,64); `decoder` image_embeddings, input_points (B,1,1,2) (x, y in
the 1024 frame) -> low_res_masks (B,3,256,256) logits, iou_scores (B,3); `model` both. ORT's basic
optimizer folds weight-only subgraphs (rel-pos Resize); "fp16" converts the folded encoder only.
Made in `<workdir>/onnx/<key>.tmp<pid>/`, renamed into place once `export.json` is written; a
failed export removes it, one a dead process left goes at next start."""

import copy
import json
import logging
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from samrep.progress import log
from samrep.store import checked, remove, remove_stale_temporaries, temp_suffix, write_json

PIXEL_VALUES, IMAGE_EMBEDDINGS, INPUT_POINTS = "pixel_values", "image_embeddings", "input_points"
LOW_RES_MASKS, IOU_SCORES = "low_res_masks", "iou_scores"
ENCODER, DECODER, WHOLE = "encoder", "decoder", "model"
PARTS = {"split": (ENCODER, DECODER), "whole": (WHOLE,)}
GRAPH_IO = {
    ENCODER: ((PIXEL_VALUES,), (IMAGE_EMBEDDINGS,)),
    DECODER: ((IMAGE_EMBEDDINGS, INPUT_POINTS), (LOW_RES_MASKS, IOU_SCORES)),
    WHOLE: ((PIXEL_VALUES, INPUT_POINTS), (LOW_RES_MASKS, IOU_SCORES)),
}
EXPORTERS = ("torchscript", "dynamo")  # the legacy tracer, or torch.export
MIN_OPSET, BATCH_DIM, STAMP = 17, "batch", "export.json"
PER_GRAPH = ("graph_opsets", "max_abs_diff", "max_abs_ref")  # stamp entries: graph -> value
VERSIONED = ("torch", "onnx", "onnxruntime", "transformers", "onnxscript")
FORMAT_VERSION = 3  # bump when graphs or files change: older cached exports are not reused
# Largest |ORT - PyTorch fp32| / max |PyTorch|: a wrong graph is O(1); fp16 rounding ~0.002.
MISMATCH = {"fp32": 1e-3, "fp16": 0.1}


def export_precision(precision: str) -> str:
    """The graph precision of a row precision: tf32 is an engine math mode on an fp32 graph."""
    if precision not in ("fp32", "tf32", "fp16"):
        raise ValueError(f"no ONNX export for precision '{precision}' (have fp32, tf32, fp16)")
    return "fp16" if precision == "fp16" else "fp32"


@dataclass(frozen=True)
class ExportRequest:
    """What to export. batch: the static batch, or the check batch of a dynamic one (>= 2)."""

    precision: str = "fp32"
    part: str = "split"
    opset: int = MIN_OPSET
    dynamic_batch: bool = True
    batch: int = 2
    exporter: str = "torchscript"

    def __post_init__(self):
        export_precision(self.precision)
        ok = self.part in PARTS and self.exporter in EXPORTERS and self.opset >= MIN_OPSET
        if not ok or self.batch < 1 + self.dynamic_batch:
            want = f"part in {sorted(PARTS)}, exporter in {list(EXPORTERS)}, opset >= {MIN_OPSET}"
            raise ValueError(f"{self}: {want}, batch >= 2 when dynamic (its check batch)")

    def key(self, sha: str) -> dict:  # what the export depends on: a dynamic one not on batch
        b = BATCH_DIM if self.dynamic_batch else self.batch
        return {**asdict(self), "batch": b, "weights": sha[:16], "v": FORMAT_VERSION}

    def folder(self, workdir, sha: str) -> Path:
        b = "dynbatch" if self.dynamic_batch else f"bs{self.batch}"
        name = f"{sha[:16]}-{self.part}-{self.precision}-opset{self.opset}-{b}-{self.exporter}"
        return Path(workdir) / "onnx" / name


class SamGraph(torch.nn.Module):
    """One exported graph of `model` (see the module doc): `graph` encoder, decoder or model."""

    def __init__(self, model, graph: str):
        super().__init__()
        self.model, self.graph = model, graph

    def forward(self, x, input_points=None):  # x: pixel_values, or the decoder's embeddings
        if self.graph != DECODER:
            x = self.model.vision_encoder(x).last_hidden_state
            if self.graph == ENCODER:
                return x
        out = self.model(image_embeddings=x, input_points=input_points, multimask_output=True)
        return out.pred_masks[:, 0], out.iou_scores[:, 0]  # the one prompt per image


def graph_shapes(config) -> dict[str, tuple]:
    """Shape of every named input/output; None marks the batch axis."""
    v = config.vision_config
    g, s = v.image_size // v.patch_size, v.image_size  # 64 tokens a side; the decoder upscales 4x
    sizes = [(v.num_channels, s, s), (v.output_channels, g, g), (1, 1, 2), (3, 4 * g, 4 * g), (3,)]
    names = (PIXEL_VALUES, IMAGE_EMBEDDINGS, INPUT_POINTS, LOW_RES_MASKS, IOU_SCORES)
    return {n: (None, *d) for n, d in zip(names, sizes, strict=True)}


@dataclass
class ExportInfo:
    """A cached export. max_abs_diff, max_abs_ref: graph -> output -> max |ORT - torch|, |torch|."""

    folder: Path
    request: ExportRequest
    exporter: str  # the exporter that ran: "torchscript" or "dynamo"
    graph_opsets: dict[str, int]
    paths: dict[str, Path]
    export_s: float  # seconds the export took when it was made
    reused: bool
    max_abs_diff: dict
    max_abs_ref: dict
    check_providers: list
    onnx_bytes: int


def example_batch(example, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` distinct CPU images, points (image i rolled 97*i pixels, point moved by i*(37, 23):
    a batch mix-up shows) from one example (pixel_values, input_points[, ...]); None: synthetic."""
    if example is None:
        pv = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
        pts = torch.tensor([[[[450.0, 600.0]]]])
    else:
        pv, pts = (t[:1].detach().float().cpu() for t in example[:2])
    pts = torch.cat([(pts + torch.tensor([37.0, 23.0]) * i).clamp(0, 1023) for i in range(batch)])
    return torch.cat([torch.roll(pv, 97 * i, dims=-1) for i in range(batch)]), pts


def _trace(module, args, graph: str, path: Path, req: ExportRequest) -> None:
    ins, outs = GRAPH_IO[graph]
    kw = {"opset_version": req.opset, "input_names": list(ins), "output_names": list(outs)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporters warn and log about every traced shape
        logging.disable(logging.WARNING)
        try:
            if req.exporter == "torchscript":
                axes = {n: {0: BATCH_DIM} for n in ins + outs} if req.dynamic_batch else None
                torch.onnx.export(module, args, str(path), dynamo=False, dynamic_axes=axes, **kw)
            else:  # torch.export specializes a size-1 example axis: the example batch is >= 2
                dim = torch.export.Dim(BATCH_DIM, min=1, max=1024)
                kw["dynamic_shapes"] = tuple({0: dim} for _ in ins) if req.dynamic_batch else None
                torch.onnx.export(module, args, str(path), dynamo=True, external_data=True, **kw)
        finally:
            logging.disable(logging.NOTSET)


def _finish(raw: Path, final: Path, graph: str, shapes: dict, req: ExportRequest) -> int:
    """Name the I/O dims, fold, convert to fp16 if asked, save, check -> the graph's opset."""
    import onnx

    proto, b = onnx.load(str(raw)), BATCH_DIM if req.dynamic_batch else req.batch
    for v in [*proto.graph.input, *proto.graph.output]:  # all dims set: the legacy exporter
        dims = [b if size is None else size for size in shapes[v.name]]  # names static ones
        v.type.CopyFrom(onnx.helper.make_tensor_type_proto(v.type.tensor_type.elem_type, dims))
    named = raw.with_name(raw.stem + "-named.onnx")
    onnx.save_model(proto, str(named), save_as_external_data=True, location=named.name + ".data")
    session(named, ["CPUExecutionProvider"], fold_to=final)
    if req.precision == "fp16" and graph != DECODER:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        nodes = onnx.load(str(final), load_external_data=False).graph.node
        keep = "/model/vision_encoder/"  # whole: everything after the encoder stays fp32
        block = [n.name for n in nodes if graph == WHOLE and not n.name.startswith(keep)]
        proto = convert_float_to_float16(str(final), keep_io_types=True, node_block_list=block)
        OnnxModel(proto).topological_sort()  # the converter appends its Casts at the end
        # not through an ORT CPU session again: it would inline Softmax into ReduceMax/Exp/...
        # (no fp16 CPU kernel), a ReduceMax cuDNN refused on the H200 at bs16 (2^32 scores)
        data = final.with_name(final.name + ".data")
        remove(data)  # onnx appends to an existing external-data file
        onnx.save_model(proto, str(final), save_as_external_data=True, location=data.name)
    onnx.checker.check_model(str(final))  # by path: reads external data, accepts > 2 GB
    opsets = onnx.load(str(final), load_external_data=False).opset_import
    return next(o.version for o in opsets if o.domain in ("", "ai.onnx"))


def session(path: Path, providers: list, fold_to: Path | None = None):
    """ORT session of `path`; `fold_to`: save the graph after ORT's basic, provider-free level."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if fold_to is not None:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(fold_to)
        entry = "session.optimized_model_external_initializers_file_name"
        so.add_session_config_entry(entry, fold_to.name + ".data")
    return ort.InferenceSession(str(path), so, providers=providers)


def _compare(graph: str, path: Path, feeds: dict, ref: tuple, providers: list):
    """Run `path` once in ONNX Runtime; (max |diff|, max |ref|) per output vs PyTorch `ref`."""
    outs = GRAPH_IO[graph][1]
    got = session(path, providers).run(list(outs), {k: v.numpy() for k, v in feeds.items()})
    diff, scale = {}, {}
    for name, a, want in zip(outs, got, ref, strict=True):
        if a.shape != tuple(want.shape):
            raise RuntimeError(f"{graph}: ONNX Runtime {name} {a.shape}, PyTorch {want.shape}")
        diff[name] = float((torch.from_numpy(a).float() - want).abs().max())
        scale[name] = float(want.abs().max())
    return diff, scale


def export_sam(model, sha: str, workdir, request=None, example=None, providers=None, force=False):
    """`model` (fp32 SamModel, `sha` its weights' sha256) exported or reused -> ExportInfo. example:
    (pixel_values (1,3,1024,1024), input_points (1,1,1,2)[, their fp32 image_embeddings
    (1,256,64,64), the check's reference for image 0]); providers: ORT's for the check."""
    req = request or ExportRequest()
    key, folder = req.key(sha), req.folder(workdir, sha)
    remove_stale_temporaries(folder.parent)  # the `.tmp<pid>` folders of processes now gone
    try:
        stamp = json.loads((folder / STAMP).read_text())
        if not force and stamp["key"] == key:
            log(f"export: reusing {folder} (made in {stamp['export_s']:.1f} s)")
            return _info(folder, req, stamp, reused=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none, unfinished or of another layout: export again
    t0, tmp = time.perf_counter(), folder.with_name(folder.name + temp_suffix())
    remove(tmp)  # every write and removal below is confined by samrep.store to the hw's folders
    checked(tmp / "raw", "write").mkdir(parents=True)
    try:
        stamp = _export_all(model, req, tmp, example, providers or ["CPUExecutionProvider"])
        remove(tmp / "raw")
        stamp.update(key=key, export_s=time.perf_counter() - t0)
        stamp["versions"] = {n: sys.modules[n].__version__ for n in VERSIONED if n in sys.modules}
        stamp["onnx_bytes"] = sum(p.stat().st_size for p in tmp.iterdir())
        write_json(tmp / STAMP, stamp)
        remove(folder)  # a stale or unstamped earlier export
        tmp.rename(checked(folder, "write"))
    except BaseException:  # KeyboardInterrupt too: no half-made export stays behind
        remove(tmp)
        raise
    log(f"export: {folder.name} in {stamp['export_s']:.1f} s ({stamp['onnx_bytes'] / 1e6:.1f} MB)")
    return _info(folder, req, stamp, reused=False)


def _info(folder: Path, req: ExportRequest, stamp: dict, reused: bool) -> ExportInfo:
    paths = {g: folder / f"{g}.onnx" for g in PARTS[req.part]}
    kept = {k: stamp[k] for k in ExportInfo.__dataclass_fields__ if k in stamp}
    return ExportInfo(folder=folder, request=req, paths=paths, reused=reused, **kept)


def _export_all(model, req: ExportRequest, tmp: Path, example, providers: list) -> dict:
    p = next(model.parameters())
    m = model if (p.dtype, p.device.type) == (torch.float32, "cpu") else copy.deepcopy(model)
    m, shapes = m.float().cpu().eval(), graph_shapes(model.config)
    pv, pts = example_batch(example, req.batch)
    modules = {g: SamGraph(m, g) for g in GRAPH_IO}
    feeds = {ENCODER: {PIXEL_VALUES: pv}, WHOLE: {PIXEL_VALUES: pv, INPUT_POINTS: pts}}
    with torch.no_grad():  # one ViT-H encoder image: ~45 s on 2 CPU cores
        emb, known = None, (example[2] if example is not None and len(example) > 2 else None)
        if req.part == "split":  # image 0's reference given (the ground truth's): one pass less
            head = [] if known is None else [known[:1].detach().float().cpu()]
            emb = torch.cat(head + [modules[ENCODER](pv[len(head) :])])
        feeds[DECODER] = {IMAGE_EMBEDDINGS: emb, INPUT_POINTS: pts}
        refs = {g: modules[g](*feeds[g].values()) for g in PARTS[req.part] if g != ENCODER}
    refs[ENCODER] = (emb,)
    names = [p if isinstance(p, str) else p[0] for p in providers]
    out = {**{k: {} for k in PER_GRAPH}, "exporter": req.exporter, "check_providers": names}
    for graph in PARTS[req.part]:
        t, final, raw = time.perf_counter(), tmp / f"{graph}.onnx", tmp / "raw" / f"{graph}.onnx"
        # the legacy tracer generalizes a batch-1 trace; torch.export specializes size 1
        n = req.batch if not req.dynamic_batch else 1 if req.exporter == "torchscript" else 2
        _trace(modules[graph], tuple(v[:n] for v in feeds[graph].values()), graph, raw, req)
        opset = _finish(raw, final, graph, shapes, req)
        diff, scale = _compare(graph, final, feeds[graph], refs[graph], providers)
        bad = [k for k in diff if diff[k] > MISMATCH[req.precision] * max(scale[k], 1e-6)]
        if bad:
            raise ExportMismatch(f"{graph}: ORT vs PyTorch on {bad}: {diff}, max {scale}")
        for k, value in zip(PER_GRAPH, (opset, diff, scale), strict=True):
            out[k][graph] = value
        took = f"{req.exporter}, opset {opset}, {req.precision}, {time.perf_counter() - t:.1f} s"
        log(f"export: {graph} ({took}); ORT ({names[0]}) - PyTorch fp32: max {diff} ({scale})")
    return out


class ExportMismatch(RuntimeError):
    """The exported graph disagrees with PyTorch by more than MISMATCH allows."""
