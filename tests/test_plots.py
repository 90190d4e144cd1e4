"""The notebook's figures: every axis and colour bar says what it measures."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from support import U  # noqa: E402


def labelled(fig) -> list[str]:
    """The axes of a figure that lack an x or y label (colour bars: their one label)."""
    missing = []
    for ax in fig.axes:
        colorbar = ax.get_label() == "<colorbar>"
        if colorbar and not (ax.get_ylabel() or ax.get_xlabel()):
            missing.append("colour bar")
        elif not colorbar and not (ax.get_xlabel() and ax.get_ylabel()):
            missing.append(ax.get_title() or "untitled axes")
    return missing


def test_every_figure_labels_its_axes():
    rng = np.random.default_rng(0)
    history = {k: list(rng.random(6)) for k in ("train_loss", "val_loss", "train_dice", "val_dice", "lr")}
    figures = [U.plot_coverage(rng.random(50), rng.random((16, 16))),
               U.plot_history(history, U.TrainConfig(epochs=6), steps_per_epoch=5),
               U.plot_val_dice(rng.random(30), rng.random(30)),
               U.plot_experiments({"a": list(rng.random(4)), "b": list(rng.random(4))})]
    for fig in figures:
        assert labelled(fig) == [], labelled(fig)
    plt.close("all")


def test_the_lr_panel_draws_every_step_so_the_warm_up_shows():
    history = {k: [0.5] * 4 for k in ("train_loss", "val_loss", "train_dice", "val_dice")} | {"lr": [1.0] * 4}
    cfg = U.TrainConfig(epochs=4, lr=1e-2, warmup_epochs=1)
    fig = U.plot_history(history, cfg, steps_per_epoch=10)
    steps = fig.axes[2].lines[0].get_ydata()
    assert len(steps) == 40 and steps[0] == pytest.approx(1e-3) and max(steps) == pytest.approx(1e-2)  # warm-up
    assert list(steps[:10]) == sorted(steps[:10]) and steps[-1] < 1e-3
    plt.close("all")


def test_overlay_paints_the_mask_and_outlines_it():
    img = np.full((40, 40, 3), 200, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = U.overlay(img, mask)
    assert (out[0, 0] == 200).all() and (out[20, 20] != 200).any()  # background untouched, the inside tinted
    assert (out[10, 20] == (255, 255, 0)).all() and not (out[20, 20] == (255, 255, 0)).all()  # a yellow outline
