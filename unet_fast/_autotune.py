"""Measured choices for backend="auto": time each implementation that can run an input once, keep
the fastest, and remember it on disk.

The cache file lives under the user's cache directory (UNET_FAST_CACHE_DIR, else
$XDG_CACHE_HOME/unet_fast, else ~/.cache/unet_fast) and its name carries a hash of everything a
timing depends on: GPU name, torch / Triton / CUDA / unet_fast versions. It is written atomically
(temporary file, then rename); a corrupt file is ignored, reported once and rebuilt.
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

_lock = threading.Lock()
_memory: dict[str, str] | None = None  # key -> backend, loaded lazily from the file
_path_loaded: str | None = None

# Repeats of one measurement; small because each new key costs a pause once.
WARMUP, REPEAT = 2, 5


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


def _load(path: str) -> dict:
    global _memory, _path_loaded
    if _memory is not None and _path_loaded == path:
        return _memory
    data: dict = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                raw = json.load(f)
            if not isinstance(raw, dict) or not isinstance(raw.get("choices"), dict):
                raise ValueError("not an autotune cache")
            data = {k: v for k, v in raw["choices"].items() if isinstance(v, str)}
        except (OSError, ValueError) as e:
            warnings.warn(f"unet_fast: ignoring the corrupt autotune cache {path} ({e}); "
                          "it will be rebuilt", RuntimeWarning, stacklevel=3)
            data = {}
    _memory, _path_loaded = data, path
    return data


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


def key_of(op: str, args: tuple) -> str:
    parts = [op]
    for a in args:
        if isinstance(a, torch.Tensor):
            fmt = "cl" if (a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last)
                           and not a.is_contiguous()) else "c"
            parts.append(f"{tuple(a.shape)}:{str(a.dtype)[6:]}:{fmt}:{int(a.requires_grad)}")
        else:
            parts.append(repr(a))
    return "|".join(parts)


def _time(fn, args, device: torch.device) -> float:
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    # Detached copies: the measurement's graph is its own, never part of the caller's.
    args = tuple(a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                 for a in args)

    def once():
        # identity hooks shadow any outer saved-tensor hooks (activation checkpointing)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            out = fn(*args)
            if needs_grad:  # a training step pays for the backward too
                outs = out if isinstance(out, tuple) else (out,)
                loss = sum(o.float().sum() for o in outs)
                torch.autograd.grad(loss, [a for a in args
                                           if isinstance(a, torch.Tensor) and a.requires_grad])

    for _ in range(WARMUP):
        once()
    times = []
    for _ in range(REPEAT):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            once()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def lookup(op: str, args: tuple):
    """The choice remembered in this process for `op` on `args`, or None. No file access and no
    measuring, so it is safe to trace under torch.compile."""
    if _memory is None:
        return None
    return _memory.get(key_of(op, args))


def choose(op: str, candidates: list, args: tuple, run_candidate) -> tuple:
    """(fastest, failures): the fastest of `candidates` (backend names) on `args`, measured once
    and remembered, and the [(name, exception)] of candidates that raised while being measured
    (left out; the caller reports them). `run_candidate(name)` returns that backend's callable."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    path = cache_path(device)
    key = key_of(op, args)
    with _lock:
        data = _load(path)
        hit = data.get(key)
    if hit in candidates:
        return hit, []
    timings, failures = {}, []
    for name in candidates:
        try:
            timings[name] = _time(run_candidate(name), args, device)
        except Exception as e:  # noqa: BLE001  (a kernel that fails is not a choice)
            timings[name] = float("inf")
            failures.append((name, e))
    best = min(timings, key=timings.get)
    with _lock:
        data = _load(path)
        data[key] = best
        _save(path, data, device)
    return best, failures
