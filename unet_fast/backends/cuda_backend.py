"""The `cuda` backend: our compiled extension `unet_fast._C` (sources in csrc/).

The C++ side defines the op schemas (`TORCH_LIBRARY(unet_fast, m)`) and registers CPU kernels
(csrc/cpu) and CUDA kernels (csrc/cuda); importing `_C` runs those registrations. Python adds what
the dispatcher needs around them: fake (meta) kernels for torch.compile and the autograd formulas,
whose backward calls the backward ops (`_<op>_backward`).

Which library is loaded (unet_fast/_build.py builds them and writes their records): one built for
the running torch, as its build record says, checked before the library is opened: the one
installed with the package (`UNET_FAST_BUILD_EXT=1`) or one built on first use into the cache; one
with CUDA kernels before one without. A library built against another torch is never loaded: then,
as when none is built, `available()["cuda"]` says why and which command fixes it. An explicit
backend="cuda" builds a missing extension once, on its first use (a message, ninja's progress,
minutes; `UNET_FAST_JIT=0` turns that off); "auto" never builds, and on a CUDA device warns once
about a build that does not fit (another torch, failed to load, C++ kernels only).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import warnings
from typing import Optional

import torch

from .. import _build
from .._dispatch import needs_grad, register_backend, register_impl
from . import cutlass_sm90

_NAME = "unet_fast._C"
_LOAD_ERROR: Optional[str] = None  # what available()["cuda"] says: None when a library is loaded
# The loaded library (path, record, origin "install" or "cache") and the ones passed over:
# "rejected" (path, record, why: built for another torch), "failures" (path, record, error).
_EXT: dict = {"path": None, "record": None, "origin": None, "rejected": [], "failures": []}
_lock = threading.Lock()
_registered = False


def _torch_desc() -> str:
    return _build.describe_torch(torch.__version__, torch.version.cuda)


def _jit_on() -> bool:
    return not _build.flag_off(_build.ENV_JIT) and _build.csrc_dir() is not None


def _would_build_cuda() -> bool:
    return torch.version.cuda is not None and _build.cuda_home() is not None


def _installed_library() -> Optional[str]:
    """The library installed in this package's folder, if any. (A finder of another install of
    unet_fast, such as an editable one, could offer its own: not this package's build.)"""
    try:
        spec = importlib.util.find_spec(_NAME)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin in (None, "built-in"):
        return None
    pkg = sys.modules[_NAME.rpartition(".")[0]]
    here = {os.path.realpath(p) for p in getattr(pkg, "__path__", [])}
    return spec.origin if os.path.realpath(os.path.dirname(spec.origin)) in here else None


def _candidates():
    """([(path, record or None, origin)] in the order to try, [(path, record, why)] rejected)."""
    tv, tc = torch.__version__, torch.version.cuda
    cands, rejected = [], []
    inst = _installed_library()
    if inst is not None:
        rec = _build.read_record(inst)
        why = _build.mismatch(rec, tv, tc) if rec is not None else None
        if why is not None:
            rejected.append((inst, rec, why))
        else:
            cands.append((inst, rec, "install"))
    if not (cands and cands[0][1] is not None and cands[0][1].get("cuda_kernels")):
        try:
            cands += [(lib, rec, "cache") for lib, rec in _build.find_cached()]
        except OSError:
            pass
    # a recorded build with CUDA kernels first, then one without a record (an older build), then
    # a recorded C++-only one; the installed one before the cached one among equals
    cands.sort(key=lambda c: 0 if (c[1] or {}).get("cuda_kernels") else (1 if c[1] is None else 2))
    return cands, rejected


def _open(path: str, origin: str):
    if origin == "install":
        return importlib.import_module(_NAME)
    spec = importlib.util.spec_from_file_location(_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs the op registrations
    sys.modules[_NAME] = module
    setattr(sys.modules[_NAME.rpartition(".")[0]], "_C", module)
    return module


def _loaded(path: str, rec: Optional[dict], origin: str) -> None:
    global _LOAD_ERROR
    _EXT.update(path=path, record=rec, origin=origin)
    _LOAD_ERROR = None
    _register_impls()


def _load() -> None:
    """Find and load the library that fits the running torch; else say why not in _LOAD_ERROR."""
    global _LOAD_ERROR
    cands, rejected = _candidates()
    _EXT["rejected"], _EXT["failures"] = rejected, []
    for path, rec, origin in cands:
        try:
            _open(path, origin)
        except Exception as e:  # noqa: BLE001  (a library that cannot load must not break import)
            _EXT["failures"].append((path, rec, f"{type(e).__name__}: {e}"))
            continue
        _loaded(path, rec, origin)
        return
    _LOAD_ERROR = _not_loaded_reason()


def _not_loaded_reason() -> str:
    fix = _build.fix_text(False, _would_build_cuda(), _jit_on())
    parts = []
    for path, rec, why in _EXT["rejected"]:
        parts.append(f"the extension unet_fast._C at {path} does not fit: {why}, so it is not "
                     "loaded")
    for path, rec, err in _EXT["failures"]:
        built = (f"it was built against {_build.describe_torch(rec.get('torch'), rec.get('torch_cuda'))}"
                 if rec else "it has no build record, so the torch it was built against is unknown "
                 "(a build for another torch fails to load this way)")
        parts.append(f"the extension unet_fast._C at {path} failed to load ({err}); {built}")
    if not parts:
        parts.append(f"the extension unet_fast._C is not built for {_torch_desc()} (a pure-Python "
                     "install)")
    return "; ".join(parts) + f". Fix: {fix}"


def build_now(force_cuda: bool = False, built_by: str = "first use", why: str = "") -> Optional[str]:
    """Build the extension for the running torch into the cache and load it (when none is
    loaded). Returns None, or why it could not."""
    global _LOAD_ERROR
    with _lock:
        if _EXT["path"] is not None and _LOAD_ERROR is None:
            return None
        if why:
            print(f"unet_fast: {why}", file=sys.stderr, flush=True)
        try:
            lib, rec = _build.build(force_cuda=force_cuda, built_by=built_by)
        except Exception as e:  # noqa: BLE001
            _LOAD_ERROR = (f"building the extension on first use failed: {e}. "
                           + _build.fix_text(force_cuda, _would_build_cuda(), None))
            return _LOAD_ERROR
        try:
            _open(lib, "cache")
        except Exception as e:  # noqa: BLE001
            _EXT["failures"].append((lib, rec, f"{type(e).__name__}: {e}"))
            _LOAD_ERROR = f"the extension built at {lib} failed to load ({type(e).__name__}: {e})"
            return _LOAD_ERROR
        _loaded(lib, rec, "cache")
        return None


def _on_use(explicit: bool) -> None:
    """Once per process: an explicit request builds a missing extension; "auto" on a CUDA device
    warns about a build that does not fit."""
    if explicit:
        if _EXT["path"] is None and _jit_on():
            if _EXT["rejected"]:
                why = (f"backend='cuda' was asked for and the installed extension does not fit: "
                       f"{_EXT['rejected'][0][2]}; building one for this torch")
            elif _EXT["failures"]:
                why = (f"backend='cuda' was asked for and the installed extension failed to load "
                       f"({_EXT['failures'][0][2]}); building one for this torch")
            else:
                why = (f"backend='cuda' was asked for and the extension unet_fast._C is not built "
                       f"for {_torch_desc()}; building it now")
            build_now(why=why)
        return
    if _EXT["path"] is None:
        if _EXT["rejected"] or _EXT["failures"]:
            warnings.warn(f"unet_fast: the cuda backend is unavailable: {_LOAD_ERROR} "
                          "backend='auto' runs the other backends.", RuntimeWarning, stacklevel=4)
    elif not has_kernel("crop_concat", "cuda"):
        warnings.warn(f"unet_fast: {_cpu_only_reason()}. backend='auto' runs CUDA tensors on the "
                      "other backends.", RuntimeWarning, stacklevel=4)


def _cpu_only_reason() -> str:
    rec = _EXT["record"]
    why = (rec.get("why") or "").split("no CUDA kernels: ", 1)[-1] if rec else "built without them"
    against = (f", built against {_build.describe_torch(rec.get('torch'), rec.get('torch_cuda'))}"
               if rec else "")
    return (f"the extension unet_fast._C ({_EXT['path']}{against}) has C++ CPU kernels only, no "
            f"CUDA kernels ({why}); for CUDA tensors, "
            + _build.fix_text(True, True, None))


def extension_info() -> dict:
    """What `unet-fast info` reports about the extension: where, which kernels, which torch it
    was built against, by whom, and what was passed over and why."""
    rec = _EXT["record"]
    loaded = _EXT["path"] is not None
    kernels = None
    if loaded:
        kernels = ("CUDA + C++ CPU" if has_kernel("crop_concat", "cuda") else "C++ CPU only")
    return {
        "loaded": loaded and _LOAD_ERROR is None,
        "path": _EXT["path"],
        "origin": {"install": "installed with the package", "cache": "from the build cache",
                   None: None}[_EXT["origin"]],
        "kernels": kernels,
        "built_against": (_build.describe_torch(rec.get("torch"), rec.get("torch_cuda"))
                          if rec else ("unknown (no build record)" if loaded else None)),
        "build_record": rec,
        "rejected": [{"path": p, "why": w} for p, _, w in _EXT["rejected"]],
        "failed": [{"path": p, "error": e} for p, _, e in _EXT["failures"]],
        "cache": _build.cache_root(),
        "first_use_build": _jit_on(),
        "problem": (_LOAD_ERROR if not loaded else
                    (_cpu_only_reason() if kernels == "C++ CPU only" else None)),
        "fix": (_build.fix_text(False, _would_build_cuda(), _jit_on()) if not loaded else
                (_build.fix_text(True, True, None) if kernels == "C++ CPU only" else None)),
    }


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
    return None if _LOAD_ERROR is not None else _EXT["path"]


# Ops this backend runs as others of its own: (op, args) -> [(op, args)] of the parts.
def _concat_parts(skip, up, weight, bias, padding, grad_masked=False):
    # the concat's stand-in for the conv's checks: its shape, dtype and device (a view of up:
    # nothing allocated on this per-call path)
    cat = up[:, :1].expand(up.shape[0], skip.shape[1] + up.shape[1], *up.shape[2:])
    return [("crop_concat", (skip, up)), ("conv3x3_relu", (cat, weight, bias, padding, False,
                                                           grad_masked))]


def _head_parts(x, weight, bias, head_weight, head_bias, padding, relu_input=False):
    # the conv's output as the head's input for its checks (a view of x: no allocation)
    shape = cuda_ops._conv3x3_out(x, weight, padding)
    y = x[:, :1, :shape[2], :shape[3]].expand(shape)
    return [("conv3x3_relu", (x, weight, bias, padding, relu_input, True)),
            ("conv1x1", (y, head_weight, head_bias, True))]


_COMPOSITES = {"concat_conv3x3_relu": _concat_parts, "conv3x3_relu_conv1x1": _head_parts}


def _supports(op: str):
    if op in _COMPOSITES:
        def composite(*args):
            for part, part_args in _COMPOSITES[op](*args):
                reason = _supports(part)(*part_args)
                if reason is not None:
                    return reason
            return None
        return composite

    def supports(*args):
        t = args[0]
        if not has_kernel(op, t.device.type):
            if t.device.type == "cuda":
                return _cpu_only_reason()
            return f"the extension has no {t.device.type} kernel for {op}"
        if t.device.type == "cuda" and any(isinstance(a, torch.Tensor) and a.dtype == torch.float64
                                           for a in args):
            return ("its CUDA kernels run float32, float16 and bfloat16 (float64 only on the CPU "
                    "kernels); convert with .float()")
        if op in _CUTLASS_OPS and _cutlass_wanted(args):
            # bf16 or fp16 on Hopper: the CUTLASS units, once they passed their first-run check there
            return cutlass_sm90.why_not(args[0], args[1], args[3], needs_grad(args))
        if op in _CUTLASS_UP_OPS:
            x, weight, skip = _CUTLASS_UP_OPS[op](args)
            if cutlass_sm90.wanted_up(x, weight, skip):   # (the up-conv's units)
                return cutlass_sm90.why_not_up(x, needs_grad(args))
        return None
    return supports


# The ops the CUTLASS sm_90a units can run (arguments (x, weight, bias, padding, ...)).
_CUTLASS_OPS = ("conv3x3_relu", "conv3x3_relu_pool")
# ... and the transposed convolutions ((x, weight, skip) of the op's arguments)
_CUTLASS_UP_OPS = {"conv_transpose2x2": lambda a: (a[0], a[1], None),
                   "up_concat": lambda a: (a[1], a[2], a[0])}


def _cutlass_wanted(args) -> bool:
    return cutlass_sm90.wanted(args[0], args[1], args[3])


def _atomic_wgrad(op: str):
    """The hand-written CUDA kernels' weight gradients sum split-K partials with fp32 atomics (the
    CUTLASS path's in a fixed order)."""
    def nondeterministic(args) -> bool:
        if op in _COMPOSITES:
            return any(_atomic_wgrad(part)(part_args) for part, part_args in _COMPOSITES[op](*args)
                       if part in cuda_ops.ATOMIC_WGRAD and needs_grad(args))
        return args[0].is_cuda and needs_grad(args) and not (op in _CUTLASS_OPS and _cutlass_wanted(args))
    return nondeterministic


def _register_impls() -> None:
    global _registered, cuda_ops
    if _registered:
        return
    _registered = True
    from . import cuda_ops  # noqa: F811  fake kernels and autograd of every op in _C

    for _op, _fn in cuda_ops.IMPLS.items():
        register_impl(_op, "cuda", _fn, _supports(_op),
                      nondeterministic=_atomic_wgrad(_op) if _op in cuda_ops.ATOMIC_WGRAD else None,
                      composite=_op in _COMPOSITES)
        for _dev in ("cpu", "cuda"):
            if _op not in _COMPOSITES:
                has_kernel(_op, _dev)


register_backend("cuda", lambda: _LOAD_ERROR, on_use=_on_use)
_load()
