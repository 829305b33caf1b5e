"""Measure the optimisation steps of `samrep.fast` one on top of the other, on one device.

  0 HF eager (its attention implementation, SDPA by default) in the precision
  8 FastSam, fused blocks (`samrep.fast.fused`): Triton rel-pos attention on the unpadded grid,
    patch conv as one GEMM, residual add + LayerNorm in one Triton pass; eager + CUDA graph
  9 + GELU in fc1's cuBLASLt epilogue (tanh approximation)
 10 + fp8 qkv/fc1/fc2 quantised by their producers (the norms, a bias + tanh-GELU kernel: e4m3 +
    per-row dynamic scales); proj bf16
 11 + fp8 GEMMs with fast accumulation (10 and 11: bf16 only)

Steps 1-7 (cached rel-pos index, folded attention, torch.compile, ...) are removed; 0 and 8-11
keep their numbers (reports/h200/steps.json). img/s = bs * iters / sum of per-iteration core
times (sync, forward, sync). A failing step becomes {"step", "name", "error", "traceback"} and
the next step still runs.
"""

import gc
import time
import traceback
from collections.abc import Callable, Sequence

import torch
from transformers import SamModel

from samrep.fast.model import DTYPES, build_fast_sam, converted_copy

# indexed by step number; None: a removed step (module docstring)
STEP_NAMES = (
    "hf eager",
    *(None,) * 7,
    "fused add+layernorm, triton attention, patch gemm (eager + cuda graph)",
    "+ gelu in the fc1 epilogue (tanh)",
    "+ fp8 quantised by the producers",
    "+ fp8 fast accumulation",
)
STEPS = tuple(i for i, name in enumerate(STEP_NAMES) if name)
FP8_STEPS = (10, 11)
# build_fast_sam options of steps 8-11
BUILDS = {
    8: dict(fused=True),
    9: dict(fused=True, gelu="tanh"),
    10: dict(fused=True, gelu="tanh", fp8_linear=True),
    11: dict(fused=True, gelu="tanh", fp8_linear=True, fp8_fast_accum=True),
}
MATH = {
    0: "HF eager",
    8: "attn kernel; patch gemm; fused add+ln; gelu erf",
    9: "attn kernel; patch gemm; fused add+ln; gelu tanh-epilogue",
    10: "fp8 e4m3 qkv/fc1/fc2 rowwise-dynamic, producers quantise; proj bf16; gelu tanh",
    11: "fp8 e4m3 qkv/fc1/fc2 rowwise-dynamic, producers quantise, fast accum; gelu tanh",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batched(t: torch.Tensor, bs: int) -> torch.Tensor:
    """`t` with batch `bs`: sliced, or tiled along dim 0 (e.g. one image repeated)."""
    return t[torch.arange(bs, device=t.device) % t.shape[0]]


def cuda_graph(fn: Callable, *inputs: torch.Tensor) -> Callable[..., torch.Tensor]:
    """Capture `fn(*inputs)` in a CUDA graph; run(*args) copies args (default: `inputs`) into
    the static inputs, replays, returns the static output (overwritten by the next replay)."""
    static = [x.clone() for x in inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(3):
            fn(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)

    def run(*args: torch.Tensor) -> torch.Tensor:
        for dst, src in zip(static, args or inputs, strict=True):
            dst.copy_(src)
        graph.replay()
        return out

    run.graph = graph  # keep the graph (and its memory pool) alive with the callable
    return run


def _measure(fn: Callable[[], torch.Tensor], device, bs: int, iters: int, warmup: int) -> dict:
    """First call (timed), warm-up, then `iters` timed calls."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    cores = []
    out = None
    for _ in range(max(1, iters)):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        cores.append(time.perf_counter() - t0)
    # clone: a CUDA-graph output buffer is overwritten by the next replay
    logits = out.detach().float().clone()
    return {
        "img_per_s": bs * len(cores) / sum(cores),
        "ms_per_iter_mean": 1e3 * sum(cores) / len(cores),
        "ms_per_iter_min": 1e3 * min(cores),
        "first_call_s": first_s,
        "logits": logits,
    }


def optimisation_steps(
    model: SamModel, pixel_values: torch.Tensor, input_points: torch.Tensor, *, bs: int,
    precision: str, device: str, iters: int, warmup: int, steps: Sequence[int] = STEPS,
    score: Callable[[torch.Tensor], dict] | None = None,
) -> list[dict]:  # fmt: skip
    """Measure the cumulative optimisation steps (module docstring); one dict per step run.

    model: HF SamModel, never modified (each step works on a copy). pixel_values (N, 3, 1024,
    1024) and input_points (N, 1, 1, 2) pixel coords are sliced or tiled to batch `bs`.
    precision: "fp32" | "fp16" | "bf16"; steps: which to run (removed ones are skipped).
    A row: step, name, bs, precision, img_per_s, ms_per_iter_mean/min, first_call_s, compile_s
    (CUDA-graph capture), max_abs_diff and mask_agreement (low-res logits vs step 0's, sign
    agreement; None without step 0), math_mode, peak_mem_gib (CUDA), and what `score` returns
    for the step's last low-res logits (bs, 1, 3, 256, 256) float (e.g. acc, IoU)."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    dev, dtype = torch.device(device), DTYPES[precision]
    pv = _batched(pixel_values, bs).to(dev, dtype)
    pts = _batched(input_points, bs).to(dev, torch.float32)
    results: list[dict] = []
    reference: torch.Tensor | None = None

    def step_fn(i: int) -> tuple[Callable, float]:
        """(forward returning low-res logits, capture seconds) for step i."""
        if i == 0:
            hf = converted_copy(model, dtype, dev).eval()
            return (lambda: hf(pv, input_points=pts, multimask_output=True).pred_masks), 0.0
        if i in FP8_STEPS and precision != "bf16":
            raise RuntimeError("fp8 linear is measured in bf16 only")
        if i not in BUILDS:
            raise ValueError(f"unknown step {i}")
        fast = build_fast_sam(model, precision=precision, attention="kernel", **BUILDS[i]).to(dev)
        if dev.type != "cuda":  # the CPU runs it eagerly, on the kernels' torch references
            return (lambda: fast(pv, pts)[0]), 0.0
        t0 = time.perf_counter()
        run = cuda_graph(lambda a, b: fast(a, b)[0], pv, pts)
        _sync(dev)
        return run, time.perf_counter() - t0

    for i in steps:
        name = STEP_NAMES[i] if 0 <= i < len(STEP_NAMES) else f"step {i}"
        if name is None:
            continue  # a removed step
        try:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            with torch.no_grad():
                fn, compile_s = step_fn(i)
                m = _measure(fn, dev, bs, iters, warmup)
            logits = m.pop("logits")
            row = {"step": i, "name": name, "bs": bs, "precision": precision, **m}
            row.update(compile_s=compile_s, max_abs_diff=None, mask_agreement=None)
            if i == 0:
                reference = logits
            if reference is not None:
                row["max_abs_diff"] = (logits - reference).abs().max().item()
                row["mask_agreement"] = ((logits > 0) == (reference > 0)).float().mean().item()
            if score is not None:
                row.update(score(logits))
            row["math_mode"] = MATH[i] if i in FP8_STEPS else f"{precision} {MATH[i]}"
            if dev.type == "cuda":
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
            results.append(row)
        except Exception as exc:  # one failing step must not lose the others
            error = f"{type(exc).__name__}: {exc}"[:2000]
            tb = traceback.format_exc()[-4000:]
            results.append({"step": i, "name": name, "error": error, "traceback": tb})
        finally:
            fn = None  # drop this step's callable (a CUDA graph holds its memory pool)
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return results
