"""Common NVIDIA GPUs' dense peaks and memory (samrep/gpus.yaml); `auto_params()`: the params of
`make report HW=auto` for the GPU `detect()` finds (cpu's without one; MFU n/a if unknown)."""

import copy
import os
import re
from pathlib import Path

import yaml

from samrep.config import REPO_ROOT
from samrep.store import write_bytes

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")
# Package data (pyproject's package-data): beside this module in a checkout and an install alike.
_DATA = yaml.safe_load((Path(__file__).parent / "gpus.yaml").read_text())
GPUS = _DATA["gpus"]  # {name (NVML regex), label, memory_gb, tflops {precision: dense}, source}
AUTO_ROWS = _DATA["rows"]  # HW=auto's rows: phase, backend, precision, GiB/image, largest bs


def peaks(gpu: dict) -> dict:
    """A GPU's {precision: {flops, source}}, as the hw params' `peaks` section wants it."""
    source = gpu["source"] + " -> {} {} TFLOPS dense"
    return {p: {"flops": t * 1e12, "source": source.format(p, t)} for p, t in gpu["tflops"].items()}


def nvml_gpu() -> tuple[str, float] | None:
    """(NVML name, memory GiB) of GPU 0, or None when there is no NVIDIA GPU or driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
    except Exception:  # no pynvml, no driver, no device: all mean "no GPU"
        return None
    return (name.decode() if isinstance(name, bytes) else name), mem


def detect(name: str | None = None) -> dict | None:
    """The table entry for an NVML device name (default: GPU 0's); None if unknown or no GPU."""
    key = re.sub(r"^(nvidia|tesla)\s+", "", (name or (nvml_gpu() or ("",))[0]).strip().lower())
    return next((g for g in GPUS if key and re.fullmatch(g["name"], key)), None)


def auto_params(gpu: tuple[str, float] | None = None) -> dict:
    """The hw params mapping for HW=auto: GPU 0 (or `gpu` = (name, GiB)) with its peaks and the
    AUTO_ROWS that fit 80% of its memory; the cpu params when there is no GPU."""
    gpu = gpu if gpu is not None else nvml_gpu()
    if gpu is None:
        return yaml.safe_load((REPO_ROOT / "params" / "cpu.yaml").read_text())
    name, mem = gpu
    entry = detect(name)
    gpu_peaks = peaks(entry) if entry else {}
    runs = []
    for row in AUTO_ROWS:
        fits = [bs for bs in (1, 2, 4, 8, 16, 32) if 2 + row["gib_per_image"] * bs <= 0.8 * mem]
        # A precision the GPU lacks (fp8 before Ada/Hopper, bf16 before Ampere) is left out.
        if fits and (entry is None or row["precision"] in gpu_peaks):
            what = {k: row[k] for k in ("phase", "backend", "precision")}
            runs.append(what | {"bs": min(fits[-1], row["largest_bs"])})
    known = entry["label"] if entry else "unknown to samrep.gpus: MFU not available, peak unknown"
    described = f"{name} ({known}), detected through NVML; rows sized for {mem:.0f} GiB"
    auto = {"hw": "auto", "description": described, "requires": name, "peaks": gpu_peaks}
    return auto | copy.deepcopy(_DATA["params"]) | {"runs": runs}  # a copy the caller may edit


def auto_hw() -> str:
    """`--hw auto`: "cpu" without a GPU; else the detected GPU's params (auto_params), written to
    data/auto/params/auto.yaml, with SAMREP_PARAMS_DIR pointing there (notebooks inherit it)."""
    gpu = nvml_gpu()
    if gpu is None:
        return "cpu"
    folder = REPO_ROOT / "data" / "auto" / "params"
    write_bytes(folder / "auto.yaml", yaml.safe_dump(auto_params(gpu), sort_keys=False).encode())
    os.environ["SAMREP_PARAMS_DIR"] = str(folder)
    return "auto"
