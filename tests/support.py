"""What the tests share: paths, utils as U and host as H, the notebook's cells, the fixtures (demo and real data).

tests/conftest.py and experiments/tests/conftest.py import the fixtures from here; test modules import the
names they use (`from support import ROOT, U`). A module named conftest cannot be shared: two test folders
each have one.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NOTEBOOK = ROOT / "obligatorio.ipynb"
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from notebook_code import cells as notebook_cells  # noqa: E402, F401  (used by the test modules)
from notebook_code import definitions  # noqa: E402

import host as H  # noqa: E402
import utils as U  # noqa: E402

NB = definitions("unet", "loss", "step")  # the notebook's U-Net, loss and training step


def recipe(cfg: U.TrainConfig) -> dict:
    """U.train's loss_fn and train_epoch as the notebook makes them for cfg (its cells 6.1 and 6.2)."""
    loss = NB["DiceBCELoss"](cfg.bce_weight, cfg.dice_weight, cfg.edge_weight, cfg.edge_px)
    return {"loss_fn": loss, "train_epoch": NB["train_one_epoch"]}


@pytest.fixture(scope="session")
def unet_ns() -> dict:
    """Namespace after executing the notebook's cells tagged `unet` (the model graders read)."""
    return definitions("unet")


@pytest.fixture(scope="session")
def UNet(unet_ns):
    return unet_ns["UNet"]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small generated dataset in the competition layout (24 train pairs, 6 test images, 800x800)."""
    return H.make_demo_dataset(tmp_path_factory.mktemp("demo"), n_train=24, n_test=6, seed=1)


@pytest.fixture(scope="session")
def demo_ds(demo_root) -> U.CachedSegDataset:
    """demo_root's training pairs cached at 64 px, normalised with their own channel stats."""
    pairs = U.pair_files(demo_root / "train" / "images", demo_root / "train" / "masks")
    ds = U.CachedSegDataset(pairs, 64, workers=1, progress=False)
    ds.set_stats(*U.channel_stats(ds.images))
    return ds


def require_shared(*parts: str) -> Path:
    """Path inside ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared exists beside the repo only in CI and dev machines)")
    return path


@pytest.fixture(scope="session")
def real_root(tmp_path_factory) -> Path:
    """The real photos of ../shared laid out like the competition (232 train, 58 test + answers)."""
    tool = require_shared("tools", "make_dataset.py")
    require_shared("data", "persons-vikram")
    out = tmp_path_factory.mktemp("real")
    subprocess.run([sys.executable, str(tool), str(out)], check=True, capture_output=True)
    return out
