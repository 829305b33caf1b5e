"""Every bad input a user can cause, over the nine classes of issue 13 and every CLI stage: the
exit code, one stderr line that names the file, key or path and what is wrong, and nothing
written (the repository's file listing outside the tests' folders is unchanged, and so are the
case's own folders, but for the lock file, unless the case is an interruption or a full disk).

The classes: 1 decoding and shape of params, 2 numbers that pass the type but not sense,
3 paths, 4 corrupt caches, 5 interruption, 6 concurrency, 7 environment faults, 8 the report
chain, 9 options of steps and bench. Every case runs `samrep.cli.main` in this process.
"""

import errno
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from samrep import cli, config, faults, store
from samrep.errors import SamrepError
from tests.conftest import write_params
from tests.reliability import (
    ROW,
    error_lines,
    listing,
    own_folders,
    remove_own,
    temporaries,
    tiny,
)

STAGES = ("groundtruth", "export", "build", "evaluate", "summary", "report", "bench", "steps")
ONNX_ROW = {"phase": "infer", "backend": "onnxruntime", "precision": "fp32", "bs": 1}


@dataclass
class Ctx:
    name: str
    data: Path
    report: Path
    outside: Path  # a folder outside the repository
    monkeypatch: pytest.MonkeyPatch
    stop: list = field(default_factory=list)  # processes to end after the case


@dataclass
class Case:
    id: str
    cls: int  # the class, 1-9
    argv: list[str]  # stage and options; "--hw <case hw>" is added unless given
    want: tuple[str, ...]  # each is in the one error line
    change: Callable[[dict], object] | None = None  # edits the params document
    text: str | bytes | None = None  # the params file's raw content instead
    setup: Callable[[Ctx], object] | None = None  # files, links, environment, patches
    gt: bool = False  # start from a copy of a made ground truth
    rc: int = 2
    writes: bool = False  # the case's own folders may change (interrupted, disk full)
    check: Callable[[Ctx], object] | None = None  # afterwards


def put(dotted: str, value) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        *path, last = dotted.split(".")
        for key in path:
            doc = doc[int(key)] if isinstance(doc, list) else doc[key]
        doc[int(last) if isinstance(doc, list) else last] = value

    return change


def with_onnx_row(doc: dict) -> None:
    doc["runs"] = [ONNX_ROW]


def link_outside(sub: str, kind: str = "data") -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        folder = ctx.data if kind == "data" else ctx.report
        folder.mkdir(parents=True, exist_ok=True)
        (ctx.outside / sub).mkdir()
        (folder / sub).symlink_to(ctx.outside / sub)

    return setup


def nothing_outside(ctx: Ctx) -> None:
    assert not [p for p in ctx.outside.rglob("*") if not p.is_dir()]


def corrupt(rel: str, data: bytes) -> Callable[[Ctx], None]:
    return lambda ctx: (ctx.data / rel).write_bytes(data)


def edit_manifest(fn: Callable[[dict], object]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        import json

        m = json.loads((ctx.data / "manifest.json").read_text())
        (ctx.data / "manifest.json").write_text(json.dumps(fn(m)))

    return setup


def ctrl_c_at(point: str) -> Callable[[Ctx], None]:
    """The pause hook at `point` raises KeyboardInterrupt, as Ctrl-C there would."""

    def sleep(_):
        raise KeyboardInterrupt

    def setup(ctx: Ctx) -> None:
        ctx.monkeypatch.setenv(faults.PAUSE_ENV, point)
        ctx.monkeypatch.setattr(faults, "time", types.SimpleNamespace(sleep=sleep))

    return setup


def disk_full_at(file_name: str) -> Callable[[Ctx], None]:
    """The rename that publishes `file_name` fails with ENOSPC (the store's injected full disk)."""
    real = os.replace

    def replace(src, dst, **kw):
        if Path(dst).name == file_name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, **kw)

    return lambda ctx: ctx.monkeypatch.setattr(os, "replace", replace)


def read_only(ctx: Ctx) -> None:
    ctx.report.mkdir(parents=True)
    real = os.access
    ctx.monkeypatch.setattr(
        os, "access", lambda p, m, **k: False if Path(p) == ctx.report else real(p, m, **k)
    )


def lock_held(ctx: Ctx) -> None:
    """Another process holds the hw's lock (as a running samrep would)."""
    ctx.data.mkdir(parents=True)
    code = (
        "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); "
        "l.acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(ctx.data / ".samrep.lock")], stdout=subprocess.PIPE
    )
    ctx.stop.append(proc)
    assert proc.stdout.readline().strip() == b"held"
    ctx.monkeypatch.setenv("SAMREP_LOCK_TIMEOUT", "0.3")


def ground_truth_fails(ctx: Ctx) -> None:
    """In `report`, the ground-truth notebook fails (as a dead kernel or a bad model would)."""
    from samrep import pipeline

    ran = []

    def execute(name, params, parameters):
        ran.append(name)
        raise SamrepError(f"notebook {name}: injected failure")

    ctx.monkeypatch.setattr(pipeline, "execute_notebook", execute)
    ctx.ran = ran


def nothing_published(ctx: Ctx) -> None:
    assert ctx.ran == ["01_ground_truth"]
    assert not (ctx.report / "index.html").exists()


def no_file(rel: str) -> Callable[[Ctx], None]:
    def check(ctx: Ctx) -> None:
        assert not (ctx.data / rel).exists() and not (ctx.report / rel).exists()

    return check


def bad_image(data: bytes, point=(5, 5)) -> tuple:
    def setup(ctx: Ctx) -> None:
        ctx.data.mkdir(parents=True)
        (ctx.data / "img.png").write_bytes(data)

    def change(doc: dict) -> None:
        doc["data"].update(image=f"data/pytest-{doc['hw']}/img.png", point=list(point))

    return setup, change


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def local_weights(ctx: Ctx) -> None:
    (ctx.data / "w").mkdir(parents=True)
    (ctx.data / "w" / "config.json").write_text("{not json")


BENCH = ["bench", "--backend", "torch", "--precision", "fp32"]
YAML = tiny("X")  # a valid document, for the raw-text cases
_undecodable, _undecodable_change = bad_image(b"\x89PNG\r\n\x1a\n not really a png")
_missing_image = bad_image(b"")[1]
_small, _small_change = bad_image(_png(64, 48), point=(100, 10))

CASES = [
    # 1. decoding and shape of params
    Case(
        "c1-not-utf8",
        1,
        ["groundtruth"],
        ("c1-not-utf8.yaml: not UTF-8",),
        text=b"hw: X\n\xff\xfe\n",
    ),
    Case(
        "c1-alias-bomb",
        1,
        ["evaluate"],
        ("aliases are not allowed",),
        text="a: &a [1, 1]\nb: &b [*a, *a]\nc: [*b, *b]\n",
    ),
    Case(
        "c1-deep-nesting",
        1,
        ["summary"],
        ("nesting deeper than",),
        text="a: " + "[" * 200 + "]" * 200,
    ),
    Case(
        "c1-duplicate-key", 1, ["export"], ("line", "duplicate key 'device'"), text="device: cpu\n"
    ),
    Case("c1-top-level-list", 1, ["build"], ("expected a mapping",), text="- hw: X\n"),
    Case(
        "c1-empty-file",
        1,
        ["bench", "--backend", "torch", "--precision", "fp32", "--bs", "1"],
        ("expected a mapping",),
        text="",
    ),
    Case(
        "c1-5000-digit-int",
        1,
        ["steps"],
        ("malformed YAML",),
        text="data: {warmup: " + "9" * 5000 + "}\n",
    ),
    Case(
        "c1-python-tag",
        1,
        ["report"],
        ("malformed YAML", "tag"),
        text="hw: !!python/object:os.system x\n",
    ),
    Case("c1-too-large", 1, ["groundtruth"], ("larger than",), text="# " + "x" * (1 << 20) + "\n"),
    Case("c1-unknown-key", 1, ["evaluate"], ("bogus: unknown key",), change=put("bogus", 1)),
    Case(
        "c1-bool-as-int",
        1,
        ["evaluate"],
        ("runs[0].bs: must be an integer",),
        change=put("runs.0.bs", True),
    ),
    Case(
        "c1-options-list",
        1,
        ["evaluate"],
        ("runs[0].options: must be a mapping",),
        change=put("runs.0.options", [1]),
    ),
    # 2. numbers that pass the type check but not sense
    Case(
        "c2-peak-inf",
        2,
        ["evaluate"],
        ("peaks.fp32.flops: must be a finite number",),
        change=put("peaks.fp32.flops", float("inf")),
    ),
    Case(
        "c2-peak-zero",
        2,
        BENCH + ["--bs", "1"],
        ("peaks.fp32.flops: must be > 0",),
        change=put("peaks.fp32.flops", 0),
    ),
    Case(
        "c2-peak-nan",
        2,
        ["steps"],
        ("peaks.bf16.flops: must be a finite number",),
        change=put("peaks.bf16.flops", float("nan")),
    ),
    Case(
        "c2-sample-period-zero",
        2,
        ["evaluate"],
        ("memory_sample_ms: must be >= 0.1",),
        change=put("memory_sample_ms", 0),
    ),
    Case(
        "c2-sample-period-negative",
        2,
        ["report"],
        ("memory_sample_ms",),
        change=put("memory_sample_ms", -5.0),
    ),
    Case(
        "c2-seed-negative",
        2,
        ["groundtruth"],
        ("model.seed: must be >= 0",),
        change=put("model.seed", -1),
    ),
    Case(
        "c2-seed-too-large",
        2,
        ["export"],
        ("model.seed: must be <= 4294967295",),
        change=put("model.seed", 2**40),
    ),
    Case(
        "c2-warmup-billions",
        2,
        ["build"],
        ("data.warmup: must be <= 10000",),
        change=put("data.warmup", 10**9),
    ),
    Case(
        "c2-datasize-zero",
        2,
        ["summary"],
        ("data.datasize: must be >= 1",),
        change=put("data.datasize", 0),
    ),
    Case(
        "c2-min-seconds-inf",
        2,
        ["evaluate"],
        ("data.min_seconds: must be a finite number",),
        change=put("data.min_seconds", float("inf")),
    ),
    Case(
        "c2-world-size-zero",
        2,
        ["evaluate"],
        ("world_size: must be >= 1",),
        change=put("world_size", 0),
    ),
    Case(
        "c2-bs-over-datasize",
        2,
        ["groundtruth"],
        ("runs[0].bs: 8 is larger than data.datasize 4",),
        change=put("runs.0.bs", 8),
    ),
    # 3. paths
    Case("c3-hw-path", 3, ["evaluate", "--hw", "../params/tiny"], ("--hw '../params/tiny'",)),
    Case("c3-hw-absolute", 3, ["groundtruth", "--hw", "/etc/passwd"], ("--hw '/etc/passwd'",)),
    Case(
        "c3-hw-unknown",
        3,
        ["summary", "--hw", "no-such-hw"],
        ("no-such-hw.yaml: no such params file",),
    ),
    Case(
        "c3-data-dir-outside",
        3,
        ["groundtruth"],
        ("data.data_dir: '/tmp' is outside the repository",),
        change=put("data.data_dir", "/tmp"),
    ),
    Case(
        "c3-report-dir-venv",
        3,
        ["report"],
        ("report_dir: '.venv/r' is inside '.venv/'",),
        change=put("report_dir", ".venv/r"),
    ),
    Case(
        "c3-report-dir-file",
        3,
        ["evaluate"],
        ("report_dir: 'README.md' is a file",),
        change=put("report_dir", "README.md"),
    ),
    Case(
        "c3-report-dir-root",
        3,
        ["summary"],
        ("report_dir: 'reports/..' is the repository root",),
        change=put("report_dir", "reports/.."),
    ),
    Case(
        "c3-image-outside",
        3,
        ["groundtruth"],
        ("data.image: '/etc/hostname' is outside data.data_dir",),
        change=lambda d: d["data"].update(image="/etc/hostname", point=[1, 1]),
    ),
    Case(
        "c3-weights-outside",
        3,
        ["export"],
        ("model.weights: '/etc' is outside data.data_dir",),
        change=put("model.weights", "/etc"),
    ),
    Case(
        "c3-results-link-outside",
        3,
        ["evaluate"],
        ("results: a symbolic link to",),
        setup=link_outside("results", "report"),
        check=nothing_outside,
    ),
    Case(
        "c3-weights-link-outside",
        3,
        ["groundtruth"],
        ("weights: a symbolic link to",),
        setup=link_outside("weights"),
        check=nothing_outside,
    ),
    Case(
        "c3-engines-link-outside",
        3,
        ["build"],
        ("engines: a symbolic link to",),
        setup=link_outside("engines"),
        check=nothing_outside,
    ),
    Case(
        "c3-bench-link-outside",
        3,
        BENCH + ["--bs", "1"],
        ("bench: a symbolic link to",),
        setup=link_outside("bench", "report"),
        check=nothing_outside,
    ),
    # 4. corrupt caches (a damaged ground truth; the user's own weights folder)
    Case(
        "c4-manifest-not-object",
        4,
        ["evaluate"],
        ("manifest.json: ground-truth manifest is not a JSON object",),
        gt=True,
        setup=corrupt("manifest.json", b"[1, 2]"),
    ),
    Case(
        "c4-manifest-missing-key",
        4,
        BENCH + ["--bs", "1"],
        ("manifest.json: manifest without 'order'",),
        gt=True,
        setup=edit_manifest(lambda m: {k: v for k, v in m.items() if k != "order"}),
    ),
    Case(
        "c4-manifest-not-json",
        4,
        ["evaluate"],
        ("manifest.json: unreadable ground-truth manifest",),
        gt=True,
        setup=corrupt("manifest.json", b"{oops"),
    ),
    Case(
        "c4-inputs-unreadable",
        4,
        ["steps", "--bs", "1", "--iters", "1"],
        ("inputs.pt: unreadable ground-truth inputs",),
        gt=True,
        setup=corrupt("inputs.pt", b"garbage"),
    ),
    Case(
        "c4-inputs-wrong-content",
        4,
        ["evaluate"],
        ("malformed inputs.pt or reference.pt",),
        gt=True,
        setup=lambda ctx: torch.save([1, 2], ctx.data / "inputs.pt"),
    ),
    Case(
        "c4-mask-missing",
        4,
        ["export"],
        ("sam_gt_1.pt: ground-truth mask missing",),
        gt=True,
        change=with_onnx_row,
        setup=lambda ctx: (ctx.data / "sam_gt_1.pt").unlink(),
        check=no_file("export.json"),
    ),
    Case(
        "c4-reference-unreadable",
        4,
        ["evaluate"],
        ("reference.pt: unreadable fp32 reference",),
        gt=True,
        setup=corrupt("reference.pt", b"x"),
    ),
    Case(
        "c4-local-weights-unloadable",
        4,
        ["groundtruth"],
        ("w: cannot load the local weights",),
        setup=local_weights,
        change=lambda d: d["model"].update(weights=f"data/pytest-{d['hw']}/w"),
    ),
    # 5. interruption (Ctrl-C at a stage's hook): 130, nothing half-written, no row recorded
    Case(
        "c5-ctrl-c-before-build",
        5,
        ["evaluate"],
        ("interrupted", "not recorded"),
        gt=True,
        rc=130,
        writes=True,
        setup=ctrl_c_at(f"evaluate:build:{ROW}"),
        check=no_file(f"results/{ROW}.json"),
    ),
    Case(
        "c5-ctrl-c-ground-truth",
        5,
        ["groundtruth"],
        ("interrupted",),
        rc=130,
        writes=True,
        setup=ctrl_c_at("groundtruth:written"),
        check=no_file("manifest.json"),
    ),
    Case(
        "c5-ctrl-c-writing-record",
        5,
        ["evaluate"],
        ("interrupted",),
        gt=True,
        rc=130,
        writes=True,
        setup=ctrl_c_at(f"write:{ROW}.json"),
        check=no_file(f"results/{ROW}.json"),
    ),
    # 6. concurrency
    Case(
        "c6-lock-held",
        6,
        ["groundtruth"],
        (".samrep.lock: another samrep run holds hw", "waited 0.3 s"),
        setup=lock_held,
    ),
    Case(
        "c6-lock-timeout-word",
        6,
        ["evaluate"],
        ("SAMREP_LOCK_TIMEOUT: must be a number of seconds, got 'soon'",),
        setup=lambda ctx: ctx.monkeypatch.setenv("SAMREP_LOCK_TIMEOUT", "soon"),
    ),
    Case(
        "c6-lock-timeout-nan",
        6,
        ["steps"],
        ("SAMREP_LOCK_TIMEOUT", "'nan'"),
        setup=lambda ctx: ctx.monkeypatch.setenv("SAMREP_LOCK_TIMEOUT", "nan"),
    ),
    # 7. environment faults
    Case(
        "c7-report-dir-read-only",
        7,
        ["evaluate"],
        ("report_dir:", "is not writable"),
        setup=read_only,
    ),
    Case(
        "c7-disk-full-ground-truth",
        7,
        ["groundtruth"],
        ("manifest.json: cannot write", "(disk full)"),
        writes=True,
        setup=disk_full_at("manifest.json"),
        check=no_file("manifest.json"),
    ),
    Case(
        "c7-data-dir-is-file",
        7,
        ["build"],
        ("data.data_dir: 'README.md' is a file",),
        change=put("data.data_dir", "README.md"),
    ),
    # 8. the report chain: refused before the first notebook, or stopped by the ground truth
    Case(
        "c8-report-undecodable-image",
        8,
        ["report"],
        ("img.png: cannot decode image",),
        setup=_undecodable,
        change=_undecodable_change,
    ),
    Case(
        "c8-report-missing-image",
        8,
        ["report"],
        ("img.png: image file not found",),
        change=_missing_image,
    ),
    Case(
        "c8-report-point-outside",
        8,
        ["report"],
        ("prompt point (100.0, 10.0) is outside the 64x48 image",),
        setup=_small,
        change=_small_change,
    ),
    Case(
        "c8-report-ground-truth-fails",
        8,
        ["report"],
        ("injected failure", "nothing published"),
        setup=ground_truth_fails,
        check=nothing_published,
    ),
    Case(
        "c4-export-without-ground-truth",
        4,
        ["export"],
        ("manifest.json: ground truth missing; run `python -m samrep groundtruth",),
        change=with_onnx_row,
        check=no_file("export.json"),
    ),
    Case(
        "c4-bench-two-processes-without-ground-truth",
        4,
        BENCH + ["--bs", "1", "--world-size", "2"],
        ("manifest.json: ground truth missing",),
    ),
    # 9. options of steps, bench and the other stages
    Case(
        "c9-steps-iters-zero",
        9,
        ["steps", "--iters", "0"],
        ("--iters: must be an integer from 1 to 100000, got '0'",),
    ),
    Case("c9-steps-bs-word", 9, ["steps", "--bs", "two"], ("--bs: must be an integer",)),
    Case(
        "c9-steps-precision",
        9,
        ["steps", "--precision", "fp8"],
        ("--precision: invalid choice: 'fp8'",),
    ),
    Case(
        "c9-bench-bs-zero",
        9,
        BENCH + ["--bs", "0"],
        ("--bs: must be an integer from 1 to 4096, got '0'",),
    ),
    Case(
        "c9-bench-bs-over-datasize",
        9,
        BENCH + ["--bs", "5"],
        ("--bs: 5 is larger than data.datasize 4",),
    ),
    Case(
        "c9-bench-backend",
        9,
        ["bench", "--backend", "nope", "--precision", "fp32", "--bs", "1"],
        ("unknown backend 'nope'",),
    ),
    Case(
        "c9-bench-precision",
        9,
        ["bench", "--backend", "torch", "--precision", "fp8", "--bs", "1"],
        ("backend 'torch' has no fp8 mode",),
    ),
    Case(
        "c9-bench-world-size",
        9,
        BENCH + ["--bs", "1", "--world-size", "0"],
        ("--world-size: must be an integer from 1 to 1024",),
    ),
    Case(
        "c9-bench-repeats",
        9,
        BENCH + ["--bs", "1", "--repeats", "0"],
        ("--repeats: must be an integer from 1 to 100",),
    ),
    Case(
        "c9-bench-no-backend",
        9,
        ["bench", "--precision", "fp32", "--bs", "1"],
        ("required: --backend",),
    ),
    Case(
        "c9-evaluate-only-unknown",
        9,
        ["evaluate", "--only", "val-nope"],
        ("runs: no row 'val-nope'",),
    ),
    Case("c9-unknown-option", 9, ["build", "--fast"], ("unrecognized arguments: --fast",)),
    Case(
        "c9-backend-options",
        9,
        ["export"],
        ("runs[0].options.x: unknown key",),
        change=put("runs.0.options", {"x": 1}),
    ),
]


def test_the_table_covers_every_class_and_stage():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert {c.cls for c in CASES} == set(range(1, 10))
    assert {c.argv[0] for c in CASES} == set(STAGES)


@pytest.fixture(autouse=True)
def _unconfined():
    yield
    store.confine()  # in-process runs confine the store; the next test starts unconfined


@pytest.fixture(scope="module")
def made_ground_truth(tmp_path_factory):
    """A ground truth of the one-row tiny params, made once; cases start from a copy."""
    name = "badgt"
    params_dir = tmp_path_factory.mktemp("params")
    write_params(params_dir, name, tiny(name))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "PARAMS_DIR", params_dir)
        assert cli.main(["groundtruth", "--hw", name]) == 0
    store.confine()
    yield own_folders(name)[0]
    remove_own(name)


def _own_listing(ctx: Ctx) -> dict:
    return {
        f"{folder.name}/{k}": v
        for folder in (ctx.data, ctx.report)
        for k, v in listing(folder, skip_tests=False).items()
        if not k.endswith(".samrep.lock")
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, made_ground_truth, tmp_path, monkeypatch, capsys):
    name = case.id
    data, report = own_folders(name)
    outside = tmp_path / "outside"
    outside.mkdir()
    ctx = Ctx(name, data, report, outside, monkeypatch)
    monkeypatch.setattr(config, "PARAMS_DIR", tmp_path)
    for var in (faults.PAUSE_ENV, faults.FAIL_ENV, "SAMREP_LOCK_TIMEOUT", "SAMREP_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    remove_own(name)
    try:
        doc = tiny(name)
        if case.change:
            case.change(doc)
        text = case.text
        if isinstance(text, str) and text.startswith(("device:", "# ")):  # a duplicate / padding
            text = (
                write_params(tmp_path, "_", YAML).read_text().replace("hw: X", f"hw: {name}") + text
            )
        write_params(tmp_path, name, doc if text is None else text)
        if case.gt:
            shutil.copytree(made_ground_truth, data, symlinks=True)
        if case.setup:
            case.setup(ctx)
        before, own_before = listing(), _own_listing(ctx)
        argv = case.argv if "--hw" in case.argv else [*case.argv, "--hw", name]

        rc = cli.main(argv)

        err = capsys.readouterr().err
        lines = error_lines(err)
        assert "Traceback" not in err, err
        assert rc == case.rc, err
        assert len(lines) == 1 and lines[0].startswith("samrep: "), err
        for want in case.want:
            assert want in lines[0], lines[0]
        assert listing() == before, "the run wrote outside its own folders"
        if not case.writes:
            assert _own_listing(ctx) == own_before, "a refused run wrote into its folders"
        assert temporaries(data, report) == []
        if case.check:
            case.check(ctx)
    finally:
        for proc in ctx.stop:
            proc.kill()
            proc.wait()
        remove_own(name)
