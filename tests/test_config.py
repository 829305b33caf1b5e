"""Params as declared schemas: every bad value is one line naming the file and the key path."""

import pytest

from samrep.errors import SamrepError

RUN = {"backend": "torch", "precision": "fp32", "bs": 1, "phase": "val"}
CASES = [  # (override of params/tiny.yaml, words the one-line error must contain)
    ({"runs": [RUN | {"bs": 0}]}, "runs[0].bs: must be >= 1, got 0"),
    ({"runs": [RUN | {"bs": "two"}]}, "runs[0].bs"),
    ({"runs": [RUN | {"precision": "fp64"}]}, "runs[0].precision: must be one of"),
    ({"runs": [RUN | {"phase": "train"}]}, "runs[0].phase"),
    ({"runs": [RUN | {"colour": "red"}]}, "runs[0].colour: unknown key"),
    ({"runs": [RUN, RUN]}, "listed twice"),
    ({"runs": [RUN | {"bs": 5}]}, "larger than data.datasize"),
    ({"runs": []}, "runs"),
    ({"speed": 3}, "speed: unknown key"),
    ({"device": "tpu"}, "device: must be one of"),
    ({"peaks": {"fp32": {"flops": -1, "source": "x"}}}, "peaks.fp32.flops: must be > 0"),
    (
        {"peaks": {"fp32": {"flops": float("inf"), "source": "x"}}},
        "peaks.fp32.flops: must be a finite number",
    ),
    ({"peaks": {"fp64": {"flops": 1e12, "source": "x"}}}, "peaks.fp64"),
    ({"peaks": {"fp16": {"flops": 1e12}}}, "peaks.fp16.source: missing required key"),
    ({"memory_sample_ms": 0}, "memory_sample_ms: must be >= 0.1"),
    ({"model": {"seed": -1}}, "model.seed: must be >= 0"),
    ({"model": {"arch": "vit_z"}}, "model.arch: must be one of"),
    ({"data": {"warmup": 10**9}}, "data.warmup: must be <= 10000"),
    ({"data": {"datasize": 0}}, "data.datasize: must be >= 1"),
    ({"data": {"point": [1, 2]}}, "point: only for an image path"),
    ({"data": {"image": "data/x.png"}}, "needs its prompt point"),
    ({"world_size": 0}, "world_size"),
    ({"report_dir": "."}, "report_dir: '.' is the repository root"),
    ({"report_dir": "../elsewhere"}, "outside the repository"),
    ({"report_dir": "samrep/out"}, "inside 'samrep/'"),
    ({"report_dir": ".venv/out"}, "inside '.venv/'"),
    ({"report_dir": "README.md"}, "is a file, not a folder"),
    ({"data": {"data_dir": "/tmp"}}, "data.data_dir: '/tmp' is outside the repository"),
]


@pytest.mark.parametrize("over,words", CASES, ids=[w[:40] for _, w in CASES])
def test_a_bad_value_is_one_line_naming_file_and_key(make_params, over, words):
    with pytest.raises(SamrepError) as exc:
        make_params("bad", **over)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(make_params.folder / "bad.yaml"))
    assert words in message, message


TEXT_CASES = [
    (b"hw: bad\n\xff\xfe: 1\n", "not UTF-8 text"),
    (b"a: &x [1]\nb: *x\n", "aliases are not allowed"),
    (b"hw: bad\nhw: other\n", "duplicate key 'hw'"),
    (b"a: " + b"[" * 60 + b"]" * 60 + b"\n", "nesting deeper"),
    (b"hw: [unclosed\n", "malformed YAML"),
    (b"- just a list\n", "expected a mapping"),
]


@pytest.mark.parametrize("text,words", TEXT_CASES, ids=[w for _, w in TEXT_CASES])
def test_a_bad_file_is_one_line(make_params, text, words):
    from samrep.config import load_params

    (make_params.folder / "bad.yaml").write_bytes(text)
    with pytest.raises(SamrepError) as exc:
        load_params("bad")
    assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("hw", ["../params/tiny", "/etc/passwd", "a b", ""])
def test_hw_is_a_name_not_a_path(hw):
    from samrep.config import load_params

    with pytest.raises(SamrepError, match="a hw is a name"):
        load_params(hw)


def test_every_committed_params_file_loads():
    from samrep.config import PARAMS_DIR, load_params
    from samrep.stages import check_rows

    for path in sorted(PARAMS_DIR.glob("*.yaml")):
        check_rows(load_params(path.stem))


@pytest.mark.parametrize(
    "run,words",
    [
        (RUN | {"backend": "tensorflow"}, "runs[0].backend: unknown backend 'tensorflow'"),
        (
            RUN | {"backend": "torch", "precision": "fp8"},
            "runs[0].precision: backend 'torch' has no fp8",
        ),
        (RUN | {"backend": "inductor", "options": {"mode": "fastest"}}, "runs[0].options.mode"),
        (
            RUN | {"backend": "inductor", "options": {"colour": 1}},
            "runs[0].options.colour: unknown key",
        ),
    ],
)
def test_rows_are_checked_against_their_backend(make_params, run, words):
    from samrep.stages import check_rows

    params = make_params("rows", runs=[run])
    with pytest.raises(SamrepError) as exc:
        check_rows(params)
    assert words in str(exc.value), str(exc.value)
