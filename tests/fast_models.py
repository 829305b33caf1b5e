"""Small SAM models whose outputs depend on every part of the image encoder (for tests).

`samrep.model.synthetic_init_` keeps activations sane, but on `tiny_config()` (32 wide) its
std-0.02 matrices give mask logits of ~1e-4 that barely see the encoder: zeroing every
rel-pos table moves them by ~3e-7. An equivalence test on that would pass for almost any
encoder. `sensitive_tiny_sam` re-draws the matrices with std 1/sqrt(fan_in) and the rel-pos
tables with std 0.5: logits are O(1) and zeroing the rel-pos tables flips ~6% of mask pixels.
"""

import math

import torch
from transformers import SamConfig, SamModel

from samrep.model import synthetic_init_, tiny_config


def sensitive_init_(model: torch.nn.Module, seed: int, rel_pos_std: float = 0.5) -> torch.nn.Module:
    """In place: matrices (ndim >= 2, not norms or embedding tables) ~ N(0, 1/fan_in),
    rel-pos tables ~ N(0, rel_pos_std^2); everything else as `synthetic_init_` left it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            path, _, leaf = name.rpartition(".")
            owner = path.rpartition(".")[2]
            if leaf.startswith("rel_pos"):
                param.copy_(torch.randn(param.shape, generator=gen) * rel_pos_std)
            elif leaf == "weight" and param.ndim >= 2 and "norm" not in owner:
                if isinstance(model.get_submodule(path), torch.nn.Embedding):
                    continue
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
    return model


def sensitive_tiny_sam(
    seed: int = 0, attn_implementation: str = "sdpa", config: SamConfig | None = None
) -> SamModel:
    """`tiny_config()` SAM (1 windowed + 1 global block), fp32, eval, sensitive weights."""
    config = config or tiny_config()
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = synthetic_init_(SamModel(config), seed)
    return sensitive_init_(model, seed + 1).eval()


def sample_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """pixel_values (batch, 3, 1024, 1024) ~ N(0, 1) and one point per image (batch, 1, 1, 2)
    uniform in the 1024 frame."""
    gen = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, 1024, 1024, generator=gen)
    points = torch.rand(batch, 1, 1, 2, generator=gen) * 1024
    return pixel_values, points
