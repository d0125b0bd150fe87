"""The `torch` backend: PyTorch's own ops. The fallback for every op and, in float64, the oracle."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._dispatch import register_impl
from .._utils import memory_format_of


def center_crop(skip: torch.Tensor, size) -> torch.Tensor:
    """View of `skip` cropped to `size` (H, W) around its center; offset (skip - size) // 2."""
    h, w = size
    top = (skip.shape[-2] - h) // 2
    left = (skip.shape[-1] - w) // 2
    return skip[..., top:top + h, left:left + w]


def _keep_format(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """torch.cat answers in its own format; ours answer in the input's."""
    return y.contiguous(memory_format=memory_format_of(like))


def conv3x3_relu(x, weight, bias, padding):
    return F.relu(F.conv2d(x, weight, bias, padding=padding))


def conv3x3_relu_pool(x, weight, bias, padding):
    y = conv3x3_relu(x, weight, bias, padding)
    return y, F.max_pool2d(y, 2, 2)


def max_pool2x2(x):
    return F.max_pool2d(x, 2, 2)


def crop_concat(skip, up):
    return _keep_format(torch.cat([center_crop(skip, up.shape[-2:]), up], dim=1), up)


def conv_transpose2x2(x, weight, bias):
    return F.conv_transpose2d(x, weight, bias, stride=2)


def up_concat(skip, x, weight, bias):
    return crop_concat(skip, conv_transpose2x2(x, weight, bias))


def conv1x1(x, weight, bias):
    return F.conv2d(x, weight, bias)


for _op in ("conv3x3_relu", "conv3x3_relu_pool", "max_pool2x2", "crop_concat",
            "conv_transpose2x2", "up_concat", "conv1x1"):
    register_impl(_op, "torch", globals()[_op])
