"""Reading, pairing, caching, splitting and augmenting the data; locating DATA_DIR."""
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import H, U


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _layout(root: Path, names_img, names_mask, size=(40, 30)) -> None:
    rng = np.random.default_rng(0)
    for n in names_img:
        _save(root / "images" / n, rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    for n in names_mask:
        _save(root / "masks" / n, (rng.random(size) > 0.5).astype(np.uint8))


def _add_junk(folder: Path) -> None:
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "notes.txt", "._1.png"):
        (folder / name).write_bytes(b"junk")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "1-checkpoint.png").write_bytes(b"junk")
    (folder / "subfolder.png").mkdir()


def test_pairs_ignore_junk_and_sort_numerically(tmp_path):
    _layout(tmp_path, ["10.png", "2.png", "1.png"], ["1.png", "2.png", "10.png"])
    _add_junk(tmp_path / "images")
    _add_junk(tmp_path / "masks")
    pairs = U.pair_files(tmp_path / "images", tmp_path / "masks")
    assert [(i.name, m.name) for i, m in pairs] == [("1.png", "1.png"), ("2.png", "2.png"), ("10.png", "10.png")]


def test_image_without_mask_and_mask_without_image_are_named(tmp_path):
    _layout(tmp_path, ["1.png", "2.png", "3.png"], ["1.png", "3.png", "4.png"])
    with pytest.raises(ValueError, match=r"without mask \['2.png'\].*without image \['4.png'\]"):
        U.pair_files(tmp_path / "images", tmp_path / "masks")


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        U.list_images(tmp_path / "nothere")


def test_truncated_and_corrupt_png_name_the_file(tmp_path):
    good = _save(tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    truncated = tmp_path / "7.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = tmp_path / "8.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    for bad in (truncated, corrupt):
        with pytest.raises(ValueError, match=bad.name):
            U.read_image(bad)
        with pytest.raises(ValueError, match=bad.name):
            U.read_mask(bad)


MASK = np.zeros((20, 30), np.uint8)
MASK[5:15, 3:12] = 1


@pytest.mark.parametrize("kind", ["0/1", "0/255", "rgb", "palette", "16bit", "bool"])
def test_masks_read_as_binary(tmp_path, kind):
    p = tmp_path / "m.png"
    if kind == "0/1":
        _save(p, MASK)
    elif kind == "0/255":
        _save(p, MASK * 255)
    elif kind == "rgb":
        _save(p, np.repeat(MASK[..., None] * 255, 3, axis=2))
    elif kind == "palette":
        img = Image.fromarray(MASK, "P")
        img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # 0 black, 1 red: luminance of red is 76
        img.save(p)
    elif kind == "16bit":
        Image.fromarray(MASK.astype(np.uint16) * 65535).save(p)
    else:
        Image.fromarray(MASK.astype(bool)).save(p)
    got = U.read_mask(p)
    assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1}
    assert (got == MASK).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "RGB"])
def test_images_read_as_rgb_uint8(tmp_path, mode):
    rng = np.random.default_rng(0)
    p = tmp_path / "i.png"
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16)).save(p)
    else:
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode).save(p)
    img = U.read_image(p)
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    if mode in ("L", "I;16"):
        assert (img[..., 0] == img[..., 1]).all() and img.max() > 200


def test_image_and_mask_of_different_sizes_name_the_pair(tmp_path):
    _save(tmp_path / "images" / "5.png", np.zeros((40, 30, 3), np.uint8))
    _save(tmp_path / "masks" / "5.png", np.zeros((30, 40), np.uint8))
    pairs = U.pair_files(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(ValueError, match=r"images/5.png.*masks/5.png"):
        U.CachedSegDataset(pairs, 16, workers=1, progress=False)


def test_cache_matches_a_fresh_decode(demo_root):
    pairs = U.pair_files(demo_root / "train" / "images", demo_root / "train" / "masks")[:10]
    ds = U.CachedSegDataset(pairs, 96, workers=2, progress=False)
    for k, (img_p, mask_p) in enumerate(pairs):
        assert torch.equal(ds.images[k], torch.from_numpy(U.resize_image(U.read_image(img_p), 96)).permute(2, 0, 1))
        assert torch.equal(ds.masks[k, 0], torch.from_numpy(U.resize_mask(U.read_mask(mask_p), 96)))
        assert ds.orig_sizes[k] == (800, 800)
    x, y = ds[0]
    assert x.dtype == y.dtype == torch.uint8 and x.shape == (3, 96, 96) and y.shape == (1, 96, 96)
    assert torch.equal(x, ds.images[0]) and torch.equal(y, ds.masks[0])
    ds.set_stats([0.2, 0.4, 0.6], [0.5, 0.25, 0.125])
    z = ds.normalize(x[None])
    assert z.dtype == torch.float32 and z.shape == (1, 3, 96, 96)
    assert torch.allclose(z[0, 1], (x[1].float() / 255 - 0.4) / 0.25)


def test_augmentation_keeps_image_and_mask_aligned():
    """The image is its own mask (white person on black, left side): any misalignment shows."""
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 10:50, 8:24] = 1
    ds = U.CachedSegDataset([], 64, progress=False)
    ds.images, ds.masks = (mask * 255).repeat(3, 1, 1)[None], mask[None]
    tf, moved = U.train_transform(), 0
    torch.manual_seed(0)
    for _ in range(40):
        x, y = ds.sample(0, tf)
        img_fg = x.float().mean(0) > 100
        assert y.unique().tolist() in ([0, 1], [0]), "mask must stay binary"
        iou = (img_fg & (y[0] > 0)).sum() / (img_fg | (y[0] > 0)).sum().clamp(min=1)
        assert iou > 0.85, f"image and mask disagree (IoU {iou:.2f})"
        moved += not torch.equal(y, mask)
    assert moved > 20, "the transform should move the mask in most draws"
    flipped_image_only = torch.flip(mask[0], dims=[1]).bool()  # the bug this test guards against
    assert (flipped_image_only & mask[0].bool()).sum() == 0


def test_batch_augmentation_draws_per_sample_and_only_for_the_training_subset():
    """Augmentation runs on the device on whole batches: each pair still gets its own draw."""
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 10:50, 8:24] = 1
    ds = U.CachedSegDataset([], 64, progress=False)
    ds.images, ds.masks = (mask * 255).repeat(8, 3, 1, 1), mask.repeat(8, 1, 1, 1)
    ds.items, ds.orig_sizes = [("i.png", "m.png")] * 8, [(64, 64)] * 8
    train, val = U.Subset(ds, range(8), U.train_transform()), U.Subset(ds, range(8))
    assert torch.equal(train[3][0], ds.images[3]), "the DataLoader side does no work"
    torch.manual_seed(0)
    x, y = train.to_input(ds.images, ds.masks)  # eight copies of one pair in, eight different draws out
    assert x.dtype == y.dtype == torch.float32 and x.shape == (8, 3, 64, 64) and y.shape == (8, 1, 64, 64)
    assert len({tuple(m.nonzero().float().mean(0).round().tolist()) for m in y[:, 0]}) >= 6
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    fg = x.mean(1) > x.mean((1, 2, 3))[:, None, None]  # the image is its own mask: still aligned
    iou = (fg & (y[:, 0] > 0)).sum((1, 2)) / (fg | (y[:, 0] > 0)).sum((1, 2)).clamp(min=1)
    assert (iou > 0.8).all(), f"image and mask disagree after batch augmentation: {iou}"
    xv, yv = val.to_input(ds.images, ds.masks)
    assert torch.equal(xv, ds.normalize(ds.images)) and torch.equal(yv, ds.masks.float())


def test_stratified_split_is_seeded_disjoint_and_balanced():
    cov = np.linspace(0, 0.8, 200)
    strata = U.coverage_bins(cov)
    tr, va = U.stratified_split(strata, 0.2, seed=3)
    assert sorted(tr + va) == list(range(200)) and not set(tr) & set(va)
    assert (tr, va) == U.stratified_split(strata, 0.2, seed=3)
    assert (tr, va) != U.stratified_split(strata, 0.2, seed=4)
    assert np.bincount(strata[va]).tolist() == [10, 10, 10, 10]


def test_channel_stats():
    imgs = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    imgs[:, 0] = 255
    imgs[1, 1] = 255
    mean, std = U.channel_stats(imgs)
    assert mean == pytest.approx([1.0, 0.5, 0.0]) and std[0] == pytest.approx(0) and std[1] > 0.4


def test_demo_dataset_has_the_competition_layout(demo_root):
    imgs = U.list_images(demo_root / "train" / "images")
    assert len(imgs) == 24 and len(U.list_images(demo_root / "test" / "images")) == 6
    assert all(p.stem.isdigit() and p.suffix == ".png" for p in imgs)
    assert not (demo_root / "test" / "masks").exists()
    with Image.open(imgs[0]) as im:
        assert im.size == (800, 800) and im.mode == "RGB"
    masks = [np.asarray(Image.open(p)) for p in U.list_images(demo_root / "train" / "masks")]
    assert all(set(np.unique(m)) <= {0, 1} for m in masks)
    assert sum(m.any() for m in masks) >= 12


def test_explicit_data_dir_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="DATA_DIR=.*nope: no such folder"):
        H.resolve_data_dir(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("not the data")
    with pytest.raises(FileNotFoundError, match="no folder with train/images, train/masks and test/images"):
        H.resolve_data_dir(tmp_path / "other")


def _no_kaggle(tmp_path, monkeypatch):
    """No Kaggle input folder and no Kaggle credentials anywhere."""
    monkeypatch.setattr(H, "KAGGLE_INPUT", tmp_path / "kaggle-input")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)


def test_explicit_empty_data_dir_is_auto_detected_into_it(tmp_path, monkeypatch, capsys):
    _no_kaggle(tmp_path, monkeypatch)
    monkeypatch.setattr(H, "make_demo_dataset", partial(H.make_demo_dataset, n_train=4, n_test=2, size=64))  # fast
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_text("")
    assert H.resolve_data_dir(tmp_path / "empty") == (tmp_path / "empty" / "demo", True)
    assert "está vacía: detección automática" in capsys.readouterr().out


def _mount(folder: Path, data: Path) -> Path:
    """`folder` laid out like the download, its train/ and test/ linking to `data`'s."""
    folder.mkdir(parents=True)
    for sub in ("train", "test"):
        (folder / sub).symlink_to(data / sub)
    return folder


def test_auto_detection_order(tmp_path, monkeypatch, demo_root):
    _no_kaggle(tmp_path, monkeypatch)
    monkeypatch.setattr(H, "make_demo_dataset", partial(H.make_demo_dataset, size=64))  # the default counts, fast
    local = tmp_path / "data"
    local.mkdir()
    root, is_demo = H.resolve_data_dir(None, local=local)  # nothing anywhere: demo, generated
    assert is_demo and root == local / "demo" and len(U.list_images(root / "train" / "images")) == 48
    (local / "partial" / "train" / "images").mkdir(parents=True)  # no masks, no test: not the data
    assert H.resolve_data_dir(None, local=local) == (local / "demo", True)
    nested = _mount(local / "tdl-obligatorio-2025", demo_root)  # an unzipped download in data/: demo ignored
    assert H.resolve_data_dir(None, local=local) == (nested, False)
    kaggle = _mount(tmp_path / "kaggle-input" / "tdl-obligatorio-2025", demo_root)  # Kaggle input comes first
    assert H.resolve_data_dir(None, local=local) == (kaggle, False)
    assert H.resolve_data_dir(demo_root) == (demo_root, False)  # explicit wins


def test_channel_stats_of_a_subset_use_only_those_images():
    imgs = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    idx = [3, 7, 11, 19, 0]
    assert np.allclose(U.channel_stats(imgs, chunk=2, index=idx), U.channel_stats(imgs[idx]))
    assert not np.allclose(U.channel_stats(imgs, index=idx), U.channel_stats(imgs))


def test_channel_stats_in_chunks_match_the_direct_formula():
    imgs = torch.randint(0, 256, (37, 3, 8, 8), dtype=torch.uint8)
    mean, std = U.channel_stats(imgs, chunk=5)
    x = imgs.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    cov = U.per_image_mean((imgs[:, :1] > 127).to(torch.uint8), chunk=5)
    assert cov.tolist() == pytest.approx((imgs[:, :1] > 127).double().mean(dim=(1, 2, 3)).tolist())
