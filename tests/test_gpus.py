"""samrep.gpus: NVML names to dense peaks, and the HW=auto params they make."""

import pytest

from samrep import gpus


@pytest.mark.parametrize(
    "name, label, peaks",
    [
        ("NVIDIA H200", "H200 SXM 141 GB", {"fp32": 67, "bf16": 989.5, "fp8": 1979}),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80 GB", {"tf32": 156, "fp16": 312, "fp8": None}),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM4 40 GB", {"fp32": 19.5, "bf16": 312}),
        ("NVIDIA H100 80GB HBM3", "H100 SXM 80 GB", {"tf32": 494.5, "fp16": 989.5}),
        ("NVIDIA H100 PCIe", "H100 PCIe 80 GB", {"bf16": 756.5, "fp8": 1513}),
        ("NVIDIA L4", "L4 24 GB", {"fp32": 30.3, "bf16": 121, "fp8": 242.5}),
        ("NVIDIA L40S", "L40S 48 GB", {"bf16": 362.05, "fp8": 733}),
        ("NVIDIA A10", "A10 24 GB", {"fp16": 125, "fp8": None}),  # not the A100
        ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090 24 GB", {"bf16": 165.2}),
        ("Tesla T4", "T4 16 GB", {"fp16": 65, "bf16": None}),
    ],
)
def test_known_gpus_get_their_datasheet_peaks(name, label, peaks):
    gpu = gpus.detect(name)
    assert gpu is not None and gpu["label"] == label
    table = gpus.peaks(gpu)
    for precision, tflops in peaks.items():
        if tflops is None:
            assert precision not in table
        else:
            assert table[precision]["flops"] == pytest.approx(tflops * 1e12)
            assert (
                "datasheet" in table[precision]["source"]
                or "whitepaper" in table[precision]["source"]
            )


def test_every_entry_has_a_source_and_known_precisions():
    """gpus.yaml, shipped as package data: each entry with fp32, its datasheet and its memory."""
    assert len(gpus.GPUS) >= 20
    for gpu in gpus.GPUS:
        assert set(gpu) == {"name", "label", "memory_gb", "tflops", "source"}, gpu
        assert "fp32" in gpu["tflops"] and set(gpu["tflops"]) <= set(gpus.PRECISIONS), gpu
        assert all(t > 0 for t in gpu["tflops"].values()) and gpu["memory_gb"] > 0, gpu
        assert "datasheet" in gpu["source"] or "whitepaper" in gpu["source"], gpu


def test_unknown_gpu_runs_without_peaks():
    assert gpus.detect("NVIDIA Foo 9000") is None
    params = gpus.auto_params(("NVIDIA Foo 9000", 80.0))
    assert params["peaks"] == {} and "peak unknown" in params["description"]
    assert {r["backend"] for r in params["runs"]} >= {"torch", "fast"}


def test_auto_rows_fit_the_memory():
    small = {
        (r["backend"], r["precision"]): r["bs"]
        for r in gpus.auto_params(("NVIDIA L4", 22.0))["runs"]
    }
    big = {
        (r["backend"], r["precision"]): r["bs"]
        for r in gpus.auto_params(("NVIDIA H200", 139.8))["runs"]
    }
    assert small[("torch", "fp32")] < big[("torch", "fp32")] == 8
    for key, bs in small.items():
        row = next(r for r in gpus.AUTO_ROWS if (r["backend"], r["precision"]) == key)
        assert 2 + row["gib_per_image"] * bs <= 0.8 * 22.0 and bs <= row["largest_bs"]
    t4 = gpus.auto_params(("Tesla T4", 15.0))["runs"]
    assert all(r["precision"] in ("fp32", "fp16") for r in t4)  # no bf16, fp8 or tf32 on a T4


def test_no_gpu_means_the_cpu_params(monkeypatch):
    monkeypatch.setattr(gpus, "nvml_gpu", lambda: None)
    assert gpus.auto_params()["hw"] == "cpu" and gpus.detect() is None


def test_auto_without_a_gpu_is_the_cpu_report():
    from samrep.gpus import auto_hw, nvml_gpu

    assert nvml_gpu() is None  # this machine has no NVIDIA GPU
    assert auto_hw() == "cpu"
