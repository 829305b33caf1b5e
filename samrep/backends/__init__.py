"""Backends: a name -> "module:Class" registry, imported lazily.

A machine needs only the toolkit it benchmarks: looking a backend up imports its module, and a
missing toolkit becomes a "not run: <reason>" row, never a crash.
"""

from __future__ import annotations

import importlib

from samrep.backends.base import Backend, BackendUnavailable
from samrep.errors import SamrepError

BACKENDS: dict[str, str] = {
    "torch": "samrep.backends.torch_eager:TorchBackend",
    "inductor": "samrep.backends.inductor:InductorBackend",
    "onnxruntime": "samrep.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "samrep.backends.tensorrt:TensorRTBackend",
    "xtcl": "samrep.backends.xtcl:XtclBackend",
    "fast": "samrep.backends.fast:FastBackend",
}


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as `name`.

    Raises SamrepError for an unknown name (listing the known ones) and BackendUnavailable when
    the backend's own module cannot be imported on this machine.
    """
    if name not in BACKENDS:
        raise SamrepError(f"unknown backend '{name}' (known: {', '.join(sorted(BACKENDS))})")
    module_name, class_name = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"{name}: cannot import {module_name} ({exc})") from exc
    return getattr(module, class_name)


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "get_backend"]
