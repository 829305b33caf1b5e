"""The one row function: the same record sections in one process and under torchrun."""

import json

import pytest

RUN = {"phase": "val", "backend": "torch", "precision": "fp32", "bs": 1}
SMALL = {"datasize": 2, "repeat": 1, "warmup": 1, "min_iterations": 1, "min_seconds": 0.0}


@pytest.fixture
def tiny_gt(make_params):
    """Params of one tiny torch row with its ground truth made."""
    from samrep import stages

    params = make_params("row", runs=[RUN], data=SMALL)
    stages.groundtruth(params)
    return params


def _sections(params) -> dict:
    path = params.report_path / "results" / "val-torch-fp32-bs1.json"
    return json.loads(path.read_text())


def test_one_process_and_torchrun_records_have_the_same_sections(tiny_gt, make_params):
    from samrep import stages

    (one,) = stages.evaluate(tiny_gt)
    assert one.status == "ok", one.reason
    two_params = make_params(
        "row2", runs=[RUN], world_size=2, data=SMALL | {"data_dir": tiny_gt.data.data_dir}
    )
    (two,) = stages.evaluate(two_params)
    assert two.status == "ok", two.reason
    a, b = _sections(tiny_gt), _sections(two_params)
    assert set(b) - set(a) == {"distributed"}
    assert set(a) - set(b) == set()
    for section in ("timing", "scores", "memory", "validity", "flops", "energy"):
        assert set(a[section]) <= set(b[section]), section
    assert b["validity"]["checks"] and "valid" in b["validity"]
    assert b["distributed"]["world_size"] == 2 and len(b["distributed"]["per_rank"]) == 2
    assert b["timing"]["p_core"] == pytest.approx(b["distributed"]["aggregate_p_core"])
    assert b["scores"]["acc"] == pytest.approx(1.0) and a["scores"]["acc"] == pytest.approx(1.0)
    assert a["energy"]["method"] == "not measured"  # a CPU
    assert {"p50", "p90", "p99"} <= set(a["timing"]["latency_ms"])
    assert a["scores"]["logits_rel_l2"] < 1e-5 and a["scores"]["embeddings_rel_l2"] < 1e-5
    # Each fact once: the precision is stored in the row section only.
    assert json.dumps(a).count('"precision"') == 1


def test_a_fresh_row_is_reused_and_a_failed_one_is_retried(tiny_gt, monkeypatch):
    from samrep import stages

    monkeypatch.setenv("SAMREP_TEST_FAIL_AT", "evaluate:measure:val-torch-fp32-bs1")
    (failed,) = stages.evaluate(tiny_gt)
    assert (
        failed.status == "failed"
        and failed.failed_stage == "measure"
        and "injected" in failed.reason
    )
    monkeypatch.delenv("SAMREP_TEST_FAIL_AT")
    (ok,) = stages.evaluate(tiny_gt)
    assert ok.status == "ok"
    monkeypatch.setenv("SAMREP_TEST_FAIL_AT", "evaluate:build:*")  # reused: never rebuilt
    (again,) = stages.evaluate(tiny_gt)
    assert again.status == "ok" and again.timing.p_core == ok.timing.p_core
