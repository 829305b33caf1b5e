"""Mask post-processing and the case's accuracy: pixel agreement (`acc`, the spec's
`(pred_mask == gt_mask).sum() / numel` at the original size, averaged over the 3 masks, images and
repeats) and mask IoU beside it (the background dominates agreement on small masks)."""

import torch
import torch.nn.functional as F

Size = tuple[int, int]


def postprocess_masks(
    low_res_masks: torch.Tensor, reshaped_size: Size, original_size: Size, pad_size: int = 1024
) -> torch.Tensor:
    """(B, M, 256, 256) logits of any float dtype -> (B, M, H, W) bool, as SamProcessor's
    post_process_masks: in fp32, bilinear to pad_size, crop to reshaped_size, bilinear, > 0."""
    bilinear = dict(mode="bilinear", align_corners=False)
    x = F.interpolate(low_res_masks.float(), (pad_size, pad_size), **bilinear)
    x = x[..., : reshaped_size[0], : reshaped_size[1]]
    return F.interpolate(x, original_size, **bilinear) > 0


class MaskScore:
    """Running sums of pixel agreement and IoU against the ground truth, kept on the device (no
    host sync until `result()`). gt: (3, H, W) bool, ordered as the ground-truth files (smallest
    mask first); `order[i]` is the model output index compared with gt[i]."""

    def __init__(self, gt: torch.Tensor, order: list[int]):
        self.gt, self.order, self.images = gt, list(order), 0
        self.agree = torch.zeros(len(order), dtype=torch.float64, device=gt.device)
        self.iou = torch.zeros_like(self.agree)

    def update(self, masks: torch.Tensor) -> None:
        """masks: (B, 3, H, W) bool predicted masks in model output order."""
        pred, gt = masks[:, self.order], self.gt.unsqueeze(0)
        self.agree += (pred == gt).sum(dim=(0, -1, -2)).double() / (gt.shape[-1] * gt.shape[-2])
        inter = (pred & gt).sum(dim=(-1, -2)).double()
        union = (pred | gt).sum(dim=(-1, -2)).double()
        self.iou += torch.where(union > 0, inter / union.clamp(min=1), 1.0).sum(0)  # both empty: 1
        self.images += masks.shape[0]

    def result(self) -> dict:
        """acc and IoU: the mean over masks and images, and per ground-truth mask."""
        n = max(self.images, 1)
        agree, iou = (self.agree / n).tolist(), (self.iou / n).tolist()
        out = {"acc": sum(agree) / len(agree), "iou": sum(iou) / len(iou), "acc_per_mask": agree}
        return out | {"iou_per_mask": iou, "images_scored": self.images}


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in fp32 (x on any device; ref on the CPU): weight-independent fidelity."""
    ref = ref.to(x.device, torch.float32)
    return float(torch.linalg.vector_norm(x.float() - ref) / torch.linalg.vector_norm(ref))
