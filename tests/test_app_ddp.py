"""torchrun with 2 CPU processes (gloo): parameters identical on both ranks and equal to one
process with the same global batch."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import json
import pytest
import torch

from unet_fast.app import checkpoint, train
from unet_fast.app.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ARGS = dict(image_size=40, train_images=3, val_images=1, base_channels=4, depth=2, tile=60,
            epochs=2, batch=4, tiles_per_epoch=8, optimizer="sgd", lr=0.05, momentum=0.9,
            warmup_steps=0, progress=False)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(d):
    out = []
    for k, v in d.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            out += [flag, str(v)]
    return out


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_torchrun_two_processes_equal_one_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "unet_fast",
           "train", "--device", "cpu", "--out", str(tmp_path / "ddp"), *_flags(ARGS)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 processes x 2" in r.stdout
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True   # identical on ranks
    one = train.train(TrainConfig(out=str(tmp_path / "one"), device="cpu", **ARGS),
                      log=lambda *a: None)
    a = checkpoint.load(tmp_path / "ddp" / "last.pt")["model"]
    b = one["model"].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
