"""RLE: the course example, round trips, and agreement with the competition's scorer."""
import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from support import H, U, require_shared

COURSE_MASK = np.array([[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]])


def test_course_example():
    assert U.rle_encode(COURSE_MASK) == "3 1 6 2 9 3 14 1 16 1 20 1"
    assert (U.rle_decode("3 1 6 2 9 3 14 1 16 1 20 1", (4, 5)) == COURSE_MASK).all()


def test_empty_and_full():
    assert U.rle_encode(np.zeros((7, 3), bool)) == ""
    assert (U.rle_decode("", (7, 3)) == 0).all()
    assert U.rle_encode(np.ones((7, 3), bool)) == "1 21"


@pytest.mark.parametrize("shape", [(1, 1), (4, 5), (5, 4), (33, 17), (800, 800)])
def test_round_trip_random(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.01, 0.5, 0.99):
        mask = rng.random(shape) < density
        assert (U.rle_decode(U.rle_encode(mask), shape) == mask).all()


@pytest.mark.parametrize("pos", [(0, 0), (0, 4), (6, 0), (6, 4), (3, 2)])
def test_single_pixel_is_fortran_order_and_1_indexed(pos):
    mask = np.zeros((7, 5), bool)
    mask[pos] = True
    start = pos[1] * 7 + pos[0] + 1  # column-major, 1-indexed
    assert U.rle_encode(mask) == f"{start} 1"
    assert (U.rle_decode(f"{start} 1", (7, 5)) == mask).all()


def test_accepts_0_255_and_bool_masks():
    assert U.rle_encode(COURSE_MASK * 255) == U.rle_encode(COURSE_MASK.astype(bool))


def test_agrees_with_competition_scorer(tmp_path):
    scorer = require_shared("tools", "score_submission.py")
    rng = np.random.default_rng(0)
    masks_dir = tmp_path / "truth"
    masks_dir.mkdir()
    rows, preds, truths = [], [], []
    for k in range(6):
        _, truth = H.make_demo_image(rng, 200)
        if k == 0:
            truth[:] = 0  # empty truth, empty prediction: Dice 1
        Image.fromarray(truth).save(masks_dir / f"{k + 10}.png")
        pred = truth.copy().astype(bool)
        if k > 1:  # perturb: shift the prediction and add noise
            pred = np.roll(pred, k * 3, axis=1) | (rng.random(pred.shape) < 0.01)
        preds.append(pred)
        truths.append(truth)
        rows.append([f"{k + 10}.png", U.rle_encode(pred)])
    sub = tmp_path / "sub.csv"
    with open(sub, "w", newline="") as f:
        csv.writer(f).writerows([["id", "encoded_pixels"], *rows])
    out = subprocess.run([sys.executable, str(scorer), str(sub), str(masks_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    referee = float(out.stdout.strip().splitlines()[-1].split("=")[1])
    assert referee == pytest.approx(np.mean([U.dice_score(p, t) for p, t in zip(preds, truths)]), abs=1e-6)
    assert U.validate_submission(sub, masks_dir) == 6
