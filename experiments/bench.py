"""Speed and memory benchmark: input pipeline, training step, inference + RLE + CSV.

    python experiments/bench.py --data DIR [--size 384] [--base 32] [--batch 16] [--amp fp16]
        [--parts loader,train,memory,infer]
    python experiments/bench.py --data DIR --size 128 --base 16 --batch 4 --steps 40 --parts train,compute  # CPU config

DIR is a competition-layout folder (the Kaggle download, or one made by
../shared/tools/make_dataset.py). Figures are printed as a table and written to --out.
The notebook's pipeline (uint8 cache in RAM, augmentation and normalisation on the device) is
compared with the original student's (PNG decoded, resized, augmented and normalised per item
in 2 DataLoader workers). On CUDA it also measures the default GPU config (AMP, channels_last)
against a fp32 / contiguous / decode-per-item baseline, with peak GPU memory, and the peak
memory of larger sizes and batches. `compute` counts the training step's FLOPs and times a large matmul, the
device's practical ceiling: how far the measured rate is from it, and the least time N training images can take.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from notebook_code import definitions  # noqa: E402

import utils as U  # noqa: E402


class DecodeEveryEpoch(Dataset):
    """What the original student notebook did: decode, resize, augment and normalise the 800x800 PNG per item.

    The decode/resize is the cache's own (`U._load_item`) and `normalize` the cached dataset's, so
    the two pipelines differ only in when that work happens.
    """

    def __init__(self, pairs, size, normalize, transform):
        self.pairs, self.size, self.normalize, self.transform = pairs, size, normalize, transform

    def __len__(self):
        return len(self.pairs)

    def to_input(self, x, y):
        """Items are augmented and normalised in the worker already, as the student notebook did."""
        return x, y

    def __getitem__(self, k):
        img, mask, _ = U._load_item((*self.pairs[k], self.size))
        img, mask = self.transform(tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1)),
                                   tv_tensors.Mask(torch.from_numpy(mask)[None]))
        return self.normalize(img.as_subclass(torch.Tensor)), mask.as_subclass(torch.Tensor).float()


def loader(ds, batch, workers, device) -> DataLoader:
    """The DataLoader a training run would use for this dataset."""
    return DataLoader(ds, batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0, drop_last=True,
                      pin_memory=device.type == "cuda")


def pipeline_rate(ds, batch, workers, device, epochs=2) -> float:
    """Images/s from the dataset to model input on the device (augmentation included), after a warm-up batch."""
    dl = loader(ds, batch, workers, device)
    next(iter(dl))
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x, y in dl:
            x, _ = U.to_device(x, y, dl, device)
            n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def train_rate(model, loader, device, dtype, channels_last, steps, loss_fn) -> tuple[float, float | None]:
    """Training images/s over `steps` optimizer steps, and the peak CUDA memory in GiB."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n, done, t0 = 0, 0, None
    while done < steps + 2:
        for x, y in loader:
            if done == 2:  # skip warm-up steps (cudnn autotune, allocator)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                n, t0 = 0, time.perf_counter()
            x, y = loader.dataset.to_input(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            x = x.contiguous(memory_format=fmt)
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


def matmul_rate(device, dtype, n=2048, reps=20) -> float:
    """GFLOP/s of an n x n matmul in `dtype` on `device`: a practical ceiling for the convolutions' arithmetic."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def peak_step_memory(model: torch.nn.Module, img_size: int, batch: int, device: torch.device,
                     dtype: torch.dtype | None, loss_fn: torch.nn.Module) -> int:
    """Peak CUDA bytes of two real training steps (random data, AdamW, channels_last) at this size and batch."""
    model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-9)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        x = torch.randn(batch, 3, img_size, img_size, device=device).to(memory_format=torch.channels_last)
        y = (torch.rand(batch, 1, img_size, img_size, device=device) > 0.5).float()
        for _ in range(2):
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return torch.cuda.max_memory_allocated(device)
    finally:
        model.zero_grad(set_to_none=True)


def step_peak(model, size, batch, device, dtype, loss_fn) -> float:
    """Peak GiB of two real training steps (random data) at this size and batch; nan when out of memory."""
    try:
        return peak_step_memory(model, size, batch, device, dtype, loss_fn) / 2**30
    except torch.OutOfMemoryError:
        return float("nan")


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
    ap.add_argument("--depth", type=int, default=4, help="as the notebook's DEPTH (Down/Up levels)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes decoding PNGs (cache build; the baseline's DataLoader workers)")
    ap.add_argument("--aug-strength", type=float, default=0.5, help="as the notebook's AUG_STRENGTH")
    ap.add_argument("--amp", choices=("auto", "fp16", "bf16"), default="auto",
                    help="autocast dtype of the default config (auto: bf16 on Ampere+, fp16 on a T4)")
    ap.add_argument("--steps", type=int, default=10, help="training steps timed per config")
    ap.add_argument("--parts", default="loader,train,memory,infer",
                    help="comma-separated subset of loader,train,memory,infer,compute (memory: CUDA only)")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench.json"))
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ns = definitions("parameters", "unet", "loss")  # the notebook's defaults, U-Net and loss
    loss_fn = ns["DiceBCELoss"](edge_weight=ns["EDGE_WEIGHT"], edge_px=ns["EDGE_PX"])

    def unet() -> torch.nn.Module:
        """A fresh notebook U-Net of the benchmarked width and depth."""
        return ns["UNet"](base=a.base, depth=a.depth)

    pairs = U.pair_files(a.data / "train" / "images", a.data / "train" / "masks")
    r: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores",
               "size": a.size, "base": a.base, "depth": a.depth, "batch": a.batch, "workers": a.workers,
               "train images": len(pairs)}
    t0 = time.perf_counter()
    cached = U.CachedSegDataset(pairs, a.size, workers=a.workers, progress=False)
    r["cache build s"] = time.perf_counter() - t0
    mean, std = U.channel_stats(cached.images)
    cached.set_stats(mean, std)
    aug = U.train_transform(a.aug_strength)
    train_cached = U.Subset(cached, range(len(cached)), aug)  # augmented on the device, as in the notebook
    uncached = DecodeEveryEpoch(pairs, a.size, cached.normalize, aug)  # augmented in the workers
    parts = set(a.parts.split(","))
    if "loader" in parts:
        r[f"pipeline img/s cached (aug on {device.type})"] = pipeline_rate(train_cached, a.batch, 0, device)
        r["pipeline img/s decode every epoch"] = pipeline_rate(uncached, a.batch, a.workers, device, epochs=1)
        r["pipeline speed-up"] = r[f"pipeline img/s cached (aug on {device.type})"] / r[
            "pipeline img/s decode every epoch"]

    dtype = {"auto": U.amp_dtype(device), "fp16": torch.float16, "bf16": torch.bfloat16}[a.amp]
    torch.manual_seed(0)
    if "train" in parts:
        r["AMP dtype"] = str(dtype)
        r["train img/s default"], r["peak GiB default"] = train_rate(
            unet(), loader(train_cached, a.batch, 0, device), device, dtype,
            channels_last=device.type == "cuda", steps=a.steps, loss_fn=loss_fn)
    if "train" in parts and device.type == "cpu":  # what channels_last would buy on the CPU (not used there)
        r["train img/s channels_last"], _ = train_rate(unet(), loader(train_cached, a.batch, 0, device), device, dtype,
                                                       channels_last=True, steps=a.steps, loss_fn=loss_fn)
    if "train" in parts and device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False  # a T4 has no TF32: fp32 means fp32
        r["train img/s baseline (fp32, NCHW, decode)"], r["peak GiB baseline"] = train_rate(
            unet(), loader(uncached, a.batch, a.workers, device), device, None,
            channels_last=False, steps=a.steps, loss_fn=loss_fn)
        torch.backends.cudnn.allow_tf32 = True
        r["train speed-up"] = r["train img/s default"] / r["train img/s baseline (fp32, NCHW, decode)"]
    if "compute" in parts:  # the step's arithmetic against the device's matmul rate
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as flops:  # convolutions and matmuls, forward and backward
            unet().to(device)(torch.randn(1, 3, a.size, a.size, device=device)).sum().backward()
        gflop = r["GFLOP per training image (fwd+bwd)"] = flops.get_total_flops() / 1e9
        matmul_dtype = dtype or torch.float32
        ceiling = r[f"matmul GFLOP/s ({matmul_dtype}, 2048x2048)"] = matmul_rate(device, matmul_dtype)
        if "train img/s default" in r:
            rate = r["train GFLOP/s (img/s x GFLOP)"] = r["train img/s default"] * gflop
            r["share of the matmul rate"] = rate / ceiling
    if "memory" in parts and device.type == "cuda":
        for size in (384, 512):
            for batch in (16, 32):
                r[f"peak GiB {size}px batch {batch} ({dtype})"] = step_peak(unet(), size, batch, device, dtype, loss_fn)
    if "infer" in parts:
        model = unet().to(device).eval()
        r["inference+RLE+CSV s (534 imgs, 800x800)"] = inference_time(model, a.data / "test" / "images", a.size,
                                                                       mean, std, device)
    width = max(map(len, r))
    for k, v in r.items():
        print(f"{k:<{width}}  {v:.3g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(r, indent=1, default=float))


if __name__ == "__main__":
    main()
