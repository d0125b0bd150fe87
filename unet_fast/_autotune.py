"""Measured choices for backend="auto": time each implementation that can run an input once, keep
the fastest, and remember it on disk.

The cache file lives under the user's cache directory (UNET_FAST_CACHE_DIR, else
$XDG_CACHE_HOME/unet_fast, else ~/.cache/unet_fast) and its name carries a hash of everything a
timing depends on: GPU name, torch / Triton / CUDA / unet_fast versions. Processes share it:
a new choice is merged into what is on disk under a file lock (so concurrent runs lose none), then
written atomically (temporary file, then rename); a file that cannot be read as a cache, for any
reason, is ignored, reported once and rebuilt.
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


def _step(fn, args):
    """A callable running `fn` once on detached copies of `args` as a training step would: the
    forward, and when gradients are needed the backward too. Its graph is its own, never part of
    the caller's."""
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args)
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

    return once


def validate(fn, args) -> None:
    """Run `fn`'s forward and backward once on copies of `args`: raises what a kernel of either
    pass raises, before a real training step depends on it."""
    _step(fn, args)()


def _time(fn, args, device: torch.device) -> float:
    once = _step(fn, args)
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
    """(fastest, failures, measured): the fastest of `candidates` (backend names) on `args`,
    measured once and remembered; the [(name, exception)] of candidates that raised while being
    measured (left out; the caller reports them); the names that ran (forward and, when gradients
    are needed, backward) without failing in this call ([] when the choice came from the cache).
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
    for name in candidates:
        try:
            timings[name] = _time(run_candidate(name), args, device)
        except Exception as e:  # noqa: BLE001  (a kernel that fails is not a choice)
            timings[name] = float("inf")
            failures.append((name, e))
    best = min(timings, key=timings.get)
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
