"""The environment of a run (versions, device, driver, CPU, git commit) and the device check."""

import contextlib
import importlib.metadata
import os
import platform
import subprocess

import torch

from samrep.config import REPO_ROOT, HwParams
from samrep.errors import SamrepError

PACKAGES = ("torch", "transformers", "huggingface_hub", "onnx", "onnxruntime", "tensorrt", "numpy")


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """HEAD's commit, with "+dirty" when the working tree differs from it; "unknown" outside git.
    SAMREP_GIT_COMMIT overrides it, for a copy of the tree without .git (a lent GPU machine)."""
    if os.environ.get("SAMREP_GIT_COMMIT"):
        return os.environ["SAMREP_GIT_COMMIT"]
    try:
        git = dict(cwd=REPO_ROOT, capture_output=True, text=True)
        head = subprocess.run(["git", "rev-parse", "HEAD"], check=True, **git).stdout.strip()
        # Reports are outputs that a run itself rewrites: they do not make the code dirty.
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!reports"]
        return head + ("+dirty" if subprocess.run(status, **git).stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: str) -> dict:
    versions = dict.fromkeys(PACKAGES)  # None: not installed
    for pkg in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[pkg] = importlib.metadata.version(pkg)
    env = dict(python=platform.python_version(), platform=platform.platform(), cpu=cpu_name())
    env.update(cpu_count=os.cpu_count(), versions=versions, git_commit=git_commit())
    if not (device == "cuda" and torch.cuda.is_available()):
        return {**env, "device": f"CPU: {cpu_name()}", "cpu_threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(0)
    env.update(device=props.name, device_memory_gib=props.total_memory / 1024**3)
    env.update(cuda=torch.version.cuda, compute_capability=f"{props.major}.{props.minor}")
    env.update(device_count=torch.cuda.device_count())
    try:
        import pynvml

        pynvml.nvmlInit()
        env["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception as exc:  # NVML missing or not permitted: say so
        env["driver"] = f"unknown ({exc})"
    return env


def check_device(params: HwParams) -> None:
    """Fail early, in one line, when this machine is not the hardware the params describe."""
    where, need = params.path, params.requires
    if params.device != "cuda":
        return
    if not torch.cuda.is_available():
        gpu = f"a CUDA GPU ({need})" if need else "a CUDA GPU"
        has = f"none (CPU: {cpu_name()}, torch {torch.__version__})"
        raise SamrepError(f"{where}: needs {gpu}; this machine has {has}")
    name = torch.cuda.get_device_name(0)
    if need and need.lower() not in name.lower():
        raise SamrepError(f"{where}: requires: needs a '{need}' GPU; this machine has {name}")
