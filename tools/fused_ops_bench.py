"""Time samrep.fast's fused ops against their unfused forms at ViT-H shapes (GPU only).

Usage: python tools/profile_fast.py --ops --bs 16 (or python -m tools.fused_ops_bench).
Tokens M = bs * 4096, C = 1280, MLP width 5120, bf16; ms per call (do_bench median, random
data). Also checks each fused op against its torch reference on the same GPU data.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn
from triton.testing import do_bench

from samrep.fast import fp8, fused_ops
from samrep.fast.fused import linear_gelu_tanh


def _ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def _linear(k: int, n: int) -> nn.Linear:
    lin = nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.normal_(0, k**-0.5)
        lin.bias.normal_(0, 0.1)
    return lin


def main(bs: int = 16) -> None:
    m, c, hid = bs * 4096, 1280, 5120
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(m, c, device=dev, dtype=bf)
    d = torch.randn(m, c, device=dev, dtype=bf)
    w = torch.randn(c, device=dev, dtype=bf)
    b = torch.randn(c, device=dev, dtype=bf)
    rows = []

    def add_ln_ref(x, d):
        s = x + d
        return s, F.layer_norm(s, (c,), w, b, 1e-6)

    compiled = torch.compile(add_ln_ref)
    for fp8_out in (False, True):
        s, y, sc = fused_ops.add_layernorm(x, d, None, w, b, 1e-6, fp8_out)
        rs, ry = add_ln_ref(x, d)
        yv = y.float() * sc if fp8_out else y.float()
        err = ((yv - ry.float()).norm() / ry.float().norm()).item()
        t = _ms(lambda fp8_out=fp8_out: fused_ops.add_layernorm(x, d, None, w, b, 1e-6, fp8_out))
        rows.append((f"add+layernorm triton, out {'fp8' if fp8_out else 'bf16'}", t, err))
    rows.append(("add+layernorm inductor (torch.compile), bf16", _ms(lambda: compiled(x, d)), 0))

    def ln_quant(x, d):
        s, y = add_ln_ref(x, d)
        return s, fp8.quantize(y)

    cq = torch.compile(ln_quant)
    rows.append(("add+layernorm + rowwise quantise, inductor", _ms(lambda: cq(x, d)), 0))

    h = torch.randn(m, hid, device=dev, dtype=bf)
    hb = torch.randn(hid, device=dev, dtype=bf) * 0.1
    for approx in ("none", "tanh"):
        y8, sc = fused_ops.gelu_quant(h, hb, approx)
        ref = F.gelu((h + hb).float(), approximate=approx)
        err = ((y8.float() * sc - ref).norm() / ref.norm()).item()
        rows.append(
            (
                f"gelu({approx}) + quantise triton",
                _ms(lambda a=approx: fused_ops.gelu_quant(h, hb, a)),
                err,
            )
        )
    rows.append(("gelu erf eager (no quantise)", _ms(lambda: F.gelu(h)), 0))

    fc1, fc2, qkv = _linear(c, hid), _linear(hid, c), _linear(c, 3 * c)
    yb = torch.randn(m, c, device=dev, dtype=bf)
    ref = F.gelu(fc1(yb).float(), approximate="tanh")
    got = linear_gelu_tanh(yb, fc1).float()
    rows.append(("fc1 + gelu erf (linear, gelu)", _ms(lambda: F.gelu(fc1(yb))), 0))
    rows.append(("fc1 + gelu tanh epilogue", _ms(lambda: linear_gelu_tanh(yb, fc1)),
                 ((got - ref).norm() / ref.norm()).item()))  # fmt: skip
    for name, lin, inp in (("qkv", qkv, yb), ("fc1", fc1, yb), ("fc2", fc2, h)):
        rows.append((f"{name} bf16 linear", _ms(lambda lin=lin, inp=inp: lin(inp)), 0))
        l8 = fp8.Fp8Linear(lin)
        x8, xs = fp8.quantize(inp)
        for bias in (False, True):
            out = fp8.scaled_mm(x8, xs, l8, bias=bias)
            want = F.linear(inp.float(), lin.weight.float(), lin.bias.float() if bias else None)
            err = ((out.float() - want).norm() / want.norm()).item()
            t = _ms(lambda l8=l8, x8=x8, xs=xs, bias=bias: fp8.scaled_mm(x8, xs, l8, bias=bias))
            rows.append((f"{name} fp8 scaled_mm bias={bias} (in mm: {fp8._BIAS_IN_MM[0]})", t, err))
        t = _ms(lambda l8=l8, x8=x8, xs=xs: torch._scaled_mm(
            x8, l8.weight_fp8.t(), scale_a=xs, scale_b=l8.weight_scale,
            out_dtype=torch.bfloat16, use_fast_accum=True))  # fmt: skip
        rows.append((f"{name} fp8 scaled_mm fast accum, no bias", t, 0))
    print(f"# fused ops, bs {bs} (M = {m} tokens), bf16 in, ms (median); rel err vs torch ref")
    for name, t, err in rows:
        print(f"  {name:60s} {t:8.3f} ms   rel err {err:.2e}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 16)
