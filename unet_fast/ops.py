"""The functional ops of unet_fast: one interface, three implementations (torch, triton, cuda).

Every op checks its arguments here, once, before any backend sees them, applies autocast the way
PyTorch's own op would, and lets the dispatch layer choose the implementation. All ops are
autograd-aware, accept float32/float16/bfloat16 (float64 on the CPU paths), NCHW or channels_last,
and return the input's memory format.

The keyword arguments with a leading underscore (`_relu_input`, `_grad_masked`) are the model's
internal ReLU-gradient contract (see OPS in unet_fast/_dispatch.py); the public ops' gradients are
exact without them.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _dispatch
from ._utils import is_channels_last

__all__ = ["conv3x3_relu", "max_pool2x2", "crop_concat", "conv_transpose2x2", "conv1x1",
           "conv3x3_relu_pool", "up_concat", "concat_conv3x3_relu", "conv3x3_relu_conv1x1"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---------------------------------------------------------------- argument checks
def _check_tensor(t, name: str, rank: int = 4):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}; "
                        f"convert it with {name}.float()")
    if t.dim() != rank:
        shape = "(N, C, H, W)" if rank == 4 else f"rank {rank}"
        raise ValueError(f"{name} must be a {rank}-D tensor {shape}, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); every dimension must be > 0")


def _autocast_on(t: torch.Tensor) -> bool:
    return t.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(t.device.type)


def _check_same(tensors: dict):
    items = [(n, t) for n, t in tensors.items() if t is not None]
    n0, t0 = items[0]
    mixed_ok = _autocast_on(t0)  # autocast casts the convolutions' inputs to one dtype
    for n, t in items[1:]:
        if t.device != t0.device:
            raise ValueError(f"{n} is on {t.device} but {n0} is on {t0.device}; move them to one "
                             f"device (e.g. {n}.to({n0}.device))")
        if t.dtype != t0.dtype and not mixed_ok:
            raise TypeError(f"{n} is {t.dtype} but {n0} is {t0.dtype}; use one dtype "
                            f"(e.g. {n}.to({n0}.dtype)) or run under torch.autocast")


def _check_bias(bias, channels: int, name: str = "bias", weight: str = "weight"):
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.dim() != 1 or bias.shape[0] != channels:
        raise ValueError(f"{name} must have shape ({channels},) to match the {weight}'s output "
                         f"channels, got {tuple(bias.shape)}")


class _CastWeight(torch.autograd.Function):
    """weight.to(dtype, memory_format=fmt) whose gradient comes back in the weight's own layout.
    A plain .to() hands back the gradient in the cast's layout (channels_last), and
    AccumulateGrad then copies it once more into the parameter's (NCHW) strides: one extra kernel
    and fp32 read + write per weight and step. Here the cast back is that re-layout, in one copy."""

    @staticmethod
    def forward(ctx, weight, dtype, fmt):
        ctx.dtype = weight.dtype
        dense = weight.is_contiguous() or weight.is_contiguous(memory_format=torch.channels_last)
        ctx.stride = weight.stride() if dense else None
        return weight.to(dtype, memory_format=fmt)

    @staticmethod
    def backward(ctx, grad):
        if ctx.stride is None:
            return grad.to(ctx.dtype), None, None
        out = grad.new_empty_strided(grad.shape, ctx.stride, dtype=ctx.dtype)
        return out.copy_(grad), None, None


def _cast_weight(t, dt, fmt):
    if t.requires_grad and torch.is_grad_enabled() and t.dtype != dt:
        return _CastWeight.apply(t, dt, fmt)
    return t.to(dt, memory_format=fmt)


def _fp32_bias(t) -> bool:
    return t.dim() == 1 and t.dtype == torch.float32


def _autocast(x, *params):
    """Cast to the autocast dtype where PyTorch's convolutions would (they are lower-precision
    ops under autocast). A weight cast for a channels_last input is written channels_last by the
    same copy: the order the kernels read it in, so they need no re-layout of their own (and its
    gradient is cast back into the parameter's own layout, `_CastWeight`). An fp32 bias is left
    fp32: each backend adds it to fp32 accumulators, so a kernel reads it as it is and returns
    its gradient in fp32 (no cast launched either way); a backend whose kernels take one dtype
    casts it itself (`_utils.bias_as`), as PyTorch's autocast would have. (A bias of another
    dtype is cast as before.)"""
    if _autocast_on(x):
        dt = torch.get_autocast_dtype(x.device.type)
        fmt = torch.channels_last if is_channels_last(x) else torch.preserve_format
        return (x.to(dt),) + tuple(
            (_cast_weight(t, dt, fmt) if t.dim() == 4 else t if _fp32_bias(t) else t.to(dt))
            if t is not None and t.is_floating_point() else t for t in params)
    return (x,) + params


def _check_conv(x, weight, bias, k: int, name: str = "weight"):
    _check_tensor(x, "x")
    _check_tensor(weight, name)
    if weight.shape[2:] != (k, k):
        raise ValueError(f"{name} must have shape (C_out, C_in, {k}, {k}), got {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} channels but {name} expects {weight.shape[1]} "
                         f"(weight shape {tuple(weight.shape)}); pass an input with "
                         f"{weight.shape[1]} channels")
    _check_bias(bias, weight.shape[0])
    _check_same({"x": x, name: weight, "bias": bias})


def _check_padding(padding):
    if type(padding) is not int or padding not in (0, 1):
        raise ValueError(f"padding must be 0 (valid) or 1 (same), got {padding!r}")


def _check_conv3x3(x, weight, bias, padding):
    _check_conv(x, weight, bias, 3)
    _check_padding(padding)
    h, w = x.shape[-2:]
    if padding == 0 and (h < 3 or w < 3):
        raise ValueError(f"x is {h}x{w}; an unpadded 3x3 convolution needs at least 3x3")


def _check_pool_input(x, name="x"):
    h, w = x.shape[-2:]
    if h < 2 or w < 2:
        raise ValueError(f"{name} is {h}x{w}; 2x2 max-pooling needs at least 2x2")


def _check_crop_concat(skip, up):
    _check_tensor(skip, "skip")
    _check_tensor(up, "up")
    if skip.device != up.device:
        raise ValueError(f"skip is on {skip.device} but up is on {up.device}; move them to one device")
    _check_crop_shapes(skip.shape, up.shape)


def _check_crop_shapes(skip_shape, up_shape):
    if skip_shape[0] != up_shape[0]:
        raise ValueError(f"skip has batch {skip_shape[0]} but up has batch {up_shape[0]}; they must match")
    if skip_shape[2] < up_shape[2] or skip_shape[3] < up_shape[3]:
        raise ValueError(f"skip is {tuple(skip_shape[2:])} but up is {tuple(up_shape[2:])}; the skip "
                         "is center-cropped to up's size, so it must be at least as large")


# ---------------------------------------------------------------- the public ops
def conv3x3_relu(x, weight, bias=None, padding: int = 0, *, backend: Optional[str] = None,
                 _relu_input: bool = False, _grad_masked: bool = False):
    """relu(conv2d(x, weight, bias, padding=padding)) with a 3x3 weight; padding 0 or 1."""
    _check_conv3x3(x, weight, bias, padding)
    x, weight, bias = _autocast(x, weight, bias)
    return _dispatch.run("conv3x3_relu", (x, weight, bias, padding, bool(_relu_input),
                                          bool(_grad_masked)), backend)


def conv3x3_relu_pool(x, weight, bias=None, padding: int = 0, *, backend: Optional[str] = None,
                      _relu_input: bool = False, _skip_hw=None):
    """(y, max_pool2x2(y)) with y = conv3x3_relu(x, ...): the encoder's second conv, whose fused
    kernels write the pooled output from the same epilogue. `_skip_hw` (the model's): return y's
    center crop of that (H, W) in place of y, the part of the skip its decoder reads."""
    _check_conv3x3(x, weight, bias, padding)
    h, w = x.shape[-2:]
    oh, ow = h - 2 + 2 * padding, w - 2 + 2 * padding
    if oh < 2 or ow < 2:
        raise ValueError(f"the conv output is {oh}x{ow}; 2x2 max-pooling needs at least 2x2")
    skip_h, skip_w = _check_skip_hw(_skip_hw, oh, ow)
    x, weight, bias = _autocast(x, weight, bias)
    return _dispatch.run("conv3x3_relu_pool", (x, weight, bias, padding, bool(_relu_input),
                                               skip_h, skip_w), backend)


def _check_skip_hw(skip_hw, oh: int, ow: int):
    """(skip_h, skip_w) for the dispatch: (0, 0) when the skip is y whole."""
    if skip_hw is None:
        return 0, 0
    ok = (isinstance(skip_hw, (tuple, list)) and len(skip_hw) == 2
          and all(type(v) is int for v in skip_hw))
    if not ok or not (1 <= skip_hw[0] <= oh and 1 <= skip_hw[1] <= ow):
        raise ValueError(f"_skip_hw must be None or (H, W) ints with 1 <= H <= {oh} and "
                         f"1 <= W <= {ow} (the conv output's size), got {skip_hw!r}")
    return (0, 0) if tuple(skip_hw) == (oh, ow) else (skip_hw[0], skip_hw[1])


def max_pool2x2(x, *, backend: Optional[str] = None):
    """max_pool2d(x, 2, 2): odd trailing rows/columns are dropped, as in PyTorch."""
    _check_tensor(x, "x")
    _check_pool_input(x)
    return _dispatch.run("max_pool2x2", (x,), backend)


def crop_concat(skip, up, *, backend: Optional[str] = None):
    """cat([center_crop(skip, up.shape[-2:]), up], dim=1); crop offset (skip - up) // 2."""
    _check_crop_concat(skip, up)
    if skip.dtype != up.dtype:  # torch.cat promotes; so do we
        dt = torch.promote_types(skip.dtype, up.dtype)
        skip, up = skip.to(dt), up.to(dt)
    return _dispatch.run("crop_concat", (skip, up), backend)


def conv_transpose2x2(x, weight, bias=None, *, backend: Optional[str] = None,
                      _relu_input: bool = False):
    """conv_transpose2d(x, weight, bias, stride=2) with a (C_in, C_out, 2, 2) weight."""
    _check_tensor(x, "x")
    _check_tensor(weight, "weight")
    if weight.shape[2:] != (2, 2):
        raise ValueError(f"weight must have shape (C_in, C_out, 2, 2), got {tuple(weight.shape)}")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} channels but weight expects {weight.shape[0]} "
                         f"(weight shape {tuple(weight.shape)}, layout (C_in, C_out, 2, 2))")
    _check_bias(bias, weight.shape[1])
    _check_same({"x": x, "weight": weight, "bias": bias})
    x, weight, bias = _autocast(x, weight, bias)
    return _dispatch.run("conv_transpose2x2", (x, weight, bias, bool(_relu_input)), backend)


def up_concat(skip, x, weight, bias=None, *, backend: Optional[str] = None,
              _relu_input: bool = False):
    """crop_concat(skip, conv_transpose2x2(x, weight, bias)): the decoder's up-step, whose fused
    kernels write the transposed conv straight into the concat buffer (no torch.cat)."""
    _check_tensor(x, "x")
    _check_tensor(weight, "weight")
    if weight.shape[2:] != (2, 2) or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight must have shape ({x.shape[1]}, C_out, 2, 2) for x with "
                         f"{x.shape[1]} channels, got {tuple(weight.shape)}")
    _check_bias(bias, weight.shape[1])
    _check_same({"x": x, "weight": weight, "bias": bias})
    up_shape = (x.shape[0], weight.shape[1], 2 * x.shape[2], 2 * x.shape[3])
    _check_tensor(skip, "skip")
    if skip.device != x.device:
        raise ValueError(f"skip is on {skip.device} but x is on {x.device}; move them to one device")
    _check_crop_shapes(skip.shape, up_shape)
    x, weight, bias = _autocast(x, weight, bias)
    return _dispatch.run("up_concat", (skip, x, weight, bias, bool(_relu_input)), backend)


def _up_concat_unfused(skip, x, weight, bias, relu_input, *, backend):
    return crop_concat(skip, conv_transpose2x2(x, weight, bias, backend=backend,
                                               _relu_input=relu_input), backend=backend)


# The fused kernels write one dtype: a skip of another dtype takes the unfused path, which
# promotes like torch.cat (never silently lowering the skip's precision).
_dispatch.register_decomposition("up_concat", _up_concat_unfused,
                                 when=lambda skip, x, *rest: skip.dtype != x.dtype)


def concat_conv3x3_relu(skip, up, weight, bias=None, padding: int = 0, *,
                        backend: Optional[str] = None, _grad_masked: bool = False):
    """conv3x3_relu(crop_concat(skip, up), weight, bias, padding): the decoder's first conv,
    whose Triton kernels read the concat's two halves in place (no concat buffer is written or
    kept for the backward) when skip is already cropped to up's size and laid out like it."""
    _check_tensor(skip, "skip")
    _check_tensor(up, "up")
    if skip.device != up.device:
        raise ValueError(f"skip is on {skip.device} but up is on {up.device}; move them to one "
                         "device")
    _check_crop_shapes(skip.shape, up.shape)
    _check_tensor(weight, "weight")
    if weight.shape[2:] != (3, 3) or weight.shape[1] != skip.shape[1] + up.shape[1]:
        raise ValueError(f"weight must have shape (C_out, {skip.shape[1] + up.shape[1]}, 3, 3) "
                         f"for the concat of skip ({skip.shape[1]} channels) and up "
                         f"({up.shape[1]}), got {tuple(weight.shape)}")
    _check_bias(bias, weight.shape[0])
    _check_padding(padding)
    _check_same({"up": up, "skip": skip, "weight": weight, "bias": bias})
    h, w = up.shape[-2:]
    if padding == 0 and (h < 3 or w < 3):
        raise ValueError(f"up is {h}x{w}; an unpadded 3x3 convolution needs at least 3x3")
    up, weight, bias = _autocast(up, weight, bias)
    skip = _autocast(skip)[0]
    return _dispatch.run("concat_conv3x3_relu", (skip, up, weight, bias, padding,
                                                 bool(_grad_masked)), backend)


def conv3x3_relu_conv1x1(x, weight, bias, head_weight, head_bias=None, padding: int = 0, *,
                         backend: Optional[str] = None, _relu_input: bool = False):
    """conv1x1(conv3x3_relu(x, weight, bias, padding), head_weight, head_bias): the U-Net's last
    conv and its 1x1 head, whose Triton kernel computes the head in the conv's epilogue (the
    conv's output is written only when a gradient needs it, and never read back)."""
    _check_conv3x3(x, weight, bias, padding)
    _check_tensor(head_weight, "head_weight")
    if head_weight.shape[1:] != (weight.shape[0], 1, 1):
        raise ValueError(f"head_weight must have shape (classes, {weight.shape[0]}, 1, 1) for the "
                         f"conv's {weight.shape[0]} output channels, got "
                         f"{tuple(head_weight.shape)}")
    _check_bias(head_bias, head_weight.shape[0], "head_bias", "head_weight")
    _check_same({"x": x, "weight": weight, "bias": bias, "head_weight": head_weight,
                 "head_bias": head_bias})
    x, weight, bias, head_weight, head_bias = _autocast(x, weight, bias, head_weight, head_bias)
    return _dispatch.run("conv3x3_relu_conv1x1", (x, weight, bias, head_weight, head_bias,
                                                  padding, bool(_relu_input)), backend)


def conv1x1(x, weight, bias=None, *, backend: Optional[str] = None, _relu_input: bool = False):
    """conv2d(x, weight, bias) with a (C_out, C_in, 1, 1) weight."""
    _check_conv(x, weight, bias, 1)
    x, weight, bias = _autocast(x, weight, bias)
    return _dispatch.run("conv1x1", (x, weight, bias, bool(_relu_input)), backend)
