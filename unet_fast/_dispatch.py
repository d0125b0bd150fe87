"""The dispatch layer: the one place that chooses which implementation runs an op.

Each backend registers implementations with `register_impl(op, backend, fn, supports=...)`.
`fn` receives already-validated arguments (same device and dtype, autocast already applied) with
the op's signature minus `backend`, and must be autograd-aware itself. `supports(*args)` returns
None when `fn` can run those arguments, else a sentence saying why not.

Choosing: an explicit backend (argument, then `use_backend`, then UNET_FAST_BACKEND) must run the
input or `BackendUnavailable` is raised; "auto" takes the first candidate of `auto_order()` that
can run it and never raises for a missing backend.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Optional

import torch

BACKENDS = ("torch", "triton", "cuda")
CHOICES = ("auto",) + BACKENDS

# The public ops plus the fused ones the model's fast path uses.
OPS = (
    "conv3x3_relu",        # (x, weight, bias, padding) -> y
    "max_pool2x2",         # (x) -> y
    "crop_concat",         # (skip, up) -> cat([crop(skip), up], 1)
    "conv_transpose2x2",   # (x, weight, bias) -> y
    "conv1x1",             # (x, weight, bias) -> y
    "conv3x3_relu_pool",   # (x, weight, bias, padding) -> (y, max_pool2x2(y))
    "up_concat",           # (skip, x, weight, bias) -> crop_concat(skip, conv_transpose2x2(x, ...))
)


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this input; the message says why and what to do."""


class _Impl:
    __slots__ = ("fn", "supports")

    def __init__(self, fn, supports):
        self.fn = fn
        self.supports = supports


_impls: dict[str, dict[str, _Impl]] = {op: {} for op in OPS}
_backend_reason: dict[str, Callable[[], Optional[str]]] = {"torch": lambda: None}
_local = threading.local()


def register_backend(name: str, reason: Callable[[], Optional[str]]) -> None:
    """Declare a backend; `reason()` gives None when it is usable at all, else why not."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    _backend_reason[name] = reason


def register_impl(op: str, backend: str, fn: Callable, supports: Callable | None = None) -> None:
    if op not in _impls:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _impls[op][backend] = _Impl(fn, supports)


def backend_reason(name: str) -> Optional[str]:
    """None if the backend can be used at all, else why not."""
    fn = _backend_reason.get(name)
    if fn is None:
        return f"the {name} backend is not registered"
    try:
        return fn()
    except Exception as e:  # a broken probe must not break "auto"
        return f"checking the {name} backend failed: {e}"


def available() -> dict:
    """{"torch": None, "triton": None or why not, "cuda": None or why not}."""
    return {name: backend_reason(name) for name in BACKENDS}


def check_backend_name(name: str, what: str = "backend") -> str:
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, CHOICES))}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops inside the block with this backend unless a call names one itself."""
    check_backend_name(name)
    prev = getattr(_local, "backend", None)
    _local.backend = name
    try:
        yield
    finally:
        _local.backend = prev


def requested_backend(backend: Optional[str] = None) -> str:
    """The backend a call asks for: its argument, else `use_backend`, else the environment."""
    if backend is not None:
        return check_backend_name(backend)
    ctx = getattr(_local, "backend", None)
    if ctx is not None:
        return ctx
    env = os.environ.get("UNET_FAST_BACKEND")
    if env:
        return check_backend_name(env.strip().lower(), "UNET_FAST_BACKEND")
    return "auto"


def auto_order(device: torch.device) -> tuple[str, ...]:
    """Candidates for "auto", best first. On CPU the reference ops are the fast ones. On CUDA the
    reference (cuDNN) stays first until measured choices exist (the auto-tuning issue): "auto" must
    never be slower than eager."""
    return ("torch",)


def why_not(op: str, backend: str, args: tuple) -> Optional[str]:
    """None if `backend` can run `op` on these arguments, else a sentence saying why not."""
    reason = backend_reason(backend)
    if reason is not None:
        return reason
    impl = _impls[op].get(backend)
    if impl is None:
        return f"the {backend} backend has no implementation of {op}"
    if impl.supports is not None:
        try:
            return impl.supports(*args)
        except Exception as e:
            return f"the {backend} backend's check for {op} failed: {e}"
    return None


def resolve(op: str, args: tuple, backend: Optional[str] = None):
    """(backend name, implementation) that will run `op` on `args`."""
    name = requested_backend(backend)
    if name != "auto":
        reason = why_not(op, name, args)
        if reason is not None:
            raise BackendUnavailable(
                f"backend={name!r} cannot run {op}: {reason}. Use backend='auto' (or 'torch') to "
                "fall back to the reference ops.")
        return name, _impls[op][name].fn
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    for cand in auto_order(device):
        if why_not(op, cand, args) is None:
            return cand, _impls[op][cand].fn
    return "torch", _impls[op]["torch"].fn


# What ran last, per op, in this thread: lets a model report which backend each layer used.
def record(op: str, name: str) -> None:
    last = getattr(_local, "last", None)
    if last is None:
        last = _local.last = {}
    last[op] = name


def last_used(op: str) -> Optional[str]:
    return getattr(_local, "last", {}).get(op)
