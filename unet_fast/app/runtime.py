"""Run-time choices the commands share: the device, the autocast mode and the optimizer step.

`unet-fast train`, `predict` and `bench` resolve `--device` and `--amp` here, so they accept the
same values and refuse the same ones with the same message; the benchmarks take their training
step from here too.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

AMP_MODES = ("auto", "bf16", "fp16", "off")   # auto: bf16 on a CUDA GPU that has it, else off
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class ConfigError(ValueError):
    """A bad option; the message names it and the fix."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`--device` (auto, cpu, cuda, cuda:N) as a torch.device; a bare "cuda" under torchrun is
    the process's own GPU (its local rank)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA GPU is visible; use --device cpu "
                              "(or auto)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
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
    return torch.autocast(device.type, dtype=_AMP_DTYPES[amp])


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
