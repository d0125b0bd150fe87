"""Training: reproducibility, resume == uninterrupted, atomic checkpoints, config checks."""
import dataclasses
import json
import os

import pytest
import torch

from unet_fast.app import checkpoint, train
from unet_fast.app.checkpoint import CheckpointError
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
