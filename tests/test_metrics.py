import numpy as np
import pytest
import torch

from samrep.metrics import MaskScore, postprocess_masks


def test_postprocess_matches_hf_processor():
    """Our batched post-processing is SamProcessor.post_process_masks, bit for bit."""
    from transformers import SamImageProcessor

    gen = torch.Generator().manual_seed(0)
    low = torch.randn(2, 3, 256, 256, generator=gen)
    original, reshaped = (600, 512), (1024, 874)
    ours = postprocess_masks(low, reshaped, original)
    hf = SamImageProcessor().post_process_masks(
        [low[0:1], low[1:2]], [original, original], [reshaped, reshaped]
    )
    assert ours.shape == (2, 3, 600, 512) and ours.dtype == torch.bool
    assert torch.equal(ours[0:1], hf[0]) and torch.equal(ours[1:2], hf[1])


def test_mask_score_pixel_agreement_and_iou():
    gt = torch.zeros(3, 4, 5, dtype=torch.bool)
    gt[0, 0, :2] = True  # 2 px
    gt[1, :2, :] = True  # 10 px
    gt[2] = True  # 20 px
    order = [2, 0, 1]  # model output 2 is compared with gt 0, ...
    pred = torch.zeros(1, 3, 4, 5, dtype=torch.bool)
    pred[0, 2] = gt[0]  # exact
    pred[0, 0, :2, :] = True
    pred[0, 0, 0, 0] = False  # 9 of gt1's 10 px
    pred[0, 1] = True  # exact
    score = MaskScore(gt, order)
    score.update(pred)
    score.update(pred)
    r = score.result()
    assert r["images_scored"] == 2
    assert r["acc_per_mask"] == pytest.approx([1.0, 19 / 20, 1.0])
    assert r["iou_per_mask"] == pytest.approx([1.0, 0.9, 1.0])
    assert r["acc"] == pytest.approx(np.mean([1.0, 0.95, 1.0]))


def test_mask_score_empty_masks_are_identical():
    gt = torch.zeros(3, 2, 2, dtype=torch.bool)
    score = MaskScore(gt, [0, 1, 2])
    score.update(torch.zeros(1, 3, 2, 2, dtype=torch.bool))
    assert score.result()["iou"] == 1.0
