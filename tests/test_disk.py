"""Writes that cannot or must not happen: a full disk (a small tmpfs where one can be mounted,
else ENOSPC injected into the store's rename) fails the run in one line and leaves the earlier
results whole and reusable; a results folder or a record that is a link to outside the
repository is refused, and nothing is written there."""

import errno
import os
import subprocess
from pathlib import Path

import pytest

from samrep import store
from tests.reliability import (
    ROW,
    error_lines,
    own_folders,
    own_hw_fixture,
    run_cli,
    temporaries,
)

NAME = "disk"


hw = own_hw_fixture(NAME, evaluated=True)


@pytest.fixture(autouse=True)
def _unconfined():
    yield
    store.confine()


def _results() -> dict[str, bytes]:
    folder = own_folders(NAME)[1] / "results"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _fill(folder: Path) -> None:
    """Fill the file system of `folder` up to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_disk_fails_in_one_line_and_leaves_earlier_results_intact(hw, monkeypatch, capsys):
    data, report = own_folders(NAME)
    before = _results()
    results = report / "results"
    # A real full disk: a small tmpfs over the results folder, holding the earlier results
    # (root with CAP_SYS_ADMIN only); else ENOSPC injected into the store's rename.
    cmd = ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(results)]
    mounted = subprocess.run(cmd, capture_output=True).returncode == 0
    try:
        if mounted:
            for name, content in before.items():
                (results / name).write_bytes(content)
            _fill(results)
        else:
            real = os.replace

            def replace(src, dst, **kw):
                if Path(dst).parent == results:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(src, dst, **kw)

            monkeypatch.setattr(os, "replace", replace)
        capsys.readouterr()
        rc = run_cli(hw, "evaluate", "--hw", NAME, "--force")
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        (line,) = error_lines(err)
        assert f"results/{ROW}" in line, line
        assert "cannot write (No space left on device) (disk full)" in line, line
        assert {k: v for k, v in _results().items() if k != "filler"} == before
        assert temporaries(data, report) == []
    finally:
        monkeypatch.undo()
        if mounted:
            subprocess.run(["umount", str(results)], check=True)
    assert run_cli(hw, "evaluate", "--hw", NAME) == 0
    assert "reusing its fresh result" in capsys.readouterr().err  # the earlier result holds


def test_a_results_folder_linked_outside_is_refused_before_any_work(hw, tmp_path, capsys):
    results = own_folders(NAME)[1] / "results"
    kept = tmp_path / "kept"
    results.rename(kept)
    outside = tmp_path / "outside"
    outside.mkdir()
    results.symlink_to(outside)
    try:
        assert run_cli(hw, "evaluate", "--hw", NAME, "--force") == 2
        (line,) = error_lines(capsys.readouterr().err)
        assert line == (
            f"samrep: error: {results}: a symbolic link to {outside}, outside {results.parent}"
        )
        assert list(outside.iterdir()) == []
    finally:
        results.unlink()
        kept.rename(results)


def test_a_record_linked_outside_is_refused_when_written(hw, tmp_path, capsys):
    record = own_folders(NAME)[1] / "results" / f"{ROW}.json"
    content = record.read_bytes()
    target = tmp_path / "elsewhere.json"
    target.write_bytes(b"{}")
    record.unlink()
    record.symlink_to(target)
    try:
        assert run_cli(hw, "evaluate", "--hw", NAME, "--force") == 2
        (line,) = error_lines(capsys.readouterr().err)
        assert f"{record}: refusing to write {target}: outside the hw's folders" in line
        assert target.read_bytes() == b"{}"
    finally:
        record.unlink()
        record.write_bytes(content)
