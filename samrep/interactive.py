"""Interactive use: the image embedded once, then every click runs the prompt encoder and mask
decoder alone on the cached embeddings (HF SamModel's fp32 decoder, that of the torch, inductor
and fast backends; the ONNX decoders take one point per image and are not timed here). Timed like
the core region (sync, forward, sync): ms per click (one point, batch 1), and prompts/s with 16
and 64 one-point prompts per image (transformers' point_batch_size)."""

import functools
import statistics
import time

import torch

from samrep.config import HwParams
from samrep.env import environment
from samrep.progress import log
from samrep.row import RowContext
from samrep.stages import hw_lock
from samrep.store import write_json

POINTS = (1, 16, 64)


def _time(fn, device: torch.device, iters: int) -> list[float]:
    """Seconds per call of fn() after 3 warm-up calls, each synchronised like the core region."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = []
    for _ in range(3 + iters):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out[3:]


def interactive(params: HwParams, iters: int | None = None) -> dict:
    """Time the decoder side per click and per batch of prompts -> reports/<hw>/interactive.json."""
    with hw_lock(params, []):
        ctx = RowContext.load(params)
        device = torch.device(params.device)
        iters = iters or (20 if device.type == "cuda" else 3)  # a CPU click takes ~0.1-1 s
        model = ctx.model.to(device)
        emb = ctx.gt.ref_embeddings.to(device)  # the fp32 reference embeddings of the sample
        point = ctx.gt.inputs.input_points.to(device)  # (1, 1, 1, 2) in the 1024 frame
        decode = functools.partial(model, image_embeddings=emb, multimask_output=True)
        rows = []
        with torch.inference_mode():
            for n in POINTS:
                # n prompts of one point each, spread around the sample's point
                offsets = torch.linspace(-64, 64, n, device=device).view(1, n, 1, 1)
                pts = point.expand(1, n, 1, 2) + offsets
                s = sorted(_time(functools.partial(decode, input_points=pts), device, iters))
                p50, p90 = statistics.median(s), s[int(0.9 * (len(s) - 1))]
                row = {"points_per_image": n, "ms_per_call_p50": 1000 * p50}
                rows.append(row | {"ms_per_call_p90": 1000 * p90, "prompts_per_s": n / p50})
                log(f"interactive: {n} point(s), {1000 * p50:.2f} ms/call, {n / p50:.1f} prompts/s")
        ctx.model.to("cpu")
        per_s = {r["points_per_image"]: r["prompts_per_s"] for r in rows}
        summary = dict(backend="torch, inductor, fast (HF decoder)", precision="fp32")
        summary |= dict(ms_per_click=rows[0]["ms_per_call_p50"])  # POINTS[0]: one point
        summary |= dict(prompts_per_s_16=per_s[16], prompts_per_s_64=per_s[64])
        env = environment(params.device)
        out = {"rows": [summary], "calls": rows, "iters": iters, "environment": env}
        write_json(params.report_path / "interactive.json", out)
    return out
