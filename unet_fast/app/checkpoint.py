"""Checkpoints: written atomically, loaded safely, checked against the run's configuration.

A checkpoint is written to a temporary file of its own (a unique name) in the same folder, flushed
and fsync'ed, then renamed over the old one with os.replace (atomic on POSIX and Windows), and the
folder is fsync'ed: a run killed at any moment leaves either the previous complete checkpoint or
the new complete one. Every other file of a run is replaced the same way (`atomic_write`).

A checkpoint carries a SHA-256 of its contents (`checksum`), verified on load: a file changed
after it was written (a flipped bit, a partial copy) is refused instead of loading wrong weights.
"""
from __future__ import annotations

import hashlib
import os
import random
import struct
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch

FORMAT = "unet_fast.checkpoint"
VERSION = 2          # 2: with "checksum"; version 1 files (no checksum) still load
TMP_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp" beside their target


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


def atomic_write(path, write: Callable, mode: str = "wb") -> Path:
    """Writes `path` through `write(file)` into a uniquely named temporary file beside it, then
    renames it over `path`: readers see the old file or the new one, never a part; two writers
    never share a temporary file. An OSError names `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.chmod(tmp, _file_mode())      # mkstemp's 0600 -> what open() would have given
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)
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


def _file_mode() -> int:
    """0666 less the process's umask: the mode a plain open() gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_atomic(obj, path) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def checksum(obj) -> str:
    """SHA-256 of a checkpoint's contents (every key but "checksum" and "path"): tensors by dtype,
    shape and bytes, containers in order (dicts by sorted key), scalars by type and value."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            keys = sorted((k for k in x if x is not obj or k not in ("checksum", "path")), key=repr)
            h.update(b"D%d" % len(keys))
            for k in keys:
                feed(k)
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(b"L%d" % len(x))
            for v in x:
                feed(v)
        elif isinstance(x, float):
            h.update(b"F" + struct.pack("<d", x))
        else:   # int, bool, str, bytes, None (all a checkpoint holds besides the above)
            h.update(f"{type(x).__name__}:{x!r}".encode())

    feed(obj)
    return "sha256:" + h.hexdigest()


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
    """A checkpoint file, or a run folder (its last.pt; its best.pt when a run was stopped before
    its first last.pt)."""
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt" if (p / "last.pt").exists() or not (p / "best.pt").exists() else \
            p / "best.pt"
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
    if ckpt.get("version", 0) >= 2 and ckpt.get("checksum") != checksum(ckpt):
        raise CheckpointError(f"checkpoint {p} fails its checksum: its contents changed after it "
                              "was written (a damaged disk or copy, a flipped bit), so its weights "
                              "cannot be trusted. Use another checkpoint of the run (last.pt or "
                              "best.pt) or a good copy of this one")
    ckpt["path"] = str(p)
    return ckpt


def with_checksum(state: dict) -> dict:
    """The checkpoint `state` with its "checksum" (what `load` verifies)."""
    state = dict(state)
    state["checksum"] = checksum(state)
    return state


def check_config(saved: dict, current: dict, keys: Iterable[str], path) -> None:
    """CheckpointError listing every key on which the checkpoint's run and this one differ."""
    diffs = [(k, saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        lines = "\n".join(f"  {k}: checkpoint has {a!r}, this run has {b!r}" for k, a, b in diffs)
        flags = " ".join(_as_flag(k, a) for k, a, _ in diffs)
        raise CheckpointError(
            f"cannot resume from {path}: it was written by a run with another configuration:\n"
            f"{lines}\nResume with the checkpoint's settings ({flags}), or start a new run "
            "without --resume (and another --out). To fine-tune its weights with other data or "
            f"settings, start a new run from them: --init-from {path}")


def _as_flag(key: str, value) -> str:
    """A config value as the command line gives it."""
    flag = "--" + key.replace("_", "-")
    if value is None:
        return f"without {flag}"
    if isinstance(value, bool):
        return flag if value else "--no-" + key.replace("_", "-")
    if isinstance(value, (list, tuple)):
        return f"{flag} {' '.join(map(str, value))}"
    return f"{flag} {value}"


def model_from_checkpoint(ckpt: dict, backend: str = "auto", device="cpu"):
    """The fast UNet of a checkpoint's configuration with its weights, in eval mode."""
    from .. import UNet

    cfg = ckpt["config"]
    model = UNet(cfg["in_channels"], cfg["num_classes"], cfg["base_channels"], cfg["depth"],
                 cfg["padding"], backend=backend)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
