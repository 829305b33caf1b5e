"""Backends: name -> ("module:Class", the code its results depend on), imported lazily: a
missing toolkit makes a "not run: <reason>" row, never a crash. The code list feeds the row
stamps (samrep.store.code_digest): editing one backend makes only its rows stale."""

import importlib

from samrep.backends.base import Backend, BackendUnavailable
from samrep.errors import SamrepError

_ONNX = ("backends/onnx_engine", "backends/onnx_export")
BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "torch": ("samrep.backends.torch_eager:TorchBackend", ("backends/torch_eager",)),
    "inductor": ("samrep.backends.inductor:InductorBackend", ("backends/inductor",)),
    "onnxruntime": (
        "samrep.backends.onnxruntime:OnnxRuntimeBackend",
        ("backends/onnxruntime", *_ONNX),
    ),
    "tensorrt": ("samrep.backends.tensorrt:TensorRTBackend", ("backends/tensorrt", *_ONNX)),
    "xtcl": ("samrep.backends.xtcl:XtclBackend", ("backends/xtcl", *_ONNX)),
    "fast": ("samrep.backends.fast:FastBackend", ("backends/fast", "fast/")),
}


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as `name`. SamrepError for an unknown name (listing the
    known ones); BackendUnavailable when its module cannot be imported on this machine."""
    if name not in BACKENDS:
        raise SamrepError(f"unknown backend '{name}' (known: {', '.join(sorted(BACKENDS))})")
    module_name, class_name = BACKENDS[name][0].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"{name}: cannot import {module_name} ({exc})") from exc
    return getattr(module, class_name)


def backend_code(name: str) -> tuple[str, ...]:
    """The samrep modules a backend's results depend on (base included)."""
    return ("backends/base", *BACKENDS[name][1])


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "backend_code", "get_backend"]
