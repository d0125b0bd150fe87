"""The CUTLASS sm_90a path of the `cuda` backend: when it runs, and its first-run check.

The extension's ops `_conv3x3_relu_sm90` and `_conv3x3_relu_sm90_backward`
(csrc/cuda/cutlass_sm90_glue.h) run bf16 and fp16 3x3 convolutions on Hopper with CUTLASS kernels
(csrc/cutlass_sm90: TMA + wgmma, our epilogues as visitor trees). `conv3x3_relu` and
`conv3x3_relu_pool` of the cuda backend take that path when

- the extension was built with the CUTLASS units (`built()`),
- the tensors are bf16 or fp16 (one instantiation set each) on a device of compute capability 9.0,
- the channel counts are multiples of 64 and the padding 0 or 1 (what the units take:
  `eligible`; the U-Net's first layer, with one input channel, is not),
- every unit the call will run passed its first-run check on that device.

The decoder's transposed convolutions (`conv_transpose2x2`, `up_concat`) take their units on the
same conditions (`wanted_up`, `why_not_up`): `up_fprop` (`_up_concat_sm90`: per tap a 1x1
forward convolution stored into every other pixel of the output, or of the concat buffer's upper
channels beside the skip), `up_dgrad` (`_conv_transpose2x2_dgrad_sm90`: a strided 2x2 forward
convolution of the output gradient whose epilogue masks by the up-conv's ReLU input) and
`up_wgrad` (`_conv_transpose2x2_wgrad_sm90`: that convolution's wgrad, on the 3x3 wgrad unit's
kernels and split-K).

First-run check: the first time a unit (fprop, dgrad, wgrad; up_fprop, up_dgrad and up_wgrad on
UP_SELF_CHECK_SHAPES) would run in a dtype on a device, it runs on
the small problems of SELF_CHECK_SHAPES (both paddings, tiles crossed in every GEMM dimension;
64 and 128 channels on each side, so every instantiation of every pass runs: fprop's and dgrad's
128x128 and 256x64 tiles (for a 64-channel GEMM N), wgrad's 128x64, 64x64 (k = 64) and 128x128
(c a multiple of 128))
and is compared with the reference convolution computed in float64 on the same bf16 (fp16)
values, at that dtype's tolerance (docs/design.md: at most twice PyTorch's own error in the dtype
plus 1e-3 of the reference's scale). A unit that fails is unusable on that device for the rest of the process: a
warning says so once, `backend="auto"` falls back to the other implementations, and an explicit
`backend="cuda"` raises BackendUnavailable with the numbers. Code that has never run on a GPU
cannot silently give wrong numbers.

The checking logic runs on any device: tests inject faulty units (`_runners`) on the CPU.
"""
from __future__ import annotations

import functools
import threading
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F

UNITS = ("fprop", "dgrad", "wgrad")   # the 3x3 convolution's
UP_UNITS = ("up_fprop", "up_dgrad", "up_wgrad")   # the up-conv's: y; dx; dweight and dbias
CHANNEL_MULTIPLE = 64  # the units' K step and narrowest wgrad N tile: 64 channels of one tap
# (n, h, w, c, k, pad): the pixels cross the M tile (128 rows; 256 for the 256x64 instantiations
# that k = 64 (fprop) and c = 64 (dgrad) take, 128x128 for k and c = 128), k is one full and one
# half 128-wide N tile, c gives 9 and 18 K steps; both paddings. The wgrad's 128x64
# instantiation runs the first (c = 64), its 64x64 one (k = 64) the second, its 128x128 one
# (c a multiple of 128, k not 64) the third.
SELF_CHECK_SHAPES = ((2, 13, 11, 64, 128, 0), (2, 14, 12, 128, 64, 1), (2, 12, 10, 128, 128, 0))
# The up-conv units' (n, h, w, c, k) of the up-conv's input x. up_dgrad: the pixels cross the
# 128-row M tile, c is one and two 128-wide N tiles, k = 64 and 128 channels give 4 and 8 K steps
# (one tap's 64 a step); up_fprop (per tap M = n*h*w, N = k, K = c): k = 64 runs the 256x64
# instantiation (the pixels cross its 256-row tile), k = 128 the 128x128 one; 2 and 4 K steps.
# up_wgrad (M = c, N = 4k, K = the pixels): k = 64 runs the 128x64 instantiation, k = 128 the
# 128x128 one, c = 256 two M tiles, and the first problem's 1056 pixels (17 K steps) are split
# in two (up2x2_wgrad_splits), the others not.
UP_SELF_CHECK_SHAPES = ((2, 24, 22, 128, 64), (2, 10, 9, 256, 128))

_lock = threading.Lock()
_verdicts: dict = {}   # (unit, dtype, device) -> None (passed) or the failure sentence
DTYPES = (torch.bfloat16, torch.float16)   # one set of instantiations each
_warned: set = set()


# ---------------------------------------------------------------- what can run where
def _ops():
    return torch.ops.unet_fast


_has_op: dict = {}   # op name -> whether the loaded extension has its CUDA kernel


def _has_cuda_op(name: str) -> bool:
    if name not in _has_op:
        from . import cuda_backend
        found = False
        if cuda_backend.extension_path() is not None:
            try:
                found = torch._C._dispatch_has_kernel_for_dispatch_key(f"unet_fast::{name}", "CUDA")
            except RuntimeError:  # "operator ... does not exist": built without it
                found = False
        _has_op[name] = found
    return _has_op[name]


def built() -> bool:
    """Whether the extension carries the CUTLASS units (setup.py builds them when CUTLASS and
    arch 9.0 are there)."""
    return _has_cuda_op("_conv3x3_relu_sm90")


_capability: dict = {}


def _is_sm90(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    cap = _capability.get(index)
    if cap is None:
        cap = _capability[index] = torch.cuda.get_device_capability(index)
    return cap == (9, 0)


def _dtype_and_channels(x: torch.Tensor, weight: torch.Tensor, k: int) -> Optional[str]:
    """Every unit's rule: bf16 or fp16 operands, x's channels and the k output channels
    multiples of the 64-channel K step."""
    if x.dtype not in DTYPES or weight.dtype != x.dtype:
        return f"the CUTLASS units run bf16 or fp16 (got {x.dtype} and a {weight.dtype} weight)"
    c = x.shape[1]
    if c % CHANNEL_MULTIPLE or k % CHANNEL_MULTIPLE:
        return f"channels must be multiples of {CHANNEL_MULTIPLE} (got {c} -> {k})"
    return None


def eligible(x: torch.Tensor, weight: torch.Tensor, padding: int) -> Optional[str]:
    """None if the units take this convolution (shapes and dtype), else why not."""
    why = _dtype_and_channels(x, weight, weight.shape[0])
    if why is None and padding not in (0, 1):
        return f"padding must be 0 or 1 (got {padding})"
    return why


def wanted(x: torch.Tensor, weight: torch.Tensor, padding: int) -> bool:
    """Whether a conv3x3_relu call of the cuda backend goes to the CUTLASS units (before their
    first-run check)."""
    return _is_sm90(x.device) and built() and eligible(x, weight, padding) is None


def built_up() -> bool:
    """Whether the extension carries the up-conv's units (an extension built before them carries
    the 3x3 units only, or some of the up-conv's)."""
    return all(_has_cuda_op(op) for op in ("_up_concat_sm90", "_conv_transpose2x2_dgrad_sm90",
                                           "_conv_transpose2x2_wgrad_sm90"))


def eligible_up(x: torch.Tensor, weight: torch.Tensor,
                skip: Optional[torch.Tensor] = None) -> Optional[str]:
    """None if the up-conv's units take this transposed convolution (up_concat's: beside `skip`),
    else why not."""
    why = _dtype_and_channels(x, weight, weight.shape[1])
    if why is None and skip is not None and skip.shape[1] % 8:
        # the forward unit stores into the concat's upper channels: 16-byte aligned pixels
        return f"the skip's channels must be a multiple of 8 (got {skip.shape[1]})"
    return why


def wanted_up(x: torch.Tensor, weight: torch.Tensor, skip: Optional[torch.Tensor] = None) -> bool:
    """Whether a conv_transpose2x2 / up_concat (with `skip`) call of the cuda backend takes the
    CUTLASS units (before their first-run check)."""
    return _is_sm90(x.device) and built_up() and eligible_up(x, weight, skip) is None


# ---------------------------------------------------------------- the first-run check
def _device_key(device: torch.device) -> str:
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def _run_fprop(x, w, b, gy, y, pad):
    return (_ops()._conv3x3_relu_sm90(x, w, b, pad, False, False),)


def _run_dgrad(x, w, b, gy, y, pad):
    masked = _ops()._conv3x3_relu_sm90_backward(gy, y, x, w, pad, [True, False, False], True, False)[0]
    plain = _ops()._conv3x3_relu_sm90_backward(gy, y, x, w, pad, [True, False, False], False, False)[0]
    return masked, plain


def _run_wgrad(x, w, b, gy, y, pad):
    _, dw, db = _ops()._conv3x3_relu_sm90_backward(gy, y, x, w, pad, [False, True, True], False, False)
    return dw, db


def _run_up_fprop(x, w, b, gy):
    # alone, and beside a skip (gy's values: as many channels, no crop) in a concat buffer
    return _ops()._up_concat_sm90(None, x, w, b), _ops()._up_concat_sm90(gy, x, w, b)


def _run_up_dgrad(x, w, b, gy):
    return (_ops()._conv_transpose2x2_dgrad_sm90(gy, x, w, True),
            _ops()._conv_transpose2x2_dgrad_sm90(gy, x, w, False))


def _run_up_wgrad(x, w, b, gy):
    return _ops()._conv_transpose2x2_wgrad_sm90(gy, x, w, [True, True])


# unit -> fn(*its inputs) -> its outputs (the tests replace them): the 3x3 units take
# (x, w, b, grad_y, y, padding), the up-conv's (x, w, b, grad_y)
_runners: dict[str, Callable] = {"fprop": _run_fprop, "dgrad": _run_dgrad, "wgrad": _run_wgrad,
                                 "up_fprop": _run_up_fprop, "up_dgrad": _run_up_dgrad,
                                 "up_wgrad": _run_up_wgrad}
OUTPUT_NAMES = {"fprop": ("y",), "dgrad": ("dx * (x > 0)", "dx"), "wgrad": ("dweight", "dbias"),
                "up_fprop": ("y", "y beside a skip"), "up_dgrad": ("dx * (x > 0)", "dx"),
                "up_wgrad": ("dweight", "dbias")}


def reference_up_fprop(x, w, b, gy, dtype):
    """What up_fprop computes, by PyTorch in `dtype`: the transposed convolution with its bias,
    alone and in a concat after gy's values (the skip of _run_up_fprop)."""
    y = F.conv_transpose2d(x.to(dtype), w.to(dtype), b.to(dtype), stride=2)
    return y, torch.cat([gy.to(dtype), y], 1)


def reference_up(x, w, b, gy, dtype):
    """What up_dgrad computes, by PyTorch in `dtype`: the transposed convolution's input gradient,
    masked by the given x's (x > 0) and plain."""
    x_, w_ = (t.to(dtype).requires_grad_() for t in (x, w))
    with torch.enable_grad():
        (dx,) = torch.autograd.grad(F.conv_transpose2d(x_, w_, stride=2), x_, gy.to(dtype))
    return dx * (x > 0).to(dtype), dx


def reference_up_wgrad(x, w, b, gy, dtype):
    """What up_wgrad computes, by PyTorch in `dtype`: the transposed convolution's weight and
    bias gradients."""
    x_, w_, b_ = x.to(dtype), w.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
    with torch.enable_grad():
        return torch.autograd.grad(F.conv_transpose2d(x_, w_, b_, stride=2), (w_, b_), gy.to(dtype))


def reference(unit: str, x, w, b, gy, y, pad, dtype):
    """What `unit` computes, by PyTorch in `dtype` on the given values. The ReLU masks come from
    the given y and x (bf16 or fp16 values), so the reference and the unit mask the same
    elements. (up_dgrad: reference_up.)"""
    x_, w_, b_ = (t.to(dtype).requires_grad_() for t in (x, w, b))
    with torch.enable_grad():
        z = F.conv2d(x_, w_, b_, padding=pad)
        if unit == "fprop":
            return (F.relu(z),)
        g = (gy * (y > 0)).to(dtype)
        dx, dw, db = torch.autograd.grad(z, (x_, w_, b_), g)
    if unit == "dgrad":
        return dx * (x > 0).to(dtype), dx
    return dw, db


def _inputs(shape, device, seed, dtype=torch.bfloat16):
    n, h, w, c, k, pad = shape
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*size, scale=1.0):
        t = torch.randn(*size, generator=gen, device=device) * scale
        return t.to(dtype)

    x = randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    wt = randn(k, c, 3, 3, scale=(9 * c) ** -0.5)
    b = randn(k, scale=0.1)
    y = reference("fprop", x, wt, b, None, None, pad, dtype)[0].detach()
    gy = randn(*y.shape).contiguous(memory_format=torch.channels_last)
    return x, wt, b, gy, y.contiguous(memory_format=torch.channels_last), pad


def _up_inputs(shape, device, seed, dtype=torch.bfloat16):
    n, h, w, c, k = shape
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*size, scale=1.0):
        t = (torch.randn(*size, generator=gen, device=device) * scale).to(dtype)
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    # x with negative values (the mask has work to do); the weight channels_last as the model's
    return (randn(n, c, h, w), randn(c, k, 2, 2, scale=(4 * k) ** -0.5), randn(k, scale=0.1),
            randn(n, k, 2 * h, 2 * w))


def _describe(shape) -> str:
    n, h, w, c, k, pad = shape
    return f"a {n}x{c}x{h}x{w} -> {k} channel, padding {pad} problem"


def _describe_up(shape) -> str:
    n, h, w, c, k = shape
    return f"a {n}x{c}x{h}x{w} -> {k} channel transposed convolution"


# unit -> (its problems, their inputs, its reference (*inputs, dtype), a problem's description)
_CHECKS = {u: (SELF_CHECK_SHAPES, _inputs, functools.partial(reference, u), _describe)
           for u in UNITS}
_CHECKS["up_fprop"] = (UP_SELF_CHECK_SHAPES, _up_inputs, reference_up_fprop, _describe_up)
_CHECKS["up_dgrad"] = (UP_SELF_CHECK_SHAPES, _up_inputs, reference_up, _describe_up)
_CHECKS["up_wgrad"] = (UP_SELF_CHECK_SHAPES, _up_inputs, reference_up_wgrad, _describe_up)


def check_unit(unit: str, device: torch.device, runner: Optional[Callable] = None,
               dtype: torch.dtype = torch.bfloat16) -> Optional[str]:
    """Run `unit` on SELF_CHECK_SHAPES in `dtype` on `device`: None if within that dtype's
    tolerance of the float64 reference, else a sentence with the numbers."""
    runner = runner or _runners[unit]
    # (the first use is often inside the model's autocast region, which would turn the float64
    # reference into bf16)
    with torch.autocast(device_type=device.type, enabled=False):
        return _check_unit(unit, device, runner, dtype)


def _check_unit(unit, device, runner, dtype):
    name_of = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    shapes, inputs, ref_of, describe = _CHECKS[unit]
    for i, shape in enumerate(shapes):
        args = inputs(shape, device, seed=1234 + i, dtype=dtype)
        with torch.no_grad():
            try:
                got = runner(*args)
            except Exception as e:  # noqa: BLE001  (a launch or configuration failure)
                return f"the CUTLASS {unit} kernel failed to run on {device} ({type(e).__name__}: {e})"
        ref = ref_of(*args, torch.float64)
        own = ref_of(*args, dtype)
        for name, o, r, p in zip(OUTPUT_NAMES[unit], got, ref, own):
            if o.shape != r.shape or o.dtype != dtype:
                return (f"the CUTLASS {unit} kernel's {name} is {o.dtype} {tuple(o.shape)}, "
                        f"expected {str(dtype).replace('torch.', '')} {tuple(r.shape)}")
            r = r.detach()
            scale = r.abs().max().item()
            own_err = (p.detach().double() - r).abs().max().item()
            err_t = (o.double() - r).abs()
            err = err_t.max().item() if err_t.isfinite().all() else float("inf")
            bound = 2 * own_err + 1e-3 * scale
            if not err <= bound:
                return (f"the CUTLASS {unit} kernel failed its first-run check in {name_of} on "
                        f"{device}: {name} of {describe(shape)} is off by up to "
                        f"{err:.4g}, allowed {bound:.4g} (PyTorch's own {name_of} error "
                        f"{own_err:.4g}, reference scale {scale:.4g})")
    return None


def verdict(units, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> Optional[str]:
    """None if every unit in `units` passed its first-run check in `dtype` on `device` (running
    it the first time), else the first failure. A failure warns once per unit, dtype and device."""
    key_dev = _device_key(device)
    for unit in units:
        key = (unit, dtype, key_dev)
        if key not in _verdicts:
            with _lock:
                if key not in _verdicts:
                    _verdicts[key] = check_unit(unit, torch.device(key_dev), dtype=dtype)
        why = _verdicts[key]
        if why is not None:
            if key not in _warned:
                _warned.add(key)
                warnings.warn(f"unet_fast: {why}; the unit is not used on this device "
                              "(backend='auto' falls back to the other implementations)",
                              RuntimeWarning, stacklevel=3)
            return why
    return None


def units_for(needs_grad: bool) -> tuple:
    return UNITS if needs_grad else ("fprop",)


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover
        return False


def why_not(x: torch.Tensor, weight: torch.Tensor, padding: int, needs_grad: bool) -> Optional[str]:
    """For a call the cuda backend would give to the CUTLASS units: None if it may, else why not
    (a failed first-run check, with its numbers). While torch.compile traces, units not yet
    checked in eager count as failed (no kernel runs on fake tensors), so a compiled graph never
    contains an unchecked unit."""
    return _why_not(units_for(needs_grad), x)


def why_not_up(x: torch.Tensor, needs_grad: bool) -> Optional[str]:
    """why_not for the transposed convolution's CUTLASS units (the backward's only when
    gradients are wanted)."""
    return _why_not(UP_UNITS if needs_grad else ("up_fprop",), x)


def _why_not(units, x: torch.Tensor) -> Optional[str]:
    if _is_compiling():
        key_dev = _device_key(x.device)
        keys = [(u, x.dtype, key_dev) for u in units]
        missing = [k[0] for k in keys if k not in _verdicts]
        if missing:
            return (f"the CUTLASS units {missing} have not passed their first-run check in "
                    f"{x.dtype} on {key_dev} yet (it runs in eager mode, not while torch.compile "
                    "traces)")
        return next((_verdicts[k] for k in keys if _verdicts[k]), None)
    return verdict(units, x.device, x.dtype)


def reset() -> None:
    """Forget every verdict and warning (tests)."""
    with _lock:
        _verdicts.clear()
        _warned.clear()
