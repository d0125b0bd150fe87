"""Fake kernels and autograd for the ops of the extension `_C` (`torch.ops.unet_fast.*`).

Only imported once `_C` has loaded. Each op's forward and backward are C++ ops; this file says
how shapes propagate (for torch.compile) and how gradients flow.
"""
from __future__ import annotations

import torch

_ops = torch.ops.unet_fast


def _like_format(t: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if t.is_contiguous(memory_format=torch.channels_last)
            and not t.is_contiguous() else torch.contiguous_format)


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


def _crop_concat_backward(ctx, grad):
    _, cs, hs, ws = ctx.skip_shape
    grad_skip = _ops._crop_concat_backward(grad, cs, hs, ws)
    return grad_skip, grad[:, cs:]  # the concat's backward is two views (plus the crop's pad)


torch.library.register_autograd("unet_fast::crop_concat", _crop_concat_backward,
                                setup_context=_crop_concat_setup)


def crop_concat(skip, up):
    return _ops.crop_concat(skip, up)


IMPLS = {
    "crop_concat": crop_concat,
}
