"""Inference at full size, CSV writing that never overwrites, and the submission validator."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from support import U


@pytest.fixture
def test_dir(tmp_path):
    """Three test images: two 800x800 and one 640x480 (a size the competition does not use)."""
    d = tmp_path / "test" / "images"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in (("1.png", (800, 800)), ("12.png", (800, 800)), ("3.png", (480, 640))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / name)
    (d / ".DS_Store").write_bytes(b"junk")
    return d


def write_csv(path, rows, header=("id", "encoded_pixels")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


GOOD = [("1.png", "1 5 100 2"), ("12.png", ""), ("3.png", "307195 6")]  # last run ends at 480*640


def test_validator_accepts_a_good_csv(tmp_path, test_dir):
    assert U.validate_submission(write_csv(tmp_path / "s.csv", GOOD), test_dir) == 3


def test_validator_reads_the_long_rle_of_a_noisy_mask(tmp_path, test_dir):
    """An untrained or diverged model predicts salt-and-pepper: one row can pass a million characters."""
    noisy = np.random.default_rng(1).random((800, 800)) > 0.5
    rle = U.rle_encode(noisy)
    assert len(rle) > 131072  # longer than the csv module's default field limit
    path = U.write_submission([("1.png", rle), ("12.png", ""), ("3.png", "")], tmp_path / "s.csv")
    assert U.validate_submission(path, test_dir) == 3
    assert np.array_equal(U.rle_decode(rle, (800, 800)), noisy)


@pytest.mark.parametrize("rows, header, reason", [
    (GOOD, ("id", "rle"), "header"),
    (GOOD[:2], None, "no row"),
    (GOOD + [("99.png", "")], None, "not a file"),
    (GOOD + [("1.png", "")], None, "twice"),
    ([("1.png", "1 x"), *GOOD[1:]], None, "integers"),
    ([("1.png", "1.5 2"), *GOOD[1:]], None, "integers"),
    ([("1.png", "1 5 7"), *GOOD[1:]], None, "odd"),
    ([("1.png", "-3 5"), *GOOD[1:]], None, "integers"),
    ([("1.png", "0 5"), *GOOD[1:]], None, "start >= 1"),
    ([("1.png", "4 0"), *GOOD[1:]], None, "length >= 1"),
    ([("1.png", "100 2 1 5"), *GOOD[1:]], None, "unsorted or overlapping"),
    ([("1.png", "1 5 5 2"), *GOOD[1:]], None, "unsorted or overlapping"),
    ([("1.png", "639999 3"), *GOOD[1:]], None, "past the 640000"),
    ([*GOOD[:2], ("3.png", "307195 7")], None, "past the 307200"),
    ([("1.png", "1 5", "extra"), *GOOD[1:]], None, "2 columns"),
])
def test_validator_rejects_each_malformed_kind(tmp_path, test_dir, rows, header, reason):
    path = write_csv(tmp_path / "bad.csv", rows, header or ("id", "encoded_pixels"))
    with pytest.raises(ValueError, match=reason):
        U.validate_submission(path, test_dir)


def test_write_submission_never_overwrites(tmp_path):
    target = tmp_path / "sub.csv"
    target.write_text("precious")
    first = U.write_submission(GOOD, target)
    second = U.write_submission(GOOD, target)
    assert target.read_text() == "precious"
    assert (first.name, second.name) == ("sub_1.csv", "sub_2.csv")
    a = U.write_submission(GOOD, out_dir=tmp_path / "subs")
    b = U.write_submission(GOOD, out_dir=tmp_path / "subs")  # same second: still a new file
    assert a != b and a.parent == tmp_path / "subs" and a.name.startswith("submission_")
    assert list(csv.reader(open(b))) == [["id", "encoded_pixels"], *map(list, GOOD)]


def test_submission_order_follows_sample_submission(tmp_path):
    sample = write_csv(tmp_path / "sample_submission.csv", [("3.png", ""), ("1.png", ""), ("12.png", "")])
    assert U.submission_order(["1.png", "12.png", "3.png"], sample) == ["3.png", "1.png", "12.png"]
    assert U.submission_order(["1.png", "3.png"], tmp_path / "none.csv") == ["1.png", "3.png"]
    with pytest.raises(ValueError, match="other ids"):
        U.submission_order(["1.png", "4.png", "3.png"], sample)


def test_predictions_come_back_at_each_images_own_size(UNet, test_dir, tmp_path):
    ds = U.CachedSegDataset([(p, None) for p in U.list_images(test_dir)], 64, workers=1, progress=False)
    model = UNet(base=4)
    out = dict(U.predict_probs(model, ds, torch.device("cpu"), tta=True, batch_size=2))
    shapes = {ds.items[i][0].name: out[i].shape for i in range(3)}
    assert shapes == {"1.png": (800, 800), "12.png": (800, 800), "3.png": (480, 640)}
    assert all(0 <= p.min() and p.max() <= 1 for p in out.values())
    rows = [(ds.items[i][0].name, U.rle_encode(out[i] > 0.5)) for i in range(3)]
    path = U.write_submission(rows, tmp_path / "pred.csv")
    assert U.validate_submission(path, test_dir) == 3


def test_flip_tta_averages_with_the_mirrored_prediction(test_dir):
    class LeftRamp(torch.nn.Module):  # logit grows to the right: not flip-invariant
        def forward(self, x):
            return torch.linspace(-4, 4, x.shape[-1]).expand(x.shape[0], 1, *x.shape[-2:]).clone()

    ds = U.CachedSegDataset([(U.list_images(test_dir)[0], None)], 32, workers=1, progress=False)
    (_, plain), = U.predict_probs(LeftRamp(), ds, torch.device("cpu"), tta=False)
    (_, tta), = U.predict_probs(LeftRamp(), ds, torch.device("cpu"), tta=True)
    assert plain[0, 0] < 0.1 and plain[0, -1] > 0.9
    assert np.allclose(tta, 0.5, atol=1e-6)


def test_threshold_sweep_scores_at_full_resolution(UNet, demo_root):
    pairs = U.pair_files(demo_root / "train" / "images", demo_root / "train" / "masks")[:3]
    ds = U.CachedSegDataset(pairs, 32, workers=1, progress=False)
    model, cpu = UNet(base=4), torch.device("cpu")
    scores, cov = U.threshold_sweep(model, ds, cpu, [0.3, 0.5], tta=False)
    truths = [U.read_mask(m) for _, m in pairs]
    probs = dict(U.predict_probs(model, ds, cpu, tta=False))
    expected = [[U.dice_score(probs[i] > t, truths[i]) for t in (0.3, 0.5)] for i in range(3)]
    assert scores.shape == (3, 2) and scores == pytest.approx(np.array(expected))
    assert cov == pytest.approx([t.mean() for t in truths])
