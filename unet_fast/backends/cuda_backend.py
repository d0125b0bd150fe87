"""The `cuda` backend: our compiled extension `unet_fast._C` (sources in csrc/).

The C++ side defines the op schemas (`TORCH_LIBRARY(unet_fast, m)`) and registers CPU kernels
(csrc/cpu) and CUDA kernels (csrc/cuda); importing `_C` runs those registrations. Python adds what
the dispatcher needs around them: fake (meta) kernels for torch.compile and the autograd formulas,
whose backward calls the backward ops (`_<op>_backward`).
"""
from __future__ import annotations

import torch

from .._dispatch import needs_grad, register_backend, register_impl
from . import cutlass_sm90

try:
    from .. import _C  # noqa: F401  (loads the op registrations)
    _LOAD_ERROR = None
except (ImportError, OSError) as e:
    _LOAD_ERROR = (f"the extension unet_fast._C is not built or failed to load ({e}); build it with "
                   "`pip install --no-build-isolation -e .` (needs a C++ compiler; CUDA kernels "
                   "also need nvcc and a CUDA build of torch)")

register_backend("cuda", lambda: _LOAD_ERROR)


_kernels: dict = {}  # (op, device type) -> registered; filled once, so torch.compile traces a lookup


def has_kernel(op: str, device_type: str) -> bool:
    """Whether `_C` registered a kernel of `unet_fast::op` for this device type."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if _LOAD_ERROR is not None or key is None:
        return False
    found = _kernels.get((op, device_type))
    if found is None:
        found = _kernels[(op, device_type)] = torch._C._dispatch_has_kernel_for_dispatch_key(
            f"unet_fast::{op}", key)
    return found


def extension_path():
    return None if _LOAD_ERROR is not None else _C.__file__


def _supports(op: str):
    def supports(*args):
        t = args[0]
        if not has_kernel(op, t.device.type):
            if t.device.type == "cuda":
                return ("the extension was built without CUDA kernels; rebuild it on a machine "
                        "with nvcc and a CUDA build of torch (or UNET_FAST_FORCE_CUDA=1)")
            return f"the extension has no {t.device.type} kernel for {op}"
        if t.device.type == "cuda" and any(isinstance(a, torch.Tensor) and a.dtype == torch.float64
                                           for a in args):
            return ("its CUDA kernels run float32, float16 and bfloat16 (float64 only on the CPU "
                    "kernels); convert with .float()")
        if op in _CUTLASS_OPS and _cutlass_wanted(args):
            # bf16 on Hopper: the CUTLASS units, once they passed their first-run check there
            return cutlass_sm90.why_not(args[0], args[1], args[3], needs_grad(args))
        return None
    return supports


# The ops the CUTLASS sm_90a units can run (arguments (x, weight, bias, padding, ...)).
_CUTLASS_OPS = ("conv3x3_relu", "conv3x3_relu_pool")


def _cutlass_wanted(args) -> bool:
    return cutlass_sm90.wanted(args[0], args[1], args[3])


def _atomic_wgrad(op: str):
    """The hand-written CUDA kernels' weight gradients sum split-K partials with fp32 atomics (the
    CUTLASS path's in a fixed order)."""
    def nondeterministic(args) -> bool:
        return args[0].is_cuda and needs_grad(args) and not (op in _CUTLASS_OPS and _cutlass_wanted(args))
    return nondeterministic


if _LOAD_ERROR is None:
    from . import cuda_ops  # noqa: E402  (fake kernels and autograd of every op in _C)

    for _op, _fn in cuda_ops.IMPLS.items():
        register_impl(_op, "cuda", _fn, _supports(_op),
                      nondeterministic=_atomic_wgrad(_op) if _op in cuda_ops.ATOMIC_WGRAD else None)
        for _dev in ("cpu", "cuda"):
            has_kernel(_op, _dev)
