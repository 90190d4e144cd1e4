"""Helpers of obligatorio.ipynb, its first folded cell in 1.1: edit utils.py, run scripts/sync_notebook.py.

The pipeline, in the notebook's story order: data, metrics, model cost and batch size, training (in one process or
several), inference, submission file, plots. The U-Net, the loss and the training step live in the notebook, where
graders read them; where it runs (packages, the data's location, Kaggle, demo data) is host.py.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import importlib.util
import io
import json
import math
import os
import random
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

with warnings.catch_warnings():  # without ipywidgets tqdm.auto warns; bars are off there anyway (see tqdm below)
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm as _tqdm


# --- Progress bars --------------------------------------------------------------------------------

PROGRESS_BARS = True  # the data-parallel training processes switch their bars off (one line per epoch instead)


def kernel_without_widgets() -> bool:
    """True in a Jupyter kernel without ipywidgets (as under run.sh): tqdm's text bars would print every refresh."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config and importlib.util.find_spec("ipywidgets") is None


def tqdm(*args, **kwargs):
    """tqdm.auto's bar, off where only text would go to a notebook (one line per epoch is printed instead)."""
    disable = kwargs.pop("disable", False) or not PROGRESS_BARS or kernel_without_widgets()
    return _tqdm(*args, **kwargs, disable=disable)


# --- Data: files, decoding, pairing ---------------------------------------------------------------

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
JUNK_NAMES = {"thumbs.db", "desktop.ini"}


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder sorted by name, skipping hidden files, folders and non-images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found; check DATA_DIR points at the competition data")
    files = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower() not in JUNK_NAMES
        and p.suffix.lower() in IMAGE_EXTS
    ]
    return sorted(files, key=_name_key)


def _name_key(p: Path) -> tuple[int, int | str]:
    """Sort numeric names numerically (2.png before 10.png), others alphabetically after them."""
    return (0, int(p.stem)) if p.stem.isdigit() else (1, p.stem)


def pair_files(images_dir: str | Path, masks_dir: str | Path) -> list[tuple[Path, Path]]:
    """Pair images with masks by file stem; raise ValueError naming every unmatched file."""
    images, masks = list_images(images_dir), list_images(masks_dir)
    by_stem = {p.stem: p for p in masks}
    no_mask = [p.name for p in images if p.stem not in by_stem]
    image_stems = {p.stem for p in images}
    no_image = [p.name for p in masks if p.stem not in image_stems]
    if no_mask or no_image:
        raise ValueError(
            f"images in {images_dir} and masks in {masks_dir} do not match: "
            f"{len(no_mask)} image(s) without mask {no_mask[:10]}, {len(no_image)} mask(s) without image "
            f"{no_image[:10]}. Add or remove those files so every image has exactly one mask."
        )
    if not images:
        raise ValueError(f"{images_dir}: no images found (expected .png files)")
    return [(p, by_stem[p.stem]) for p in images]


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image, turning decoder errors into one that names the file."""
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise ValueError(f"{path}: cannot read image ({e}). The file is corrupt or truncated: "
                         f"download it again or delete it (and its mask).") from e
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Read any image (grayscale, RGBA, palette, 16-bit) as an HxWx3 uint8 RGB array."""
    img = _open(Path(path))
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((a / max(a.max(), 1) * 255).round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("RGB"))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask (0/1, 0/255, 16-bit, RGB white-on-black or palette) as an HxW {0,1} uint8 array."""
    img = _open(Path(path))
    a = np.asarray(img)
    if img.mode == "P":  # palette: index 0 is background, any other index is the person
        return (a > 0).astype(np.uint8)
    if a.ndim == 3:  # RGB(A): any bright colour on black; alpha ignored
        a = a[..., :3].max(axis=2)
    top = int(a.max())
    return (a > top / 2).astype(np.uint8) if top > 0 else np.zeros(a.shape, np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    with Image.open(path) as img:
        return img.height, img.width


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 image to size x size with antialiased bilinear interpolation."""
    return np.array(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a {0,1} mask to size x size by area-like bilinear filtering and a 0.5 threshold."""
    m = Image.fromarray(mask * 255).resize((size, size), Image.BILINEAR)
    return (np.asarray(m) > 127).astype(np.uint8)


# --- Data: cached dataset, augmentation, normalisation, split -------------------------------------

def _load_item(args: tuple[Path, Path | None, int]) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Decode one (image, mask) pair, check their sizes agree and resize both."""
    img_path, mask_path, size = args
    img = read_image(img_path)
    mask = None
    if mask_path is not None:
        mask = read_mask(mask_path)
        if mask.shape != img.shape[:2]:
            raise ValueError(f"{img_path} is {img.shape[1]}x{img.shape[0]} but its mask {mask_path} is "
                             f"{mask.shape[1]}x{mask.shape[0]}; they must have the same size.")
        mask = resize_mask(mask, size)
    return resize_image(img, size), mask, img.shape[:2]


class CachedSegDataset(Dataset):
    """(image, mask or None) paths decoded and resized once, kept in RAM as uint8 (test masks: zeros)."""

    def __init__(self, items: Sequence[tuple[Path, Path | None]], size: int,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25),
                 workers: int = 2, progress: bool = True):
        self.items, self.size = list(items), size
        self.set_stats(mean, std)
        n = len(self.items)
        self.images = torch.empty((n, 3, size, size), dtype=torch.uint8)
        self.masks = torch.zeros((n, 1, size, size), dtype=torch.uint8)
        self.orig_sizes: list[tuple[int, int]] = []
        jobs = [(Path(i), Path(m) if m else None, size) for i, m in self.items]
        results = _parallel_map(_load_item, jobs, workers)
        for k, (img, mask, hw) in enumerate(tqdm(results, total=n, desc=f"cache de {n} imágenes a {size} px",
                                                disable=not progress)):
            self.images[k] = torch.from_numpy(img).permute(2, 0, 1)
            if mask is not None:
                self.masks[k, 0] = torch.from_numpy(mask)
            self.orig_sizes.append(hw)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[k], self.masks[k]

    def sample(self, k: int, transform: Callable | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Item k after `transform` (for pictures): (3xSxS uint8 image, 1xSxS uint8 {0,1} mask)."""
        img, mask = tv_tensors.Image(self.images[k]), tv_tensors.Mask(self.masks[k])
        if transform is not None:
            img, mask = transform(img, mask)
        return img.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)

    def set_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Use these per-channel mean/std (0-1 scale) in `normalize`."""
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 image(s) (..., 3, H, W) on any device -> float, scaled to 0-1, minus mean, over std."""
        return (x.float() / 255 - self.mean.to(x.device)) / self.std.to(x.device)

    def to_input(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch on the device -> (normalised float images, float {0,1} masks)."""
        return self.normalize(x), y.float()


def _parallel_map(fn: Callable, jobs: list, workers: int) -> Iterable:
    """map() over a process pool when workers > 1, in order; plain map otherwise."""
    if workers <= 1 or len(jobs) < 8:
        return map(fn, jobs)
    from concurrent.futures import ProcessPoolExecutor
    pool = ProcessPoolExecutor(workers)
    results = pool.map(fn, jobs, chunksize=4)

    def gen():
        try:
            yield from results
        finally:
            pool.shutdown()
    return gen()


def train_transform(strength: float = 1.0,
                    interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR) -> v2.Compose:
    """Joint augmentation of one image + mask: flip, scale/rotate/shift, brightness/contrast/saturation, grayscale."""
    return v2.Compose([
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.RandomAffine(degrees=15 * strength, translate=(0.1 * strength, 0.1 * strength),
                                        scale=(1 - 0.25 * strength, 1 + 0.25 * strength),
                                        interpolation=interpolation)], p=0.7),  # of images; masks: nearest
        # no hue jitter: at 384 px it costs 6.5 of the 9 ms per image and barely changes colours
        v2.RandomApply([v2.ColorJitter(0.3 * strength, 0.3 * strength, 0.3 * strength)], p=0.8),
        v2.RandomGrayscale(p=0.1),
    ])


def augment(x: torch.Tensor, y: torch.Tensor, transform: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the joint v2 `transform` to each (image, mask) of a batch, one random draw each, on their device."""
    pairs = [transform(tv_tensors.Image(img), tv_tensors.Mask(mask)) for img, mask in zip(x, y)]
    return (torch.stack([img.as_subclass(torch.Tensor) for img, _ in pairs]),
            torch.stack([mask.as_subclass(torch.Tensor) for _, mask in pairs]))


def channel_stats(images: torch.Tensor, chunk: int = 128,
                  index: Sequence[int] | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-1 scale) of an N x 3 x H x W uint8 tensor (or its items `index`), in chunks."""
    index = list(range(len(images))) if index is None else list(index)
    total, total_sq = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for lo in range(0, len(index), chunk):
        x = images[index[lo:lo + chunk]].to(torch.float64).div_(255)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    n = len(index) * images[0].numel() / 3
    mean = total / n
    std = (total_sq / n - mean.square()).clamp(min=0).sqrt()
    return mean.tolist(), std.tolist()


def per_image_mean(t: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Mean of each item of an N x ... uint8 tensor (e.g. person coverage of masks), in chunks."""
    return torch.cat([c.flatten(1).float().mean(1) for c in t.split(chunk)])


def coverage_bins(coverages: Sequence[float], n_bins: int = 4) -> np.ndarray:
    """Quantile bin index of each image's person coverage, used to stratify the split."""
    c = np.asarray(coverages, dtype=float)
    edges = np.quantile(c, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, c, side="right")


def stratified_split(strata: Sequence[int], val_frac: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of indices into (train, val) with the same share of each stratum in both."""
    rng = random.Random(seed)
    train, val = [], []
    for s in sorted(set(strata)):
        idx = [i for i, v in enumerate(strata) if v == s]
        rng.shuffle(idx)
        k = round(len(idx) * val_frac)
        val += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(val)


class Subset(Dataset):
    """Some items of a CachedSegDataset; `to_input` augments them with `transform` (training) on the device."""

    def __init__(self, base: CachedSegDataset, indices: Sequence[int], transform: Callable | None = None):
        self.base, self.indices, self.transform = base, list(indices), transform
        self.items = [base.items[i] for i in self.indices]
        self.orig_sizes = [base.orig_sizes[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base[self.indices[k]]

    def sample(self, k: int, transform: Callable | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Item k of the subset after `transform`, as CachedSegDataset.sample."""
        return self.base.sample(self.indices[k], transform)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The base dataset's normalisation."""
        return self.base.normalize(x)

    def to_input(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch on the device -> (normalised float images, float masks), augmented if `transform`."""
        if self.transform is not None:
            x, y = augment(x, y, self.transform)
        return self.base.to_input(x, y)


# --- Metrics ---------------------------------------------------------------------------------------

def dice_score(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> float:
    """Competition Dice of one binary mask pair: 2|A∩B|/(|A|+|B|), 1.0 when both are empty."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} must have the same shape")
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


def dice_per_image(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Competition Dice of each image in a batch of binary masks (N x ...), 1 for empty/empty."""
    p, t = pred.flatten(1).bool(), truth.flatten(1).bool()
    inter, denom = (p & t).sum(1).double(), (p.sum(1) + t.sum(1)).double()
    return torch.where(denom == 0, torch.ones_like(denom), 2 * inter / denom.clamp(min=1))


# --- Model cost and batch size --------------------------------------------------------------------

def forward_cost(model: nn.Module, size: int, bytes_per_value: int = 4) -> tuple[int, float]:
    """(activation bytes, forward GFLOPs) of one size x size image: leaf outputs on the meta device, 2 FLOPs per MAC."""
    total, flops = 0, 0

    def hook(mod: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal total, flops
        if not (isinstance(mod, nn.ReLU) and mod.inplace):
            total += out.numel() * bytes_per_value
        if isinstance(mod, nn.Conv2d):
            flops += 2 * out.numel() * mod.in_channels // mod.groups * math.prod(mod.kernel_size)
        elif isinstance(mod, nn.ConvTranspose2d):
            flops += 2 * _inp[0].numel() * mod.out_channels * math.prod(mod.kernel_size)

    meta = copy.deepcopy(model).to("meta")
    handles = [m.register_forward_hook(hook) for m in meta.modules() if not list(m.children())]
    with torch.no_grad():
        meta(torch.empty(1, 3, size, size, device="meta"))
    for h in handles:
        h.remove()
    return total, flops / 1e9


MIN_STEPS_PER_EPOCH = 48  # the dev photos' 196 training images at batch 4: the batch chosen on validation


def batch_for_data(n_train: int, cap: int, min_steps: int = MIN_STEPS_PER_EPOCH, floor: int = 4) -> int:
    """Largest power-of-two batch <= cap that still makes min_steps updates per epoch (never below floor or cap)."""
    batch = 1
    while batch * 2 <= cap and (n_train // (batch * 2) >= min_steps or batch * 2 <= floor):
        batch *= 2
    return batch


# --- Training -------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) for repeatable runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # the AMP values that force a dtype
CPUINFO = Path("/proc/cpuinfo")  # where Linux lists the CPU's instruction sets


def cpu_has_bf16() -> bool:
    """True when this CPU has bf16 instructions (avx512_bf16 or AMX in /proc/cpuinfo) and oneDNN may use them."""
    try:
        flags = set(CPUINFO.read_text().split())
    except OSError:  # not Linux: unknown, so no
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"}) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def amp_dtype(device: torch.device, amp: bool | str = True) -> torch.dtype | None:
    """Autocast dtype: None for amp False; GPU: True is bf16 on Ampere+, fp16 on older (T4); CPU: bf16 if "bf16"."""
    if not (isinstance(amp, bool) or amp in tuple(AMP_DTYPES)):
        raise ValueError(f"AMP={amp!r}: use True (the GPU's best dtype), False (fp32), \"fp16\" (the T4's dtype, "
                         f"on any GPU) or \"bf16\" (Ampere and newer; on a CPU, opt-in); set it in the notebook's "
                         f"parameters cell")
    if device.type != "cuda":  # the CPU trains in fp32 unless asked for bf16 (its speed depends on the CPU)
        if amp == "bf16" and not cpu_has_bf16():
            raise ValueError("AMP=\"bf16\": this CPU has no bf16 instructions (avx512_bf16 or AMX), so bf16 would be "
                             "emulated, 15x slower than fp32 on an AVX2 CPU: use AMP=True (fp32 on a CPU) in the "
                             "notebook's parameters cell")
        return torch.bfloat16 if amp == "bf16" else None
    if amp is False:
        return None
    ampere = torch.cuda.get_device_capability(device)[0] >= 8
    if amp == "bf16" and not ampere:
        raise ValueError(f"AMP=\"bf16\": {torch.cuda.get_device_name(device)} has no bf16 tensor cores; use AMP=True "
                         f"(fp16 there) in the notebook's parameters cell")
    return AMP_DTYPES[amp] if isinstance(amp, str) else torch.bfloat16 if ampere else torch.float16


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved in every checkpoint."""

    epochs: int = 40
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    edge_weight: float = 0.0  # BCE weight of outline pixels is 1 + this (DiceBCELoss)
    edge_px: int = 1  # the outline band: pixels within this distance of the mask's border, both sides
    amp: bool | str = True  # False, True (bf16 on Ampere+, fp16 on a T4) or "fp16"/"bf16": amp_dtype
    patience: int = 0  # early stopping: epochs without val Dice gain (0: off)
    time_budget_min: float = 0.0  # minutes the plan gave the run's epochs (plan_run; 0: epochs were given)
    model: dict = field(default_factory=dict)  # architecture + data settings a checkpoint must match
    data: dict = field(default_factory=dict)  # how batches are made (batch, augmentation, split); a resume must match


RESUMABLE = ("amp", "patience")  # the only TrainConfig fields a resumed run may change


def config_diff(saved: dict, now: dict) -> dict:
    """{key: (saved value, current value)} for every key whose values differ."""
    return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}


def config_tag(cfg: TrainConfig) -> str:
    """8 hex digits naming everything that defines a run (RESUMABLE fields aside): one RUN_DIR per recipe."""
    recipe = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE}
    return hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:8]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at total_steps."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file then rename, so a crash never leaves a half-written file."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, model_config: dict | None = None) -> dict:
    """Load a checkpoint safely (weights_only) and check it was made with the same model config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there; train first or fix the path")
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state.get("config", {}).get("model", {})
    if model_config is not None and saved != model_config:
        raise ValueError(f"{path} was trained with another configuration (checkpoint vs now: "
                         f"{config_diff(saved, model_config)}). "
                         f"Use the same settings, or a new RUN_DIR to train from scratch.")
    return state


def backward_in_parts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, forward_backward: Callable,
                      opt: torch.optim.Optimizer, state: dict) -> tuple[float, torch.Tensor]:
    """(batch loss, logits) of forward_backward over state["chunks"] parts; an OOM doubles them, a NaN raises."""
    ddp = isinstance(model, DistributedDataParallel)
    while True:
        try:
            total, logits, bad = 0.0, [], None
            parts = list(zip(x.chunk(state["chunks"]), y.chunk(state["chunks"])))
            for k, (xb, yb) in enumerate(parts):
                sync = not ddp or k == len(parts) - 1  # DDP averages the gradients once, after the last part
                with contextlib.nullcontext() if sync else model.no_sync():
                    loss, out = forward_backward(xb, yb)
                if bad is None and not torch.isfinite(loss):
                    bad = f"loss is {loss.item()}"
                    if not ddp:
                        raise TrainingDiverged(bad)
                total += loss.item()
                logits.append(out.detach())
            if ddp and _any_rank(bad is not None, x.device):
                raise TrainingDiverged(bad or "loss is not finite on another process")
            return total, torch.cat(logits)
        except torch.OutOfMemoryError:
            if ddp or state["chunks"] >= len(x):
                raise
            state["chunks"] *= 2
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            print(f"CUDA sin memoria: micro-batch reducido a {math.ceil(len(x) / state['chunks'])} (gradientes "
                  f"acumulados en {state['chunks']} partes, el batch efectivo no cambia)")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, device: torch.device,
             amp: bool | str = True) -> tuple[float, float]:
    """(mean loss, mean per-image Dice at threshold 0.5) at training resolution."""
    model.eval()
    dtype = amp_dtype(device, amp)
    losses, dices = [], []
    for x, y in loader:
        x, y = to_device(x, y, loader, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
        losses.append(loss_fn(out, y).item() * len(x))
        dices.append(dice_per_image(out > 0, y > 0.5))
    n = sum(len(d) for d in dices)
    return float(sum(losses) / n), float(torch.cat(dices).mean())


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True on every process when `flag` is true on at least one (a collective: all must call it)."""
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def to_device(x: torch.Tensor, y: torch.Tensor, loader: DataLoader,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a uint8 batch to the device and make it model input there (the loader's dataset knows how)."""
    x, y = loader.dataset.to_input(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
    return x.contiguous(memory_format=_memory_format(device)), y


def _memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA; not on a CPU, where it makes sums depend on the batch split (docs/experiments.md)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def train(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader | None, cfg: TrainConfig,
          run_dir: str | Path, device: torch.device, *, loss_fn: nn.Module, train_epoch: Callable,
          resume: bool = True, log: Callable[[dict], None] | None = None, chunks: int = 1,
          on_checkpoint: Callable[[dict], None] | None = None, quiet: bool = False) -> dict[str, list[float]]:
    """The epochs: AdamW, warm-up + cosine LR, validation, last.pt/best.pt, resume, early stopping; the history."""
    if val_loader is None and cfg.patience:
        raise ValueError(f"patience={cfg.patience} needs validation data: with val_loader=None use patience=0")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    model.to(device, memory_format=_memory_format(device))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(steps, max(1, int(cfg.warmup_epochs * len(train_loader)))))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(device, cfg.amp) == torch.float16)
    history: dict[str, list[float]] = {k: [] for k in ("train_loss", "val_loss", "train_dice", "val_dice", "lr",
                                                        "train_s")}  # train_s: seconds of the epoch's training
    start, best, stale, state = 0, -1.0, 0, {"chunks": chunks}
    last = run_dir / "last.pt"
    if resume and last.exists():
        ck = load_checkpoint(last, cfg.model)
        diff = {k: v for k, v in config_diff(ck["config"], asdict(cfg)).items() if k not in RESUMABLE}
        if diff:  # the optimizer and LR schedule come back from the checkpoint: a new setting would be ignored
            raise ValueError(f"{last} was made with other training settings (checkpoint vs now: {diff}); resuming "
                             f"would continue the old recipe. Use the same settings, or a new RUN_DIR.")
        for part, key in ((model, "model"), (opt, "optimizer"), (sched, "scheduler"), (scaler, "scaler")):
            part.load_state_dict(ck[key])
        start, best, stale, history = ck["epoch"] + 1, ck["best_dice"], ck["stale"], ck["history"]
        if rank == 0:
            print(f"reanudado desde {last}: {start} épocas hechas"
                  + ("" if val_loader is None else f", mejor Dice de validación {best:.4f}"))
    every = max(1, math.ceil(cfg.epochs / 10))  # about ten lines a training: the curves (6.4) show every epoch
    if rank == 0 and not quiet and every > 1 and start < cfg.epochs:
        print(f"se imprime una de cada {every} épocas (y la última); las curvas muestran todas")
    net = model
    if distributed:  # after loading: DDP starts by copying rank 0's weights to every process
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    for epoch in range(start, cfg.epochs):
        sampler = getattr(train_loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)  # a new shuffle, and a new shard per process, every epoch
        t0 = time.time()
        try:
            tr_loss, tr_dice = train_epoch(net, train_loader, loss_fn, opt, sched, scaler, cfg, device, state, epoch)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e} in epoch {epoch + 1}. Training stopped; the last good checkpoint is {last} "
                                   f"(exists: {last.exists()}). Set AMP=False and resume, or lower LR and train anew "
                                   f"in another RUN_DIR (a resumed run keeps its LR schedule).") from None
        seconds = time.time() - t0  # this process's training time of the epoch, validation not included
        if distributed:  # the epoch's training figures averaged over the processes' shards
            t = torch.tensor([tr_loss, tr_dice], device=device)
            dist.all_reduce(t)
            tr_loss, tr_dice = (t / dist.get_world_size()).tolist()
        if rank != 0:  # rank 0 validates and writes; the others wait for its stop decision
            if _any_rank(False, device):
                break
            continue
        va_loss, va_dice = (math.nan, math.nan) if val_loader is None else evaluate(
            model, val_loader, loss_fn, device, cfg.amp)
        for k, v in zip(history, (tr_loss, va_loss, tr_dice, va_dice, sched.get_last_lr()[0], seconds)):
            history[k].append(v)
        improved = va_dice > best
        best, stale = (va_dice, 0) if improved else (best, stale + 1)
        ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
              "scaler": scaler.state_dict(), "epoch": epoch, "best_dice": best, "stale": stale,
              "history": history, "config": asdict(cfg),
              "gpu_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0}
        save_checkpoint(last, ck)
        if improved:
            save_checkpoint(run_dir / "best.pt", ck)
        if on_checkpoint is not None:
            on_checkpoint(ck)
        stop = bool(cfg.patience and stale >= cfg.patience)  # the one stop inside a schedule: an opt-in
        shown = not quiet and ((epoch + 1) % every == 0 or epoch == start or epoch + 1 == cfg.epochs or stop)
        if shown and val_loader is None:
            print(f"época {epoch + 1:3d}/{cfg.epochs}  pérdida {tr_loss:.4f}  Dice {tr_dice:.4f} (entrenamiento, "
                  f"sin validación)  LR {history['lr'][-1]:.1e}")
        elif shown:
            print(f"época {epoch + 1:3d}/{cfg.epochs}  pérdida {tr_loss:.4f}/{va_loss:.4f}  Dice {tr_dice:.4f}/"
                  f"{va_dice:.4f} (entr./val.)  LR {history['lr'][-1]:.1e}{'  *mejor*' if improved else ''}")
        if log is not None:
            log({k: v[-1] for k, v in history.items()} | {"epoch": epoch + 1})
        if stop:
            print(f"parada temprana: el Dice de validación no mejoró en {cfg.patience} épocas")
        if (_any_rank(stop, device) if distributed else stop):
            break
    return history


def probe_speed(model: nn.Module, train_ds: Subset, val_ds: Subset, cfg: TrainConfig, device: torch.device,
                batch_size: int, *, loss_fn: nn.Module, train_epoch: Callable, steps: int = 6) -> tuple[float, float]:
    """(seconds per training batch, seconds per validation pass), timed on a copy of the model."""
    net = copy.deepcopy(model).to(device, memory_format=_memory_format(device))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(device, cfg.amp) == torch.float16)

    def timed(run: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def batches(n: int) -> DataLoader:
        return DataLoader(Subset(train_ds.base, train_ds.indices[:n * batch_size], train_ds.transform), batch_size)
    steps = max(1, min(steps, len(train_ds) // batch_size - 2))
    state = {"chunks": 1}
    timed(lambda: train_epoch(net, batches(2), loss_fn, opt, sched, scaler, cfg, device, state, 0))  # warm-up
    s_batch = timed(lambda: train_epoch(net, batches(steps), loss_fn, opt, sched, scaler, cfg, device, state, 0))
    s_val = timed(lambda: evaluate(net, DataLoader(val_ds, batch_size), loss_fn, device, cfg.amp))
    return s_batch / steps, s_val


def plan_run(run_dir: str | Path, budget_min: float, probe: Callable[[], tuple[float, float]], batches: int,
             final_batches: int, final_share: float) -> dict:
    """The plan for budget_min minutes: RUN_DIR/plan.json if a session made it, else timed by `probe` and saved."""
    path = Path(run_dir) / "plan.json"
    if path.exists():
        return json.loads(path.read_text())
    s_batch, s_val = probe()
    val_epoch_s, final_epoch_s = batches * s_batch + s_val, final_batches * s_batch
    epochs = max(1, int(60 * budget_min // (val_epoch_s + final_share * final_epoch_s)))
    plan = {"budget_min": budget_min, "s_batch": s_batch, "s_val": s_val, "epochs": epochs,
            "train_min": epochs * val_epoch_s / 60, "final_epochs": round(final_share * epochs),
            "final_min": round(final_share * epochs) * final_epoch_s / 60}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=1))
    return plan


MIN_FINAL_EPOCHS = 4  # a planned final fit shorter than this is skipped: its warm-up alone is one epoch


def replan_final_fit(run_dir: str | Path, plan: dict, history: dict[str, list[float]], batches: int,
                     final_batches: int) -> int:
    """The final fit's epochs at the measured speed (0 under MIN_FINAL_EPOCHS), decided once in plan.json."""
    if not plan.get("final_replanned"):
        s_batch = float(np.median(history["train_s"])) / batches  # this machine's speed, measured epoch by epoch
        used_s = sum(history["train_s"]) + len(history["train_s"]) * plan["s_val"]
        fit = min(plan["final_epochs"], int((60 * plan["budget_min"] - used_s) // (final_batches * s_batch)))
        plan.update(final_epochs=fit if fit >= MIN_FINAL_EPOCHS else 0, final_replanned=True)
        (Path(run_dir) / "plan.json").write_text(json.dumps(plan, indent=1))
    return plan["final_epochs"]


# --- Training in several processes (one per GPU) --------------------------------------------------

COLLECTIVE_TIMEOUT = timedelta(minutes=5)  # a collective that waits longer stops the training processes
PREFLIGHT_S = 120  # seconds the processes get to start, join and train one step together before training


def resolve_backend(backend: str, device: torch.device) -> str:
    """The processes' backend: "auto" is NCCL on GPUs and gloo on a CPU; "gloo" on GPUs lets processes share one."""
    if backend not in ("auto", "nccl", "gloo") or (backend == "nccl" and device.type != "cuda"):
        raise ValueError(f"DDP_BACKEND={backend!r}: use \"auto\", \"gloo\" or, on GPUs, \"nccl\" (parameters cell)")
    return ("nccl" if device.type == "cuda" else "gloo") if backend == "auto" else backend


def resolve_devices(devices: int | str, device: torch.device, backend: str = "auto") -> int:
    """Training processes: "auto" means every visible GPU (1 on CPU); an int forces it (CPU: gloo processes)."""
    if devices == "auto":
        return torch.cuda.device_count() if device.type == "cuda" else 1
    n = int(devices)
    if n < 1:
        raise ValueError(f"DEVICES={devices!r}: use \"auto\" or a number of processes >= 1")
    if device.type == "cuda" and n > torch.cuda.device_count() and resolve_backend(backend, device) == "nccl":
        raise ValueError(f"DEVICES={n} but only {torch.cuda.device_count()} GPU(s) are visible: use DEVICES=\"auto\" "
                         f"or at most {torch.cuda.device_count()} (or DDP_BACKEND=\"gloo\", processes sharing GPUs)")
    return n


def preflight(model: nn.Module, loss_fn: nn.Module, world: int, device: torch.device, strict: bool,
              backend: str = "auto", timeout: float = PREFLIGHT_S) -> int:
    """`world` if that many processes join, all-reduce and train a tiny step together in time; else 1, said aloud."""
    backend = resolve_backend(backend, device)
    failure = _preflight_once(model, loss_fn, world, device.type, backend, timeout)
    if failure and backend == "nccl" and not os.environ.get("NCCL_P2P_DISABLE"):
        print(f"prueba de {world} procesos fallida ({failure}); se reintenta con NCCL_P2P_DISABLE=1")
        os.environ["NCCL_P2P_DISABLE"] = "1"  # the training processes inherit it
        failure = _preflight_once(model, loss_fn, world, device.type, backend, timeout)
    if failure is None:
        print(f"prueba previa: {world} procesos ({backend}) se conectaron y entrenaron un paso juntos")
        return world
    if strict:
        raise RuntimeError(f"DEVICES={world}: the training processes failed their pre-flight check: {failure}. "
                           f"Set DEVICES=1 (or \"auto\") in the parameters cell to train in one process.")
    print("=" * 78 + f"\n  AVISO: la prueba de {world} procesos falló ({failure}).\n  Se entrena en UN proceso "
          f"(DEVICES = 1): más lento, el mismo resultado.\n" + "=" * 78)
    return 1


def _preflight_once(model: nn.Module, loss_fn: nn.Module, world: int, device_type: str, backend: str,
                    timeout: float) -> str | None:
    """One pre-flight of `world` processes: None when all passed, else what failed and where."""
    import cloudpickle
    with tempfile.TemporaryDirectory(prefix="tdl_preflight_") as tmp:
        work = Path(tmp)
        (work / "payload.pkl").write_bytes(cloudpickle.dumps((copy.deepcopy(model).cpu(), loss_fn)))
        args = (world, tmp, _free_port(), device_type, backend, timeout)
        failure = _spawn(_preflight_worker, args, world, timeout=timeout)
        reached = {r: (work / f"step{r}.txt").read_text() if (work / f"step{r}.txt").exists() else "no arrancó"
                   for r in range(world)}
    if failure is None:
        return None
    stuck = ", ".join(f"proceso {r}: {step}" for r, step in reached.items() if step != "listo")
    said = f"sin respuesta en {timeout:.0f} s" if failure == "timeout" else str(failure).strip().splitlines()[-1]
    return f"{said}; último paso alcanzado: {stuck or 'todos'}"


def _preflight_worker(rank: int, world: int, work: str, port: int, device_type: str, backend: str,
                      timeout: float) -> None:
    """One pre-flight process: join the group, all-reduce, one forward/backward under DDP; marks each step it passes."""
    import cloudpickle

    last = ["arrancó"]

    def reached(step: str) -> None:
        last[0] = step
        Path(work, f"step{rank}.txt").write_text(step)
    reached("arrancó")
    model, loss_fn = cloudpickle.loads(Path(work, "payload.pkl").read_bytes())
    device = _join_group(rank, world, port, device_type, backend, timedelta(seconds=timeout))
    cuda = device.type == "cuda"
    try:
        reached("se unió al grupo")
        total = torch.ones(1, device=device)
        dist.all_reduce(total)
        if total.item() != world:
            raise RuntimeError(f"all-reduce gave {total.item()}, not {world}")
        reached("all-reduce")
        if cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model.to(device), device_ids=[device] if cuda else None)
        side = 2 ** getattr(model, "depth", 4) * 2
        x = torch.randn(2, 3, side, side, device=device)
        loss_fn(net(x), (x[:, :1] > 0).float()).backward()  # SyncBatchNorm and the gradients' all-reduce
        reached("paso de entrenamiento")
        dist.barrier()
        reached("listo")
    except Exception as e:  # its own error beside its step: the error spawn reports may be a peer's lost link
        reached(f"{last[0]} ({(str(e).strip() or type(e).__name__).splitlines()[-1]})")
        raise
    finally:
        dist.destroy_process_group()


def train_distributed(model: nn.Module, train_ds: Subset, val_ds: Subset | None, cfg: TrainConfig,
                      run_dir: str | Path, device: torch.device, world: int, batch_size: int, seed: int, *,
                      loss_fn: nn.Module, train_epoch: Callable, resume: bool = True, backend: str = "auto",
                      log: Callable[[dict], None] | None = None) -> dict[str, list[float]]:
    """`train` in `world` DDP processes (NCCL on GPUs, gloo on CPU) with a global `batch_size`; same contract."""
    import cloudpickle
    if batch_size % world:
        raise ValueError(f"BATCH_SIZE={batch_size} does not split over {world} processes: use a multiple of {world}")
    run_dir, per_rank = Path(run_dir), batch_size // world
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "last.pt"
    done_before = len(load_checkpoint(last)["history"]["val_dice"]) if resume and last.exists() else 0
    base = train_ds.base
    work = Path(tempfile.mkdtemp(prefix="tdl_ddp_"))
    try:
        torch.save({"images": base.images, "masks": base.masks}, work / "data.pt")
        images, masks = base.images, base.masks
        base.images = base.masks = None  # the payload carries the rest; the tensors go through data.pt
        try:
            payload = cloudpickle.dumps((copy.deepcopy(model).cpu(), loss_fn, train_epoch, train_ds, val_ds, cfg,
                                         run_dir, seed))
        finally:
            base.images, base.masks = images, masks
        (work / "payload.pkl").write_bytes(payload)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # this kernel's cached blocks (the speed probe) would crowd rank 0's GPU
        chunks, started = 1, time.time()
        while True:
            failure = _run_workers(world, work, resume, chunks, per_rank, device.type, resolve_backend(backend, device))
            if failure is None:
                break
            if failure.get("error") == "oom" and chunks < per_rank:
                chunks *= 2
                print(f"CUDA sin memoria: micro-batch reducido a {math.ceil(per_rank / chunks)} por proceso "
                      f"(gradientes acumulados en {chunks} partes, el batch efectivo no cambia); "
                      f"se reanuda desde {last}")
                resume = resume or (last.exists() and last.stat().st_mtime >= started)
                continue
            if failure.get("error") == "diverged":
                raise TrainingDiverged(failure["message"])
            if failure.get("error") == "oom":
                raise torch.OutOfMemoryError(f"{failure['message']} (micro-batch already 1 per process: lower "
                                             f"IMG_SIZE or BASE_CHANNELS)")
            raise RuntimeError(f"{failure['message']}. The last complete epoch is in {last} (exists: "
                               f"{last.exists()}); run the training cell again to resume from it, with DEVICES=1 "
                               f"(one process) if the processes stopped answering ({COLLECTIVE_TIMEOUT} without a "
                               f"collective).")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ck = load_checkpoint(last, cfg.model)
    model.load_state_dict(ck["model"])
    history = ck["history"]
    if log is not None:
        for e in range(done_before, len(history["val_dice"])):
            log({k: v[e] for k, v in history.items()} | {"epoch": e + 1})
    return history


def _join_group(rank: int, world: int, port: int, device_type: str, backend: str,
                timeout: timedelta) -> torch.device:
    """This process's device (GPU rank % count, or the CPU), once it has joined the group at localhost:port."""
    device = torch.device("cuda", rank % torch.cuda.device_count()) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timeout, device_id=device if backend == "nccl" else None)
    return device


def _free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for the processes' rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker: Callable, args: tuple, world: int, timeout: float | None = None,
           tick: Callable[[], None] | None = None) -> str | Exception | None:
    """worker(rank, *args) in `world` spawned processes: None if all ended well, else the exception or "timeout"."""
    import torch.multiprocessing as mp
    ctx = mp.start_processes(worker, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = None if timeout is None else time.time() + timeout
    try:
        while not ctx.join(timeout=0.5):
            if tick is not None:
                tick()
            if deadline is not None and time.time() > deadline:
                return "timeout"
        return None
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
        return e
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
            p.join()


def _run_workers(world: int, work: Path, resume: bool, chunks: int, per_rank: int, device_type: str,
                 backend: str) -> dict | None:
    """Start the training processes and wait; None when all finished, else what failed: {"error", "message"}."""
    for f in [*work.glob("failure*.json"), *work.glob("out*.txt")]:  # from an earlier launch
        f.unlink()
    log, shown = work / "out0.txt", [0]

    def relay() -> None:  # rank 0's printed lines, shown here: a kernel may not show a child process's output
        text = log.read_text() if log.exists() else ""
        end = text.rfind("\n") + 1
        if end > shown[0]:
            print(text[shown[0]:end], end="", flush=True)
            shown[0] = end
    failure = _spawn(_ddp_worker, (world, str(work), _free_port(), resume, chunks, per_rank, device_type, backend),
                     world, tick=relay)
    relay()
    if failure is None:
        return None
    # what the processes recorded before failing (the one that saw the problem itself first), else the exception
    recorded = [json.loads(f.read_text()) for f in sorted(work.glob("failure*.json"))]
    if recorded:
        return sorted(recorded, key=lambda r: not r["own"])[0]
    return {"error": "died", "message": f"training process {getattr(failure, 'error_index', '?')} failed: "
                                        f"{str(failure).strip()[-2000:]}"}


def _ddp_worker(rank: int, world: int, work: str, port: int, resume: bool, chunks: int, per_rank: int,
                device_type: str, backend: str) -> None:
    """One training process of train_distributed (runs in a fresh interpreter started by spawn)."""
    global PROGRESS_BARS
    PROGRESS_BARS = False
    import cloudpickle
    work_dir = Path(work)
    sys.stdout = sys.stderr = open(work_dir / f"out{rank}.txt", "a", buffering=1)  # rank 0's: relayed by the parent
    model, loss_fn, train_epoch, train_ds, val_ds, cfg, run_dir, seed = cloudpickle.loads(
        (work_dir / "payload.pkl").read_bytes())
    data = torch.load(work_dir / "data.pt", mmap=True, weights_only=True)  # shared pages, no copy per process
    train_ds.base.images, train_ds.base.masks = data["images"], data["masks"]
    seed_everything(seed + rank)  # different augmentation draws on each process
    device = _join_group(rank, world, port, device_type, backend, COLLECTIVE_TIMEOUT)
    cuda = device.type == "cuda"
    try:
        if cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        sampler = DistributedSampler(train_ds, world, rank, shuffle=True, seed=seed)
        train_loader = DataLoader(train_ds, per_rank, sampler=sampler, drop_last=len(sampler) > per_rank,
                                  pin_memory=cuda)
        val_loader = None if val_ds is None else DataLoader(val_ds, per_rank * world, pin_memory=cuda)
        if rank == 0:
            where = f"GPUs ({backend})" if cuda else "procesos de CPU (gloo)"
            print(f"entrenando en {world} {where}, batch {per_rank} por {'GPU' if cuda else 'proceso'}, "
                  f"efectivo {per_rank * world}")
        train(model, train_loader, val_loader, cfg, run_dir, device, loss_fn=loss_fn, train_epoch=train_epoch,
              resume=resume, chunks=chunks)
    except (torch.OutOfMemoryError, TrainingDiverged) as e:
        kind = "oom" if isinstance(e, torch.OutOfMemoryError) else "diverged"
        own = "another process" not in str(e)
        (work_dir / f"failure{rank}.json").write_text(json.dumps({"error": kind, "message": str(e), "own": own}))
        raise
    finally:
        dist.destroy_process_group()


# --- Inference ------------------------------------------------------------------------------------

MULTI_SCALES = (0.75, 1.0, 1.25)  # the multi-scale TTA's input rescalings (docs/experiments.md, Inference)
MULTI_SCALE_FROM = 384  # input side from which inference averages MULTI_SCALES instead of the input size alone


def tta_scales(img_size: int) -> tuple[float, ...]:
    """Input rescalings averaged at inference: MULTI_SCALES from MULTI_SCALE_FROM px up, else (1,)."""
    return MULTI_SCALES if img_size >= MULTI_SCALE_FROM else (1.0,)


@torch.no_grad()
def predict_probs(model: nn.Module, ds: CachedSegDataset | Subset, device: torch.device, tta: bool = True,
                  batch_size: int = 8, amp: bool | str = True,
                  scales: Sequence[float] = (1.0,)) -> Iterable[tuple[int, np.ndarray]]:
    """(index, probability map at the image's own size) per item: averaged logits upsampled, then the sigmoid."""
    model.eval()
    dtype = amp_dtype(device, amp)
    for lo in range(0, len(ds), batch_size):
        idx = list(range(lo, min(lo + batch_size, len(ds))))
        x = ds.normalize(torch.stack([ds.sample(i, None)[0] for i in idx]).to(device))
        x = x.contiguous(memory_format=_memory_format(device))
        logits = sum(_scaled_logits(model, x, s, tta, device, dtype) for s in scales) / len(scales)
        for k, i in enumerate(idx):
            h, w = ds.orig_sizes[i]
            full = F.interpolate(logits[k:k + 1], size=(h, w), mode="bilinear", align_corners=False)
            yield i, torch.sigmoid(full)[0, 0].cpu().numpy()


def _scaled_logits(model: nn.Module, x: torch.Tensor, scale: float, tta: bool, device: torch.device,
                   dtype: torch.dtype | None) -> torch.Tensor:
    """Logits of x resized by `scale` (side rounded to a multiple of 2**model.depth), flip-averaged, at x's size."""
    size = x.shape[-1]
    scaled = size
    if scale != 1:
        if not hasattr(model, "depth"):
            raise AttributeError(f"multi-scale TTA (scale {scale}) needs model.depth, the number of 2x2 poolings, to "
                                 f"round sizes; {type(model).__name__} has none: use scales=(1.0,) or add it")
        step = 2 ** model.depth
        scaled = max(step, round(size * scale / step) * step)
    xs = x if scaled == size else F.interpolate(x, size=(scaled, scaled), mode="bilinear", align_corners=False)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(xs).float()
        if tta:
            logits = (logits + model(xs.flip(-1)).float().flip(-1)) / 2
    return logits if scaled == size else F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def threshold_sweep(model: nn.Module, ds: CachedSegDataset | Subset, device: torch.device,
                    thresholds: Sequence[float], tta: bool = True,
                    scales: Sequence[float] = (1.0,), amp: bool | str = True) -> tuple[np.ndarray, list[float]]:
    """Per-image full-resolution Dice for each threshold (N x T) and each image's true coverage."""
    scores, coverage = np.zeros((len(ds), len(thresholds))), []
    probs = predict_probs(model, ds, device, tta, scales=scales, amp=amp)
    for i, prob in tqdm(probs, total=len(ds), desc="evaluación a tamaño completo", leave=False):
        truth = read_mask(ds.items[i][1]).astype(bool)
        coverage.append(float(truth.mean()))
        for j, t in enumerate(thresholds):
            scores[i, j] = dice_score(prob > t, truth)
    return scores, coverage


def choose_threshold(scores: np.ndarray, thresholds: Sequence[float]) -> tuple[float, int, float, float]:
    """(threshold, best index, paired gain over 0.5, 2 SE): the best replaces 0.5 only if its gain exceeds 2 SE."""
    at_05, best = list(thresholds).index(0.5), int(scores.mean(0).argmax())
    gain = scores[:, best] - scores[:, at_05]  # paired, image by image
    noise = 2 * gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
    return (float(thresholds[best]) if gain.mean() > noise else 0.5), best, float(gain.mean()), float(noise)


def drop_small_components(mask: np.ndarray, min_frac: float) -> np.ndarray:
    """The mask without its 8-connected regions smaller than `min_frac` of the largest one (0: unchanged)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool)) if min_frac > 0 else (None, 0)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # the background
    return (sizes >= min_frac * sizes.max())[labels]


def fill_small_holes(mask: np.ndarray, max_frac: float) -> np.ndarray:
    """The mask with its enclosed background regions smaller than `max_frac` of its area filled (0: unchanged)."""
    if max_frac <= 0:
        return mask
    labels, _ = ndimage.label(~mask)  # background regions, 4-connected (the complement of 8-connected regions)
    small = np.bincount(labels.ravel()) < max_frac * mask.sum()
    small[0] = False  # the mask itself
    small[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = False  # not enclosed
    return mask | small[labels]


def postprocess(mask: np.ndarray, min_component: float, max_hole: float) -> np.ndarray:
    """Section 7's post-process: drop regions under min_component of the largest, then fill holes under max_hole."""
    return fill_small_holes(drop_small_components(mask, min_component), max_hole)


def postprocess_dice(model: nn.Module, ds: CachedSegDataset | Subset, device: torch.device, tta: bool,
                     threshold: float, min_component: float, max_hole: float,
                     scales: Sequence[float] = (1.0,)) -> tuple[np.ndarray, np.ndarray]:
    """Per-image full-resolution Dice at `threshold` without and with `postprocess` (paired)."""
    raw, post = np.zeros(len(ds)), np.zeros(len(ds))
    probs = predict_probs(model, ds, device, tta, scales=scales)
    for i, prob in tqdm(probs, total=len(ds), desc="post-proceso", leave=False):
        truth, mask = read_mask(ds.items[i][1]).astype(bool), prob > threshold
        raw[i] = dice_score(mask, truth)
        post[i] = dice_score(postprocess(mask, min_component, max_hole), truth)
    return raw, post


# --- Submission: RLE, CSV writing, validation -----------------------------------------------------

def rle_encode(mask: np.ndarray) -> str:
    """Run-length encode a binary mask in Fortran (column-major) order with 1-indexed starts."""
    pixels = np.asarray(mask).astype(bool).flatten(order="F").astype(np.int8)
    padded = np.concatenate([[0], pixels, [0]])
    runs = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode `start length ...` (1-indexed, Fortran order) into an HxW uint8 {0,1} mask."""
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    nums = np.array(rle.split(), dtype=np.int64)
    for start, length in zip(nums[::2], nums[1::2]):
        flat[start - 1:start - 1 + length] = 1
    return flat.reshape(shape, order="F")


def submission_order(test_ids: Sequence[str], sample_csv: str | Path | None) -> list[str]:
    """Test ids in sample_submission.csv order when there is one, else as given."""
    if not sample_csv or not Path(sample_csv).is_file():
        return list(test_ids)
    with open(sample_csv, newline="") as f:
        order = [r["id"] for r in csv.DictReader(f)]
    if sorted(order) != sorted(test_ids):
        raise ValueError(f"{sample_csv} lists other ids than the test images folder; check the download")
    return order


def new_submission_path(path: str | Path | None = None, out_dir: str | Path = "submissions") -> Path:
    """A path that does not exist yet: `path`, or a timestamped name in out_dir; `_1`, `_2`... if taken."""
    p = Path(path) if path else Path(out_dir) / f"submission_{datetime.now():%Y%m%d-%H%M%S}.csv"
    candidate, k = p, 0
    while candidate.exists():
        k += 1
        candidate = p.with_name(f"{p.stem}_{k}{p.suffix}")
    if candidate != p and path:
        print(f"{p} ya existe: se escribe {candidate} (nunca se pisa un archivo)")
    candidate.parent.mkdir(parents=True, exist_ok=True)
    return candidate


def write_submission(rows: Iterable[tuple[str, str]], path: str | Path | None = None,
                     out_dir: str | Path = "submissions") -> Path:
    """Write `id,encoded_pixels` rows to a new CSV (never overwriting) and return its path."""
    target = new_submission_path(path, out_dir)
    with open(target, "x", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "encoded_pixels"])
        w.writerows(rows)
    return target


def _check_runs(rle: str, n_pixels: int, rid: str) -> None:
    """Raise ValueError unless `rle` is sorted, non-overlapping, positive runs inside n_pixels."""
    toks = rle.split()
    if len(toks) % 2:
        raise ValueError(f"{rid}: odd number of values in encoded_pixels")
    if not all(t.isdigit() for t in toks):
        raise ValueError(f"{rid}: encoded_pixels must be non-negative integers, got {rle[:40]!r}")
    nums = [int(t) for t in toks]
    prev_end = 0
    for start, length in zip(nums[::2], nums[1::2]):
        if start < 1 or length < 1:
            raise ValueError(f"{rid}: run ({start}, {length}) needs start >= 1 and length >= 1")
        if start <= prev_end:
            raise ValueError(f"{rid}: runs unsorted or overlapping at start {start}")
        prev_end = start + length - 1
        if prev_end > n_pixels:
            raise ValueError(f"{rid}: run ({start}, {length}) goes past the {n_pixels} pixels of the image")


def validate_submission(csv_path: str | Path, test_images_dir: str | Path) -> int:
    """Check a submission against the test images; raise ValueError with the reason, else return rows."""
    sizes = {p.name: image_size(p) for p in list_images(test_images_dir)}
    csv.field_size_limit(2**31 - 1)  # a noisy mask's RLE passes the default 131072 characters
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["id", "encoded_pixels"]:
        raise ValueError(f"{csv_path}: header must be exactly 'id,encoded_pixels'")
    seen: set[str] = set()
    for r in rows[1:]:
        if len(r) != 2:
            raise ValueError(f"{csv_path}: row {r!r} does not have 2 columns")
        rid = r[0]
        if rid in seen:
            raise ValueError(f"{csv_path}: id {rid} appears twice")
        if rid not in sizes:
            raise ValueError(f"{csv_path}: id {rid} is not a file in {test_images_dir}")
        seen.add(rid)
        h, w = sizes[rid]
        _check_runs(r[1], h * w, rid)
    missing = sorted(set(sizes) - seen)
    if missing:
        raise ValueError(f"{csv_path}: {len(missing)} test image(s) have no row, e.g. {missing[:5]}")
    return len(seen)


# --- Plots ----------------------------------------------------------------------------------------

def overlay(img: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 255),
            alpha: float = 0.4, outline: tuple[int, int, int] | None = (255, 255, 0)) -> np.ndarray:
    """The image with the mask painted over it in a translucent colour (cyan) and its outline (yellow)."""
    out = img.astype(np.float32).copy()
    m = np.asarray(mask, dtype=bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.array(color, dtype=np.float32)
    if outline is not None:  # cyan alone hides on some clothes and backgrounds; the outline does not
        out[m & ~ndimage.binary_erosion(m, np.ones((3, 3), bool), iterations=max(1, m.shape[0] // 200))] = outline
    return out.astype(np.uint8)


def error_overlay(img: np.ndarray, pred: np.ndarray, truth: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with true positives green, false positives red and false negatives blue."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    out = img
    for m, c in ((p & t, (0, 200, 0)), (p & ~t, (255, 0, 0)), (~p & t, (0, 80, 255))):
        out = overlay(out, m, c, alpha, outline=None)
    return out


def show_grid(pictures: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int = 4,
              size: float = 3.0, dpi: int = 90):
    """Images in a grid, shown as one JPEG (as PNG, a grid of photos weighs about 1 MB); returns the figure."""
    import matplotlib.pyplot as plt
    nrows = math.ceil(len(pictures) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, pic) in enumerate(zip(axes.flat, pictures)):
        ax.imshow(pic, cmap="gray" if pic.ndim == 2 else None)
        if titles is not None:
            ax.set_title(titles[k], fontsize=9)
    fig.tight_layout()
    ipython = sys.modules.get("IPython")  # imported already when a kernel runs this
    if ipython is None or ipython.get_ipython() is None:
        return fig  # outside a notebook: left open for plt.show()
    from IPython.display import Image as IPyImage
    from IPython.display import display
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=dpi, pil_kwargs={"quality": 85})
    plt.close(fig)
    display(IPyImage(buf.getvalue(), format="jpeg"))
    return fig


def plot_coverage(coverage: np.ndarray, mean_mask: np.ndarray):
    """Histogram of the person's share of each image, and the mean mask (where people are)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].hist(coverage * 100, bins=40)
    axes[0].set(xlabel="píxeles de persona (% de la imagen)", ylabel="imágenes", title="cobertura de la persona")
    heat = axes[1].imshow(mean_mask, cmap="magma", vmin=0, vmax=1)
    axes[1].set(title="máscara media: dónde están las personas", xlabel="x (píxeles)", ylabel="y (píxeles)")
    fig.colorbar(heat, ax=axes[1], label="fracción de imágenes con persona en el píxel")
    fig.tight_layout()
    return fig


def plot_history(history: dict[str, list[float]], cfg: TrainConfig, steps_per_epoch: int):
    """Loss and Dice per epoch (training vs validation), and the learning rate of every step."""
    import matplotlib.pyplot as plt
    ep = np.arange(1, len(history["train_loss"]) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    labels = (("pérdida (escala log)", "pérdida: BCE pesada + Dice suave"), ("Dice", "Dice por imagen, umbral 0.5"))
    for ax, key, (ylabel, title) in zip(axes[:2], ("loss", "dice"), labels):
        ax.plot(ep, history[f"train_{key}"], label="entrenamiento (imágenes aumentadas)")
        ax.plot(ep, history[f"val_{key}"], label="validación")
        ax.set(xlabel="época", ylabel=ylabel, title=title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")  # a first validation loss far above the rest would flatten a linear axis
    steps = cfg.epochs * steps_per_epoch
    schedule = warmup_cosine(steps, max(1, int(cfg.warmup_epochs * steps_per_epoch)))
    t = np.arange(steps)
    axes[2].plot(t / steps_per_epoch, [cfg.lr * schedule(k) for k in t], label="programada, por paso")
    axes[2].plot(ep, history["lr"], "o", ms=3, label="registrada al final de cada época")
    axes[2].set(xlabel="época", ylabel="tasa de aprendizaje", title="rampa lineal y coseno")
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_val_dice(dice: Sequence[float], coverage: Sequence[float]):
    """Distribution of the validation images' Dice, and each image's Dice against the person's coverage."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].hist(dice, bins=30)
    axes[0].set(xlabel="Dice por imagen", ylabel="imágenes", title="distribución del Dice en validación")
    axes[1].scatter(np.asarray(coverage) * 100, dice, s=14, alpha=0.7)
    axes[1].set(xlabel="cobertura de la persona (% de los píxeles)", ylabel="Dice por imagen",
                title="Dice según el tamaño de la persona")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_experiments(curves: dict[str, list[float]]):
    """Each variant's validation Dice per epoch (section 6.5's ladder), in one figure."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for name, dice in curves.items():
        ax.plot(np.arange(1, len(dice) + 1), dice, label=name)
    ax.set(xlabel="época", ylabel="Dice de validación (entrada)", title="escalera de experimentos")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
