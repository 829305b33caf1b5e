"""Helpers of the reliability tests (bad inputs, interruption, concurrency, full disk).

Each test writes its params into a temporary SAMREP_PARAMS_DIR; their data and report folders are
data/pytest-<name> and reports/pytest-<name>, removed afterwards (and only those). `listing`
is the repository's file listing outside the tests' folders, to show a refused run wrote nothing.
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from samrep.store import REPO_ROOT
from tests.conftest import tiny_params, write_params

ROW = "val-torch-fp32-bs1"
CACHES = {".git", "__pycache__", ".pytest_cache", ".ruff_cache"}


def own_folders(name: str) -> list[Path]:
    return [REPO_ROOT / "data" / f"pytest-{name}", REPO_ROOT / "reports" / f"pytest-{name}"]


def remove_own(name: str) -> None:
    """Remove data/pytest-<name> and reports/pytest-<name> (a link there: only the link)."""
    for folder in own_folders(name):
        assert folder.parent.name in ("data", "reports") and folder.name.startswith("pytest-")
        if folder.is_symlink():
            folder.unlink()
        else:
            shutil.rmtree(folder, ignore_errors=True)


ONE_ROW = [{"phase": "val", "backend": "torch", "precision": "fp32", "bs": 1}]


def tiny(name: str, runs: list[dict] | None = None) -> dict:
    """The tiny params of hw `name` in its own folders (data/pytest-<name>, ...), one torch row
    by default."""
    return tiny_params(name, runs=runs or ONE_ROW)


def listing(root: Path = REPO_ROOT, skip_tests: bool = True) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file (and link) under `root`, without caches
    and, with `skip_tests`, without data/pytest-*, reports/pytest-*, build/pytest-*."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [
            d
            for d in dirnames
            if d not in CACHES
            and not (
                skip_tests
                and here.parent == root
                and here.name in ("data", "reports", "build")
                and d.startswith("pytest-")
            )
        ]
        for f in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            st = (here / f).lstat()
            out[str((here / f).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def temporaries(*folders: Path) -> list[str]:
    """Temporary files or folders (".tmp" in the name) left under `folders`."""
    return sorted(str(p) for f in folders if f.exists() for p in f.rglob("*.tmp*"))


def cli_env(params_dir: Path, **extra: str) -> dict:
    env = dict(os.environ, SAMREP_PARAMS_DIR=str(params_dir), PYTHONPATH=str(REPO_ROOT))
    env.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    for k in ("SAMREP_TEST_PAUSE_AT", "SAMREP_TEST_FAIL_AT", "SAMREP_LOCK_TIMEOUT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _default_sigint() -> None:
    # A background job (`make test &`, some CI runners) starts with SIGINT ignored, and Python
    # then keeps it ignored: give the child the default handler, as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(params_dir: Path, *args: str, **env: str) -> subprocess.Popen:
    """`python -m samrep <args>` in its own session (a Ctrl-C reaches it and its children)."""
    return subprocess.Popen(
        [sys.executable, "-m", "samrep", *args],
        cwd=REPO_ROOT,
        env=cli_env(params_dir, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 60) -> str:
    """stderr of `proc` up to and including the first line containing `marker`."""
    import selectors
    import time

    seen, sel, end = "", selectors.DefaultSelector(), time.monotonic() + timeout
    sel.register(proc.stderr, selectors.EVENT_READ)
    while marker not in seen:
        if time.monotonic() > end or proc.poll() is not None and not sel.select(0):
            raise AssertionError(f"no {marker!r} in stderr:\n{seen}")
        if sel.select(1):
            line = proc.stderr.readline()
            seen += line
    return seen


def error_lines(stderr: str) -> list[str]:
    """stderr without progress lines ("[samrep ...") and library notices ("[transformers]")."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith(("[samrep ", "[transformers]"))
    ]


def made_hw(params_dir: Path, name: str, runs: list[dict] | None = None) -> Path:
    """Write the tiny params of hw `name` and make its ground truth (in this process)."""
    from samrep import cli, config, store

    remove_own(name)
    write_params(params_dir, name, tiny(name, runs))
    old, config.PARAMS_DIR = config.PARAMS_DIR, Path(params_dir)
    try:
        assert cli.main(["groundtruth", "--hw", name]) == 0
    finally:
        config.PARAMS_DIR = old
        store.confine()
    return own_folders(name)[0]


def run_cli(params_dir: Path, *args: str) -> int:
    """`samrep.cli.main(args)` in this process with the params of `params_dir`."""
    from samrep import cli, config, store

    old, config.PARAMS_DIR = config.PARAMS_DIR, Path(params_dir)
    try:
        return cli.main(list(args))
    finally:
        config.PARAMS_DIR = old
        store.confine()


def own_hw_fixture(name: str, evaluated: bool = False):
    """A module fixture: a private params folder with the tiny hw `name` (its row evaluated
    once first if `evaluated`), and that hw's folders removed afterwards."""

    @pytest.fixture(scope="module")
    def hw(tmp_path_factory):
        params_dir = tmp_path_factory.mktemp("params")
        made_hw(params_dir, name)
        if evaluated:
            assert run_cli(params_dir, "evaluate", "--hw", name) == 0  # the earlier results
        yield params_dir
        remove_own(name)

    return hw
