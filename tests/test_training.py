"""The training loop: learning, checkpoints, resume, NaN stop, OOM back-off, config checks."""
import json
import pickle

import numpy as np
import pytest
import torch
from support import NB, H, U, recipe
from torch.utils.data import DataLoader

CPU = torch.device("cpu")


def loaders(ds, shuffle=False):
    tr = U.Subset(ds, range(0, 20))
    va = U.Subset(ds, range(20, 24))
    return DataLoader(tr, 4, shuffle=shuffle), DataLoader(va, 4)


def cfg(epochs, **kw):
    return U.TrainConfig(epochs=epochs, lr=3e-3, amp=False, warmup_epochs=0.5, model={"base": 8}, **kw)


def train(model, train_loader, val_loader, config, run_dir, device=CPU, **kw):
    """U.train with the notebook's loss and training step for this config (its cells 6.1 and 6.2)."""
    return U.train(model, train_loader, val_loader, config, run_dir, device, **recipe(config), **kw)


def test_short_training_lowers_loss_and_raises_dice(UNet, demo_ds, tmp_path):
    U.seed_everything(0)
    tr, va = loaders(demo_ds, shuffle=True)
    h = train(UNet(base=8), tr, va, U.TrainConfig(epochs=12, lr=1e-2, amp=False, model={"base": 8}), tmp_path, CPU)
    assert len(h["train_loss"]) == 12
    assert h["train_loss"][-1] < 0.75 * h["train_loss"][0]
    assert max(h["val_dice"][-3:]) > h["val_dice"][0] + 0.1
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    best = U.load_checkpoint(tmp_path / "best.pt", {"base": 8})
    assert best["best_dice"] == pytest.approx(max(h["val_dice"]))


class StopAfter:
    """A `log` callback that interrupts training like a user (KeyboardInterrupt) after n epochs."""

    def __init__(self, n):
        self.n = n

    def __call__(self, row):
        if row["epoch"] == self.n:
            raise KeyboardInterrupt


def test_resume_after_interrupt_matches_an_uninterrupted_run(UNet, demo_ds, tmp_path, capsys):
    tr, va = loaders(demo_ds)
    U.seed_everything(0)
    straight = UNet(base=8)
    h_straight = train(straight, tr, va, cfg(4), tmp_path / "a", CPU)

    U.seed_everything(0)
    with pytest.raises(KeyboardInterrupt):
        train(UNet(base=8), tr, va, cfg(4), tmp_path / "b", CPU, log=StopAfter(2))
    saved = U.load_checkpoint(tmp_path / "b" / "last.pt")
    assert saved["epoch"] == 1  # two epochs done (0-based)
    resumed = UNet(base=8)  # a fresh process would build a fresh model
    h_resumed = train(resumed, tr, va, cfg(4), tmp_path / "b", CPU)
    assert "reanudado desde" in capsys.readouterr().out
    assert h_resumed["lr"] == pytest.approx(h_straight["lr"])
    assert h_resumed["val_loss"] == pytest.approx(h_straight["val_loss"], rel=1e-4)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


class InterruptingLoader:
    """Wraps a loader; raises KeyboardInterrupt in the middle of epoch `epoch` (kernel stop)."""

    def __init__(self, loader, epoch, batch):
        self.loader, self.epoch, self.batch, self.calls = loader, epoch, batch, 0
        self.dataset = loader.dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.calls += 1
        for k, b in enumerate(self.loader):
            if self.calls == self.epoch and k == self.batch:
                raise KeyboardInterrupt
            yield b


def test_interrupt_mid_epoch_keeps_last_checkpoint_and_resumes_there(UNet, demo_ds, tmp_path):
    tr, va = loaders(demo_ds)
    with pytest.raises(KeyboardInterrupt):
        train(UNet(base=8), InterruptingLoader(tr, epoch=3, batch=2), va, cfg(4), tmp_path, CPU)
    best_before = (tmp_path / "best.pt").read_bytes()
    assert U.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    h = train(UNet(base=8), tr, va, cfg(4), tmp_path, CPU)
    assert len(h["val_dice"]) == 4
    if max(h["val_dice"][2:]) <= max(h["val_dice"][:2]):
        assert (tmp_path / "best.pt").read_bytes() == best_before


class Poisoned(torch.nn.Module):
    """Returns NaN logits from the `bad_call`-th forward pass on (as an fp16 overflow would)."""

    def __init__(self, inner, bad_call):
        super().__init__()
        self.inner, self.bad_call, self.calls = inner, bad_call, 0

    def forward(self, x):
        self.calls += self.training
        out = self.inner(x)
        return out * float("nan") if self.training and self.calls >= self.bad_call else out


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_good_checkpoint(UNet, demo_ds, tmp_path):
    tr, va = loaders(demo_ds)
    model = Poisoned(UNet(base=8), bad_call=len(tr) + 3)  # epoch 2, step 3
    with pytest.raises(U.TrainingDiverged, match=r"loss is nan in epoch 2\. .*last good checkpoint"):
        train(model, tr, va, cfg(3), tmp_path, CPU)
    ck = U.load_checkpoint(tmp_path / "last.pt", {"base": 8})
    assert ck["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    fresh = Poisoned(UNet(base=8), bad_call=10**9)
    fresh.load_state_dict(ck["model"])


class OOMAbove(torch.nn.Module):
    """Raises CUDA's OutOfMemoryError for batches larger than `limit`, like a too-full GPU."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        if self.training:
            if len(x) > self.limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            self.sizes.append(len(x))
        return self.inner(x)


def test_cuda_oom_halves_the_micro_batch_and_training_continues(UNet, demo_ds, tmp_path, capsys):
    tr, va = loaders(demo_ds)  # batches of 4
    model = OOMAbove(UNet(base=8), limit=1)
    h = train(model, tr, va, cfg(2), tmp_path, CPU)
    assert len(h["train_loss"]) == 2 and np.isfinite(h["train_loss"]).all()
    out = capsys.readouterr().out
    assert "micro-batch reducido a 2" in out and "micro-batch reducido a 1" in out
    assert model.sizes == [1] * (2 * 20)  # every image of both epochs, one at a time, none skipped


def test_oom_at_batch_one_is_raised(UNet, demo_ds, tmp_path):
    tr, va = loaders(demo_ds)
    with pytest.raises(torch.OutOfMemoryError):
        train(OOMAbove(UNet(base=8), limit=0), tr, va, cfg(1), tmp_path, CPU)


def test_checkpoint_from_another_config_is_a_clear_error(UNet, demo_ds, tmp_path):
    tr, va = loaders(demo_ds)
    train(UNet(base=8), tr, va, cfg(1), tmp_path, CPU)
    with pytest.raises(ValueError, match=r"another configuration.*'base': \(8, 16\).*new RUN_DIR"):
        U.load_checkpoint(tmp_path / "last.pt", {"base": 16})
    other = U.TrainConfig(epochs=1, amp=False, model={"base": 16})
    with pytest.raises(ValueError, match="another configuration"):
        train(UNet(base=16), tr, va, other, tmp_path, CPU)
    with pytest.raises(ValueError, match=r"other training settings.*'epochs': \(1, 3\)"):
        train(UNet(base=8), tr, va, cfg(3), tmp_path, CPU)


def test_resume_refuses_a_changed_recipe_and_allows_the_resumable_settings(UNet, demo_ds, tmp_path, capsys):
    tr, va = loaders(demo_ds)
    data = {"batch_size": 4, "aug_strength": 0.25}
    with pytest.raises(KeyboardInterrupt):
        train(UNet(base=8), tr, va, cfg(3, data=data), tmp_path, CPU, log=StopAfter(1))
    # a lower LR would be silently ignored (the optimizer and scheduler states restore the old one): refused
    lower = U.TrainConfig(epochs=3, lr=1e-3, amp=False, warmup_epochs=0.5, model={"base": 8}, data=data)
    with pytest.raises(ValueError, match=r"'lr': \(0.003, 0.001\).*new RUN_DIR"):
        train(UNet(base=8), tr, va, lower, tmp_path, CPU)
    with pytest.raises(ValueError, match=r"'data': \(\{.*'aug_strength': 0.25.*\}, \{.*'aug_strength': 0.5"):
        train(UNet(base=8), tr, va, cfg(3, data=data | {"aug_strength": 0.5}), tmp_path, CPU)
    assert U.config_tag(cfg(3, data=data)) != U.config_tag(cfg(3, data=data | {"aug_strength": 0.5}))
    assert U.config_tag(lower) != U.config_tag(cfg(3, data=data))
    # patience and AMP may change on resume (and do not change the run's name); a time budget is part of the plan
    assert U.config_tag(cfg(3, data=data, time_budget_min=60.0)) != U.config_tag(cfg(3, data=data))
    relaxed = cfg(3, data=data, patience=5)
    relaxed.amp = True
    assert U.config_tag(relaxed) == U.config_tag(cfg(3, data=data))
    capsys.readouterr()
    h = train(UNet(base=8), tr, va, relaxed, tmp_path, CPU)
    assert "reanudado desde" in capsys.readouterr().out and len(h["train_loss"]) == 3


class Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_checkpoints_load_with_weights_only(tmp_path):
    torch.save({"model": {}, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        U.load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="train first"):
        U.load_checkpoint(tmp_path / "missing.pt")


def test_warmup_cosine_schedule():
    f = U.warmup_cosine(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_amp_dtype_and_batch_finder_on_cpu(monkeypatch):
    assert all(U.amp_dtype(CPU, amp) is None for amp in (True, False, "fp16"))  # a CPU trains in fp32 by default
    monkeypatch.setattr(U, "cpu_has_bf16", lambda: True)
    assert U.amp_dtype(CPU, "bf16") is torch.bfloat16  # unless bf16 is asked for
    monkeypatch.setattr(U, "cpu_has_bf16", lambda: False)  # and the CPU has it: emulated bf16 is 15x slower
    with pytest.raises(ValueError, match="this CPU has no bf16 instructions.*AMP=True.*parameters cell"):
        U.amp_dtype(CPU, "bf16")
    with pytest.raises(ValueError, match="AMP='float16'.*parameters cell"):  # checked on any device
        U.amp_dtype(CPU, "float16")


def test_cpu_bf16_needs_the_instructions_in_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(U, "CPUINFO", tmp_path / "cpuinfo")
    assert not U.cpu_has_bf16()  # no file (not Linux): no
    (tmp_path / "cpuinfo").write_text("processor : 0\nflags : fpu sse2 avx2 fma avx512f avx512_vnni\n")
    assert not U.cpu_has_bf16()
    (tmp_path / "cpuinfo").write_text("processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    assert U.cpu_has_bf16() == torch.ops.mkldnn._is_mkldnn_bf16_supported()  # and oneDNN must agree


@pytest.mark.skipif(not U.cpu_has_bf16(), reason="this CPU has no bf16 instructions: AMP='bf16' refuses it there")
def test_bf16_on_cpu_trains_in_bf16_keeps_fp32_weights_and_predicts_like_fp32(UNet, demo_ds, tmp_path, monkeypatch):
    """AMP="bf16" on a CPU: the convolutions run in bf16, the weights and the loss stay fp32, inference follows AMP."""
    U.seed_everything(0)
    tr, va = loaders(demo_ds, shuffle=True)
    model = UNet(base=8)
    seen = set()
    model.inc.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
    h = train(model, tr, va, U.TrainConfig(epochs=12, lr=1e-2, amp="bf16", model={"base": 8}), tmp_path, CPU)
    assert seen == {torch.bfloat16}
    assert h["train_loss"][-1] < 0.75 * h["train_loss"][0] and max(h["val_dice"][-3:]) > h["val_dice"][0] + 0.1
    last = U.load_checkpoint(tmp_path / "last.pt", {"base": 8})
    assert all(v.dtype == torch.float32 for v in last["model"].values() if v.is_floating_point())
    seen.clear()
    val = U.Subset(demo_ds, range(20, 24))
    bf16 = [p for _, p in U.predict_probs(model, val, CPU, amp="bf16")]
    assert seen == {torch.bfloat16}
    fp32 = [p for _, p in U.predict_probs(model, val, CPU, amp=False)]
    assert all(b.dtype == np.float32 for b in bf16)
    assert max(np.abs(b - f).max() for b, f in zip(bf16, fp32)) < 0.1  # bf16 keeps 8 bits of mantissa
    calls = []
    monkeypatch.setattr(U, "predict_probs", lambda *a, **kw: calls.append(kw["amp"]) or iter([]))
    U.threshold_sweep(model, val, CPU, [0.5], amp="bf16")
    assert calls == ["bf16"]  # the validation sweep infers in the run's dtype too


def test_amp_dtype_per_gpu_generation(monkeypatch):
    """AMP=True picks bf16 from Ampere on and fp16 on a T4; "fp16" forces the T4's dtype anywhere (GPUs simulated)."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    for capability, auto in (((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert U.amp_dtype(cuda) is auto and U.amp_dtype(cuda, True) is auto
        assert U.amp_dtype(cuda, False) is None and U.amp_dtype(cuda, "fp16") is torch.float16
        if capability >= (8, 0):
            assert U.amp_dtype(cuda, "bf16") is torch.bfloat16
        else:
            with pytest.raises(ValueError, match="Tesla T4 has no bf16"):
                U.amp_dtype(cuda, "bf16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_training_with_grad_scaler_on_gpu(UNet, demo_ds, tmp_path):
    """The T4 path (fp16 autocast + GradScaler, channels_last, augmentation on the GPU) on any CUDA card: AMP="fp16"."""
    U.seed_everything(0)
    tr = DataLoader(U.Subset(demo_ds, range(0, 20), U.train_transform(0.5)), 4, shuffle=True, pin_memory=True)
    va = DataLoader(U.Subset(demo_ds, range(20, 24)), 4)
    h = train(UNet(base=8), tr, va, U.TrainConfig(epochs=8, lr=1e-2, amp="fp16", model={"base": 8}), tmp_path,
                torch.device("cuda"))
    assert h["train_loss"][-1] < 0.8 * h["train_loss"][0]
    last = U.load_checkpoint(tmp_path / "last.pt", {"base": 8})
    assert last["scaler"]["scale"] > 0, "the GradScaler state is saved for resume"
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_wandb_is_off_without_a_key(monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert H.init_wandb("p", {}) is None
    assert "sin WANDB_API_KEY" in capsys.readouterr().out


def test_forward_cost_counts_activations_and_flops():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(inplace=True),
                              torch.nn.ConvTranspose2d(8, 2, 2, stride=2))
    act, gflops = U.forward_cost(net, 16)
    assert act == 4 * (8 * 16 * 16 + 2 * 32 * 32)  # in-place ReLU not counted twice
    assert gflops * 1e9 == pytest.approx(2 * 8 * 16 * 16 * 3 * 9 + 2 * 8 * 16 * 16 * 2 * 4)
    assert next(net.parameters()).device.type == "cpu"  # measured on a copy


def test_multiscale_prediction_averages_rescaled_passes(UNet, demo_ds):
    model = UNet(base=8).eval()
    ds = U.Subset(demo_ds, range(2))
    one = dict(U.predict_probs(model, ds, CPU, tta=True))
    same = dict(U.predict_probs(model, ds, CPU, tta=True, scales=(1.0,)))
    multi = dict(U.predict_probs(model, ds, CPU, tta=True, scales=(0.75, 1.0, 1.25)))
    for i in one:
        assert np.array_equal(one[i], same[i]) and multi[i].shape == one[i].shape == ds.orig_sizes[i]
        assert not np.allclose(multi[i], one[i]) and ((multi[i] >= 0) & (multi[i] <= 1)).all()


def test_multiscale_sizes_divide_by_the_unets_poolings(UNet, demo_ds):
    """Each rescaled input is rounded to a multiple of 2**depth: 0.9 x 160 px = 144 would leave a 4.5-px bottom at
    depth 5 (the skips then misalign); it becomes 128. A model that does not say its depth gets an error."""
    ds = U.CachedSegDataset(demo_ds.items[:1], 160, progress=False)
    for depth in (4, 5):
        model, sides = UNet(base=4, depth=depth).eval(), []
        model.register_forward_pre_hook(lambda m, args, seen=sides: seen.append(args[0].shape[-1]))
        (_, prob), = U.predict_probs(model, ds, CPU, tta=False, scales=(0.9, 1.0))
        assert prob.shape == ds.orig_sizes[0] and sides == [144 if depth == 4 else 128, 160]
    with pytest.raises(AttributeError, match="model.depth"):
        list(U.predict_probs(torch.nn.Conv2d(3, 1, 1), ds, CPU, tta=False, scales=(0.9, 1.0)))
    (_, one), = U.predict_probs(torch.nn.Conv2d(3, 1, 1), ds, CPU, tta=False)  # one scale: nothing to round
    assert one.shape == ds.orig_sizes[0]


def test_multiscale_inference_from_384_px_reaches_the_postprocess_check(UNet, demo_ds):
    """The notebook's size rule (chosen on validation: gains at 384 px, losses at 96-128) and section 7's paired
    post-process Dice computed on the same multi-scale probabilities the CSV uses."""
    assert U.tta_scales(128) == U.tta_scales(U.MULTI_SCALE_FROM - 16) == (1.0,)
    assert U.tta_scales(384) == U.tta_scales(512) == (0.75, 1.0, 1.25)
    torch.manual_seed(0)  # an untrained net: some inits predict one class everywhere at every scale
    model, ds = UNet(base=8).eval(), U.Subset(demo_ds, range(2))
    scales = (0.75, 1.0, 1.25)
    raw, post = U.postprocess_dice(model, ds, CPU, True, 0.5, 0.3, 0.1, scales)
    for i, prob in U.predict_probs(model, ds, CPU, tta=True, scales=scales):
        truth = U.read_mask(ds.items[i][1]).astype(bool)
        assert raw[i] == U.dice_score(prob > 0.5, truth)
        assert post[i] == U.dice_score(U.postprocess(prob > 0.5, 0.3, 0.1), truth)
    flat, _ = U.postprocess_dice(model, ds, CPU, True, 0.5, 0.3, 0.1)
    assert not np.array_equal(flat, raw)  # the scales reached the predictions


def test_auto_batch_keeps_enough_updates_per_epoch():
    assert U.batch_for_data(196, 16) == 4  # dev photos: 49 updates per epoch instead of 12
    assert U.batch_for_data(400, 16) == 8  # 50 per epoch
    assert U.batch_for_data(1813, 16) == 16 and U.batch_for_data(1813, 8) == 8  # competition: memory decides
    assert U.batch_for_data(40, 16) == 4  # tiny data: the floor
    assert U.batch_for_data(40, 2) == 2 and U.batch_for_data(5000, 1) == 1  # never more than fits


def test_final_fit_without_validation_follows_the_same_recipe_and_keeps_the_last_weights(UNet, demo_ds, tmp_path,
                                                                                         capsys):
    tr, va = loaders(demo_ds)
    U.seed_everything(0)
    validated = UNet(base=8)
    train(validated, tr, va, cfg(3), tmp_path / "val", CPU)
    validated_last = U.load_checkpoint(tmp_path / "val" / "last.pt")["model"]
    U.seed_everything(0)
    final = UNet(base=8)
    modes = []  # training? flag of every forward pass
    final.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    h = train(final, tr, None, cfg(3), tmp_path / "final", CPU)
    assert modes == [True] * 3 * len(tr)  # nothing is evaluated
    assert len(h["train_loss"]) == 3 and all(np.isfinite(h["train_loss"])) and all(np.isnan(h["val_dice"]))
    assert {p.name for p in (tmp_path / "final").iterdir()} == {"last.pt"}  # no "best" without validation
    ck = U.load_checkpoint(tmp_path / "final" / "last.pt", {"base": 8})
    for k, v in final.state_dict().items():  # the model ends with the last epoch's weights...
        assert torch.equal(v, ck["model"][k])
        assert torch.equal(v, validated_last[k])  # ...the very ones the validated run trained (same data here)
    U.seed_everything(0)
    with pytest.raises(KeyboardInterrupt):
        train(UNet(base=8), tr, None, cfg(3), tmp_path / "again", CPU, log=StopAfter(2))
    resumed = UNet(base=8)
    capsys.readouterr()
    train(resumed, tr, None, cfg(3), tmp_path / "again", CPU)
    said = capsys.readouterr().out
    assert "reanudado desde" in said and "2 épocas hechas\n" in said  # no "best validation Dice" where none exists
    for a, b in zip(final.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    with pytest.raises(ValueError, match="patience=2 needs validation data"):
        train(UNet(base=8), tr, None, cfg(3, patience=2), tmp_path / "p", CPU)


def test_edge_weight_reaches_the_training_loss(UNet, demo_ds, tmp_path, monkeypatch):
    calls = []
    band = NB["edge_band"]  # the notebook's loss looks it up in the notebook's namespace
    monkeypatch.setitem(NB, "edge_band", lambda mask, px=1: calls.append((len(mask), px)) or band(mask, px))
    tr, va = loaders(demo_ds)
    train(UNet(base=8), tr, va, cfg(1, edge_weight=5.0, edge_px=3), tmp_path, CPU)
    assert sum(n for n, _ in calls) == len(tr.dataset) + len(va.dataset)  # every image, once
    assert {px for _, px in calls} == {3} and recipe(cfg(1, edge_weight=5.0, edge_px=3))["loss_fn"].edge_weight == 5


def test_plan_fits_the_budget_and_is_reused_by_a_resumed_session(tmp_path):
    calls = []

    def probe():  # a fake clock: 0.5 s per batch, 3 s per validation pass
        calls.append(1)
        return 0.5, 3.0
    plan = U.plan_run(tmp_path, 10, probe, batches=20, final_batches=24, final_share=1.0)
    epoch_s = 20 * 0.5 + 3 + 24 * 0.5  # a validated epoch and a final-fit epoch
    assert plan["epochs"] == int(600 // epoch_s) == 24 and plan["final_epochs"] == 24
    assert plan["train_min"] + plan["final_min"] <= 10
    assert U.plan_run(tmp_path, 10, probe, 20, 24, 1.0) == plan and len(calls) == 1  # plan.json, no new probe
    half = U.plan_run(tmp_path / "half", 10, probe, 20, 24, 0.5)
    assert half["epochs"] == int(600 // (13 + 0.5 * 12)) and half["final_epochs"] == round(half["epochs"] / 2)
    alone = U.plan_run(tmp_path / "alone", 10, probe, 20, 24, 0.0)
    assert alone["epochs"] == int(600 // 13) and alone["final_epochs"] == 0 and alone["final_min"] == 0


def test_final_fit_is_replanned_once_from_the_measured_speed(tmp_path):
    plan = U.plan_run(tmp_path, 10, lambda: (0.5, 3.0), batches=20, final_batches=24, final_share=1.0)
    on_time = {"train_s": [10.0] * plan["epochs"]}  # 0.5 s per batch, as probed: the plan stands
    for sub in "abc":
        (tmp_path / sub).mkdir()
    assert U.replan_final_fit(tmp_path / "a", dict(plan), on_time, 20, 24) == plan["final_epochs"]
    slow = {"train_s": [15.0] * plan["epochs"]}  # 1.5x slower: fewer final epochs, in the time left
    left_s = 600 - plan["epochs"] * (15 + 3)
    assert U.replan_final_fit(tmp_path / "b", dict(plan), slow, 20, 24) == int(left_s // (24 * 0.75))
    saved = json.loads((tmp_path / "b" / "plan.json").read_text())
    assert saved["final_replanned"] and U.replan_final_fit(tmp_path / "b", saved, on_time, 20, 24) == \
        saved["final_epochs"]  # decided once: a resumed session keeps it
    late = {"train_s": [30.0] * plan["epochs"]}  # the budget is spent: no final fit
    assert U.replan_final_fit(tmp_path / "c", dict(plan), late, 20, 24) == 0
    (tmp_path / "d").mkdir()  # 43 epochs of 10 s + 3 s: 41 s left, 3 final epochs of 12 s: fewer than the minimum
    long_run = {"train_s": [10.0] * 43}
    assert U.replan_final_fit(tmp_path / "d", dict(plan, final_epochs=40), long_run, 20, 24) == 0
    (tmp_path / "e").mkdir()  # 38 epochs: 106 s left, 8 final epochs
    assert U.MIN_FINAL_EPOCHS == 4 and U.replan_final_fit(tmp_path / "e", dict(plan, final_epochs=40),
                                                          {"train_s": [10.0] * 38}, 20, 24) == 8


def test_speed_probe_times_real_steps_and_leaves_the_model_alone(UNet, demo_ds):
    tr, va = U.Subset(demo_ds, range(20)), U.Subset(demo_ds, range(20, 24))
    model = UNet(base=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s_batch, s_val = U.probe_speed(model, tr, va, cfg(3), CPU, 4, steps=2, **recipe(cfg(3)))
    assert s_batch > 0 and s_val > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_long_training_prints_about_ten_epochs_and_a_quiet_one_none(UNet, demo_ds, tmp_path, capsys):
    tr, va = U.Subset(demo_ds, range(4)), U.Subset(demo_ds, range(4, 6))
    h = train(UNet(base=4), DataLoader(tr, 4), DataLoader(va, 2), cfg(12), tmp_path / "a", CPU)
    shown = [int(line.split()[1].split("/")[0]) for line in capsys.readouterr().out.splitlines()
             if line.startswith("época")]
    assert len(h["val_dice"]) == 12 and shown == [1, 2, 4, 6, 8, 10, 12]  # the first, then one in ceil(12 / 10)
    assert all(s > 0 for s in h["train_s"])
    train(UNet(base=4), DataLoader(tr, 4), DataLoader(va, 2), cfg(3), tmp_path / "b", CPU, quiet=True)
    assert "época" not in capsys.readouterr().out
