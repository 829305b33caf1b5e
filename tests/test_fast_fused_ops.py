"""samrep.fast.fused_ops and triton_relpos: the Triton kernels against their torch references.

The kernels run on the CPU only under TRITON_INTERPRET=1 (read when a kernel is defined), so
they run in one child process. The references (the ops' CPU kernels) are checked against
transformers in tests/test_fast_fused.py. The interpreter casts fp32 -> bf16 / e4m3 by
truncation for some values (not round-to-nearest as the GPU does), so the checks use fp32
activations, and the fp8 kernels store their scaled values in fp32 (`q_dtype`) for the check.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from samrep.fast import fused_ops
from samrep.fast.fp8 import FP8_DTYPE, quantize
from samrep.fast.triton_attention import available

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# fp32 in the interpreter: measured max |kernel - reference| ~5e-7 (norm), 1.3e-5 (rel terms,
# a dot of 80 products of N(0,1) values, |values| ~30, summed in another order).
NORM_ATOL = 1e-5
REL_TERMS_ATOL = 1e-4


def test_references_match_torch():
    x, d = torch.randn(2, 3, 40), torch.randn(2, 3, 40)
    db, w, b = torch.randn(40), torch.randn(40), torch.randn(40)
    s, y, scale = fused_ops.add_layernorm(x, d, db, w, b, 1e-6, False)
    torch.testing.assert_close(s, x + d + db)
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x + d + db, (40,), w, b, 1e-6))
    assert scale.numel() == 0
    s, y8, scale = fused_ops.add_layernorm(x, None, None, w, b, 1e-6, True)
    assert s.numel() == 0 and y8.dtype == FP8_DTYPE and scale.shape == (6, 1)
    want8, want_scale = quantize(
        torch.nn.functional.layer_norm(x, (40,), w, b, 1e-6).reshape(6, 40)
    )
    assert torch.equal(y8.reshape(6, 40).float(), want8.float())
    torch.testing.assert_close(scale, want_scale)
    h, hb = torch.randn(5, 64), torch.randn(64)
    for approximate in ("none", "tanh"):
        h8, hs = fused_ops.gelu_quant(h, hb, approximate)
        want = torch.nn.functional.gelu(h + hb, approximate=approximate)
        assert ((h8.float() * hs - want).abs() <= 2.0**-4 * want.abs() + hs * 2.0**-9).all()


@pytest.mark.skipif(not available(), reason="triton is not installed (it runs the kernels)")
def test_kernels_match_references_in_interpreter():
    script = textwrap.dedent(
        f"""
        import torch
        from samrep.fast import fused_ops as fo, reference as ref, triton_relpos as tr
        torch.manual_seed(0)
        checks = 0
        for rows, c in ((6, 40), (3, 1280)):
            x, d = torch.randn(rows, c), torch.randn(rows, c)
            db, w, b = torch.randn(c), torch.randn(c), torch.randn(c)
            for dd, ddb in ((None, None), (d, None), (d, db)):
                for fp8 in (False, True):
                    s, y, sc = fo.add_layernorm_triton(x, dd, ddb, w, b, 1e-6, fp8, torch.float32)
                    rs, ry, rsc = fo.add_layernorm(x, dd, ddb, w, b, 1e-6, fp8)
                    if dd is not None:
                        assert (s - rs).abs().max() < {NORM_ATOL}
                    if fp8:  # scaled values in fp32: e4m3 of them is the reference's y8
                        assert (sc - rsc).abs().max() <= 1e-6 * rsc.abs().max()
                        assert (y.abs().amax(-1) - 448).abs().max() < 1e-3
                        ry = ry.float()
                        y = y.to(torch.float8_e4m3fn).float()
                        assert (y != ry).float().mean() < 0.01  # rounding-boundary ties only
                    else:
                        assert (y - ry).abs().max() < {NORM_ATOL}
                    checks += 1
            h, hb = torch.randn(rows, 4 * c), torch.randn(4 * c)
            for approx in ("none", "tanh"):
                y, sc = fo.gelu_quant_triton(h, hb, approx, torch.float32)
                want = torch.nn.functional.gelu(h + hb, approximate=approx)
                assert (y * sc - want).abs().max() < 1e-5, (y * sc - want).abs().max()
                assert ((y.abs().amax(-1) - 448).abs() < 1e-3).all()
                checks += 1
        for b, s, g, heads, hd in ((2, 20, 7, 2, 80), (1, 16, 16, 3, 32), (3, 9, 4, 1, 16)):
            qkv = torch.randn(b, s, s, 3 * heads * hd)
            gh = ref.grid_tables(torch.randn(g, g, hd), s)
            gw = ref.grid_tables(torch.randn(g, g, hd), s)
            for got, want in zip(tr.rel_terms_triton(qkv, gh, gw, heads), tr.rel_terms(qkv, gh, gw, heads)):
                assert got.shape == want.shape
                assert (got - want).abs().max() < {REL_TERMS_ATOL}
            checks += 1
        print(checks)
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=REPO)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "19"
