"""The `torch` backend: PyTorch's own ops. The fallback for every op and, in float64, the oracle."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._dispatch import register_impl
from .._utils import bias_as, center_crop, memory_format_of, relu_input


def _keep_format(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """torch.cat answers in its own format; ours answer in the input's."""
    return y.contiguous(memory_format=memory_format_of(like))


# bias_as: under autocast a bias arrives in its own dtype (ops._autocast); cast here as PyTorch's
# autocast would have, so this backend's numbers stay PyTorch's own.
# relu_input: the ReLU-gradient contract of the model's fused path (unet_fast/_dispatch.py OPS);
# grad_masked only lets a backend skip work, and PyTorch's ReLU masks regardless (idempotent).
def conv3x3_relu(x, weight, bias, padding, relu_input_=False, grad_masked=False):
    return F.relu(F.conv2d(relu_input(x, relu_input_), weight, bias_as(bias, x), padding=padding))


def conv3x3_relu_pool(x, weight, bias, padding, relu_input_=False, skip_h=0, skip_w=0):
    y = conv3x3_relu(x, weight, bias, padding, relu_input_)
    return _skip(y, skip_h, skip_w), F.max_pool2d(y, 2, 2)


def _skip(y, skip_h, skip_w):
    """conv3x3_relu_pool's skip: y, or its center crop (skip_h, skip_w) when given (a view)."""
    return center_crop(y, (skip_h, skip_w)) if skip_h else y


def max_pool2x2(x):
    return F.max_pool2d(x, 2, 2)


def crop_concat(skip, up):
    return _keep_format(torch.cat([center_crop(skip, up.shape[-2:]), up], dim=1), up)


def conv_transpose2x2(x, weight, bias, relu_input_=False):
    return F.conv_transpose2d(relu_input(x, relu_input_), weight, bias_as(bias, x), stride=2)


def up_concat(skip, x, weight, bias, relu_input_=False):
    return crop_concat(skip, conv_transpose2x2(x, weight, bias, relu_input_))


def concat_conv3x3_relu(skip, up, weight, bias, padding, grad_masked=False):
    return conv3x3_relu(crop_concat(skip, up), weight, bias, padding)


def conv1x1(x, weight, bias, relu_input_=False):
    return F.conv2d(relu_input(x, relu_input_), weight, bias_as(bias, x))


def conv3x3_relu_conv1x1(x, weight, bias, head_weight, head_bias, padding, relu_input_=False):
    return conv1x1(conv3x3_relu(x, weight, bias, padding, relu_input_), head_weight, head_bias)


for _op in ("conv3x3_relu", "conv3x3_relu_pool", "max_pool2x2", "crop_concat",
            "conv_transpose2x2", "up_concat", "concat_conv3x3_relu", "conv1x1",
            "conv3x3_relu_conv1x1"):
    register_impl(_op, "torch", globals()[_op])
