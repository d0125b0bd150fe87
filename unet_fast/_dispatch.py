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
import warnings
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
    __slots__ = ("fn", "supports", "deterministic")

    def __init__(self, fn, supports, deterministic):
        self.fn = fn
        self.supports = supports
        self.deterministic = deterministic


_impls: dict[str, dict[str, _Impl]] = {op: {} for op in OPS}
_backend_reason: dict[str, Callable[[], Optional[str]]] = {"torch": lambda: None}
_local = threading.local()


def register_backend(name: str, reason: Callable[[], Optional[str]]) -> None:
    """Declare a backend; `reason()` gives None when it is usable at all, else why not."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    _backend_reason[name] = reason


def register_impl(op: str, backend: str, fn: Callable, supports: Callable | None = None,
                  deterministic: bool = True) -> None:
    """`deterministic=False` for an implementation whose results can vary run to run (atomics in a
    split-K reduction): under torch.use_deterministic_algorithms(True) "auto" skips it and an
    explicit request raises, as PyTorch does."""
    if op not in _impls:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _impls[op][backend] = _Impl(fn, supports, deterministic)


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
    """Candidates for "auto". On CPU the reference ops are the fast ones. On CUDA every backend that
    can run the input is timed once per (op, shapes, dtype, layout, GPU) and the fastest is kept
    (unet_fast/_autotune.py); the reference (cuDNN) is always among them, so "auto" is never
    slower than eager beyond the noise of that measurement."""
    if device.type == "cuda":
        return ("cuda", "triton", "torch")
    return ("torch",)


def why_not(op: str, backend: str, args: tuple) -> Optional[str]:
    """None if `backend` can run `op` on these arguments, else a sentence saying why not."""
    reason = backend_reason(backend)
    if reason is not None:
        return reason
    impl = _impls[op].get(backend)
    if impl is None:
        return f"the {backend} backend has no implementation of {op}"
    if not impl.deterministic and torch.are_deterministic_algorithms_enabled():
        return (f"its {op} is not deterministic and torch.use_deterministic_algorithms(True) is "
                "set; use backend='torch' or 'auto'")
    if impl.supports is not None:
        try:
            return impl.supports(*args)
        except Exception as e:
            return f"the {backend} backend's check for {op} failed: {e}"
    return None


# (op, backend, key) combinations whose kernel failed under "auto": never tried again.
_failed: set = set()
_warned: set = set()


def _mark_failed(op: str, backend: str, key: str, err: BaseException) -> None:
    _failed.add((op, backend, key))
    if (op, backend) not in _warned:
        _warned.add((op, backend))
        warnings.warn(f"unet_fast: the {backend} kernel of {op} failed ({type(err).__name__}: "
                      f"{err}); backend='auto' falls back for this input from now on",
                      RuntimeWarning, stacklevel=4)


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover
        return False


def _measuring_allowed(device: torch.device) -> bool:
    return (device.type == "cuda" or _MEASURE_ON_CPU) and not _is_compiling()


_MEASURE_ON_CPU = False  # tests switch it on to exercise the measured path without a GPU


def auto_candidates(op: str, args: tuple) -> list:
    """Backends "auto" may use for `op` on `args`, in order of preference."""
    from ._autotune import key_of
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    key = key_of(op, args) if _failed else None
    cands = [c for c in auto_order(device)
             if why_not(op, c, args) is None and (op, c, key) not in _failed]
    if "torch" not in cands:
        cands.append("torch")  # the reference can always run a validated input
    if len(cands) > 1 and _measuring_allowed(device):
        from . import _autotune
        best = _autotune.choose(op, cands, args, lambda name: _impls[op][name].fn)
        for (fop, fname, err) in _autotune._failed_while_measuring:
            _mark_failed(fop, fname, _autotune.key_of(fop, args), err)
        _autotune._failed_while_measuring.clear()
        cands.remove(best)
        cands.insert(0, best)
    elif _is_compiling() and len(cands) > 1:
        # no timing on fake tensors: a choice measured in eager is reused, else the reference
        from . import _autotune
        try:
            hit = _autotune.lookup(op, args)
        except Exception:  # noqa: BLE001  (symbolic shapes have no cache key)
            hit = None
        cands = [hit] if hit in cands else ["torch"]
    return cands


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
    first = auto_candidates(op, args)[0]
    return first, _impls[op][first].fn


def run(op: str, args: tuple, backend: Optional[str] = None):
    """Run `op` on validated `args`. Under "auto" a kernel that fails (compile error, launch
    failure, missing resources) is reported once, never used again for that input, and the next
    candidate runs; under an explicit backend the failure is a BackendUnavailable."""
    name = requested_backend(backend)
    if name != "auto":
        name, fn = resolve(op, args, name)
        try:
            out = fn(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001
            if name == "torch":
                raise
            raise BackendUnavailable(f"backend={name!r} failed to run {op}: {type(e).__name__}: "
                                     f"{e}. Use backend='auto' to fall back to the reference "
                                     "ops.") from e
        record(op, name)
        return out
    cands = auto_candidates(op, args)
    for i, cand in enumerate(cands):
        try:
            out = _impls[op][cand].fn(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001
            if cand == "torch" or i == len(cands) - 1:
                raise
            from ._autotune import key_of
            _mark_failed(op, cand, key_of(op, args), e)
            continue
        record(op, cand)
        return out
    raise AssertionError("unreachable")  # pragma: no cover


# What ran last, per op, in this thread: lets a model report which backend each layer used.
def record(op: str, name: str) -> None:
    if _is_compiling():  # no side effects in a traced graph (e.g. under activation checkpointing)
        return
    last = getattr(_local, "last", None)
    if last is None:
        last = _local.last = {}
    last[op] = name


def last_used(op: str) -> Optional[str]:
    return getattr(_local, "last", {}).get(op)
