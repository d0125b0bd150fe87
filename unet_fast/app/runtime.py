"""Run-time choices the commands share: the device, the autocast mode and the optimizer step.

`unet-fast train`, `predict` and `bench` resolve `--device` and `--amp` here, so they accept the
same values and refuse the same ones with the same message; the benchmarks take their training
step from here too.
"""
from __future__ import annotations

import contextlib
import errno
import math
import numbers
import re
from typing import Optional

import torch

AMP_MODES = ("auto", "bf16", "fp16", "off")   # auto: bf16 on a CUDA GPU that has it, else off
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class ConfigError(ValueError):
    """A bad option; the message names it and the fix."""


class RunError(RuntimeError):
    """A run that cannot go on (a full disk, a diverged loss); the message says what happened,
    which of the run's files are intact and what to do."""


# errno values of a full disk or quota: the run stops with one message, never a traceback
DISK_FULL = frozenset(e for e in (getattr(errno, n, None) for n in ("ENOSPC", "EDQUOT", "EFBIG"))
                      if e is not None)


def check_number(value, flag: str, *, integer: bool = False, minimum=None, maximum=None,
                 above=None, below=None):
    """`value` of option `flag` as an int (integer=True) or a finite float, within the bounds
    (minimum/maximum inclusive, above/below exclusive); ConfigError naming the flag otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{flag} must be a number, got {value!r}")
    if integer:
        if not isinstance(value, numbers.Integral):
            if not (math.isfinite(value) and float(value).is_integer()):
                raise ConfigError(f"{flag} must be an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {value}")
    for bound, ok, words in ((minimum, lambda b: value >= b, "at least"),
                             (maximum, lambda b: value <= b, "at most"),
                             (above, lambda b: value > b, "greater than"),
                             (below, lambda b: value < b, "less than")):
        if bound is not None and not ok(bound):
            raise ConfigError(f"{flag} must be {words} {bound:g}, got {value:g}")
    return value


_DEVICE = re.compile(r"^(auto|cpu|cuda)(:\d+)?$")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`--device` (auto, cpu, cuda, cuda:N) as a torch.device; a bare "cuda" under torchrun is
    the process's own GPU (its local rank)."""
    m = _DEVICE.match(str(name))
    if m is None or (m.group(1) == "auto" and m.group(2)):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA GPU is visible; use --device cpu "
                              "(or auto)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} "
                              f"GPU(s), cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return dev


def resolve_amp(amp: str, device: torch.device) -> str:
    """`--amp` for this device: "auto" becomes "bf16" or "off"; fp16 needs a CUDA GPU."""
    if amp not in AMP_MODES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA GPU; on the CPU use --amp bf16 or --amp off")
    return amp


def amp_context(device: torch.device, amp: Optional[str]):
    """Autocast for a resolved mode ("bf16", "fp16"); no autocast for "off" or None."""
    if amp in (None, "off"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> Optional[torch.amp.GradScaler]:
    """fp16 needs loss scaling; bf16 and float32 do not."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def optimizer_step(loss, opt, scaler=None) -> None:
    """Backward and optimizer step, through the fp16 GradScaler when there is one. The caller
    zeroes the gradients at the start of its step (set_to_none before the forward: the previous
    step's gradients are not kept alive through it)."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
