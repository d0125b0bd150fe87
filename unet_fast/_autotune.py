"""Measured choices for backend="auto": time each implementation that can run an input once, keep
the fastest, and remember it on disk.

The cache file lives under the user's cache directory (UNET_FAST_CACHE_DIR, else
$XDG_CACHE_HOME/unet_fast, else ~/.cache/unet_fast) and its name carries a hash of everything a
timing depends on: GPU name, torch / Triton / CUDA / unet_fast versions. Processes share it:
a new choice is merged into what is on disk under a file lock (so concurrent runs lose none), then
written atomically (temporary file, then rename); a file that cannot be read as a cache, for any
reason, is ignored, reported once and rebuilt.

What it measures it also checks: every candidate's results (forward outputs and, for a training
key, input gradients) are compared with the reference ops' (the "torch" candidate, measured on the
same input), and a kernel whose results are far from them (`MISMATCH_RTOL`, relative RMS: far
above two correct implementations' rounding, far below what a wrong tap, window, tile or layout
gives) is a failure like a kernel that raises: `auto` warns once, with the numbers, and never uses
it for that input. Kernels that have never run on a GPU then cannot give a user wrong numbers
unnoticed under the default backend.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import statistics
import tempfile
import threading
import time
import warnings

import torch

from . import _build

_lock = threading.Lock()
_memory: dict[str, str] | None = None  # key -> backend, loaded lazily from the file
_path_loaded: str | None = None

# Repeats of one measurement; small because each new key costs a pause once.
WARMUP, REPEAT = 2, 5

# A candidate whose results differ from the reference's by more than this (relative RMS, per
# output and per input gradient) gives wrong numbers. Two correct implementations differ by their
# rounding: about 0.2% in bf16, less in fp16 and TF32.
MISMATCH_RTOL = 2e-2
# ... and whose outputs are finite where the reference's are not, or the reverse, at more than
# this fraction of the elements (an fp16 value at the edge of overflow may round either way).
MISMATCH_NONFINITE = 1e-4
# Ops whose outputs are ReLU outputs: a measured step's output gradient leaves out their kink
# (`_output_grads`).
_RELU_OUTPUT_OPS = ("conv3x3_relu", "conv3x3_relu_pool", "concat_conv3x3_relu")
# ... which is every output within this fraction of the largest from zero
_KINK = 1e-2
# Ops whose backward routes the gradient through a max of values the op computes itself: two
# correct implementations round those values differently and route some pooling windows'
# gradients to different pixels (a few percent of the RMS in bf16): only their outputs are
# compared.
_ROUTED_BACKWARD = ("conv3x3_relu_pool",)


class NumericMismatch(RuntimeError):
    """A candidate's results on an input are far from the reference ops' (module docstring)."""


def _versions(device: torch.device) -> dict:
    import unet_fast
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"gpu": gpu, "torch": torch.__version__, "triton": tv, "cuda": torch.version.cuda,
            "unet_fast": unet_fast.__version__}


def cache_dir() -> str:
    d = os.environ.get("UNET_FAST_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "unet_fast")
    return d


@functools.lru_cache(maxsize=None)
def _ident_hash(device: str) -> str:
    """Hash of what a timing depends on; fixed for a process, so computed once per device (every
    op call under "auto" asks for the cache path)."""
    ident = json.dumps(_versions(torch.device(device)), sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def cache_path(device: torch.device) -> str:
    return os.path.join(cache_dir(), f"autotune-{_ident_hash(str(device))}.json")


def _read(path: str) -> dict:
    """The choices on disk ({} when there is no file). Any file that is not a cache (bad JSON,
    another structure, nesting deep enough to exhaust the parser's recursion, bad bytes) is
    reported once and treated as empty: the next save replaces it."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read().decode("utf-8"))
        if not isinstance(raw, dict) or not isinstance(raw.get("choices"), dict):
            raise ValueError("not an autotune cache")
        return {k: v for k, v in raw["choices"].items() if isinstance(k, str) and isinstance(v, str)}
    except (OSError, ValueError, RecursionError, MemoryError) as e:  # UnicodeError is a ValueError
        if path not in _warned_corrupt:
            _warned_corrupt.add(path)
            warnings.warn(f"unet_fast: ignoring the corrupt autotune cache {path} "
                          f"({type(e).__name__}: {str(e)[:200]}); it will be rebuilt",
                          RuntimeWarning, stacklevel=4)
        return {}


_warned_corrupt: set = set()


def _load(path: str) -> dict:
    global _memory, _path_loaded
    if _memory is not None and _path_loaded == path:
        return _memory
    _memory, _path_loaded = _read(path), path
    return _memory


# (where it degrades to no lock, the cache's write is still atomic: only a concurrent update may be
# lost)
_file_lock = _build.file_lock


def _save(path: str, data: dict, device: torch.device) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".autotune-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"versions": _versions(device), "choices": data}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a read-only home must not break a forward pass
        warnings.warn(f"unet_fast: could not write the autotune cache {path} ({e})",
                      RuntimeWarning, stacklevel=3)


def reset_memory() -> None:
    """Forget the in-memory copy (tests; a changed cache directory)."""
    global _memory, _path_loaded
    _memory, _path_loaded = None, None
    _warned_corrupt.clear()


def key_of(op: str, args: tuple) -> str:
    """What a choice depends on: the op, whether it will be differentiated (a choice measured
    under no_grad timed no backward, so it says nothing about training), and per argument its
    shape, dtype, layout and requires_grad (else its value)."""
    grad = torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    parts = [op, "train" if grad else "infer"]
    for a in args:
        if isinstance(a, torch.Tensor):
            fmt = "cl" if (a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last)
                           and not a.is_contiguous()) else "c"
            parts.append(f"{tuple(a.shape)}:{str(a.dtype)[6:]}:{fmt}:{int(a.requires_grad)}")
        else:
            parts.append(repr(a))
    return "|".join(parts)


def _output_grads(op: str, outs) -> list:
    """The output gradients of a measured step, made once from the reference's outputs and given
    to every candidate: ones; for ReLU outputs ones where the output exceeds _KINK of its largest
    value, else zero. Two correct implementations may put an output near the ReLU's kink on
    either side of it (their sums round differently), and a mask that flips there would move a
    whole gradient element; with no gradient near the kink a flip changes nothing. (Such a
    gradient is also masked by every candidate's own ReLU, as the model's contract has it for
    grad_masked=True.)"""
    if op not in _RELU_OUTPUT_OPS:
        return [torch.ones_like(o) for o in outs]
    grads = []
    for o in outs:
        f = torch.nan_to_num(o.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
        top = f.abs().amax() if f.numel() else f.new_zeros(())
        grads.append((f > _KINK * top).to(o.dtype))
    return grads


def _step(fn, args, op: str = "", out_grads: list | None = None):
    """A callable running `fn` once on detached copies of `args` as a training step would: the
    forward, and when gradients are needed the backward too, with output gradients of ones, or
    those in `out_grads` (a list the candidates of one measurement share: the first run, the
    reference's, fills it by `_output_grads`). Its graph is its own, never part of the caller's.
    Given a list `keep`, the call puts its results there: (outputs, input gradients), detached."""
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    args = tuple(a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                 for a in args)

    def once(keep=None):
        # identity hooks shadow any outer saved-tensor hooks (activation checkpointing)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            out = fn(*args)
            outs = out if isinstance(out, tuple) else (out,)
            grads = ()
            if needs_grad:  # a training step pays for the backward too
                if out_grads is None:
                    loss = sum(o.float().sum() for o in outs)
                else:
                    if not out_grads:
                        out_grads.extend(_output_grads(op, outs))
                    loss = sum((o.float() * g.float()).sum() for o, g in zip(outs, out_grads))
                grads = torch.autograd.grad(
                    loss, [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad])
            if keep is not None:
                keep[:] = [tuple(o.detach() for o in outs), tuple(grads)]

    return once


def validate(fn, args) -> None:
    """Run `fn`'s forward and backward once on copies of `args`: raises what a kernel of either
    pass raises, before a real training step depends on it."""
    _step(fn, args)()


def _time(once, device: torch.device, keep=None) -> float:
    """The median time of `once` (a `_step`); the last run puts its results in `keep`."""
    for _ in range(WARMUP):
        once()
    times = []
    for i in range(REPEAT):
        last = keep if i == REPEAT - 1 else None
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            once(last)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            once(last)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _relative_rms(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS(ours - ref) / RMS(ref) over the elements finite in both (one image at a time: no
    full-size temporaries); inf if the shapes differ, or if more than MISMATCH_NONFINITE of the
    elements are finite in one and not the other."""
    if ours.shape != ref.shape:
        return float("inf")
    if ours.numel() == 0:
        return 0.0
    num = den = bad = torch.zeros((), dtype=torch.float64, device=ref.device)
    for a, b in (zip(ours, ref) if ours.dim() > 1 else ((ours, ref),)):
        a, b = a.float(), b.float()
        fa, fb = torch.isfinite(a), torch.isfinite(b)
        both = fa & fb
        bad = bad + (fa != fb).sum()
        num = num + torch.where(both, a - b, 0.0).double().square().sum()
        den = den + torch.where(both, b, 0.0).double().square().sum()
    num, den, bad = num.item(), den.item(), bad.item()
    if bad > MISMATCH_NONFINITE * ref.numel():
        return float("inf")
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return (num / den) ** 0.5


def check_against(op: str, got, ref) -> None:
    """Raise NumericMismatch if a candidate's results `got` (outputs, input gradients: `_step`'s
    `keep`) are far from the reference's `ref`."""
    (outs, grads), (ref_outs, ref_grads) = got, ref
    pairs = [(f"output {i}", o, r) for i, (o, r) in enumerate(zip(outs, ref_outs))]
    if op not in _ROUTED_BACKWARD:
        pairs += [(f"input gradient {i}", g, r) for i, (g, r) in enumerate(zip(grads, ref_grads))]
    for what, o, r in pairs:
        err = _relative_rms(o, r)
        if not err <= MISMATCH_RTOL:
            raise NumericMismatch(
                f"its {what} {tuple(o.shape)} differs from the reference ops' by {err:.3g} "
                f"(relative RMS; rounding alone stays under {MISMATCH_RTOL:g}): wrong numbers on "
                "this input. Please report it, with the output of `python -m unet_fast info`")


def compare_once(op: str, fn, ref_fn, args: tuple) -> None:
    """Run the reference `ref_fn`, then `fn`, once each on copies of `args` as `choose` measures
    them (the same output gradients for both) and raise NumericMismatch if `fn`'s results are far
    from the reference's: the first-run check of an explicitly requested backend."""
    out_grads, ref, got = [], [], []
    _step(ref_fn, args, op, out_grads)(ref)
    _step(fn, args, op, out_grads)(got)
    check_against(op, got, ref)


def lookup(op: str, args: tuple):
    """The choice remembered in this process for `op` on `args`, or None. No file access and no
    measuring, so it is safe to trace under torch.compile."""
    if _memory is None:
        return None
    return _memory.get(key_of(op, args))


def choose(op: str, candidates: list, args: tuple, run_candidate) -> tuple:
    """(fastest, failures, measured): the fastest of `candidates` (backend names) on `args`,
    measured once and remembered; the [(name, exception)] of candidates that raised while being
    measured or whose results are far from the reference's (NumericMismatch; left out, the caller
    reports them); the names that ran (forward and, when gradients are needed, backward) without
    failing in this call ([] when the choice came from the cache).
    `run_candidate(name)` returns that backend's callable."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    path = cache_path(device)
    key = key_of(op, args)
    with _lock:
        data = _load(path)
        hit = data.get(key)
    if hit in candidates:
        return hit, [], []
    timings, failures = {}, []
    # the reference first: every other candidate's results are checked against its, and its
    # outputs give the output gradients all of them get
    ref = [] if "torch" in candidates else None
    out_grads = []
    for name in sorted(candidates, key=lambda n: n != "torch"):
        got = ref if name == "torch" else ([] if ref else None)
        try:
            timings[name] = _time(_step(run_candidate(name), args, op, out_grads), device, got)
            if got is not None and got is not ref:
                check_against(op, got, ref)
        except Exception as e:  # noqa: BLE001  (a kernel that fails is not a choice)
            timings[name] = float("inf")
            failures.append((name, e))
    best = min(candidates, key=timings.get)   # (ties: the order of preference)
    remember(path, key, best, device)
    return best, failures, [n for n in candidates if timings[n] != float("inf")]


def remember(path: str, key: str, choice: str, device: torch.device) -> None:
    """Add one choice: merged into the file's current contents under the file lock (other
    processes' choices made since this one loaded the file are kept), then into memory."""
    global _memory, _path_loaded
    with _lock, _file_lock(path):
        mine = dict(_load(path))
        data = _read(path)
        for k, v in mine.items():
            data.setdefault(k, v)
        data[key] = choice
        _save(path, data, device)
        _memory, _path_loaded = data, path
