import pytest
import torch

from samrep.data import ModelInputs, RepeatedDataset
from samrep.timing import measure


class CountingBackend:
    """A minimal backend: counts calls; outputs of the right shapes."""

    device = torch.device("cpu")
    warm_batches = 0

    def __init__(self):
        self.calls = 0
        self.syncs = 0

    def synchronize(self):
        self.syncs += 1

    def run(self, pixel_values, input_points):
        self.calls += 1
        b = pixel_values.shape[0]
        return torch.zeros(b, 3, 256, 256), torch.zeros(b, 3)


def _inputs():
    return ModelInputs(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 1, 2), (8, 8), (8, 8))


@pytest.mark.parametrize(
    "built, warmup, runs, recorded", [(3, 4, 1, 4), (5, 2, 0, 5), (0, 0, 0, 0)]
)
def test_batches_the_build_ran_count_as_warm_up(built, warmup, runs, recorded):
    """A backend whose build and engine check ran `built` batches of the row's shape runs only the
    warm-up batches still missing; the record counts them all."""
    backend = CountingBackend()
    backend.warm_batches = built
    dataset = RepeatedDataset(_inputs(), datasize=3, bs=3)
    timing = measure(backend, dataset, repeat=1, warmup=warmup, after_batch=lambda m, s: None)
    assert backend.calls == 1 + runs and timing.warmup_batches == recorded


def test_measure_counts_images_and_excludes_warmup():
    backend = CountingBackend()
    dataset = RepeatedDataset(_inputs(), datasize=10, bs=3)  # 3 batches, drop_last
    seen = []
    timing = measure(
        backend, dataset, repeat=2, warmup=4, after_batch=lambda m, s: seen.append(m.shape)
    )
    assert timing.batches == 6 and timing.images == 18
    assert backend.calls == 6 + 4  # warm-up batches ran but are not counted
    assert len(seen) == 6 and seen[0] == (3, 3, 256, 256)
    assert timing.p_core == timing.images / timing.core_s
    assert timing.whole_s >= timing.core_s > 0
    d = timing.to_dict()
    assert d["p_whole"] == timing.p_whole and len(timing.batch_ms) == 6
    lat = d["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
