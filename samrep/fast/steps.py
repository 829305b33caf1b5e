"""Measure the optimisation steps of `samrep.fast` one on top of the other, on one device.

  0 HF eager (its attention implementation, SDPA by default) in the precision
  1 + rel-pos gather index cached on the device (no CPU arange + host copy per layer)
  2 + FastSam: folded rel-pos flash attention, rel-pos tables and image PE precomputed
  3 + torch.compile (default mode)
  4 + CUDA graph of the step-3 module (no second compile); replay = copy inputs + replay
  5 + the Triton rel-pos attention kernel (no window partition, qkv on the unpadded grid) and
      the Triton rel-pos terms kernel; compiled + CUDA graph, as are 6 and 7
  6 + the patch-embedding conv as one GEMM (`PatchEmbedGemm`)
  7 + fp8 e4m3 linears, each input quantised in a separate pass (bf16 only)
  8 step 6 with fused blocks (`samrep.fast.fused`): residual add + LayerNorm in one Triton
    pass; eager (every hot op is a hand-written kernel or cuBLAS) + CUDA graph, as are 9-11
  9 + GELU in fc1's cuBLASLt epilogue (tanh approximation)
 10 + fp8 qkv/fc1/fc2 quantised by their producers (the norms and a bias + tanh-GELU kernel
    emit e4m3 + per-row dynamic scales); proj bf16 (bf16 only)
 11 + fp8 GEMMs with fast accumulation (bf16 only)

Timing: core = synchronize, forward, synchronize (perf_counter) per iteration; img/s = bs *
iters / sum(core). Logits are compared with step 0's. A failing step becomes {"step",
"name", "error", "traceback"} and the next step still runs.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable, Sequence

import torch
from transformers import SamModel

from samrep.fast.model import DTYPES, build_fast_sam, converted_copy
from samrep.fast.relpos import cache_hf_rel_pos_index_

STEP_NAMES = (
    "hf eager",
    "+ cached rel-pos index",
    "+ folded flash attention",
    "+ torch.compile",
    "+ cuda graphs",
    "+ triton rel-pos attention kernel",
    "+ patch embedding as a gemm",
    "+ fp8 linear",
    "6 + fused add+layernorm (eager + cuda graph)",
    "+ gelu in the fc1 epilogue (tanh)",
    "+ fp8 quantised by the producers",
    "+ fp8 fast accumulation",
)
FP8_STEPS = (7, 10, 11)
# build_fast_sam options of steps 5-11 (attention "kernel"; steps 8-11 are not compiled)
BUILDS = {
    5: dict(patch_gemm=False),
    6: dict(),
    7: dict(fp8_linear=True),
    8: dict(fused=True),
    9: dict(fused=True, gelu="tanh"),
    10: dict(fused=True, gelu="tanh", fp8_linear=True),
    11: dict(fused=True, gelu="tanh", fp8_linear=True, fp8_fast_accum=True),
}
MATH = {
    5: "attn kernel; patch conv",
    6: "attn kernel; patch gemm",
    7: "fp8 e4m3 qkv/proj/fc1/fc2, rowwise-dynamic, separate quantise",
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
    if t.shape[0] >= bs:
        return t[:bs]
    reps = -(-bs // t.shape[0])
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:bs]


def _graph_breaks() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(sum(counters["graph_break"].values()))
    except Exception:  # counters are internal API: a missing count is not an error
        return -1


def cuda_graph(fn: Callable, *inputs: torch.Tensor) -> Callable[..., torch.Tensor]:
    """Capture `fn(*static_inputs)` in a CUDA graph. Returns run(*args): copy args (default:
    `inputs`) into the static inputs, replay, return the static output (overwritten by the
    next replay)."""
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
    """First call (timed: includes any compile), warm-up, then `iters` timed calls."""
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
    model: SamModel,
    pixel_values: torch.Tensor,
    input_points: torch.Tensor,
    *,
    bs: int,
    precision: str,
    device: str,
    iters: int,
    warmup: int,
    steps: Sequence[int] = tuple(range(len(STEP_NAMES))),
    score: Callable[[torch.Tensor], dict] | None = None,
) -> list[dict]:
    """Measure the cumulative optimisation steps (module docstring) and return one dict each.

    model: HF SamModel (any device/dtype; never modified: each step works on a copy).
    pixel_values (N, 3, 1024, 1024), input_points (N, 1, 1, 2) pixel coords: sliced or tiled
        to batch `bs`.
    precision: "fp32" | "fp16" | "bf16"; device e.g. "cuda" (steps 4-7 need CUDA; 8-11 run
        eagerly on the CPU). steps: which to run (each builds what it needs itself).
    Each dict: step (int), name, img_per_s, ms_per_iter_mean, ms_per_iter_min,
    max_abs_diff (low-res logits vs step 0; None without step 0), mask_agreement (fraction
    of logits with the same sign as step 0), compile_s (seconds this step added: compile
    and/or graph capture; 0 for eager), first_call_s, peak_mem_gib (CUDA), graph_breaks
    (compiled steps), bs, precision, math_mode; or {"step", "name", "error", "traceback"}.
    score: called with each step's last low-res logits (bs, 1, 3, 256, 256) float; the dict it
        returns (e.g. acc and IoU against the ground truth) is merged into the step's row.
    """
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    dev = torch.device(device)
    dtype = DTYPES[precision]
    pv = _batched(pixel_values, bs).to(dev, dtype)
    pts = _batched(input_points, bs).to(dev, torch.float32)
    state: dict[str, object] = {}
    results: list[dict] = []
    reference: torch.Tensor | None = None

    def hf_model():
        if "hf" not in state:
            state["hf"] = converted_copy(model, dtype, dev).eval()
        return state["hf"]

    def fast_model():
        if "fast" not in state:
            state.pop("hf", None)  # not needed any more: free its memory
            state["fast"] = build_fast_sam(model, precision=precision, patch_gemm=False).to(dev)
        return state["fast"]

    def hf_fn(hf):
        return lambda: hf(pixel_values=pv, input_points=pts, multimask_output=True).pred_masks

    def compiled(key: str, module: torch.nn.Module) -> tuple[Callable, float]:
        """torch.compile (default mode), compiled by a first call and cached under `key`.
        Returns (fn, compile seconds spent now: 0 when already compiled by an earlier step)."""
        if key in state:
            return state[key], 0.0
        fn = torch.compile(module)
        _sync(dev)
        t0 = time.perf_counter()
        fn(pv, pts)
        _sync(dev)
        state[key] = fn
        return fn, time.perf_counter() - t0

    def graphed(fn: Callable, compile_s: float = 0.0) -> tuple[Callable, float]:
        """fn(pv, pts) captured in a CUDA graph; seconds = compile_s + capture."""
        t0 = time.perf_counter()
        run = cuda_graph(lambda a, b: fn(a, b)[0], pv, pts)
        _sync(dev)
        return run, compile_s + time.perf_counter() - t0

    def step_fn(i: int) -> tuple[Callable, float]:
        """(forward returning low-res logits, compile seconds) for step i."""
        if i in (0, 1):
            hf = hf_model()
            if i == 1:
                cache_hf_rel_pos_index_(hf)
            return hf_fn(hf), 0.0
        if i == 2:
            fast = fast_model()
            return (lambda: fast(pv, pts)[0]), 0.0
        if i == 3:
            fn, compile_s = compiled("compiled", fast_model())
            return (lambda: fn(pv, pts)[0]), compile_s
        if i in FP8_STEPS and precision != "bf16":
            raise RuntimeError("fp8 linear is measured in bf16 only")
        if i not in BUILDS and i != 4:
            raise ValueError(f"unknown step {i}")
        fused = BUILDS.get(i, {}).get("fused", False)
        if dev.type != "cuda" and not fused:
            raise RuntimeError(f"step {i} is a CUDA-graph step: it needs a CUDA device")
        if i == 4:
            return graphed(*compiled("compiled", fast_model()))
        for key in [k for k in state if k != f"compiled_{i}"]:  # free earlier steps' models
            state.pop(key)
        gc.collect()
        opts = {"patch_gemm": True, **BUILDS[i]}
        fast = build_fast_sam(model, precision=precision, attention="kernel", **opts).to(dev)
        if not fused:
            return graphed(*compiled(f"compiled_{i}", fast))
        if dev.type != "cuda":  # the CPU runs it eagerly, on the kernels' torch references
            return (lambda: fast(pv, pts)[0]), 0.0
        return graphed(fast)

    for i in steps:
        name = STEP_NAMES[i] if 0 <= i < len(STEP_NAMES) else f"step {i}"
        fn = None
        try:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            breaks0 = _graph_breaks()
            with torch.no_grad():
                fn, compile_s = step_fn(i)
                m = _measure(fn, dev, bs, iters, warmup)
            logits = m.pop("logits")
            row = {"step": i, "name": name, "bs": bs, "precision": precision, **m}
            row["compile_s"] = compile_s
            row["graph_breaks"] = _graph_breaks() - breaks0 if i >= 3 else 0
            if i == 0:
                reference = logits
            row["max_abs_diff"] = row["mask_agreement"] = None
            if reference is not None:
                row["max_abs_diff"] = (logits - reference).abs().max().item()
                row["mask_agreement"] = ((logits > 0) == (reference > 0)).float().mean().item()
            if score is not None:
                row.update(score(logits))
            mode = MATH.get(i, "HF eager" if i < 2 else "folded")
            row["math_mode"] = mode if i in FP8_STEPS else f"{precision} {mode}"
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
