import numpy as np

from samrep.memory import MemoryMonitor


def test_rss_monitor_sees_an_allocation_inside_the_block():
    with MemoryMonitor("cpu", interval_ms=1.0) as mon:
        block = np.ones(400 * 1024**2 // 8)  # 400 MiB, touched
        block.sum()
        del block
    r = mon.report
    assert r.method == "rss" and r.samples >= 2
    assert r.delta_gib > 0.3  # the 0.39 GiB array was seen at its peak, then freed
    assert r.peak_gib >= r.baseline_gib and r.total_gib > r.peak_gib
    assert r.framework_peak_gib is None
