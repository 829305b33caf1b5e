"""Common NVIDIA data-centre and workstation GPUs: dense peak FLOP/s per precision, memory.

`detect()` matches GPU 0's NVML name against `GPUS`; `auto_params()` is the hw params mapping of
`make report HW=auto` (the cpu params without a GPU). A GPU not in the table runs with no peaks:
its MFU reads "not available: peak unknown".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from samrep.config import REPO_ROOT

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")


@dataclass(frozen=True)
class Gpu:
    name: str  # regex, full match on the NVML name, lower case, "nvidia "/"tesla " dropped
    label: str
    memory_gb: str
    tflops: str  # dense peak TFLOP/s for PRECISIONS, "-" where the GPU lacks it
    source: str  # the datasheet's own figures

    def peaks(self) -> dict:
        """{precision: {flops, source}} as the hw params' `peaks` section wants it."""
        pairs = zip(PRECISIONS, self.tflops.split(), strict=True)
        dense = f"{self.source} -> {{}} {{}} TFLOPS dense"
        return {
            p: {"flops": float(t) * 1e12, "source": dense.format(p, t)}
            for p, t in pairs
            if t != "-"
        }


# NVML name (regex, full match, lower case, "nvidia "/"tesla " dropped) | label | memory GB |
# dense TFLOP/s fp32 tf32 fp16 bf16 fp8 ("-": none); the next line: the datasheet's own figures
# (*: with sparsity, halved here; GeForce/RTX: FP32 accumulation).
_TABLE = """\
a100-sxm4-40gb | A100 SXM4 40 GB | 40 | 19.5 156 312 312 -
  NVIDIA A100 datasheet: FP32 19.5, TF32 156 (312*), BF16/FP16 312 (624*) TFLOPS
a100-sxm4-80gb | A100 SXM4 80 GB | 80 | 19.5 156 312 312 -
  NVIDIA A100 datasheet: FP32 19.5, TF32 156 (312*), BF16/FP16 312 (624*) TFLOPS
a100-pcie-40gb | A100 PCIe 40 GB | 40 | 19.5 156 312 312 -
  NVIDIA A100 datasheet: FP32 19.5, TF32 156 (312*), BF16/FP16 312 (624*) TFLOPS
a100 80gb pcie | A100 PCIe 80 GB | 80 | 19.5 156 312 312 -
  NVIDIA A100 datasheet: FP32 19.5, TF32 156 (312*), BF16/FP16 312 (624*) TFLOPS
h100 80gb hbm3|h100 sxm.* | H100 SXM 80 GB | 80 | 67 494.5 989.5 989.5 1979
  NVIDIA H100 datasheet (SXM): FP32 67, TF32 989*, BF16/FP16 1979*, FP8 3958* TFLOPS
h100 pcie | H100 PCIe 80 GB | 80 | 51 378 756.5 756.5 1513
  NVIDIA H100 datasheet (PCIe): FP32 51, TF32 756*, BF16/FP16 1513*, FP8 3026* TFLOPS
h100 nvl | H100 NVL 94 GB | 94 | 60 417.5 835.5 835.5 1670.5
  NVIDIA H100 datasheet (NVL): FP32 60, TF32 835*, BF16/FP16 1671*, FP8 3341* TFLOPS
h200 | H200 SXM 141 GB | 141 | 67 494.5 989.5 989.5 1979
  NVIDIA H200 datasheet (SXM): FP32 67, TF32 989*, BF16/FP16 1979*, FP8 3958* TFLOPS
h200 nvl | H200 NVL 141 GB | 141 | 60 417.5 835.5 835.5 1670.5
  NVIDIA H200 datasheet (NVL): FP32 60, TF32 835*, BF16/FP16 1671*, FP8 3341* TFLOPS
gh200.* | GH200 (its H100 GPU) | 96 | 67 494.5 989.5 989.5 1979
  NVIDIA GH200 datasheet: FP32 67, TF32 989*, BF16/FP16 1979*, FP8 3958* TFLOPS
l40s | L40S 48 GB | 48 | 91.6 183 362.05 362.05 733
  NVIDIA L40S datasheet: FP32 91.6, TF32 183 (366*), BF16/FP16 362.05 (733*), FP8 733 TFLOPS
l40 | L40 48 GB | 48 | 90.5 90.5 181.05 181.05 362
  NVIDIA L40 datasheet: FP32 90.5, TF32 90.5 (181*), BF16/FP16 181.05 (362.1*), FP8 362 TFLOPS
l4 | L4 24 GB | 24 | 30.3 60 121 121 242.5
  NVIDIA L4 datasheet: FP32 30.3, TF32 120*, BF16/FP16 242*, FP8 485* TFLOPS
a10 | A10 24 GB | 24 | 31.2 62.5 125 125 -
  NVIDIA A10 datasheet: FP32 31.2, TF32 62.5 (125*), BF16/FP16 125 (250*) TFLOPS
a30 | A30 24 GB | 24 | 10.3 82 165 165 -
  NVIDIA A30 datasheet: FP32 10.3, TF32 82 (165*), BF16/FP16 165 (330*) TFLOPS
a40 | A40 48 GB | 48 | 37.4 74.8 149.7 149.7 -
  NVIDIA A40 datasheet: FP32 37.4, TF32 74.8 (149.6*), BF16/FP16 149.7 (299.4*) TFLOPS
geforce rtx 4090 | GeForce RTX 4090 24 GB | 24 | 82.6 82.6 165.2 165.2 330.3
  NVIDIA Ada architecture whitepaper (RTX 4090): FP32 82.6, TF32 82.6, FP16 165.2, FP8 330.3
rtx 6000 ada generation | RTX 6000 Ada 48 GB | 48 | 91.1 182.1 364.2 364.2 728.5
  NVIDIA Ada architecture whitepaper (RTX 6000 Ada): FP32 91.1, TF32 182.1, FP16 364.2, FP8 728.5
rtx a6000 | RTX A6000 48 GB | 48 | 38.7 77.4 154.8 154.8 -
  NVIDIA Ampere GA102 whitepaper (RTX A6000): FP32 38.7, TF32 77.4, FP16 154.8 TFLOPS
v100-sxm2-(16|32)gb | V100 SXM2 | 32 | 15.7 - 125 - -
  NVIDIA V100 datasheet (SXM2): FP32 15.7, Tensor Performance (FP16) 125 TFLOPS
v100-pcie-(16|32)gb | V100 PCIe | 32 | 14 - 112 - -
  NVIDIA V100 datasheet (PCIe): FP32 14, Tensor Performance (FP16) 112 TFLOPS
t4 | T4 16 GB | 16 | 8.1 - 65 - -
  NVIDIA T4 datasheet: FP32 8.1, mixed precision (FP16/FP32) 65 TFLOPS
"""


_LINES = _TABLE.splitlines()
GPUS = [
    Gpu(*(f.strip() for f in head.rsplit("|", 3)), source.strip())
    for head, source in zip(_LINES[::2], _LINES[1::2], strict=True)
]
# HW=auto's rows: (phase, backend, precision, GiB/image from the H200 report's peaks, largest bs)
AUTO_ROWS = [
    ("val", "torch", "fp32", 2.6, 8),
    ("val", "torch", "tf32", 2.6, 8),
    ("val", "torch", "bf16", 1.3, 16),
    ("infer", "inductor", "bf16", 0.9, 16),
    ("infer", "fast", "bf16", 0.4, 32),
    ("infer", "fast", "fp8", 0.4, 16),
]


def match(name: str) -> Gpu | None:
    """The table entry for an NVML device name, or None for a GPU not in the table."""
    key = re.sub(r"^(nvidia|tesla)\s+", "", name.strip().lower())
    return next((g for g in GPUS if re.fullmatch(g.name, key)), None)


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


def detect(name: str | None = None) -> Gpu | None:
    """The entry for `name` (default: GPU 0's NVML name); None for an unknown GPU or none."""
    name = name or (nvml_gpu() or ("",))[0]
    return match(name) if name else None


def auto_params(gpu: tuple[str, float] | None = None) -> dict:
    """The hw params mapping for HW=auto: GPU 0 (or `gpu` = (name, GiB)) with its peaks and the
    AUTO_ROWS that fit 80% of its memory; the cpu params when there is no GPU."""
    import yaml

    gpu = gpu if gpu is not None else nvml_gpu()
    if gpu is None:
        return yaml.safe_load((REPO_ROOT / "params" / "cpu.yaml").read_text())
    name, mem = gpu
    entry = match(name)
    peaks = entry.peaks() if entry else {}
    runs = []
    for phase, backend, precision, per_image, largest in AUTO_ROWS:
        # A precision the GPU lacks (fp8 before Ada/Hopper, bf16 before Ampere) is left out.
        fits = [bs for bs in (1, 2, 4, 8, 16, 32) if 2 + per_image * bs <= 0.8 * mem]
        if fits and (entry is None or precision in peaks):
            runs.append(dict(phase=phase, backend=backend, precision=precision))
            runs[-1]["bs"] = min(fits[-1], largest)
    known = entry.label if entry else "unknown to samrep.gpus: MFU not available, peak unknown"
    return {
        "hw": "auto",
        "description": f"{name} ({known}), detected through NVML; rows sized for {mem:.0f} GiB",
        "device": "cuda",
        "requires": name,
        "peaks": peaks,
        "model": {"arch": "vit_h", "weights": "facebook/sam-vit-huge", "allow_synthetic": True},
        "data": {"data_dir": "data/auto", "datasize": 128, "repeat": 2, "warmup": 2},
        "runs": runs,
    }


def auto_hw() -> str:
    """`--hw auto`: "cpu" without a GPU; else the detected GPU's params (auto_params), written to
    data/auto/params/auto.yaml, with SAMREP_PARAMS_DIR pointing there (notebooks inherit it)."""
    import os

    import yaml

    from samrep.store import write_bytes

    gpu = nvml_gpu()
    if gpu is None:
        return "cpu"
    folder = REPO_ROOT / "data" / "auto" / "params"
    write_bytes(folder / "auto.yaml", yaml.safe_dump(auto_params(gpu), sort_keys=False).encode())
    os.environ["SAMREP_PARAMS_DIR"] = str(folder)
    return "auto"
