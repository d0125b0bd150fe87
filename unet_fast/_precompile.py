"""`UNet.precompile`: compile the Triton kernels of a model's first steps before they run.

A first step compiles its kernels as it meets them: each new shape's autotune configs side by
side (up to three), then times them, then goes on to the next shape, so the ~95 compiles of the
paper U-Net's training step take ~40 rounds one after another. Here the step runs dry instead:
the model's forward (and backward) go through every layer as they would, but each Triton launch
only starts compiling its kernel (every config an autotuned launch would time) on a thread pool
and runs nothing; the compiles of all layers then run side by side, and the first real step finds
them compiled and only times the configs.

The dry step computes nothing: its outputs are never written and are thrown away, and the
parameters' gradients are left as they were. Under backend="auto" it takes the Triton backend
wherever that can run a layer (the reference ops elsewhere) and measures nothing; the first real
step then chooses as always, with Triton's kernels compiled.
"""
from __future__ import annotations

import time
import warnings
from typing import Optional

import torch

from . import _dispatch

_AUTOCAST = (None, torch.bfloat16, torch.float16)
_ON_CPU = False   # tests switch it on: CPU tensors, compiled for a stand-in GPU driver


def _examples(model, spec, what: str) -> list:
    """`spec` (a shape, an example tensor, or a list of them; None: none) as example inputs."""
    if spec is None:
        return []
    items = list(spec) if isinstance(spec, list) else [spec]
    param = next(model.parameters())   # (an input made from a shape: the parameters' device
    out = []                           # and dtype, as without autocast the ops want)
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append(item.detach())
            continue
        ok = (isinstance(item, (tuple, torch.Size)) and len(item) == 4
              and all(type(v) is int and v > 0 for v in item))
        if not ok:
            raise ValueError(
                f"{what} must be an input shape (batch, channels, height, width) of positive ints, "
                f"an example input tensor, or a list of them; got {item!r}")
        out.append(torch.empty(item, device=param.device, dtype=param.dtype))
    return out


def precompile(model, train=None, evaluate=None, *, autocast: Optional[torch.dtype] = None,
               threads: Optional[int] = None) -> dict:
    """Compile the Triton kernels `model`'s training steps on inputs like `train` and its
    evaluations (no gradients) on inputs like `evaluate` will launch, all side by side
    (UNet.precompile documents the arguments). Returns {"kernels": compiles started, "failed":
    those that raised, "seconds": wall time, "skipped": None or why nothing was compiled, and
    "error" where the dry step stopped: a warning says so, and what it did not reach compiles at
    first use}. Bad arguments raise ValueError."""
    if autocast not in _AUTOCAST:
        raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16 (the dtype your "
                         f"steps run torch.autocast with), got {autocast!r}")
    if threads is not None and (type(threads) is not int or threads < 1):
        raise ValueError(f"threads must be a positive int (or None for the default), got {threads!r}")
    steps = ([(x, True) for x in _examples(model, train, "train")]
             + [(x, False) for x in _examples(model, evaluate, "evaluate")])
    if not steps:
        raise ValueError("nothing to precompile: pass train=<input shape> (a training step: "
                         "forward and backward) and/or evaluate=<input shape> (a forward "
                         "without gradients)")
    result = {"kernels": 0, "failed": 0, "seconds": 0.0, "skipped": None}
    if model.backend not in ("auto", "triton"):
        result["skipped"] = f"backend={model.backend!r} runs no Triton kernels"
        return result
    reason = _dispatch.backend_reason("triton")
    if reason is not None:
        result["skipped"] = f"the triton backend cannot run here: {reason}"
        return result
    from .backends.triton_backend import utils
    if utils.INTERPRET:
        result["skipped"] = "the Triton interpreter (TRITON_INTERPRET=1) compiles nothing"
        return result
    threads = threads or utils.compile_threads()
    if threads < 2:   # (one thread compiling all the step's kernels took longer than the step)
        result["skipped"] = ("one compile thread (threads=1 or UNET_FAST_COMPILE_THREADS=1): the "
                             "steps compile their kernels as they meet them")
        return result
    device = steps[0][0].device
    if device.type != "cuda" and not _ON_CPU:
        result["skipped"] = (f"the inputs are on {device}: Triton compiles for CUDA GPUs (move "
                             "the model there first)")
        return result
    report = dict(model._report)
    stats = {"kernels": 0, "failed": 0}
    t0 = time.perf_counter()
    try:
        with utils.compile_only(threads) as stats, _dispatch.compiling_for("triton"):
            for x, training in steps:
                _dry_step(model, x, training, autocast)
    except Exception as e:  # noqa: BLE001 - never worse than compiling at first use
        # (the step itself meets the same error, where "auto" falls back as always)
        result["error"] = f"{type(e).__name__}: {e}"
        warnings.warn(f"unet_fast: precompile stopped ({result['error']}); the kernels it did "
                      "not reach compile at their first use", RuntimeWarning, stacklevel=3)
    finally:
        model._report.clear()
        model._report.update(report)
    result.update(kernels=stats["kernels"], failed=stats["failed"],
                  seconds=round(time.perf_counter() - t0, 3))
    return result


def _dry_step(model, x, training: bool, autocast) -> None:
    """The launches of one step: forward, and for a training step the backward of a loss on the
    output (a dense gradient in the output's layout and float32, as a loss on `logits.float()`
    gives), into no parameter's .grad."""
    amp = (torch.autocast(x.device.type, dtype=autocast) if autocast is not None
           else torch.autocast(x.device.type, enabled=False))
    with amp, torch.set_grad_enabled(training):
        out = model(x)
    if not training:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    if params:
        logits = out.float()
        torch.autograd.grad(logits, params, torch.empty_like(logits), allow_unused=True)
