"""2x2 stride-2 transposed convolution in Triton, and the decoder's up-step that writes it straight
into the concat buffer; forward and backward.

Forward: a GEMM with M = N*H*W input pixels, N = 4*C_out (columns (i, j, co)), K = C_in, whose
epilogue adds the bias and scatters column (i, j, co) of pixel (p, q) to output pixel
(2p+i, 2q+j) through explicit strides -- into a tensor of its own, or into the upper channel slice
of a concat buffer (`up_concat`: the buffer is allocated once, the cropped skip is copied into the
lower slice, and there is no torch.cat).
Backward: dx gathers the four output pixels of each input pixel (igemm with a 2x2 window and
stride 2, reading dy in place, also when dy is a channel slice of the concat's gradient; with
`relu_input` its epilogue masks dx by (x > 0)); dW is the product over pixels R[(i, j, co), ci]
split over pixels, with the bias gradient from the same dy tiles. Weights are read in place when
channels_last ((C_in, 2, 2, C_out) in memory), else re-laid out once per call.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import utils
from .crop_concat import crop_copy, crop_offsets, skip_grad
from .igemm import igemm_fwd, igemm_wgrad


def _channels_last(weight) -> bool:
    """(C_in, C_out, 2, 2) with C_out contiguous and the taps (i, j) at one stride."""
    s_ci, s_co, s_i, s_j = weight.stride()
    return s_co == 1 and s_i == 2 * s_j and s_j == weight.shape[1]


def _weight_fwd(weight):
    """W[0, ci, (i, j, co)] as (tensor, tap stride, ci stride, column stride, N = 4*C_out)."""
    ci, co = weight.shape[:2]
    if not _channels_last(weight):
        weight = weight.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    return weight, 0, weight.stride(0), 1, 4 * co


def _weight_dgrad(weight):
    """W[(i, j), co, ci] as (tensor, tap stride, co stride, ci stride, N = C_in)."""
    ci, co = weight.shape[:2]
    if not _channels_last(weight):
        weight = weight.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    return weight, weight.stride(3), 1, weight.stride(0), ci


def conv_transpose2x2_into(x, weight, bias, out) -> None:
    """out (N, C_out, 2H, 2W), any strides (a channel slice of a buffer) <- the transposed conv."""
    h, w = x.shape[-2:]
    igemm_fwd(x, _weight_fwd(weight), out, grid_hw=(h, w), ks=1, stride=1, pad=0, sign=1,
              bias=bias, up_channels=weight.shape[1])


def conv_transpose2x2_forward(x, weight, bias):
    nb, _, h, w = x.shape
    y = utils.empty_like_format((nb, weight.shape[1], 2 * h, 2 * w), x)
    conv_transpose2x2_into(x, weight, bias, y)
    return y


def conv_transpose2x2_dgrad(dy, weight, x_relu=None):
    nb, _, oh, ow = dy.shape
    dx = utils.empty_like_format((nb, weight.shape[0], oh // 2, ow // 2), dy)
    igemm_fwd(dy, _weight_dgrad(weight), dx, grid_hw=(oh // 2, ow // 2), ks=2, stride=2, pad=0,
              sign=1, relu_in=x_relu)
    return dx


def conv_transpose2x2_wgrad(x, dy, db_dtype):
    ci, co = x.shape[1], dy.shape[1]
    # R[(i, j, co), ci]: rows gathered from dy at (2p+i, 2q+j), columns c_in from x at (p, q)
    # R in the weight's dtype before its re-layout (half the bytes to move); db's four taps are
    # summed in fp32 by the split sum itself (db_groups)
    r, db = igemm_wgrad(dy, x, grid_hw=tuple(x.shape[-2:]), ks=2, stride=2, pad=0,
                        shift_a=True, dbias=True, out_dtype=x.dtype, db_dtype=db_dtype,
                        db_groups=4)
    dw = r.view(2, 2, co, ci).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    return dw, db


# ---------------------------------------------------------------- torch operators
def _up_shape(x, weight):
    return (x.shape[0], weight.shape[1], 2 * x.shape[2], 2 * x.shape[3])


@torch.library.custom_op("unet_fast_triton::conv_transpose2x2", mutates_args=())
def conv_transpose2x2(x: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor], relu_input: bool) -> torch.Tensor:
    return conv_transpose2x2_forward(x, weight, bias)


@conv_transpose2x2.register_fake
def _(x, weight, bias, relu_input):
    return utils.empty_like_format(_up_shape(x, weight), x)


@torch.library.custom_op("unet_fast_triton::up_concat", mutates_args=())
def up_concat(skip: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
              bias: Optional[torch.Tensor], relu_input: bool) -> torch.Tensor:
    nb, co, oh, ow = _up_shape(x, weight)
    cs = skip.shape[1]
    out = utils.empty_like_format((nb, cs + co, oh, ow), x)
    top, left = crop_offsets(skip.shape[-2:], (oh, ow))
    crop_copy(skip, out[:, :cs], top, left)
    conv_transpose2x2_into(x, weight, bias, out[:, cs:])
    return out


@up_concat.register_fake
def _(skip, x, weight, bias, relu_input):
    nb, co, oh, ow = _up_shape(x, weight)
    return utils.empty_like_format((nb, skip.shape[1] + co, oh, ow), x)


@torch.library.custom_op("unet_fast_triton::_conv_transpose2x2_dgrad", mutates_args=())
def _conv_transpose2x2_dgrad(dy: torch.Tensor, weight: torch.Tensor,
                             x_relu: Optional[torch.Tensor]) -> torch.Tensor:
    return conv_transpose2x2_dgrad(dy, weight, x_relu)


@_conv_transpose2x2_dgrad.register_fake
def _(dy, weight, x_relu):
    return utils.empty_like_format((dy.shape[0], weight.shape[0], dy.shape[2] // 2,
                                    dy.shape[3] // 2), dy)


@torch.library.custom_op("unet_fast_triton::_conv_transpose2x2_wgrad", mutates_args=())
def _conv_transpose2x2_wgrad(x: torch.Tensor, dy: torch.Tensor,
                             db_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return conv_transpose2x2_wgrad(x, dy, db_dtype)


@_conv_transpose2x2_wgrad.register_fake
def _(x, dy, db_dtype):
    return (x.new_empty((x.shape[1], dy.shape[1], 2, 2)).contiguous(
        memory_format=torch.channels_last), x.new_empty((dy.shape[1],), dtype=db_dtype))


# ---------------------------------------------------------------- autograd
def _grads(ctx, dy, x, weight, first):
    """Gradients of (x, weight, bias), the inputs at positions first, first+1, first+2."""
    dx = dw = db = None
    if ctx.needs_input_grad[first]:
        dx = _conv_transpose2x2_dgrad(dy, weight, x if ctx.relu_input else None)
    if ctx.needs_input_grad[first + 1] or (ctx.has_bias and ctx.needs_input_grad[first + 2]):
        dw, db = _conv_transpose2x2_wgrad(x, dy, ctx.db_dtype)
    return dx, dw, (db if ctx.has_bias else None)


def _setup(ctx, inputs, output):
    x, weight, bias, relu_input = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.db_dtype = utils.bias_grad_dtype(bias, x)
    ctx.relu_input = relu_input


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    return _grads(ctx, dy, x, weight, 0) + (None,)


def _setup_up(ctx, inputs, output):
    skip, x, weight, bias, relu_input = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.db_dtype = utils.bias_grad_dtype(bias, x)
    ctx.relu_input = relu_input
    ctx.skip_channels = skip.shape[1]
    ctx.skip_hw = tuple(skip.shape[-2:])


def _backward_up(ctx, grad):
    """The concat's gradient splits into two views: the skip's (zero-padded back to its size if
    it was cropped) and the transposed conv's, which dgrad/wgrad read in place."""
    x, weight = ctx.saved_tensors
    cs = ctx.skip_channels
    dskip = skip_grad(grad[:, :cs], ctx.skip_hw) if ctx.needs_input_grad[0] else None
    return (dskip,) + _grads(ctx, grad[:, cs:], x, weight, 1) + (None,)


conv_transpose2x2.register_autograd(_backward, setup_context=_setup)
up_concat.register_autograd(_backward_up, setup_context=_setup_up)


def impl(x, weight, bias, relu_input=False):
    return conv_transpose2x2(x, weight, bias, bool(relu_input))


def impl_up_concat(skip, x, weight, bias, relu_input=False):
    return up_concat(skip, x, weight, bias, bool(relu_input))
