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


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "triton" in out and "backends:" in out and "extension" in out
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
