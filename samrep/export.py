"""ONNX export of SamModel, checked by ONNX Runtime against PyTorch, cached per weights.

Graphs (names are fixed: engines bind inputs and outputs by name, never by position):

* `encoder`: pixel_values (B, 3, 1024, 1024) float32 -> image_embeddings (B, C, 64, 64) float32
  (C = 256 for ViT-H), the image encoder alone;
* `decoder`: image_embeddings (B, C, 64, 64) float32, input_points (B, 1, 1, 2) float32 (x, y in
  the 1024 frame) -> low_res_masks (B, 3, 256, 256) float32 logits, iou_scores (B, 3) float32:
  prompt encoder + mask decoder, multimask output, label 1 (a positive point) built in;
* `model`: pixel_values, input_points -> low_res_masks, iou_scores: the whole model as one
  graph, as the published case exported it.

`part="split"` exports encoder + decoder, `part="whole"` the single `model` graph. Only the batch
axis is dynamic (the patch embedding rejects any image but 1024x1024); `dynamic_batch=False`
fixes it at `batch`.

Precision: "fp32" (also used for "tf32", which is an engine math mode, not a graph) exports
everything in fp32. "fp16" exports the image encoder with fp16 weights and activations, with a
Cast of pixel_values to fp16 at its start and of image_embeddings back to fp32 at its end, so
every graph's inputs and outputs stay float32; the prompt encoder and mask decoder stay fp32
(as `samrep.backends.torch_eager.mixed_precision_model`). LayerNorm is one opset-17
`LayerNormalization` node whose statistics ONNX Runtime computes in fp32 (stash_type=1).
"bf16" is not exported: ONNX `Conv` takes bfloat16 only from opset 22, and ONNX Runtime's
CPU and CUDA providers lack bf16 kernels for much of this graph.

Every export is saved with its weights as external data (one `<graph>.onnx.data` file beside
`<graph>.onnx`; ViT-H fp32 is 2.5 GB, over protobuf's 2 GB limit), checked with
`onnx.checker.check_model` by path, and run by ONNX Runtime on the same inputs as PyTorch; the
largest absolute difference of each output is logged and stored. Exports live in
`<workdir>/onnx/<weights sha256[:16]>-<part>-<precision>-opset<N>-<batch>-<exporter>/`, reused
while that folder's `export.json` (written last; the folder is renamed into place) matches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from samrep.progress import log

# Graph input/output names: the public contract of every exported graph.
PIXEL_VALUES = "pixel_values"  # (B, 3, 1024, 1024) float32, SamProcessor-normalized
IMAGE_EMBEDDINGS = "image_embeddings"  # (B, C, 64, 64) float32, encoder output / decoder input
INPUT_POINTS = "input_points"  # (B, 1, 1, 2) float32, (x, y) in the 1024 frame
LOW_RES_MASKS = "low_res_masks"  # (B, 3, 256, 256) float32 mask logits
IOU_SCORES = "iou_scores"  # (B, 3) float32 predicted IoU

ENCODER, DECODER, WHOLE = "encoder", "decoder", "model"
PARTS: dict[str, tuple[str, ...]] = {"split": (ENCODER, DECODER), "whole": (WHOLE,)}
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    ENCODER: ((PIXEL_VALUES,), (IMAGE_EMBEDDINGS,)),
    DECODER: ((IMAGE_EMBEDDINGS, INPUT_POINTS), (LOW_RES_MASKS, IOU_SCORES)),
    WHOLE: ((PIXEL_VALUES, INPUT_POINTS), (LOW_RES_MASKS, IOU_SCORES)),
}
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
EXPORTERS = ("auto", "torchscript", "dynamo")
MIN_OPSET = 17  # LayerNormalization is one node from opset 17 (engines can keep it in fp32)
BATCH_DIM = "batch"
STAMP = "export.json"
# Bump when the graphs or the files change, so older cached exports are not reused.
FORMAT_VERSION = 1


def export_precision(precision: str) -> str:
    """The graph precision a row precision needs: tf32 is an engine flag on an fp32 graph."""
    if precision in ("fp32", "tf32"):
        return "fp32"
    if precision == "fp16":
        return "fp16"
    raise ValueError(
        f"no ONNX export for precision '{precision}' (have fp32, tf32, fp16): ONNX Conv takes "
        "bf16 only from opset 22 and ONNX Runtime lacks bf16 kernels for much of SAM"
    )


# ----------------------------------------------------------------------------- graph modules


class EncoderGraph(nn.Module):
    """pixel_values (B, 3, 1024, 1024) f32 -> image_embeddings (B, C, 64, 64) f32.

    `model`'s vision encoder is already in `dtype`; the casts keep the graph's I/O float32.
    """

    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        self.vision_encoder = model.vision_encoder
        self.dtype = dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.dtype != torch.float32:
            pixel_values = pixel_values.to(self.dtype)
        return self.vision_encoder(pixel_values).last_hidden_state.float()


class DecoderGraph(nn.Module):
    """image_embeddings (B, C, 64, 64) f32, input_points (B, 1, 1, 2) f32 ->
    low_res_masks (B, 3, 256, 256) f32 logits, iou_scores (B, 3) f32.

    SamModel.forward with image_embeddings runs only the prompt encoder and mask decoder (the
    vision encoder's weights are not in the graph); labels default to 1, multimask output.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image_embeddings: torch.Tensor, input_points: torch.Tensor):
        out = self.model(
            image_embeddings=image_embeddings, input_points=input_points, multimask_output=True
        )
        # (B, point_batch=1, 3, ...) -> (B, 3, ...): the one prompt per image
        return out.pred_masks[:, 0], out.iou_scores[:, 0]


class WholeGraph(nn.Module):
    """pixel_values, input_points -> low_res_masks, iou_scores: encoder in its dtype (from
    `model`), prompt encoder + mask decoder in fp32, as `TorchBackend.run`."""

    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        self.encoder = EncoderGraph(model, dtype)
        self.decoder = DecoderGraph(model)

    def forward(self, pixel_values: torch.Tensor, input_points: torch.Tensor):
        return self.decoder(self.encoder(pixel_values), input_points)


def graph_shapes(config) -> dict[str, tuple]:
    """Shape of every named input/output; None marks the batch axis."""
    v = config.vision_config
    grid = v.image_size // v.patch_size  # 64 tokens a side
    return {
        PIXEL_VALUES: (None, v.num_channels, v.image_size, v.image_size),
        IMAGE_EMBEDDINGS: (None, v.output_channels, grid, grid),
        INPUT_POINTS: (None, 1, 1, 2),
        LOW_RES_MASKS: (None, 3, 4 * grid, 4 * grid),  # the decoder upscales 4x
        IOU_SCORES: (None, 3),
    }


# ----------------------------------------------------------------------------- results


@dataclass
class ExportInfo:
    """One cached export. `paths` maps graph name -> .onnx file; `max_abs_diff` maps graph ->
    output -> largest |ONNX Runtime - PyTorch| on the check inputs (same units as the output:
    logits, IoU, embedding values), `max_abs_ref` the largest |PyTorch| value beside it."""

    folder: Path
    part: str
    precision: str  # graph precision: "fp32" or "fp16" (encoder)
    opset: int
    dynamic_batch: bool
    batch: int  # static batch, or the check batch when dynamic
    exporter: str  # the exporter that actually ran: "torchscript" or "dynamo"
    graph_opsets: dict[str, int]  # graph -> its ONNX opset (dynamo may keep a newer one)
    paths: dict[str, Path]
    export_s: float  # seconds the export + check + ORT comparison took when it was made
    seconds: float  # seconds this call took (about 0 when reused)
    reused: bool
    max_abs_diff: dict[str, dict[str, float]] = field(default_factory=dict)
    max_abs_ref: dict[str, dict[str, float]] = field(default_factory=dict)
    check_providers: list[str] = field(default_factory=list)
    onnx_bytes: int = 0  # .onnx + external data, all graphs

    def to_dict(self) -> dict:
        d = asdict(self)
        d["folder"] = str(self.folder)
        d["paths"] = {k: str(v) for k, v in self.paths.items()}
        return d


def export_key(
    weights_sha256: str,
    part: str,
    precision: str,
    opset: int,
    dynamic_batch: bool,
    batch: int,
    exporter: str,
) -> dict:
    """What an export depends on; the cache folder is named after it."""
    return {
        "weights_sha256": weights_sha256[:16],
        "part": part,
        "precision": precision,
        "opset": opset,
        "batch": BATCH_DIM if dynamic_batch else batch,
        "exporter": exporter,
        "format_version": FORMAT_VERSION,
    }


def export_folder(workdir: Path, key: dict) -> Path:
    b = "dynbatch" if key["batch"] == BATCH_DIM else f"bs{key['batch']}"
    name = f"{key['weights_sha256']}-{key['part']}-{key['precision']}-opset{key['opset']}-{b}"
    return Path(workdir) / "onnx" / f"{name}-{key['exporter']}"


def _cached(folder: Path, key: dict) -> ExportInfo | None:
    stamp_path = folder / STAMP
    if not stamp_path.is_file():
        return None
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    paths = {g: folder / f"{g}.onnx" for g in PARTS[key["part"]]}
    files = [*paths.values(), *(p.with_name(p.name + ".data") for p in paths.values())]
    if stamp.get("key") != key or not all(p.is_file() for p in files):
        return None
    try:
        return _info_from_stamp(folder, key, stamp, paths)
    except (KeyError, TypeError):  # a stamp from another layout: export again
        return None


def _info_from_stamp(folder: Path, key: dict, stamp: dict, paths: dict) -> ExportInfo:
    return ExportInfo(
        folder=folder,
        part=key["part"],
        precision=key["precision"],
        opset=key["opset"],
        dynamic_batch=key["batch"] == BATCH_DIM,
        batch=stamp["batch"],
        exporter=stamp["exporter"],
        graph_opsets=stamp["graph_opsets"],
        paths=paths,
        export_s=stamp["export_s"],
        seconds=0.0,
        reused=True,
        max_abs_diff=stamp["max_abs_diff"],
        max_abs_ref=stamp["max_abs_ref"],
        check_providers=stamp["check_providers"],
        onnx_bytes=stamp["onnx_bytes"],
    )


# ----------------------------------------------------------------------------- export


def example_batch(
    example: tuple[torch.Tensor, torch.Tensor] | None, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` distinct images and points made from one example (or a seeded synthetic one).

    Image i is the example rolled 97*i pixels sideways and its point moved (37*i, 23*i): distinct
    batch entries, so a graph that mixes up the batch axis shows in the comparison.
    Returns pixel_values (batch, 3, 1024, 1024) f32 and input_points (batch, 1, 1, 2) f32, CPU.
    """
    if example is None:
        gen = torch.Generator().manual_seed(0)
        pixel_values = torch.randn(1, 3, 1024, 1024, generator=gen)
        input_points = torch.tensor([[[[450.0, 600.0]]]])
    else:
        pixel_values, input_points = (t[:1].detach().float().cpu() for t in example)
    pvs = [torch.roll(pixel_values, 97 * i, dims=-1) for i in range(batch)]
    shift = torch.tensor([37.0, 23.0])
    pts = [(input_points + i * shift).clamp(0, 1023) for i in range(batch)]
    return torch.cat(pvs), torch.cat(pts)


@contextlib.contextmanager
def _quiet_export():
    """The exporters warn about every traced shape, their own deprecation and (dynamo) each
    opset conversion step, through warnings and logging; what matters is checked after."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _run_exporter(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    graph: str,
    path: Path,
    opset: int,
    dynamic_batch: bool,
    exporter: str,
) -> None:
    inputs, outputs = GRAPH_IO[graph]
    with _quiet_export(), torch.no_grad():
        if exporter == "torchscript":
            dynamic_axes = (
                {name: {0: BATCH_DIM} for name in inputs + outputs} if dynamic_batch else None
            )
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(inputs),
                output_names=list(outputs),
                opset_version=opset,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                dynamo=False,
            )
        else:
            # torch.export specializes a size-1 example axis to 1: the example batch is >= 2.
            dim = torch.export.Dim(BATCH_DIM, min=1, max=1024)
            dynamic_shapes = (
                {name: {0: dim} for name in _forward_arg_names(module)} if dynamic_batch else None
            )
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(inputs),
                output_names=list(outputs),
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                external_data=True,
                dynamo=True,
                verbose=False,
            )


def _forward_arg_names(module: nn.Module) -> list[str]:
    import inspect

    return list(inspect.signature(module.forward).parameters)


def _finish_graph(
    raw: Path, final: Path, graph: str, shapes: dict, dynamic_batch: bool, batch: int, meta: dict
) -> int:
    """Load the exporter's file, name every I/O dim, save with one external-data file, check.

    Returns the graph's ONNX opset."""
    import onnx

    proto = onnx.load(str(raw), load_external_data=True)
    by_name = {v.name: v for v in list(proto.graph.input) + list(proto.graph.output)}
    inputs, outputs = GRAPH_IO[graph]
    for name in inputs + outputs:
        if name not in by_name:
            raise RuntimeError(f"{graph}: exported graph has no '{name}' (has {list(by_name)})")
        dims = by_name[name].type.tensor_type.shape.dim
        # The legacy exporter names non-batch output dims after ops ("Gatherlow_res_masks_dim_1");
        # engines plan better with the static sizes, and the contract is documented here.
        del dims[:]
        for size in shapes[name]:
            d = dims.add()
            if size is None and dynamic_batch:
                d.dim_param = BATCH_DIM
            else:
                d.dim_value = batch if size is None else size
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=f"samrep.{k}", value=str(v))
    onnx.save_model(
        proto,
        str(final),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=final.name + ".data",
        size_threshold=1024,
    )
    # By path: the checker then reads the external data and accepts models over 2 GB.
    onnx.checker.check_model(str(final))
    # The dynamo exporter may keep a newer opset than asked for when it cannot convert down.
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _ort_session(path: Path, providers: list):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: constant-folding notes are noise here
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


def _compare(graph: str, path: Path, feeds: dict, ref: tuple, providers: list) -> tuple[dict, dict]:
    """Run `path` in ONNX Runtime on `feeds`; max |diff| and max |ref| per output vs `ref`."""
    import numpy as np

    session = _ort_session(path, providers)
    outputs = GRAPH_IO[graph][1]
    got = session.run(list(outputs), {k: v.detach().cpu().numpy() for k, v in feeds.items()})
    diff, scale = {}, {}
    for name, ort_out, torch_out in zip(outputs, got, ref, strict=True):
        want = torch_out.detach().float().cpu().numpy()
        if ort_out.shape != want.shape:
            raise RuntimeError(
                f"{graph}: ONNX Runtime gives {name} of shape {ort_out.shape}, PyTorch {want.shape}"
            )
        diff[name] = float(np.abs(ort_out.astype(np.float32) - want).max())
        scale[name] = float(np.abs(want).max())
    return diff, scale


def export_sam(
    model,
    weights_sha256: str,
    workdir: str | os.PathLike,
    precision: str = "fp32",
    opset: int = 17,
    part: str = "split",
    *,
    dynamic_batch: bool = True,
    batch: int = 2,
    exporter: str = "auto",
    example: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    check_providers: list | None = None,
    force: bool = False,
) -> ExportInfo:
    """Export `model` (an fp32 SamModel) to ONNX, or reuse the cached export.

    precision: "fp32"/"tf32" (an fp32 graph) or "fp16" (encoder in fp16; see the module doc).
    part: "split" (encoder + decoder graphs) or "whole" (one graph).
    dynamic_batch: batch axis dynamic; else fixed at `batch`. The ONNX Runtime check runs at
    `batch` images (default 2: a batch-axis bug shows only at batch > 1).
    exporter: "torchscript" (torch.onnx.export dynamo=False), "dynamo", or "auto" (torchscript,
    then dynamo if it fails).
    example: (pixel_values (1, 3, 1024, 1024), input_points (1, 1, 1, 2)) to trace and check
    with (made into `batch` distinct entries by `example_batch`); synthetic when None.
    device: where tracing and the PyTorch reference run (fp16 on a CPU is slow: use "cuda").
    check_providers: ONNX Runtime providers for the check (default CPUExecutionProvider).
    """
    if part not in PARTS:
        raise ValueError(f"part: '{part}' is not one of {sorted(PARTS)}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter: '{exporter}' is not one of {list(EXPORTERS)}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: need >= {MIN_OPSET} (one LayerNormalization node)")
    if batch < 1:
        raise ValueError(f"batch: must be >= 1, got {batch}")
    graph_precision = export_precision(precision)
    key = export_key(weights_sha256, part, graph_precision, opset, dynamic_batch, batch, exporter)
    folder = export_folder(Path(workdir), key)
    if not force:
        info = _cached(folder, key)
        if info is not None:
            log(f"export: reusing {folder} (made in {info.export_s:.1f} s)")
            return info

    t0 = time.perf_counter()
    # entries are provider names or (name, options) pairs, as InferenceSession takes them
    providers = list(check_providers or ["CPUExecutionProvider"])
    provider_names = [p if isinstance(p, str) else p[0] for p in providers]
    device = torch.device(device)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "raw").mkdir(parents=True)
    try:
        paths, exporter_used, diffs, scales, opsets = _export_all(
            model,
            key,
            tmp,
            graph_precision,
            opset,
            part,
            dynamic_batch,
            batch,
            exporter,
            example,
            device,
            providers,
        )
        shutil.rmtree(tmp / "raw")
        onnx_bytes = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
        export_s = time.perf_counter() - t0
        stamp = {
            "key": key,
            "batch": batch,
            "exporter": exporter_used,
            "graph_opsets": opsets,
            "export_s": export_s,
            "max_abs_diff": diffs,
            "max_abs_ref": scales,
            "check_providers": provider_names,
            "onnx_bytes": onnx_bytes,
            "versions": _versions(),
            "io": {g: {"inputs": GRAPH_IO[g][0], "outputs": GRAPH_IO[g][1]} for g in paths},
        }
        tmp_stamp = tmp / (STAMP + ".tmp")
        tmp_stamp.write_text(json.dumps(stamp, indent=1))
        tmp_stamp.replace(tmp / STAMP)
        shutil.rmtree(folder, ignore_errors=True)  # a stale or unstamped earlier export
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"export: {folder.name} in {export_s:.1f} s ({onnx_bytes / 1e6:.1f} MB)")
    return ExportInfo(
        folder=folder,
        part=part,
        precision=graph_precision,
        opset=opset,
        dynamic_batch=dynamic_batch,
        batch=batch,
        exporter=exporter_used,
        graph_opsets=opsets,
        paths={g: folder / f"{g}.onnx" for g in paths},
        export_s=export_s,
        seconds=time.perf_counter() - t0,
        reused=False,
        max_abs_diff=diffs,
        max_abs_ref=scales,
        check_providers=provider_names,
        onnx_bytes=onnx_bytes,
    )


def _export_all(
    model,
    key,
    tmp,
    precision,
    opset,
    part,
    dynamic_batch,
    batch,
    exporter,
    example,
    device,
    providers,
):
    from samrep.backends.torch_eager import mixed_precision_model

    dtype = EXPORT_DTYPES[precision]
    # A copy with the encoder in the precision (the fp32 CPU model itself when nothing changes).
    m = mixed_precision_model(model, device, precision).eval()
    shapes = graph_shapes(model.config)
    pixel_values, input_points = (t.to(device) for t in example_batch(example, batch))
    modules = {
        ENCODER: lambda: EncoderGraph(m, dtype),
        DECODER: lambda: DecoderGraph(m),
        WHOLE: lambda: WholeGraph(m, dtype),
    }
    with torch.no_grad():
        embeddings = EncoderGraph(m, dtype)(pixel_values) if part == "split" else None
    feeds_all = {
        ENCODER: {PIXEL_VALUES: pixel_values},
        DECODER: {IMAGE_EMBEDDINGS: embeddings, INPUT_POINTS: input_points},
        WHOLE: {PIXEL_VALUES: pixel_values, INPUT_POINTS: input_points},
    }
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    paths, diffs, scales, opsets = {}, {}, {}, {}
    exporter_used = order[0]
    for graph in PARTS[part]:
        module = modules[graph]().eval()
        feeds = feeds_all[graph]
        if graph == ENCODER:
            ref = (embeddings,)  # computed above: one encoder forward is ~45 s for ViT-H on CPU
        else:
            with torch.no_grad():
                ref = module(*feeds.values())
        final = tmp / f"{graph}.onnx"
        for i, name in enumerate(order):
            t = time.perf_counter()
            try:
                diff, scale, opsets[graph] = _export_graph(
                    module,
                    graph,
                    name,
                    feeds,
                    ref,
                    tmp,
                    final,
                    shapes,
                    opset,
                    dynamic_batch,
                    batch,
                    precision,
                    providers,
                    meta={
                        "graph": graph,
                        "weights_sha256": key["weights_sha256"],
                        "precision": precision,
                        "exporter": name,
                    },
                )
            except Exception as exc:
                if i + 1 == len(order):
                    raise
                log(
                    f"export: {graph}: the {name} exporter failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); trying {order[i + 1]}"
                )
                continue
            exporter_used = name
            break
        paths[graph], diffs[graph], scales[graph] = final, diff, scale
        shown = ", ".join(f"{k} {v:.3g} (max |ref| {scale[k]:.3g})" for k, v in diff.items())
        log(
            f"export: {graph} ({exporter_used}, opset {opsets[graph]}, {precision}) in "
            f"{time.perf_counter() - t:.1f} s; ONNX Runtime ({_name(providers[0])}) vs PyTorch at "
            f"batch {batch}: max |diff| {shown}"
        )
    return paths, exporter_used, diffs, scales, opsets


class ExportMismatch(RuntimeError):
    """The exported graph disagrees with PyTorch by more than `MISMATCH` allows."""


# Largest |ORT - PyTorch| / max |PyTorch| accepted per output. Agreement measured on the tiny
# model is ~1e-6 (fp32); these bounds only catch a wrong graph (a batch mix-up is O(1)), not
# rounding: fp16 accumulates 10-bit-mantissa differences over 32 ViT-H layers.
MISMATCH = {"fp32": 1e-3, "fp16": 0.1}


def _export_graph(
    module,
    graph,
    exporter,
    feeds,
    ref,
    tmp,
    final,
    shapes,
    opset,
    dynamic_batch,
    batch,
    precision,
    providers,
    meta,
):
    """Export one graph with one exporter, save, check and compare.

    Returns (max |diff| per output, max |ref| per output, the graph's opset)."""
    if dynamic_batch:
        # Legacy tracing generalizes a batch-1 trace; torch.export specializes a size-1 axis.
        n = 1 if exporter == "torchscript" else 2
    else:
        n = batch
    args = tuple(_take(v, n) for v in feeds.values())
    raw = tmp / "raw" / exporter / f"{graph}.onnx"
    raw.parent.mkdir(parents=True, exist_ok=True)
    _run_exporter(module, args, graph, raw, opset, dynamic_batch, exporter)
    graph_opset = _finish_graph(raw, final, graph, shapes, dynamic_batch, batch, meta)
    diff, scale = _compare(graph, final, feeds, ref, providers)
    for name, d in diff.items():
        if d > MISMATCH[precision] * max(scale[name], 1e-6):
            raise ExportMismatch(
                f"{graph}: ONNX Runtime and PyTorch disagree on {name}: max |diff| {d:.3g}, "
                f"max |PyTorch| {scale[name]:.3g} ({exporter} exporter)"
            )
    return diff, scale, graph_opset


def _name(provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def _take(t: torch.Tensor, n: int) -> torch.Tensor:
    """The first n batch entries, repeated when the tensor holds fewer (static batch > check)."""
    return t[:n] if t.shape[0] >= n else t.repeat(-(-n // t.shape[0]), *[1] * (t.ndim - 1))[:n]


def _versions() -> dict:
    import onnx
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    versions["onnx"] = onnx.__version__
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    return versions
