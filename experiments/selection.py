"""Honest selection: train a configuration on several seeded train/validation splits of the TRAINING data
and score it on validation only (full-size Dice, as Kaggle computes it). Test answers are never read here.

    python experiments/selection.py DATA NAME --seeds 0 1 2 3 --jobs 2 [-s KEY=VALUE ...]
    python experiments/selection.py --summary experiments/results            # mean ± sd per configuration and variant
    python experiments/selection.py DATA --ensemble A B:last --seeds 0 1  # A's best.pt, B's last weights, averaged
    python experiments/selection.py --summary experiments/results --pair A:last B:best  # one variant vs another
    python experiments/selection.py DATA --inference NAME --seeds 0 1  # post-processes, threshold, TTA
    python experiments/selection.py DATA --by-coverage A:best B:best   # where A wins or loses, by the person's size

Each seed changes the split (stratified by person coverage, as in the notebook), the initialisation and the
augmentation draws. Every run evaluates several inference variants on the same trained weights (paired):
  best       best.pt (by validation Dice at input size), flip TTA: what the notebook does
  best_ms    best.pt, flip TTA at scales 0.75/1/1.25 of the input size
  last       the final weights, flip TTA
  avgN       with -s AVG_LAST=K: the uniform mean of the last N epochs' weights (N = 3, 5, 10 up to K, and K;
             BatchNorm's running statistics averaged too): averaging the last checkpoints
  cont       with -s CONT_EPOCHS=K: the final weights after K more epochs on the whole training side (a final fit
             that continues the run instead of starting anew; with TRAIN_FRAC < 1 it sees images the run did not)
--inference NAME re-scores NAME's stored runs (best and last weights, no training) against flip TTA at 0.5:
  cc10       regions (8-connected) smaller than 10% of the largest dropped (the notebook's MIN_COMPONENT)
  holes10    enclosed background regions smaller than 10% of the mask filled (the notebook's MAX_HOLE)
  cc10_holes10  both, in that order: the notebook's post-process
  notta      no flip TTA
  sweep      the notebook's threshold rule (section 7), chosen on one half of the validation, scored on the other
  and a grid of the post-process's two thresholds (MIN_COMPONENT in PP_MIN x MAX_HOLE in PP_HOLE), as gains
Defaults are the notebook's CPU configuration (128 px, base 16, 40 epochs, batch 4). Options measured and rejected
before they left the notebook (EMA of the weights, Lovász fine-tuning, progressive resizing) are reproduced at the
commit docs/experiments.md names.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from notebook_code import cells as notebook_cells  # noqa: E402
from notebook_code import definitions  # noqa: E402

import utils as U  # noqa: E402

U.PROGRESS_BARS = False  # one line per epoch
NB = definitions("loss", "step")  # the notebook's loss (DiceBCELoss) and training step (train_one_epoch)


def notebook_parameters() -> dict:
    """The values the notebook's `parameters` cell sets (what a user gets by default)."""
    ns: dict = {}
    for source in notebook_cells("parameters"):
        exec(source, ns)
    return ns


# The dev CPU configuration (128 px, base 16, 40 epochs, batch 4) with the notebook's own recipe: the settings the
# notebook has are read from its parameters cell, so a default changed there is the default here too.
_NB = notebook_parameters()
DEFAULTS = {"IMG_SIZE": 128, "BASE_CHANNELS": 16, "EPOCHS": 40, "BATCH_SIZE": 4,
            **{k: _NB[k] for k in ("LR", "WEIGHT_DECAY", "DROPOUT", "BATCH_NORM", "AUG_STRENGTH", "VAL_FRAC",
                                   "EDGE_WEIGHT", "EDGE_PX")},
            "DICE_WEIGHT": 1.0, "TRAIN_FRAC": 1.0, "RESIDUAL": False, "DEEP_SUP": 0.0, "DEPTH": 4,
            "GRAD_CLIP": 1.0, "CONT_EPOCHS": 0, "CONT_LR": 1e-3, "AFFINE_INTERP": "bilinear", "AVG_LAST": 0,
            "AMP": "auto"}
# settings that take a word, and the words they take (AMP auto: the notebook's default; bf16: on a CPU too)
CHOICES = {"AFFINE_INTERP": ("bilinear", "nearest"), "AMP": ("auto", "bf16")}
SCALES = U.MULTI_SCALES  # best_ms: the notebook's multi-scale TTA (0.75, 1, 1.25 x the input size)
AVG_NS = (3, 5, 10)  # with AVG_LAST=K: the averages scored (those up to K, and K itself)
PP_MIN = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # --inference: MIN_COMPONENT values (0: off; 1: largest region)
PP_HOLE = (0.0, 0.05, 0.1, 0.2, 0.3)  # and MAX_HOLE values (0: off)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # on a GPU: AMP, as the notebook


def notebook_unet(cfg: dict | None = None) -> type:
    """The UNet class from the notebook's cells tagged `unet` (the model graders read), or an experimental variant.

    cfg RESIDUAL=True swaps DoubleConv for a residual block; DEEP_SUP > 0 adds deep-supervision heads
    (see run_one). Neither is in the notebook: they are candidates measured here first. DEPTH is the notebook's
    own `depth` argument (build_unet passes it).
    """
    ns = definitions("unet")
    cfg = cfg or {}
    if cfg.get("RESIDUAL"):
        ns["DoubleConv"] = ResidualDoubleConv  # Down, Up and UNet look the name up when they are built
    if cfg.get("DEEP_SUP"):
        if cfg.get("DEPTH", 4) != 4:
            sys.exit("error: DEEP_SUP's heads are placed for the 4-level U-Net; it cannot be combined with DEPTH")
        return deep_supervised(ns["UNet"])
    return ns["UNet"]


def build_unet(cfg: dict) -> torch.nn.Module:
    """The configuration's U-Net: base, dropout, BatchNorm and depth from cfg (results made before DEPTH: 4)."""
    return notebook_unet(cfg)(**model_config(cfg))


def model_config(cfg: dict) -> dict:
    """The UNet keyword arguments a configuration sets (older result files lack DEPTH: the notebook's 4 levels)."""
    return {"base": cfg["BASE_CHANNELS"], "dropout": cfg["DROPOUT"], "batch_norm": cfg["BATCH_NORM"],
            "depth": cfg.get("DEPTH", 4)}


class ResidualDoubleConv(torch.nn.Module):
    """DoubleConv with an identity (or 1x1 conv + BN) shortcut: ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x))."""

    def __init__(self, in_ch: int, out_ch: int, padding: int = 1, batch_norm: bool = True):
        super().__init__()
        nn = torch.nn
        norm = nn.BatchNorm2d if batch_norm else nn.Identity
        self.block = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=padding, bias=not batch_norm), norm(out_ch),
                                   nn.ReLU(inplace=True),
                                   nn.Conv2d(out_ch, out_ch, 3, padding=padding, bias=not batch_norm), norm(out_ch))
        self.shortcut = (nn.Identity() if in_ch == out_ch else
                         nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=not batch_norm), norm(out_ch)))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.block(x) + self.shortcut(x))


def deep_supervised(unet: type) -> type:
    """A subclass of the notebook's UNet with 1x1 logit heads on the first three Up outputs (1/8, 1/4, 1/2 size).

    In training mode forward() keeps their logits in self.aux (finest first) for DeepSupLoss; eval is unchanged.
    """
    class DeepSupUNet(unet):
        def __init__(self, *args, base: int = 64, **kwargs):
            super().__init__(*args, base=base, **kwargs)
            self.heads = torch.nn.ModuleList(torch.nn.Conv2d(base * 2**i, 1, 1) for i in (3, 2, 1))
            self.aux: list[torch.Tensor] = []

        def forward(self, x):
            skips = [self.inc(x)]
            for down in self.downs:
                skips.append(down(skips[-1]))
            x, aux = self.dropout(skips.pop()), []
            for k, up in enumerate(self.ups):
                x = up(x, skips.pop())
                if self.training and k < len(self.heads):
                    aux.append(self.heads[k](x))
            self.aux = aux[::-1]
            return self.outc(x)

    return DeepSupUNet


class DeepSupLoss(NB["DiceBCELoss"]):
    """The notebook's loss on the main logits + weight * (0.5, 0.25, 0.125) x the same loss on each aux head,
    against the mask area-downsampled to the head's size (in training mode; validation sees the main term)."""

    def __init__(self, model: torch.nn.Module, weight: float = 1.0, **loss_kw):
        super().__init__(**loss_kw)
        self.model, self.weight = model, weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = super().forward(logits, target)
        for k, aux in enumerate(self.model.aux if self.model.training else []):
            small = torch.nn.functional.interpolate(target.float(), size=aux.shape[-2:], mode="area")
            loss = loss + self.weight * 0.5 ** (k + 1) * super().forward(aux, small)
        return loss


def run_amp(cfg: dict) -> bool | str:
    """The notebook's AMP for this run: its default (on a GPU; fp32 on a CPU), or "bf16" (AMP=bf16, on a CPU too)."""
    return "bf16" if cfg.get("AMP") == "bf16" else DEVICE.type == "cuda"  # older result files lack the key


def full_size_dice(model: torch.nn.Module, ds: U.Subset, scales=(1.0,), amp: bool | str = True) -> list[float]:
    """Per-image Dice at each image's own size, flip TTA, threshold 0.5 (inference in the run's AMP dtype)."""
    scores, _ = U.threshold_sweep(model.to(DEVICE), ds, DEVICE, [0.5], tta=True, scales=scales, amp=amp)
    return scores[:, 0].tolist()


def split(data: Path, cfg: dict, seed: int) -> tuple[U.Subset, U.Subset, U.Subset]:
    """The notebook's stratified train/validation split of DATA's training photos for this seed: training (TRAIN_FRAC
    of it), validation, and the whole training side (what a continuation trains on; the same channel stats)."""
    pairs = U.pair_files(data / "train" / "images", data / "train" / "masks")
    full = U.CachedSegDataset(pairs, cfg["IMG_SIZE"], workers=1, progress=False)
    coverage = U.per_image_mean(full.masks).numpy()
    strata = U.coverage_bins(coverage)
    train_idx, val_idx = U.stratified_split(strata, cfg["VAL_FRAC"], seed)
    whole = U.Subset(full, train_idx, train_transform(cfg))
    if cfg.get("TRAIN_FRAC", 1.0) < 1:  # a learning-curve point (older result files lack the key: --ensemble)
        kept, _ = U.stratified_split([strata[i] for i in train_idx], 1 - cfg["TRAIN_FRAC"], seed)
        train_idx = [train_idx[i] for i in kept]
    full.set_stats(*U.channel_stats(full.images, index=train_idx))
    return U.Subset(full, train_idx, train_transform(cfg)), U.Subset(full, val_idx), whole


def train_transform(cfg: dict):
    """The notebook's augmentation (U.train_transform), with the affine warping images by nearest neighbour if
    AFFINE_INTERP=nearest (masks are warped by nearest neighbour either way)."""
    interp = cfg.get("AFFINE_INTERP", "bilinear")  # older result files lack the key
    return U.train_transform(cfg["AUG_STRENGTH"], U.v2.InterpolationMode(interp))


def run_one(data: Path, name: str, seed: int, cfg: dict, out: Path) -> None:
    """Train one seed of one configuration and write its validation scores to out/NAME_sSEED.json."""
    train_ds, val_ds, whole_ds = split(data, cfg, seed)
    U.seed_everything(seed)
    model_cfg = model_config(cfg)
    model = build_unet(cfg)
    tcfg = U.TrainConfig(epochs=cfg["EPOCHS"], lr=cfg["LR"], weight_decay=cfg["WEIGHT_DECAY"], amp=run_amp(cfg),
                         model=model_cfg, dice_weight=cfg["DICE_WEIGHT"], edge_weight=cfg["EDGE_WEIGHT"],
                         edge_px=cfg["EDGE_PX"], grad_clip=cfg["GRAD_CLIP"])
    loss_kw = {"dice_weight": tcfg.dice_weight, "edge_weight": tcfg.edge_weight, "edge_px": tcfg.edge_px}
    loss_fn = NB["DiceBCELoss"](**loss_kw)  # the notebook's loss with the run's weights
    if cfg["DEEP_SUP"]:  # the same loss plus the aux heads' terms
        loss_fn = DeepSupLoss(model, cfg["DEEP_SUP"], **loss_kw)
    step = {"loss_fn": loss_fn, "train_epoch": NB["train_one_epoch"]}
    batch = cfg["BATCH_SIZE"]
    train_loader = DataLoader(train_ds, batch, shuffle=True, drop_last=len(train_ds) > batch)
    run_dir = out / "runs" / f"{name}_s{seed}"
    kept: list[dict] = []  # with AVG_LAST: the last epochs' weights, as U.train saves them to last.pt

    def keep(ck: dict) -> None:
        kept.append({k: v.detach().clone() for k, v in ck["model"].items()})
        del kept[:-cfg["AVG_LAST"]]

    t0 = time.time()
    history = U.train(model, train_loader, DataLoader(val_ds, batch), tcfg, run_dir, DEVICE, resume=False,
                      on_checkpoint=keep if cfg["AVG_LAST"] else None, **step)
    minutes = (time.time() - t0) / 60
    scores = {"last": full_size_dice(model, val_ds, amp=tcfg.amp)}
    for n in averaged(cfg["AVG_LAST"]):
        avg = build_unet(cfg)
        avg.load_state_dict(average_weights(kept[-n:]))
        scores[f"avg{n}"] = full_size_dice(avg, val_ds, amp=tcfg.amp)
    model.load_state_dict(weights(run_dir, "best"))
    scores["best"] = full_size_dice(model, val_ds, amp=tcfg.amp)
    scores["best_ms"] = full_size_dice(model, val_ds, SCALES, amp=tcfg.amp)
    cont_minutes = 0.0
    if cfg["CONT_EPOCHS"]:  # the final fit as a continuation: the last weights train CONT_EPOCHS more on all of `whole`
        model.load_state_dict(weights(run_dir, "last"))
        t0 = time.time()
        U.train(model, DataLoader(whole_ds, batch, shuffle=True, drop_last=len(whole_ds) > batch), None,
                dataclasses.replace(tcfg, epochs=cfg["CONT_EPOCHS"], lr=cfg["CONT_LR"]), run_dir / "cont", DEVICE,
                resume=False, **step)
        cont_minutes = (time.time() - t0) / 60
        scores["cont"] = full_size_dice(model, val_ds, amp=tcfg.amp)
    result = {"name": name, "seed": seed, "config": cfg, "train_minutes": minutes, "cont_minutes": cont_minutes,
              "n_val": len(val_ds),
              "best_epoch": int(np.argmax(history["val_dice"])) + 1, "scores": scores}
    (out / f"{name}_s{seed}.json").write_text(json.dumps(result, indent=1))
    print(f"{name} seed {seed}: " + "  ".join(f"{k} {np.mean(v):.4f}" for k, v in scores.items())
          + f"  ({minutes:.1f} min)", flush=True)


def averaged(k: int) -> list[int]:
    """With AVG_LAST=k, the numbers of last epochs whose mean weights are scored: AVG_NS below k, and k (0: none)."""
    return sorted({n for n in AVG_NS if n < k} | {k}) if k else []


def average_weights(states: list[dict]) -> dict:
    """Uniform mean of state dicts: floating tensors averaged, integer ones (BatchNorm's batch count) the last's."""
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[-1].items()}


def weights(run_dir: Path, variant: str) -> dict:
    """A trained run's weights: best (best.pt) or last (last.pt)."""
    if variant not in ("best", "last"):
        sys.exit(f"unknown variant {variant!r}: use best or last")
    return U.load_checkpoint(run_dir / f"{variant}.pt")["model"]


def split_key(cfg: dict) -> tuple:
    """The settings that make a run's validation inputs: image size, validation share, training share (stats)."""
    return cfg["IMG_SIZE"], cfg["VAL_FRAC"], cfg.get("TRAIN_FRAC", 1.0)


def ensemble(data: Path, names: list[str], seeds: list[int], out: Path) -> None:
    """Validation Dice of each configuration's weights (NAME or NAME:VARIANT, default best.pt) and of their average
    (probabilities), paired by seed."""
    specs = [n.split(":", 1) if ":" in n else (n, "best") for n in names]
    rows = []
    for seed in seeds:
        cfgs = [json.loads((out / f"{n}_s{seed}.json").read_text())["config"] for n, _ in specs]
        # each model sees its own run's validation inputs (size; channel stats follow TRAIN_FRAC), built once per kind
        built: dict[tuple, U.Subset] = {}
        for cfg in cfgs:
            if split_key(cfg) not in built:
                built[split_key(cfg)] = split(data, cfg, seed)[1]
        vals = [built[split_key(cfg)] for cfg in cfgs]
        if any(v.indices != vals[0].indices for v in vals[1:]):
            sys.exit(f"seed {seed}: {' and '.join(names)} were validated on different images")
        probs = []
        for (n, variant), cfg, val_ds in zip(specs, cfgs, vals):
            model = build_unet(cfg)
            model.load_state_dict(weights(out / "runs" / f"{n}_s{seed}", variant))
            probs.append([p for _, p in U.predict_probs(model.to(DEVICE), val_ds, DEVICE, tta=True, amp=run_amp(cfg))])
        truths = [U.read_mask(vals[0].items[i][1]).astype(bool) for i in range(len(vals[0]))]
        one = [np.mean([U.dice_score(p > 0.5, t) for p, t in zip(ps, truths)]) for ps in probs]
        avg = np.mean([U.dice_score(np.mean(ps, 0) > 0.5, t) for *ps, t in zip(*probs, truths)])
        rows.append([*one, avg])
        print(f"seed {seed}: " + "  ".join(f"{n} {d:.4f}" for n, d in zip(names, one)) + f"  average {avg:.4f}")
    r = np.array(rows)
    sd = r.std(0, ddof=1) if len(r) > 1 else np.zeros(r.shape[1])
    print("mean: " + "  ".join(f"{n} {m:.4f} ± {d:.4f}" for n, m, d in zip([*names, "average"], r.mean(0), sd)))
    for what, gain in ((names[0], r[:, -1] - r[:, 0]), ("the better single model", r[:, -1] - r[:, :-1].max(1))):
        print(f"average minus {what}, paired: {spread(gain)}")


def inference(data: Path, name: str, seeds: list[int], out: Path) -> None:
    """Inference variants on NAME's trained runs (best and last weights), per seed's validation images, paired with
    flip TTA at 0.5: post-processes, the notebook's threshold rule cross-fitted on halves, and no TTA."""
    thresholds = np.round(np.arange(0.1, 0.91, 0.05), 2)
    at_05 = list(thresholds).index(0.5)
    rows = {}  # (weights, variant) -> per-seed mean Dice
    grid: dict[str, list] = {}  # weights -> per seed, the PP_MIN x PP_HOLE matrix of mean Dice
    for seed in seeds:
        cfg = json.loads((out / f"{name}_s{seed}.json").read_text())["config"]
        val_ds, amp = split(data, cfg, seed)[1], run_amp(cfg)
        truths = [U.read_mask(val_ds.items[i][1]).astype(bool) for i in range(len(val_ds))]
        for w in ("best", "last"):
            model = build_unet(cfg)
            model.load_state_dict(weights(out / "runs" / f"{name}_s{seed}", w))
            model.to(DEVICE)
            d: dict[str, list[float]] = {"tta": [], "cc10": [], "holes10": [], "cc10_holes10": [], "notta": []}
            sweep = np.zeros((len(val_ds), len(thresholds)))
            pp = np.zeros((len(val_ds), len(PP_MIN), len(PP_HOLE)))  # Dice of U.postprocess(mask, a, b)
            for (i, prob), (_, plain) in zip(U.predict_probs(model, val_ds, DEVICE, tta=True, amp=amp),
                                             U.predict_probs(model, val_ds, DEVICE, tta=False, amp=amp)):
                mask, t = prob > 0.5, truths[i]
                sweep[i] = [U.dice_score(prob > th, t) for th in thresholds]
                for j, a in enumerate(PP_MIN):  # U.postprocess(mask, a, b), the regions dropped once per a
                    kept = U.drop_small_components(mask, a)
                    pp[i, j] = [U.dice_score(U.fill_small_holes(kept, b), t) for b in PP_HOLE]
                d["tta"].append(sweep[i, at_05])
                for v, a, b in (("cc10", 0.1, 0.0), ("holes10", 0.0, 0.1), ("cc10_holes10", 0.1, 0.1)):
                    d[v].append(pp[i, PP_MIN.index(a), PP_HOLE.index(b)])  # the named variants are grid cells
                d["notta"].append(U.dice_score(plain > 0.5, t))
            halves = [np.arange(len(val_ds))[k::2] for k in (0, 1)]  # choose on one half, score the other
            crossed = np.zeros(len(val_ds))
            for pick, score in (halves, halves[::-1]):
                crossed[score] = sweep[score, list(thresholds).index(U.choose_threshold(sweep[pick], thresholds)[0])]
            d["sweep"] = crossed.tolist()
            for v, x in d.items():
                rows.setdefault((w, v), []).append(float(np.mean(x)))
            grid.setdefault(w, []).append(pp.mean(0).tolist())
            print(f"seed {seed} {w}: " + "  ".join(f"{v} {np.mean(x):.4f}" for v, x in d.items()), flush=True)
    (out / "inference").mkdir(exist_ok=True)
    (out / "inference" / f"{name}.json").write_text(json.dumps(
        {"name": name, "seeds": seeds, "means": {f"{w}:{v}": x for (w, v), x in rows.items()},
         "pp_min": list(PP_MIN), "pp_hole": list(PP_HOLE), "grid": grid}, indent=1))
    print(f"\n| weights | variant | validation Dice, mean ± sd over {len(seeds)} seeds | gain over flip TTA at 0.5, "
          f"paired | t | seeds that gain |\n|---|---|---|---|---|---|")
    for (w, v), x in rows.items():
        x, g = np.array(x), np.array(x) - np.array(rows[(w, "tta")])
        t = g.mean() / (g.std(ddof=1) / np.sqrt(len(g))) if len(g) > 1 and g.std() > 0 else float("nan")
        print(f"| {w} | {v} | {x.mean():.4f} ± {x.std(ddof=1) if len(x) > 1 else 0:.4f} | "
              f"{'—' if v == 'tta' else spread(g)} | {'—' if v == 'tta' else f'{t:.1f}'} | "
              f"{'—' if v == 'tta' else f'{(g > 0).sum()}/{len(g)}'} |")
    for w in ("best", "last"):  # the second step of the notebook's post-process, on top of the first
        g = np.array(rows[(w, "cc10_holes10")]) - np.array(rows[(w, "cc10")])
        print(f"{w}: cc10_holes10 minus cc10, paired: {spread(g)}, {(g > 0).sum()}/{len(g)} seeds gain")
    head = "| MIN_COMPONENT \\ MAX_HOLE | " + " | ".join(map(str, PP_HOLE)) + " |\n" + "|---" * (len(PP_HOLE) + 1) + "|"
    for w in ("best", "last"):  # the post-process thresholds: mean gain over none, paired by seed
        m = np.array(grid[w])  # seeds x MIN_COMPONENT x MAX_HOLE
        gain = (m - m[:, :1, :1]).mean(0)
        print(f"\n{w}: U.postprocess(mask, MIN_COMPONENT, MAX_HOLE) minus no post-process, mean over seeds\n{head}")
        for a, row in zip(PP_MIN, gain):
            print(f"| {a} | " + " | ".join(f"{x:+.4f}" for x in row) + " |")
        if _NB["MIN_COMPONENT"] not in PP_MIN or _NB["MAX_HOLE"] not in PP_HOLE:
            print(f"the notebook's ({_NB['MIN_COMPONENT']}, {_NB['MAX_HOLE']}) is not on the grid: add it to "
                  "PP_MIN / PP_HOLE in experiments/selection.py for paired gains over it")
            continue
        now = PP_MIN.index(_NB["MIN_COMPONENT"]), PP_HOLE.index(_NB["MAX_HOLE"])
        g = m - m[:, now[0], now[1]][:, None, None]  # paired gains over the notebook's thresholds
        t = g.mean(0) / (g.std(0, ddof=1) / np.sqrt(len(g)) + 1e-12) if len(g) > 1 else np.zeros(g.shape[1:])
        print(f"\n{w}: minus the notebook's (MIN_COMPONENT, MAX_HOLE) = ({PP_MIN[now[0]]}, {PP_HOLE[now[1]]}), "
              f"paired: mean (t, seeds that gain)\n{head}")
        for a, row, trow, wins in zip(PP_MIN, g.mean(0), t, (g > 0).sum(0)):
            print(f"| {a} | " + " | ".join(f"{x:+.4f} ({tt:.1f}, {k}/{len(g)})" for x, tt, k in zip(row, trow, wins))
                  + " |")


def spread(x: np.ndarray) -> str:
    """'+mean ± sd' of paired gains (sd over seeds; 0 for one seed)."""
    return f"{x.mean():+.4f} ± {x.std(ddof=1) if len(x) > 1 else 0:.4f}"


def load_results(out: Path) -> dict[str, dict[int, dict]]:
    """{configuration: {seed: result}} of the result files in a folder."""
    runs: dict[str, dict[int, dict]] = {}
    for f in sorted(out.glob("*_s*.json")):
        r = json.loads(f.read_text())
        runs.setdefault(r["name"], {})[r["seed"]] = r
    return runs


def common_seeds(out: Path, a: str, b: str) -> tuple[dict, tuple[str, str], tuple[str, str], list[int]]:
    """The results in `out`, CONFIG:VARIANT a and b split in two, and the seeds both configurations have (or stop)."""
    runs = load_results(out)
    (name_a, var_a), (name_b, var_b) = (x.split(":", 1) for x in (a, b))
    seeds = sorted(set(runs.get(name_a, {})) & set(runs.get(name_b, {})))
    if not seeds:
        sys.exit(f"{out}: no seed has results for both {name_a} and {name_b}")
    return runs, (name_a, var_a), (name_b, var_b), seeds


def pair(out: Path, a: str, b: str) -> np.ndarray:
    """Per-seed gain of CONFIG:VARIANT a over b, on the seeds both have: the same validation images, so paired.

    E.g. the final fit's case: the final weights of a run on all training images against the best epoch of a
    run on fewer (`-s TRAIN_FRAC`); both score each seed's same validation images.
    """
    runs, (name_a, var_a), (name_b, var_b), seeds = common_seeds(out, a, b)
    gains = []
    for s in seeds:
        ra, rb = runs[name_a][s], runs[name_b][s]
        if ra["config"]["VAL_FRAC"] != rb["config"]["VAL_FRAC"] or ra["n_val"] != rb["n_val"]:
            sys.exit(f"seed {s}: {name_a} and {name_b} were validated on different images: not a paired comparison")
        gains.append(np.mean(ra["scores"][var_a]) - np.mean(rb["scores"][var_b]))
    g = np.array(gains)
    t = g.mean() / (g.std(ddof=1) / np.sqrt(len(g))) if len(g) > 1 and g.std(ddof=1) > 0 else float("nan")
    print(f"{a} minus {b}, paired on seeds {','.join(map(str, seeds))}: " + ", ".join(f"{x:+.4f}" for x in g)
          + f"; mean {spread(g)} (t {t:.1f}: mean / standard error; {(g > 0).sum()} of {len(g)} seeds gain)")
    return g


def by_coverage(data: Path, out: Path, a: str, b: str) -> None:
    """Per-image gain of CONFIG:VARIANT a over b by quartile of the person's coverage, pooled over the seeds both
    have: where a configuration wins or loses. Each run's validation images are rebuilt from DATA as its split made
    them; an image scored by both on a seed is one pair (an image in several seeds' validation counts each time)."""
    runs, (name_a, var_a), (name_b, var_b), seeds = common_seeds(out, a, b)
    files = U.pair_files(data / "train" / "images", data / "train" / "masks")
    coverage: dict[int, np.ndarray] = {}  # per input size: the split is stratified on coverage at that size

    def scored(r: dict, variant: str) -> dict[int, float]:
        size = r["config"]["IMG_SIZE"]
        if size not in coverage:
            coverage[size] = U.per_image_mean(U.CachedSegDataset(files, size, workers=1, progress=False).masks).numpy()
        _, val = U.stratified_split(U.coverage_bins(coverage[size]), r["config"]["VAL_FRAC"], r["seed"])
        if len(val) != len(r["scores"][variant]):
            sys.exit(f"{r['name']} seed {r['seed']}: {len(r['scores'][variant])} scores, but {data} gives "
                     f"{len(val)} validation images: not the data it ran on")
        return dict(zip(val, r["scores"][variant]))

    rows = []
    for s in seeds:
        da, db = scored(runs[name_a][s], var_a), scored(runs[name_b][s], var_b)
        rows += [(i, da[i], db[i]) for i in sorted(da.keys() & db.keys())]
    cov = coverage[max(coverage)]  # binned on the finer of the two sizes' coverage
    c, ya, yb = (np.array([row[i] for row in rows]) for i in range(3))
    c = cov[c.astype(int)]
    q = np.searchsorted(np.quantile(c, [0.25, 0.5, 0.75]), c, side="right")
    print(f"{a} minus {b}, per image, seeds {','.join(map(str, seeds))}: {len(rows)} pairs")
    print(f"| person coverage | pairs | {b} | {a} | gain, mean ± SE |")
    print("|---|---|---|---|---|")
    for label, m in [*((f"{c[q == k].min():.2f}-{c[q == k].max():.2f}", q == k) for k in range(4) if (q == k).any()),
                     ("all", np.ones_like(c, bool))]:
        g = ya[m] - yb[m]
        print(f"| {label} | {m.sum()} | {yb[m].mean():.4f} | {ya[m].mean():.4f} | "
              f"{g.mean():+.4f} ± {g.std(ddof=1) / np.sqrt(len(g)):.4f} |")


def summary(out: Path, ref: str | None = None) -> None:
    """Mean ± sd over seeds of each configuration's mean validation Dice, per variant, and paired gains."""
    runs = load_results(out)
    print(f"| configuration | seeds | variant | validation Dice, mean ± sd over seeds | gain over `best`, paired | "
          f"gain over {ref or 'a --ref configuration'}, paired on its seeds | training min |")
    print("|---|---|---|---|---|---|---|")

    for name, by_seed in runs.items():
        order = sorted(by_seed)
        rs, seeds = [by_seed[s] for s in order], ",".join(map(str, order))
        common = [s for s in order if s in runs.get(ref, {})]
        for variant in rs[0]["scores"]:
            means = np.array([np.mean(r["scores"][variant]) for r in rs])
            gains = np.array([np.mean(r["scores"][variant]) - np.mean(r["scores"]["best"]) for r in rs])
            sd = f"{means.std(ddof=1):.4f}" if len(rs) > 1 else "—"
            vs_ref = "—"
            if name != ref and common and variant in runs[ref][common[0]]["scores"]:
                vs_ref = spread(np.array([np.mean(by_seed[s]["scores"][variant])
                                          - np.mean(runs[ref][s]["scores"][variant]) for s in common]))
            minutes = np.mean([r["train_minutes"] for r in rs])
            print(f"| {name} | {seeds} | {variant} | {means.mean():.4f} ± {sd} | "
                  f"{'—' if variant == 'best' else spread(gains)} | {vs_ref} | {minutes:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", type=Path, help="folder with train/images and train/masks")
    ap.add_argument("name", nargs="?", help="a name for this configuration")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--jobs", type=int, default=2, help="seeds trained at once (threads are split between them)")
    ap.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help=f"change a setting: {', '.join(DEFAULTS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    ap.add_argument("--summary", type=Path, help="print the table of the results in this folder and stop")
    ap.add_argument("--ref", help="a configuration to compare the others against, paired by seed")
    ap.add_argument("--pair", nargs=2, metavar=("A:VARIANT", "B:VARIANT"),
                    help="with --summary: only the paired gain of one configuration's variant over another's")
    ap.add_argument("--ensemble", nargs="+", metavar="NAME",
                    help="score these trained configurations and their average on each seed's validation, then stop")
    ap.add_argument("--inference", metavar="NAME",
                    help="score inference variants (post-processes, threshold rule, no TTA) of NAME's runs, then stop")
    ap.add_argument("--by-coverage", nargs=2, metavar=("A:VARIANT", "B:VARIANT"),
                    help="per-image gain of A over B by quartile of person coverage (needs DATA), then stop")
    ap.add_argument("--one-seed", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.summary:
        if args.pair:
            return pair(args.summary, *args.pair)
        return summary(args.summary, args.ref)
    if args.ensemble:
        if args.data is None:
            ap.error("DATA is needed with --ensemble")
        return ensemble(args.data, args.ensemble, args.seeds, args.out)
    if args.by_coverage:
        if args.data is None:
            ap.error("DATA is needed with --by-coverage")
        return by_coverage(args.data, args.out, *args.by_coverage)
    if args.inference:
        if args.data is None:
            ap.error("DATA is needed with --inference")
        return inference(args.data, args.inference, args.seeds, args.out)
    if args.data is None or args.name is None:
        ap.error("DATA and NAME are needed (or --summary FOLDER)")
    cfg = dict(DEFAULTS)
    for kv in args.set:
        key, value = kv.split("=", 1)
        if key not in DEFAULTS:
            ap.error(f"unknown setting {key}; known: {', '.join(DEFAULTS)}")
        default = DEFAULTS[key]
        if key in CHOICES:
            if value not in CHOICES[key]:
                ap.error(f"{key} takes one of {', '.join(CHOICES[key])}, not {value!r}")
            cfg[key] = value
        else:
            cfg[key] = (value == "True") if isinstance(default, bool) else type(default)(float(value))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one_seed is not None:
        return run_one(args.data, args.name, args.one_seed, cfg, args.out)
    base = [sys.executable, __file__, str(args.data), args.name, "--out", str(args.out)]
    base += [x for kv in args.set for x in ("-s", kv)]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    pending, running = list(args.seeds), []
    while pending or running:
        while pending and len(running) < args.jobs:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            running.append(subprocess.Popen([*base, "--one-seed", str(pending.pop(0))], env=env))
        time.sleep(2)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode:
                sys.exit(f"a seed failed (exit {p.returncode}): {' '.join(p.args)}")
    summary(args.out, args.ref)


if __name__ == "__main__":
    main()
