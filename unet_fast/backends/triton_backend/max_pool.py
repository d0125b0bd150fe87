"""2x2 max-pooling (stride 2) in Triton: forward, and a backward that recomputes the argmax.

No indices are saved: the backward reads the pooled tensor's source again and routes each pooled
gradient to the first maximum of its window in (0,0), (0,1), (1,0), (1,1) order -- the element
PyTorch's max_pool2d picks. The same backward kernel serves the encoder's fused conv+pool: there it
also adds the skip's gradient and applies the ReLU mask, in one pass over the activation (which the
valid U-Net keeps as its skip and the ring around it: RING).
Tiles are (windows x channels) with channels innermost, so NHWC data moves in wide coalesced rows.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import utils
from .crop_concat import crop_offsets, skip_or_ring


# Autotune keys: channels, the pixel count's power-of-two bucket (P_BUCKET) and the memory layout
# (LAYOUT, utils.layout_key): a 28x28 map and a 572x572 one, or NCHW and NHWC data, want different
# tiles. Both are read by no kernel (do_not_specialize: no extra compilations).
@utils.autotune(configs=utils.elemwise_configs(), key=["C", "P_BUCKET", "LAYOUT"],
                 prune_configs_by={"early_config_prune": utils.prune_elemwise})
@triton.jit(do_not_specialize=["NB", "PH", "PW", "P_BUCKET", "LAYOUT"])
def _max_pool2x2_forward_kernel(
    x_ptr, x_sn, x_sh, x_sw, x_sc,
    y_ptr, y_sn, y_sh, y_sw, y_sc,
    NB, PH, PW, C, P_BUCKET, LAYOUT,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pw = offs_p % PW
    t = offs_p // PW
    ph = t % PH
    n = (t // PH).to(tl.int64)
    ok = (n < NB)[:, None] & (offs_c < C)[None, :]
    base = (n * x_sn + (2 * ph) * x_sh + (2 * pw) * x_sw)[:, None] + offs_c[None, :] * x_sc
    v00 = tl.load(x_ptr + base, mask=ok)
    v01 = tl.load(x_ptr + base + x_sw, mask=ok)
    v10 = tl.load(x_ptr + base + x_sh, mask=ok)
    v11 = tl.load(x_ptr + base + x_sh + x_sw, mask=ok)
    # F.max_pool2d's scan: the first of (0,0), (0,1), (1,0), (1,1) that is greater than every
    # earlier one, or a NaN (so of -0.0 and 0.0 the first seen wins, and a NaN is the max)
    m = v00
    m = tl.where((v01 > m) | (v01 != v01), v01, m)
    m = tl.where((v10 > m) | (v10 != v10), v10, m)
    m = tl.where((v11 > m) | (v11 != v11), v11, m)
    out = (n * y_sn + ph * y_sh + pw * y_sw)[:, None] + offs_c[None, :] * y_sc
    tl.store(y_ptr + out, m, mask=ok)


@utils.autotune(configs=utils.elemwise_configs(),
                 key=["C", "P_BUCKET", "LAYOUT", "ADD_DY", "RELU_MASK", "DY_CROP", "RING"],
                 prune_configs_by={"early_config_prune": utils.prune_elemwise})
@triton.jit(do_not_specialize=["NB", "H", "W", "DYH", "DYW", "DY_T", "DY_L", "P_BUCKET",
                               "LAYOUT"])
def _max_pool2x2_backward_kernel(
    s_ptr, s_sn, s_sh, s_sw, s_sc,          # the pooled map's source (x, or the conv's y)
    dp_ptr, dp_sn, dp_sh, dp_sw, dp_sc,     # gradient of the pooled map
    dy_ptr, dy_sn, dy_sh, dy_sw, dy_sc,     # gradient of the source itself (ADD_DY), or of
    DYH, DYW, DY_T, DY_L,                   # its (DYH, DYW) crop at (DY_T, DY_L) (DY_CROP)
    ring_ptr, ring_sn, ring_sw, ring_sc,    # RING: the source is s, its center crop, and
                                            # this ring around it (crop_concat.skip_or_ring)
    g_ptr, g_sn, g_sh, g_sw, g_sc,          # result, the source's shape
    NB, H, W, C, P_BUCKET, LAYOUT,          # P_BUCKET, LAYOUT: autotune key only
    ADD_DY: tl.constexpr, RELU_MASK: tl.constexpr, DY_CROP: tl.constexpr, RING: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # One program row per 2x2 window of the ceil-divided grid, so odd trailing rows and columns
    # (dropped by the pooling) are written too: zero, or dy masked.
    PWC = (W + 1) // 2
    PHC = (H + 1) // 2
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pw = offs_p % PWC
    t = offs_p // PWC
    ph = t % PHC
    n = (t // PHC).to(tl.int64)
    c_ok = offs_c < C
    w_ok = n < NB
    full = w_ok & (ph < H // 2) & (pw < W // 2)
    h0 = 2 * ph
    w0 = 2 * pw
    ok00 = w_ok[:, None] & c_ok[None, :]
    ok01 = (w_ok & (w0 + 1 < W))[:, None] & c_ok[None, :]
    ok10 = (w_ok & (h0 + 1 < H))[:, None] & c_ok[None, :]
    ok11 = (w_ok & (h0 + 1 < H) & (w0 + 1 < W))[:, None] & c_ok[None, :]
    if RING:   # (the dy crop's size and place are the skip's)
        at00, _ = skip_or_ring(s_ptr, s_sn, s_sh, s_sw, s_sc, ring_ptr, ring_sn, ring_sw, ring_sc,
                               n, h0, w0, offs_c, H, W, DY_T, DY_L, DYH, DYW)
        at01, _ = skip_or_ring(s_ptr, s_sn, s_sh, s_sw, s_sc, ring_ptr, ring_sn, ring_sw, ring_sc,
                               n, h0, w0 + 1, offs_c, H, W, DY_T, DY_L, DYH, DYW)
        at10, _ = skip_or_ring(s_ptr, s_sn, s_sh, s_sw, s_sc, ring_ptr, ring_sn, ring_sw, ring_sc,
                               n, h0 + 1, w0, offs_c, H, W, DY_T, DY_L, DYH, DYW)
        at11, _ = skip_or_ring(s_ptr, s_sn, s_sh, s_sw, s_sc, ring_ptr, ring_sn, ring_sw, ring_sc,
                               n, h0 + 1, w0 + 1, offs_c, H, W, DY_T, DY_L, DYH, DYW)
        v00 = tl.load(at00, mask=ok00, other=float("-inf"))
        v01 = tl.load(at01, mask=ok01, other=float("-inf"))
        v10 = tl.load(at10, mask=ok10, other=float("-inf"))
        v11 = tl.load(at11, mask=ok11, other=float("-inf"))
    else:
        cs = offs_c[None, :] * s_sc
        sb = (n * s_sn + h0 * s_sh + w0 * s_sw)[:, None] + cs
        v00 = tl.load(s_ptr + sb, mask=ok00, other=float("-inf"))
        v01 = tl.load(s_ptr + sb + s_sw, mask=ok01, other=float("-inf"))
        v10 = tl.load(s_ptr + sb + s_sh, mask=ok10, other=float("-inf"))
        v11 = tl.load(s_ptr + sb + s_sh + s_sw, mask=ok11, other=float("-inf"))
    m = tl.maximum(tl.maximum(v00, v01), tl.maximum(v10, v11))
    s00 = v00 == m
    s01 = (v01 == m) & (~s00)
    s10 = (v10 == m) & (~(s00 | s01))
    s11 = ~(s00 | s01 | s10)
    # max_pool2d's rule with NaNs: the last NaN of the window in scan order takes the gradient
    n00, n01, n10, n11 = v00 != v00, v01 != v01, v10 != v10, v11 != v11
    any_nan = n00 | n01 | n10 | n11
    s00 = tl.where(any_nan, n00 & ~(n01 | n10 | n11), s00)
    s01 = tl.where(any_nan, n01 & ~(n10 | n11), s01)
    s10 = tl.where(any_nan, n10 & ~n11, s10)
    s11 = tl.where(any_nan, n11, s11)
    fmask = full[:, None] & c_ok[None, :]
    d = tl.load(dp_ptr + (n * dp_sn + ph * dp_sh + pw * dp_sw)[:, None] + offs_c[None, :] * dp_sc,
                mask=fmask, other=0.0).to(tl.float32)
    zero = tl.zeros_like(d)
    g00 = tl.where(s00 & fmask, d, zero)
    g01 = tl.where(s01 & fmask, d, zero)
    g10 = tl.where(s10 & fmask, d, zero)
    g11 = tl.where(s11 & fmask, d, zero)
    if ADD_DY:
        dh = h0 - DY_T
        dw = w0 - DY_L
        dk00, dk01, dk10, dk11 = ok00, ok01, ok10, ok11
        if DY_CROP:  # (the valid U-Net's skip: its gradient exists on the crop only, else 0)
            r0 = (dh >= 0) & (dh < DYH)
            r1 = (dh + 1 >= 0) & (dh + 1 < DYH)
            c0 = (dw >= 0) & (dw < DYW)
            c1 = (dw + 1 >= 0) & (dw + 1 < DYW)
            dk00 = dk00 & (r0 & c0)[:, None]
            dk01 = dk01 & (r0 & c1)[:, None]
            dk10 = dk10 & (r1 & c0)[:, None]
            dk11 = dk11 & (r1 & c1)[:, None]
        db = (n * dy_sn + dh * dy_sh + dw * dy_sw)[:, None] + offs_c[None, :] * dy_sc
        g00 += tl.load(dy_ptr + db, mask=dk00, other=0.0).to(tl.float32)
        g01 += tl.load(dy_ptr + db + dy_sw, mask=dk01, other=0.0).to(tl.float32)
        g10 += tl.load(dy_ptr + db + dy_sh, mask=dk10, other=0.0).to(tl.float32)
        g11 += tl.load(dy_ptr + db + dy_sh + dy_sw, mask=dk11, other=0.0).to(tl.float32)
    if RELU_MASK:  # as threshold_backward: zero where y <= 0, a NaN y passes the gradient
        g00 = tl.where(v00 <= 0, zero, g00)
        g01 = tl.where(v01 <= 0, zero, g01)
        g10 = tl.where(v10 <= 0, zero, g10)
        g11 = tl.where(v11 <= 0, zero, g11)
    gb = (n * g_sn + h0 * g_sh + w0 * g_sw)[:, None] + offs_c[None, :] * g_sc
    ty = g_ptr.dtype.element_ty
    tl.store(g_ptr + gb, g00.to(ty), mask=ok00)
    tl.store(g_ptr + gb + g_sw, g01.to(ty), mask=ok01)
    tl.store(g_ptr + gb + g_sh, g10.to(ty), mask=ok10)
    tl.store(g_ptr + gb + g_sh + g_sw, g11.to(ty), mask=ok11)


# ---------------------------------------------------------------- host launchers
def max_pool2x2_forward(x: torch.Tensor) -> torch.Tensor:
    nb, c, h, w = x.shape
    ph, pw = h // 2, w // 2
    y = utils.empty_like_format((nb, c, ph, pw), x)
    pix = nb * ph * pw
    grid = lambda meta: (triton.cdiv(pix, meta["BLOCK_P"]),  # noqa: E731
                         triton.cdiv(c, meta["BLOCK_C"]))
    with utils.on_device(x):
        _max_pool2x2_forward_kernel[grid](x, *utils.nhwc_strides(x), y, *utils.nhwc_strides(y),
                                          nb, ph, pw, c, utils.m_bucket(pix),
                                          utils.layout_key(x, y))
    return y


def max_pool2x2_backward(src: torch.Tensor, dpool: Optional[torch.Tensor],
                         dy: Optional[torch.Tensor] = None, relu_mask: bool = False,
                         like: Optional[torch.Tensor] = None,
                         ring: Optional[torch.Tensor] = None, hw=None) -> torch.Tensor:
    """Gradient w.r.t. the pooled map's source: route(dpool) (+ dy) (* (src > 0)). A `dy`
    smaller than src is the gradient of src's center crop of that size (0 elsewhere). With
    `ring`, the source is an (H, W) = `hw` map kept as `src`, its center crop, and that ring
    around it (crop_concat.skip_or_ring); a `dy` then has the crop's size."""
    nb, c = src.shape[:2]
    h, w = hw if ring is not None else src.shape[-2:]
    g = utils.empty_like_format((nb, c, h, w), like if like is not None else src)
    if dpool is None:
        dpool = torch.zeros((nb, c, h // 2, w // 2), dtype=src.dtype, device=src.device)
    # (the kernel takes the crop's size and place from dy's: the skip's own when it has no dy)
    dyt = dy if dy is not None else (src if ring is not None else g)
    dyh, dyw = dyt.shape[-2:]
    dy_crop = (dyh, dyw) != (h, w)
    rt = ring if ring is not None else g
    ring_sn, _, ring_sw, ring_sc = utils.nhwc_strides(rt)
    pix = nb * ((h + 1) // 2) * ((w + 1) // 2)
    grid = lambda meta: (triton.cdiv(pix, meta["BLOCK_P"]),  # noqa: E731
                         triton.cdiv(c, meta["BLOCK_C"]))
    with utils.on_device(src):
        _max_pool2x2_backward_kernel[grid](
            src, *utils.nhwc_strides(src), dpool, *utils.nhwc_strides(dpool),
            dyt, *utils.nhwc_strides(dyt), dyh, dyw, *crop_offsets((h, w), (dyh, dyw)),
            rt, ring_sn, ring_sw, ring_sc,
            g, *utils.nhwc_strides(g),
            nb, h, w, c, utils.m_bucket(pix), utils.layout_key(src, dpool, dyt, g),
            ADD_DY=dy is not None, RELU_MASK=relu_mask, DY_CROP=dy_crop, RING=ring is not None)
    return g


# ---------------------------------------------------------------- torch operators and autograd
@torch.library.custom_op("unet_fast_triton::max_pool2x2", mutates_args=())
def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    return max_pool2x2_forward(x)


@max_pool2x2.register_fake
def _(x):
    nb, c, h, w = x.shape
    return utils.empty_like_format((nb, c, h // 2, w // 2), x)


@torch.library.custom_op("unet_fast_triton::_max_pool2x2_backward", mutates_args=())
def _max_pool2x2_backward(dpool: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return max_pool2x2_backward(x, dpool)


@_max_pool2x2_backward.register_fake
def _(dpool, x):
    return utils.empty_like_format(x.shape, x)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, dpool):
    (x,) = ctx.saved_tensors
    return _max_pool2x2_backward(dpool, x)


max_pool2x2.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------- the pool epilogue's backward
@torch.library.custom_op("unet_fast_triton::_relu_pool_backward", mutates_args=())
def _relu_pool_backward(dy: Optional[torch.Tensor], dpool: Optional[torch.Tensor],
                        y: torch.Tensor) -> torch.Tensor:
    """(dy + route(dpool)) * (y > 0) for y = relu(conv(...)) and pooled = max_pool2x2(y), in one
    pass: the gradient the fused conv+ReLU+pool hands to its dgrad and wgrad. A dy smaller than
    y is the gradient of y's center crop (the valid U-Net's skip), read in place."""
    return max_pool2x2_backward(y, dpool, dy, relu_mask=True)


@_relu_pool_backward.register_fake
def _(dy, dpool, y):
    return utils.empty_like_format(y.shape, y)


@torch.library.custom_op("unet_fast_triton::_relu_pool_backward_ring", mutates_args=())
def _relu_pool_backward_ring(dy: Optional[torch.Tensor], dpool: Optional[torch.Tensor],
                             skip: torch.Tensor, ring: torch.Tensor, height: int,
                             width: int) -> torch.Tensor:
    """_relu_pool_backward for the valid U-Net's encoder, whose (height, width) output y is kept
    as its center crop `skip` and the `ring` around it (conv3x3_relu.conv3x3_relu_pool_crop);
    dy, if any, is the skip's gradient."""
    return max_pool2x2_backward(skip, dpool, dy, relu_mask=True, ring=ring, hw=(height, width))


@_relu_pool_backward_ring.register_fake
def _(dy, dpool, skip, ring, height, width):
    return utils.empty_like_format((skip.shape[0], skip.shape[1], height, width), skip)


def impl(x):
    return max_pool2x2(x)
