"""1x1 convolution (the U-Net head) in Triton as a plain GEMM on the pixel grid, forward and
backward: y = x @ W^T + b with M = N*H*W, N = C_out, K = C_in; dx = dy @ W; dW = dy^T x with the
bias gradient summed from the same dy tiles. All three are the implicit-GEMM kernels of igemm.py
with a 1x1 window (no tap gathers), reading NCHW or NHWC in place, and the weight in place (a 1x1
weight is the (C_out, C_in) matrix in either format). With `relu_input` (the U-Net head reads the
last ReLU's output) dgrad's epilogue masks dx by (x > 0).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import utils
from .igemm import igemm_fwd, igemm_wgrad


def _matrix(weight, transpose: bool):
    """The 1x1 weight as W[0, ca, j]: (tensor, tap stride, ca stride, j stride, N); ca = C_in,
    j = C_out for the forward, the other way round for dgrad."""
    co, ci = weight.shape[:2]
    s_co, s_ci = weight.stride(0), weight.stride(1)
    return (weight, 0, s_co, s_ci, ci) if transpose else (weight, 0, s_ci, s_co, co)


def conv1x1_forward(x, weight, bias):
    nb, ci, h, w = x.shape
    co = weight.shape[0]
    y = utils.empty_like_format((nb, co, h, w), x)
    igemm_fwd(x, _matrix(weight, False), y, grid_hw=(h, w), ks=1, stride=1, pad=0, sign=1,
              bias=bias)
    return y


def conv1x1_dgrad(dy, weight, x_relu=None):
    nb, co, h, w = dy.shape
    ci = weight.shape[1]
    dx = utils.empty_like_format((nb, ci, h, w), dy)
    igemm_fwd(dy, _matrix(weight, True), dx, grid_hw=(h, w), ks=1, stride=1, pad=0, sign=1,
              relu_in=x_relu)
    return dx


def conv1x1_wgrad(x, dy, db_dtype):
    ci, co = x.shape[1], dy.shape[1]
    r, db = igemm_wgrad(dy, x, grid_hw=tuple(dy.shape[-2:]), ks=1, stride=1, pad=0,
                        shift_a=False, dbias=True, out_dtype=x.dtype,
                        db_dtype=db_dtype)  # R[co, ci]
    return r.view(co, ci, 1, 1), db


@torch.library.custom_op("unet_fast_triton::conv1x1", mutates_args=())
def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
            relu_input: bool) -> torch.Tensor:
    return conv1x1_forward(x, weight, bias)


@conv1x1.register_fake
def _(x, weight, bias, relu_input):
    return utils.empty_like_format((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]), x)


@torch.library.custom_op("unet_fast_triton::_conv1x1_dgrad", mutates_args=())
def _conv1x1_dgrad(dy: torch.Tensor, weight: torch.Tensor,
                   x_relu: Optional[torch.Tensor]) -> torch.Tensor:
    return conv1x1_dgrad(dy, weight, x_relu)


@_conv1x1_dgrad.register_fake
def _(dy, weight, x_relu):
    return utils.empty_like_format((dy.shape[0], weight.shape[1], dy.shape[2], dy.shape[3]), dy)


@torch.library.custom_op("unet_fast_triton::_conv1x1_wgrad", mutates_args=())
def _conv1x1_wgrad(x: torch.Tensor, dy: torch.Tensor,
                   db_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return conv1x1_wgrad(x, dy, db_dtype)


@_conv1x1_wgrad.register_fake
def _(x, dy, db_dtype):
    return (x.new_empty((dy.shape[1], x.shape[1], 1, 1)),
            x.new_empty((dy.shape[1],), dtype=db_dtype))


def _setup(ctx, inputs, output):
    x, weight, bias, relu_input = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.db_dtype = utils.bias_grad_dtype(bias, x)
    ctx.relu_input = relu_input


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = _conv1x1_dgrad(dy, weight, x if ctx.relu_input else None)
    if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
        dw, db = _conv1x1_wgrad(x, dy, ctx.db_dtype)
    return dx, dw, (db if ctx.has_bias else None), None


conv1x1.register_autograd(_backward, setup_context=_setup)


def impl(x, weight, bias, relu_input=False):
    return conv1x1(x, weight, bias, bool(relu_input))
