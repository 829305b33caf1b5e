"""A stamp names only what a result depends on: report code never makes results stale, one
backend's code makes only its own rows stale."""

import shutil

import pytest

import samrep.store
from samrep.config import RunParams
from samrep.groundtruth import stamp as gt_stamp
from samrep.row import row_stamp
from samrep.store import digest, is_fresh

ROWS = {
    "torch": RunParams(phase="val", backend="torch", precision="fp32", bs=1),
    "onnxruntime": RunParams(backend="onnxruntime", precision="fp32", bs=1),
    "fast": RunParams(backend="fast", precision="fp32", bs=1),
}


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """samrep's sources copied, and the store's code hashes reading the copy."""
    copy = tmp_path / "samrep"
    shutil.copytree(samrep.store.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(samrep.store, "PACKAGE", copy)
    return copy


def _stamps(params) -> dict:
    out = {name: digest(row_stamp(params, run, "gt")) for name, run in ROWS.items()}
    return out | {"ground truth": digest(gt_stamp("image", "weights", [1.0, 2.0]))}


@pytest.mark.parametrize(
    "edited,stale",
    [
        ("pipeline.py", set()),
        ("cli.py", set()),
        ("config.py", set()),
        ("backends/torch_eager.py", {"torch"}),
        ("backends/onnxruntime.py", {"onnxruntime"}),
        ("fast/__init__.py", {"fast"}),
        ("timing.py", set(ROWS)),
        ("metrics.py", set(ROWS) | {"ground truth"}),
        ("groundtruth.py", {"ground truth"}),
    ],
)
def test_an_edit_makes_stale_only_what_depends_on_it(make_params, package_copy, edited, stale):
    params = make_params("fresh")
    before = _stamps(params)
    with open(package_copy / edited, "a") as f:
        f.write("\n# an edit\n")
    after = _stamps(params)
    assert {k for k in before if before[k] != after[k]} == stale


def test_is_fresh_is_the_stored_digest_of_the_stamp_now():
    stamp = {"a": 1, "b": [2, 3]}
    assert is_fresh(digest(stamp), {"b": [2, 3], "a": 1})
    assert not is_fresh(digest(stamp), {"a": 2, "b": [2, 3]})
    assert not is_fresh(None, stamp)
