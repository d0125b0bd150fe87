"""The two implicit-GEMM kernels every convolution of the Triton backend is made of.

`igemm_fwd_kernel` computes, for each pixel (n, p, q) of an output grid and each GEMM column j,

    out[n, p, q, j] = epilogue( sum_{tap, ca} A[n, S*p + dh(tap), S*q + dw(tap), ca] * W[tap*CA + ca, j] )

with taps (kh, kw) of a KS x KS window, dh = SIGN * (kh - PAD). That one loop is
- the 3x3 convolution (S=1, SIGN=+1, PAD=padding; epilogue bias + ReLU, optionally the 2x2 max-pool
  of the tile written from the same registers),
- its input gradient, dgrad (A = dy masked by y > 0 while loading, SIGN=-1: the flipped window),
- the 1x1 convolution and its dgrad (KS=1),
- the 2x2 transposed convolution (KS=1, N = 4*C_out; the epilogue scatters column (i, j, co) to
  pixel (2p+i, 2q+j), possibly inside a channel slice of a concat buffer) and its dgrad
  (A = dy, S=2, KS=2: each input pixel gathers its four output pixels).

`igemm_wgrad_kernel` computes the weight gradients as the transposed products

    R[tap*CA + ca, cb] = sum_{n, p, q} A[n, S*p + dh(tap), S*q + dw(tap), ca] * B[n, p, q, cb]

split over the pixel sum (grid z) into fp32 partials, with the bias gradient reduced from the same
tiles (column sums of B, or row sums of A for the transposed conv).

All tensors are addressed through explicit (n, h, w, c) element strides, so NCHW, channels_last and
strided views (a channel slice of a concat buffer) are read and written in place. Accumulation is
fp32. Pixel offsets are 64-bit (a batch of 572x572x64 activations already needs 29 bits).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import utils

# Autotune keys: the GEMM's dimensions (M as a power-of-two bucket), the memory layout (LAYOUT:
# which operands have channel stride 1, utils.layout_key) and every constexpr that changes the
# kernel's work; never pointers or strides themselves. Triton appends the tensors' dtypes.
_FWD_KEY = ["CA", "N_GEMM", "M_BUCKET", "LAYOUT", "KS", "STRIDE", "PAD", "SIGN", "POOL",
            "UPSCATTER", "MASK_A", "HAS_BIAS", "FLAT_K", "PRECISION"]
_WGRAD_KEY = ["CA", "N_GEMM", "K_BUCKET", "LAYOUT", "KS", "STRIDE", "PAD", "MASK_B", "DBIAS",
              "PRECISION"]
# Integer arguments Triton would otherwise specialize on (== 1, divisible by 16), compiling one more
# binary per config for each new combination: sizes that only bound masks or index pixels gain
# nothing from it, and the key-only arguments (buckets, LAYOUT) are not read by the kernels at all.
# Channel counts and strides stay specialized (16-byte vector loads need them).
_FWD_NO_SPEC = ["AH", "AW", "NB", "OH", "OW", "M_GEMM", "M_BUCKET", "LAYOUT"]
_WGRAD_NO_SPEC = ["AH", "AW", "NB", "PH", "PW", "P_TOT", "M_GEMM", "K_BUCKET", "LAYOUT"]


@triton.jit
def _dot(acc, a, b, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    if DOT_F32:  # interpreter only: its bf16 dot is wrong, fp32 of the same values is exact
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.autotune(configs=utils.igemm_configs(), key=_FWD_KEY,
                 prune_configs_by={"early_config_prune": utils.prune_gemm},
                 **utils.autotune_options())
@triton.jit(do_not_specialize=_FWD_NO_SPEC)
def igemm_fwd_kernel(
    a_ptr, a_sn, a_sh, a_sw, a_sc, AH, AW, CA,          # gathered operand (N, AH, AW, CA)
    mk_ptr, mk_sn, mk_sh, mk_sw, mk_sc,                 # ReLU mask source, A's shape (MASK_A)
    w_ptr,                                              # (KS*KS*CA, N_GEMM) contiguous
    bias_ptr,
    out_ptr, o_sn, o_sh, o_sw, o_sc,
    pool_ptr, q_sn, q_sh, q_sw, q_sc,
    NB, OH, OW, M_GEMM, N_GEMM, CO_UP, M_BUCKET, LAYOUT,  # M_BUCKET, LAYOUT: autotune key only
    KS: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, SIGN: tl.constexpr,
    MASK_A: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, POOL: tl.constexpr,
    UPSCATTER: tl.constexpr, FLAT_K: tl.constexpr, DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N_GEMM, BLOCK_N)
    pid_m = pid // num_n   # column tiles of one row tile run side by side: A is read once from L2
    pid_n = pid % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N_GEMM

    PHC = (OH + 1) // 2
    PWC = (OW + 1) // 2
    if POOL:
        # Rows enumerate 2x2 windows, four consecutive rows per window, so the tile holds whole
        # windows and the pooled output is a max over groups of four rows.
        win = offs_m // 4
        sub = offs_m % 4
        pw = win % PWC
        t = win // PWC
        ph = t % PHC
        n = t // PHC
        p = 2 * ph + sub // 2
        q = 2 * pw + sub % 2
        m_ok = (n < NB) & (p < OH) & (q < OW)
    else:
        q = offs_m % OW
        t = offs_m // OW
        p = t % OH
        n = t // OH
        m_ok = offs_m < M_GEMM
    n64 = n.to(tl.int64)
    a_base = n64 * a_sn
    mk_base = n64 * mk_sn
    ih0 = p * STRIDE
    iw0 = q * STRIDE

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT_K:
        # K = (tap, channel) flattened: any channel count, a K-tile may span taps.
        K_TOT = KS * KS * CA
        for k0 in range(0, K_TOT, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K_TOT
            tap = offs_k // CA
            ca = offs_k % CA
            dh = SIGN * (tap // KS - PAD)
            dw = SIGN * (tap % KS - PAD)
            ih = ih0[:, None] + dh[None, :]
            iw = iw0[:, None] + dw[None, :]
            ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < AH) & (iw >= 0) & (iw < AW)
            a = tl.load(a_ptr + (a_base[:, None] + ih * a_sh + iw * a_sw + ca[None, :] * a_sc),
                        mask=ok, other=0.0)
            if MASK_A:
                mk = tl.load(mk_ptr + (mk_base[:, None] + ih * mk_sh + iw * mk_sw
                                       + ca[None, :] * mk_sc), mask=ok, other=0.0)
                a = tl.where(mk <= 0, tl.zeros_like(a), a)  # (a NaN y passes g)
            b = tl.load(w_ptr + offs_k[:, None] * N_GEMM + offs_n[None, :],
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = _dot(acc, a, b, DOT_F32, PRECISION)
    else:
        # CA % BLOCK_K == 0: every K-tile lies in one tap, the bounds test is per row.
        n_ck = CA // BLOCK_K
        offs_c = tl.arange(0, BLOCK_K)
        for it in range(0, KS * KS * n_ck):
            tap = it // n_ck
            c0 = (it % n_ck) * BLOCK_K
            ih = ih0 + SIGN * (tap // KS - PAD)
            iw = iw0 + SIGN * (tap % KS - PAD)
            ok = m_ok & (ih >= 0) & (ih < AH) & (iw >= 0) & (iw < AW)
            ca = c0 + offs_c
            a = tl.load(a_ptr + ((a_base + ih * a_sh + iw * a_sw)[:, None] + ca[None, :] * a_sc),
                        mask=ok[:, None], other=0.0)
            if MASK_A:
                mk = tl.load(mk_ptr + ((mk_base + ih * mk_sh + iw * mk_sw)[:, None]
                                       + ca[None, :] * mk_sc), mask=ok[:, None], other=0.0)
                a = tl.where(mk <= 0, tl.zeros_like(a), a)  # (a NaN y passes g)
            b = tl.load(w_ptr + (tap * CA + ca)[:, None] * N_GEMM + offs_n[None, :],
                        mask=n_ok[None, :], other=0.0)
            acc = _dot(acc, a, b, DOT_F32, PRECISION)

    # ---- epilogue: bias, ReLU, store (plain or 2x2 scatter), pooled store
    if UPSCATTER:
        co = offs_n % CO_UP
    else:
        co = offs_n
    if HAS_BIAS:
        bias = tl.load(bias_ptr + co, mask=n_ok, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)  # not tl.maximum: NaN must stay NaN, as in F.relu
    if UPSCATTER:
        i = offs_n // (2 * CO_UP)
        j = (offs_n // CO_UP) % 2
        row = n64 * o_sn + (2 * p) * o_sh + (2 * q) * o_sw
        col = i * o_sh + j * o_sw + co * o_sc
    else:
        row = n64 * o_sn + p * o_sh + q * o_sw
        col = offs_n * o_sc
    tl.store(out_ptr + (row[:, None] + col[None, :]), acc.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])
    if POOL:
        # max commutes with the (monotonic) rounding to the storage dtype: pooled == pool(y)
        win = tl.reshape(acc, (BLOCK_M // 4, 4, BLOCK_N))
        pooled = tl.max(win, axis=1)
        # a NaN in the window makes the pooled value NaN, as in F.max_pool2d
        has_nan = tl.max((win != win).to(tl.int32), axis=1) > 0
        pooled = tl.where(has_nan, float("nan"), pooled)
        offs_w = pid_m * (BLOCK_M // 4) + tl.arange(0, BLOCK_M // 4)
        pw2 = offs_w % PWC
        t2 = offs_w // PWC
        ph2 = t2 % PHC
        nq = t2 // PHC
        w_ok = (nq < NB) & (ph2 < OH // 2) & (pw2 < OW // 2)
        prow = nq.to(tl.int64) * q_sn + ph2 * q_sh + pw2 * q_sw
        tl.store(pool_ptr + (prow[:, None] + offs_n[None, :] * q_sc),
                 pooled.to(pool_ptr.dtype.element_ty), mask=w_ok[:, None] & n_ok[None, :])


@triton.autotune(configs=utils.wgrad_configs(), key=_WGRAD_KEY,
                 prune_configs_by={"early_config_prune": utils.prune_gemm},
                 **utils.autotune_options())
@triton.jit(do_not_specialize=_WGRAD_NO_SPEC)
def igemm_wgrad_kernel(
    a_ptr, a_sn, a_sh, a_sw, a_sc, AH, AW, CA,          # gathered rows (tap, ca)
    b_ptr, b_sn, b_sh, b_sw, b_sc,                      # plain columns on the pixel grid
    mb_ptr, mb_sn, mb_sh, mb_sw, mb_sc,                 # ReLU mask of B (MASK_B)
    r_ptr, db_ptr,                                      # fp32 partials (SPLIT, M, N), (SPLIT, M or N)
    NB, PH, PW, P_TOT, CHUNK, M_GEMM, N_GEMM, K_BUCKET, LAYOUT,  # K_BUCKET, LAYOUT: key only
    KS: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, SIGN: tl.constexpr,
    MASK_B: tl.constexpr, DBIAS: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    num_n = tl.cdiv(N_GEMM, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M_GEMM
    n_ok = offs_n < N_GEMM
    tap = offs_m // CA
    ca = offs_m % CA
    dh = SIGN * (tap // KS - PAD)
    dw = SIGN * (tap % KS - PAD)
    a_row = dh * a_sh + dw * a_sw + ca * a_sc

    k_lo = split * CHUNK
    k_hi = tl.minimum(k_lo + CHUNK, P_TOT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db_m = tl.zeros((BLOCK_M,), dtype=tl.float32)
    db_n = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < k_hi
        q = offs_k % PW
        t = offs_k // PW
        p = t % PH
        n64 = (t // PH).to(tl.int64)
        ih = (p * STRIDE)[None, :] + dh[:, None]
        iw = (q * STRIDE)[None, :] + dw[:, None]
        a_ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < AH) & (iw >= 0) & (iw < AW)
        a_pix = n64 * a_sn + (p * STRIDE) * a_sh + (q * STRIDE) * a_sw
        a = tl.load(a_ptr + (a_pix[None, :] + a_row[:, None]), mask=a_ok, other=0.0)
        b_pix = n64 * b_sn + p * b_sh + q * b_sw
        b_ok = k_ok[:, None] & n_ok[None, :]
        b = tl.load(b_ptr + (b_pix[:, None] + offs_n[None, :] * b_sc), mask=b_ok, other=0.0)
        if MASK_B:
            mb_pix = n64 * mb_sn + p * mb_sh + q * mb_sw
            mb = tl.load(mb_ptr + (mb_pix[:, None] + offs_n[None, :] * mb_sc), mask=b_ok, other=0.0)
            b = tl.where(mb <= 0, tl.zeros_like(b), b)  # (a NaN y passes g)
        acc = _dot(acc, a, b, DOT_F32, PRECISION)
        if DBIAS == 1:
            db_n += tl.sum(b.to(tl.float32), axis=0)
        if DBIAS == 2:
            db_m += tl.sum(a.to(tl.float32), axis=1)

    base = split.to(tl.int64) * M_GEMM * N_GEMM
    tl.store(r_ptr + base + offs_m[:, None] * N_GEMM + offs_n[None, :], acc,
             mask=m_ok[:, None] & n_ok[None, :])
    if DBIAS == 1:
        tl.store(db_ptr + split * N_GEMM + offs_n, db_n, mask=n_ok & (pid_m == 0))
    if DBIAS == 2:
        tl.store(db_ptr + split * M_GEMM + offs_m, db_m, mask=m_ok & (pid_n == 0))


# ---------------------------------------------------------------- host launchers
def igemm_fwd(a: torch.Tensor, w_kn: torch.Tensor, out: torch.Tensor, *, grid_hw, ks: int,
              stride: int, pad: int, sign: int, bias=None, relu=False, mask=None, pool=None,
              up_channels: int = 0) -> None:
    """Launch `igemm_fwd_kernel`. Tensors are logical NCHW (any strides); `grid_hw` is the pixel
    grid of the GEMM's rows; `w_kn` the (KS*KS*CA, N) weight matrix."""
    nb, ca, ah, aw = a.shape
    oh, ow = grid_hw
    n_gemm = w_kn.shape[1]
    if pool is not None:
        m_gemm = nb * ((oh + 1) // 2) * ((ow + 1) // 2) * 4
    else:
        m_gemm = nb * oh * ow
    mk = mask if mask is not None else a
    po = pool if pool is not None else out
    flat_k = ca % utils.k_align() != 0

    def grid(meta):
        return (triton.cdiv(m_gemm, meta["BLOCK_M"]) * triton.cdiv(n_gemm, meta["BLOCK_N"]),)

    with utils.on_device(a):
        igemm_fwd_kernel[grid](
            a, *utils.nhwc_strides(a), ah, aw, ca,
            mk, *utils.nhwc_strides(mk),
            w_kn,
            bias if bias is not None else w_kn,
            out, *utils.nhwc_strides(out),
            po, *utils.nhwc_strides(po),
            nb, oh, ow, m_gemm, n_gemm, max(up_channels, 1), utils.m_bucket(m_gemm),
            utils.layout_key(a, mk, out, po),
            KS=ks, STRIDE=stride, PAD=pad, SIGN=sign, MASK_A=mask is not None,
            HAS_BIAS=bias is not None, RELU=relu, POOL=pool is not None,
            UPSCATTER=up_channels > 0, FLAT_K=flat_k, DOT_F32=utils.dot_in_fp32(a.dtype),
            PRECISION=utils.dot_precision(a.dtype),
        )


def igemm_wgrad(a: torch.Tensor, b: torch.Tensor, *, grid_hw, ks: int, stride: int, pad: int,
                mask_b=None, dbias: int = 0):
    """Launch `igemm_wgrad_kernel`; returns (R, db) in fp32: R (KS*KS*CA, CB) and the bias
    gradient (length CB for dbias=1, KS*KS*CA for dbias=2, None for 0)."""
    nb, ca, ah, aw = a.shape
    cb = b.shape[1]
    ph, pw = grid_hw
    p_tot = nb * ph * pw
    m_gemm, n_gemm = ks * ks * ca, cb
    # Split the pixel sum until the grid has ~2 waves even when the channels are few (the first
    # layers have 64x576 weight matrices and hundreds of thousands of pixels).
    tiles = triton.cdiv(m_gemm, 128) * triton.cdiv(n_gemm, 128)
    align = max(c.kwargs["BLOCK_K"] for c in utils.wgrad_configs())
    split = max(1, min(triton.cdiv(2 * utils.num_sms(a.device), tiles),
                       triton.cdiv(p_tot, 8 * align)))
    chunk = triton.cdiv(triton.cdiv(p_tot, split), align) * align
    split = triton.cdiv(p_tot, chunk)
    r = torch.empty((split, m_gemm, n_gemm), device=a.device, dtype=torch.float32)
    db_len = {0: 1, 1: n_gemm, 2: m_gemm}[dbias]
    db = torch.empty((split, db_len), device=a.device, dtype=torch.float32)
    mb = mask_b if mask_b is not None else b

    def grid(meta):
        return (triton.cdiv(m_gemm, meta["BLOCK_M"]) * triton.cdiv(n_gemm, meta["BLOCK_N"]), split)

    with utils.on_device(a):
        igemm_wgrad_kernel[grid](
            a, *utils.nhwc_strides(a), ah, aw, ca,
            b, *utils.nhwc_strides(b),
            mb, *utils.nhwc_strides(mb),
            r, db,
            nb, ph, pw, p_tot, chunk, m_gemm, n_gemm, utils.m_bucket(p_tot),
            utils.layout_key(a, b, mb),
            KS=ks, STRIDE=stride, PAD=pad, SIGN=1, MASK_B=mask_b is not None, DBIAS=dbias,
            DOT_F32=utils.dot_in_fp32(a.dtype), PRECISION=utils.dot_precision(a.dtype),
        )
    r = r[0] if split == 1 else r.sum(0)
    if dbias == 0:
        return r, None
    return r, (db[0] if split == 1 else db.sum(0))
