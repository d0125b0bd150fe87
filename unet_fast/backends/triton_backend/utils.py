"""Shared helpers of the Triton backend: interpreter switches, layouts, precision, autotune configs.

Every kernel of this package reads and writes through explicit element strides, so NCHW,
channels_last and non-contiguous inputs are all used in place (no copy to NHWC first); outputs are
allocated in the input's memory format. The GEMM configurations live here, in one place, so the
ahead-of-time tool (tools/triton_aot.py) can compile every one of them.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os

import torch
import triton

from unet_fast._utils import conv_allows_tf32, is_channels_last, memory_format_of  # noqa: F401

# The interpreter runs kernels on CPU tensors through NumPy; it is fixed at import time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- memory formats and strides
def empty_like_format(shape, like: torch.Tensor, dtype=None):
    """An uninitialized NCHW-shaped tensor in `like`'s memory format."""
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device,
                       memory_format=memory_format_of(like))


def bias_grad_dtype(bias, x: torch.Tensor) -> torch.dtype:
    """The bias gradient's dtype: the bias's own (fp32 under autocast, ops._autocast: the weight
    gradient kernels sum it in fp32 and store it so, with no cast after), else x's."""
    return bias.dtype if bias is not None else x.dtype


def nhwc_strides(t: torch.Tensor):
    """Element strides of a logical (N, C, H, W) tensor in the (n, h, w, c) order the kernels use."""
    s = t.stride()
    return s[0], s[2], s[3], s[1]


# ---------------------------------------------------------------- precision
def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: float32 follows PyTorch's TF32 setting for cuDNN convolutions (all
    our ops are convolutions; unet_fast._utils.conv_allows_tf32); the interpreter knows only "ieee"."""
    if INTERPRET or dtype != torch.float32:
        return "ieee"
    return "tf32" if conv_allows_tf32() else "ieee"


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """The interpreter's bf16 tl.dot is wrong (docs/design.md, section 5): widen bf16 tiles to fp32 there only."""
    return INTERPRET and dtype == torch.bfloat16


# ---------------------------------------------------------------- autotune configurations
def _cfg(bm, bn, bk, stages, warps, maxnreg=None, a_l1=False, b_l1=False, tile_w=0):
    kw = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}
    if a_l1:   # (igemm_fwd_kernel's A_L1; configs without it take the kernel's default, off)
        kw["A_L1"] = True
    if tile_w:  # (igemm_fwd_kernel's TILE_W: 2-D pixel tiles; default 0, runs along rows)
        kw["TILE_W"] = tile_w
    if b_l1:   # (igemm_wgrad_kernel's B_L1, likewise)
        kw["B_L1"] = True
    return triton.Config(kw, num_stages=stages, num_warps=warps, maxnreg=maxnreg)


# Implicit-GEMM convolutions (forward, dgrad, 1x1, transposed): M = output pixels, N = output
# channels, K = taps * input channels. Tiles sized for Hopper's wgmma (M 64 per warpgroup). On
# Hopper a 128x128 tile needs more L2 bandwidth per tensor-core cycle than the L2 delivers, so the
# large layers get 128x256 / 256x128 tiles (the static model, tools/kernel_model.py, shows which
# binds); every config fits Ampere's 163 KiB of shared memory too. fp32 operands (TF32) take
# twice the bytes per tile, so they get their own list with K-tiles of 32. (The first layer's
# few (tap, channel) pairs -- K = 9 or 27 -- have too few channels for 16-byte vectors: the
# narrow list below serves them, with K-tiles of 16, where igemm_onek_kernel does not.)
IGEMM_CONFIGS_16 = [
    _cfg(128, 256, 64, 3, 8),
    _cfg(256, 128, 64, 3, 8),
    _cfg(128, 128, 64, 3, 8),
    _cfg(128, 128, 32, 4, 8),
    _cfg(256, 64, 64, 4, 8),
    # 64 output channels, two CTAs an SM: one's epilogue runs while the other's mainloop does
    # (128 registers a thread, two stages in 80 KiB; not with the pool epilogue, which spills
    # 16-32 B under the cap: fits_registers. K steps of 64: of 32, the padded dgrad's loop
    # issues more cycles than its tensor work)
    _cfg(256, 64, 64, 2, 8, maxnreg=128),
    # ... and with K steps of 32 for the valid U-Net's pool + skip epilogue, which spills under
    # the cap with steps of 64 (fewer cp.async addresses a thread; fits_registers)
    _cfg(256, 64, 32, 3, 8, maxnreg=128),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(128, 32, 64, 4, 4),
    _cfg(64, 64, 32, 3, 4),
    # The 3x3 layers of 64 and 128 channels: a 64- or 128-wide tile needs more bytes of its
    # gathered A per tensor-core cycle than the L2 gives. With A_L1 the gather goes through the
    # L1 (8-byte cp.async.ca; a chunk's nine taps in a row), where the taps of a kernel row find
    # the pixels the first of them fetched: about a third (a fifth under the pool's 2x2 order)
    # of A's bytes still come from the L2 (l1_reuse). At most 48 KiB of shared memory: above
    # that Triton's launcher asks the driver for the largest shared carve-out, which leaves the
    # L1 too small to hold a tile's window (l1_left).
    _cfg(128, 64, 32, 3, 4, a_l1=True),
    _cfg(128, 64, 64, 2, 4, a_l1=True),
    _cfg(128, 128, 32, 3, 8, a_l1=True),
    _cfg(256, 64, 32, 2, 8, maxnreg=128, a_l1=True),
    # ... and as 2-D patches of the output grid (TILE_W: 8 x 16 or 16 x 16 pixels) for the
    # 64-channel layers, still L2-bound along rows: a chunk's nine taps then read (8 + 2) x
    # (16 + 2) distinct pixels per 128 instead of three rows of 130: about half the L2 bytes
    # of A (l1_reuse; not with the pool epilogue, whose rows run in 2x2 windows)
    _cfg(128, 64, 32, 3, 4, a_l1=True, tile_w=16),
    _cfg(128, 64, 64, 2, 4, a_l1=True, tile_w=16),
    _cfg(256, 64, 32, 2, 8, maxnreg=128, a_l1=True, tile_w=16),
]
IGEMM_CONFIGS_32 = [
    _cfg(128, 128, 32, 3, 8),
    _cfg(128, 64, 32, 4, 4),
    _cfg(64, 128, 32, 3, 4),
    _cfg(128, 32, 32, 4, 4),
    _cfg(64, 64, 32, 3, 4),
]
# fp32 with TF32 off: tl.dot runs on the FMA units, whose operand tiles are held in registers.
# K-tiles of 16 and at most 32 accumulators a thread compile without spills on sm_90 and sm_80
# (the TF32 list's tiles spill 0.3-6 KB a thread there: tools/triton_aot.py).
IGEMM_CONFIGS_IEEE = [
    _cfg(128, 64, 16, 3, 8),
    _cfg(64, 128, 16, 3, 8),
    _cfg(64, 64, 16, 3, 8),
    _cfg(64, 64, 16, 3, 4),
]
# Launches that gather their operands element by element -- NCHW data (a channel stride is not 1)
# or a channel count that is not a multiple of 16 (no 16-byte vectors) -- hold a 64-bit address
# per element in registers: the tiles of the lists above spill there (up to 6 KB a thread);
# these do not, in any dtype (TF32 included), on sm_90 and sm_80. K-tiles of 16 for the first
# layer's K = 9 or 27.
IGEMM_CONFIGS_NARROW = [
    _cfg(64, 64, 32, 3, 8),
    _cfg(64, 32, 32, 3, 4),
    _cfg(64, 32, 16, 3, 4),
]
# Weight gradients: M = the rows' channels (per tap for the transposed conv), N = the columns'
# (per tap for the 3x3), K = pixels (split over the grid's y). K-tiles of 128 for 64x64 tiles,
# whose per-pixel address work would otherwise outweigh their tensor-core work; 64x256 for the
# layers with 64 output channels (a tile then spans taps: igemm_wgrad's FLAT). 16-wide columns:
# the first layer's nine (tap, channel) columns.
WGRAD_CONFIGS_16 = [
    _cfg(128, 256, 64, 3, 8),
    _cfg(256, 128, 64, 3, 8),
    _cfg(128, 128, 64, 3, 8),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(64, 256, 64, 3, 8),   # 64 output channels: two warp groups side by side
    _cfg(128, 64, 64, 3, 8),   # three taps' sub-tiles (SUB_N = 3) of 64 input channels
    _cfg(64, 128, 64, 3, 8),   # ... of 128 input channels, 64 output channels
    _cfg(64, 64, 128, 3, 4),
    _cfg(64, 64, 64, 4, 4),
    _cfg(64, 32, 64, 4, 4),    # the RGB first layer's 27 (tap, channel) columns in one tile
    _cfg(64, 16, 64, 4, 4),
    # 64 input channels in three taps' sub-tiles with B through the L1 (B_L1: the taps of a
    # kernel row read the same pixels a column apart, l1_shift_reuse); at most 48 KiB of shared
    # memory (l1_left), so K steps of 32 and two stages
    _cfg(64, 64, 32, 2, 4, b_l1=True),
]
WGRAD_CONFIGS_32 = [
    _cfg(128, 128, 32, 3, 8),
    _cfg(128, 64, 32, 3, 4),
    _cfg(64, 128, 32, 3, 4),
    _cfg(64, 64, 32, 3, 4),
    _cfg(64, 32, 32, 3, 4),
    _cfg(64, 16, 32, 3, 4),
]


def _config_key(c):
    return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages, c.maxnreg


def _of_list(configs, mine, lists):
    """The `configs` that are in list `mine`, and any that is in none of `lists` (the
    interpreter's one config, which serves every launch)."""
    keys = {_config_key(c) for c in mine}
    known = {_config_key(c) for lst in lists for c in lst}
    return [c for c in configs if _config_key(c) in keys or _config_key(c) not in known]


def is_ieee(dtype: torch.dtype, precision: str) -> bool:
    """fp32 with TF32 off: tl.dot on the FMA units (on the GPU; the interpreter always says
    "ieee")."""
    return dtype == torch.float32 and precision == "ieee"


def gemm_list(dtype: torch.dtype, *, precision: str = "tf32", narrow: bool = False,
              wgrad: bool = False):
    """The config list a GEMM launch draws from: its operands' dtype (16-bit, fp32 with TF32, or
    IEEE fp32 on the FMA units), and for the forward/dgrad kernel whether its operands are
    gathered element by element (`narrow`: NCHW data, or channels not a multiple of 16)."""
    if is_ieee(dtype, precision):
        return WGRAD_CONFIGS_IEEE if wgrad else IGEMM_CONFIGS_IEEE
    if wgrad:
        if narrow:
            return WGRAD_CONFIGS_NARROW if dtype == torch.float32 else WGRAD_CONFIGS_NARROW_16
        return WGRAD_CONFIGS_32 if dtype == torch.float32 else WGRAD_CONFIGS_16
    if narrow:
        return IGEMM_CONFIGS_NARROW
    return IGEMM_CONFIGS_32 if dtype == torch.float32 else IGEMM_CONFIGS_16


# Under the interpreter one small config each: autotuning would run every config, and small
# tiles make the odd-shape tests cross tile and K-chunk boundaries.
_INTERPRET_IGEMM = [_cfg(64, 32, 32, 1, 4)]
_INTERPRET_WGRAD = [_cfg(32, 32, 64, 1, 4)]
# The weight gradient's counterparts of the narrow and IEEE lists above (K-tiles of 32 or more:
# every config's BLOCK_K must divide the largest, 128, and be a multiple of the band width,
# band_width). 16 columns: the first layer's 9. (With Triton 3.6's ptxas, 64x64 tiles of fp32
# spill 8-24 B on sm_80.) IEEE fp32: ptxas (3.6's or 3.8's) spills 4-16 B in every pipelined
# FMA tile tried (64x16 to 64x32, 2-4 stages, 4 or 8 warps), at register counts it picks itself
# (72-128 of 255); unpipelined, it does not.
WGRAD_CONFIGS_NARROW = [
    _cfg(64, 32, 32, 3, 4),
    _cfg(64, 16, 32, 3, 8),
]
# ... and for 16-bit operands K steps of 64 too (fp32's spill 8-144 B): on sm_90 64x64 (on sm_80
# wgrad_fits_registers drops it), without which the 2-class head's weight gradient (2 rows)
# runs 2.7x the time in 64x32 tiles, and the first layer's 16 or 32 columns (9 or 27) with 8
# warps, a third faster than with K steps of 32 (tools/kernel_model.py).
WGRAD_CONFIGS_NARROW_16 = [
    _cfg(64, 64, 64, 4, 4),
    _cfg(64, 32, 64, 3, 8),
    _cfg(64, 16, 64, 3, 8),
] + WGRAD_CONFIGS_NARROW
WGRAD_CONFIGS_IEEE = [
    _cfg(64, 16, 32, 1, 4),
]
_GEMM_LISTS = (IGEMM_CONFIGS_16, IGEMM_CONFIGS_32, IGEMM_CONFIGS_IEEE, IGEMM_CONFIGS_NARROW,
               WGRAD_CONFIGS_16, WGRAD_CONFIGS_32, WGRAD_CONFIGS_NARROW_16, WGRAD_CONFIGS_IEEE)

# The persistent one-K-tile GEMM (igemm_onek_kernel: the first layer, the 1x1 head and its dgrad):
# only the pixel tile varies; BLOCK_N and BLOCK_K are the GEMM's N and K rounded up (the launcher
# sets them). Memory-bound, so a few pixel tiles per CTA in flight matter more than tile shape.
# fp32 tiles (twice the bytes) spill 8-216 B a thread at 128 rows per 4 warps: 8 warps there.
# NCHW data takes the forward kernel's narrow configs instead (igemm_fwd): every onek tile
# spills there (its one K-tile's addresses, one per element).
ONEK_CONFIGS_16 = [
    triton.Config({"BLOCK_M": 128}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 256}, num_stages=3, num_warps=8),
]
ONEK_CONFIGS_32 = [
    triton.Config({"BLOCK_M": 128}, num_stages=3, num_warps=8),
]
_INTERPRET_ONEK = [triton.Config({"BLOCK_M": 32}, num_stages=1, num_warps=4)]
# The largest K and N that path takes (K = taps x channels; a 3x3 layer with up to 7 channels).
ONEK_MAX_K = 64
ONEK_MAX_N = 64
# The 1x1 head fused into the last conv's epilogue (igemm_fwd_kernel's HEAD): the classes are a
# small GEMM over the tile's columns, so the tile must hold all of the conv's output channels --
# at most the narrowest of the config lists' widest tiles (64: the narrow NCHW list; the
# interpreter's one config is 32 wide, head_fits) -- and the head's weight is padded to this many
# classes, the GEMM's N (more classes take the unfused path).
HEAD_MAX_CLASSES = 16

# CTAs per SM of a persistent launch (each walks tiles cta, cta + grid, ...): each keeps
# num_stages - 1 tiles' loads in flight, two CTAs per SM are enough bytes in flight for DRAM, and
# every config fits two per SM except the 8-warp fp32 ones (then two equal rounds). Under the
# interpreter a grid of 3 CTAs, so the tests' small problems still give a CTA several tiles.
PERSISTENT_CTAS_PER_SM = 2
_INTERPRET_PERSISTENT_CTAS = 3

# Elementwise kernels (pool, crop-copy): (pixels x channels) tiles, channels innermost.
ELEMWISE_CONFIGS = [
    triton.Config({"BLOCK_P": 32, "BLOCK_C": 64}, num_warps=4),
    triton.Config({"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=4),
    triton.Config({"BLOCK_P": 128, "BLOCK_C": 16}, num_warps=4),
    triton.Config({"BLOCK_P": 16, "BLOCK_C": 128}, num_warps=4),
]
# NCHW data (pixels contiguous, channels strided): an address per element, so 1024-element
# tiles, pixels innermost (the pool backward's 2048-element tiles spill 24-88 B a thread there on
# sm_80, and with Triton 3.6 a 32x32 one 8 B).
ELEMWISE_CONFIGS_NCHW = [
    triton.Config({"BLOCK_P": 64, "BLOCK_C": 16}, num_warps=4),
]
_INTERPRET_ELEMWISE = [triton.Config({"BLOCK_P": 64, "BLOCK_C": 16}, num_warps=4)]


def _unique(configs):
    seen, out = set(), []
    for c in configs:
        if _config_key(c) not in seen:
            seen.add(_config_key(c))
            out.append(c)
    return out


def igemm_configs():
    return _INTERPRET_IGEMM if INTERPRET else _unique(
        IGEMM_CONFIGS_16 + IGEMM_CONFIGS_32 + IGEMM_CONFIGS_IEEE + IGEMM_CONFIGS_NARROW)


def wgrad_configs():
    return _INTERPRET_WGRAD if INTERPRET else _unique(
        WGRAD_CONFIGS_16 + WGRAD_CONFIGS_32 + WGRAD_CONFIGS_NARROW_16 + WGRAD_CONFIGS_IEEE)


def onek_configs():
    return _INTERPRET_ONEK if INTERPRET else ONEK_CONFIGS_16 + ONEK_CONFIGS_32


def onek_launch_configs(configs, dtype: torch.dtype):
    """igemm_onek_kernel's configs for operands of this dtype (a config of neither list, the
    interpreter's, serves every dtype)."""
    mine = ONEK_CONFIGS_32 if dtype == torch.float32 else ONEK_CONFIGS_16
    return _of_list(configs, mine, (ONEK_CONFIGS_16, ONEK_CONFIGS_32))


def use_onek(k: int, n: int, pixels: int, *tensors: torch.Tensor) -> bool:
    """Whether a convolution with this K (taps x channels), N and output pixels per image runs as
    igemm_onek_kernel (whose pixel tiles may span two images, not three): not on NCHW `tensors`
    (a channel stride other than 1 where there is more than one channel)."""
    return (k <= ONEK_MAX_K and n <= ONEK_MAX_N
            and pixels >= max(c.kwargs["BLOCK_M"] for c in onek_configs())
            and all(t.shape[1] == 1 or t.stride(1) == 1 for t in tensors))


def head_fits(channels: int, classes: int, dtype: torch.dtype) -> bool:
    """Whether igemm_fwd_kernel can fuse a 1x1 head of `classes` outputs over a conv of
    `channels` output channels (HEAD) in this dtype: every config list has a tile that wide, and
    not fp32 with TF32 off on a GPU (the head's tl.dot then runs on the FMA units with both
    operands in registers: every IEEE tile spilled 96-168 B a thread, Triton 3.6 and 3.8; the
    interpreter's "ieee" is not that, and its tests run the fused head in fp32)."""
    if is_ieee(dtype, dot_precision(dtype)) and not INTERPRET:
        return False
    lists = ([_INTERPRET_IGEMM] if INTERPRET else
             [IGEMM_CONFIGS_16, IGEMM_CONFIGS_32, IGEMM_CONFIGS_NARROW])
    widest = min(max(c.kwargs["BLOCK_N"] for c in cfgs) for cfgs in lists)
    return 1 <= classes <= HEAD_MAX_CLASSES and channels <= widest


def persistent_ctas(device: torch.device) -> int:
    """The grid of a persistent launch (before capping it at the number of tiles)."""
    return _INTERPRET_PERSISTENT_CTAS if INTERPRET else num_sms(device) * PERSISTENT_CTAS_PER_SM


def elemwise_configs():
    return _INTERPRET_ELEMWISE if INTERPRET else _unique(ELEMWISE_CONFIGS + ELEMWISE_CONFIGS_NCHW)


def elemwise_launch_configs(configs, nchw: bool):
    """The element-wise kernels' configs for NHWC or NCHW data (a config of neither list, the
    interpreter's, serves both)."""
    return _of_list(configs, ELEMWISE_CONFIGS_NCHW if nchw else ELEMWISE_CONFIGS,
                    (ELEMWISE_CONFIGS, ELEMWISE_CONFIGS_NCHW))


def prune_elemwise(configs, named_args, **kwargs):
    """The pool and crop kernels' configs for the launch's layout: NCHW when a tensor's channel
    stride (an argument named *_sc) is not 1 and there is more than one channel."""
    nchw = int(named_args["C"]) > 1 and any(
        int(v) != 1 for k, v in named_args.items() if k.endswith("_sc"))
    return elemwise_launch_configs(configs, nchw) or list(configs)


def band_width(pw: int, configs) -> int:
    """Columns per band of the wgrad's K-tiles (igemm._wgrad_loop): a divisor of every config's
    BLOCK_K, the one that pads the grid's `pw` columns least (the widest of equals: a K-tile then
    spans fewer rows). Rows never pad: a K-tile may run from one image into the next."""
    g = 0
    for c in configs:
        g = math.gcd(g, c.kwargs["BLOCK_K"])
    widths = [q for q in range(1, g + 1) if g % q == 0]
    return min(widths, key=lambda q: (cdiv(pw, q) * q, -q))


# FLOP per byte of DRAM of the GPUs this package targets (bf16 peak / bandwidth: H200 790/4.3,
# H100 SXM 989/3.35), rounded: what one more slice of a weight gradient's fp32 partials costs
# against its tiles' tensor work (wgrad_split).
FLOP_PER_DRAM_BYTE = 200


@functools.lru_cache(maxsize=4096)
def wgrad_split(tiles: int, k_steps: int, sms: int, max_split: int = 1 << 30,
                step_pixels: int = 64) -> int:
    """Slices of a weight gradient's pixel sum (K) for `tiles` output tiles of `k_steps` K-steps
    of `step_pixels` pixels: at most about eight waves of CTAs (and `max_split`) and at least 8
    K-steps a slice, and of those the count of least cost, in K-steps of the busiest SM:
    rounds x (steps a slice + 1 to fill the pipeline), plus what each slice after the first adds
    in fp32 partials written and read back by the split sum (8 bytes per weight element) at the
    DRAM bandwidth. So 144 tiles of 366 K-steps on 132 SMs take 6 slices (seven rounds of a
    sixth of K: 1.17 K) where two (three rounds of half of K: 1.5 K) left the third round nearly
    empty, and a layer of few tiles takes about one wave. Integer arithmetic (units of 1/(step_pixels x sms) step):
    the CUTLASS wgrad (conv3x3_wgrad_splits) computes the same."""
    most = max(1, min(cdiv(8 * sms, tiles), max_split, k_steps // 8))

    def cost(s):
        busiest = cdiv(tiles * s, sms) * (cdiv(k_steps, s) + 1)  # the busiest SM's K-steps
        # one slice's partials: tiles x BM x BN x 8 bytes; one K-step of a tile on one SM:
        # 2 x BM x BN x step_pixels FLOP at 1/sms of the peak
        return busiest * step_pixels * sms + (s - 1) * tiles * 4 * FLOP_PER_DRAM_BYTE
    return min(range(1, most + 1), key=lambda s: (cost(s), s))


def list_makespan(groups, machines: int):
    """When the last of `machines` finishes jobs started in order, each on the machine that frees
    first (how the GPU hands CTAs to SMs): `groups` are (count, length) in launch order. The
    machines' finishing times take few distinct values, so groups of identical jobs are placed
    a batch at a time."""
    free = {0: machines}                      # finishing time -> machines
    for count, length in groups:
        while count > 0:
            t = min(free)
            k = free.pop(t)
            n = min(k, count)
            count -= n
            if k > n:
                free[t] = k - n
            free[t + length] = free.get(t + length, 0) + n
    return max(free)


@functools.lru_cache(maxsize=4096)
def wgrad_chunk(tiles: int, k_steps: int, sms: int, split: int, pairs: bool = True) -> int:
    """K-steps of each of a weight gradient's `split` slices (wgrad_split) but the last, which
    takes the rest. The GPU starts the CTAs in launch order (every tile's first slice, then the
    second, ...) on whichever SM frees first (list_makespan; each CTA also fills its pipeline,
    a step), so where tiles x split CTAs leave the last round part-empty, longer slices and a
    short last one fill it: 144 tiles of 113 steps in 3 slices on 132 SMs take 45 + 45 + 23
    steps, the busiest SM 140 steps where three of 38 take four rounds, 156. The launcher
    counts the tiles of its largest config before the autotuner has chosen one, so the chunk
    must not lose against even slices for twice the tiles (a smaller tile) either, nor, unless
    the largest tile's shared memory rules it out (`pairs`), with two CTAs an SM (twice the
    slots, each CTA twice as long): of the chunks that lose in none of these, the one with the
    least worst ratio to even slices (the shortest of equals: even slices where nothing gains).
    At most 65 candidates."""
    lo = cdiv(k_steps, split)
    if split == 1:
        return lo
    hi = (k_steps - 1) // (split - 1)          # the last slice keeps at least one step
    step = max(1, (hi - lo) // 64)
    cases = [(tiles, sms, 1), (2 * tiles, sms, 1), (2 * tiles, 2 * sms, 2)]
    if pairs:
        cases.append((tiles, 2 * sms, 2))

    def makespan(c, t, slots, stretch):
        return list_makespan(((t * (split - 1), stretch * (c + 1)),
                              (t, stretch * (k_steps - (split - 1) * c + 1))), slots)

    def worst(c):
        return max(makespan(c, *case) / makespan(lo, *case) for case in cases)
    return min(range(lo, max(lo, hi) + 1, step), key=lambda c: (worst(c), c))


def k_align() -> int:
    """Channel counts that are a multiple of this take the per-tap K path with every config."""
    return max(c.kwargs["BLOCK_K"] for c in igemm_configs())


# ---------------------------------------------------------------- autotuning
def _quick_bench(kernel_call, quantiles):
    """Triton's default benchmark spends 25 ms warming up and 100 ms timing per config; a U-Net
    training step has ~70 GEMM shapes x up to 6 configs, so that alone would be ~50 s. 5 + 20 ms
    still gives a stable median for kernels of 10 us to a few ms."""
    import triton.testing
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def autotune_options() -> dict:
    """Extra `triton.autotune` arguments, passed only where the installed Triton accepts them
    (3.6 and 3.8 both take `do_bench`): the quicker benchmark. With
    UNET_FAST_TRITON_AUTOTUNE_CACHE=1 the timings are also cached on disk next to Triton's kernel
    cache (`cache_results`), so a second process does not re-tune; opt-in because that path has
    not yet been exercised on a GPU."""
    params = inspect.signature(triton.autotune).parameters
    opts = {}
    if "do_bench" in params:
        opts["do_bench"] = _quick_bench
    if "cache_results" in params and os.environ.get("UNET_FAST_TRITON_AUTOTUNE_CACHE", "0") == "1":
        opts["cache_results"] = True
    return opts


def autotune(**kwargs):
    """`triton.autotune(**kwargs, **autotune_options())`, whose first timing of a new shape
    compiles the configs it will time in parallel first (`_compile_ahead`)."""
    def decorate(fn):
        tuner = triton.autotune(**kwargs, **autotune_options())(fn)
        prune = tuner.prune_configs
        # (an instance attribute: Autotuner.run calls self.prune_configs once per new key, with
        # the launch's positional arguments in self.nargs; the same in Triton 3.6 and 3.8)
        tuner.prune_configs = functools.partial(_prune_and_compile, tuner, prune)
        tuner.prune_only = prune   # (for tools that read the pruning without compiling)
        return tuner
    return decorate


def compile_threads() -> int:
    """Threads that compile one shape's autotune configs side by side: UNET_FAST_COMPILE_THREADS,
    default the CPU count up to 8; 1 turns it off (each config then compiles when first timed)."""
    env = os.environ.get("UNET_FAST_COMPILE_THREADS", "")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"UNET_FAST_COMPILE_THREADS must be a whole number of threads, got "
                             f"{env!r}; unset it for the default (the CPU count up to 8)") from None
    return max(1, min(8, os.cpu_count() or 1))


@functools.lru_cache(maxsize=None)
def _compile_pool(threads: int):
    import concurrent.futures
    return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="unet_fast-compile")


def _prune_and_compile(tuner, prune, kwargs):
    configs = prune(kwargs)
    if len(configs) > 1:
        _compile_ahead(tuner, configs, kwargs)
    return configs


def _compile_ahead(tuner, configs, kwargs) -> None:
    """Compile every config of a new autotune key at once on a thread pool (Triton's own
    AsyncCompileMode: compiling releases the GIL, and ptxas is a process of its own), so the
    timing loop that follows finds them all in the kernel cache. A config that fails to compile
    here is left to that loop, which compiles it again and handles the error as it always has."""
    from triton.runtime.jit import JITFunction
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:  # pragma: no cover - a Triton without it compiles in the timing loop
        return
    threads = min(compile_threads(), len(configs))
    if threads < 2 or INTERPRET or not isinstance(tuner.fn, JITFunction):
        return
    args = list(tuner.nargs.values())   # the launch's positional arguments, in order
    try:
        with AsyncCompileMode(_compile_pool(threads), ignore_errors=True):
            for config in configs:
                # the timing run's own keyword arguments (Autotuner._bench), less the launch's
                meta = {k: v for k, v in dict(kwargs, **config.all_kwargs()).items()
                        if k not in ("grid", "warmup")}
                tuner.fn.warmup(*args, grid=None, **meta)
    except Exception:  # noqa: BLE001 - never worse than compiling in the timing loop
        pass


# The AsyncCompileMode of a `compile_only` block, while one is open (process-wide, not per
# thread: on a GPU the autograd engine runs the backward on a device thread of its own).
_DRY = None


@contextlib.contextmanager
def compile_only(threads: int | None = None):
    """Within: every Triton launch compiles its kernel and runs nothing; an autotuned launch
    compiles every config its autotuner would time (prune_gemm's), and neither times nor picks one
    (the first real launch of that shape does, finding them compiled). All compiles run side by
    side on `threads` threads (default `compile_threads()`), whatever launch asked for them;
    leaving the block waits for them. Outputs of the launches are left unwritten. One block at a
    time, process-wide: no other thread may launch this package's kernels meanwhile. Yields a dict
    that holds, once the block is left, `kernels` (compiles started: a kernel already compiled in
    this process starts none; one in Triton's disk cache is loaded from there) and `failed` (those
    that raised: the same error comes back at the kernel's first real launch, as it would have)."""
    global _DRY
    from triton.runtime import _async_compile
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    if _DRY is not None:
        raise RuntimeError("compile_only blocks do not nest")
    stats = {"kernels": 0, "failed": 0}
    if INTERPRET:      # (the interpreter compiles nothing)
        _DRY = stats
        try:
            yield stats
        finally:
            _DRY = None
        return
    import concurrent.futures
    pool = concurrent.futures.ThreadPoolExecutor(threads or compile_threads(),
                                                 thread_name_prefix="unet_fast-precompile")
    mode = _SharedCompileMode(pool, ignore_errors=True)
    run, tune = JITFunction.run, Autotuner.run

    def dry_run(self, *args, grid, warmup, **kwargs):
        if _DRY is not mode:
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)
        # (Triton's async mode is a context variable: set it in whichever thread launches)
        token = _async_compile.active_mode.set(mode)
        try:
            return run(self, *args, grid=grid, warmup=True, **kwargs)
        finally:
            _async_compile.active_mode.reset(token)

    def dry_tune(self, *args, **kwargs):
        if _DRY is not mode:
            return tune(self, *args, **kwargs)
        self.nargs = dict(zip(self.arg_names, args))
        try:
            prune = getattr(self, "prune_only", self.prune_configs)   # (utils.autotune's)
            configs = prune(kwargs) if len(self.configs) > 1 else self.configs
            meta = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
            for config in configs:
                self.fn.run(*args, grid=None, warmup=True, **dict(meta, **config.all_kwargs()))
        finally:
            self.nargs = None

    JITFunction.run, Autotuner.run = dry_run, dry_tune
    _DRY = mode
    try:
        yield stats
    finally:
        _DRY = None
        JITFunction.run, Autotuner.run = run, tune
        try:
            mode.__exit__(None, None, None)   # waits for every compile, keeps the kernels
        finally:
            pool.shutdown(wait=True)
        stats["kernels"] = len(mode.future_kernels)
        stats["failed"] = sum(1 for k in mode.future_kernels.values()
                              if k.future.exception() is not None)


try:
    from triton.runtime._async_compile import AsyncCompileMode as _AsyncCompileMode
except ImportError:  # pragma: no cover - Triton 3.6 and 3.8 both have it
    _AsyncCompileMode = object


class _SharedCompileMode(_AsyncCompileMode):
    """Triton's AsyncCompileMode, whose submissions may come from several threads."""

    def __init__(self, *args, **kwargs):
        import threading
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def submit(self, *args):
        with self._lock:
            return super().submit(*args)


@functools.lru_cache(maxsize=None)
def _device_limits(index: int):
    """(SM count, opt-in shared memory per block in bytes) of CUDA device `index`."""
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or 0
    if not smem:
        try:
            from triton.runtime import driver
            smem = driver.active.utils.get_device_properties(index)["max_shared_mem"]
        except Exception:  # pragma: no cover - keep every config rather than fail
            smem = 1 << 30
    return props.multi_processor_count, int(smem)


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return _device_limits(_cuda_index(device))[0]
    return 4


def smem_limit(device: torch.device):
    """Shared memory a block may opt into on `device` (bytes); None off CUDA (interpreter)."""
    if device.type == "cuda":
        return _device_limits(_cuda_index(device))[1]
    return None


# Shared memory of an SM on Hopper (a CTA may take 227 KiB of it; 1 KiB a CTA is reserved)
SMEM_PER_SM = 228 * 1024


def _smem_estimate(c, elt: int, sub_n: int = 1) -> int:
    """Rough upper bound of a GEMM config's shared memory: every pipeline stage holds an A tile
    and `sub_n` B tiles (the AOT table in docs/triton_kernels.md has the compiler's exact figures,
    all below this)."""
    bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
    return c.num_stages * (bm * bk + sub_n * bk * bn) * elt


def smem_ctas(c, elt: int, sub_n: int = 1) -> int:
    """CTAs of config c an SM's shared memory holds (_smem_estimate, 1 KiB reserved each), 1 or
    2 (the registers of the large tiles allow no more; the cost estimate counts no more)."""
    return max(1, min(2, SMEM_PER_SM // (_smem_estimate(c, elt, sub_n) + 1024)))


def sub_tile_fits(c, sub_n: int, elt: int | None = None) -> bool:
    """Whether a wgrad config may run with `sub_n` column sub-tiles (igemm_wgrad_kernel SUB_N) on
    operands of `elt` bytes: the accumulators of all of them at most 96 fp32 registers a thread
    for three (more spill), 128 for two with 8 warps (the concat's halves, PAIR: as many as one
    128x256 tile's; with 4 warps 128x(2x64) spills 24 B, Triton 3.8), and for 16-bit operands
    K steps of 64 (of 32, three sub-tiles' loads and masks issue more cycles than the step's
    tensor work). Without `elt`, the register rule alone."""
    if sub_n == 1:
        return True
    regs = 128 if sub_n == 2 and c.num_warps == 8 else 96
    return (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * sub_n <= regs * 32 * c.num_warps
            and (elt != 2 or c.kwargs["BLOCK_K"] >= 64 or c.kwargs.get("B_L1", False)))


def cat_fits(c, cb1, sub_n: int) -> bool:
    """Whether a wgrad config can read B as the channel concat of two tensors (CAT) whose first
    has `cb1` channels (None: no concat): a tile's columns must lie in one of them, so the
    column tile divides cb1; two sub-tiles are the halves' same columns (PAIR), three only
    B_L1's (one channel slice, three taps)."""
    if cb1 is None:
        return True
    return cb1 % c.kwargs["BLOCK_N"] == 0 and (sub_n <= 2 or c.kwargs.get("B_L1", False))


# Figures of the run-time cost estimate that ranks configs (H100/H200; tools/kernel_model.py is the
# static model it follows, which reads the compiled code): 16-bit tensor cores do 2048 FMA per SM
# and cycle (TF32 half that), the L2 delivers about 52 bytes per SM and cycle (an assumption the
# model states), a tile's pipeline fills in about 800 cycles.
_FMA_PER_CLK = {2: 2048, 4: 1024}
_L2_BYTES_PER_CLK = 52
_FILL_CLK = 800
AUTOTUNE_TOP_K = 3
# Hopper's L1 and shared memory share 256 KiB an SM; the shared part is one of these carve-outs
# (KiB). A kernel of more than 48 KiB of shared memory gets the largest: Triton's launcher asks
# for it (3.6: cuFuncSetCacheConfig PREFER_SHARED; 3.8, where the driver allows: oversized
# shared memory, an 8 KiB L1). Below that no preference is set, and the driver takes (an
# ASSUMPTION, to be measured) the smallest carve-out that holds the resident CTAs' shared memory
# (1 KiB of it reserved a CTA).
L1_SMEM_KIB = 256
SMEM_CARVEOUTS_KIB = (0, 8, 16, 32, 64, 100, 132, 164, 196, 228)
SMEM_NO_CARVEOUT_REQUEST = 48 * 1024
L1_UNDER_LARGEST_CARVEOUT = 8 * 1024


def l1_left(smem_per_cta: int, ctas: int) -> int:
    """Bytes of L1 an SM keeps beside `ctas` resident CTAs of `smem_per_cta` shared memory."""
    if smem_per_cta > SMEM_NO_CARVEOUT_REQUEST:
        return L1_UNDER_LARGEST_CARVEOUT
    need = ctas * (smem_per_cta + 1024)
    carve = next((k for k in SMEM_CARVEOUTS_KIB if k * 1024 >= need), SMEM_CARVEOUTS_KIB[-1])
    return (L1_SMEM_KIB - carve) * 1024


def m_tiles(kw: dict, m: int, oh: int, ow: int, pool: bool) -> int:
    """igemm_fwd_kernel's row tiles for a config's kwargs `kw` and a GEMM of m rows over an
    (images x oh x ow) grid: BLOCK_M-row runs, or with TILE_W (not with the pool) each image's
    (BLOCK_M / TILE_W) x TILE_W patches."""
    tw = kw.get("TILE_W", 0)
    if tw and not pool and oh and ow:
        return m // (oh * ow) * cdiv(oh, kw["BLOCK_M"] // tw) * cdiv(ow, tw)
    return cdiv(m, kw["BLOCK_M"])


def l1_reuse(bm: int, bk: int, elt: int, ow: int, ks: int, pool: bool, l1_bytes: int,
             tile_w: int = 0) -> float:
    """The fraction of an A_L1 tile's gathered bytes (igemm_fwd_kernel) that still come from the
    L2: a chunk's ks x ks taps read the distinct input pixels of the tile's window once each, the
    rest hit the L1 -- if the window's rows that are read again (all but the last kernel row's
    new one) fit the `l1_bytes` the tile has; else every byte (1.0). Upper bounds on the window:
    the tile's bm output pixels run along rows of `ow` (with `pool`, 2x2 windows along pairs of
    rows) and may wrap to the next row(s); with `tile_w` (TILE_W, not with `pool`) they are a
    (bm / tile_w) x tile_w patch, whose whole window is read again by the chunk's taps."""
    if ks == 1:
        return 1.0
    if tile_w and not pool:
        window = (bm // tile_w + ks - 1) * (min(tile_w, ow) + ks - 1)
        if window * bk * elt > l1_bytes:
            return 1.0
        return min(1.0, window / (ks * ks * bm))
    rows, cols = (2, bm // 2) if pool else (1, bm)
    if cols > ow:   # several rows: as many as the tile covers, plus one where it starts mid-row
        rows, cols = rows * (cdiv(cols, ow) + 1), ow
    else:           # one strip, or two pieces of rows (each with its own halo)
        cols += 2 * (ks - 1)
    pixels = (rows + ks - 1) * (cols + ks - 1)
    if (rows + 1) * (cols + ks - 1) * bk * elt > l1_bytes:   # (ks >= 2 here)
        return 1.0
    return min(1.0, pixels / (ks * ks * bm))


def l1_shift_reuse(qb: int, bk: int, bn: int, elt: int, sub_n: int, l1_bytes: int) -> float:
    """The fraction of a B_L1 wgrad tile's B bytes (its `sub_n` sub-tiles, the taps of one kernel
    row) that still come from the L2: the sub-tiles read a K-tile's pixels (bands of `qb`
    columns) shifted one column apart, so together qb + sub_n - 1 distinct columns of the
    sub_n * qb they load -- if a K-tile's B (and the next's, in flight) fits the `l1_bytes` the
    tile has; else every byte (1.0)."""
    if sub_n < 2 or 2 * bk * bn * elt > l1_bytes:
        return 1.0
    return min(1.0, (qb + sub_n - 1) / (sub_n * qb))


def estimate_cycles(c, m: int, n: int, k: int, split: int, elt: int, sms: int,
                    sub_n: int = 1, ow: int = 0, ks: int = 1, pool: bool = False,
                    qb: int = 0, oh: int = 0) -> float:
    """Cycles of the busiest SM for a GEMM (m x n x k per split, `split` splits) with config c
    (tiles of `sub_n` column sub-tiles): each tile iteration takes its tensor-core time or its L2
    traffic, whichever is longer (an A_L1 config's A tile: the share l1_reuse leaves the L2,
    for a ks x ks window over an output grid of rows of `ow` pixels, `oh` rows an image)."""
    bm, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_K"]
    bn = c.kwargs["BLOCK_N"] * sub_n
    tiles = m_tiles(c.kwargs, m, oh, ow, pool) * cdiv(n, bn) * split
    occ = smem_ctas(c, elt, sub_n)
    a_share = b_share = 1.0
    if c.kwargs.get("A_L1"):
        a_share = l1_reuse(bm, bk, elt, ow or m, ks, pool,
                           l1_left(_smem_estimate(c, elt, sub_n), occ) // occ,
                           c.kwargs.get("TILE_W", 0))
    if c.kwargs.get("B_L1") and qb:
        b_share = l1_shift_reuse(qb, bk, c.kwargs["BLOCK_N"], elt, sub_n,
                                 l1_left(_smem_estimate(c, elt, sub_n), occ) // occ)
    per_iter = max(bm * bn * bk / _FMA_PER_CLK.get(elt, 1024),
                   (bm * bk * a_share + bk * bn * b_share) * elt / _L2_BYTES_PER_CLK)
    return cdiv(tiles, sms) * (cdiv(k, bk) * per_iter + _FILL_CLK / occ)


def device_arch(device: torch.device) -> int:
    """The device's compute capability as 10 x major + minor (90: Hopper, 80: A100); off CUDA
    (the interpreter, tools that prune for a modelled GPU) 90."""
    if device.type == "cuda":
        return _capability(_cuda_index(device))
    return 90


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)   # (once per device: every wgrad
    return 10 * major + minor                                # launch asks)


_CHANNEL_STRIDES = ("a_sc", "b_sc", "o_sc", "q_sc", "k_sc", "x_sc")


def gathers_elementwise(named_args, wgrad: bool) -> bool:
    """Whether a GEMM launch gathers its operands element by element (no 16-byte vectors): a
    tensor with a channel stride other than 1 (NCHW data), or a channel count (the GEMM's K and,
    for the forward, N) that is not a multiple of 16."""
    if any(int(named_args[k]) != 1 for k in _CHANNEL_STRIDES if k in named_args):
        return True
    counts = ("CA", "CB") if wgrad else ("CA", "N_GEMM")
    return any(int(named_args[k]) % 16 for k in counts if k in named_args)


def fits_registers(c, *, arch: int, pool: bool = False, skip: bool = False,
                   int64: bool = False, fp16_relu_in: bool = False, relu_in: bool = False,
                   bounds: bool = True, upscatter: bool = False, head: bool = False) -> bool:
    """Whether a forward/dgrad config from the 16-bit or TF32 list compiles without register
    spills for such a launch (what tools/triton_aot.py reads off every compile, cuobjdump's local
    memory and stack frame, with Triton 3.6 and 3.8):
    - on sm_80 (mma.sync holds its operand fragments in registers too), with 64-bit offsets,
      and for the fp16 dgrad with a ReLU mask: at most 64 fp32 accumulators a thread and no
      register cap (the 128x256, 256x128 and capped 256x64 tiles spill 8 B to 5 KB there);
    - with the pool epilogue: no register cap (the capped 256x64 tile spills 16-32 B), except
      with the cropped skip (SKIP, the valid U-Net's encoder) and K steps of 32, which spills
      nothing; without SKIP that one spills 8-24 B on sm_90;
    - A_L1 (twice the copies) under the register cap: only the valid forward without the pool
      (with the pool and SKIP, the window's bounds or the dgrad's ReLU mask, 8-24 B);
    - the transposed conv's 2x2 scatter (UPSCATTER, its channel count a constant): no register
      cap, and on sm_80 no tile under 64 columns (8 B each);
    - the fused 1x1 head (HEAD): no register cap (the capped 256x64 tiles spill 56-64 B in the
      valid U-Net's last conv with Triton 3.8);
    since the accumulators start from the fp32 bias (igemm_fwd_kernel), with Triton 3.6:
    - the pool epilogue with the cropped skip: no tile wider than 128 columns (128x256 spills
      8 B on sm_90);
    - on sm_80: not the 4-warp 128x32 tile with K steps of 64 in 4 stages (8 B)."""
    bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
    acc = bm * bn // (32 * c.num_warps)
    if (arch < 90 or int64 or fp16_relu_in) and (acc > 64 or c.maxnreg):
        return False
    if pool and skip and bn > 128:
        return False
    if (arch < 90 and (bm, bn, c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
            == (128, 32, 64, 4, 4)):
        return False
    if upscatter and (c.maxnreg or (arch < 90 and bn < 64)):
        return False
    if head and c.maxnreg:
        return False
    if c.kwargs.get("A_L1") and c.maxnreg and (pool or bounds or relu_in):
        return False
    return not (pool and c.maxnreg and not (skip and c.kwargs["BLOCK_K"] == 32))


def wgrad_fits_registers(c, *, arch: int, dtype: torch.dtype, int64: bool = False,
                         sub_n: int = 1) -> bool:
    """The weight gradient's counterpart of fits_registers, for configs of the 16-bit and TF32
    lists on NHWC data (the AOT table, Triton 3.6 and 3.8):
    - on sm_80 (mma.sync holds the transposed A fragments in registers): 8 warps and at most
      128x128, or tiles of at most 64x32 (the 4-warp 64-128 wide and the 256-wide tiles spill
      16 B to 5 KB); and no sub-tiles (use_sub_tiles);
    - with 64-bit offsets: at most 64 accumulators a thread (128x256, 256x128 spill 72-160 B);
    - fp32 (TF32) with 4 warps: at most 32 accumulators a thread (16-24 B with Triton 3.6);
    - three sub-tiles: fp16 only the 128-row tiles, fp32 only tiles of at most 32 columns (the
      others spill 8 B with Triton 3.8; bf16's do not)."""
    bm, bn, w = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps
    acc = bm * bn * sub_n // (32 * w)
    if arch < 90:
        return sub_n == 1 and ((w == 8 and bn <= 128 and bm * bn <= 128 * 128)
                               or bm * bn <= 64 * 32)
    if int64 and acc > 64:
        return False
    if sub_n > 1:
        if dtype == torch.float16:
            return bm >= 128
        if dtype == torch.float32:
            return bn <= 32
        return True
    return not (dtype == torch.float32 and w == 4 and acc > 32)


def use_sub_tiles(dtype: torch.dtype, precision: str, arch: int, narrow: bool) -> bool:
    """Whether a weight gradient may take tiles of three column sub-tiles (SUB_N = 3): on NHWC
    data with 16-byte vectors on sm_90 and later (on sm_80 such tiles spill), not IEEE fp32 (its
    FMA tiles are too small to share an A tile three ways; the interpreter's "ieee" is not that,
    and its tests run the sub-tiles in every dtype)."""
    return arch >= 90 and not narrow and not (is_ieee(dtype, precision) and not INTERPRET)


def launch_configs(configs, *, dtype: torch.dtype, precision: str, arch: int, narrow: bool,
                   wgrad: bool, pool: bool = False, skip: bool = False, int64: bool = False,
                   relu_in: bool = False, sub_n: int = 1, ks: int = 1, flat_k: bool = False,
                   bounds: bool = True, upscatter: bool = False, head: bool = False):
    """The configs a GEMM launch of this kind may run, before its shape is looked at: those of
    its list (gemm_list) that fit the registers (fits_registers; for the weight gradient,
    sub_tile_fits and wgrad_fits_registers), and those that gather A through the L1 (A_L1) only
    for a 3x3 window whose K-tiles lie in one tap (`ks`, `flat_k`: nothing to reuse otherwise).
    prune_gemm starts from these; tools/triton_aot.py compiles exactly these for every kernel
    variant, so its table covers every config the autotuner can pick. Cached: the weight
    gradient's launcher asks on every launch."""
    return list(_launch_configs(tuple(configs), dtype, precision, arch, narrow, wgrad, pool,
                                skip, int64, relu_in, sub_n, ks == 3 and not flat_k, bounds,
                                upscatter, head))


@functools.lru_cache(maxsize=1024)
def _launch_configs(configs, dtype, precision, arch, narrow, wgrad, pool, skip, int64, relu_in,
                    sub_n, taps_reuse, bounds, upscatter, head):
    keep = _of_list(configs, gemm_list(dtype, precision=precision, narrow=narrow, wgrad=wgrad),
                    _GEMM_LISTS)
    if not taps_reuse:
        keep = [c for c in keep if not c.kwargs.get("A_L1")]
    if pool:   # (the pool's rows run in 2x2 windows: the kernel ignores TILE_W there)
        keep = [c for c in keep if not c.kwargs.get("TILE_W")]
    if sub_n != 3:   # B_L1 reuses B across the three taps' sub-tiles
        keep = [c for c in keep if not c.kwargs.get("B_L1")]
    known = {_config_key(c) for lst in _GEMM_LISTS for c in lst}

    def fits(c):
        if _config_key(c) not in known or is_ieee(dtype, precision):
            return True   # the interpreter's one config; IEEE's small tiles (all spill-free)
        if wgrad:
            if narrow:   # (the narrow tiles: only sm_80 drops one)
                return arch >= 90 or wgrad_fits_registers(c, arch=arch, dtype=dtype)
            return sub_tile_fits(c, sub_n) and wgrad_fits_registers(
                c, arch=arch, dtype=dtype, int64=int64, sub_n=sub_n)
        if narrow:
            return True  # (every narrow tile spill-free)
        return fits_registers(c, arch=arch, pool=pool, skip=skip, int64=int64,
                              fp16_relu_in=relu_in and dtype == torch.float16,
                              relu_in=relu_in, bounds=bounds, upscatter=upscatter, head=head)
    return tuple(c for c in keep if fits(c))


def prune_gemm(configs, named_args, **kwargs):
    """The autotune configs worth timing for one GEMM (both implicit-GEMM kernels):
    - those of the operands' dtype list (16-bit: K-tiles of 64; fp32: 32), K-tiles of 16 only for
      the first layer's few (tap, channel) pairs, and weight-gradient column tiles 16 or 32 wide
      only for its few columns (the narrowest that holds them all: one tile);
    - for the weight gradient, only tiles that keep one tap per tile (unless the launch takes a
      shift per column, FLAT: channels fewer than the widest tile);
    - that fit the device's shared memory (Triton would skip the others at run time, but only
      after compiling them);
    - no tile much wider than the GEMM's N or taller than its M (a 2-class head does not need
      128 columns, a 28x28 bottleneck at batch 1 not 128-row tiles of mostly padding);
    - for the forward/dgrad kernel, no tile so large that the grid fills less than half of what
      the smallest tiles would (up to one wave): on small layers the big tiles leave SMs idle;
    - of those, the AUTOTUNE_TOP_K best by `estimate_cycles`, best first: fewer compiles and
      timing runs on the first step.
    UNET_FAST_TRITON_AUTOTUNE=0 keeps only the best estimate (the GPU suite's test stage: parity
    does not need tuning, and every config is compiled by tools/triton_aot.py anyway).
    Never returns an empty list."""
    a = named_args["a_ptr"]
    dtype, elt = a.dtype, a.element_size()
    wgrad = "CHUNK" in named_args
    sub_n = kwargs.get("SUB_N", 1)
    m, n = int(named_args["M_GEMM"]), int(named_args["N_GEMM"])
    # (every fallback below stays within these: the register rules are not relaxed by a shape)
    keep = admitted = launch_configs(
        configs, dtype=dtype, precision=kwargs.get("PRECISION", "tf32"),
        arch=device_arch(a.device), narrow=gathers_elementwise(named_args, wgrad), wgrad=wgrad,
        pool=kwargs.get("POOL", False), skip=kwargs.get("SKIP", False),
        int64=kwargs.get("INT64", False), relu_in=kwargs.get("RELU_IN", False),
        sub_n=sub_n, ks=kwargs.get("KS", 1), flat_k=kwargs.get("FLAT_K", False),
        bounds=kwargs.get("BOUNDS", True), upscatter=kwargs.get("UPSCATTER", False),
        head=kwargs.get("HEAD", 0) > 0) \
        or list(configs)
    if wgrad:
        # the first layer's (tap, channel) columns: 9 (one input channel) or 27 (RGB) in one
        # narrow tile, so its output gradient (the wide operand) is read once
        narrow = 16 if n <= 16 else 32 if n <= 32 else None
        keep = [c for c in keep if (c.kwargs["BLOCK_N"] == narrow if narrow
                                    else c.kwargs["BLOCK_N"] > 32)] or keep
        if kwargs.get("KS", 1) > 1:
            # a tile of the tap-split operand must lie in one tap unless FLAT
            if kwargs.get("SHIFT_A") and not kwargs.get("FLAT_A"):
                keep = [c for c in keep if int(named_args["CA"]) % c.kwargs["BLOCK_M"] == 0] or \
                    [c for c in admitted if int(named_args["CA"]) % c.kwargs["BLOCK_M"] == 0] \
                    or keep
            if not kwargs.get("SHIFT_A") and not kwargs.get("FLAT_B"):
                keep = [c for c in keep if int(named_args["CB"]) % c.kwargs["BLOCK_N"] == 0] or \
                    [c for c in admitted if int(named_args["CB"]) % c.kwargs["BLOCK_N"] == 0] \
                    or keep
        # tiles of three taps' sub-tiles: the configs that can run them (B_L1's sub-tiles, a
        # kernel row's taps of one slice of the tap's channels, need the slice to divide the
        # channels: the filter above)
        keep = [c for c in keep if sub_tile_fits(c, sub_n, elt)] or \
            [c for c in admitted if sub_tile_fits(c, sub_n, elt)] or keep
        if kwargs.get("CAT", False):
            # (no fallback: a tile across the two tensors would read the wrong one; the
            # launcher chose SUB_N from configs that fit, igemm_wgrad)
            cb1 = int(named_args["CB1"])
            keep = [c for c in keep if cat_fits(c, cb1, sub_n)] or \
                [c for c in admitted if cat_fits(c, cb1, sub_n) and sub_tile_fits(c, sub_n, elt)]
        k = int(named_args["CHUNK"])
        split = cdiv(int(named_args["K_TOT"]), k)
    else:
        k = kwargs.get("KS", 1) ** 2 * int(named_args["CA"])
        split = 1
        small_k = kwargs.get("FLAT_K", False) and k <= 32
        keep = [c for c in keep if (c.kwargs["BLOCK_K"] == 16) == small_k
                or (small_k and k > 16)] or keep
    smem = smem_limit(a.device)
    if smem is not None:
        fits = [c for c in keep if _smem_estimate(c, elt, sub_n) <= smem]
        keep = fits or sorted(keep, key=lambda c: _smem_estimate(c, elt, sub_n))[:1]
    small = [c for c in keep
             if c.kwargs["BLOCK_N"] <= max(16 if wgrad else 32, triton.next_power_of_2(n))
             and c.kwargs["BLOCK_M"] <= max(64, triton.next_power_of_2(m))]
    keep = small or keep[-1:]
    if kwargs.get("HEAD", 0):
        # the fused head sums a pixel's classes over all of the conv's channels: one column
        # tile (the launcher checked head_fits, so every list has one)
        keep = [c for c in keep if c.kwargs["BLOCK_N"] >= n] or \
            [c for c in admitted if c.kwargs["BLOCK_N"] >= n]
    pool = kwargs.get("POOL", False)
    oh, ow = int(named_args.get("OH", 0)), int(named_args.get("OW", 0))
    if not wgrad:  # forward / dgrad: grid = row tiles x column tiles
        tiles = {id(c): m_tiles(c.kwargs, m, oh, ow, pool) * cdiv(n, c.kwargs["BLOCK_N"])
                 for c in keep}
        want = min(num_sms(a.device), max(tiles.values())) / 2
        keep = [c for c in keep if tiles[id(c)] >= want]
    sms = num_sms(a.device)
    geo = (dict(qb=int(named_args.get("QB", 0))) if wgrad else
           dict(ow=ow, oh=oh, ks=kwargs.get("KS", 1), pool=pool))
    keep = sorted(keep, key=lambda c: estimate_cycles(c, m, n, k, split, elt, sms, sub_n, **geo))
    keep = keep[:AUTOTUNE_TOP_K]
    if os.environ.get("UNET_FAST_TRITON_AUTOTUNE", "1") == "0":
        keep = keep[:1]  # parity runs: one compile per kernel variant instead of one per config
    return keep


def prune_onek(configs, named_args, **kwargs):
    """igemm_onek_kernel's configs worth timing: those whose pipeline fits the device's shared
    memory, no taller than the GEMM's M needs (never an empty list)."""
    a = named_args["a_ptr"]
    elt = a.element_size()
    m = int(named_args["M_GEMM"])
    bk, bn = kwargs["BLOCK_K"], kwargs["BLOCK_N"]
    configs = onek_launch_configs(configs, a.dtype) or list(configs)
    keep = [c for c in configs if c.kwargs["BLOCK_M"] <= max(64, triton.next_power_of_2(m))]
    smem = smem_limit(a.device)
    if smem is not None:
        keep = [c for c in keep
                if c.num_stages * c.kwargs["BLOCK_M"] * bk * elt + bk * bn * elt <= smem]
    keep = keep or list(configs)[:1]
    if os.environ.get("UNET_FAST_TRITON_AUTOTUNE", "1") == "0":
        keep = keep[:1]
    return keep


def m_bucket(m: int) -> int:
    """Autotune key for a size -- a GEMM's M or K (pixels), an element-wise kernel's pixel count:
    its power-of-two bucket, so nearby sizes share a tuning while a 28x28 bottleneck and a
    572x572 map do not."""
    return max(int(m) - 1, 1).bit_length()


def layout_key(*tensors: torch.Tensor) -> int:
    """Autotune key for a launch's memory layout: bit i is set when tensors[i] (logical NCHW) has
    channel stride 1 -- channels_last data, or a channel slice of it. At run time Triton compiles
    NCHW and NHWC launches of one shape into different binaries (a stride of 1 is specialized),
    and they favour different tiles, so they must not share one tuning (without this, whichever
    layout came first would pick the config for both). Every launcher passes it as the kernel
    argument LAYOUT, which is in the kernels' autotune keys and do_not_specialize."""
    return sum(1 << i for i, t in enumerate(tensors) if t.stride(1) == 1)


# ---------------------------------------------------------------- TMA tensor descriptors
def tma_enabled(device: torch.device) -> bool:
    """Whether igemm_fwd_kernel's launches on `device` read the weight and store the output
    through TMA tensor descriptors (tl.make_tensor_descriptor, built in the kernel; W_DESC and
    O_DESC): only with UNET_FAST_TRITON_TMA=1, on sm_90 and later (older GPUs lower descriptors
    to plain loads) or off the GPU (the interpreter runs them; tools that model an sm_90 launch
    compile them). Off by default: the static model (tools/kernel_model.py) predicts no gain --
    fewer registers and loop instructions, but a descriptor built per CTA and 24 bytes of
    barriers that take the 48 KiB tiles past the L1's share (docs/design.md) -- and no GPU has
    measured it yet; the GPU suite runs both."""
    return (os.environ.get("UNET_FAST_TRITON_TMA", "0") == "1"
            and hasattr(triton.language, "make_tensor_descriptor") and device_arch(device) >= 90)


def _tma_aligned(t: torch.Tensor, *strides: int) -> bool:
    """TMA's rules for a global tensor: base and every stride but the innermost (1) a multiple
    of 16 bytes, strides positive."""
    elt = t.element_size()
    return t.data_ptr() % 16 == 0 and all(s > 0 and s * elt % 16 == 0 for s in strides)


def weight_desc(w: torch.Tensor, w_st: int, w_sc: int, w_sj: int) -> int:
    """igemm_fwd_kernel's W_DESC for a weight read as W[tap, ca, j] at tap*w_st + ca*w_sc +
    j*w_sj: 1 when j is contiguous (a [taps, CA, N] descriptor), 2 when ca is (a [N, taps, CA]
    one: channels_last forward weights), 0 when TMA cannot address it (neither contiguous, or a
    stride or the base not 16-byte aligned). The tap stride of a single tap is the launcher's
    (any aligned value)."""
    if w_sj == 1 and _tma_aligned(w, w_st, w_sc):
        return 1
    if w_sc == 1 and _tma_aligned(w, w_sj, w_st):
        return 2
    return 0


def out_desc(out: torch.Tensor, oh: int, ow: int) -> bool:
    """Whether igemm_fwd_kernel may store `out` (logical NCHW over an oh x ow grid) by TMA as an
    [N*oh*ow, C] matrix (O_DESC): channel stride 1, pixels at one stride (a dense NHWC grid, or a
    channel slice of one), 16-byte aligned."""
    sn, sc, sh, sw = out.stride()
    return (sc == 1 and (oh == 1 or sh == ow * sw) and (out.shape[0] == 1 or sn == oh * sh)
            and _tma_aligned(out, sw))


def _tma_scratch(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def ensure_allocator(device: torch.device) -> None:
    """Kernels that build tensor descriptors on the device need Triton's global-memory allocator
    for them (128 bytes a CTA). Triton keeps it in a context variable, unset in each new thread
    -- autograd runs the backward in its own --, so each launch checks the current one and sets
    a torch allocation where none is set (a user's own allocator is left alone)."""
    if INTERPRET or device.type != "cuda":
        return
    from triton.runtime import _allocation
    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_tma_scratch)


def max_offset(shape, stride) -> int:
    """How many elements past its base pointer the last element of such a view lies."""
    return sum((s - 1) * abs(st) for s, st in zip(shape, stride))


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether some element of these tensors lies 2**31 or more elements past its base pointer
    (then the kernels' offsets must be 64-bit)."""
    return any(max_offset(t.shape, t.stride()) >= 2**31 - 1 for t in tensors)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def on_device(t: torch.Tensor):
    """Triton launches on torch's *current* device and its current stream: a launch for tensors
    on cuda:1 while cuda:0 is current would run on the wrong GPU. Every launcher enters this."""
    if t.is_cuda:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()
