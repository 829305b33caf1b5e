"""Mask post-processing and the case's accuracy: pixel agreement (`acc`) and mask IoU.

`acc` is the spec's formula, `(pred_mask == gt_mask).sum() / numel` at the original image size,
averaged over the 3 masks and every image of every repeat. It is not IoU; IoU is reported beside
it because pixel agreement is dominated by the background on small masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def postprocess_masks(
    low_res_masks: torch.Tensor,
    reshaped_size: tuple[int, int],
    original_size: tuple[int, int],
    pad_size: int = 1024,
) -> torch.Tensor:
    """Low-res logits -> boolean masks at the original size, as SamProcessor.post_process_masks.

    low_res_masks: (B, M, 256, 256) logits (any float dtype; computed in fp32).
    Returns (B, M, H, W) bool: bilinear to pad_size, crop to reshaped_size, bilinear to
    original_size, logits > 0.
    """
    x = F.interpolate(
        low_res_masks.float(), (pad_size, pad_size), mode="bilinear", align_corners=False
    )
    x = x[..., : reshaped_size[0], : reshaped_size[1]]
    x = F.interpolate(x, original_size, mode="bilinear", align_corners=False)
    return x > 0


class MaskScore:
    """Running sums of pixel agreement and IoU against the ground truth, kept on the device.

    gt: (3, H, W) bool, ordered as the ground-truth files (smallest mask first); `order[i]` is
    the model output index compared with gt[i]. No host sync until `result()`.
    """

    def __init__(self, gt: torch.Tensor, order: list[int]):
        self.gt, self.order = gt, list(order)
        self.agree = torch.zeros(len(order), dtype=torch.float64, device=gt.device)
        self.iou = torch.zeros(len(order), dtype=torch.float64, device=gt.device)
        self.images = 0

    def update(self, masks: torch.Tensor) -> None:
        """masks: (B, 3, H, W) bool predicted masks in model output order."""
        pred = masks[:, self.order]
        gt = self.gt.unsqueeze(0)
        numel = gt.shape[-1] * gt.shape[-2]
        self.agree += (pred == gt).sum(dim=(-1, -2)).sum(0).double() / numel
        inter = (pred & gt).sum(dim=(-1, -2)).double()
        union = (pred | gt).sum(dim=(-1, -2)).double()
        # Both empty: identical masks, IoU 1.
        self.iou += torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).sum(
            0
        )
        self.images += masks.shape[0]

    def result(self) -> dict:
        """acc and IoU: the mean over masks and images, and per ground-truth mask."""
        n = max(self.images, 1)
        agree = (self.agree / n).tolist()
        iou = (self.iou / n).tolist()
        return {
            "acc": sum(agree) / len(agree),
            "iou": sum(iou) / len(iou),
            "acc_per_mask": agree,
            "iou_per_mask": iou,
            "images_scored": self.images,
        }


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in fp32 (x on any device; ref on the CPU): weight-independent fidelity."""
    ref = ref.to(x.device, torch.float32)
    return float(torch.linalg.vector_norm(x.float() - ref) / torch.linalg.vector_norm(ref))
