"""The dispatch layer: the one place that chooses which implementation runs an op.

Each backend registers implementations with `register_impl(op, backend, fn, supports=...)`.
`fn` receives already-validated arguments (same device and dtype, autocast already applied: under
autocast an fp32 bias stays fp32, which `_utils.bias_as` casts for kernels of one dtype) with the
op's signature minus `backend`, and must be autograd-aware itself. `supports(*args)` returns
None when `fn` can run those arguments, else a sentence saying why not.

Choosing: an explicit backend (argument, then `use_backend`, then UNET_FAST_BACKEND) must run the
input or `BackendUnavailable` is raised; "auto" takes the first candidate of `auto_order()` that
can run it and never raises for a missing backend. A fused op whose arguments no one kernel takes
(`up_concat` with a skip of another dtype) runs as its registered decomposition. A backend that
runs a fused op as its own unfused kernels says so (`composite`), and `fused` tells a model
which formulation of a step moves fewer bytes on the backend asked for.

Besides choosing, this layer decides the memory layout a network runs in (`inner_memory_format`)
and records which backend ran each named layer (`report_layers` + `layer`), which is what
`UNet.backend_report()` returns.

The backends themselves (Triton, the compiled extension) are imported on first use, so importing
`unet_fast` or its reference model loads neither. A backend asked for by name gets one call of its
`on_use` hook first (the cuda backend builds a missing extension there); "auto" on a CUDA device
calls it with explicit=False, which may warn but never builds.
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Callable, Optional

import torch

BACKENDS = ("torch", "triton", "cuda")
CHOICES = ("auto",) + BACKENDS

# The public ops plus the fused ones the model's fast path uses.
OPS = (
    "conv3x3_relu",        # (x, weight, bias, padding, relu_input, grad_masked) -> y
    "max_pool2x2",         # (x) -> y
    "crop_concat",         # (skip, up) -> cat([crop(skip), up], 1)
    "conv_transpose2x2",   # (x, weight, bias, relu_input) -> y
    "conv1x1",             # (x, weight, bias, relu_input) -> y
    "conv3x3_relu_pool",   # (x, weight, bias, padding, relu_input, skip_h, skip_w)
                           #   -> (y or its center crop (skip_h, skip_w), max_pool2x2(y))
    "up_concat",           # (skip, x, weight, bias, relu_input) -> crop_concat(skip, conv_transpose2x2(x, ...))
    "concat_conv3x3_relu", # (skip, up, weight, bias, padding, grad_masked)
                           #   -> conv3x3_relu(crop_concat(skip, up), weight, bias, padding, False, grad_masked)
    "conv3x3_relu_conv1x1",  # (x, weight, bias, head_weight, head_bias, padding, relu_input)
                           #   -> conv1x1(conv3x3_relu(x, weight, bias, padding, relu_input),
                           #              head_weight, head_bias, relu_input=True)
)
# The two flags are the model's internal ReLU-gradient contract (docs/design.md, "Backward"):
# relu_input=True: x is a ReLU output, and the op returns dx already multiplied by (x > 0);
# grad_masked=True: every consumer of y was called with relu_input=True, so the gradient arriving
# at y is already masked and the op need not mask it again. Every backend honours relu_input
# (masking is idempotent, so mixing backends layer by layer stays exact); grad_masked only lets a
# backend skip work. skip_h, skip_w (0: none) are the size the decoder will crop the skip to: a
# backend may store that crop itself, so the skip's gradient needs no zero-padded full-size map.


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this input; the message says why and what to do."""


class _Impl:
    __slots__ = ("fn", "supports", "nondeterministic", "composite")

    def __init__(self, fn, supports, nondeterministic, composite):
        self.fn = fn
        self.supports = supports
        self.nondeterministic = nondeterministic
        self.composite = composite


_impls: dict[str, dict[str, _Impl]] = {op: {} for op in OPS}
_decompositions: dict[str, Callable] = {}
_backend_reason: dict[str, Callable[[], Optional[str]]] = {"torch": lambda: None}
_backend_on_use: dict[str, Callable[[bool], None]] = {}
_used: set = set()
_local = threading.local()
_loaded = False


def ensure_backends() -> None:
    """Import (and so register) every backend, once."""
    global _loaded
    if not _loaded:
        _loaded = True
        import importlib
        importlib.import_module(__package__ + ".backends")  # each backend registers itself


def register_backend(name: str, reason: Callable[[], Optional[str]],
                     on_use: Optional[Callable[[bool], None]] = None) -> None:
    """Declare a backend; `reason()` gives None when it is usable at all, else why not (a pure
    query: `available()` calls it). `on_use(explicit)` runs once per process before the backend's
    first use: with explicit=True when a call asks for it by name (the cuda backend then builds a
    missing extension), with explicit=False when "auto" first considers it on a CUDA device (the
    cuda backend then warns once about a build that does not fit)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    _backend_reason[name] = reason
    if on_use is not None:
        _backend_on_use[name] = on_use


def _use(name: str, explicit: bool) -> None:
    if (name, explicit) in _used or name not in _backend_on_use or _is_compiling():
        return
    _used.add((name, explicit))
    _backend_on_use[name](explicit)


def register_impl(op: str, backend: str, fn: Callable, supports: Callable | None = None,
                  nondeterministic: Callable | None = None, composite: bool = False) -> None:
    """`nondeterministic(args)` says when an implementation's results can vary run to run on
    these arguments (e.g. fp32 atomics in a split-K weight gradient, when gradients will be
    computed: `needs_grad(args)`). Under torch.use_deterministic_algorithms(True) "auto" then
    skips it and an explicit request raises, as PyTorch does. `composite`: `fn` runs a fused op
    as the backend's unfused kernels, through the intermediate the fusion exists to avoid (the
    cuda backend's concat_conv3x3_relu copies both halves into a concat buffer); see `fused`."""
    if op not in _impls:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _impls[op][backend] = _Impl(fn, supports, nondeterministic, composite)


def fused(op: str, backend: Optional[str] = None) -> bool:
    """Whether a fused `op` called with this backend request runs as one kernel (False: the
    explicitly requested backend runs it as a composite of its unfused kernels, so a model may
    prefer another formulation of the same step). "auto" counts as fused: it times each
    candidate on the whole op, a composite's copies included."""
    name = requested_backend(backend)
    if name == "auto":
        return True
    ensure_backends()
    impl = _impls[op].get(name)
    return impl is None or not impl.composite


def register_decomposition(op: str, fn: Callable, when: Callable) -> None:
    """A fused op that runs as other ops for arguments one kernel cannot take: when `when(*args)`
    holds, `fn(*args, backend=...)` runs instead, calling other ops (through this layer) with the
    same backend request."""
    _decompositions[op] = (when, fn)


def backend_reason(name: str) -> Optional[str]:
    """None if the backend can be used at all, else why not."""
    ensure_backends()
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


# `use_backend`'s request is per thread, and it must reach the threads that run a backward: on a
# GPU the autograd engine runs it on its device thread, where a region that torch.utils.checkpoint
# recomputes calls the ops again. The engine hands its threads the calling thread's state, which
# includes the Python objects torch stashes per thread (torch._C._stash_obj_in_tls: how torch itself
# carries its compiler context there), so the request is kept both there and in `_local` (read
# while torch.compile traces, which does not trace torch's stash). A torch that cannot take an
# object out of the stash again (no _remove_obj_from_tls: it came with pytorch#182083, in 2.13 and
# 2.14, likely not the GPU machines' 2.11) keeps `_local` only: an object left in a thread's stash
# can deadlock or crash that thread's exit.
_TLS_KEY = "unet_fast.use_backend"
_STASH = all(hasattr(torch._C, f) for f in ("_stash_obj_in_tls", "_get_obj_in_tls",
                                            "_is_key_in_tls", "_remove_obj_from_tls"))


def _stashed() -> Optional[str]:
    if _STASH and not _is_compiling() and torch._C._is_key_in_tls(_TLS_KEY):
        return torch._C._get_obj_in_tls(_TLS_KEY)
    return None


def _stash(name: Optional[str]) -> None:
    if _STASH and not _is_compiling():
        if name is None:   # removed, not set to None: torch's own advice for a thread's stash
            torch._C._remove_obj_from_tls(_TLS_KEY)
        else:
            torch._C._stash_obj_in_tls(_TLS_KEY, name)


def _request() -> Optional[str]:
    name = getattr(_local, "backend", None)
    return name if name is not None else _stashed()   # (a backward's thread: the caller's)


class use_backend:
    """Run the ops inside the block with this backend unless a call names one itself. The
    request holds in this thread and in the threads that run a backward called inside the block
    (a GPU's autograd device thread: a checkpointed region recomputed there asks for it too)."""

    def __init__(self, name: str):
        self.name = check_backend_name(name)

    def __enter__(self):
        # both, as they were: in a backward's thread the stash is the caller's request
        self.prev = (getattr(_local, "backend", None), _stashed())
        _local.backend = self.name
        _stash(self.name)
        return self

    def __exit__(self, *exc):
        _local.backend, stashed = self.prev
        _stash(stashed)
        return False


def requested_backend(backend: Optional[str] = None) -> str:
    """The backend a call asks for: its argument, else `use_backend`, else the environment."""
    if backend is not None:
        return check_backend_name(backend)
    ctx = _request()
    if ctx is not None:
        return ctx
    import os
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


def inner_memory_format(backend: Optional[str], device: torch.device):
    """The layout a network runs in: channels_last (NHWC) on CUDA, where our kernels and cuDNN's
    fastest paths want it, and whenever our kernels are requested (their CPU twins follow the
    same code paths); None: the caller's own. The caller's format is restored at the output."""
    name = requested_backend(backend)
    if device.type == "cuda" or name in ("triton", "cuda"):
        return torch.channels_last
    return None


def needs_grad(args: tuple) -> bool:
    """Whether an op called on `args` now will be differentiated (autograd records it)."""
    return torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def why_not(op: str, backend: str, args: tuple) -> Optional[str]:
    """None if `backend` can run `op` on these arguments, else a sentence saying why not."""
    reason = backend_reason(backend)
    if reason is not None:
        return reason
    impl = _impls[op].get(backend)
    if impl is None:
        return f"the {backend} backend has no implementation of {op}"
    if (impl.nondeterministic is not None and torch.are_deterministic_algorithms_enabled()
            and impl.nondeterministic(args)):
        return (f"its {op} is not deterministic here (fp32 atomics in its weight gradient) and "
                "torch.use_deterministic_algorithms(True) is set; use backend='torch' or 'auto'")
    if impl.supports is not None:
        try:
            return impl.supports(*args)
        except Exception as e:
            return f"the {backend} backend's check for {op} failed: {e}"
    return None


# (op, backend, key) combinations whose kernel failed under "auto": never tried again.
_failed: set = set()
# (op, backend, key) combinations whose kernels (forward and, for a training key, backward) have
# run in this process: "auto" trusts a training step to them without trying them first.
_proven: set = set()
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


def _is_exporting() -> bool:
    # torch.compiler.is_exporting() returns this flag, which torch.export sets while it traces.
    # The flag itself, not the call: torch 2.11's dynamo folds the call to True while it traces
    # any torch.compile (2.13 no longer does), which sent every compiled model to the reference ops.
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    if isinstance(flag, bool):
        return flag
    try:
        return torch.compiler.is_exporting()
    except AttributeError:  # pragma: no cover
        return False


def _measuring_allowed(device: torch.device) -> bool:
    return (device.type == "cuda" or _MEASURE_ON_CPU) and not _is_compiling()


# tests switch it on to exercise without a GPU what runs on CUDA devices only: "auto"'s
# measurements and an explicit backend's first-run check
_MEASURE_ON_CPU = False


def auto_candidates(op: str, args: tuple) -> list:
    """Backends "auto" may use for `op` on `args`, in order of preference."""
    from ._autotune import key_of
    ensure_backends()
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    key = key_of(op, args) if _failed else None
    order = auto_order(device)
    if device.type == "cuda":
        for c in order:
            _use(c, False)
    cands = [c for c in order if why_not(op, c, args) is None and (op, c, key) not in _failed]
    if "torch" not in cands:
        cands.append("torch")  # the reference can always run a validated input
    if len(cands) > 1 and _measuring_allowed(device):
        from . import _autotune
        best, failures, ran = _autotune.choose(op, cands, args, lambda name: _impls[op][name].fn)
        key = _autotune.key_of(op, args)
        for fname, err in failures:
            _mark_failed(op, fname, key, err)
        _proven.update((op, name, key) for name in ran)
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


def _not_kernel_failures() -> tuple:
    """Exceptions that pass through an op untouched: out of memory (the caller's to handle), and
    the control flow of non-reentrant activation checkpointing, which stops a recomputation with
    an exception once it has what the backward needs."""
    import torch.utils.checkpoint as ckpt
    stop = getattr(ckpt, "_StopRecomputationError", None)
    return (torch.OutOfMemoryError,) + ((stop,) if stop is not None else ())


_NOT_KERNEL_FAILURES = _not_kernel_failures()


def _prove(op: str, cand: str, args: tuple) -> None:
    """Before a kernel's backward is part of a training step, run its forward and backward once
    on copies of the input (once per op, backend and input key in a process; choices measured in
    this process are proven already): a backward kernel that cannot run then fails here, where
    "auto" can fall back, instead of inside loss.backward()."""
    from . import _autotune
    key = _autotune.key_of(op, args)
    if (op, cand, key) in _proven:
        return
    _autotune.validate(_impls[op][cand].fn, args)
    _proven.add((op, cand, key))


# The first-run check of an explicit backend: the first call of an op on each input (its shapes,
# dtypes, strides, devices, gradients or not; once per process) under an explicitly requested
# backend other than "torch" also runs once on copies of its input beside the reference ops, and
# its results (outputs and, for a training key, input gradients) are compared as "auto" compares
# what it measures. Its kernels have never run on a GPU before they meet a user's: wrong numbers
# there are then a BackendUnavailable with the numbers, not a silently wrong training run. On CUDA
# devices only (the CPU kernels are the ones CI tests); UNET_FAST_CHECK=0 turns it off.
_checked: dict = {}   # (op, backend, input key) -> None (passed) or the mismatch, as a sentence
_checking = threading.local()  # set while a check runs: the ops it calls are not checked again


def _failed_to_run(name: str, op: str, err: BaseException) -> BackendUnavailable:
    return BackendUnavailable(f"backend={name!r} failed to run {op}: {type(err).__name__}: {err}. "
                              "Use backend='auto' to fall back to the reference ops.")


def _check_wanted(name: str, args: tuple) -> bool:
    if name == "torch" or _compiling_for is not None:
        return False
    if getattr(_checking, "active", False) or os.environ.get("UNET_FAST_CHECK", "1") == "0":
        return False
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    if device is None or not _measuring_allowed(device):
        return False
    # (a CUDA graph being captured cannot run the reference beside it; a warm-up call, which
    # capturing needs anyway, has checked the input already)
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def _first_run_check(op: str, name: str, args: tuple) -> None:
    """Raise BackendUnavailable if backend `name`'s `op` gives wrong numbers on `args` (checked on
    the first call with such an input, remembered after)."""
    from . import _autotune
    # (what `_autotune.key_of` says, strides for layouts, and devices, in a third of its time:
    # this runs on every call)
    key = (op, name, torch.is_grad_enabled()) + tuple(
        (a.shape, a.dtype, a.stride(), a.device, a.requires_grad) if isinstance(a, torch.Tensor)
        else a for a in args)
    if key not in _checked:
        _checking.active = True
        try:
            _autotune.compare_once(op, _impls[op][name].fn, _impls[op]["torch"].fn, args)
            _checked[key] = None
        except _autotune.NumericMismatch as e:
            _checked[key] = str(e)
        except _NOT_KERNEL_FAILURES + (BackendUnavailable,):
            raise
        except Exception as e:  # noqa: BLE001  (not remembered: the next call tries again)
            raise _failed_to_run(name, op, e) from e
        finally:
            _checking.active = False
    if _checked[key] is not None:
        raise BackendUnavailable(
            f"backend={name!r} gives wrong numbers for {op} on this input (its first-run check "
            f"against the reference ops): {_checked[key]}. Use backend='auto', which falls back "
            "to the reference ops for this input, or backend='torch'.")


def run(op: str, args: tuple, backend: Optional[str] = None):
    """Run `op` on validated `args`. Under "auto" a kernel that fails (compile error, launch
    failure, missing resources), in the forward or, tried first (`_prove`), in the backward, is
    reported once, never used again for that input, and the next candidate runs; under an
    explicit backend the failure is a BackendUnavailable."""
    ensure_backends()
    if _is_exporting():
        # An exported graph (torch.export, ONNX) is for other runtimes, which know standard ops
        # only: whatever backend was asked for, it records the reference ops.
        return _impls[op]["torch"].fn(*args)
    decomposition = _decompositions.get(op)
    if decomposition is not None and decomposition[0](*args):
        return decomposition[1](*args, backend=backend)
    name = requested_backend(backend)
    if name == "auto" and _compiling_for is not None:
        # a precompile's dry step (unet_fast/_precompile.py): its backend wherever it can run
        # the input, else the reference; nothing timed (its kernels run nothing)
        name = _compiling_for if why_not(op, _compiling_for, args) is None else "torch"
    if name != "auto":
        _use(name, True)  # the cuda backend builds a missing extension here, once
        reason = why_not(op, name, args)
        if reason is not None:
            raise BackendUnavailable(
                f"backend={name!r} cannot run {op}: {reason}. Use backend='auto' (or 'torch') to "
                "fall back to the reference ops.")
        if _check_wanted(name, args):
            _first_run_check(op, name, args)
        try:
            out = _impls[op][name].fn(*args)
        except _NOT_KERNEL_FAILURES:
            raise
        except Exception as e:  # noqa: BLE001
            if name == "torch":
                raise
            raise _failed_to_run(name, op, e) from e
        record(op, name)
        return out
    cands = auto_candidates(op, args)
    for i, cand in enumerate(cands):
        try:
            if cand != "torch" and needs_grad(args) and not _is_compiling():
                _prove(op, cand, args)
            out = _impls[op][cand].fn(*args)
        except _NOT_KERNEL_FAILURES:
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


# The backend a precompile's dry step compiles for (None: no precompile running). Process-wide,
# not per thread: a GPU's autograd engine runs the backward, and so a checkpointed level's
# recomputation, on a thread of its own.
_compiling_for: Optional[str] = None


class compiling_for:
    """Within: "auto" runs `name` wherever it can run the input (else the reference) and measures
    nothing: the dry step of `UNet.precompile`, whose kernels compile and run nothing (so their
    timings would be no timings)."""

    def __init__(self, name: str):
        self.name = check_backend_name(name)

    def __enter__(self):
        global _compiling_for
        if _compiling_for is not None:
            raise RuntimeError("precompiles do not nest")
        _compiling_for = self.name
        return self

    def __exit__(self, *exc):
        global _compiling_for
        _compiling_for = None
        return False


# ---------------------------------------------------------------- what ran
def record(op: str, name: str) -> None:
    """Remember what ran: per op in this thread (`last_used`), and per layer when a model's
    forward is being reported (`report_layers`)."""
    if _is_compiling():  # no side effects in a traced graph (e.g. under activation checkpointing)
        return
    last = getattr(_local, "last", None)
    if last is None:
        last = _local.last = {}
    last[op] = name
    report = getattr(_local, "report", None)
    layer_name = getattr(_local, "layer", None)
    if report is not None and layer_name is not None:
        for part in layer_name.split("+"):   # (a fused op runs two layers: "a+b")
            report[part] = name


def last_used(op: str) -> Optional[str]:
    return getattr(_local, "last", {}).get(op)


class report_layers:
    """Inside the block, every op run under a `layer(name)` writes {name: backend} into `report`.
    (A no-op while torch.compile traces: a compiled graph's choices were made when traced.)"""

    def __init__(self, report: dict):
        self.report = report

    def __enter__(self):
        if not _is_compiling():
            self.prev = getattr(_local, "report", None)
            _local.report = self.report
        return self

    def __exit__(self, *exc):
        if not _is_compiling():
            _local.report = self.prev
        return False


class layer:
    """Names the layer the ops inside the block belong to (for `report_layers`, and for tools
    that attribute kernels to layers, such as tools/kernel_model.py); an op that fuses several
    layers runs under all their names (`layer("up.3.conv.2", "head")`: "up.3.conv.2+head")."""

    def __init__(self, *names: str):
        self.name = "+".join(names)

    def __enter__(self):
        if not _is_compiling():
            self.prev = getattr(_local, "layer", None)
            _local.layer = self.name
        return self

    def __exit__(self, *exc):
        if not _is_compiling():
            _local.layer = self.prev
        return False


def current_layer() -> Optional[str]:
    return getattr(_local, "layer", None)
