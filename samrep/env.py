"""The environment of a run (versions, device, driver, CPU, git commit) and the device check."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

import torch

from samrep.config import REPO_ROOT, HwParams
from samrep.errors import SamrepError

PACKAGES = ("torch", "transformers", "huggingface_hub", "onnx", "onnxruntime", "tensorrt", "numpy")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """HEAD's commit, with "+dirty" when the working tree differs from it; "unknown" outside git.

    SAMREP_GIT_COMMIT overrides it, for a copy of the tree without .git (a lent GPU machine).
    """
    if os.environ.get("SAMREP_GIT_COMMIT"):
        return os.environ["SAMREP_GIT_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            # Reports are outputs that a run itself rewrites: they do not make the code dirty.
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!reports"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_description(device: str) -> dict:
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        d = {
            "device": props.name,
            "device_memory_gib": props.total_memory / 1024**3,
            "cuda": torch.version.cuda,
            "compute_capability": f"{props.major}.{props.minor}",
            "device_count": torch.cuda.device_count(),
        }
        try:
            import pynvml

            pynvml.nvmlInit()
            d["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception as exc:  # NVML missing or not permitted: say so
            d["driver"] = f"unknown ({exc})"
        return d
    return {"device": f"CPU: {cpu_name()}", "cpu_threads": torch.get_num_threads()}


def environment(device: str) -> dict:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "git_commit": git_commit(),
        **device_description(device),
    }


def check_device(params: HwParams) -> None:
    """Fail early, in one line, when this machine is not the hardware the params describe."""
    if params.device == "cuda":
        if not torch.cuda.is_available():
            raise SamrepError(
                f"{params.path}: needs a CUDA GPU"
                + (f" ({params.requires})" if params.requires else "")
                + f"; this machine has none (CPU: {cpu_name()}, torch {torch.__version__})"
            )
        name = torch.cuda.get_device_name(0)
        if params.requires and params.requires.lower() not in name.lower():
            raise SamrepError(
                f"{params.path}: requires: needs a '{params.requires}' GPU; this machine has {name}"
            )
