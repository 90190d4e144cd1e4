"""Dice exactly as the competition scores it, and the training loss."""
import numpy as np
import pytest
import torch
from support import NB, U

DiceBCELoss, edge_band = NB["DiceBCELoss"], NB["edge_band"]  # the notebook's loss (its cell 6.1)


def test_empty_empty_is_one():
    z = np.zeros((4, 4), bool)
    assert U.dice_score(z, z) == 1.0


def test_any_false_positive_on_empty_truth_is_zero():
    pred = np.zeros((4, 4), bool)
    pred[0, 0] = True
    assert U.dice_score(pred, np.zeros((4, 4), bool)) == 0.0
    assert U.dice_score(np.zeros((4, 4), bool), pred) == 0.0


def test_hand_computed():
    pred, truth = np.zeros((3, 4), bool), np.zeros((3, 4), bool)
    pred[0, :4] = True  # 4 pixels
    truth[0, 1:4] = truth[1, 0:3] = True  # 6 pixels, 3 shared
    assert U.dice_score(pred, truth) == pytest.approx(2 * 3 / (4 + 6))


def test_mean_is_per_image_not_pooled():
    big_t = np.ones((10, 10), bool)
    small_t = np.zeros((10, 10), bool)
    small_t[0, 0] = True
    preds, truths = np.stack([big_t, np.zeros((10, 10), bool)]), np.stack([big_t, small_t])
    per_image = U.dice_per_image(torch.from_numpy(preds), torch.from_numpy(truths))
    assert per_image.mean().item() == pytest.approx(0.5)  # pooled Dice would be 200/201


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        U.dice_score(np.zeros((2, 2)), np.zeros((2, 3)))


def test_batch_dice_matches_single_image_dice():
    rng = np.random.default_rng(0)
    p = rng.random((5, 1, 16, 16)) < 0.3
    t = rng.random((5, 1, 16, 16)) < 0.3
    p[0], t[0] = False, False
    batch = U.dice_per_image(torch.from_numpy(p), torch.from_numpy(t)).numpy()
    assert batch == pytest.approx([U.dice_score(a, b) for a, b in zip(p, t)])
    assert batch[0] == 1.0


def test_loss_is_fp32_finite_and_ranks_predictions():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    loss_fn = DiceBCELoss()
    good = loss_fn((target * 2 - 1).half() * 8, target)  # fp16 logits as under AMP
    bad = loss_fn(-(target * 2 - 1) * 8, target)
    assert good.dtype == torch.float32 and torch.isfinite(good)
    assert good < 0.05 < 1.5 < bad


def test_loss_weights():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce = DiceBCELoss(1, 0)(logits, target)
    dice = DiceBCELoss(0, 1)(logits, target)
    assert DiceBCELoss(0.5, 2)(logits, target) == pytest.approx(0.5 * bce + 2 * dice)


def test_edge_band_marks_both_sides_of_the_outline_only():
    square = torch.zeros(1, 1, 8, 8)
    square[..., 2:6, 2:6] = 1
    band = edge_band(square)
    assert band.sum() == 6 * 6 - 2 * 2  # the ring from 1 px outside to 1 px inside the 4x4 square
    assert band[..., 3:5, 3:5].sum() == 0 and band[..., 0, :].sum() == 0  # not the core, not 2 px away
    left = torch.zeros(1, 1, 8, 8)
    left[..., :4] = 1  # touching the image border: that border is no outline
    assert edge_band(left)[..., 0].sum() == 0 and edge_band(left)[..., 3:5].all()
    assert edge_band(left).sum() == 2 * 8


def test_edge_weight_multiplies_outline_errors_and_keeps_the_bce_scale():
    target = torch.zeros(2, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    band = edge_band(target).bool()
    right = 10.0 * (2 * target - 1)  # confident and right everywhere (BCE ~5e-5 per pixel)
    wrong_edge = torch.where(band, -right, right)  # wrong on the outline's 32 pixels per image
    wrong_core = right.clone()
    wrong_core[..., 3:5, 3:5] = -10.0  # wrong on 4 pixels inside
    plain, edged = DiceBCELoss(1, 0), DiceBCELoss(1, 0, edge_weight=5)
    ratio_plain = plain(wrong_edge, target) / plain(wrong_core, target)
    ratio_edged = edged(wrong_edge, target) / edged(wrong_core, target)
    assert ratio_edged.item() == pytest.approx(6 * ratio_plain.item(), rel=0.01)  # an outline error costs 1 + 5x
    assert edged(right, target).item() == pytest.approx(plain(right, target).item(), rel=1e-3)  # same scale
    logits = torch.randn(2, 1, 8, 8)
    assert DiceBCELoss(edge_weight=0)(logits, target) == DiceBCELoss()(logits, target)
    dice = DiceBCELoss(0, 1)(logits, target)
    assert DiceBCELoss(0, 1, edge_weight=5)(logits, target) == dice  # the Dice term is untouched


def test_edge_px_widens_the_weighted_band():
    target = torch.zeros(1, 1, 12, 12)
    target[..., 2:10, 2:10] = 1  # an 8x8 square: the 1-px band is rows/cols 1-2 and 9-10, the 2-px band 0-3 and 8-11
    assert edge_band(target, 2).sum() > edge_band(target, 1).sum()
    right = 10.0 * (2 * target - 1)
    wrong = right.clone()
    wrong[..., 3, 5] = -10.0  # the second row inside the mask: in the 2-px band, not in the 1-px one
    core = right.clone()
    core[..., 6, 6] = -10.0  # the middle: in neither
    for px, ratio in ((1, 1.0), (2, 6.0)):
        loss = DiceBCELoss(1, 0, edge_weight=5, edge_px=px)
        assert (loss(wrong, target) / loss(core, target)).item() == pytest.approx(ratio, rel=0.01)


def test_drop_small_components_keeps_regions_of_at_least_a_share_of_the_largest():
    m = np.zeros((40, 40), bool)
    m[5:25, 5:25] = True  # the person: 400 px
    m[12:15, 12:15] = False  # a hole is not a region: it stays a hole
    m[30:33, 30:33] = True  # a 9-px speck ...
    m[33, 33] = True  # ... and a pixel touching it diagonally: one 8-connected region of 10 px
    m[0, 39] = True  # a lone pixel
    kept = U.drop_small_components(m, 0.1)
    assert kept[5:25, 5:25].sum() == 391 and kept.sum() == 391  # 10 px < 10% of 391: dropped, and the lone pixel
    one_pct = U.drop_small_components(m, 0.01)
    assert one_pct[30:, 30:].sum() == 10 and not one_pct[0, 39]  # 10 px >= 3.91 is kept; 1 px is not
    assert U.drop_small_components(m, 0) is m  # 0: off
    empty = np.zeros((8, 8), bool)
    assert not U.drop_small_components(empty, 0.1).any()


def test_fill_small_holes_fills_enclosed_background_below_a_share_of_the_mask():
    m = np.zeros((40, 40), bool)
    m[5:25, 5:25] = True
    m[12:15, 12:15] = False  # a 9-px hole in a 391-px mask
    m[30:33, 30:33] = True  # a separate region is left alone
    filled = U.fill_small_holes(m, 0.1)
    assert filled[5:25, 5:25].all() and (filled ^ m).sum() == 9
    assert U.fill_small_holes(m, 0.01).sum() == m.sum()  # 9 px is not < 1% of 400 px: stays open
    assert U.fill_small_holes(m, 0) is m
    border = np.ones((10, 10), bool)
    border[0, 4] = False  # background touching the image border is no hole, however small
    assert U.fill_small_holes(border, 0.5).sum() == 99
    person = np.zeros_like(m)
    person[5:25, 5:25] = True
    assert (U.postprocess(m, 0.1, 0.1) == person).all()  # the 9-px region dropped (< 10% of 391), the hole filled


def test_choose_threshold_moves_from_half_only_beyond_two_standard_errors():
    """Section 7's rule (also what selection.py --inference cross-fits)."""
    th = np.array([0.3, 0.5, 0.7])
    base = np.random.default_rng(0).uniform(0.7, 0.9, (30, 1))
    steady = np.hstack([base + 0.02, base, base - 0.01])  # 0.3 gains 0.02 on every image
    threshold, best, gain, noise = U.choose_threshold(steady, th)
    assert (threshold, best) == (0.3, 0) and gain == pytest.approx(0.02) and noise == pytest.approx(0, abs=1e-12)
    swing = np.where(np.arange(30) % 2, -0.04, 0.06)[:, None]  # mean gain 0.01 < 2 SE (0.019): inside the noise
    noisy = np.hstack([base + swing, base, base - 0.01])
    threshold, best, gain, noise = U.choose_threshold(noisy, th)
    assert (threshold, best) == (0.5, 0) and gain == pytest.approx(0.01) and noise == pytest.approx(0.0186, abs=1e-4)
    assert U.choose_threshold(steady[:1], th)[0] == 0.5  # one image: no noise estimate, 0.5 stays
