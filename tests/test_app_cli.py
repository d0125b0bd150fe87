"""The command line as a user runs it: train (the README's first command, reduced), predict,
bench, info, bad input through the CLI, and a run killed with SIGKILL that resumes; and the
application's place: the library never imports it, its entry point and choice lists."""
import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unet_fast.app import checkpoint, cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "40", "--train-images", "3", "--val-images", "2", "--base-channels", "4",
        "--depth", "2", "--tile", "60", "--batch", "4", "--tiles-per-epoch", "8", "--no-progress"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(args, cwd, timeout=240):
    return subprocess.run([sys.executable, "-m", "unet_fast", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The README's first command as a new user runs it (reduced: one short epoch)."""
    cwd = tmp_path_factory.mktemp("user")
    r = _run(["train", "--epochs", "1", "--out", "first_run", *TINY], cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return cwd, r


def test_first_command(trained):
    cwd, r = trained
    out = cwd / "first_run"
    for f in ("last.pt", "best.pt", "metrics.jsonl", "curves.png", "val_examples.png"):
        assert (out / f).is_file(), f
    assert "on the CPU" in r.stdout or "cuda" in r.stdout
    assert "reference PyTorch ops" in r.stdout or "GPU" in r.stdout or "cuDNN" in r.stdout
    assert "outputs in first_run/" in r.stdout
    assert "val Dice" in r.stdout and "predict with: unet-fast predict" in r.stdout


def test_predict_cli(trained, capsys):
    cwd, _ = trained
    img = (np.random.default_rng(0).random((50, 70)) * 255).astype(np.uint8)
    Image.fromarray(img).save(cwd / "new.png")
    rc = cli.main(["predict", "--checkpoint", str(cwd / "first_run" / "best.pt"),
                   str(cwd / "new.png"), "--out", str(cwd / "pred"), "--tile", "64"])
    assert rc == 0
    assert np.array(Image.open(cwd / "pred" / "new_mask.png")).shape == (50, 70)
    assert (cwd / "pred" / "new_overlay.png").is_file()
    assert "outputs in" in capsys.readouterr().out


def test_cli_bad_inputs(trained, tmp_path, capsys):
    cwd, _ = trained
    assert cli.main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                     *TINY]) == 2
    err = capsys.readouterr().err
    assert "data folder" in err and "does not exist" in err and "--data" in err
    assert cli.main(["train", "--out", str(tmp_path / "o"), *TINY, "--tile", "62"]) == 2
    assert "--tile 62" in (err := capsys.readouterr().err) and "nearest legal sizes: 60, 64" in err
    other = [a if a != "4" or TINY[i - 1] != "--base-channels" else "8" for i, a in enumerate(TINY)]
    assert "8" in other
    assert cli.main(["train", "--resume", str(cwd / "first_run"), *other]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "base_channels: checkpoint has 4, this run has 8" in err
    assert cli.main(["predict", "--checkpoint", str(cwd / "first_run" / "best.pt"),
                     str(tmp_path / "none.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_info(capsys, monkeypatch):
    monkeypatch.setenv("UNET_FAST_CHECK", "0")   # every setting of ours is shown
    monkeypatch.setenv("UNET_FAST_TRITON_TMA", "1")
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "triton" in out and "backends:" in out and "extension" in out
    assert {"env UNET_FAST_CHECK=0", "env UNET_FAST_TRITON_TMA=1"} <= set(out.splitlines())
    assert cli.main(["info", "--json", "--sizes", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["backends"]) == {"torch", "triton", "cuda"} and info["backends"]["torch"] is None
    assert info["legal_sizes"]["valid"][:3] == [188, 204, 220]
    assert "extension_path" in info


def test_bench(tmp_path, capsys):
    rc = cli.main(["bench", "--size", "60", "--depth", "2", "--base-channels", "4", "--batch", "1",
                   "--steps", "1", "--warmup", "1", "--device", "cpu", "--json",
                   str(tmp_path / "b.json")])
    assert rc == 0
    r = json.loads((tmp_path / "b.json").read_text())
    assert set(r["models"]) == {"unet_fast (auto)", "reference"}
    for m in r["models"].values():
        assert m["train_images_per_s"] > 0 and m["inference_images_per_s"] > 0
    assert "speed-up vs reference" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="nearest legal sizes"):
        cli.main(["bench", "--size", "61", "--depth", "2", "--device", "cpu"])


def test_sigkill_mid_run_then_resume(tmp_path):
    """A real kill -9 during training: the last complete checkpoint loads and the run resumes."""
    args = ["train", "--out", str(tmp_path / "k"), *TINY, "--epochs", "40", "--tiles-per-epoch",
            "16"]
    p = subprocess.Popen([sys.executable, "-m", "unet_fast", *args], cwd=tmp_path, env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "k" / "last.pt"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not last.exists():
            time.sleep(0.2)
        assert last.exists(), "no checkpoint appeared"
        time.sleep(0.7)                         # somewhere in a later epoch
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    ck = checkpoint.load(last)
    done = ck["epoch"]
    assert 1 <= done < 40
    r = _run(["train", "--resume", str(tmp_path / "k"), *TINY, "--epochs", str(done + 1),
              "--tiles-per-epoch", "16"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"after epoch {done}" in r.stdout
    assert checkpoint.load(last)["epoch"] == done + 1


def test_the_library_never_imports_the_application():
    code = ("import sys, unet_fast; "
            "print(sorted(m for m in sys.modules if m.startswith('unet_fast.app')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_console_entry_point_is_the_cli():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["unet-fast"].split(":")
    assert getattr(importlib.import_module(module), func) is cli.main


def test_choice_lists_come_from_one_source():
    from unet_fast._dispatch import CHOICES
    from unet_fast.app import losses, runtime, train

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    choices = {cmd: {a.dest: a.choices for a in p._actions} for cmd, p in sub.choices.items()}
    for cmd in ("train", "predict", "bench"):
        assert choices[cmd]["backend"] is CHOICES, cmd
        assert choices[cmd]["amp"] is runtime.AMP_MODES, cmd
    assert choices["train"]["loss"] is losses.LOSSES
    assert choices["train"]["optimizer"] is train.OPTIMIZERS
    assert choices["train"]["schedule"] is train.SCHEDULES
    assert choices["train"]["recompute"] is train.RECOMPUTE


# ----------------------------------------------------------------- options, checked up front
BAD_TRAIN_FLAGS = [(["--lr", "nan"], "--lr must be a finite number"),
                   (["--lr", "inf"], "--lr must be a finite number"),
                   (["--lr", "0"], "--lr must be greater than 0"),
                   (["--momentum", "-1"], "--momentum must be at least 0"),
                   (["--workers", "-1"], "--workers must be at least 0"),
                   (["--elastic-sigma", "-5"], "--elastic-sigma must be at least 0"),
                   (["--image-size", "0"], "--image-size must be at least 16"),
                   (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
                   (["--seed", "-1"], "--seed must be at least 0"),
                   (["--val-fraction", "1"], "--val-fraction must be less than 1"),
                   (["--weight-decay", "-0.1"], "--weight-decay must be at least 0"),
                   (["--sigma", "0"], "--sigma must be greater than 0"),
                   (["--threads", "-2"], "--threads must be at least 0"),
                   (["--class-weights", "1", "nan"], "--class-weights must be a finite number"),
                   (["--depth", "30"], "--depth 30 / --base-channels 4: a U-Net with"),
                   (["--tile", "0"], "--tile must be at least 1")]


@pytest.mark.parametrize("args,message", BAD_TRAIN_FLAGS, ids=[a[0] for a, _ in BAD_TRAIN_FLAGS])
def test_bad_train_numbers_name_their_flag(tmp_path, capsys, args, message):
    """Each was a traceback, a hang (--depth 30) or a run to NaN that exited 0 (--lr nan)."""
    assert cli.main(["train", "--out", str(tmp_path / "o"), *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_predict_numbers_are_checked_up_front(trained, tmp_path, capsys):
    """--batch -1 exited 0 with masks from an uninitialized buffer, --batch 0 was a traceback,
    --tile 100000 a 40 GB allocation."""
    cwd, _ = trained
    Image.fromarray((np.random.default_rng(1).random((30, 41)) * 255).astype(np.uint8)).save(
        tmp_path / "x.png")
    ck = str(cwd / "first_run" / "best.pt")
    for args, message in ((["--batch", "-1"], "--batch must be at least 1"),
                          (["--batch", "0"], "--batch must be at least 1"),
                          (["--overlap", "-1"], "--overlap must be at least 0"),
                          (["--tile", "0"], "--tile must be at least 1"),
                          (["--tile", "62"], "--tile 62 is not a legal input size"),
                          (["--device", "tpu"], "--device must be")):
        assert cli.main(["predict", "--checkpoint", ck, str(tmp_path / "x.png"), "--out",
                         str(tmp_path / "p"), *args]) == 2, args
        assert message in capsys.readouterr().err
        assert not (tmp_path / "p").exists()
    for tile, out in (("100000", "big"), ("60", "small")):
        assert cli.main(["predict", "--checkpoint", ck, str(tmp_path / "x.png"), "--out",
                         str(tmp_path / out), "--tile", tile]) == 0
    big, small = (np.array(Image.open(tmp_path / d / "x_mask.png")) for d in ("big", "small"))
    assert big.shape == (30, 41) and np.mean(big == small) > 0.99


def test_help_shows_every_default_and_has_help_for_every_option(capsys):
    """`train --help` showed no defaults, and several flags had no help text."""
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for cmd, p in sub.choices.items():
        for a in p._actions:
            if a.option_strings and a.dest != "help":
                assert a.help, f"{cmd} {a.option_strings[0]} has no help"
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for frag in ("--lr LR peak learning rate (default: 0.003)", "--epochs EPOCHS epochs to train",
                 "(default: 12)", "(default: 0.99)", "--val-fraction VAL_FRACTION share of",
                 "(default: 0.2)", "--workers WORKERS data loader processes (default: 0)",
                 "--elastic-sigma ELASTIC_SIGMA elastic deformation", "(default: 10.0)",
                 "--init-from CKPT fine-tune", "--tensorboard, --no-tensorboard"):
        assert frag in text, frag


def test_size_arithmetic_of_deep_networks_answers_at_once(capsys):
    """`info --sizes 40` and `bench --depth 30` hung."""
    t = time.perf_counter()
    assert cli.main(["info", "--json", "--sizes", "40"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["legal_sizes"]["same"][:2] == [2**40, 2**41]
    assert cli.main(["bench", "--depth", "30", "--device", "cpu"]) == 2
    assert "--depth 30 / --base-channels 16: a U-Net with" in capsys.readouterr().err
    assert cli.main(["info", "--sizes", "0"]) == 2
    assert "--sizes must be at least 1" in capsys.readouterr().err
    assert time.perf_counter() - t < 30


def test_bench_reports_repeats_and_no_ratio_between_one_implementation(tmp_path, capsys):
    """On a CPU both sides run PyTorch's ops and bench quoted 'speed-ups' from 0.36x to 9x."""
    common = ["bench", "--size", "60", "--depth", "2", "--base-channels", "4", "--batch", "1",
              "--steps", "3", "--warmup", "1", "--device", "cpu"]
    assert cli.main([*common, "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["repeats"] == 3 and r["same_implementation"] is True
    assert r["speedup_train"] is None and r["speedup_inference"] is None
    assert "none to quote: both sides ran the same implementation" in out
    assert "training x" not in out
    for m in r["models"].values():
        assert m["repeats"] == 3
        for k in ("inference", "train_step"):
            assert m[f"{k}_ms_min"] <= m[f"{k}_ms"] <= m[f"{k}_ms_max"]
    assert cli.main([*common[:-2], "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    from unet_fast import backends
    if backends.available()["cuda"] is None:        # the extension's C++ kernels: another one
        assert cli.main([*common, "--backend", "cuda", "--json", str(tmp_path / "c.json")]) == 0
        out = capsys.readouterr().out
        c = json.loads((tmp_path / "c.json").read_text())
        assert c["same_implementation"] is False
        s = c["speedup_train"]
        assert s["min"] <= s["median"] <= s["max"]
        assert "speed-up vs reference (median of 3" in out


def test_fine_tune_from_the_command_line(trained, tmp_path, capsys):
    """`train --resume RUN --data mine` was refused; --init-from starts a new run from the run's
    weights, its model options (base 4, depth 2, tile 60 here) taken from the checkpoint."""
    from unet_fast.app.data import synthetic_em
    cwd, _ = trained
    imgs, masks = synthetic_em(3, (40, 40), seed=3)
    for i, (im, m) in enumerate(zip(imgs, masks)):
        for sub, arr in (("imgs", (im * 255).astype(np.uint8)), ("masks", m)):
            (tmp_path / "mine" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(tmp_path / "mine" / sub / f"m{i}.png")
    rc = cli.main(["train", "--init-from", str(cwd / "first_run" / "best.pt"), "--data",
                   str(tmp_path / "mine"), "--epochs", "1", "--lr", "1e-4", "--batch", "4",
                   "--tiles-per-epoch", "8", "--out", str(tmp_path / "ft"), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "fine-tuning: starting from the weights of" in out.out
    cfg = checkpoint.load(tmp_path / "ft" / "last.pt")["config"]
    assert (cfg["base_channels"], cfg["depth"], cfg["tile"], cfg["lr"]) == (4, 2, 60, 1e-4)


def test_a_full_disk_is_one_message(tmp_path, monkeypatch, capsys):
    """A full disk ended in a 40-line traceback (the checkpoints stayed intact)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    real, seen = checkpoint.tempfile.mkstemp, []

    def full_from_epoch_2(*a, **k):
        fd, name = real(*a, **k)
        if k.get("prefix", "").startswith(".last.pt."):
            seen.append(name)
            if len(seen) == 2:                       # last.pt of epoch 2: the disk is full
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
        return fd, name

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", full_from_epoch_2)
    out = tmp_path / "f"
    assert cli.main(["train", "--out", str(out), *TINY, "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"no space left on the device while writing {out / 'last.pt'}" in err
    assert f"intact: {out / 'last.pt'} (epoch 1)" in err and f"--resume {out}" in err
    assert checkpoint.load(out / "last.pt")["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_the_run_lock_holds_across_processes_and_dies_with_its_holder(tmp_path, capsys):
    """A second writer in another process is refused; a holder killed with SIGKILL leaves the
    folder free (the operating system drops the lock), so a killed run can be resumed."""
    code = ("import sys, time; from unet_fast.app.rundir import RunLock; "
            "l = RunLock(sys.argv[1]); print('held', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")], env=_env(),
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert cli.main(["train", "--out", str(tmp_path / "r"), *TINY, "--epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another unet-fast train (pid {p.pid} " in err
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    from unet_fast.app import rundir
    rundir.RunLock(tmp_path / "r").release()          # free again
