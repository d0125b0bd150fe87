"""Fused 3x3 convolution + bias + ReLU (padding 0 or 1) in Triton, and the encoder's variant that
also writes the 2x2 max-pooled map from the same epilogue; forward and backward.

Forward: the implicit GEMM of igemm.py (M = N*OH*OW pixels, N = C_out, K = 9*C_in) with bias and
ReLU applied to the fp32 accumulator before the one store. The pool variant orders the GEMM rows
by 2x2 windows so every tile holds whole windows, and stores max-of-four beside y.

Backward: the ReLU's mask is applied once, where the output gradient is formed, never inside a
mainloop: g = dy * (y > 0) comes from
- the pool variant's backward pass ((dy + route(dpooled)) * (y > 0), the argmax recomputed from y),
- the next layer itself when the model says so (`grad_masked`: every consumer of y was called
  with `relu_input`, so its dgrad epilogue already masked the gradient it returns),
- else one masking pass (threshold_backward) before the two GEMMs.
dgrad (`_conv3x3_relu_dgrad`) is the implicit GEMM over the flipped window, reading g with no
mask; with `relu_input` its epilogue masks dx by this layer's own input (x > 0). wgrad
(`_conv3x3_relu_wgrad`) is R[co, (tap, ci)] = sum over pixels of g x the tap-shifted x, split over
pixels, with the bias gradient from the same g tiles.
Weights are read in place when channels_last (the model keeps them so), else re-laid out once
per call.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..._utils import nonfinite_weight_on_cpu
from .. import torch_backend
from . import utils
from . import crop_concat as _crop_concat
from . import conv1x1 as _conv1x1
from .igemm import cat_ok, igemm_fwd, igemm_wgrad
from .max_pool import _relu_pool_backward, _relu_pool_backward_ring


def _out_hw(h, w, padding):
    return h - 2 + 2 * padding, w - 2 + 2 * padding


def _channels_last(weight) -> bool:
    """(C_out, C_in, kh, kw) with C_in contiguous and the taps at one stride."""
    s_co, s_ci, s_kh, s_kw = weight.stride()
    return s_ci == 1 and s_kh == weight.shape[3] * s_kw


def _weight_fwd(weight):
    """W[tap, ci, co] as (tensor, tap stride, ci stride, co stride, N = C_out)."""
    co, ci = weight.shape[:2]
    if _channels_last(weight):
        return weight, weight.stride(3), 1, weight.stride(0), co
    return weight.permute(2, 3, 1, 0).contiguous(), ci * co, co, 1, co


def _weight_dgrad(weight):
    """W[tap, co, ci] as (tensor, tap stride, co stride, ci stride, N = C_in)."""
    co, ci = weight.shape[:2]
    if _channels_last(weight):
        return weight, weight.stride(3), weight.stride(0), 1, ci
    return weight.permute(2, 3, 0, 1).contiguous(), co * ci, ci, 1, ci


# ---------------------------------------------------------------- host launchers
def conv3x3_relu_forward(x, weight, bias, padding, pool: bool = False, skip_hw=None,
                         keep_ring: bool = True):
    """y, or (y, pooled) with `pool`, or (crop, pooled, ring) with `skip_hw`: y's center crop of
    that size and the ring of y around it (crop_concat.empty_ring), stored from the same epilogue
    (y is never whole in memory); without `keep_ring` the ring is not written (empty)."""
    nb, _, h, w = x.shape
    co = weight.shape[0]
    oh, ow = _out_hw(h, w, padding)
    pooled = utils.empty_like_format((nb, co, oh // 2, ow // 2), x) if pool else None
    if skip_hw:
        skip = utils.empty_like_format((nb, co) + tuple(skip_hw), x)
        ring = _crop_concat.empty_ring(nb, co, (oh, ow), skip_hw, x) if keep_ring else None
        igemm_fwd(x, _weight_fwd(weight), skip if ring is None else ring, grid_hw=(oh, ow), ks=3,
                  stride=1, pad=padding, sign=1, bias=bias, relu=True, pool=pooled, skip=skip,
                  store_y=keep_ring)
        return skip, pooled, (x.new_empty(0) if ring is None else ring)
    y = utils.empty_like_format((nb, co, oh, ow), x)
    igemm_fwd(x, _weight_fwd(weight), y, grid_hw=(oh, ow), ks=3, stride=1, pad=padding, sign=1,
              bias=bias, relu=True, pool=pooled)
    return (y, pooled) if pool else y


def concat_conv3x3_relu_forward(skip, up, weight, bias, padding):
    """y = relu(conv(cat([skip, up], 1))) with the concat read in place (cat_ok(skip, up))."""
    nb, _, h, w = up.shape
    oh, ow = _out_hw(h, w, padding)
    y = utils.empty_like_format((nb, weight.shape[0], oh, ow), up)
    igemm_fwd(skip, _weight_fwd(weight), y, grid_hw=(oh, ow), ks=3, stride=1, pad=padding,
              sign=1, bias=bias, relu=True, a2=up)
    return y


def conv3x3_relu_head_forward(x, weight, bias, head_weight, head_bias, padding, keep_y):
    """(z, y): z = the 1x1 head over y = relu(conv3x3(x)), from the conv's epilogue; y is
    written only with `keep_y` (the backward's), else an empty tensor is returned for it."""
    nb, _, h, w = x.shape
    oh, ow = _out_hw(h, w, padding)
    z = utils.empty_like_format((nb, head_weight.shape[0], oh, ow), x)
    y = utils.empty_like_format((nb, weight.shape[0], oh, ow), x) if keep_y else z
    igemm_fwd(x, _weight_fwd(weight), y, grid_hw=(oh, ow), ks=3, stride=1, pad=padding, sign=1,
              bias=bias, relu=True, head=(head_weight, head_bias, z), store_y=keep_y)
    return z, (y if keep_y else z.new_empty(0))


def conv3x3_dgrad(g, weight, padding, x_relu=None):
    """dx from the masked output gradient g; times (x_relu > 0) when given."""
    nb, _, oh, ow = g.shape
    ci = weight.shape[1]
    h, w = oh + 2 - 2 * padding, ow + 2 - 2 * padding
    dx = utils.empty_like_format((nb, ci, h, w), g)
    igemm_fwd(g, _weight_dgrad(weight), dx, grid_hw=(h, w), ks=3, stride=1, pad=padding,
              sign=-1, relu_in=x_relu)
    return dx


def conv3x3_wgrad(x, g, padding, x2=None, *, db_dtype):
    """(dW, db), db in `db_dtype` (utils.bias_grad_dtype); with `x2` the input is cat([x, x2], 1),
    read in place."""
    ci, co = x.shape[1] + (0 if x2 is None else x2.shape[1]), g.shape[1]
    r, db = igemm_wgrad(g, x, grid_hw=tuple(g.shape[-2:]), ks=3, stride=1, pad=padding,
                        shift_a=False, dbias=True, out_dtype=x.dtype, db_dtype=db_dtype, b2=x2)
    # R[co, (kh, kw, ci)] is the weight gradient in channels_last order: a view, no copy
    return r.view(co, 3, 3, ci).permute(0, 3, 1, 2), db


def mask_grad(dy, y):
    """dy * (y > 0) as ReLU's backward (threshold_backward: a NaN y passes the gradient)."""
    return torch.ops.aten.threshold_backward(dy, y, 0)


# ---------------------------------------------------------------- torch operators
@torch.library.custom_op("unet_fast_triton::conv3x3_relu", mutates_args=())
def conv3x3_relu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 padding: int, relu_input: bool, grad_masked: bool) -> torch.Tensor:
    return conv3x3_relu_forward(x, weight, bias, padding)


@conv3x3_relu.register_fake
def _(x, weight, bias, padding, relu_input, grad_masked):
    oh, ow = _out_hw(x.shape[2], x.shape[3], padding)
    return utils.empty_like_format((x.shape[0], weight.shape[0], oh, ow), x)


@torch.library.custom_op("unet_fast_triton::conv3x3_relu_pool", mutates_args=())
def conv3x3_relu_pool(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      padding: int, relu_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return conv3x3_relu_forward(x, weight, bias, padding, pool=True)


@conv3x3_relu_pool.register_fake
def _(x, weight, bias, padding, relu_input):
    oh, ow = _out_hw(x.shape[2], x.shape[3], padding)
    nb, co = x.shape[0], weight.shape[0]
    return (utils.empty_like_format((nb, co, oh, ow), x),
            utils.empty_like_format((nb, co, oh // 2, ow // 2), x))


@torch.library.custom_op("unet_fast_triton::conv3x3_relu_pool_crop", mutates_args=())
def conv3x3_relu_pool_crop(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           padding: int, relu_input: bool, skip_h: int, skip_w: int,
                           keep_ring: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(center crop of y to (skip_h, skip_w), max_pool2x2(y), the ring of y around the crop): the
    valid U-Net's encoder step, whose skip is only ever read cropped. The backward reads y from
    the skip and the ring (returned for it only: not differentiable; written only with
    keep_ring, else empty: in inference it is never read), so y is never kept twice, and the
    skip's gradient reaches the pool backward at the crop's size."""
    return conv3x3_relu_forward(x, weight, bias, padding, pool=True, skip_hw=(skip_h, skip_w),
                                keep_ring=keep_ring)


@conv3x3_relu_pool_crop.register_fake
def _(x, weight, bias, padding, relu_input, skip_h, skip_w, keep_ring):
    oh, ow = _out_hw(x.shape[2], x.shape[3], padding)
    nb, co = x.shape[0], weight.shape[0]
    return (utils.empty_like_format((nb, co, skip_h, skip_w), x),
            utils.empty_like_format((nb, co, oh // 2, ow // 2), x),
            _crop_concat.empty_ring(nb, co, (oh, ow), (skip_h, skip_w), x) if keep_ring
            else x.new_empty(0))


@torch.library.custom_op("unet_fast_triton::_conv3x3_relu_dgrad", mutates_args=())
def _conv3x3_relu_dgrad(g: torch.Tensor, weight: torch.Tensor, x_relu: Optional[torch.Tensor],
                        padding: int) -> torch.Tensor:
    return conv3x3_dgrad(g, weight, padding, x_relu)


@_conv3x3_relu_dgrad.register_fake
def _(g, weight, x_relu, padding):
    nb, _, oh, ow = g.shape
    return utils.empty_like_format((nb, weight.shape[1], oh + 2 - 2 * padding,
                                    ow + 2 - 2 * padding), g)


@torch.library.custom_op("unet_fast_triton::_conv3x3_relu_wgrad", mutates_args=())
def _conv3x3_relu_wgrad(x: torch.Tensor, g: torch.Tensor, padding: int,
                        db_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return conv3x3_wgrad(x, g, padding, db_dtype=db_dtype)


@_conv3x3_relu_wgrad.register_fake
def _(x, g, padding, db_dtype):
    ci, co = x.shape[1], g.shape[1]
    dw = x.new_empty((co, 3, 3, ci)).permute(0, 3, 1, 2)
    return dw, x.new_empty((co,), dtype=db_dtype)


@torch.library.custom_op("unet_fast_triton::concat_conv3x3_relu", mutates_args=())
def concat_conv3x3_relu(skip: torch.Tensor, up: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor], padding: int,
                        grad_masked: bool) -> torch.Tensor:
    """conv3x3_relu(cat([skip, up], 1)) for cat_ok(skip, up): the decoder's first conv, reading
    the concat's halves where they lie (no concat buffer, written or saved)."""
    return concat_conv3x3_relu_forward(skip, up, weight, bias, padding)


@concat_conv3x3_relu.register_fake
def _(skip, up, weight, bias, padding, grad_masked):
    oh, ow = _out_hw(up.shape[2], up.shape[3], padding)
    return utils.empty_like_format((up.shape[0], weight.shape[0], oh, ow), up)


@torch.library.custom_op("unet_fast_triton::_concat_conv3x3_relu_wgrad", mutates_args=())
def _concat_conv3x3_relu_wgrad(skip: torch.Tensor, up: torch.Tensor, g: torch.Tensor,
                               padding: int, db_dtype: torch.dtype
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    return conv3x3_wgrad(skip, g, padding, up, db_dtype=db_dtype)


@_concat_conv3x3_relu_wgrad.register_fake
def _(skip, up, g, padding, db_dtype):
    ci, co = skip.shape[1] + up.shape[1], g.shape[1]
    dw = skip.new_empty((co, 3, 3, ci)).permute(0, 3, 1, 2)
    return dw, skip.new_empty((co,), dtype=db_dtype)


@torch.library.custom_op("unet_fast_triton::conv3x3_relu_conv1x1", mutates_args=())
def conv3x3_relu_conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         head_weight: torch.Tensor, head_bias: Optional[torch.Tensor],
                         padding: int, relu_input: bool,
                         keep_y: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(conv1x1(y, head_weight, head_bias), y) with y = conv3x3_relu(x, ...): the U-Net's last
    conv and its head from one epilogue. y is returned for the backward only (not
    differentiable), and only with keep_y (else empty: in inference it is never written)."""
    return conv3x3_relu_head_forward(x, weight, bias, head_weight, head_bias, padding, keep_y)


@conv3x3_relu_conv1x1.register_fake
def _(x, weight, bias, head_weight, head_bias, padding, relu_input, keep_y):
    oh, ow = _out_hw(x.shape[2], x.shape[3], padding)
    nb = x.shape[0]
    z = utils.empty_like_format((nb, head_weight.shape[0], oh, ow), x)
    y = utils.empty_like_format((nb, weight.shape[0], oh, ow), x) if keep_y else x.new_empty(0)
    return z, y


# ---------------------------------------------------------------- autograd
def _setup(ctx, inputs, output, *kept):
    """Saves x, the weight and y (`output`'s first), or in y's place `kept`."""
    x, weight, bias, padding, relu_input = inputs[:5]
    y = output[0] if isinstance(output, (tuple, list)) else output
    ctx.save_for_backward(x, weight, *(kept or (y,)))
    ctx.padding = padding
    ctx.relu_input = relu_input
    ctx.grad_masked = len(inputs) > 5 and inputs[5]
    ctx.has_bias = bias is not None
    ctx.db_dtype = utils.bias_grad_dtype(bias, x)


def _grads(ctx, g, x, weight):
    """Gradients of (x, weight, bias) from the masked output gradient g."""
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = _conv3x3_relu_dgrad(g, weight, x if ctx.relu_input else None, ctx.padding)
    if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
        dw, db = _conv3x3_relu_wgrad(x, g, ctx.padding, ctx.db_dtype)
    return dx, dw, (db if ctx.has_bias else None), None, None


def _backward(ctx, dy):
    x, weight, y = ctx.saved_tensors  # once per backward (activation checkpointing)
    g = dy if ctx.grad_masked else mask_grad(dy, y)
    return _grads(ctx, g, x, weight) + (None,)


def _backward_pool(ctx, dy, dpool):
    x, weight, y = ctx.saved_tensors
    g = _relu_pool_backward(dy, dpool, y)  # skip gradient + routed pool gradient, ReLU-masked
    return _grads(ctx, g, x, weight)


def _setup_crop(ctx, inputs, output):
    """conv3x3_relu_pool_crop's: y is saved as the skip (its first output) and the ring (its
    third, not differentiated)."""
    skip, _, ring = output
    _setup(ctx, inputs[:5], output, skip, ring)
    ctx.y_hw = _out_hw(inputs[0].shape[2], inputs[0].shape[3], inputs[3])
    ctx.mark_non_differentiable(ring)
    ctx.set_materialize_grads(False)   # (an unused skip or pooled map: no zero-filled grad)


def _require_kept(t, op: str) -> None:
    """A saved output the forward left empty: it ran when no gradient was wanted (_grad_wanted)."""
    if t.numel() == 0:
        raise RuntimeError(f"{op}: this forward ran without keeping its output (no input "
                           "required a gradient then), so it has no backward; run it with "
                           "gradients enabled")


def _backward_pool_crop(ctx, dskip, dpool, _dring):
    if dskip is None and dpool is None:
        return (None,) * 8
    x, weight, skip, ring = ctx.saved_tensors
    _require_kept(ring, "conv3x3_relu_pool (the valid U-Net's encoder step)")
    # y read from the skip and the ring; the skip's gradient has the crop's size: the pool
    # backward reads it at the crop's offset (zero around it), so no zero-padded full-size map
    # is ever made
    g = _relu_pool_backward_ring(dskip, dpool, skip, ring, *ctx.y_hw)
    return _grads(ctx, g, x, weight) + (None, None, None)


def _setup_concat(ctx, inputs, output):
    skip, up, weight, bias, padding, grad_masked = inputs
    ctx.save_for_backward(skip, up, weight, output)
    ctx.padding = padding
    ctx.grad_masked = grad_masked
    ctx.has_bias = bias is not None
    ctx.db_dtype = utils.bias_grad_dtype(bias, up)


def _backward_concat(ctx, dy):
    """dgrad into one buffer of the concat's channels, handed back as its two channel slices
    (views: the skip's reaches the encoder's pool backward, up's the transposed conv's backward,
    both of which read strided gradients); wgrad reads skip and up in place. wgrad first: an up
    the backward made again (UNet(checkpointing="up")) is gone before dgrad's buffer exists."""
    skip, up, weight, y = ctx.saved_tensors
    g = dy if ctx.grad_masked else mask_grad(dy, y)
    cs = skip.shape[1]
    dskip = dup = dw = db = None
    if ctx.needs_input_grad[2] or (ctx.has_bias and ctx.needs_input_grad[3]):
        dw, db = _concat_conv3x3_relu_wgrad(skip, up, g, ctx.padding, ctx.db_dtype)
    del skip, up, y
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        dcat = _conv3x3_relu_dgrad(g, weight, None, ctx.padding)
        dskip, dup = dcat[:, :cs], dcat[:, cs:]
    return dskip, dup, dw, (db if ctx.has_bias else None), None, None


def _setup_head(ctx, inputs, output):
    x, weight, bias, head_weight, head_bias, padding, relu_input, _keep_y = inputs
    ctx.save_for_backward(x, weight, head_weight, output[1])
    ctx.padding = padding
    ctx.relu_input = relu_input
    ctx.has_bias = bias is not None
    ctx.has_head_bias = head_bias is not None
    ctx.db_dtype = utils.bias_grad_dtype(bias, x)
    ctx.head_db_dtype = utils.bias_grad_dtype(head_bias, x)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward_head(ctx, dz, _dy):
    """The head's dgrad gives the conv's output gradient already masked by (y > 0) (its ReLU
    input mask), which the conv's dgrad and wgrad then read; the head's wgrad reads y."""
    need = ctx.needs_input_grad
    if dz is None:
        return (None,) * 8
    x, weight, head_weight, y = ctx.saved_tensors
    _require_kept(y, "conv3x3_relu_conv1x1")
    dx = dw = db = dhw = dhb = None
    if need[3] or (ctx.has_head_bias and need[4]):
        dhw, dhb = _conv1x1._conv1x1_wgrad(y, dz, ctx.head_db_dtype)
    if need[0] or need[1] or (ctx.has_bias and need[2]):
        g = _conv1x1._conv1x1_dgrad(dz, head_weight, y)   # (dz @ W_head) * (y > 0)
        dx, dw, db = _grads(ctx, g, x, weight)[:3]
    return dx, dw, db, dhw, (dhb if ctx.has_head_bias else None), None, None, None


conv3x3_relu.register_autograd(_backward, setup_context=_setup)
conv3x3_relu_conv1x1.register_autograd(_backward_head, setup_context=_setup_head)
concat_conv3x3_relu.register_autograd(_backward_concat, setup_context=_setup_concat)
conv3x3_relu_pool.register_autograd(_backward_pool, setup_context=_setup)
conv3x3_relu_pool_crop.register_autograd(_backward_pool_crop, setup_context=_setup_crop)


def _grad_wanted(*inputs) -> bool:
    """Whether autograd will record the op (its backward's saved outputs must be written)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)


def impl(x, weight, bias, padding, relu_input=False, grad_masked=False):
    if nonfinite_weight_on_cpu(weight):  # PyTorch's NaN pattern at the border (see there)
        return torch_backend.conv3x3_relu(x, weight, bias, padding, relu_input)
    return conv3x3_relu(x, weight, bias, int(padding), bool(relu_input), bool(grad_masked))


def impl_pool(x, weight, bias, padding, relu_input=False, skip_h=0, skip_w=0):
    if nonfinite_weight_on_cpu(weight):
        return torch_backend.conv3x3_relu_pool(x, weight, bias, padding, relu_input, skip_h,
                                               skip_w)
    oh, ow = _out_hw(x.shape[2], x.shape[3], int(padding))
    if skip_h and (skip_h, skip_w) != (oh, ow):
        skip, pooled, _ = conv3x3_relu_pool_crop(x, weight, bias, int(padding), bool(relu_input),
                                                 int(skip_h), int(skip_w), _grad_wanted(x, weight,
                                                                                        bias))
        return skip, pooled
    return conv3x3_relu_pool(x, weight, bias, int(padding), bool(relu_input))


def impl_concat(skip, up, weight, bias, padding, grad_masked=False):
    if nonfinite_weight_on_cpu(weight):
        return torch_backend.concat_conv3x3_relu(skip, up, weight, bias, padding)
    if cat_ok(skip, up):
        return concat_conv3x3_relu(skip, up, weight, bias, int(padding), bool(grad_masked))
    # a skip still to be cropped, or laid out unlike up: the concat materialized, then the conv
    return impl(_crop_concat.impl(skip, up), weight, bias, padding, False, grad_masked)


def impl_head(x, weight, bias, head_weight, head_bias, padding, relu_input=False):
    """conv1x1(conv3x3_relu(x, ...), head_weight, head_bias) with the head in the conv's
    epilogue (utils.head_fits), y written only when a gradient will need it."""
    if nonfinite_weight_on_cpu(weight):
        return torch_backend.conv3x3_relu_conv1x1(x, weight, bias, head_weight, head_bias,
                                                  padding, relu_input)
    if not utils.head_fits(weight.shape[0], head_weight.shape[0], x.dtype):
        # wider than one tile, many classes, or fp32 with TF32 off: the conv, then the head
        # (which masks the gradient it returns, so the conv need not)
        y = impl(x, weight, bias, padding, relu_input, True)
        return _conv1x1.impl(y, head_weight, head_bias, True)
    keep_y = _grad_wanted(x, weight, bias, head_weight, head_bias)
    return conv3x3_relu_conv1x1(x, weight, bias, head_weight, head_bias, int(padding),
                                bool(relu_input), keep_y)[0]
