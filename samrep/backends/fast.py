"""`fast`: the same SAM weights and math through a faster image encoder (samrep.fast). On CUDA
with Triton (16-bit): the rel-pos attention kernel on the unpadded grid and fused blocks (fp8:
the producers quantise), replayed from a CUDA graph; elsewhere the bias folded into q/k for
flash SDPA. Options: `FastOptions`. Prompt encoder and mask decoder: HF's, fp32 as everywhere.
"""

import copy
from typing import Literal

import pydantic
import torch
from pydantic import ConfigDict, Field

from samrep.backends.base import Backend, BackendUnavailable


class FastOptions(pydantic.BaseModel):
    """The fast backend's switches; None = the default for the device and precision. Defaults
    are the best measured (reports/h200/NOTES.md, speed round 3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cuda_graph: bool | None = Field(None, description="replay the encoder from a CUDA graph")
    attention: Literal["kernel", "folded"] | None = Field(
        None, description="'kernel' (Triton; CUDA default) or 'folded' (flash SDPA)"
    )
    fp32_residual: bool | None = Field(None, description="fp32 residual + norms (fp16 default)")
    fused_ln: bool | None = Field(
        None, description="fused blocks: add + LayerNorm in one Triton pass, fp8 quantised by "
        "the producers (default with attention 'kernel' in bf16/fp8; fp8 needs it)",
    )  # fmt: skip
    gelu_epilogue: bool = Field(
        True, description="tanh GELU in fc1's cuBLASLt epilogue (fp8: in the quantising kernel) "
        "instead of erf; acc held on the H200 (0.9932 vs 0.9930)",
    )  # fmt: skip
    fp8_fast_accum: bool = Field(True, description="fp8 GEMMs with fast accumulation")
    fp8_linears: tuple[Literal["qkv", "fc1", "fc2"], ...] = Field(
        ("qkv", "fc1", "fc2"), description="fp8: which linears run in e4m3"
    )


def default_attention(device: torch.device, precision: str) -> str:
    """'kernel' where the Triton kernel runs (CUDA, triton importable, 16-bit inputs: its
    tl.dot would round fp32 inputs to TF32), else 'folded'."""
    from samrep.fast import triton_attention

    usable = device.type == "cuda" and triton_attention.available() and precision != "fp32"
    return "kernel" if usable else "folded"


def decoder_copy(model):
    """An fp32 copy of `model` without its image encoder (prompt encoder + mask decoder only):
    the encoder is None in deepcopy's memo, so only the 3.6 GFLOP decoder side is copied."""
    return copy.deepcopy(model, {id(model.vision_encoder): None})


class FastBackend(Backend):
    name = "fast"
    precisions = ("fp32", "fp16", "bf16", "fp8")
    Options = FastOptions  # validated into self.opts by Backend.__init__

    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        super().check_available(device, precision)
        if precision == "fp8":
            from samrep.fast.fp8 import check_fp8_supported

            try:
                check_fp8_supported(device)
            except RuntimeError as exc:
                raise BackendUnavailable(str(exc)) from None

    def build(self, model, inputs) -> None:
        from samrep.fast import DTYPES, build_fast_sam
        from samrep.fast.steps import cuda_graph

        cuda, opts, fp8 = self.device.type == "cuda", self.opts, self.precision == "fp8"
        if cuda:  # fp32 means fp32: TF32 off, as in the torch backend
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        self.dtype = DTYPES["bf16" if fp8 else self.precision]  # fp8: bf16 between the GEMMs
        source = copy.deepcopy(model) if self.precision == "fp32" else model  # fp32 shares weights
        self.attention = opts.attention or default_attention(self.device, self.precision)
        if self.attention == "kernel" and (not cuda or self.precision == "fp32"):
            raise BackendUnavailable("fast: attention 'kernel' needs a CUDA GPU and 16-bit inputs")
        residual, fused = opts.fp32_residual, opts.fused_ln
        if fused is None:  # fp16 keeps its fp32 residual, which the fused blocks do not have
            fused = self.attention == "kernel" and self.precision != "fp16" and not residual
        if fp8 and not fused:
            raise BackendUnavailable("fast fp8 needs the fused blocks (attention 'kernel')")
        fast = build_fast_sam(
            source,
            precision="bf16" if fp8 else self.precision,
            attention=self.attention,
            fp8_linear=opts.fp8_linears if fp8 else False,
            fp32_residual=residual,
            gelu="tanh" if opts.gelu_epilogue else "exact",
            fused=fused,
            fp8_fast_accum=opts.fp8_fast_accum,
        )
        self.encoder = fast.vision_encoder.to(self.device)
        self.decoder = decoder_copy(model).to(self.device).eval()
        bs = self.bs
        pv = inputs.pixel_values.expand(bs, -1, -1, -1).contiguous().to(self.device)
        pts = inputs.input_points.expand(bs, -1, -1, -1).contiguous().to(self.device)
        if cuda and opts.cuda_graph is not False:  # replayed at the row's shape, others eager
            eager, shape = self.encoder, pv.shape
            with torch.inference_mode():
                replay = cuda_graph(eager, pv.to(self.dtype))
            self.encoder = lambda x: replay(x) if x.shape == shape else eager(x)
        self.math_mode = self._math_mode(fused)
        # Capture now, at the row's batch size, so build time holds it.
        for _ in range(2):
            self.run(pv, pts)

    def _math_mode(self, fused: bool) -> str:
        """The choices that ran, e.g. 'bf16 encoder; attn kernel; fused add+ln; gelu erf'."""
        o, fp8 = self.opts, self.precision == "fp8"
        parts = [f"{self.precision} encoder" + (" (TF32 off)" if self.precision == "fp32" else "")]
        if fp8:
            accum = "fast accum" if o.fp8_fast_accum else "fp32 accum"
            linears = "/".join(o.fp8_linears)
            parts = [f"fp8 e4m3 {linears}, rest bf16; rowwise-dynamic, producers quantise, {accum}"]
        parts += [f"attn {self.attention}"] + (["fused add+ln"] if fused else [])
        tanh = "gelu tanh" + ("" if fp8 else "-epilogue")  # fp8 fc1: no epilogue
        parts += [tanh if o.gelu_epilogue else "gelu erf", "eager"]
        return "; ".join(parts) + "; fp32 decoder"

    @torch.inference_mode()
    def run(self, pixel_values, input_points):
        image_embeddings = self.encoder(pixel_values.to(self.dtype)).float()
        out = self.decoder(
            image_embeddings=image_embeddings, input_points=input_points, multimask_output=True
        )
        return out.pred_masks[:, 0].float(), out.iou_scores[:, 0].float()

    def versions(self) -> dict:
        import transformers

        return {"torch": torch.__version__, "transformers": transformers.__version__}
