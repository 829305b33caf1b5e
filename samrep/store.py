"""The store: atomic writes, JSON, hashes, stamps and the one freshness check.

Every write goes through `write_bytes` (temporary file beside it, fsync, rename: a killed run leaves
the old file or the new one) and, like every removal, must resolve inside the `confine` folders.
A stamp maps what a result depends on (code, params, inputs); `is_fresh` checks its digest.
"""

import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from samrep.errors import SamrepError
from samrep.faults import checkpoint

PACKAGE = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE.parent
_ROOTS: list[Path] = []  # folders writes may go into; empty = anywhere (library use, tests)


def confine(*folders: Path) -> None:
    """Allow writes and removals only inside `folders` (resolved now) from here on."""
    _ROOTS[:] = [Path(f).resolve() for f in folders]


def checked(path: Path, what: str = "write") -> Path:
    """The real path of `path` (links resolved now); a SamrepError outside the `confine` folders."""
    real = Path(path).resolve()
    if _ROOTS and not any(real == r or r in real.parents for r in _ROOTS):
        shown = ", ".join(str(r) for r in _ROOTS)
        raise SamrepError(f"{path}: refusing to {what} {real}: outside the hw's folders ({shown})")
    return real


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; a full disk or a read-only folder is a SamrepError."""
    real, tmp = checked(path, "write"), None
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        # ".<name>.<random>.tmp<pid>": removed at a later start only once its writer is dead
        fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=temp_suffix())
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are for everyone
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        checkpoint(f"write:{real.name}")  # test hook: killed before the rename
        os.replace(tmp, real)
    except BaseException as exc:  # a full disk, a read-only folder, Ctrl-C: no temporary left
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        full = " (disk full)" if exc.errno == errno.ENOSPC else ""
        raise SamrepError(f"{path}: cannot write ({exc.strerror}){full}") from None
    return real


def write_json(path: Path, obj) -> Path:
    return write_bytes(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


def read_json(path: Path, what: str = "file"):
    """Parsed JSON of `path`; a missing, unreadable or invalid file is one SamrepError line."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise SamrepError(f"{path}: {what} missing") from None
    except (OSError, ValueError) as exc:
        raise SamrepError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from None


def save_tensors(path: Path, obj) -> str:
    """torch.save `obj` atomically; returns the file's sha256."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())
    return sha256_bytes(buf.getvalue())


def remove(path: Path) -> None:
    """Remove a file or folder (missing is fine), refusing anything outside the granted folders."""
    real = checked(path, "remove")
    if real.is_dir() and not Path(path).is_symlink():
        shutil.rmtree(real, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def temp_suffix() -> str:
    """The suffix of every temporary file or folder samrep makes: ".tmp<pid>" (the ONNX export's
    and the weights cache's folders too), so a later run knows whether its maker is dead."""
    return f".tmp{os.getpid()}"


def remove_stale_temporaries(folder: Path) -> int:
    """Remove the temporaries ("*.tmp<pid>", and the older ".<name>.<random>.tmp") of dead
    processes under `folder`; a live process's (another run's, or this one's) stay."""
    stale = []
    for p in sorted(Path(folder).rglob("*.tmp*")) if Path(folder).is_dir() else []:
        pid = re.search(r"\.tmp(\d+)(\.[A-Za-z0-9]+)?$", p.name)  # a notebook's: ".tmp<pid>.ipynb"
        old_style = p.name.startswith(".") and p.name.endswith(".tmp")
        inside_stale = any(s in p.parents for s in stale)  # removed with its folder
        if (old_style or (pid and not _alive(int(pid[1])))) and not inside_stale:
            stale.append(p)
    for p in stale:  # collected first: removing a folder while walking it skips nothing
        remove(p)
    return len(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:  # EPERM: alive, another user's
        return exc.errno != errno.ESRCH
    return True


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_digest(*modules: str) -> str:
    """sha256 of the named samrep modules' source ("timing", "backends/fast", "fast/" for a
    whole folder): a result's stamp names only the code it depends on."""
    h = hashlib.sha256()
    for name in sorted(modules):
        target = PACKAGE / name
        files = sorted(target.rglob("*.py")) if name.endswith("/") else [target.with_suffix(".py")]
        for f in files:  # a module not (yet) there hashes as absent
            data = f.read_bytes() if f.is_file() else b"<absent>"
            h.update(f.relative_to(PACKAGE).as_posix().encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:16]


def digest(stamp: dict) -> str:
    """The digest of a stamp (a JSON-able mapping of what a result depends on)."""
    return sha256_bytes(json.dumps(stamp, sort_keys=True, default=str).encode())[:32]


def is_fresh(stored: str | None, stamp: dict) -> bool:
    """The one freshness check: a stored digest is fresh when it is the digest of `stamp`."""
    return stored is not None and stored == digest(stamp)
