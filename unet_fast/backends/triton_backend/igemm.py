"""The implicit-GEMM kernels every convolution of the Triton backend is made of: two general ones
and, for the memory-bound convolutions whose whole K fits one tile, a persistent third.

`igemm_fwd_kernel` computes, for each pixel (n, p, q) of an output grid and each GEMM column j,

    out[n, p, q, j] = epilogue( sum_{tap, ca} A[n, S*p + dh(tap), S*q + dw(tap), ca] * W[tap, ca, j] )

with taps (kh, kw) of a KS x KS window, dh = SIGN * (kh - PAD). That one loop is
- the 3x3 convolution (S=1, SIGN=+1, PAD=padding; the accumulators start from the bias, the
  epilogue applies ReLU, optionally the 2x2 max-pool of the tile written from the same registers),
- its input gradient, dgrad (A = the already ReLU-masked output gradient, SIGN=-1: the flipped
  window; the epilogue can mask dx by the layer input's own ReLU, RELU_IN),
- the 1x1 convolution and its dgrad (KS=1),
- the 2x2 transposed convolution (KS=1, N = 4*C_out; the epilogue scatters column (i, j, co) to
  pixel (2p+i, 2q+j), possibly inside a channel slice of a concat buffer) and its dgrad
  (A = dy, S=2, KS=2: each input pixel gathers its four output pixels).
The weight is read through strides (per tap, per input channel, per column), so channels_last
weights need no re-layout.

`igemm_wgrad_kernel` computes the weight gradients as the products over pixels

    R[m, n] = sum_{pixels p} A[p (+ shift), m] * B[p (+ shift), n]

where one of the two operands is read at the tap-shifted pixel S*p + (dh, dw) and its channels are
split per tap: R[co, (tap, ci)] for a convolution (A = the masked output gradient, B = x shifted),
R[(tap, co), ci] for the transposed convolution (A = dy at (2p+i, 2q+j), B = x). The bias gradient
is the row sums of A, computed on the tensor cores (A times a column of ones) by the tiles of the
first column. The pixel sum is split over the grid's y into fp32 partials (deterministic).

`igemm_onek_kernel` is igemm_fwd_kernel's loop for K = taps x channels <= 64 and N <= 64 (the
first layer's 9 or 27 (tap, channel) columns; the 1x1 head, 64 -> classes, and its dgrad): one
tile holds the whole K, so each CTA loads the weight once and walks pixel tiles, the next tile's
loads overlapping this one's store (igemm_fwd chooses it, utils.use_onek).

For the 3x3 windows a config may gather A through the L1 (A_L1, utils.IGEMM_CONFIGS_16): 8-byte
copies (cp.async caches those in the L1; Triton sends 16-byte ones past it) and a channel chunk's
nine taps one after another, so the three taps of a kernel row, which read the same input pixels
one column apart, mostly hit the L1 instead of asking the L2 again (utils.l1_reuse).

All tensors are addressed through explicit (n, h, w, c) element strides, so NCHW, channels_last
and strided views (a channel slice of a concat buffer) are read and written in place. Accumulation
is fp32. Pixel offsets are 64-bit (a batch of 572x572x64 activations already needs 29 bits).
Mainloops keep their per-iteration work small (see tools/kernel_model.py): taps and channel
chunks advance as scalars, per-row addresses are computed once per tile, and the wgrad walks its
pixels in K-tiles of one fixed shape, so each pixel's offset within a K-tile is computed once and
only scalars advance (`_wgrad_loop`).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import num_warps as _num_warps

from . import utils
from .crop_concat import crop_offsets, skip_or_ring

# (the interpreter has no num_warps builtin: the pool's row order then assumes 4 warps, an order
# that is right for any layout, only not the fastest for every one)
_COMPILED = tl.constexpr(not utils.INTERPRET)
_HEAD_N = tl.constexpr(utils.HEAD_MAX_CLASSES)   # the fused head's classes, padded (HEAD)

# Autotune keys: the GEMM's dimensions (M as a power-of-two bucket), the memory layout (LAYOUT:
# which operands have channel stride 1, utils.layout_key) and every constexpr that changes the
# kernel's work; never pointers or strides themselves. Triton appends the tensors' dtypes.
# STORE_Y too, though inference only drops stores: fewer registers can mean more CTAs an SM and
# less L1 each, and the best tile moves (the head's inference variant on same512, by the kernel
# model: 0.73 ms on the training forward's tile, 0.51 on its own), so an evaluation tunes its own.
_FWD_KEY = ["CA", "N_GEMM", "M_BUCKET", "LAYOUT", "KS", "STRIDE", "PAD", "SIGN", "POOL", "SKIP",
            "WIDE", "CAT", "UPSCATTER", "RELU_IN", "HAS_BIAS", "FLAT_K", "HEAD", "STORE_Y",
            "W_DESC", "O_DESC", "PRECISION"]
_WGRAD_KEY = ["CA", "CB", "K_BUCKET", "LAYOUT", "KS", "STRIDE", "PAD", "SHIFT_A", "FLAT_A",
              "FLAT_B", "SUB_N", "DBIAS", "INT64", "PRECISION", "CAT", "CB1"]
# Integer arguments Triton would otherwise specialize on (== 1, divisible by 16), compiling one more
# binary per config for each new combination: sizes that only bound masks or index pixels gain
# nothing from it, and the key-only arguments (buckets, LAYOUT) are not read by the kernels at all.
# Channel counts and strides stay specialized (16-byte vector loads need them).
_FWD_NO_SPEC = ["AH", "AW", "NB", "OH", "OW", "M_GEMM", "M_BUCKET", "LAYOUT", "SKH", "SKW",
                "SK_T", "SK_L"]
_WGRAD_NO_SPEC = ["AH", "AW", "BH", "BW", "NB", "PH", "PW", "QB", "RPAD", "K_TOT", "K_BUCKET",
                  "LAYOUT"]


@triton.jit
def _dot(acc, a, b, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    if DOT_F32:  # interpreter only: its bf16 dot is wrong, fp32 of the same values is exact
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _offset_int(n, INT64: tl.constexpr):
    """n as the type element offsets are computed in: int64 where a tensor spans 2**31 elements
    or more (utils.needs_int64), else int32 (half the registers for each row's address)."""
    if INT64:
        r = n.to(tl.int64)
    else:
        r = n
    return r


@triton.jit
def _pool_rows(i, BLOCK_M: tl.constexpr, SLABS: tl.constexpr):
    """With POOL: the 2x2 window (within the tile) and the place in it (0..3) of each of a
    tile's rows i, for accumulators whose warps' 16-row slabs repeat SLABS times down the tile
    (igemm_fwd_kernel's POOL_SLABS). A thread of a wgmma accumulator holds rows 8 apart in each
    slab and the same rows of every repeat, so:
    - SLABS even: a window's rows are 8 and BLOCK_M / 2 apart (i = BLOCK_M / 2 a + 16 b + 8 c
      + d: window 8 b + d, place 2 a + c), all in one thread: the pool's max needs no shuffle;
    - one slab, BLOCK_M a multiple of 16: rows 8 apart in one thread, the pair beside them in
      the next lanes (i = 16 b + 8 c + 2 e + f: window 4 b + e, place 2 f + c): one shuffle;
    - else four consecutive rows.
    Correct for any layout (the max follows the same order: _pool_max), fastest for these."""
    if SLABS % 2 == 0:
        a = i // (BLOCK_M // 2)
        r = i % (BLOCK_M // 2)
        win = (r // 16) * 8 + r % 8
        sub = 2 * a + (r // 8) % 2
    elif BLOCK_M % 16 == 0:
        win = (i // 16) * 4 + (i % 8) // 2
        sub = 2 * (i % 2) + (i // 8) % 2
    else:
        win = i // 4
        sub = i % 4
    return win, sub


@triton.jit
def _pool_max(acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SLABS: tl.constexpr):
    """The max of each 2x2 window's four rows of a tile (in _pool_rows' order), in window order;
    a NaN in the window wins, as in F.max_pool2d."""
    if SLABS % 2 == 0:
        # rows (a, b, c, d) of i = BLOCK_M / 2 a + 16 b + 8 c + d: the max over a and c
        t = tl.reshape(acc, (2, BLOCK_M // 32, 2, 8, BLOCK_N))
        t = tl.reduce(tl.reduce(t, 2, _max_nan), 0, _max_nan)
    elif BLOCK_M % 16 == 0:
        # rows (b, c, e, f) of i = 16 b + 8 c + 2 e + f: the max over c and f
        t = tl.reshape(acc, (BLOCK_M // 16, 2, 4, 2, BLOCK_N))
        t = tl.reduce(tl.reduce(t, 3, _max_nan), 1, _max_nan)
    else:
        t = tl.reduce(tl.reshape(acc, (BLOCK_M // 4, 4, BLOCK_N)), 1, _max_nan)
    return tl.reshape(t, (BLOCK_M // 4, BLOCK_N))


@triton.jit
def _out_pixels(m0, NB, OH, OW, M_GEMM, POOL: tl.constexpr, BLOCK_M: tl.constexpr,
                SLABS: tl.constexpr):
    """The output pixel (n, p, q) of each GEMM row m0 .. m0 + BLOCK_M - 1, and whether it
    exists. With POOL the rows enumerate 2x2 windows, four rows per window (_pool_rows), so a
    tile holds whole windows and the pooled output is a max over each window's rows."""
    if POOL:
        PHC = (OH + 1) // 2
        PWC = (OW + 1) // 2
        j, sub = _pool_rows(tl.arange(0, BLOCK_M), BLOCK_M, SLABS)
        win = m0 // 4 + j
        pw = win % PWC
        t = win // PWC
        ph = t % PHC
        n = t // PHC
        p = 2 * ph + sub // 2
        q = 2 * pw + sub % 2
        m_ok = (n < NB) & (p < OH) & (q < OW)
    else:
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q = offs_m % OW
        t = offs_m // OW
        p = t % OH
        n = t // OH
        m_ok = offs_m < M_GEMM
    return n, p, q, m_ok


@triton.jit
def _wide_rows(g0, j, W, H):
    """(n, h, c) of the cells g0 + j of an (N, H, W) grid, j < W: the first cell's divided once
    (scalars), each one after it by a carry into the next row and one into the next image."""
    cc = g0 % W + j
    r0 = g0 // W
    wrap = cc >= W
    c = cc - tl.where(wrap, W, 0)
    hh = r0 % H + wrap.to(tl.int32)
    wrap_n = hh >= H
    h = hh - tl.where(wrap_n, H, 0)
    n = r0 // H + wrap_n.to(tl.int32)
    return n, h, c


@triton.jit
def _tile_out_pixels(m0, NB, OH, OW, M_GEMM, POOL: tl.constexpr, WIDE: tl.constexpr,
                     BLOCK_M: tl.constexpr, SLABS: tl.constexpr):
    """_out_pixels of a tile's rows m0 .. m0 + BLOCK_M - 1. WIDE (the launcher's promise: the
    grid's rows, with POOL its rows of 2x2 windows, are at least as long as a tile) lets a tile
    run into the next row at most once: then only its first row's index is divided (scalars) and
    each row adds a carry to the next row and one to the next image, a few adds and compares
    instead of four divisions by the grid's sizes."""
    i = tl.arange(0, BLOCK_M)
    if WIDE:
        if POOL:
            W = (OW + 1) // 2
            H = (OH + 1) // 2
            j, sub = _pool_rows(i, BLOCK_M, SLABS)
            g0 = m0 // 4
        else:
            W = OW
            H = OH
            j = i
            g0 = m0
        n, h, c = _wide_rows(g0, j, W, H)
        if POOL:
            p = 2 * h + sub // 2
            q = 2 * c + sub % 2
            m_ok = (n < NB) & (p < OH) & (q < OW)
        else:
            p = h
            q = c
            m_ok = (m0 + i) < M_GEMM
    else:
        n, p, q, m_ok = _out_pixels(m0, NB, OH, OW, M_GEMM, POOL, BLOCK_M, SLABS)
    return n, p, q, m_ok


@triton.jit
def _patch_out_pixels(pid_m, OH, OW, BLOCK_M: tl.constexpr, TILE_W: tl.constexpr):
    """TILE_W: the output pixels of row tile pid_m as a (BLOCK_M / TILE_W) x TILE_W patch of one
    image's grid (patches row-major, images one after another; utils.m_tiles counts them) and
    whether each exists. A 3x3 window's taps then read (TILE_H + 2) x (TILE_W + 2) distinct
    input pixels a channel chunk, where a run of BLOCK_M along a row reads three rows of
    BLOCK_M + 2: with A_L1 the L2 serves about half the bytes it serves a row tile
    (utils.l1_reuse). The image is a scalar (one per tile); only the patch's origin is
    divided, a row's place in it is a shift and a mask (powers of two)."""
    TILE_H: tl.constexpr = BLOCK_M // TILE_W
    tiles_w = tl.cdiv(OW, TILE_W)
    tiles_h = tl.cdiv(OH, TILE_H)
    t = pid_m // tiles_w
    i = tl.arange(0, BLOCK_M)
    p = (t % tiles_h) * TILE_H + i // TILE_W
    q = (pid_m % tiles_w) * TILE_W + i % TILE_W
    return t // tiles_h, p, q, (p < OH) & (q < OW)


@utils.autotune(configs=utils.igemm_configs(), key=_FWD_KEY,
                 prune_configs_by={"early_config_prune": utils.prune_gemm})
@triton.jit(do_not_specialize=_FWD_NO_SPEC)
def igemm_fwd_kernel(
    a_ptr, a_sn, a_sh, a_sw, a_sc, AH, AW, CA,          # gathered operand (N, AH, AW, CA)
    a2_ptr, CA1,                                        # CAT: channels CA1.. from a2 (a's strides)
    w_ptr, w_st, w_sc, w_sj,                            # W[tap, ca, j] at tap*w_st + ca*w_sc + j*w_sj
    bias_ptr,
    out_ptr, o_sn, o_sh, o_sw, o_sc,
    pool_ptr, q_sn, q_sh, q_sw, q_sc,
    skip_ptr, k_sn, k_sh, k_sw, k_sc, SKH, SKW, SK_T, SK_L,  # SKIP: y's (SKH, SKW) crop at (SK_T, SK_L); out: the ring
    x_ptr, x_sn, x_sh, x_sw, x_sc,                      # RELU_IN: the input whose ReLU masks out
    h_w_ptr, h_sk, h_sc, h_b_ptr,                       # HEAD: the 1x1 head's W[k, c] and bias[k]
    z_ptr, z_sn, z_sh, z_sw, z_sc,                      # HEAD: its output (N, OH, OW, HEAD)
    NB, OH, OW, M_GEMM, N_GEMM, M_BUCKET, LAYOUT,       # M_BUCKET, LAYOUT: autotune key only
    CO_UP: tl.constexpr,   # UPSCATTER: the output channels (a constant: the scatter's divisions)
    KS: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, SIGN: tl.constexpr,
    BOUNDS: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr,
    SKIP: tl.constexpr, CAT: tl.constexpr,
    UPSCATTER: tl.constexpr, RELU_IN: tl.constexpr, FLAT_K: tl.constexpr, WIDE: tl.constexpr,
    HEAD: tl.constexpr, STORE_Y: tl.constexpr,   # HEAD: the head's classes (0: no head)
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    A_L1: tl.constexpr = False,   # a config's choice: A through the L1 (below)
    TILE_W: tl.constexpr = 0,     # a config's choice: 2-D pixel tiles (_patch_out_pixels)
    W_DESC: tl.constexpr = 0,     # the launcher's: W through a TMA descriptor (utils.weight_desc)
    O_DESC: tl.constexpr = False,  # the launcher's: out stored by TMA (utils.out_desc)
):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N_GEMM, BLOCK_N)
    pid_m = pid // num_n   # column tiles of one row tile run side by side: A is read once from L2
    pid_n = pid % num_n
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N_GEMM

    PHC = (OH + 1) // 2
    PWC = (OW + 1) // 2
    # the fused pool's row order (_pool_rows) follows the wgmma accumulators' rows: Triton puts
    # 4 warps along M, doubling them (up to all of the CTA's) while the tile is taller than 16
    # rows a warp (AccelerateMatmul's warpsPerTileV3); their 16-row slabs repeat POOL_SLABS times
    if _COMPILED:
        WARPS: tl.constexpr = _num_warps()
    else:
        WARPS: tl.constexpr = 4
    POOL_SLABS: tl.constexpr = BLOCK_M // (16 * (8 if WARPS >= 8 and BLOCK_M > 64 else 4))
    if TILE_W > 0 and not POOL:   # (the pool's rows run in 2x2 windows: TILE_W ignored)
        n, p, q, m_ok = _patch_out_pixels(pid_m, OH, OW, BLOCK_M, TILE_W)
    else:
        n, p, q, m_ok = _tile_out_pixels(pid_m * BLOCK_M, NB, OH, OW, M_GEMM, POOL, WIDE,
                                         BLOCK_M, POOL_SLABS)
    n64 = _offset_int(n, INT64)
    ih0 = p * STRIDE
    iw0 = q * STRIDE
    a_row = n64 * a_sn + ih0 * a_sh + iw0 * a_sw        # each row's pixel, once per tile

    if UPSCATTER:
        co = offs_n % CO_UP
    else:
        co = offs_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if HAS_BIAS:
        # the bias (fp32 under autocast, ops._autocast) starts the accumulators: its registers
        # are free again before the mainloop. Added in the epilogue, its fp32 values were live
        # beside the pooled and skip stores' (sm_90, Triton 3.8, the valid U-Net's 128x128x32 L1
        # pool tile: 134 registers, one CTA an SM; 126 this way)
        acc += tl.load(bias_ptr + co, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if FLAT_K:
        # K = (tap, channel) flattened: any channel count, a K-tile may span taps (the first
        # layer: one or three input channels, a single iteration).
        tl.static_assert(not CAT, "CAT needs whole K-tiles of one tap and one tensor")
        K_TOT = KS * KS * CA
        for k0 in range(0, K_TOT, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K_TOT
            tap = offs_k // CA
            ca = offs_k % CA
            dh = SIGN * (tap // KS - PAD)
            dw = SIGN * (tap % KS - PAD)
            ok = m_ok[:, None] & k_ok[None, :]
            if BOUNDS:
                ih = ih0[:, None] + dh[None, :]
                iw = iw0[:, None] + dw[None, :]
                ok = ok & (ih >= 0) & (ih < AH) & (iw >= 0) & (iw < AW)
            a = tl.load(a_ptr + (a_row[:, None] + (dh * a_sh + dw * a_sw + ca * a_sc)[None, :]),
                        mask=ok, other=0.0)
            b = tl.load(w_ptr + (tap * w_st + ca * w_sc)[:, None] + offs_n[None, :] * w_sj,
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = _dot(acc, a, b, DOT_F32, PRECISION)
    else:
        # CA % BLOCK_K == 0: every K-tile lies in one tap. The tap (kh, kw) and the channel
        # chunk c0 advance as scalars; a row's address is its pixel's plus the tap's shift.
        # A_L1: the A gather in 8-byte copies, which cp.async caches in the L1 (Triton copies
        # 16 bytes with .cg, past the L1), and a chunk's taps one after another: the taps of a
        # kernel row read the same input pixels one column apart, so all but the first of them
        # come from the L1, not the L2 (utils.l1_reuse has the fraction that still does).
        offs_c = tl.arange(0, BLOCK_K)
        b_cols = offs_n[None, :] * w_sj
        if BOUNDS and A_L1:
            # which taps of each row's window lie inside the input, a bit per tap, once per
            # tile from the rows and the columns inside: in the loop a shift and a test per row
            # instead of four bounds compares, the issue slots A_L1's extra copies need (the
            # plain tiles keep the compares, with which ptxas fits the capped 256x64 tile in
            # its registers)
            # (a bound pair is one unsigned compare: a negative index wraps past AH; tap
            # (kh, kw) is bit kh * KS + kw: the rows' bits spread over their KS-bit groups by
            # a multiply, the columns' repeated in each group by another, then an and)
            rows_in = tl.zeros((BLOCK_M,), dtype=tl.int32)
            cols_in = tl.zeros((BLOCK_M,), dtype=tl.int32)
            for t in tl.static_range(KS):
                ih = (ih0 + SIGN * (t - PAD)).to(tl.uint32, bitcast=True)
                iw = (iw0 + SIGN * (t - PAD)).to(tl.uint32, bitcast=True)
                rows_in = rows_in | ((ih < AH.to(tl.uint32)).to(tl.int32) << (t * KS))
                cols_in = cols_in | ((iw < AW.to(tl.uint32)).to(tl.int32) << t)
            REPEAT: tl.constexpr = ((1 << (KS * KS)) - 1) // ((1 << KS) - 1)   # 1001001b
            taps_in = (rows_in * ((1 << KS) - 1)) & (cols_in * REPEAT)
            taps_in = tl.where(m_ok, taps_in, 0)
        # CAT: A is the channel concat of two tensors of one shape and strides (the decoder's
        # skip and up-sampled map, never copied into a buffer, CA1 channels each): a K-tile is
        # BLOCK_K / 2 channels of each, at the same channel offset c0 (W's rows c0.. and
        # CA1 + c0..). Each column's base pointer is fixed for the whole loop, so the concat
        # costs nothing per K-tile (a select of the K-tile's base did: three instructions).
        C_STEP: tl.constexpr = BLOCK_K // 2 if CAT else BLOCK_K
        if CAT:
            lo = offs_c < C_STEP
            a_cols = tl.where(lo, a_ptr + offs_c * a_sc, a2_ptr + (offs_c - C_STEP) * a_sc)
            w_k = tl.where(lo, offs_c, CA1 + offs_c - C_STEP)
            c_end = CA1
        else:
            c_end = CA
        # W_DESC: the weight tile comes by TMA (sm_90) instead of a cp.async per 16 bytes: no
        # addresses or masks in the loop (columns past N read as zeros, as the masked load's).
        # 1: W[tap, ca, j] with j contiguous, a box of one tap's BLOCK_K rows; 2: W[j, tap, ca]
        # with ca contiguous (channels_last forward weights), a box of BLOCK_N rows, transposed
        # in shared memory (wgmma reads either major order).
        # (not in the A_L1 tiles: sized to 48 KiB of shared memory so that the L1 keeps the
        # rest, utils.l1_left; the TMA pipeline's barriers would take them past it)
        tl.static_assert(W_DESC == 0 or not CAT, "CAT reads W's rows in two halves")
        W_TMA: tl.constexpr = 0 if A_L1 else W_DESC
        if W_TMA == 1:
            w_desc = tl.make_tensor_descriptor(w_ptr, shape=[KS * KS, CA, N_GEMM],
                                               strides=[w_st, w_sc, 1],
                                               block_shape=[1, BLOCK_K, BLOCK_N])
        elif W_TMA == 2:
            w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N_GEMM, KS * KS, CA],
                                               strides=[w_sj, w_st, 1],
                                               block_shape=[BLOCK_N, 1, BLOCK_K])
        kh = 0
        kw = 0
        c0 = 0
        for _ in range(0, KS * KS * (CA // BLOCK_K)):
            dh = SIGN * (kh - PAD)
            dw = SIGN * (kw - PAD)
            ca = c0 + offs_c
            if A_L1:
                ca = tl.max_contiguous(ca, 64 // a_ptr.dtype.element_ty.primitive_bitwidth)
            if BOUNDS and A_L1:
                ok = ((taps_in >> (kh * KS + kw)) & 1) != 0
            elif BOUNDS:
                ih = ih0 + dh
                iw = iw0 + dw
                ok = m_ok & (ih >= 0) & (ih < AH) & (iw >= 0) & (iw < AW)
            else:  # the window never leaves the input (valid forward, 1x1, strided 2x2)
                ok = m_ok
            if CAT:
                a_at = a_cols[None, :] + (a_row + (dh * a_sh + dw * a_sw) + c0 * a_sc)[:, None]
                if A_L1:
                    a_at = tl.max_contiguous(a_at, [1, 64 // a_ptr.dtype.element_ty.primitive_bitwidth])
                a = tl.load(a_at, mask=ok[:, None], other=0.0)
                b = tl.load(w_ptr + ((kh * KS + kw) * w_st + (c0 + w_k) * w_sc)[:, None] + b_cols,
                            mask=n_ok[None, :], other=0.0)
            else:
                a = tl.load(a_ptr + ((a_row + (dh * a_sh + dw * a_sw))[:, None] + ca[None, :] * a_sc),
                            mask=ok[:, None], other=0.0)
                if W_TMA == 1:
                    b = w_desc.load([kh * KS + kw, c0, pid_n * BLOCK_N]).reshape(BLOCK_K, BLOCK_N)
                elif W_TMA == 2:
                    b = tl.trans(w_desc.load([pid_n * BLOCK_N, kh * KS + kw, c0])
                                 .reshape(BLOCK_N, BLOCK_K))
                else:
                    b = tl.load(w_ptr + ((kh * KS + kw) * w_st + ca * w_sc)[:, None] + b_cols,
                                mask=n_ok[None, :], other=0.0)
            acc = _dot(acc, a, b, DOT_F32, PRECISION)
            if A_L1:   # taps inner
                kw += 1
                if kw == KS:
                    kw = 0
                    kh += 1
                    if kh == KS:
                        kh = 0
                        c0 += C_STEP
            else:      # channel chunks inner
                c0 += C_STEP
                if c0 == c_end:
                    c0 = 0
                    kw += 1
                    if kw == KS:
                        kw = 0
                        kh += 1

    # ---- epilogue: ReLU, the input's ReLU mask, store (plain or 2x2 scatter), pooled store
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN (F.relu)
    if RELU_IN:
        # dgrad of a layer whose input is a ReLU output: dx * (x > 0), as threshold_backward
        # (zero where x <= 0; a NaN x passes the gradient)
        xin = tl.load(x_ptr + ((n64 * x_sn + p * x_sh + q * x_sw)[:, None]
                               + offs_n[None, :] * x_sc),
                      mask=m_ok[:, None] & n_ok[None, :], other=1.0)
        acc = tl.where(xin <= 0, 0.0, acc)
    if POOL:
        # max commutes with the (monotonic) rounding to the storage dtype: pooled == pool(y)
        # one reduction whose max lets a NaN in the window win, as in F.max_pool2d. (First: with
        # the stores of y after it, Triton 3.6 compiles the 128x256 and 256x128 tiles without
        # the 16-64 B of spills it had with this last.)
        pooled = _pool_max(acc, BLOCK_M, BLOCK_N, POOL_SLABS)
        if WIDE:   # (the tile's windows span at most two rows of windows: carries)
            nq, ph2, pw2 = _wide_rows(pid_m * (BLOCK_M // 4), tl.arange(0, BLOCK_M // 4), PWC,
                                      PHC)
        else:
            offs_w = pid_m * (BLOCK_M // 4) + tl.arange(0, BLOCK_M // 4)
            pw2 = offs_w % PWC
            t2 = offs_w // PWC
            ph2 = t2 % PHC
            nq = t2 // PHC
        w_ok = (nq < NB) & (ph2 < OH // 2) & (pw2 < OW // 2)
        prow = _offset_int(nq, INT64) * q_sn + ph2 * q_sh + pw2 * q_sw
        tl.store(pool_ptr + (prow[:, None] + offs_n[None, :] * q_sc),
                 pooled.to(pool_ptr.dtype.element_ty), mask=w_ok[:, None] & n_ok[None, :])
    if UPSCATTER:
        i = offs_n // (2 * CO_UP)
        j = (offs_n // CO_UP) % 2
        row = n64 * o_sn + (2 * p) * o_sh + (2 * q) * o_sw
        col = i * o_sh + j * o_sw + co * o_sc
    else:
        row = n64 * o_sn + p * o_sh + q * o_sw
        col = offs_n * o_sc
    if SKIP:
        # the valid U-Net's encoder: y stored once, its center crop into the skip the decoder
        # concatenates (whose gradient then has the crop's size: no zero-padded full-size map),
        # every other pixel into the ring around it (out, crop_concat.skip_or_ring), which with
        # the skip is the y the backward reads (not stored without STORE_Y: inference); one
        # store, each row's pointer picked (a store each took more registers: the encoder's
        # 128x128x32 L1 tile went past the 128 at which two CTAs share an SM)
        at, in_crop = skip_or_ring(skip_ptr, k_sn, k_sh, k_sw, k_sc, out_ptr, o_sn, o_sw, o_sc,
                                   n64, p, q, offs_n, OH, OW, SK_T, SK_L, SKH, SKW)
        if STORE_Y:
            y_ok = m_ok
        else:
            y_ok = m_ok & in_crop
        tl.store(at, acc.to(skip_ptr.dtype.element_ty), mask=y_ok[:, None] & n_ok[None, :])
    elif STORE_Y and O_DESC and not A_L1 and TILE_W == 0:
        # the tile's rows are consecutive pixels of a dense grid (no pool order, no scatter, no
        # 2-D patch): one TMA store of the tile, clipped at M_GEMM and N_GEMM (out may be a
        # channel slice of a wider buffer: its columns past N_GEMM are never touched). (Not in
        # the A_L1 tiles, for their 48 KiB, above.)
        tl.static_assert(not (POOL or UPSCATTER), "O_DESC stores rows in pixel order")
        o_desc = tl.make_tensor_descriptor(out_ptr, shape=[M_GEMM, N_GEMM], strides=[o_sw, 1],
                                           block_shape=[BLOCK_M, BLOCK_N])
        o_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(out_ptr.dtype.element_ty))
    elif STORE_Y:   # (not under HEAD without gradients: the head's output is all that is read)
        tl.store(out_ptr + (row[:, None] + col[None, :]), acc.to(out_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])
    if HEAD > 0:
        # the 1x1 head from the same registers (the U-Net's last conv and its head): the tile
        # holds every output channel of its pixels (one column tile, prune_gemm), so the
        # classes are one more small GEMM, y (as stored: rounded to its dtype) times the head's
        # weight padded to _HEAD_N classes, on the tensor cores as the unfused head's; y is never
        # read back from memory. Each class is taken out of z as a row vector (a select and a
        # sum), whose rows the pixel offsets of the tile already have: storing z's tile as
        # such made Triton recompute the pixels in z's layout. (sm_90 SASS, 128x64 tile: the
        # epilogue issues 177 instructions a warp more than without the head; row sums of
        # y * W[k, :] on the FMA units issued 430 more, the 2-D store 594.)
        tl.static_assert(not (POOL or SKIP or UPSCATTER or RELU_IN or CAT),
                         "HEAD follows a plain conv3x3_relu")
        cls = tl.arange(0, _HEAD_N)
        c_ok = cls < HEAD
        w_h = tl.load(h_w_ptr + (cls[None, :] * h_sk + offs_n[:, None] * h_sc),
                      mask=n_ok[:, None] & c_ok[None, :], other=0.0)
        z = _dot(tl.zeros((BLOCK_M, _HEAD_N), dtype=tl.float32),
                 acc.to(h_w_ptr.dtype.element_ty), w_h, DOT_F32, PRECISION)
        z_row = n64 * z_sn + p * z_sh + q * z_sw
        for k in tl.static_range(HEAD):
            z_k = tl.sum(tl.where(cls[None, :] == k, z, 0.0), axis=1)
            z_k += tl.load(h_b_ptr + k).to(tl.float32)
            tl.store(z_ptr + (z_row + k * z_sc), z_k.to(z_ptr.dtype.element_ty), mask=m_ok)


# Persistent, whole-K-in-one-tile variant for the convolutions whose K (taps x channels) fits one
# tile and whose N is narrow: the first layer (K = 9 or 27), the 1x1 head (K = 64, N = classes)
# and the head's dgrad (K = classes). They are memory-bound; launched as igemm_fwd_kernel they
# are thousands of one-iteration tiles, each paying its pipeline fill. Here each CTA loads the
# weight once and walks its share of the pixel tiles, so the next tile's loads overlap this one's
# dot and store (the loop is what Triton pipelines).
_ONEK_KEY = ["CA", "N_GEMM", "M_BUCKET", "LAYOUT", "KS", "PAD", "SIGN", "RELU", "RELU_IN",
             "HAS_BIAS", "BLOCK_N", "BLOCK_K", "PRECISION"]
_ONEK_NO_SPEC = ["AH", "AW", "NB", "OH", "OW", "M_GEMM", "M_BUCKET", "LAYOUT"]


@triton.jit
def _tile_pixels(ptr, sn, sh, sw, jr, jq, ci, ni, n0, p0, q0, OH, OW):
    """A one-K-tile GEMM's pixel tile in one tensor, as (pointer to the tile's first pixel (n0, p0,
    q0), each pixel's offset from it: jr rows and jq columns plus its two carries, ci past the
    row's end, ni past the image's). The caller adds its column offsets to the offsets before the
    pointer (fewer 64-bit adds). The carries multiply, not select: Triton keeps the strides'
    divisibility through a product, so the loads and stores stay 16-byte vectors."""
    base = ptr + (n0 * sn + p0 * sh + q0 * sw)
    return base, jr * sh + jq * sw + ci * (sh - OW * sw) + ni * (sn - OH * sh)


@utils.autotune(configs=utils.onek_configs(), key=_ONEK_KEY,
                 prune_configs_by={"early_config_prune": utils.prune_onek})
@triton.jit(do_not_specialize=_ONEK_NO_SPEC)
def igemm_onek_kernel(
    a_ptr, a_sn, a_sh, a_sw, a_sc, AH, AW, CA,
    w_ptr, w_st, w_sc, w_sj,
    bias_ptr,
    out_ptr, o_sn, o_sh, o_sw, o_sc,
    x_ptr, x_sn, x_sh, x_sw, x_sc,                      # RELU_IN: the input whose ReLU masks out
    NB, OH, OW, M_GEMM, N_GEMM, M_BUCKET, LAYOUT,       # M_BUCKET, LAYOUT: autotune key only
    KS: tl.constexpr, PAD: tl.constexpr, SIGN: tl.constexpr, BOUNDS: tl.constexpr,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, RELU_IN: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out = epilogue(A_gathered @ W) as igemm_fwd_kernel (stride 1, no pool, no scatter) with the
    whole K = KS*KS*CA <= BLOCK_K and N_GEMM <= BLOCK_N in one tile, and images of at least
    BLOCK_M pixels (so a tile's rows run into at most the next image).

    Tiles are BLOCK_M consecutive pixels. A pixel's column and row within its tile are divided out
    once per CTA; per tile only the tile's first pixel is divided out (scalars), and each pixel
    adds two carries: its column ran past the row's end, its row past the image's."""
    # once per CTA: the K columns' (tap, channel) offsets, the weight tile, the bias
    offs_k = tl.arange(0, BLOCK_K)
    if KS == 1:
        k_ok = offs_k < CA
        a_col = offs_k * a_sc
        w_off = offs_k * w_sc
        dh = 0
        dw = 0
    else:
        k_ok = offs_k < KS * KS * CA
        tap = offs_k // CA
        dh = SIGN * (tap // KS - PAD)
        dw = SIGN * (tap % KS - PAD)
        a_col = dh * a_sh + dw * a_sw + (offs_k % CA) * a_sc
        w_off = tap * w_st + (offs_k % CA) * w_sc
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N_GEMM
    b = tl.load(w_ptr + w_off[:, None] + offs_n[None, :] * w_sj,
                mask=k_ok[:, None] & n_ok[None, :], other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    # pixel j of a tile: jr rows and jq columns after the tile's first pixel, before carries
    j = tl.arange(0, BLOCK_M)
    jr = j // OW
    jq = j % OW
    num_tiles = tl.cdiv(M_GEMM, BLOCK_M)
    for t in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        m0 = t * BLOCK_M
        q0 = m0 % OW
        r0 = m0 // OW
        p0 = r0 % OH
        n0 = (r0 // OH).to(tl.int64)
        cq = jq >= OW - q0                       # column carry: the pixel is on the next row
        rr = jr + cq.to(tl.int32)
        cn = rr >= OH - p0                       # row carry: the pixel is in the next image
        ci = cq.to(tl.int32)
        ni = cn.to(tl.int32)
        m_ok = j < M_GEMM - m0
        ok = m_ok[:, None] & k_ok[None, :]
        if BOUNDS:
            p = p0 + rr - tl.where(cn, OH, 0)
            q = q0 + jq - tl.where(cq, OW, 0)
            # one unsigned compare per side: a negative coordinate wraps past the limit
            ih = (p[:, None] + dh[None, :]).to(tl.uint32)
            iw = (q[:, None] + dw[None, :]).to(tl.uint32)
            ok = ok & (ih < AH) & (iw < AW)
        a_base, a_pix = _tile_pixels(a_ptr, a_sn, a_sh, a_sw, jr, jq, ci, ni, n0, p0, q0, OH, OW)
        a = tl.load(a_base + (a_pix[:, None] + a_col[None, :]), mask=ok, other=0.0)
        acc = _dot(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), a, b, DOT_F32, PRECISION)
        if HAS_BIAS:
            acc = acc + bias[None, :]
        if RELU:
            acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
        o_ok = m_ok[:, None] & n_ok[None, :]
        if RELU_IN:  # dx * (x > 0) as threshold_backward (a NaN x passes the gradient)
            x_base, x_pix = _tile_pixels(x_ptr, x_sn, x_sh, x_sw, jr, jq, ci, ni, n0, p0, q0,
                                         OH, OW)
            xin = tl.load(x_base + (x_pix[:, None] + offs_n[None, :] * x_sc), mask=o_ok,
                          other=1.0)
            acc = tl.where(xin <= 0, 0.0, acc)
        o_base, o_pix = _tile_pixels(out_ptr, o_sn, o_sh, o_sw, jr, jq, ci, ni, n0, p0, q0, OH,
                                     OW)
        tl.store(o_base + (o_pix[:, None] + offs_n[None, :] * o_sc),
                 acc.to(out_ptr.dtype.element_ty), mask=o_ok)


# The autotuner itself, for its configs (tests and tools wrap the module's name in spies).
_FWD_TUNER = igemm_fwd_kernel


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _wgrad_loop(
    a_ptr, a_sn, a_sh, a_sw, AH, AW,
    b_ptr, b_sn, b_sh, b_sw, BH, BW,
    a_col, b_col, a_dh, a_dw, b_dh, b_dw, m_ok, n_ok, v_lo, v_hi,
    b_d1, b_dh1, b_dw1, n_ok1, b_d2, b_dh2, b_dw2, n_ok2, b2_ptr,
    NB, PH, PW, QB, RPAD,
    STRIDE: tl.constexpr, SHIFT_A: tl.constexpr, BOUNDS_A: tl.constexpr,
    BOUNDS_B: tl.constexpr, DBIAS: tl.constexpr, SUB_N: tl.constexpr, ROW_SUBS: tl.constexpr,
    PAIR: tl.constexpr,
    INT64: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The pixel loop of one wgrad tile: acc (BLOCK_M, BLOCK_N) and, with DBIAS, the row sums of
    A (in column 0 of a (BLOCK_M, 16) product with ones). m_ok / n_ok: the loads' row and column
    masks, (1, BLOCK) or True. With SUB_N == 3 the tile has two more column sub-tiles (acc1,
    acc2) whose B columns lie b_d1 / b_d2 elements on (a scalar: another tap of the same
    channels), at shifts (b_dh1, b_dw1) / (b_dh2, b_dw2), masked by n_ok1 / n_ok2; they share
    the A tile, so a K step loads A once for three taps. With PAIR (SUB_N == 2) acc1 is the
    same columns of the concat's second half, at the same offsets from b2_ptr.

    The pixels are taken in K-tiles of one shape: QB columns (a band of the pixel grid's columns)
    by BLOCK_K // QB consecutive rows of the batch's NB*PH rows (a tile may run from one image into
    the next), bands one after the other, each band's rows padded to RPAD. So a pixel's place in
    the tile (row dr, column dc) is fixed: its offset within the tile is computed once, and per
    K-tile only scalars advance, while each pixel picks one of two precomputed offsets (whether
    its row ran into the next image). Pixels past the grid's last row or column are masked."""
    R = BLOCK_K // QB
    j = tl.arange(0, BLOCK_K)
    dr = j // QB
    dc = j % QB
    qn = dr // PH                   # images the tile's rows span before this pixel's (0 unless PH < R)
    rh = dr % PH
    RQ = R // PH
    RR = R % PH
    ROWS = NB * PH
    # the first K-tile's band, row, and that row's (image, row in image)
    band = v_lo // (RPAD * QB)
    row0 = (v_lo % (RPAD * QB)) // QB
    n0 = row0 // PH
    ph0 = row0 % PH
    if INT64:
        qn = qn.to(tl.int64)
    # the shifted operand reads pixel (S*ph + dh, S*pw + dw), the other (ph, pw)
    if SHIFT_A:
        SA = STRIDE
        SB = 1
    else:
        SA = 1
        SB = STRIDE
    # each operand's pixel offsets within the tile, without and with the run into the next image
    a_in = (qn * a_sn + rh * (SA * a_sh) + dc * (SA * a_sw))[:, None] + a_col
    b_in = (qn * b_sn + rh * (SB * b_sh) + dc * (SB * b_sw))[:, None] + b_col
    a_wrap = a_in + (a_sn - PH * (SA * a_sh))
    b_wrap = b_in + (b_sn - PH * (SB * b_sh))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db = tl.zeros((BLOCK_M, 16), dtype=tl.float32)
    ones = tl.full((BLOCK_K, 16), 1.0, tl.float32).to(a_ptr.dtype.element_ty)
    for v0 in range(v_lo, v_hi, BLOCK_K):
        if INT64:
            n64 = n0.to(tl.int64)
        else:  # every offset of both tensors fits 31 bits: half the address arithmetic
            n64 = n0
        pw0 = band * QB
        a_base = a_ptr + (n64 * a_sn + ph0 * (SA * a_sh) + pw0 * (SA * a_sw))
        b_pix = n64 * b_sn + ph0 * (SB * b_sh) + pw0 * (SB * b_sw)
        b_base = b_ptr + b_pix
        wrap = rh >= PH - ph0                                  # this pixel's row is in image n0+1+qn
        pix_ok = (dr < ROWS - row0) & (dc < PW - pw0)          # inside the grid
        wrap2 = wrap[:, None]
        a_ok = pix_ok[:, None] & m_ok
        b_ok = pix_ok[:, None] & n_ok
        if BOUNDS_A or BOUNDS_B:
            ph = ph0 + rh - PH * wrap.to(tl.int32)
            pw = pw0 + dc
        # 0 <= i < n as one unsigned compare (a negative i wraps to a huge one)
        if BOUNDS_A:
            ih = ((ph * SA)[:, None] + a_dh).to(tl.uint32, bitcast=True)
            iw = ((pw * SA)[:, None] + a_dw).to(tl.uint32, bitcast=True)
            a_ok = a_ok & (ih < AH) & (iw < AW)
        if SUB_N == 3:
            b_ok1 = pix_ok[:, None] & n_ok1
            b_ok2 = pix_ok[:, None] & n_ok2
        if BOUNDS_B and ROW_SUBS:
            # the sub-tiles are one kernel row's taps: one row test, columns one and two on
            row_in = ((ph * SB)[:, None] + b_dh).to(tl.uint32, bitcast=True) < BH
            iw = (pw * SB)[:, None] + b_dw
            b_ok = b_ok & row_in & (iw.to(tl.uint32, bitcast=True) < BW)
            b_ok1 = b_ok1 & row_in & ((iw + 1).to(tl.uint32, bitcast=True) < BW)
            b_ok2 = b_ok2 & row_in & ((iw + 2).to(tl.uint32, bitcast=True) < BW)
        elif BOUNDS_B:
            ih = ((ph * SB)[:, None] + b_dh).to(tl.uint32, bitcast=True)
            iw = ((pw * SB)[:, None] + b_dw).to(tl.uint32, bitcast=True)
            b_ok = b_ok & (ih < BH) & (iw < BW)
            if SUB_N == 3:
                ih = ((ph * SB)[:, None] + b_dh1).to(tl.uint32, bitcast=True)
                iw = ((pw * SB)[:, None] + b_dw1).to(tl.uint32, bitcast=True)
                b_ok1 = b_ok1 & (ih < BH) & (iw < BW)
                ih = ((ph * SB)[:, None] + b_dh2).to(tl.uint32, bitcast=True)
                iw = ((pw * SB)[:, None] + b_dw2).to(tl.uint32, bitcast=True)
                b_ok2 = b_ok2 & (ih < BH) & (iw < BW)
        a = tl.load(a_base + tl.where(wrap2, a_wrap, a_in), mask=a_ok, other=0.0)   # (BK, BM)
        b_off = tl.where(wrap2, b_wrap, b_in)
        b = tl.load(b_base + b_off, mask=b_ok, other=0.0)   # (BK, BN)
        at = tl.trans(a)
        acc = _dot(acc, at, b, DOT_F32, PRECISION)
        if PAIR:   # the second half's sub-tile: the same pixels and channels there
            b1 = tl.load(b2_ptr + b_pix + b_off, mask=b_ok, other=0.0)
            acc1 = _dot(acc1, at, b1, DOT_F32, PRECISION)
        if SUB_N == 3:
            b1 = tl.load(b_base + b_d1 + b_off, mask=b_ok1, other=0.0)
            acc1 = _dot(acc1, at, b1, DOT_F32, PRECISION)
            b2 = tl.load(b_base + b_d2 + b_off, mask=b_ok2, other=0.0)
            acc2 = _dot(acc2, at, b2, DOT_F32, PRECISION)
        if DBIAS:
            db = _dot(db, at, ones, DOT_F32, PRECISION)
        # the next K-tile: R rows on, or the next band's first row
        row0 += R
        ph0 += RR
        carry = ph0 >= PH
        ph0 = tl.where(carry, ph0 - PH, ph0)
        n0 = n0 + RQ + carry.to(tl.int32)
        next_band = row0 >= RPAD
        band = tl.where(next_band, band + 1, band)
        row0 = tl.where(next_band, 0, row0)
        n0 = tl.where(next_band, 0, n0)
        ph0 = tl.where(next_band, 0, ph0)
    return acc, acc1, acc2, db


@triton.jit
def _sub_tile(n0, n_first, CB, KS: tl.constexpr, PAD: tl.constexpr, b_sh, b_sw, b_sc, N_GEMM,
              BLOCK_N: tl.constexpr):
    """A column sub-tile starting at column n0 of B's (tap, channel) columns: its tap's shift
    (dh, dw), its B offset from the sub-tile at n_first (a scalar), its column mask (1, BN)."""
    tap = n0 // CB
    tap0 = n_first // CB
    dh = tap // KS - PAD
    dw = tap % KS - PAD
    # (the channel step is a multiple of the sub-tile: Triton keeps the 16-byte copies)
    d = ((dh - (tap0 // KS - PAD)) * b_sh + (dw - (tap0 % KS - PAD)) * b_sw
         + tl.multiple_of(n0 % CB - n_first % CB, BLOCK_N) * b_sc)
    return dh, dw, d, ((n0 + tl.arange(0, BLOCK_N)) < N_GEMM)[None, :]


@utils.autotune(configs=utils.wgrad_configs(), key=_WGRAD_KEY,
                 prune_configs_by={"early_config_prune": utils.prune_gemm})
@triton.jit(do_not_specialize=_WGRAD_NO_SPEC)
def igemm_wgrad_kernel(
    a_ptr, a_sn, a_sh, a_sw, a_sc, AH, AW, CA,          # rows: A's channels (per tap if SHIFT_A)
    b_ptr, b_sn, b_sh, b_sw, b_sc, BH, BW, CB,          # columns: B's channels (per tap if not)
    b2_ptr, CB1,                                        # CAT: channels CB1.. from b2 (b's strides)
    r_ptr, db_ptr,                                      # fp32 partials (SPLIT, M, N), (SPLIT, M)
    NB, PH, PW, QB, RPAD, K_TOT, CHUNK, M_GEMM, N_GEMM, K_BUCKET, LAYOUT,  # (key only: last 2)
    KS: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, SHIFT_A: tl.constexpr,
    FLAT_A: tl.constexpr, FLAT_B: tl.constexpr, SUB_N: tl.constexpr, DBIAS: tl.constexpr,
    INT64: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr, CAT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    B_L1: tl.constexpr = False,   # a config's choice: B through the L1 (below)
):
    # SUB_N: column sub-tiles of BLOCK_N per tile (1, or 3 with B shifted and one tap per
    # sub-tile: the 64- and 128-channel layers' 9*C columns in tiles of three taps, no padding)
    pid = tl.program_id(0)
    split = tl.program_id(1)
    num_n = tl.cdiv(N_GEMM, SUB_N * BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    # B_L1's tiles (ROW_SUBS) are one kernel row's three taps, each sub-tile the same BLOCK_N of
    # the tap's CB channels (prune_gemm: CB a multiple of BLOCK_N): tile (row, channel slice),
    # sub-tiles CB columns apart, reading the same pixels a column apart; 9 x CB columns are
    # whole tiles, so no column masks, and one row test serves the three (_wgrad_loop)
    ROW_SUBS: tl.constexpr = B_L1 and SUB_N == 3 and not SHIFT_A and not FLAT_B
    # PAIR (CAT, SUB_N == 2): a tile is one tap's BLOCK_N of the first half's channels and the
    # same of the second's (CB1 columns on), sharing the A tile: the 256 columns of a 128x256
    # tile where a half has fewer than 256 channels (the halves are alike: CB == 2 * CB1)
    PAIR: tl.constexpr = CAT and SUB_N == 2
    if ROW_SUBS:
        slices = CB // BLOCK_N
        n_lo = (pid_n // slices) * (3 * CB) + (pid_n % slices) * BLOCK_N
    elif PAIR:
        slices = CB1 // BLOCK_N
        n_lo = (pid_n // slices) * CB + (pid_n % slices) * BLOCK_N
    else:
        n_lo = pid_n * (SUB_N * BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = n_lo + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M_GEMM
    n_ok = offs_n < N_GEMM
    # Each operand's column offsets within a pixel, once per tile. The shifted operand's columns
    # are (tap, channel): in one tap per tile (a scalar shift, channels contiguous: 16-byte
    # copies), or a shift per column (FLAT) when its channels do not fill the widest tile; then
    # a tile spans taps, still in 16-byte copies where the channels are a multiple of 8 (Triton
    # sees that from the specialized channel count).
    # The loop's row and column masks ((1, BLOCK) or a constant True): a FLAT operand's rows or
    # columns past the GEMM read the last tap's pixels instead (valid addresses, results never
    # stored), so its loads carry no such mask (a select per 16-byte copy less).
    m_ld = m_ok[None, :]
    n_ld = n_ok[None, :]
    if SHIFT_A:
        if FLAT_A:
            tap = tl.minimum(offs_m // CA, KS * KS - 1)
            m_ld = True
            a_dh = (tap // KS - PAD)[None, :]
            a_dw = (tap % KS - PAD)[None, :]
            ca = offs_m % CA
        else:
            tap = (pid_m * BLOCK_M) // CA
            a_dh = tap // KS - PAD
            a_dw = tap % KS - PAD
            # (a multiple of the tile: tells Triton the copy is in 16-byte vectors)
            ca = tl.multiple_of((pid_m * BLOCK_M) % CA, BLOCK_M) + tl.arange(0, BLOCK_M)
        a_col = (a_dh * a_sh + a_dw * a_sw + ca * a_sc)
        if not FLAT_A:
            a_col = a_col[None, :]
        b_col = (offs_n * b_sc)[None, :]
        b_dh = 0
        b_dw = 0
    else:
        if FLAT_B:
            tap = tl.minimum(offs_n // CB, KS * KS - 1)
            n_ld = True
            b_dh = (tap // KS - PAD)[None, :]
            b_dw = (tap % KS - PAD)[None, :]
            cb = offs_n % CB
        else:
            tap = n_lo // CB
            b_dh = tap // KS - PAD
            b_dw = tap % KS - PAD
            cb = tl.multiple_of(n_lo % CB, BLOCK_N) + tl.arange(0, BLOCK_N)
        b_col = (b_dh * b_sh + b_dw * b_sw + cb * b_sc)
        if not FLAT_B:
            b_col = b_col[None, :]
            if B_L1:
                # B in 8-byte copies, which cp.async caches in the L1: with three sub-tiles
                # (SUB_N = 3, the taps of one kernel row) the second and third read the first's
                # pixels one and two columns on (utils.l1_shift_reuse)
                b_col = tl.max_contiguous(b_col, [1, 64 // b_ptr.dtype.element_ty.primitive_bitwidth])
        a_col = (offs_m * a_sc)[None, :]
        a_dh = 0
        a_dw = 0
    # CAT: B is the channel concat of two tensors of one shape and strides; a tile's columns
    # (all its sub-tiles' too: ROW_SUBS only) lie in one of them (prune_gemm: CB1 % BLOCK_N == 0),
    # so the concat costs one select of B's base per tile
    if CAT:
        tl.static_assert(not SHIFT_A and not FLAT_B and (SUB_N == 1 or ROW_SUBS or PAIR),
                         "CAT needs a tile's columns in one tap and one tensor")
        if not PAIR:
            b_ptr = tl.where(n_lo % CB >= CB1, b2_ptr - CB1 * b_sc, b_ptr)
    # the other sub-tiles (SUB_N == 3): their tap's shift, and their offset from the first's
    if ROW_SUBS:
        n_ld = True
        b_dh1, b_dw1, b_d1, n_ld1 = b_dh, b_dw + 1, b_sw, True
        b_dh2, b_dw2, b_d2, n_ld2 = b_dh, b_dw + 2, 2 * b_sw, True
    elif SUB_N == 3:
        b_dh1, b_dw1, b_d1, n_ld1 = _sub_tile(n_lo + BLOCK_N, n_lo, CB, KS, PAD, b_sh, b_sw,
                                              b_sc, N_GEMM, BLOCK_N)
        b_dh2, b_dw2, b_d2, n_ld2 = _sub_tile(n_lo + 2 * BLOCK_N, n_lo, CB, KS, PAD, b_sh, b_sw,
                                              b_sc, N_GEMM, BLOCK_N)
    else:   # (PAIR's second sub-tile is the first's offsets from b2: _wgrad_loop)
        b_dh1, b_dw1, b_d1, n_ld1 = 0, 0, 0, True
        b_dh2, b_dw2, b_d2, n_ld2 = 0, 0, 0, True
    if PAIR:   # 9 x CB columns are whole pair tiles: no column masks
        n_ld = True

    # this split's K-tiles (_wgrad_loop: K runs over bands of QB columns, RPAD rows each)
    k_lo = split * CHUNK
    k_hi = tl.minimum(k_lo + CHUNK, K_TOT)
    # the bias gradient (row sums of A) from the tiles of the first column only
    if DBIAS and pid_n == 0:
        acc, acc1, acc2, db = _wgrad_loop(a_ptr, a_sn, a_sh, a_sw, AH, AW,
                              b_ptr, b_sn, b_sh, b_sw, BH, BW,
                              a_col, b_col, a_dh, a_dw, b_dh, b_dw, m_ld, n_ld, k_lo, k_hi,
                              b_d1, b_dh1, b_dw1, n_ld1, b_d2, b_dh2, b_dw2, n_ld2, b2_ptr,
                              NB, PH, PW, QB, RPAD, STRIDE, SHIFT_A, SHIFT_A and PAD > 0,
                              (not SHIFT_A) and PAD > 0, True, SUB_N, ROW_SUBS, PAIR, INT64,
                              DOT_F32,
                              PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
        dbm = tl.sum(tl.where(tl.arange(0, 16)[None, :] == 0, db, 0.0), axis=1)
        tl.store(db_ptr + split * M_GEMM + offs_m, dbm, mask=m_ok)
    else:
        acc, acc1, acc2, db = _wgrad_loop(a_ptr, a_sn, a_sh, a_sw, AH, AW,
                              b_ptr, b_sn, b_sh, b_sw, BH, BW,
                              a_col, b_col, a_dh, a_dw, b_dh, b_dw, m_ld, n_ld, k_lo, k_hi,
                              b_d1, b_dh1, b_dw1, n_ld1, b_d2, b_dh2, b_dw2, n_ld2, b2_ptr,
                              NB, PH, PW, QB, RPAD, STRIDE, SHIFT_A, SHIFT_A and PAD > 0,
                              (not SHIFT_A) and PAD > 0, False, SUB_N, ROW_SUBS, PAIR, INT64,
                              DOT_F32,
                              PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    base = split.to(tl.int64) * M_GEMM * N_GEMM
    r_tile = r_ptr + base + offs_m[:, None] * N_GEMM + offs_n[None, :]
    tl.store(r_tile, acc, mask=m_ok[:, None] & n_ok[None, :])
    if ROW_SUBS:
        tl.store(r_tile + CB, acc1, mask=m_ok[:, None])
        tl.store(r_tile + 2 * CB, acc2, mask=m_ok[:, None])
    elif PAIR:
        tl.store(r_tile + CB1, acc1, mask=m_ok[:, None])
    elif SUB_N == 3:
        tl.store(r_tile + BLOCK_N, acc1, mask=m_ok[:, None] & n_ld1)
        tl.store(r_tile + 2 * BLOCK_N, acc2, mask=m_ok[:, None] & n_ld2)


# ---------------------------------------------------------------- host launchers
def cat_ok(a: torch.Tensor, a2: torch.Tensor) -> bool:
    """Whether the kernels can read cat([a, a2], 1) in place (CAT): one shape and strides (the
    same pixel offsets serve both) and channel counts in whole K-tiles of 64."""
    return (a.shape == a2.shape and a.stride() == a2.stride() and a.dtype == a2.dtype
            and a.device == a2.device and a.shape[1] % 64 == 0)


def _cat_int64(b: torch.Tensor, channels: int) -> bool:
    """needs_int64 for `b` read as if it had `channels` channels (CAT's weight-gradient tiles in
    the second half address it from b2 less the first half's channels)."""
    return utils.max_offset((b.shape[0], channels) + tuple(b.shape[2:]), b.stride()) >= 2**31 - 1


def igemm_fwd(a: torch.Tensor, w: tuple, out: torch.Tensor, *, grid_hw, ks: int, stride: int,
              pad: int, sign: int, bias=None, relu=False, relu_in=None, pool=None,
              skip=None, up_channels: int = 0, a2=None, head=None, store_y: bool = True) -> None:
    """Launch `igemm_fwd_kernel`. Tensors are logical NCHW (any strides); `grid_hw` is the pixel
    grid of the GEMM's rows; `w` = (tensor, tap stride, channel stride, column stride, N) reads
    the weight as W[tap, ca, j]; `relu_in`: the tensor (shaped like `out`) whose ReLU masks it;
    `skip`: gets the output's center crop of its size (with `pool`), and `out` is then the ring
    around it (crop_concat.empty_ring; not written with `store_y=False`); `a2`: A is
    cat([a, a2], 1), read in place (`cat_ok(a, a2)` must hold); `head` = (weight (K, N, 1, 1),
    bias or None, z): z also gets the 1x1 head over out (`utils.head_fits(N, K, dtype)`),
    and with `store_y=False` only z is written."""
    nb, ca, ah, aw = a.shape
    ca1 = ca
    if a2 is not None:
        assert cat_ok(a, a2), "igemm_fwd: a2 must be shaped and strided like a"
        ca = ca1 + a2.shape[1]
    oh, ow = grid_hw
    w_t, w_st, w_sc, w_sj, n_gemm = w
    if (stride == 1 and pool is None and up_channels == 0 and a2 is None and head is None
            and utils.use_onek(ks * ks * ca, n_gemm, oh * ow, a, out,
                               *(() if relu_in is None else (relu_in,)))):
        return _igemm_onek(a, w, out, grid_hw=grid_hw, ks=ks, pad=pad, sign=sign, bias=bias,
                           relu=relu, relu_in=relu_in)
    if pool is not None:
        m_gemm = nb * ((oh + 1) // 2) * ((ow + 1) // 2) * 4
    else:
        m_gemm = nb * oh * ow
    po = pool if pool is not None else out
    sk = skip if skip is not None else out
    sk_t, sk_l = crop_offsets((oh, ow), sk.shape[-2:])
    xi = relu_in if relu_in is not None else out
    if head is not None:
        h_w, h_b, z = head
        assert utils.head_fits(n_gemm, h_w.shape[0], a.dtype), \
            "igemm_fwd: the head needs one column tile (not IEEE fp32)"
        if h_b is None:
            h_b = z.new_zeros(h_w.shape[0], dtype=torch.float32)   # (a bias's dtype under autocast)
    else:
        h_w, h_b, z = w_t, w_t, out
    flat_k = ca % utils.k_align() != 0
    store_y_ = store_y or (head is None and skip is None)
    # the window can leave the input unless every shifted pixel is inside by construction
    bounds = not (pad == 0 and sign == 1 and (oh - 1) * stride + ks <= ah
                  and (ow - 1) * stride + ks <= aw)
    # every config's tile runs into the next row of the grid at most once (_tile_out_pixels)
    tallest = max(c.kwargs["BLOCK_M"] for c in _FWD_TUNER.configs)
    wide = ((ow + 1) // 2 >= tallest // 4) if pool is not None else ow >= tallest

    if ks == 1:
        w_st = ca * w_sc   # (one tap: its stride is never used; a descriptor wants a real one)
    # TMA (opt-in, utils.tma_enabled): the weight where its K-tiles are whole (not FLAT_K, not
    # the concat's two halves), the output where its rows are pixels in order
    tma = utils.tma_enabled(a.device)
    w_desc = (utils.weight_desc(w_t, w_st, w_sc, w_sj)
              if tma and not flat_k and a2 is None else 0)
    o_desc = (tma and store_y_ and pool is None and skip is None and up_channels == 0
              and utils.out_desc(out, oh, ow))
    if w_desc or o_desc:
        utils.ensure_allocator(a.device)

    def grid(meta):
        return (utils.m_tiles(meta, m_gemm, oh, ow, pool is not None)
                * triton.cdiv(n_gemm, meta["BLOCK_N"]),)

    with utils.on_device(a):
        igemm_fwd_kernel[grid](
            a, *utils.nhwc_strides(a), ah, aw, ca,
            a2 if a2 is not None else a, ca1,
            w_t, w_st, w_sc, w_sj,
            bias.contiguous() if bias is not None else w_t,  # (read as bias[co]: a view too)
            out, *utils.nhwc_strides(out),
            po, *utils.nhwc_strides(po),
            sk, *utils.nhwc_strides(sk), sk.shape[2], sk.shape[3], sk_t, sk_l,
            xi, *utils.nhwc_strides(xi),
            h_w, h_w.stride(0), h_w.stride(1), h_b,
            z, *utils.nhwc_strides(z),
            nb, oh, ow, m_gemm, n_gemm, utils.m_bucket(m_gemm),
            utils.layout_key(a, out, po, sk, xi, *(() if head is None else (z,))),
            CO_UP=max(up_channels, 1), KS=ks, STRIDE=stride, PAD=pad, SIGN=sign, BOUNDS=bounds,
            HAS_BIAS=bias is not None, RELU=relu, POOL=pool is not None, SKIP=skip is not None,
            CAT=a2 is not None, UPSCATTER=up_channels > 0, RELU_IN=relu_in is not None,
            FLAT_K=flat_k, WIDE=wide, HEAD=0 if head is None else h_w.shape[0],
            STORE_Y=store_y_, W_DESC=w_desc, O_DESC=o_desc,
            DOT_F32=utils.dot_in_fp32(a.dtype), PRECISION=utils.dot_precision(a.dtype),
            INT64=utils.needs_int64(a, w_t, out, po, sk, xi, z,
                                    *(() if a2 is None else (a2,))),
        )


def _igemm_onek(a, w, out, *, grid_hw, ks, pad, sign, bias, relu, relu_in):
    """igemm_fwd for a K and N that fit one tile (utils.use_onek): the persistent
    `igemm_onek_kernel`, at most utils.persistent_ctas CTAs."""
    if pad > 0 and sign == 1:
        # A padded forward over a few input channels (the "same" U-Net's RGB first layer): the
        # input is small next to the output, so zero-padding it once (one small copy) beats
        # masking every gathered element of every tile; the window then never leaves it.
        a = torch.nn.functional.pad(a, (pad, pad, pad, pad))
        pad = 0
    nb, ca, ah, aw = a.shape
    oh, ow = grid_hw
    w_t, w_st, w_sc, w_sj, n_gemm = w
    m_gemm = nb * oh * ow
    xi = relu_in if relu_in is not None else out
    bounds = not (pad == 0 and sign == 1 and oh - 1 + ks <= ah and ow - 1 + ks <= aw)
    ctas = utils.persistent_ctas(a.device)

    def grid(meta):
        return (min(triton.cdiv(m_gemm, meta["BLOCK_M"]), ctas),)

    with utils.on_device(a):
        igemm_onek_kernel[grid](
            a, *utils.nhwc_strides(a), ah, aw, ca,
            w_t, w_st, w_sc, w_sj,
            bias.contiguous() if bias is not None else w_t,
            out, *utils.nhwc_strides(out),
            xi, *utils.nhwc_strides(xi),
            nb, oh, ow, m_gemm, n_gemm, utils.m_bucket(m_gemm), utils.layout_key(a, out, xi),
            KS=ks, PAD=pad, SIGN=sign, BOUNDS=bounds, HAS_BIAS=bias is not None, RELU=relu,
            RELU_IN=relu_in is not None, DOT_F32=utils.dot_in_fp32(a.dtype),
            PRECISION=utils.dot_precision(a.dtype),
            BLOCK_N=max(16, triton.next_power_of_2(n_gemm)),
            BLOCK_K=max(16, triton.next_power_of_2(ks * ks * ca)),
        )


def igemm_wgrad(a: torch.Tensor, b: torch.Tensor, *, grid_hw, ks: int, stride: int, pad: int,
                shift_a: bool, dbias: bool, out_dtype=None, db_dtype=None, db_groups: int = 1,
                b2=None):
    """Launch `igemm_wgrad_kernel`; returns (R, db), the split's fp32 partials summed and cast
    in one launch (`split_sum`) to `out_dtype` (default fp32; db to `db_dtype` if given; with
    `db_groups`, db's rows summed in that many consecutive groups too: a transposed conv's taps).
    The pixel grid (`grid_hw`) is the unshifted operand's; the shifted one (b, or a with `shift_a`) is read at
    (stride*p + kh - pad, stride*q + kw - pad). R is (KS*KS*CA, CB) with `shift_a`, else
    (CA, KS*KS*CB); db the row sums of A (length M), or None. `b2`: B is cat([b, b2], 1), read
    in place (CAT; `cat_ok(b, b2)`, and not with `shift_a`)."""
    nb, ca, ah, aw = a.shape
    _, cb, bh, bw = b.shape
    cb1 = cb
    cat_cb1 = None   # (utils.cat_fits: the first half's channels, or None for no concat)
    if b2 is not None:
        assert cat_ok(b, b2) and not shift_a, "igemm_wgrad: b2 must be shaped and strided like b"
        cb, cat_cb1 = cb1 + b2.shape[1], cb1
    ph, pw = grid_hw
    p_tot = nb * ph * pw
    taps = ks * ks
    m_gemm, n_gemm = (taps * ca, cb) if shift_a else (ca, taps * cb)
    configs = utils.wgrad_configs()
    # One tap per tile while the shifted channels fill the widest tiles; fewer channels (the
    # 64-channel layers; the first layer's one or three) take a shift per column (FLAT), so a
    # tile spans taps and the 64-channel layers get tiles as wide as the others. Otherwise the
    # autotuner keeps only the tile sizes that divide them (utils.prune_gemm).
    def flat(c_shift, block):
        widest = max(cfg.kwargs[block] for cfg in configs)
        return taps > 1 and (c_shift < widest or c_shift % widest != 0)
    flat_a = shift_a and flat(ca, "BLOCK_M")
    flat_b = not shift_a and flat(cb, "BLOCK_N")
    # ... except a 3x3 conv's channels that are a multiple of 64 but not of the widest tile (the
    # 64- and 128-channel layers): tiles of three column sub-tiles (SUB_N), one tap's channels
    # each, that share one A tile; 9*C columns fill whole tiles, where 256-wide tiles pad 576
    # columns to 768. (Decided from the channels alone: the interpreter runs it too.)
    # The configs this launch may run (utils.launch_configs: its list, those that fit the
    # registers), as utils.prune_gemm will find them.
    int64 = utils.needs_int64(a) or _cat_int64(b, cb)
    kind = dict(dtype=a.dtype, precision=utils.dot_precision(a.dtype),
                arch=utils.device_arch(a.device), wgrad=True, int64=int64,
                narrow=utils.gathers_elementwise(
                    dict(a_sc=a.stride(1), b_sc=b.stride(1), CA=ca, CB=cb), wgrad=True))
    sub_n, subs = 1, []
    if (not shift_a and taps == 9 and cb % 64 == 0 and cb % 256 != 0
            and utils.use_sub_tiles(kind["dtype"], kind["precision"], kind["arch"],
                                    kind["narrow"])):
        subs = [c for c in utils.launch_configs(configs, sub_n=3, **kind)
                if utils.sub_tile_fits(c, 3, a.element_size()) and cb % c.kwargs["BLOCK_N"] == 0
                and utils.cat_fits(c, cat_cb1, 3)]
        if subs:
            flat_b, sub_n = False, 3
    # A concat whose halves have fewer channels than the widest tile (CAT: a tile's columns lie
    # in one half): tiles of the two halves' same columns (PAIR), so the 128-channel halves still
    # get 256 columns sharing one A tile
    if (sub_n == 1 and cat_cb1 is not None and taps == 9 and cat_cb1 % 256 != 0
            and utils.use_sub_tiles(kind["dtype"], kind["precision"], kind["arch"],
                                    kind["narrow"])):
        subs = [c for c in utils.launch_configs(configs, sub_n=2, **kind)
                if utils.sub_tile_fits(c, 2, a.element_size()) and utils.cat_fits(c, cat_cb1, 2)]
        if subs:
            flat_b, sub_n = False, 2
    # Split the pixel sum so that the largest tiles fill the GPU even when the channels are few
    # (the first layers have 64x576 weight matrices and hundreds of thousands of pixels); smaller
    # tiles then have more waves, never fewer.
    if sub_n == 1:
        mine = utils.launch_configs(configs, **kind) or configs
        mine = [c for c in mine if utils.cat_fits(c, cat_cb1, 1)] or mine
        big_cfg = max(mine, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])
    else:  # the widest sub-tiles that hold one tap's channels (utils.prune_gemm keeps those)
        big_cfg = max([c for c in subs if c.kwargs["BLOCK_N"] > 32] or subs,
                      key=lambda c: (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_M"]))
    big = big_cfg.kwargs
    tiles = triton.cdiv(m_gemm, big["BLOCK_M"]) * triton.cdiv(n_gemm, sub_n * big["BLOCK_N"])
    align = max(c.kwargs["BLOCK_K"] for c in configs)
    # The K order of _wgrad_loop: bands of qb columns, each band's nb*ph rows padded to whole
    # K-tiles of the largest BLOCK_K (so every K-tile of every config lies in one band).
    qb = utils.band_width(pw, configs)
    rpad = triton.cdiv(nb * ph, align // qb) * (align // qb)
    k_tot = triton.cdiv(pw, qb) * rpad * qb
    k_steps, sms = triton.cdiv(k_tot, align), utils.num_sms(a.device)
    split = utils.wgrad_split(tiles, k_steps, sms, step_pixels=align)
    # (slices of equal K-steps, or longer ones and a short last one where that fills the rounds;
    # two CTAs of the largest tile an SM unless their shared memory rules it out)
    pairs = utils.smem_ctas(big_cfg, a.element_size(), sub_n) >= 2
    chunk = utils.wgrad_chunk(tiles, k_steps, sms, split, pairs) * align
    split = triton.cdiv(k_tot, chunk)
    r = torch.empty((split, m_gemm, n_gemm), device=a.device, dtype=torch.float32)
    db = torch.empty((split, m_gemm if dbias else 1), device=a.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(m_gemm, meta["BLOCK_M"]) * triton.cdiv(n_gemm, sub_n * meta["BLOCK_N"]),
                split)

    with utils.on_device(a):
        igemm_wgrad_kernel[grid](
            a, *utils.nhwc_strides(a), ah, aw, ca,
            b, *utils.nhwc_strides(b), bh, bw, cb,
            b2 if b2 is not None else b, cb1,
            r, db,
            nb, ph, pw, qb, rpad, k_tot, chunk, m_gemm, n_gemm,
            utils.m_bucket(p_tot), utils.layout_key(a, b),
            KS=ks, STRIDE=stride, PAD=pad, SHIFT_A=shift_a, FLAT_A=flat_a, FLAT_B=flat_b,
            SUB_N=sub_n, DBIAS=dbias, INT64=int64, DOT_F32=utils.dot_in_fp32(a.dtype),
            PRECISION=kind["precision"], CAT=b2 is not None,
        )
    out_dtype = out_dtype or torch.float32
    if not dbias:
        return split_sum(r, out_dtype), None
    return split_sum(r, out_dtype, db.view(split * db_groups, m_gemm // db_groups),
                     db_dtype or out_dtype)


_SPLIT_SUM_BLOCK = 1024   # _split_sum_kernel's one config (the grid's split needs it on the host)


# The split-K partials' sum and the cast to the weight's dtype in one pass (in place of a float32
# sum, then a cast, each a kernel: half the bytes and launches), in a fixed order: deterministic.
# The weight's and the bias's sums share one launch: the first R_BLOCKS programs sum R, the rest db.
@triton.autotune(configs=[triton.Config({"BLOCK": _SPLIT_SUM_BLOCK}, num_warps=4)],
                 key=["SPLIT", "DB_SPLIT"])
@triton.jit(do_not_specialize=["SPLIT", "DB_SPLIT", "R_BLOCKS"])
def _split_sum_kernel(r_ptr, out_ptr, SPLIT, NUMEL, db_ptr, dbo_ptr, DB_SPLIT, DB_NUMEL, R_BLOCKS,
                      BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if pid < R_BLOCKS:
        _sum_rows(r_ptr, out_ptr, pid, SPLIT, NUMEL, BLOCK)
    else:
        _sum_rows(db_ptr, dbo_ptr, pid - R_BLOCKS, DB_SPLIT, DB_NUMEL, BLOCK)


@triton.jit
def _sum_rows(src_ptr, dst_ptr, blk, ROWS, NUMEL, BLOCK: tl.constexpr):
    """dst[i] = sum over the ROWS rows of src (ROWS x NUMEL) of column i, for one BLOCK of i."""
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    ok = offs < NUMEL
    ptrs = src_ptr + offs
    acc = tl.load(ptrs, mask=ok, other=0.0)
    for _ in range(1, ROWS):
        ptrs += NUMEL          # (64-bit pointers: ROWS * NUMEL may pass 2**31)
        acc += tl.load(ptrs, mask=ok, other=0.0)
    tl.store(dst_ptr + offs, acc.to(dst_ptr.dtype.element_ty), mask=ok)


def split_sum(r: torch.Tensor, dtype, db: Optional[torch.Tensor] = None, db_dtype=None):
    """r (SPLIT, *shape) float32 -> r.sum(0) in `dtype`; with `db` (ROWS, n) float32 also
    db.sum(0) in `db_dtype` from the same launch: then the pair."""
    if db is None and r.shape[0] == 1 and dtype == r.dtype:
        return r[0]
    # (the interpreter's casts to 16 bits truncate where a GPU's round to nearest: there the
    # kernel sums in fp32 and torch casts)
    def empty(shape, dt):
        cast_here = not (utils.INTERPRET and dt != torch.float32)
        return torch.empty(shape, device=r.device, dtype=dt if cast_here else torch.float32)

    out = empty(r.shape[1:], dtype)
    dbo = empty(db.shape[1:], db_dtype) if db is not None else out
    numel, db_numel = out.numel(), (dbo.numel() if db is not None else 0)

    def grid(meta):
        return (triton.cdiv(numel, meta["BLOCK"]) + triton.cdiv(db_numel, meta["BLOCK"]),)

    with utils.on_device(r):
        _split_sum_kernel[grid](r, out, r.shape[0], numel,
                                db if db is not None else r, dbo,
                                db.shape[0] if db is not None else 1, max(db_numel, 1),
                                triton.cdiv(numel, _SPLIT_SUM_BLOCK))
    out = out.to(dtype)
    return out if db is None else (out, dbo.to(db_dtype))


