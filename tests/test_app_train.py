"""Training: reproducibility, resume == uninterrupted, atomic checkpoints, config checks."""
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from unet_fast.app import checkpoint, train
from unet_fast.app.checkpoint import CheckpointError
from unet_fast.app.runtime import RunError
from unet_fast.app.train import ConfigError, TrainConfig


def tiny(tmp_path, name="run", **kw):
    base = dict(image_size=32, train_images=3, val_images=2, base_channels=4, depth=2, tile=60,
                epochs=3, batch=4, tiles_per_epoch=8, lr=3e-3, warmup_steps=2, progress=False,
                examples=2, val_batch=4, out=str(tmp_path / name))
    base.update(kw)
    return TrainConfig(**base)


def _quiet(*a, **k):
    pass


def _state(path):
    return checkpoint.load(path)["model"]


def test_recomputing_the_up_convs_trains_the_same_weights(tmp_path, monkeypatch):
    """--recompute up (UNet(checkpointing="up")) on the cuda backend's kernels, whose concat buffer
    the backward then makes again: the same weights, bit for bit, as keeping it."""
    from unet_fast import backends, ops
    why = backends.available()["cuda"]
    if why is not None:
        pytest.skip(f"cuda: {why}")
    made_again = []
    up_concat = ops.up_concat
    monkeypatch.setattr(ops, "up_concat", lambda *a, **k: (
        made_again.append(not torch.is_grad_enabled()), up_concat(*a, **k))[1])
    states, no_grad_calls = [], []
    for name, recompute in (("keep", "none"), ("again", "up")):
        made_again.clear()
        train.train(tiny(tmp_path, name, epochs=1, backend="cuda", recompute=recompute),
                    log=_quiet)
        states.append(_state(tmp_path / name / "last.pt"))
        no_grad_calls.append(sum(made_again))
    assert no_grad_calls[1] > no_grad_calls[0]   # (validation's are the same: in the backward)
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
    with pytest.raises(ConfigError, match="--recompute must be one of none, up, all, got 'some'"):
        train.validate_config(tiny(tmp_path, "x", recompute="some"))


def test_train_writes_everything_and_is_reproducible(tmp_path):
    r1 = train.train(tiny(tmp_path, "a", epochs=2), log=_quiet)
    out = tmp_path / "a"
    for f in ("last.pt", "best.pt", "metrics.jsonl", "curves.png", "val_examples.png",
              "config.json", "summary.json"):
        assert (out / f).is_file(), f
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert {"train_loss", "val_dice", "val_iou", "val_pixel_error", "lr"} <= set(lines[0])
    assert r1["backend_report"] and set(r1["backend_report"].values()) == {"torch"}
    r2 = train.train(tiny(tmp_path, "b", epochs=2), log=_quiet)
    for k, v in _state(out / "last.pt").items():
        assert torch.equal(v, _state(tmp_path / "b" / "last.pt")[k]), k
    assert r1["final"]["val_dice"] == r2["final"]["val_dice"]


class _Killed(Exception):
    pass


def test_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    train.train(tiny(tmp_path, "full"), log=_quiet)
    # steps per epoch = 8 / 4 = 2: die in the middle of epoch 2 (at its second step)
    calls = {"n": 0}
    real = train._train_step

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Killed()
        return real(*a, **k)

    monkeypatch.setattr(train, "_train_step", dying)
    with pytest.raises(_Killed):
        train.train(tiny(tmp_path, "cut"), log=_quiet)
    monkeypatch.setattr(train, "_train_step", real)
    ck = checkpoint.load(tmp_path / "cut" / "last.pt")
    assert ck["epoch"] == 1
    assert [p.name for p in (tmp_path / "cut").iterdir() if p.name.endswith(".tmp")] == []
    logs = []
    train.train(tiny(tmp_path, "ignored", out=None, resume=str(tmp_path / "cut")), log=logs.append)
    assert any("resuming from" in l for l in logs)
    a, b = _state(tmp_path / "full" / "last.pt"), _state(tmp_path / "cut" / "last.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    la = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    strip = lambda ls: [{k: v for k, v in json.loads(l).items() if "time" not in k and "per_s" not in k}
                        for l in ls]
    assert strip(la) == strip(lb)


def test_checkpoint_write_interrupted_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    good = {"format": checkpoint.FORMAT, "version": 1, "epoch": 1, "config": {}, "model": {}}
    checkpoint.save_atomic(good, path)

    def half_save(obj, f):
        f.write(b"PK\x03\x04 partial bytes")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(checkpoint.torch, "save", half_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic(dict(good, epoch=2), path)
    assert checkpoint.load(path)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_corrupt_or_missing_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"bad\.pt cannot be read.*truncated, corrupt"):
        checkpoint.load(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.pt")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a unet_fast checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_resume_other_configuration_is_refused(tmp_path):
    train.train(tiny(tmp_path, "a", epochs=1), log=_quiet)
    cfg = tiny(tmp_path, "a", epochs=2, base_channels=8, lr=1e-3, resume=str(tmp_path / "a"))
    with pytest.raises(CheckpointError) as e:
        train.train(cfg, log=_quiet)
    msg = str(e.value)
    assert "another configuration" in msg
    assert "base_channels: checkpoint has 4, this run has 8" in msg
    assert "lr: checkpoint has 0.003, this run has 0.001" in msg
    assert "--base-channels 4" in msg and "without --resume" in msg


@pytest.mark.parametrize("loss", ["weighted-ce", "dice"])
def test_other_losses_train(tmp_path, loss):
    r = train.train(tiny(tmp_path, loss, epochs=1, loss=loss, elastic=True), log=_quiet)
    assert r["final"]["train_loss"] == r["final"]["train_loss"]   # finite, not NaN
    assert 0 <= r["final"]["val_dice"] <= 1


def test_sgd_step_schedule_channels_last_same(tmp_path):
    r = train.train(tiny(tmp_path, "s", epochs=1, optimizer="sgd", lr=0.01, schedule="step",
                         channels_last=True, padding="same", tile=32), log=_quiet)
    assert r["final"] is not None


def test_train_bf16_autocast(tmp_path):
    r = train.train(tiny(tmp_path, "bf", epochs=1, amp="bf16"), log=_quiet)
    assert r["amp"] == "bf16" and r["final"] is not None


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="--amp fp16 needs a CUDA GPU"):
        train.train(tiny(tmp_path, amp="fp16", device="cpu"), log=_quiet)
    with pytest.raises(Exception, match=r"--tile 61 .*nearest legal sizes: 60, 64"):
        train.train(tiny(tmp_path, tile=61), log=_quiet)
    with pytest.raises(ConfigError, match="built-in data has 1 input channel and 2 classes"):
        train.train(tiny(tmp_path, num_classes=3), log=_quiet)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        if torch.cuda.is_available():
            raise ConfigError("no CUDA GPU (skipped: a GPU is present)")
        train.train(tiny(tmp_path, device="cuda"), log=_quiet)


def test_train_on_a_folder_dataset(tmp_path):
    import numpy as np
    from PIL import Image

    from unet_fast.app.data import synthetic_em
    imgs, masks = synthetic_em(4, (40, 40), seed=1)
    for i, (im, m) in enumerate(zip(imgs, masks)):
        for sub, arr in (("imgs", (im * 255).astype(np.uint8)), ("masks", m)):
            (tmp_path / "ds" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(tmp_path / "ds" / sub / f"s{i}.png")
    r = train.train(tiny(tmp_path, "f", epochs=1, data=str(tmp_path / "ds"), val_fraction=0.25),
                    log=_quiet)
    assert r["final"] is not None
    cfg = json.loads((tmp_path / "f" / "config.json").read_text())
    assert cfg["data"] == str(tmp_path / "ds")
    assert dataclasses.asdict(tiny(tmp_path))["seed"] == 0


# ----------------------------------------------------------------- checkpoints and run folders
def _flip_a_weight_bit(path):
    """Flips one bit inside the bytes of a weight tensor of the checkpoint file."""
    ck = torch.load(path, weights_only=True)
    w = ck["model"]["down.0.0.weight"].contiguous().numpy().tobytes()
    raw = bytearray(path.read_bytes())
    at = raw.find(w)
    assert at > 0
    raw[at + len(w) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_a_flipped_bit_is_refused(tmp_path):
    """Checkpoints carried no checksum: a flipped bit in the weights loaded unnoticed."""
    train.train(tiny(tmp_path, "a", epochs=1), log=_quiet)
    last = tmp_path / "a" / "last.pt"
    assert checkpoint.load(last)["checksum"].startswith("sha256:")
    _flip_a_weight_bit(last)
    with pytest.raises(CheckpointError, match=r"last\.pt fails its checksum"):
        checkpoint.load(last)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        train.train(tiny(tmp_path, "a", epochs=2, out=None, resume=str(last)), log=_quiet)


def test_checksum_covers_everything_and_version_1_still_loads(tmp_path):
    state = {"format": checkpoint.FORMAT, "version": 2, "epoch": 3, "config": {"lr": 0.1},
             "model": {"w": torch.arange(6.0).reshape(2, 3)}, "history": [{"val_dice": 0.5}]}
    checkpoint.save_atomic(checkpoint.with_checksum(state), tmp_path / "c.pt")
    assert checkpoint.load(tmp_path / "c.pt")["epoch"] == 3
    for change in ({"epoch": 4}, {"config": {"lr": 0.2}}, {"history": [{"val_dice": 0.6}]},
                   {"model": {"w": torch.arange(6.0).reshape(3, 2)}}):
        bad = dict(checkpoint.with_checksum(state), **change)
        checkpoint.save_atomic(bad, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="fails its checksum"):
            checkpoint.load(tmp_path / "bad.pt")
    old = dict(state, version=1)
    checkpoint.save_atomic(old, tmp_path / "v1.pt")
    assert checkpoint.load(tmp_path / "v1.pt")["epoch"] == 3


def test_default_run_folders_are_unique_within_a_second(tmp_path, monkeypatch):
    """Two runs started in the same second shared runs/train-<date>-<time>."""
    from unet_fast.app import rundir
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt, *a: "20260101-120000")
    a, b = rundir.claim_default_dir(), rundir.claim_default_dir()
    assert a != b and a.is_dir() and b.is_dir()
    assert [a.name, b.name] == ["train-20260101-120000", "train-20260101-120000-2"]
    r1 = train.train(tiny(tmp_path, out=None, epochs=1), log=_quiet)
    r2 = train.train(tiny(tmp_path, out=None, epochs=1), log=_quiet)
    assert r1["out"] != r2["out"]
    assert Path(r1["out"]).name == "train-20260101-120000-3"
    for r in (r1, r2):
        assert checkpoint.load(Path(r["out"]) / "last.pt")["config"]["out"] is None


def test_a_second_writer_is_refused(tmp_path):
    """Two train runs on one --out mixed their files; the second is refused while the first
    holds the folder, and the folder is free again once it is released (or its process dies)."""
    from unet_fast.app import rundir
    held = rundir.RunLock(tmp_path / "r")
    try:
        with pytest.raises(ConfigError, match=rf"{tmp_path / 'r'} is in use by another unet-fast "
                                              rf"train \(pid {os.getpid()} .*pass another --out"):
            train.train(tiny(tmp_path, "r", epochs=1), log=_quiet)
        assert not (tmp_path / "r" / "config.json").exists()
    finally:
        held.release()
    train.train(tiny(tmp_path, "r", epochs=1), log=_quiet)
    assert (tmp_path / "r" / "last.pt").is_file()


def test_temporary_files_have_unique_names(tmp_path, monkeypatch):
    """Every replaced file goes through a temporary file of its own (the fixed
    .curves.png.tmp.png killed one of two writers)."""
    names = []
    real = os.replace

    def spy(src, dst):
        names.append(Path(src).name)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    hist = [{"epoch": 1, "train_loss": 1.0, "val_dice": 0.5, "val_iou": 0.4,
             "val_pixel_error": 0.1}]
    train._plot_curves(hist, tmp_path / "curves.png")
    train._plot_curves(hist, tmp_path / "curves.png")
    train._write_metrics(hist, tmp_path / "metrics.jsonl")
    train._write_metrics(hist, tmp_path / "metrics.jsonl")
    assert len(names) == 4 and len(set(names)) == 4, names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_stale_temporary_files_are_removed_on_start(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    stale = [".last.pt.k2j3h.tmp", ".best.pt.x.tmp", ".curves.png.tmp.png", ".metrics.jsonl.tmp"]
    for n in stale:
        (out / n).write_bytes(b"partial")
    (out / "notes.txt").write_text("mine")
    logs = []
    train.train(tiny(tmp_path, "r", epochs=1), log=logs.append)
    left = sorted(p.name for p in out.iterdir())
    assert not set(stale) & set(left) and "notes.txt" in left
    assert not [n for n in left if n.endswith(".tmp") or n.endswith(".tmp.png")]
    assert any("removed 4 temporary file(s)" in l for l in logs)


def _named_checkpoints(logs):
    return [Path(m.group(1)) for l in logs for m in [re.search(r"--checkpoint (\S+)", l)] if m]


def test_a_kill_between_the_checkpoint_writes_loses_no_named_checkpoint(tmp_path, monkeypatch):
    """Killed between the last.pt and best.pt writes of the first epoch, a run had no best.pt for
    ever after and still printed `predict with: ... best.pt`."""
    real = checkpoint.save_atomic
    calls = []

    def dying(obj, path):
        calls.append(Path(path).name)
        if len(calls) == 2:                       # the second write of epoch 1
            raise _Killed()
        return real(obj, path)

    monkeypatch.setattr(checkpoint, "save_atomic", dying)
    with pytest.raises(_Killed):
        train.train(tiny(tmp_path, "k", epochs=3), log=_quiet)
    monkeypatch.setattr(checkpoint, "save_atomic", real)
    out = tmp_path / "k"
    if (out / "last.pt").exists() and checkpoint.load(out / "last.pt")["best_dice"] > -1:
        assert (out / "best.pt").exists(), "last.pt records a best whose best.pt is missing"
    logs = []
    train.train(tiny(tmp_path, "k", epochs=3, out=None, resume=str(out)), log=logs.append)
    named = _named_checkpoints(logs)
    assert named and all(p.is_file() for p in named), named
    assert checkpoint.load(out / "best.pt")["epoch"] >= 1
    assert checkpoint.load(out / "last.pt")["epoch"] == 3


def test_a_run_without_best_pt_names_only_what_exists(tmp_path):
    train.train(tiny(tmp_path, "m", epochs=1), log=_quiet)
    (tmp_path / "m" / "best.pt").unlink()
    logs = []
    train.train(tiny(tmp_path, "m", epochs=2, out=None, resume=str(tmp_path / "m")),
                log=logs.append)
    assert any("best.pt is missing; the next validated epoch writes it" in l for l in logs)
    assert all(p.is_file() for p in _named_checkpoints(logs))
    assert (tmp_path / "m" / "best.pt").is_file()


def test_a_diverging_run_stops_without_saving_nan_weights(tmp_path):
    """--lr 1e30 trained to NaN, saved the NaN model as best.pt and exited 0."""
    with pytest.raises(RunError, match=r"training loss is (nan|inf) at epoch 1.*diverged.*"
                                       r"lower --lr"):
        train.train(tiny(tmp_path, "x", epochs=2, lr=1e30), log=_quiet)
    for f in ("last.pt", "best.pt"):
        assert not (tmp_path / "x" / f).exists()


def test_a_non_finite_loss_never_replaces_a_good_checkpoint(tmp_path, monkeypatch):
    real, n = train._train_step, {"i": 0}

    def blows_up_in_epoch_2(model, *a, **k):
        n["i"] += 1
        loss = real(model, *a, **k)
        if n["i"] >= 3:                                  # 2 steps per epoch
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(float("nan"))
            return torch.tensor(float("nan"))
        return loss

    monkeypatch.setattr(train, "_train_step", blows_up_in_epoch_2)
    with pytest.raises(RunError, match=r"at epoch 2, step 1.*Nothing of this epoch was saved.*"
                                       r"last\.pt \(epoch 1\)"):
        train.train(tiny(tmp_path, "g", epochs=3), log=_quiet)
    for f in ("last.pt", "best.pt"):
        ck = checkpoint.load(tmp_path / "g" / f)
        assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not [p for p in (tmp_path / "g").iterdir() if p.name.endswith(".tmp")]


def test_no_validation_is_reported_as_none(tmp_path):
    """--val-images 0 reported `val Dice 1.0000`."""
    logs = []
    r = train.train(tiny(tmp_path, "nv", epochs=1, val_images=0), log=logs.append)
    assert r["final"]["val_dice"] is None and r["best_dice"] is None
    assert json.loads((tmp_path / "nv" / "metrics.jsonl").read_text())["val_dice"] is None
    assert any("val: none" in l for l in logs) and not any("Dice 1.0000" in l for l in logs)
    assert not (tmp_path / "nv" / "best.pt").exists()
    assert _named_checkpoints(logs) == [tmp_path / "nv" / "last.pt"]


def test_resuming_from_best_does_not_overwrite_a_newer_last(tmp_path):
    """`--resume run/best.pt` silently overwrote a newer last.pt."""
    import shutil
    train.train(tiny(tmp_path, "b", epochs=1), log=_quiet)
    shutil.copy(tmp_path / "b" / "last.pt", tmp_path / "b" / "older.pt")
    train.train(tiny(tmp_path, "b", epochs=2, out=None, resume=str(tmp_path / "b")), log=_quiet)
    with pytest.raises(ConfigError, match=r"resuming from .*older\.pt \(epoch 1\) would overwrite "
                                          r".*last\.pt, which is at epoch 2"):
        train.train(tiny(tmp_path, "b", epochs=3, out=None,
                         resume=str(tmp_path / "b" / "older.pt")), log=_quiet)
    assert checkpoint.load(tmp_path / "b" / "last.pt")["epoch"] == 2
    # into another folder it is a branch of the run, and allowed
    train.train(tiny(tmp_path, "branch", epochs=2, resume=str(tmp_path / "b" / "older.pt")),
                log=_quiet)
    assert checkpoint.load(tmp_path / "branch" / "last.pt")["epoch"] == 2


def test_a_new_run_into_a_used_folder_is_refused(tmp_path):
    train.train(tiny(tmp_path, "u", epochs=1), log=_quiet)
    before = (tmp_path / "u" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"already holds a run \(last\.pt, best\.pt\).*--resume"):
        train.train(tiny(tmp_path, "u", epochs=1, seed=1), log=_quiet)
    assert (tmp_path / "u" / "last.pt").read_bytes() == before


# ----------------------------------------------------------------- fine-tuning and logging
def _folder_dataset(root, n=4, size=40, classes=3):
    import numpy as np
    from PIL import Image

    from unet_fast.app.data import synthetic_em
    imgs, masks = synthetic_em(n, (size, size), seed=7)
    for i, (im, m) in enumerate(zip(imgs, masks)):
        m = m.copy()
        m[: size // 4] *= classes - 1                 # a third class in the top rows
        for sub, arr in (("imgs", (im * 255).astype(np.uint8)), ("masks", m)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / f"s{i}.png")
    return root


def test_fine_tune_from_a_checkpoint_on_other_data(tmp_path):
    """`--resume RUN --data mine` was refused and nothing else started from a checkpoint's
    weights: --init-from starts a new run from them, with any data, classes, epochs and lr."""
    train.train(tiny(tmp_path, "base", epochs=1), log=_quiet)
    base = checkpoint.load(tmp_path / "base" / "best.pt")
    ds = _folder_dataset(tmp_path / "mine")
    with pytest.raises(CheckpointError, match=r"(?s)data: checkpoint has None.*settings \(without "
                                              r"--data\).*--init-from .*last\.pt"):
        train.train(tiny(tmp_path, "base", epochs=2, out=None, resume=str(tmp_path / "base"),
                         data=str(ds)), log=_quiet)
    logs = []
    r = train.train(tiny(tmp_path, "ft", epochs=1, data=str(ds), num_classes=3, optimizer="sgd",
                         lr=1e-12, momentum=0.0, val_fraction=0.25,
                         init_from=str(tmp_path / "base" / "best.pt")), log=logs.append)
    assert any("starting from the weights of" in l and "the 1x1 head is new (2 -> 3 classes)" in l
               for l in logs)
    ft = checkpoint.load(tmp_path / "ft" / "last.pt")
    assert ft["epoch"] == 1 and len(ft["history"]) == 1 and r["final"]["val_dice"] is not None
    assert ft["config"]["init_from"] == str(tmp_path / "base" / "best.pt")
    for k, v in base["model"].items():                # lr 1e-12: the weights it started from
        if not k.startswith("head."):
            torch.testing.assert_close(ft["model"][k], v, rtol=0, atol=1e-9)
    assert ft["model"]["head.weight"].shape[0] == 3
    with pytest.raises(CheckpointError, match=r"(?s)its network is another one:\n  "
                                              r"base_channels: checkpoint has 4, this run has 8"
                                              r".*--base-channels 4"):
        train.train(tiny(tmp_path, "ft2", base_channels=8,
                         init_from=str(tmp_path / "base" / "last.pt")), log=_quiet)
    with pytest.raises(ConfigError, match="pass one of them"):
        train.train(tiny(tmp_path, "ft3", resume=str(tmp_path / "base"),
                         init_from=str(tmp_path / "base" / "last.pt")), log=_quiet)


def test_class_weights_train_and_belong_to_the_run(tmp_path):
    r = train.train(tiny(tmp_path, "cw", epochs=1, class_weights=[1, 3]), log=_quiet)
    assert r["final"]["train_loss"] == r["final"]["train_loss"]
    assert json.loads((tmp_path / "cw" / "config.json").read_text())["class_weights"] == [1.0, 3.0]
    with pytest.raises(CheckpointError, match=r"class_weights: checkpoint has \[1\.0, 3\.0\], "
                                              r"this run has \[1\.0, 1\.0\]"):
        train.train(tiny(tmp_path, "cw", epochs=2, out=None, resume=str(tmp_path / "cw"),
                         class_weights=[1, 1]), log=_quiet)
    with pytest.raises(ConfigError, match="--class-weights has 1 value.*2 classes"):
        train.train(tiny(tmp_path, "cw2", class_weights=[2]), log=_quiet)


def test_tensorboard_scalars_next_to_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train.train(tiny(tmp_path, "tb", epochs=2, tensorboard=True), log=_quiet)
    out = tmp_path / "tb"
    assert [p for p in out.iterdir() if p.name.startswith("events.out.tfevents")]
    acc = EventAccumulator(str(out))
    acc.Reload()
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    for tag, key in (("val/dice", "val_dice"), ("loss/train", "train_loss"), ("lr", "lr")):
        ev = acc.Scalars(tag)
        assert [e.step for e in ev] == [l["step"] for l in lines] == [2, 4]
        assert [e.value for e in ev] == pytest.approx([l[key] for l in lines], rel=1e-6)
    assert len(acc.Scalars("loss/train_step")) == 4


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"--tensorboard needs the tensorboard package.*"
                                          r"pip install tensorboard"):
        train.train(tiny(tmp_path, "tbx", tensorboard=True), log=_quiet)
    assert not (tmp_path / "tbx").exists()


def test_replaced_files_keep_the_usual_permissions(tmp_path):
    """Files written through a temporary file get the mode a plain open() gives (umask), not
    mkstemp's owner-only 0600."""
    mask = os.umask(0o022)
    try:
        checkpoint.atomic_write(tmp_path / "m.json", lambda f: f.write("{}"), mode="w")
        checkpoint.save_atomic({"a": 1}, tmp_path / "c.pt")
    finally:
        os.umask(mask)
    for f in ("m.json", "c.pt"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o644, f


@pytest.mark.parametrize("channels_last, amp, val", [(False, "bf16", True), (True, "fp16", False)])
def test_a_gpu_run_precompiles_its_steps_kernels_first(channels_last, amp, val, monkeypatch):
    """On a GPU, before the first step, the run precompiles the Triton kernels of its training
    step (the local batch of tiles), its validation batches and the one-tile probe, in the run's
    layout and autocast dtype, and says how long that took; on the CPU it does not."""
    from types import SimpleNamespace
    calls, said = [], []

    class Model:
        def precompile(self, train=None, evaluate=None, autocast=None):
            calls.append((train, evaluate, autocast))
            return {"kernels": 42, "failed": 1, "seconds": 3.25, "skipped": None}

    cfg = SimpleNamespace(channels_last=channels_last, in_channels=1, tile=188, val_batch=3)
    run = SimpleNamespace(cfg=cfg, device=torch.device("cuda"), model=Model(), local_batch=4,
                          amp=amp, val_samples=[object()] if val else [])
    empty = torch.empty   # (no GPU here: the examples' shapes and layouts are what is checked)
    monkeypatch.setattr(torch, "empty", lambda *a, device=None, **k: empty(*a, device="meta", **k))
    train._precompile(run, said.append)
    (tr, ev, autocast), = calls
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert tuple(tr.shape) == (4, 1, 188, 188) and tr.is_contiguous(memory_format=fmt)
    assert [tuple(e.shape) for e in ev] == [(1, 1, 188, 188)] + ([(3, 1, 188, 188)] if val else [])
    assert all(e.is_contiguous(memory_format=fmt) for e in ev)
    assert autocast == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert said == ["compiled 42 Triton kernels before the first step in 3.2 s (1 failed: they "
                    "fall back at first use)"]
    calls.clear()
    train._precompile(SimpleNamespace(**dict(vars(run), device=torch.device("cpu"))), said.append)
    assert calls == []
