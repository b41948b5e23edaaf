"""Mode finetune (issue 28) on tiny generated posters, on CPU: the poster recipe learns and keeps
the EMA of its weights, a run interrupted mid-epoch and resumed equals an uninterrupted one, the
decoded posters are reused, the study's recipe stays selectable; the one step every loop runs
(schedule, EMA, precision per backbone and device); the CUDA-only paths where there is a GPU."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from postergenre.data.dataset import load_dataset
from postergenre.distributed import Dist
from postergenre.modeling.epochs import Precision, StepPlan
from postergenre.training import finetune
from postergenre.training.checkpoint import Checkpoints
from postergenre.training.recipe import FINETUNE_PRESETS, Recipe, finetune_plan
from postergenre.training.train import checkpoint_dir, train

from conftest import run

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# The poster recipe, small: 64x64 Lite0, batches of 8 (~5 steps an epoch), an EMA that moves.
SMALL = dict(mode="finetune", backbone="efficientnet_lite0", image_size=64, batch_size=8, ema=0.5, seed=1, workers=0, patience=9)


@pytest.fixture(scope="module")
def tiny_ds(tiny_data):
    return load_dataset(tiny_data)[0]


def history(out) -> list[dict]:
    """Every column of every epoch but the timings."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "posters_per_s")}
            for r in json.loads((out / "history.json").read_text())]


def test_the_poster_recipe_learns_and_records_the_mirror(tiny_ds, tmp_path):
    out = tmp_path / "m"
    train(tiny_ds, Recipe(epochs=3, **SMALL), out, cache_dir=tmp_path / "cache", progress=False)
    rows = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # the loss falls
    assert all(r["posters_per_s"] > 0 and 0 <= r["val_mAP_mirror"] <= 1 for r in rows)  # mirror averaging, measured beside
    cfg = json.loads((out / "config.json").read_text())
    want = {"preset": "poster", "optimizer": "adamw", "lr": 1e-3, "head_lr": 4e-3, "weight_decay": 0.02, "schedule": "cosine",
            "warmup_epochs": 1.0, "augment": True, "mirror_eval": False, "ema": 0.5}
    assert {k: cfg["recipe"][k] for k in want} == want
    assert cfg["preprocess"]["size"] == [64, 64] and cfg["backbone"]["in_artifact"]


def test_the_ema_is_what_is_evaluated_and_saved(tiny_ds, tmp_path, monkeypatch):
    monkeypatch.setattr(Checkpoints, "clear", lambda self: None)  # keep the last checkpoint to look into
    out = tmp_path / "m"
    train(tiny_ds, Recipe(epochs=1, **SMALL), out, cache_dir=tmp_path / "cache", progress=False)
    saved = load_file(str(out / "model.safetensors"))
    ckpt = load_file(str(checkpoint_dir(out) / "epoch-0001" / "tensors.safetensors"))
    state = json.loads((checkpoint_dir(out) / "epoch-0001" / "state.json").read_text())
    assert state["scheduler"]["last_epoch"] == math.ceil(len(json.loads((out / "split.json").read_text())["train"]) / 8)
    ema = {k[len("ema.module."):]: v for k, v in ckpt.items() if k.startswith("ema.module.")}
    raw = {k[len("module."):]: v for k, v in ckpt.items() if k.startswith("module.")}
    assert ema.keys() == raw.keys() and {k for k in saved if not k.startswith("calibration.")} <= ema.keys()
    floats = [k for k in saved if saved[k].is_floating_point() and not k.startswith("calibration.")]
    assert all(torch.equal(saved[k], ema[k]) for k in floats)  # the model saved is the EMA ...
    assert sum(not torch.equal(raw[k], ema[k]) for k in floats) > 0.5 * len(floats)  # ... which is not the raw weights


def test_resume_after_an_interrupted_run_equals_an_uninterrupted_one(tiny_ds, tmp_path, monkeypatch):
    recipe = Recipe(epochs=4, **SMALL)
    train(tiny_ds, recipe, tmp_path / "ref", cache_dir=tmp_path / "cache", progress=False)

    real, calls = finetune.train_epoch, []

    def interrupted(step, batches, loss_of, bar=None):  # epoch 3 stops after one step (mid-epoch, as Ctrl-C)
        calls.append(1)
        if len(calls) < 3:
            return real(step, batches, loss_of, bar)

        def once(b, seen=[]):
            if seen:
                raise KeyboardInterrupt
            seen.append(b)
            return loss_of(b)

        return real(step, batches, once, bar)

    monkeypatch.setattr(finetune, "train_epoch", interrupted)
    out = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_ds, recipe, out, cache_dir=tmp_path / "cache", progress=False)
    assert not out.exists() and (checkpoint_dir(out) / "epoch-0002").is_dir()
    monkeypatch.setattr(finetune, "train_epoch", real)
    train(tiny_ds, recipe, out, cache_dir=tmp_path / "cache", progress=False, resume=True)

    assert history(out) == history(tmp_path / "ref") and len(history(out)) == 4
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (tmp_path / "ref", out))
    assert ca["validation_metrics"] == cb["validation_metrics"] and ca["calibration"] == cb["calibration"]


def test_the_decoded_posters_are_reused(tiny_ds, tmp_path, monkeypatch):
    from postergenre.data import pixel_cache

    decoded = []
    real = pixel_cache.decode_for_model
    monkeypatch.setattr(pixel_cache, "decode_for_model", lambda *a, **k: decoded.append(1) or real(*a, **k))
    cache = tmp_path / "cache"
    recipe = Recipe(epochs=1, **SMALL)
    train(tiny_ds, recipe, tmp_path / "a", cache_dir=cache, progress=False)
    first = len(decoded)
    files = sorted((p.name, p.stat().st_mtime_ns) for p in (cache / "pixels").rglob("*") if p.is_file())
    assert first == len(tiny_ds)  # workers=0: decoded here, each poster once
    train(tiny_ds, recipe, tmp_path / "b", cache_dir=cache, progress=False)
    assert len(decoded) == first  # the second run decodes nothing
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (cache / "pixels").rglob("*") if p.is_file()) == files


def test_micro_batches_accumulate_to_the_whole_batchs_step(tiny_ds, tmp_path):
    """On a CPU a batch runs as micro-batches (a batch of 128 at 384x256 needs over 23 GB); their
    weighted gradients add up to the whole batch's (a model without batch norm: pixels + MLP)."""
    base = dict(mode="finetune", backbone="pixels", image_size=16, batch_size=8, epochs=3, ema=0.5, augment=False, dropout=0.0,
                hidden=16, seed=2, workers=0)
    outs = []
    for micro in (8, 3):
        outs.append(tmp_path / f"m{micro}")
        train(tiny_ds, Recipe(micro_batch=micro, **base), outs[-1], cache_dir=tmp_path / "cache", progress=False)
    a, b = (history(o) for o in outs)
    for k in ("train_loss", "val_loss", "val_mAP", "val_mAP_mirror"):
        assert [r[k] for r in b] == pytest.approx([r[k] for r in a], abs=1e-5), k
    wa, wb = (load_file(str(o / "model.safetensors")) for o in outs)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert Recipe(mode="finetune", device="cpu").resolved().micro_batch == 16
    assert Recipe(mode="finetune", device="cuda").resolved().micro_batch is None  # the whole batch on a GPU


def test_the_studys_recipe_stays_selectable():
    r = Recipe(mode="finetune", preset="study").resolved()
    assert (r.epochs, r.lr, r.head_lr, r.weight_decay, r.batch_size, r.image_size) == (25, 1e-4, None, 0.0, 33, 350)
    assert (r.optimizer, r.schedule, r.ema, r.augment, r.mirror_eval) == ("adam", "constant", 0.0, False, False)
    p = Recipe(mode="finetune").resolved()
    assert p.preset == "poster" and (p.batch_size, p.epochs, p.image_size) == (128, 20, None)  # the backbone's own size
    assert Recipe(mode="finetune", preset="study", lr=3e-4, batch_size=16).resolved().lr == 3e-4  # explicit wins
    assert Recipe().resolved().preset is None and Recipe().resolved().batch_size == 33
    with pytest.raises(ValueError, match="mode finetune takes poster or study"):
        Recipe(mode="frozen", preset="study").resolved()


def test_the_cli_offers_the_recipes(tiny_data, tmp_path):
    res = run("train", "-h")
    assert res.exit_code == 0 and f"[{'|'.join(FINETUNE_PRESETS)}]" in res.stdout and "--compile" in res.stdout
    res = run("train", "--data", tiny_data, "--out", tmp_path / "m", "--mode", "frozen", "--recipe", "study", "-q")
    assert res.exit_code == 2 and "mode finetune takes" in res.stderr
    res = run("train", "--data", tiny_data, "--out", tmp_path / "m", "--mode", "finetune", "--recipe", "STUDY",
              "--backbone", "pixels", "--image-size", "16", "--epochs", "1", "--workers", "0", "--cache-dir", tmp_path / "c", "-q")
    assert res.exit_code == 0, res.output
    recipe = json.loads((tmp_path / "m" / "config.json").read_text())["recipe"]
    assert (recipe["preset"], recipe["optimizer"], recipe["batch_size"], recipe["augment"]) == ("study", "adam", 33, False)


def test_compare_finetune_runs_the_studys_recipe(tiny_ds, tmp_path, monkeypatch):
    from postergenre.study import compare

    seen = []

    def stop(dataset, recipe, *a, **k):
        seen.append(recipe)
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "train", stop)
    with pytest.raises(KeyboardInterrupt):
        compare.compare(tiny_ds, compare.CompareConfig(["pixels"], mode="finetune"), tmp_path, progress=False, log=lambda *_: None)
    assert seen[0].resolved().preset == "study" and seen[0].resolved().image_size == 350


# --- the one step every loop runs ------------------------------------------------------------


def test_warmup_then_cosine_per_step_and_the_heads_own_lr():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)

    net = Net()
    step = StepPlan(lr=1e-3, head_lr=4e-3, schedule="cosine", warmup_epochs=1).build(net, epochs=3, steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append([g["lr"] for g in step.opt.param_groups])
        step.update(lambda x: net.head(net.body(x)).sum(), torch.randn(2, 3))
    body = [b for b, _ in lrs]
    assert body[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear warm-up over the first epoch
    assert all(a > b for a, b in zip(body[3:], body[4:])) and body[-1] < 0.05e-3  # then cosine down, per step
    assert all(h == pytest.approx(4 * b) for b, h in lrs)
    assert len(step.opt.param_groups[1]["params"]) == 2  # the head's weight and bias


def test_rank_batches_split_each_global_batch():
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    single = finetune.rank_batches(36, 12, gen(), Dist())
    ranks = [finetune.rank_batches(36, 12, gen(), Dist(k, 2, k)) for k in range(2)]
    assert len(single) == 3 and all(len(r) == 3 for r in ranks)
    for j, whole in enumerate(single):
        assert sorted(torch.cat([r[j] for r in ranks]).tolist()) == sorted(whole.tolist())


def test_precision_is_chosen_once_from_the_backbones_spec_and_the_device():
    lite = finetune_plan(Recipe(mode="finetune", device="cuda").resolved()).precision
    assert (lite.kind, lite.channels_last) == ("tf32", True)  # EfficientNet-Lite on CUDA: channels_last fp32, TF32
    other = finetune_plan(Recipe(mode="finetune", backbone="pixels", device="cuda").resolved()).precision
    assert other.kind == "bf16" and other.dtype == torch.bfloat16
    cpu = finetune_plan(Recipe(mode="finetune", device="cpu").resolved()).precision
    assert (cpu.kind, cpu.channels_last, cpu.dtype) == ("fp32", True, None)  # CPU: fp32
    assert Precision.choose("bf16", None, "cpu").kind == "fp32"
    with pytest.raises(ValueError):
        Precision.choose("fp8", True, "cuda")


# --- CUDA only ------------------------------------------------------------------------------


@cuda
def test_on_cuda_the_pixels_sit_on_the_gpu_in_channels_last_tf32(tiny_ds, tmp_path, monkeypatch):
    seen = {}
    setup, epoch = finetune._setup, finetune.train_epoch

    def spy_setup(model, pixels, fit):
        step, data = setup(model, pixels, fit)
        seen["where"] = data.store.where
        return step, data

    def spy_epoch(step, batches, loss_of, bar=None):
        seen["tf32"] = torch.backends.cuda.matmul.fp32_precision
        seen["channels_last"] = step.module.backbone.net._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
        seen["kind"] = step.precision.kind
        return epoch(step, batches, loss_of, bar)

    monkeypatch.setattr(finetune, "_setup", spy_setup)
    monkeypatch.setattr(finetune, "train_epoch", spy_epoch)
    before = torch.backends.cuda.matmul.fp32_precision
    train(tiny_ds, Recipe(epochs=1, **(SMALL | {"device": "cuda"})), tmp_path / "m", cache_dir=tmp_path / "c", progress=False)
    assert seen == {"where": "gpu", "tf32": "tf32", "channels_last": True, "kind": "tf32"}
    assert torch.backends.cuda.matmul.fp32_precision == before  # TF32 was on for the run only


@cuda
def test_compile_runs_on_cuda(tiny_ds, tmp_path):
    out = tmp_path / "m"
    train(tiny_ds, Recipe(epochs=2, **(SMALL | {"device": "cuda", "compile": True})), out, cache_dir=tmp_path / "c",
          progress=False)
    assert len(history(out)) == 2
