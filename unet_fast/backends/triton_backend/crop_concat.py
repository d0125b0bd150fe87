"""Center-crop + channel concat in Triton: cat([crop(skip), up], 1), forward and backward.

One strided copy kernel does all the moving: dst[n, h, w, c] = src[n, h + oh, w + ow, c] where that
pixel exists, else 0. The forward runs it twice into one freshly allocated buffer (the cropped skip
into the lower channel slice, `up` into the upper one); the backward of the upper part is a view,
and of the skip a view too when nothing was cropped (the model hands it skips its encoder already
cropped: conv3x3_relu.conv3x3_relu_pool_crop), else one copy that zero-pads the cropped gradient
back to the skip's size. Tiles are (pixels x channels), channels innermost.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from unet_fast import _utils

from . import utils


# Autotune keys: channels, the pixel count's power-of-two bucket and the memory layout (which of
# source and destination have channel stride 1); the last two are read by no kernel.
@utils.autotune(configs=utils.elemwise_configs(), key=["C", "P_BUCKET", "LAYOUT"],
                 prune_configs_by={"early_config_prune": utils.prune_elemwise})
@triton.jit(do_not_specialize=["SH", "SW", "DH", "DW", "NB", "OFF_H", "OFF_W", "P_BUCKET",
                               "LAYOUT"])
def _crop_copy_kernel(
    s_ptr, s_sn, s_sh, s_sw, s_sc, SH, SW,
    d_ptr, d_sn, d_sh, d_sw, d_sc, DH, DW,
    NB, C, OFF_H, OFF_W, P_BUCKET, LAYOUT,      # P_BUCKET, LAYOUT: autotune key only
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    w = offs_p % DW
    t = offs_p // DW
    h = t % DH
    n = (t // DH).to(tl.int64)
    sh = h + OFF_H
    sw = w + OFF_W
    d_ok = (n < NB)[:, None] & (offs_c < C)[None, :]
    s_ok = d_ok & ((sh >= 0) & (sh < SH) & (sw >= 0) & (sw < SW))[:, None]
    v = tl.load(s_ptr + (n * s_sn + sh * s_sh + sw * s_sw)[:, None] + offs_c[None, :] * s_sc,
                mask=s_ok, other=0.0)
    tl.store(d_ptr + (n * d_sn + h * d_sh + w * d_sw)[:, None] + offs_c[None, :] * d_sc,
             v.to(d_ptr.dtype.element_ty), mask=d_ok)


def crop_copy(src: torch.Tensor, dst: torch.Tensor, off_h: int, off_w: int) -> None:
    """dst[..., h, w] = src[..., h + off_h, w + off_w] (0 outside src); both logical NCHW."""
    nb, c, dh, dw = dst.shape
    sh, sw = src.shape[-2:]
    pix = nb * dh * dw
    grid = lambda meta: (triton.cdiv(pix, meta["BLOCK_P"]),  # noqa: E731
                         triton.cdiv(c, meta["BLOCK_C"]))
    with utils.on_device(dst):
        _crop_copy_kernel[grid](src, *utils.nhwc_strides(src), sh, sw,
                                dst, *utils.nhwc_strides(dst), dh, dw, nb, c, off_h, off_w,
                                utils.m_bucket(pix), utils.layout_key(src, dst))


def crop_offsets(skip_hw, up_hw):
    return (skip_hw[0] - up_hw[0]) // 2, (skip_hw[1] - up_hw[1]) // 2


# ---------------------------------------------------------------- the valid U-Net's kept encoder output
# The encoder's second conv output y is kept for its backward (the ReLU mask, the pool's argmax),
# and its center crop is the skip the decoder reads. So y is stored once, in two parts: the skip
# (its own tensor, which the decoder's kernels read in place) and the ring around it, the pixels
# of y outside the crop, row by row, channels innermost; nothing of y is stored twice.
def ring_pixels(y_hw, crop_hw) -> int:
    """Pixels of y's ring around its (H, W) crop, per image."""
    return y_hw[0] * y_hw[1] - crop_hw[0] * crop_hw[1]


def empty_ring(nb: int, c: int, y_hw, crop_hw, like: torch.Tensor) -> torch.Tensor:
    """The ring as a logical (N, C, 1, ring pixels) channels_last tensor (nhwc_strides: the
    image, the pixel, the channel)."""
    return torch.empty((nb, c, 1, ring_pixels(y_hw, crop_hw)), dtype=like.dtype,
                       device=like.device, memory_format=torch.channels_last)


@triton.jit
def ring_pixel(p, q, OH, OW, T, L, CH, CW):
    """For pixels (p, q) of the (OH, OW) map y with its (CH, CW) crop at (T, L): whether each is
    in the crop, and else its pixel number in the ring (y's pixel number less the crop's pixels
    before it: the crop's rows above, and in a crop row the crop's own span left of it)."""
    mid = (p >= T) & (p < T + CH)
    in_crop = mid & (q >= L) & (q < L + CW)
    rows_before = tl.minimum(tl.maximum(p - T, 0), CH)
    return in_crop, p * OW + q - CW * (rows_before + (mid & (q >= L)).to(tl.int32))


@triton.jit
def skip_or_ring(skip_ptr, k_sn, k_sh, k_sw, k_sc, ring_ptr, ring_sn, ring_sw, ring_sc, n, p, q,
                 offs_c, OH, OW, T, L, CH, CW):
    """Where y's pixels (n, p, q) (a tile's rows) and channels offs_c (its columns) lie when y is
    kept as its (CH, CW) crop at (T, L), `skip`, and the ring around it: the pointers, into
    whichever of the two holds each pixel, and which rows are in the crop. The one rule for the
    epilogue that writes y so (igemm) and the pool backward that reads it (max_pool)."""
    in_crop, ring_q = ring_pixel(p, q, OH, OW, T, L, CH, CW)
    at_skip = skip_ptr + ((n * k_sn + (p - T) * k_sh + (q - L) * k_sw)[:, None]
                          + offs_c[None, :] * k_sc)
    at_ring = ring_ptr + ((n * ring_sn + ring_q * ring_sw)[:, None] + offs_c[None, :] * ring_sc)
    return tl.where(in_crop[:, None], at_skip, at_ring), in_crop


# ---------------------------------------------------------------- torch operators and autograd
def _concat_shape(skip, up):
    return (up.shape[0], skip.shape[1] + up.shape[1], up.shape[2], up.shape[3])


@torch.library.custom_op("unet_fast_triton::crop_concat", mutates_args=())
def crop_concat(skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    out = utils.empty_like_format(_concat_shape(skip, up), up)
    cs = skip.shape[1]
    top, left = crop_offsets(skip.shape[-2:], up.shape[-2:])
    crop_copy(skip, out[:, :cs], top, left)
    crop_copy(up, out[:, cs:], 0, 0)
    return out


@crop_concat.register_fake
def _(skip, up):
    return utils.empty_like_format(_concat_shape(skip, up), up)


@torch.library.custom_op("unet_fast_triton::_crop_pad", mutates_args=())
def _crop_pad(grad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The crop's backward: `grad` placed at the center offset of a zero (height, width) map."""
    out = utils.empty_like_format((grad.shape[0], grad.shape[1], height, width), grad)
    top, left = crop_offsets((height, width), grad.shape[-2:])
    crop_copy(grad, out, -top, -left)
    return out


@_crop_pad.register_fake
def _(grad, height, width):
    return utils.empty_like_format((grad.shape[0], grad.shape[1], height, width), grad)


def skip_grad(g_skip: torch.Tensor, skip_hw) -> torch.Tensor:
    return _utils.skip_grad(g_skip, skip_hw, _crop_pad)


def _setup(ctx, inputs, output):
    skip, up = inputs
    ctx.skip_channels = skip.shape[1]
    ctx.skip_hw = tuple(skip.shape[-2:])


def _backward(ctx, grad):
    cs = ctx.skip_channels
    return skip_grad(grad[:, :cs], ctx.skip_hw), grad[:, cs:]


crop_concat.register_autograd(_backward, setup_context=_setup)


def impl(skip, up):
    return crop_concat(skip, up)
