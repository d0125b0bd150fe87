"""The fast U-Net: the paper's figure, built from the functional ops of `unet_fast.ops`.

Parameters live in ordinary nn.Conv2d / nn.ConvTranspose2d modules at the same state_dict paths as
`unet_fast.reference.UNet` (weights load both ways, initialization is identical for one seed);
only the forward differs: the encoder's second conv also writes the pooled output (fused epilogue),
the decoder's up-step writes the transposed conv straight into the concat buffer, and the dispatch
layer picks the kernels.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.utils.checkpoint
from torch import nn

from . import _dispatch, ops, sizes
from ._utils import memory_format_of
from .reference import _check_config, _check_input


class Conv3x3ReLU(nn.Conv2d):
    """nn.Conv2d(3x3) + ReLU on the fused op."""

    def __init__(self, cin, cout, padding):
        super().__init__(cin, cout, 3, padding=padding)


class DoubleConv(nn.Module):
    """Two 3x3 conv + ReLU; children named "0" and "2" like the reference's nn.Sequential."""

    def __init__(self, cin: int, cout: int, padding: int):
        super().__init__()
        self.add_module("0", Conv3x3ReLU(cin, cout, padding))
        self.add_module("2", Conv3x3ReLU(cout, cout, padding))


class Up(nn.Module):
    def __init__(self, cin: int, cout: int, padding: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = DoubleConv(2 * cout, cout, padding)


class UNet(nn.Module):
    """U-Net (Ronneberger et al., 2015) on unet_fast's kernels.

    backend: "auto" (default: the fastest implementation that can run each input; the reference
    ops on CPU), "triton", "cuda" or "torch". `backend_report()` says what ran each layer.
    checkpointing: recompute each level's activations in the backward instead of keeping them
    (activation checkpointing): less peak memory for about one more forward.
    State dicts of a torch.compile'd model ("_orig_mod." keys) or of DDP ("module.") load as is.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 64,
                 depth: int = 4, padding: str = "valid", backend: str = "auto",
                 checkpointing: bool = False):
        super().__init__()
        _check_config(in_channels, num_classes, base_channels, depth, padding)
        self.backend = _dispatch.check_backend_name(backend)
        self.checkpointing = bool(checkpointing)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.base_channels, self.depth, self.padding = base_channels, depth, padding
        p = 0 if padding == "valid" else 1
        ch = [base_channels * 2**i for i in range(depth + 1)]
        # Same construction order as the reference, so one seed gives the same weights.
        self.down = nn.ModuleList([DoubleConv(in_channels if i == 0 else ch[i - 1], ch[i], p)
                                   for i in range(depth)])
        self.bottleneck = DoubleConv(ch[depth - 1], ch[depth], p)
        self.up = nn.ModuleList([Up(ch[i + 1], ch[i], p) for i in reversed(range(depth))])
        self.head = nn.Conv2d(base_channels, num_classes, 1)
        self._report: dict[str, str] = {}
        self._register_load_state_dict_pre_hook(_strip_wrapper_prefixes)

    # ------------------------------------------------------------------ sizes
    def output_size(self, size):
        """Output (H, W) for an input (H, W); ValueError naming the nearest legal sizes."""
        return sizes.output_size(size, self.depth, self.padding)

    def legal_input_sizes(self, size: int):
        """The legal input sizes nearest to `size` on one axis."""
        return sizes.nearest_legal_sizes(size, self.depth, self.padding)

    def backend_report(self) -> dict:
        """{layer name: backend that ran it} for the last eager forward (a compiled graph's
        choices were made when it was traced)."""
        return dict(self._report)

    # ------------------------------------------------------------------ forward
    def _op(self, layer: str, op: str, *args):
        backend: Optional[str] = None if self.backend == "auto" else self.backend
        out = getattr(ops, op)(*args, backend=backend)
        if not _dispatch._is_compiling():  # the report describes the last eager forward
            self._report[layer] = _dispatch.last_used(op)
        return out

    def _double(self, name: str, block: DoubleConv, x, pool: bool):
        a, b = getattr(block, "0"), getattr(block, "2")
        x = self._op(f"{name}.0", "conv3x3_relu", x, a.weight, a.bias, a.padding[0])
        if pool:  # the second conv writes the skip and, from the same epilogue, the pooled map
            return self._op(f"{name}.2", "conv3x3_relu_pool", x, b.weight, b.bias, b.padding[0])
        return self._op(f"{name}.2", "conv3x3_relu", x, b.weight, b.bias, b.padding[0])

    def _up(self, i: int, block: Up, x, skip):
        # transposed conv written straight into the concat buffer beside the cropped skip
        x = self._op(f"up.{i}.up", "up_concat", skip, x, block.up.weight, block.up.bias)
        return self._double(f"up.{i}.conv", block.conv, x, pool=False)

    def _step(self, fn, *args):
        if self.checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x):
        _check_input(self, x)
        fmt = memory_format_of(x)
        if x.is_cuda or self.backend in ("triton", "cuda"):
            # NHWC inside: the layout our kernels (and cuDNN's fastest paths) are built for
            x = x.to(memory_format=torch.channels_last)  # restrides even a 1-channel input
        skips = []
        for i, block in enumerate(self.down):
            skip, x = self._step(lambda t, n=f"down.{i}", b=block: self._double(n, b, t, pool=True), x)
            skips.append(skip)
        x = self._step(lambda t: self._double("bottleneck", self.bottleneck, t, pool=False), x)
        for i, (block, skip) in enumerate(zip(self.up, reversed(skips))):
            x = self._step(lambda t, s, i=i, b=block: self._up(i, b, t, s), x, skip)
        x = self._op("head", "conv1x1", x, self.head.weight, self.head.bias)
        return x if x.is_contiguous(memory_format=fmt) else _InCallersFormat.apply(x, fmt)


class _InCallersFormat(torch.autograd.Function):
    """The output in the caller's memory format, and its gradient back in the layout the network
    ran in. (With a plain .contiguous() the NCHW gradient of an NCHW caller would reach every
    backward kernel of the decoder, which are built for NHWC: one copy of the small head gradient
    here instead of a slow path or a conversion in each of them.)"""

    @staticmethod
    def forward(ctx, x, fmt):
        ctx.inner = memory_format_of(x)
        return x.contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.inner), None


def _strip_wrapper_prefixes(state_dict, prefix, *args):
    """Accept keys saved from torch.compile (`_orig_mod.`) or DDP (`module.`) wrappers."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        stripped = rest
        while stripped.startswith(("_orig_mod.", "module.")):
            stripped = stripped.split(".", 1)[1]
        if stripped != rest:
            state_dict[prefix + stripped] = state_dict.pop(key)
