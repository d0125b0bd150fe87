"""Checkpoints: written atomically, loaded safely, checked against the run's configuration.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then renamed
over the old one with os.replace (atomic on POSIX and Windows), and the folder is fsync'ed: a run
killed at any moment leaves either the previous complete checkpoint or the new complete one.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Iterable

import torch

FORMAT = "unet_fast.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


def save_atomic(obj, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_path(path) -> Path:
    """A checkpoint file, or a run folder (its last.pt)."""
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt"
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist; pass the last.pt (or best.pt) of a "
                              "run, or the run's output folder")
    return p


def load(path, map_location="cpu") -> dict:
    p = resolve_path(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt, or not a torch file
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"checkpoint {p} cannot be read ({type(e).__name__}: {first}); it is "
                              "truncated, corrupt or not a unet_fast checkpoint. Use another one "
                              "(the run folder's last.pt is always complete) or start anew "
                              "without --resume") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a unet_fast checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {p} has format version {ckpt.get('version')}, newer "
                              f"than this unet_fast understands ({VERSION}); upgrade unet_fast")
    ckpt["path"] = str(p)
    return ckpt


def check_config(saved: dict, current: dict, keys: Iterable[str], path) -> None:
    """CheckpointError listing every key on which the checkpoint's run and this one differ."""
    diffs = [(k, saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        lines = "\n".join(f"  {k}: checkpoint has {a!r}, this run has {b!r}" for k, a, b in diffs)
        flags = " ".join(f"--{k.replace('_', '-')} {a}" for k, a, _ in diffs if a is not None)
        raise CheckpointError(
            f"cannot resume from {path}: it was written by a run with another configuration:\n"
            f"{lines}\nResume with the checkpoint's settings ({flags}), or start a new run "
            "without --resume (and another --out).")


def model_from_checkpoint(ckpt: dict, backend: str = "auto", device="cpu"):
    """The fast UNet of a checkpoint's configuration with its weights, in eval mode."""
    from .. import UNet

    cfg = ckpt["config"]
    model = UNet(cfg["in_channels"], cfg["num_classes"], cfg["base_channels"], cfg["depth"],
                 cfg["padding"], backend=backend)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
