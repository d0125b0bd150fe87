"""The reference U-Net of Ronneberger et al. (2015), in plain PyTorch modules.

It is the oracle the fast model is tested against and has the same state_dict keys and shapes as
`unet_fast.UNet`, so weights load both ways.
"""
from __future__ import annotations

import torch
from torch import nn

from . import sizes
from .backends.torch_backend import center_crop


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
        _check_config(in_channels, num_classes, base_channels, depth, padding)
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

    def forward(self, x):
        _check_input(self, x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        return self.head(x)


def _check_config(in_channels, num_classes, base_channels, depth, padding):
    for name, v in (("in_channels", in_channels), ("num_classes", num_classes),
                    ("base_channels", base_channels), ("depth", depth)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    sizes.check_padding(padding)


def _check_input(model, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != model.in_channels:
        raise ValueError(f"x has {x.shape[1]} channels but the model was built with "
                         f"in_channels={model.in_channels}")
    if x.shape[0] == 0:
        raise ValueError("x has batch size 0")
    p = next(model.parameters(), None)
    if p is not None:
        if x.device != p.device:
            raise ValueError(f"x is on {x.device} but the model's parameters are on {p.device}; "
                             f"move one to the other: model.to(x.device) or x.to('{p.device}')")
        autocast = x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type)
        if x.dtype != p.dtype and not autocast:
            raise TypeError(f"x is {x.dtype} but the model's parameters are {p.dtype}; use "
                            f"x.to({p.dtype}) or model.to({x.dtype}), or run under torch.autocast")
    sizes.output_size(tuple(int(s) for s in x.shape[-2:]), model.depth, model.padding)
