"""Speed and memory benchmark: input pipeline, training step, inference + RLE + CSV.

    python bench.py --data DIR [--size 384] [--base 32] [--batch 16] [--parts loader,train,infer]

DIR is a competition-layout folder (the Kaggle download, or one made by
../shared/tools/make_dataset.py). Figures are printed as a table and written to --out.
On CUDA it also measures the default GPU config (AMP, channels_last, cached data) against a
baseline (fp32, contiguous tensors, PNGs decoded every epoch) with the peak GPU memory.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

import utils as U


class DecodeEveryEpoch(Dataset):
    """What the original student notebook did: open, decode and resize the 800x800 PNG per item."""

    def __init__(self, pairs, size, mean, std, transform):
        self.pairs, self.size, self.transform = pairs, size, transform
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self):
        return len(self.pairs)

    def normalize(self, x):
        """Items are normalised in the worker already, as the student notebook did."""
        return x

    def __getitem__(self, k):
        img_p, mask_p = self.pairs[k]
        img = torch.from_numpy(U.resize_image(U.read_image(img_p), self.size)).permute(2, 0, 1)
        mask = torch.from_numpy(U.resize_mask(U.read_mask(mask_p), self.size))[None]
        img, mask = self.transform(tv_tensors.Image(img), tv_tensors.Mask(mask))
        x = (img.as_subclass(torch.Tensor).float() / 255 - self.mean) / self.std
        return x, mask.as_subclass(torch.Tensor).float()


def loader_rate(ds, batch, workers, epochs=2) -> float:
    """Images per second through a DataLoader (augmentation included), after one warm-up batch."""
    dl = DataLoader(ds, batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0, drop_last=True)
    next(iter(dl))
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _ in dl:
            n += len(x)
    return n / (time.perf_counter() - t0)


def train_rate(model, loader, device, amp, channels_last, steps) -> tuple[float, float | None]:
    """Training images/s over `steps` optimizer steps, and the peak CUDA memory in GiB."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    dtype = U.amp_dtype(device) if amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = U.DiceBCELoss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n, done, t0 = 0, 0, None
    while done < steps + 2:
        for x, y in loader:
            if done == 2:  # skip warm-up steps (cudnn autotune, allocator)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                n, t0 = 0, time.perf_counter()
            x = loader.dataset.normalize(x.to(device, non_blocking=True)).contiguous(memory_format=fmt)
            y = y.to(device, non_blocking=True).float()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            n, done = n + len(x), done + 1
            if done >= steps + 2:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return n / (time.perf_counter() - t0), peak


def inference_time(model, test_dir, size, mean, std, device, n_images=534) -> float:
    """Seconds to cache, predict (flip TTA), RLE-encode and write a CSV for n_images test images."""
    files = U.list_images(test_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(n_images):  # links cycle through the test images: 534 names, as in the competition
            os.symlink(files[k % len(files)].resolve(), Path(tmp) / f"{k + 1}.png")
        t0 = time.perf_counter()
        test = U.list_images(tmp)
        ds = U.CachedSegDataset([(p, None) for p in test], size, mean, std, progress=False)
        rows = [(test[i].name, U.rle_encode(prob > 0.5)) for i, prob in U.predict_probs(model, ds, device)]
        U.validate_submission(U.write_submission(rows, Path(tmp) / "sub.csv"), tmp)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--steps", type=int, default=10, help="training steps timed per config")
    ap.add_argument("--parts", default="loader,train,infer", help="comma-separated subset of loader,train,infer")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench.json"))
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from tests.conftest import notebook_cells  # the notebook's own U-Net
    ns: dict = {"torch": torch, "nn": torch.nn}
    for src in notebook_cells("unet"):
        exec(src, ns)

    pairs = U.pair_files(a.data / "train" / "images", a.data / "train" / "masks")
    r: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores",
               "size": a.size, "base": a.base, "batch": a.batch, "workers": a.workers, "train images": len(pairs)}
    t0 = time.perf_counter()
    cached = U.CachedSegDataset(pairs, a.size, workers=a.workers, progress=False)
    r["cache build s"] = time.perf_counter() - t0
    mean, std = U.channel_stats(cached.images)
    cached.set_stats(mean, std)
    aug = U.train_transform(a.size)
    train_cached = U.Subset(cached, range(len(cached)), aug)
    uncached = DecodeEveryEpoch(pairs, a.size, mean, std, aug)
    parts = set(a.parts.split(","))
    if "loader" in parts:
        r["loader img/s cached"] = loader_rate(train_cached, a.batch, a.workers)
        r["loader img/s decode every epoch"] = loader_rate(uncached, a.batch, a.workers, epochs=1)
        r["loader speed-up"] = r["loader img/s cached"] / r["loader img/s decode every epoch"]

    def loader(ds):
        return DataLoader(ds, a.batch, shuffle=True, num_workers=a.workers, drop_last=True,
                          pin_memory=device.type == "cuda", persistent_workers=a.workers > 0)

    torch.manual_seed(0)
    if "train" in parts:
        r["train img/s default"], r["peak GiB default"] = train_rate(
            ns["UNet"](base=a.base), loader(train_cached), device, amp=True, channels_last=device.type == "cuda",
            steps=a.steps)
    if "train" in parts and device.type == "cuda":
        r["train img/s baseline (fp32, NCHW, decode)"], r["peak GiB baseline"] = train_rate(
            ns["UNet"](base=a.base), loader(uncached), device, amp=False, channels_last=False, steps=a.steps)
        r["train speed-up"] = r["train img/s default"] / r["train img/s baseline (fp32, NCHW, decode)"]
    if "infer" in parts:
        model = ns["UNet"](base=a.base).to(device).eval()
        r["inference+RLE+CSV s (534 imgs, 800x800)"] = inference_time(model, a.data / "test" / "images", a.size,
                                                                       mean, std, device)
    width = max(map(len, r))
    for k, v in r.items():
        print(f"{k:<{width}}  {v:.3g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(r, indent=1, default=float))


if __name__ == "__main__":
    main()
