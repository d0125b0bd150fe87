"""Fused 3x3 convolution + bias + ReLU (padding 0 or 1) in Triton, and the encoder's variant that
also writes the 2x2 max-pooled map from the same epilogue; forward and backward.

Forward: the implicit GEMM of igemm.py (M = N*OH*OW pixels, N = C_out, K = 9*C_in) with bias and
ReLU applied to the fp32 accumulator before the one store. The pool variant orders the GEMM rows
by 2x2 windows so every tile holds whole windows, and stores max-of-four beside y.
Backward (`_conv3x3_relu_dgrad`, `_conv3x3_relu_wgrad`): both read dy together with the saved
y and apply the ReLU mask (y > 0) while loading -- no masked copy of dy is written. dgrad is the
same implicit GEMM over the flipped window; wgrad the transposed product split over pixels, with
the bias gradient summed from the same dy tiles. The pool variant's backward first forms
(dy + route(dpooled)) * (y > 0) in one pass (the argmax recomputed from y, no saved indices), and
dgrad/wgrad read that without a mask.
"""
from __future__ import annotations

from typing import Optional

import torch

from unet_fast import _utils

from . import utils
from .igemm import igemm_fwd, igemm_wgrad
from .max_pool import _relu_pool_backward


def _out_hw(h, w, padding):
    return h - 2 + 2 * padding, w - 2 + 2 * padding


def _weight_fwd(weight):
    """(C_out, C_in, 3, 3) -> the GEMM's (9*C_in, C_out), rows (kh, kw, c)."""
    co, ci = weight.shape[:2]
    return weight.permute(2, 3, 1, 0).reshape(9 * ci, co).contiguous()


def _weight_dgrad(weight):
    """(C_out, C_in, 3, 3) -> (9*C_out, C_in), rows (kh, kw, co)."""
    co, ci = weight.shape[:2]
    return weight.permute(2, 3, 0, 1).reshape(9 * co, ci).contiguous()


# ---------------------------------------------------------------- host launchers
def conv3x3_relu_forward(x, weight, bias, padding, pool: bool = False):
    nb, _, h, w = x.shape
    co = weight.shape[0]
    oh, ow = _out_hw(h, w, padding)
    y = utils.empty_like_format((nb, co, oh, ow), x)
    pooled = utils.empty_like_format((nb, co, oh // 2, ow // 2), x) if pool else None
    igemm_fwd(x, _weight_fwd(weight), y, grid_hw=(oh, ow), ks=3, stride=1, pad=padding, sign=1,
              bias=bias, relu=True, pool=pooled)
    return (y, pooled) if pool else y


def conv3x3_dgrad(dy, y, weight, padding, relu_mask: bool):
    nb, _, oh, ow = dy.shape
    ci = weight.shape[1]
    h, w = oh + 2 - 2 * padding, ow + 2 - 2 * padding
    dx = utils.empty_like_format((nb, ci, h, w), dy)
    igemm_fwd(dy, _weight_dgrad(weight), dx, grid_hw=(h, w), ks=3, stride=1, pad=padding,
              sign=-1, mask=y if relu_mask else None)
    return dx


def conv3x3_wgrad(x, dy, y, padding, relu_mask: bool):
    ci = x.shape[1]
    co = dy.shape[1]
    r, db = igemm_wgrad(x, dy, grid_hw=tuple(dy.shape[-2:]), ks=3, stride=1, pad=padding,
                        mask_b=y if relu_mask else None, dbias=1)
    dw = r.view(3, 3, ci, co).permute(3, 2, 0, 1).contiguous().to(x.dtype)
    return dw, db.to(x.dtype)


# ---------------------------------------------------------------- torch operators
@torch.library.custom_op("unet_fast_triton::conv3x3_relu", mutates_args=())
def conv3x3_relu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 padding: int) -> torch.Tensor:
    return conv3x3_relu_forward(x, weight, bias, padding)


@conv3x3_relu.register_fake
def _(x, weight, bias, padding):
    oh, ow = _out_hw(x.shape[2], x.shape[3], padding)
    return utils.empty_like_format((x.shape[0], weight.shape[0], oh, ow), x)


@torch.library.custom_op("unet_fast_triton::conv3x3_relu_pool", mutates_args=())
def conv3x3_relu_pool(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    return conv3x3_relu_forward(x, weight, bias, padding, pool=True)


@conv3x3_relu_pool.register_fake
def _(x, weight, bias, padding):
    oh, ow = _out_hw(x.shape[2], x.shape[3], padding)
    nb, co = x.shape[0], weight.shape[0]
    return (utils.empty_like_format((nb, co, oh, ow), x),
            utils.empty_like_format((nb, co, oh // 2, ow // 2), x))


@torch.library.custom_op("unet_fast_triton::_conv3x3_relu_dgrad", mutates_args=())
def _conv3x3_relu_dgrad(dy: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, padding: int,
                        relu_mask: bool) -> torch.Tensor:
    return conv3x3_dgrad(dy, y, weight, padding, relu_mask)


@_conv3x3_relu_dgrad.register_fake
def _(dy, y, weight, padding, relu_mask):
    nb, _, oh, ow = dy.shape
    return utils.empty_like_format((nb, weight.shape[1], oh + 2 - 2 * padding,
                                    ow + 2 - 2 * padding), dy)


@torch.library.custom_op("unet_fast_triton::_conv3x3_relu_wgrad", mutates_args=())
def _conv3x3_relu_wgrad(x: torch.Tensor, dy: torch.Tensor, y: torch.Tensor, padding: int,
                        relu_mask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return conv3x3_wgrad(x, dy, y, padding, relu_mask)


@_conv3x3_relu_wgrad.register_fake
def _(x, dy, y, padding, relu_mask):
    ci, co = x.shape[1], dy.shape[1]
    return x.new_empty((co, ci, 3, 3)), x.new_empty((co,))


# ---------------------------------------------------------------- autograd
def _setup(ctx, inputs, output):
    x, weight, bias, padding = inputs
    y = output[0] if isinstance(output, (tuple, list)) else output
    ctx.save_for_backward(x, weight, y)
    ctx.padding = padding
    ctx.has_bias = bias is not None


def _grads(ctx, g, y, relu_mask):
    x, weight, _ = ctx.saved_tensors
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = _conv3x3_relu_dgrad(g, y, weight, ctx.padding, relu_mask)
    if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
        dw, db = _conv3x3_relu_wgrad(x, g, y, ctx.padding, relu_mask)
    return dx, dw, (db if ctx.has_bias else None), None


def _backward(ctx, dy):
    y = ctx.saved_tensors[2]
    return _grads(ctx, dy, y, relu_mask=True)


def _backward_pool(ctx, dy, dpool):
    y = ctx.saved_tensors[2]
    g = _relu_pool_backward(dy, dpool, y)  # skip gradient + routed pool gradient, ReLU-masked
    return _grads(ctx, g, y, relu_mask=False)


conv3x3_relu.register_autograd(_backward, setup_context=_setup)
conv3x3_relu_pool.register_autograd(_backward_pool, setup_context=_setup)


def impl(x, weight, bias, padding, relu_input=False, grad_masked=False):
    return conv3x3_relu(_utils.relu_input(x, relu_input), weight, bias, int(padding))


def impl_pool(x, weight, bias, padding, relu_input=False):
    return conv3x3_relu_pool(_utils.relu_input(x, relu_input), weight, bias, int(padding))
