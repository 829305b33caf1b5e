"""SAM's rel-pos tables without per-call host work: HF's `get_rel_pos` builds its index with
a CPU `torch.arange` in every layer of every forward (a host-to-device copy). `rel_pos_tables`
gathers them once; `cache_hf_rel_pos_index_` patches an HF model to cache the index on the
table's device (step 1 of `steps.py`)."""

from __future__ import annotations

import types

import torch
from transformers.models.sam.modeling_sam import SamVisionAttention


def rel_pos_tables(attn: SamVisionAttention, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(table_h, table_w), each (size, size, head_dim) like `attn.rel_pos_h`: table_h[i, j]
    embeds the row offset i - j, computed by HF's own `get_rel_pos` (its resize kept)."""
    with torch.no_grad():
        table_h = SamVisionAttention.get_rel_pos(attn, size, size, attn.rel_pos_h)
        table_w = SamVisionAttention.get_rel_pos(attn, size, size, attn.rel_pos_w)
    return table_h.detach().clone(), table_w.detach().clone()


def _get_rel_pos_cached_index(
    self: SamVisionAttention, q_size: int, k_size: int, rel_pos: torch.Tensor
) -> torch.Tensor:
    """Drop-in for `SamVisionAttention.get_rel_pos` with a device-resident, cached index.

    Only the case SAM uses (square grid, table of length 2*size - 1, where HF's linear
    interpolation to the same length is the identity) is cached; anything else falls back to
    the HF method, so the result is the same tensor values in every case.
    """
    if q_size != k_size or rel_pos.shape[0] != 2 * q_size - 1:
        return SamVisionAttention.get_rel_pos(self, q_size, k_size, rel_pos)
    cache = self.__dict__.setdefault("_samrep_rel_pos_index", {})
    key = (q_size, rel_pos.device)
    index = cache.get(key)
    if index is None:
        coords = torch.arange(q_size, device=rel_pos.device)
        # offset q - k shifted to [0, 2*size - 2], the row of the table (as HF computes it)
        index = coords[:, None] - coords[None, :] + (q_size - 1)
        cache[key] = index
    return rel_pos[index]


def cache_hf_rel_pos_index_(model: torch.nn.Module) -> int:
    """Patch every `SamVisionAttention` in `model` to gather rel-pos tables with a cached index.

    In place (instance attributes; the class is untouched). Returns how many modules were
    patched. The outputs are bitwise the same as unpatched: same gathered values.
    """
    patched = 0
    for module in model.modules():
        if isinstance(module, SamVisionAttention) and module.use_rel_pos:
            module.get_rel_pos = types.MethodType(_get_rel_pos_cached_index, module)
            patched += 1
    return patched
