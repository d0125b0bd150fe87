"""Fake kernels and autograd for the ops of the extension `_C` (`torch.ops.unet_fast.*`).

Only imported once `_C` has loaded. Each op's forward and backward are C++ ops; this file says
how shapes propagate (for torch.compile) and how gradients flow.
"""
from __future__ import annotations

import torch

from .._utils import memory_format_of as _like_format  # the rule csrc/common.h format_of mirrors
from .._utils import bias_as, nonfinite_weight_on_cpu, skip_grad
from . import cutlass_sm90, torch_backend

_ops = torch.ops.unet_fast


# ---------------------------------------------------------------- crop_concat
@torch.library.register_fake("unet_fast::crop_concat")
def _crop_concat_fake(skip, up):
    n, cu, h, w = up.shape
    return up.new_empty((n, skip.shape[1] + cu, h, w)).contiguous(memory_format=_like_format(up))


@torch.library.register_fake("unet_fast::_crop_concat_backward")
def _crop_concat_backward_fake(grad, skip_channels, skip_h, skip_w):
    return grad.new_empty((grad.shape[0], skip_channels, skip_h, skip_w)).contiguous(
        memory_format=_like_format(grad))


def _crop_concat_setup(ctx, inputs, output):
    skip, _ = inputs
    ctx.skip_shape = tuple(skip.shape)


def _skip_grad(grad, skip_shape):
    cs = skip_shape[1]  # (the C++ op reads the first cs channels of the whole concat gradient)
    return skip_grad(grad[:, :cs], skip_shape[-2:],
                     lambda _, h, w: _ops._crop_concat_backward(grad, cs, h, w))


def _crop_concat_backward(ctx, grad):
    cs = ctx.skip_shape[1]
    return _skip_grad(grad, ctx.skip_shape), grad[:, cs:]  # two views (plus the crop's pad)


torch.library.register_autograd("unet_fast::crop_concat", _crop_concat_backward,
                                setup_context=_crop_concat_setup)


# ---------------------------------------------------------------- conv3x3 + ReLU (+ pool)
def _conv3x3_out(x, weight, padding):
    n, _, h, w = x.shape
    return (n, weight.shape[0], h - 2 + 2 * padding, w - 2 + 2 * padding)


@torch.library.register_fake("unet_fast::conv3x3_relu")
def _conv3x3_relu_fake(x, weight, bias, padding):
    return x.new_empty(_conv3x3_out(x, weight, padding)).contiguous(memory_format=_like_format(x))


@torch.library.register_fake("unet_fast::conv3x3_relu_pool")
def _conv3x3_relu_pool_fake(x, weight, bias, padding):
    n, k, oh, ow = _conv3x3_out(x, weight, padding)
    fmt = _like_format(x)
    return (x.new_empty((n, k, oh, ow)).contiguous(memory_format=fmt),
            x.new_empty((n, k, oh // 2, ow // 2)).contiguous(memory_format=fmt))


def _grads_fake(x, weight, bias_channels, output_mask):
    dx = x.new_empty(x.shape).contiguous(memory_format=_like_format(x)) if output_mask[0] else x.new_empty((0,))
    dw = x.new_empty(weight.shape) if output_mask[1] else x.new_empty((0,))
    db = x.new_empty((bias_channels,)) if output_mask[2] else x.new_empty((0,))
    return dx, dw, db


@torch.library.register_fake("unet_fast::_conv3x3_relu_backward")
def _conv3x3_relu_backward_fake(grad, y, x, weight, padding, output_mask, relu_input=False):
    return _grads_fake(x, weight, weight.shape[0], output_mask)


def _mask(ctx, weight_index=1, bias_index=2):
    return [ctx.needs_input_grad[0], ctx.needs_input_grad[weight_index],
            ctx.has_bias and ctx.needs_input_grad[bias_index]]


def _conv3x3_setup(ctx, inputs, output):
    x, weight, bias, padding = inputs
    y = output[0] if isinstance(output, (tuple, list)) else output
    ctx.save_for_backward(x, weight, y)
    ctx.padding = padding
    ctx.has_bias = bias is not None


def _conv3x3_grads(ctx, grad_y, saved, relu_input_=False):
    # (unpacked once per backward: activation checkpointing allows no more). y None: grad_y is
    # masked already (dy * (y > 0)), the kernels read it as it is; relu_input_: dx comes back
    # multiplied by (x > 0), from the dgrad kernel's epilogue
    x, weight, y = saved
    mask = _mask(ctx)
    dx, dw, db = _ops._conv3x3_relu_backward(grad_y, y, x, weight, ctx.padding, mask, relu_input_)
    return (dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None, None)


def _conv3x3_relu_backward(ctx, grad_y):
    return _conv3x3_grads(ctx, grad_y, ctx.saved_tensors)


def _conv3x3_relu_pool_backward(ctx, grad_y, grad_pooled):
    x, weight, y = ctx.saved_tensors
    if grad_pooled is not None:
        # pool backward summed into y's own gradient and masked by (y > 0), one pass (it reads y
        # anyway): the conv's gradient kernels take it as it is and never read y
        grad_y = _ops._max_pool2x2_backward(grad_pooled, y, grad_y, True)
        y = None
    return _conv3x3_grads(ctx, grad_y, (x, weight, y))


torch.library.register_autograd("unet_fast::conv3x3_relu", _conv3x3_relu_backward,
                                setup_context=_conv3x3_setup)
torch.library.register_autograd("unet_fast::conv3x3_relu_pool", _conv3x3_relu_pool_backward,
                                setup_context=_conv3x3_setup)


# ---------------------------------------------------------------- conv3x3 + ReLU on CUTLASS sm_90a
# (csrc/cutlass_sm90; unet_fast/backends/cutlass_sm90.py says when). The flags ride along with
# the forward for the backward: relu_input -> dx masked by (x > 0) in the dgrad epilogue;
# grad_masked -> the incoming gradient is already dy * (y > 0).
if cutlass_sm90.built():
    @torch.library.register_fake("unet_fast::_conv3x3_relu_sm90")
    def _conv3x3_relu_sm90_fake(x, weight, bias, padding, relu_input_, grad_masked):
        return _conv3x3_relu_fake(x, weight, bias, padding)

    @torch.library.register_fake("unet_fast::_conv3x3_relu_sm90_backward")
    def _conv3x3_relu_sm90_backward_fake(grad, y, x, weight, padding, output_mask, relu_input_,
                                         grad_masked):
        return _grads_fake(x, weight, weight.shape[0], output_mask)

    def _conv3x3_sm90_setup(ctx, inputs, output):
        x, weight, bias, padding, relu_input_, grad_masked = inputs
        ctx.save_for_backward(x, weight, output)
        ctx.padding, ctx.relu_input, ctx.grad_masked = padding, relu_input_, grad_masked
        ctx.has_bias = bias is not None

    def _conv3x3_relu_sm90_backward(ctx, grad_y):
        x, weight, y = ctx.saved_tensors
        mask = _mask(ctx)
        dx, dw, db = _ops._conv3x3_relu_sm90_backward(grad_y, y, x, weight, ctx.padding, mask,
                                                      ctx.relu_input, ctx.grad_masked)
        return (dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None,
                None, None, None)

    torch.library.register_autograd("unet_fast::_conv3x3_relu_sm90", _conv3x3_relu_sm90_backward,
                                    setup_context=_conv3x3_sm90_setup)


# ---------------------------------------------------------------- the skip and the pool of y
def _skip_and_pool_grad(y, grad_skip, grad_pooled, relu_mask=False, with_sum=False):
    """y's gradient from its skip's (y or its center crop, the crop's gradient read in place) and
    its pooled map's: the pool backward kernel sums both in one pass; no zero-padded copy of a
    cropped skip's gradient is made (the kernel adds it where the crop lies). relu_mask: y is a
    ReLU output and the sum comes back masked, dy * (y > 0) (threshold_backward's rule), formed in
    the same pass. with_sum: (that gradient, its sum over (n, h, w)): the conv's bias gradient,
    summed by the same pass as it writes the gradient."""
    if grad_pooled is None:  # (an unused output's gradient is None: set_materialize_grads)
        n, c, h, w = y.shape
        grad_pooled = y.new_zeros((n, c, h // 2, w // 2)).contiguous(
            memory_format=_like_format(y))
    if with_sum:
        return _ops._max_pool2x2_backward_sum(grad_pooled, y, grad_skip, relu_mask)
    return _ops._max_pool2x2_backward(grad_pooled, y, grad_skip, relu_mask)


class _ConvSkipAndPool(torch.autograd.Function):
    """(skip, max_pool2x2(y)) of a conv's ReLU output y, the skip being y or its center crop of
    (skip_h, skip_w) (a view), with the crop inside the autograd node, so the crop's gradient
    reaches the pool backward kernel as it is (a view's backward would zero-fill y's size and copy
    the crop into it). The backward is that kernel with the skip's gradient added and y's ReLU
    mask applied in the same pass (it reads y anyway): left to autograd, y's two gradients would
    be summed by a pass of their own (3 x y's bytes) and masked by another; the conv's gradient
    kernels then read it masked, without y. The conv:
    - sm90 (cutlass_sm90.wanted): the CUTLASS fprop, which has no pool node (the vectorized pool
      kernel reads y once more), and its backward units, told grad_masked. They have no bias
      gradient of their own: the pool pass sums it as it writes y's gradient
      (_max_pool2x2_backward_sum), where a reduction of its own would read the gradient again;
    - otherwise the hand-written conv3x3_relu_pool (its weight-gradient kernel sums the bias).
    relu_input_ as in _Conv3x3Flags."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, skip_h, skip_w, relu_input_, sm90=False):
        if sm90:
            y = _ops._conv3x3_relu_sm90(x, weight, bias, padding, relu_input_, True)
            pooled = _ops.max_pool2x2(y)
        else:
            y, pooled = _ops.conv3x3_relu_pool(x, weight, bias, padding)
        ctx.save_for_backward(x, weight, y)
        ctx.padding, ctx.has_bias, ctx.relu_input = padding, bias is not None, relu_input_
        ctx.sm90 = sm90
        ctx.set_materialize_grads(False)
        return torch_backend._skip(y, skip_h, skip_w), pooled

    @staticmethod
    def backward(ctx, grad_skip, grad_pooled):
        x, weight, y = ctx.saved_tensors
        if not ctx.sm90:
            grad_y = _skip_and_pool_grad(y, grad_skip, grad_pooled, relu_mask=True)
            return _conv3x3_grads(ctx, grad_y, (x, weight, None), ctx.relu_input) + (None,) * 4
        mask = _mask(ctx)
        grad_y = _skip_and_pool_grad(y, grad_skip, grad_pooled, relu_mask=True, with_sum=mask[2])
        grad_y, db = grad_y if mask[2] else (grad_y, None)
        dx = dw = None
        if mask[0] or mask[1]:
            dx, dw, _ = _ops._conv3x3_relu_sm90_backward(
                grad_y, y, x, weight, ctx.padding, [mask[0], mask[1], False], ctx.relu_input, True)
        return (dx if mask[0] else None, dw if mask[1] else None, db) + (None,) * 5


class _Conv3x3Flags(torch.autograd.Function):
    """The hand-written conv3x3_relu told the model's flags: relu_input_ (x is a ReLU output):
    dx comes back multiplied by (x > 0) from the dgrad kernel's epilogue, not from a
    threshold_backward pass of its own over x (3 x x's bytes); grad_masked (the next layer's
    dgrad multiplied y's gradient by (y > 0)): the gradient kernels read it without y (the
    Premasked kernels: y is neither read nor saved, nothing is masked again, and their A operand
    is a plain async copy)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, relu_input_, grad_masked):
        y = _ops.conv3x3_relu(x, weight, bias, padding)
        ctx.save_for_backward(x, weight, None if grad_masked else y)
        ctx.padding, ctx.has_bias, ctx.relu_input = padding, bias is not None, relu_input_
        return y

    @staticmethod
    def backward(ctx, grad):
        return _conv3x3_grads(ctx, grad, ctx.saved_tensors, ctx.relu_input) + (None, None)


# ---------------------------------------------------------------- max-pool 2x2
@torch.library.register_fake("unet_fast::max_pool2x2")
def _max_pool2x2_fake(x):
    n, c, h, w = x.shape
    return x.new_empty((n, c, h // 2, w // 2)).contiguous(memory_format=_like_format(x))


@torch.library.register_fake("unet_fast::_max_pool2x2_backward")
def _max_pool2x2_backward_fake(grad, x, grad_skip, relu_mask=False):
    return x.new_empty(x.shape).contiguous(memory_format=_like_format(x))


@torch.library.register_fake("unet_fast::_max_pool2x2_backward_sum")
def _max_pool2x2_backward_sum_fake(grad, x, grad_skip, relu_mask=False):
    return _max_pool2x2_backward_fake(grad, x, grad_skip), x.new_empty((x.shape[1],))


def _max_pool2x2_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _max_pool2x2_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _ops._max_pool2x2_backward(grad, x, None)


torch.library.register_autograd("unet_fast::max_pool2x2", _max_pool2x2_backward,
                                setup_context=_max_pool2x2_setup)


# ---------------------------------------------------------------- 1x1 conv, 2x2 transposed conv
@torch.library.register_fake("unet_fast::conv1x1")
def _conv1x1_fake(x, weight, bias):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[0], h, w)).contiguous(memory_format=_like_format(x))


@torch.library.register_fake("unet_fast::_conv1x1_backward")
def _conv1x1_backward_fake(grad, x, weight, output_mask, relu_input=False):
    return _grads_fake(x, weight, weight.shape[0], output_mask)


@torch.library.register_fake("unet_fast::conv_transpose2x2")
def _conv_transpose2x2_fake(x, weight, bias):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[1], 2 * h, 2 * w)).contiguous(memory_format=_like_format(x))


@torch.library.register_fake("unet_fast::_conv_transpose2x2_backward")
def _conv_transpose2x2_backward_fake(grad, x, weight, output_mask, relu_input=False):
    return _grads_fake(x, weight, weight.shape[1], output_mask)


@torch.library.register_fake("unet_fast::up_concat")
def _up_concat_fake(skip, x, weight, bias):
    n, _, h, w = x.shape
    return x.new_empty((n, skip.shape[1] + weight.shape[1], 2 * h, 2 * w)).contiguous(
        memory_format=_like_format(x))


def _pointwise_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _pointwise_grads(ctx, backward_op, grad, mask):
    x, weight = ctx.saved_tensors
    dx, dw, db = backward_op(grad, x, weight, mask)
    return dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None


def _conv1x1_backward(ctx, grad):
    return _pointwise_grads(ctx, _ops._conv1x1_backward, grad, _mask(ctx))


def _conv_transpose2x2_backward(ctx, grad):
    return _pointwise_grads(ctx, _ops._conv_transpose2x2_backward, grad, _mask(ctx))


def _up_concat_setup(ctx, inputs, output):
    skip, x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.skip_shape = tuple(skip.shape)
    ctx.has_bias = bias is not None


def _up_grads(ctx, grad, relu_input_=False):
    """(skip, x, weight, bias) gradients of the hand-written up-conv: the skip's from the concat
    gradient's lower channels (none without a skip: ctx.skip_shape None), the others from the
    upper ones, read in place (a view); relu_input_: dx multiplied by (x > 0) in the dgrad's
    epilogue."""
    cs = 0 if ctx.skip_shape is None else ctx.skip_shape[1]
    grad_skip = _skip_grad(grad, ctx.skip_shape) if ctx.needs_input_grad[0] else None
    mask = [ctx.needs_input_grad[1], ctx.needs_input_grad[2],
            ctx.has_bias and ctx.needs_input_grad[3]]
    if not any(mask):
        return grad_skip, None, None, None

    def backward_op(g, x, weight, m):
        return _ops._conv_transpose2x2_backward(g, x, weight, m, relu_input_)
    return (grad_skip,) + _pointwise_grads(ctx, backward_op, grad[:, cs:], mask)


def _up_concat_backward(ctx, grad):
    return _up_grads(ctx, grad)


class _UpConvReluInput(torch.autograd.Function):
    """The hand-written transposed conv (into the concat beside the skip's crop, given a skip)
    of x, a ReLU output: dx comes back multiplied by (x > 0) from the dgrad kernel's epilogue
    (`_conv_transpose2x2_backward`'s relu_input), not from a threshold_backward pass over x."""

    @staticmethod
    def forward(ctx, skip, x, weight, bias):
        _pointwise_setup(ctx, (x, weight, bias), None)
        ctx.skip_shape = None if skip is None else tuple(skip.shape)
        if skip is None:
            return _ops.conv_transpose2x2(x, weight, bias)
        return _ops.up_concat(skip, x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        return _up_grads(ctx, grad, True)


torch.library.register_autograd("unet_fast::conv1x1", _conv1x1_backward,
                                setup_context=_pointwise_setup)
torch.library.register_autograd("unet_fast::conv_transpose2x2", _conv_transpose2x2_backward,
                                setup_context=_pointwise_setup)
torch.library.register_autograd("unet_fast::up_concat", _up_concat_backward,
                                setup_context=_up_concat_setup)


# ---------------------------------------------------------------- the up-conv on CUTLASS sm_90a
if cutlass_sm90.built_up():
    @torch.library.register_fake("unet_fast::_up_concat_sm90")
    def _up_concat_sm90_fake(skip, x, weight, bias):
        cs = 0 if skip is None else skip.shape[1]
        return x.new_empty(x.shape[0], cs + weight.shape[1], 2 * x.shape[2],
                           2 * x.shape[3]).contiguous(memory_format=_like_format(x))

    @torch.library.register_fake("unet_fast::_conv_transpose2x2_dgrad_sm90")
    def _conv_transpose2x2_dgrad_sm90_fake(grad, x, weight, relu_input_):
        return x.new_empty(x.shape).contiguous(memory_format=_like_format(x))

    @torch.library.register_fake("unet_fast::_conv_transpose2x2_wgrad_sm90")
    def _conv_transpose2x2_wgrad_sm90_fake(grad, x, weight, output_mask):
        dw = x.new_empty(weight.shape) if output_mask[0] else x.new_empty(0)
        return dw, x.new_empty(weight.shape[1]) if output_mask[1] else x.new_empty(0)


class _UpConvSm90(torch.autograd.Function):
    """conv_transpose2x2(x, weight, bias), or up_concat with a skip, on the CUTLASS units: the
    forward `_up_concat_sm90`, dx `_conv_transpose2x2_dgrad_sm90` (masked by (x > 0) in its
    epilogue when relu_input), dweight and dbias `_conv_transpose2x2_wgrad_sm90`
    (cutlass_sm90.wanted_up says when; the cuda backend's `supports` ran the units' first-run
    checks)."""

    @staticmethod
    def forward(ctx, skip, x, weight, bias, relu_input_):
        ctx.save_for_backward(x, weight)
        ctx.relu_input, ctx.has_bias = relu_input_, bias is not None
        ctx.skip_shape = None if skip is None else tuple(skip.shape)
        return _ops._up_concat_sm90(skip, x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        cs = 0 if ctx.skip_shape is None else ctx.skip_shape[1]
        g = grad[:, cs:] if cs else grad   # (the upper channels of the concat's gradient: a view)
        grad_skip = _skip_grad(grad, ctx.skip_shape) if cs and ctx.needs_input_grad[0] else None
        dx = (_ops._conv_transpose2x2_dgrad_sm90(g, x, weight, ctx.relu_input)
              if ctx.needs_input_grad[1] else None)
        mask = [ctx.needs_input_grad[2], ctx.has_bias and ctx.needs_input_grad[3]]
        dw = db = None
        if any(mask):
            dw, db = _ops._conv_transpose2x2_wgrad_sm90(g, x, weight, mask)
        return grad_skip, dx, dw if mask[0] else None, db if mask[1] else None, None


# ---------------------------------------------------------------- the impls of the cuda backend
# relu_input (unet_fast/_dispatch.py OPS): the hand-written kernels' input gradients come back
# multiplied by (x > 0) from their epilogues (_Conv3x3Flags, _ConvSkipAndPool, _UpConvReluInput,
# _Conv1x1ReluInput); grad_masked: their 3x3 gradient kernels read the gradient without y
# (_Conv3x3Flags). The CUTLASS sm_90a path honours both in its kernels.
# bias_as: the C++ and CUTLASS kernels take the bias in x's dtype; under autocast it arrives in its
# own (ops._autocast), and is cast here as PyTorch's autocast would have.
def conv3x3_relu(x, weight, bias, padding, relu_input_=False, grad_masked=False):
    bias = bias_as(bias, x)
    if nonfinite_weight_on_cpu(weight):  # PyTorch's NaN pattern at the border (see there)
        return torch_backend.conv3x3_relu(x, weight, bias, padding, relu_input_)
    if cutlass_sm90.wanted(x, weight, padding):  # (its first-run check passed: see `supports`)
        return _ops._conv3x3_relu_sm90(x, weight, bias, padding, relu_input_, grad_masked)
    if relu_input_ or grad_masked:
        return _Conv3x3Flags.apply(x, weight, bias, padding, relu_input_, grad_masked)
    return _ops.conv3x3_relu(x, weight, bias, padding)


def conv3x3_relu_pool(x, weight, bias, padding, relu_input_=False, skip_h=0, skip_w=0):
    # (a cropped skip is a view of y here, whose gradient the pool backward kernel adds where the
    # crop lies; the Triton backend stores the crop from its epilogue instead)
    bias = bias_as(bias, x)
    if nonfinite_weight_on_cpu(weight):
        return torch_backend.conv3x3_relu_pool(x, weight, bias, padding, relu_input_, skip_h,
                                               skip_w)
    return _ConvSkipAndPool.apply(x, weight, bias, padding, skip_h, skip_w, relu_input_,
                                  cutlass_sm90.wanted(x, weight, padding))


def conv_transpose2x2(x, weight, bias, relu_input_=False):
    if cutlass_sm90.wanted_up(x, weight):   # (its first-run check passed: see `supports`)
        return _UpConvSm90.apply(None, x, weight, bias_as(bias, x), relu_input_)
    if relu_input_:
        return _UpConvReluInput.apply(None, x, weight, bias_as(bias, x))
    return _ops.conv_transpose2x2(x, weight, bias_as(bias, x))


def up_concat(skip, x, weight, bias, relu_input_=False):
    if cutlass_sm90.wanted_up(x, weight, skip):
        return _UpConvSm90.apply(skip, x, weight, bias_as(bias, x), relu_input_)
    if relu_input_:
        return _UpConvReluInput.apply(skip, x, weight, bias_as(bias, x))
    return _ops.up_concat(skip, x, weight, bias_as(bias, x))


def concat_conv3x3_relu(skip, up, weight, bias, padding, grad_masked=False):
    # (no kernel here reads the concat's two halves in place: it is materialized, one copy of
    # each; the Triton backend's reads them where they lie)
    return conv3x3_relu(_ops.crop_concat(skip, up), weight, bias, padding, False, grad_masked)


class _Conv1x1ReluInput(torch.autograd.Function):
    """conv1x1 of x, a ReLU output (the head on the last conv's y): dx comes back multiplied by
    (x > 0) from the dgrad kernel's epilogue (`_conv1x1_backward`'s relu_input), not from a
    threshold_backward pass of its own over x's bytes (3 per byte)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        _pointwise_setup(ctx, (x, weight, bias), None)
        return _ops.conv1x1(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        def masked(g, x, weight, mask):
            return _ops._conv1x1_backward(g, x, weight, mask, True)
        return _pointwise_grads(ctx, masked, grad, _mask(ctx))


def conv1x1(x, weight, bias, relu_input_=False):
    if relu_input_:
        return _Conv1x1ReluInput.apply(x, weight, bias_as(bias, x))
    return _ops.conv1x1(x, weight, bias_as(bias, x))


def conv3x3_relu_conv1x1(x, weight, bias, head_weight, head_bias, padding, relu_input_=False):
    # (the head is a kernel of its own here: y is written and read back; the Triton backend's
    # conv computes it in its epilogue)
    # (grad_masked: the head, told relu_input, returns y's gradient masked already)
    y = conv3x3_relu(x, weight, bias, padding, relu_input_, True)
    return conv1x1(y, head_weight, head_bias, True)


IMPLS = {
    "conv3x3_relu": conv3x3_relu,
    "conv3x3_relu_pool": conv3x3_relu_pool,
    "max_pool2x2": _ops.max_pool2x2,
    "crop_concat": _ops.crop_concat,
    "conv_transpose2x2": conv_transpose2x2,
    "up_concat": up_concat,
    "concat_conv3x3_relu": concat_conv3x3_relu,
    "conv1x1": conv1x1,
    "conv3x3_relu_conv1x1": conv3x3_relu_conv1x1,
}
# Ops whose CUDA backward reduces the weight gradient with fp32 atomics (split-K): not
# deterministic when gradients are computed (the dispatch layer's `nondeterministic`). The CUTLASS
# path of the 3x3 convolutions sums its split-K partials in a fixed order: deterministic.
ATOMIC_WGRAD = {"conv3x3_relu", "conv3x3_relu_pool", "conv_transpose2x2", "up_concat",
                "concat_conv3x3_relu", "conv1x1", "conv3x3_relu_conv1x1"}
