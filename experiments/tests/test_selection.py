"""experiments/selection.py: seeds on validation splits of the training data, a summary with spreads."""
import json
import shutil
import subprocess
import sys

import pytest
from support import ROOT


def test_selection_trains_seeds_on_training_data_only_and_summarises(demo_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_root / "train", data / "train")  # no test folder at all: it must never be needed
    out = tmp_path / "sel"
    cmd = [sys.executable, str(ROOT / "experiments" / "selection.py"), str(data), "tiny", "--seeds", "0", "1",
           "--jobs", "2", "-s", "EPOCHS=1", "-s", "IMG_SIZE=64", "-s", "BASE_CHANNELS=8",
           "-s", "CONT_EPOCHS=1", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    for seed in (0, 1):
        r = json.loads((out / f"tiny_s{seed}.json").read_text())
        assert r["config"]["EPOCHS"] == 1 and r["config"]["IMG_SIZE"] == 64
        assert set(r["scores"]) == {"best", "best_ms", "last", "cont"} and r["cont_minutes"] > 0
        assert (out / "runs" / f"tiny_s{seed}" / "cont" / "last.pt").exists()  # the continuation trained and saved
        assert all(len(v) == r["n_val"] and all(0 <= d <= 1 for d in v) for v in r["scores"].values())
    splits = [json.loads((out / f"tiny_s{s}.json").read_text())["scores"]["best"] for s in (0, 1)]
    assert splits[0] != splits[1]  # two seeds, two different runs
    table = run.stdout[run.stdout.index("| configuration"):]
    assert "| tiny | 0,1 | best | " in table and "| tiny | 0,1 | last | " in table
    bad = subprocess.run([*cmd[:4], "-s", "NOPE=1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown setting NOPE" in bad.stderr
    # --ensemble rebuilds each seed's split: a model's own score comes back, and averaging it with itself is a no-op
    ens = subprocess.run([*cmd[:3], "--ensemble", "tiny", "tiny", "--seeds", "0", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert ens.returncode == 0, ens.stderr[-2000:]
    for seed, scores in zip((0, 1), splits):
        d = f"{sum(scores) / len(scores):.4f}"
        assert f"seed {seed}: tiny {d}  tiny {d}  average {d}" in ens.stdout
    assert "average minus tiny, paired: +0.0000 ± 0.0000" in ens.stdout
    # NAME:VARIANT picks other weights of a run: the last weights score what the run recorded for them
    ens = subprocess.run([*cmd[:3], "--ensemble", "tiny:last", "tiny", "--seeds", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert ens.returncode == 0, ens.stderr[-2000:]
    last = json.loads((out / "tiny_s0.json").read_text())["scores"]["last"]
    assert f"seed 0: tiny:last {sum(last) / len(last):.4f}  tiny {sum(splits[0]) / len(splits[0]):.4f}" in ens.stdout
    # a model trained on fewer images (TRAIN_FRAC) is scored with its own run's channel stats: its record comes back
    half = subprocess.run([*cmd[:3], "half", "--seeds", "0", "-s", "TRAIN_FRAC=0.5", *cmd[7:], "-s", "AVG_LAST=1"],
                          capture_output=True, text=True, timeout=600)
    assert half.returncode == 0, half.stderr[-2000:]
    half_scores = json.loads((out / "half_s0.json").read_text())["scores"]
    rec = half_scores["best"]
    assert half_scores["avg1"] == half_scores["last"]  # the mean of the last one epoch: the final weights, BN included
    ens = subprocess.run([*cmd[:3], "--ensemble", "tiny", "half", "--seeds", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert ens.returncode == 0, ens.stderr[-2000:]
    assert f"  half {sum(rec) / len(rec):.4f}  average" in ens.stdout
    # --pair: one configuration's variant against another's, seed by seed
    pair = [*cmd[:2], "--summary", str(out), "--pair", "tiny:last", "tiny:best"]
    said = subprocess.run(pair, capture_output=True, text=True, check=True).stdout
    rs = [json.loads((out / f"tiny_s{s}.json").read_text())["scores"] for s in (0, 1)]
    gains = [sum(r["last"]) / len(r["last"]) - sum(r["best"]) / len(r["best"]) for r in rs]
    assert f"paired on seeds 0,1: {gains[0]:+.4f}, {gains[1]:+.4f}; mean {sum(gains) / 2:+.4f}" in said
    # --by-coverage: the same gain per image, by quartile of person coverage; over all pairs (equal n_val per seed)
    # it is the mean of the per-seed gains
    by = subprocess.run([*cmd[:3], "--by-coverage", "tiny:last", "tiny:best", "--out", str(out)],
                        capture_output=True, text=True, timeout=600)
    assert by.returncode == 0, by.stderr[-2000:]
    all_row = by.stdout.split("| all | ")[1]
    assert all_row.startswith(f"{sum(len(r['best']) for r in rs)} | ") and f"| {sum(gains) / 2:+.4f} ± " in all_row
    assert len([line for line in by.stdout.splitlines() if line.startswith("| 0.")]) == 4  # four quartiles
    # --inference: its flip-TTA-at-0.5 row is the run's own record; the other rows are paired with it
    inf = subprocess.run([*cmd[:3], "--inference", "tiny", "--seeds", "0", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert inf.returncode == 0, inf.stderr[-2000:]
    means = json.loads((out / "inference" / "tiny.json").read_text())["means"]
    assert means["best:tta"] == [sum(s) / len(s) for s in splits]
    variants = ("tta", "cc10", "holes10", "cc10_holes10", "notta", "sweep")
    assert set(means) == {f"{w}:{v}" for w in ("best", "last") for v in variants}
    assert "| last | cc10 | " in inf.stdout and "| best | tta | " in inf.stdout
    g = [a - b for a, b in zip(means["last:cc10_holes10"], means["last:cc10"])]
    assert f"last: cc10_holes10 minus cc10, paired: {sum(g) / 2:+.4f}" in inf.stdout
    record = json.loads((out / "inference" / "tiny.json").read_text())
    k, h = record["pp_min"].index, record["pp_hole"].index
    for w in ("best", "last"):  # the threshold grid runs the same function: its cells match the named variants
        for seed, m in enumerate(record["grid"][w]):
            assert abs(m[0][0] - means[f"{w}:tta"][seed]) < 1e-12
            assert abs(m[k(0.1)][0] - means[f"{w}:cc10"][seed]) < 1e-12
            assert abs(m[k(0.1)][h(0.1)] - means[f"{w}:cc10_holes10"][seed]) < 1e-12
    assert "| MIN_COMPONENT \\ MAX_HOLE | 0.0 | 0.05 | 0.1 | 0.2 | 0.3 |" in inf.stdout
    sys.path.insert(0, str(ROOT / "experiments"))
    import selection

    now = k(selection._NB["MIN_COMPONENT"]), h(selection._NB["MAX_HOLE"])  # the notebook's own thresholds
    g = [a[k(1.0)][h(0.2)] - a[now[0]][now[1]] for a in record["grid"]["last"]]
    row = next(line for line in inf.stdout.split("last: minus the notebook's")[1].splitlines()
               if line.startswith("| 1.0 |"))
    assert row.split(" | ")[1 + h(0.2)].startswith(f"{sum(g) / 2:+.4f} (")
    other = json.loads((out / "tiny_s0.json").read_text())
    other.update(name="other", config={**other["config"], "VAL_FRAC": 0.3})
    (out / "other_s0.json").write_text(json.dumps(other))
    bad = subprocess.run([*pair[:-2], "tiny:best", "other:best"], capture_output=True, text=True)
    assert bad.returncode != 0 and "validated on different images" in bad.stderr
    bad = subprocess.run([*cmd[:3], "--by-coverage", "other:best", "tiny:best", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "not the data it ran on" in bad.stderr


def test_checkpoint_averages_are_uniform_means_of_the_last_epochs():
    import torch

    sys.path.insert(0, str(ROOT / "experiments"))
    import selection

    assert selection.averaged(0) == [] and selection.averaged(1) == [1] and selection.averaged(4) == [3, 4]
    assert selection.averaged(10) == [3, 5, 10] and selection.averaged(12) == [3, 5, 10, 12]
    states = [{"w": torch.tensor([float(e), 2.0 * e]), "bn.num_batches_tracked": torch.tensor(10 * e)}
              for e in (1, 2, 3)]
    mean = selection.average_weights(states)
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0]))  # floats averaged
    assert mean["bn.num_batches_tracked"].item() == 30 and mean["bn.num_batches_tracked"].dtype == torch.int64  # last
    half = selection.average_weights([{"w": torch.ones(2, dtype=torch.float16)}, {"w": torch.zeros(2).half()}])
    assert half["w"].dtype == torch.float16 and torch.equal(half["w"], torch.full((2,), 0.5).half())


def test_amp_setting_is_the_notebooks_default_or_bf16_and_nothing_else(demo_root, tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    import selection

    on_gpu = selection.DEVICE.type == "cuda"
    assert selection.run_amp(selection.DEFAULTS) is on_gpu and selection.run_amp({}) is on_gpu  # older results: no key
    assert selection.run_amp(dict(selection.DEFAULTS, AMP="bf16")) == "bf16"
    script = ROOT / "experiments" / "selection.py"
    bad = subprocess.run([sys.executable, str(script), str(demo_root), "x", "-s", "AMP=fp16", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "AMP takes one of auto, bf16, not 'fp16'" in bad.stderr


def test_train_frac_shrinks_training_and_keeps_the_validation_images(demo_root):
    sys.path.insert(0, str(ROOT / "experiments"))
    import selection

    cfg = dict(selection.DEFAULTS, IMG_SIZE=32)
    train, val, whole = selection.split(demo_root, cfg, 0)
    small_train, small_val, small_whole = selection.split(demo_root, dict(cfg, TRAIN_FRAC=0.5), 0)
    assert small_val.indices == val.indices  # the same images score both
    assert set(small_train.indices) < set(train.indices)
    assert abs(len(small_train) - len(train) / 2) <= 4  # rounded per coverage stratum
    assert whole.indices == train.indices == small_whole.indices  # a continuation trains on the whole training side


def test_architecture_candidates_change_only_what_they_claim():
    """RESIDUAL swaps the block (identity shortcut where channels match); DEEP_SUP adds heads seen only in training."""
    import torch

    sys.path.insert(0, str(ROOT / "experiments"))
    import selection

    plain_cls = selection.notebook_unet({})
    res = selection.notebook_unet({"RESIDUAL": True})(base=4)
    blocks = [m for m in res.modules() if isinstance(m, selection.ResidualDoubleConv)]
    assert len(blocks) == 9  # inc, 4 Down, 4 Up: every DoubleConv of the U
    same = selection.ResidualDoubleConv(8, 8)
    assert isinstance(same.shortcut, torch.nn.Identity)
    torch.manual_seed(0)
    ds_cls = selection.notebook_unet({"DEEP_SUP": 1.0})
    ds, plain = ds_cls(base=4).eval(), plain_cls(base=4).eval()
    missing = plain.load_state_dict(ds.state_dict(), strict=False)
    assert set(missing.unexpected_keys) == {f"heads.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    x, y = torch.randn(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    assert torch.equal(ds(x), plain(x)) and ds.aux == []  # inference is the notebook's U-Net, heads unused
    deep_loss, base_loss = selection.DeepSupLoss(ds), selection.NB["DiceBCELoss"]()
    assert torch.equal(deep_loss(ds(x), y), base_loss(ds(x), y))  # eval (validation): main term only
    ds.train()
    out = ds(x)
    assert [a.shape[-1] for a in ds.aux] == [16, 8, 4]  # 1/2, 1/4, 1/8 of the input, finest first
    assert deep_loss(out, y) > base_loss(out, y)  # the aux terms are added in training
    deep = selection.build_unet(dict(selection.DEFAULTS, BASE_CHANNELS=4, DEPTH=5))  # the notebook's depth argument
    assert type(deep).__name__ == "UNet" and deep.depth == len(deep.downs) == 5
    assert selection.build_unet({k: v for k, v in selection.DEFAULTS.items() if k != "DEPTH"}).depth == 4  # old files
    with pytest.raises(SystemExit, match="DEEP_SUP"):
        selection.notebook_unet({"DEEP_SUP": 1.0, "DEPTH": 5})


def test_affine_interp_nearest_warps_images_without_new_values():
    """AFFINE_INTERP=nearest changes how the affine resamples images: bilinear blends pixels, nearest copies them."""
    import torch
    from torchvision import tv_tensors

    sys.path.insert(0, str(ROOT / "experiments"))
    import selection

    torch.manual_seed(0)
    img = torch.randint(1, 3, (3, 32, 32), dtype=torch.uint8) * 100  # only 100 and 200: a blend is a new value
    mask = torch.zeros(1, 32, 32, dtype=torch.uint8)
    mask[:, 8:20, 8:20] = 1
    new_values = {}
    for interp in ("bilinear", "nearest"):
        transform = selection.train_transform(dict(selection.DEFAULTS, AFFINE_INTERP=interp))
        affine = transform.transforms[1].transforms[0]
        assert isinstance(affine, selection.U.v2.RandomAffine)
        affine.degrees = [10.0, 10.0]  # a fixed, visible rotation
        torch.manual_seed(1)
        out_img, out_mask = affine(tv_tensors.Image(img), tv_tensors.Mask(mask))
        new_values[interp] = set(out_img.unique().tolist()) - set(img.unique().tolist()) - {0}  # 0: fill
        assert set(out_mask.unique().tolist()) <= {0, 1}  # masks stay nearest either way
    assert new_values["bilinear"] and not new_values["nearest"]
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "selection.py"), str(ROOT), "x",
                          "-s", "AFFINE_INTERP=cubic"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "AFFINE_INTERP takes one of bilinear, nearest" in bad.stderr
