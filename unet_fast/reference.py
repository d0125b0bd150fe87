"""The reference U-Net of Ronneberger et al. (2015), in plain PyTorch modules.

It is the oracle the fast model is tested against and has the same state_dict keys and shapes as
`unet_fast.UNet`, so weights load both ways.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from . import sizes
from ._utils import center_crop, check_config, check_model_input


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by ReLU."""

    def __init__(self, cin: int, cout: int, padding: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=padding), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=padding), nn.ReLU(inplace=True))


class Up(nn.Module):
    """2x2 transposed conv halving the channels, concat with the cropped skip, two 3x3 convs."""

    def __init__(self, cin: int, cout: int, padding: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = DoubleConv(2 * cout, cout, padding)

    def forward(self, x, skip):
        x = self.up(x)
        return self.conv(torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1))


class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 64,
                 depth: int = 4, padding: str = "valid"):
        super().__init__()
        check_config(in_channels, num_classes, base_channels, depth, padding)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.base_channels, self.depth, self.padding = base_channels, depth, padding
        p = 0 if padding == "valid" else 1
        ch = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([DoubleConv(in_channels if i == 0 else ch[i - 1], ch[i], p)
                                   for i in range(depth)])
        self.bottleneck = DoubleConv(ch[depth - 1], ch[depth], p)
        self.pool = nn.MaxPool2d(2, 2)
        self.up = nn.ModuleList([Up(ch[i + 1], ch[i], p) for i in reversed(range(depth))])
        self.head = nn.Conv2d(base_channels, num_classes, 1)

    def output_size(self, size):
        return sizes.output_size(size, self.depth, self.padding)

    def legal_input_sizes(self, size: int):
        """The legal input sizes nearest to `size` on one axis."""
        return sizes.nearest_legal_sizes(size, self.depth, self.padding)

    def crop_to_output(self, t: torch.Tensor) -> torch.Tensor:
        """`t`, a map of the input's size (..., H, W): a target, a weight map, the image itself,
        cropped around its center to the pixels this network's output predicts for an input of
        that size (572x572 -> the 388x388 center for the paper's network; unchanged for
        padding="same"). Use it to compare the output with anything made at the input's size:
        `loss(model(x), model.crop_to_output(target))`. A view; ValueError for an illegal size."""
        if not isinstance(t, torch.Tensor) or t.dim() < 2:
            raise ValueError("crop_to_output takes a tensor whose last two dimensions are "
                             f"(height, width), got {type(t).__name__}"
                             + (f" of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else ""))
        return center_crop(t, self.output_size(tuple(t.shape[-2:])))

    def forward(self, x):
        check_model_input(self, x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        return self.head(x)


class Conv3x3Problem(NamedTuple):
    name: str   # the module's name in the model ("down.1.0", "up.0.conv.2"): the dispatch layer
    c_in: int
    c_out: int
    h: int      # the input's height and width
    w: int
    pad: int


def conv3x3_problems(in_channels: int = 1, padding: str = "valid", size: int = 572,
                     base_channels: int = 64, depth: int = 4) -> list[Conv3x3Problem]:
    """Every 3x3 convolution of the U-Net on a size x size image, in forward order, from the model
    itself (shapes only: the meta device). For the CUTLASS units' tests and
    tools/kernel_model.py."""
    return _problems(lambda mod: isinstance(mod, nn.Conv2d) and mod.kernel_size == (3, 3),
                     in_channels, padding, size, base_channels, depth)


def up_problems(in_channels: int = 1, padding: str = "valid", size: int = 572,
                base_channels: int = 64, depth: int = 4) -> list[Conv3x3Problem]:
    """Every 2x2 transposed convolution of the U-Net likewise (its input's channels and size;
    pad 0)."""
    return _problems(lambda mod: isinstance(mod, nn.ConvTranspose2d), in_channels, padding, size,
                     base_channels, depth)


def _problems(want, in_channels, padding, size, base_channels, depth):
    model = UNet(in_channels, 2, base_channels, depth, padding).to("meta")
    names = {mod: name for name, mod in model.named_modules()}
    found = []

    def record(mod, inputs, _):
        if want(mod):
            x = inputs[0]
            found.append(Conv3x3Problem(names[mod], x.shape[1], mod.out_channels, x.shape[2],
                                        x.shape[3], mod.padding[0]))

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.empty(1, in_channels, size, size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return found
