"""Dice exactly as the competition scores it, and the training loss."""
import numpy as np
import pytest
import torch
from conftest import U


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
    preds, truths = [big_t, np.zeros((10, 10), bool)], [big_t, small_t]
    assert U.mean_dice(preds, truths) == pytest.approx(0.5)  # pooled Dice would be 200/201


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
    loss_fn = U.DiceBCELoss()
    good = loss_fn((target * 2 - 1).half() * 8, target)  # fp16 logits as under AMP
    bad = loss_fn(-(target * 2 - 1) * 8, target)
    assert good.dtype == torch.float32 and torch.isfinite(good)
    assert good < 0.05 < 1.5 < bad


def test_loss_weights():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce = U.DiceBCELoss(1, 0)(logits, target)
    dice = U.DiceBCELoss(0, 1)(logits, target)
    assert U.DiceBCELoss(0.5, 2)(logits, target) == pytest.approx(0.5 * bce + 2 * dice)


def _lovasz_reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Berman et al.'s reference lovasz_hinge_flat, one image at a time (github.com/bermanmaxim/LovaszSoftmax)."""
    out = []
    for lg, lb in zip(logits.flatten(1), labels.flatten(1)):
        errors, perm = torch.sort(1.0 - lg * (2.0 * lb - 1.0), descending=True)
        gt = lb[perm]
        jaccard = 1.0 - (gt.sum() - gt.cumsum(0)) / (gt.sum() + (1 - gt).cumsum(0))
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
        out.append(torch.dot(torch.relu(errors), jaccard))
    return torch.stack(out).mean()


def test_lovasz_hinge_matches_reference_and_is_zero_with_margin():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 1, 8, 8), (torch.rand(3, 1, 8, 8) > 0.6).float()
    target[2] = 0  # an image without a person
    assert U.lovasz_hinge(logits, target).item() == pytest.approx(_lovasz_reference(logits, target).item(), rel=1e-6)
    assert U.lovasz_hinge((target * 2 - 1) * 1.5, target).item() == 0.0  # right side of every margin
    assert U.DiceBCELoss(0, 0, lovasz_weight=2)(logits, target) == pytest.approx(2 * U.lovasz_hinge(logits, target))
