"""Shared helpers of the Triton backend: interpreter switches, layouts, precision, autotune configs.

Every kernel of this package reads and writes through explicit element strides, so NCHW,
channels_last and non-contiguous inputs are all used in place (no copy to NHWC first); outputs are
allocated in the input's memory format. The GEMM configurations live here, in one place, so the
ahead-of-time tool (tools/triton_aot.py) can compile every one of them.
"""
from __future__ import annotations

import os

import torch
import triton

# The interpreter runs kernels on CPU tensors through NumPy; it is fixed at import time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- memory formats and strides
def is_channels_last(t: torch.Tensor) -> bool:
    """Whether `t` should be treated (and answered) as channels_last: strictly channels_last
    contiguous, or a non-contiguous view whose channels are the innermost dimension."""
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return True
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return False
    return t.stride(1) == 1 and t.shape[1] > 1


def memory_format_of(t: torch.Tensor):
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format


def empty_like_format(shape, like: torch.Tensor, dtype=None):
    """An uninitialized NCHW-shaped tensor in `like`'s memory format."""
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device,
                       memory_format=memory_format_of(like))


def nhwc_strides(t: torch.Tensor):
    """Element strides of a logical (N, C, H, W) tensor in the (n, h, w, c) order the kernels use."""
    s = t.stride()
    return s[0], s[2], s[3], s[1]


# ---------------------------------------------------------------- precision
def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: float32 follows torch.backends.cudnn.allow_tf32 (all our ops are
    convolutions, which PyTorch runs through cuDNN); the interpreter only knows "ieee"."""
    if INTERPRET or dtype != torch.float32:
        return "ieee"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """The interpreter's bf16 tl.dot is wrong (ENV.md): widen bf16 tiles to fp32 there only."""
    return INTERPRET and dtype == torch.bfloat16


# ---------------------------------------------------------------- autotune configurations
def _cfg(bm, bn, bk, stages, warps):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk},
                         num_stages=stages, num_warps=warps)


# Implicit-GEMM convolutions (forward, dgrad, 1x1, transposed): M = output pixels, N = output
# channels, K = taps * input channels. Tiles sized for Hopper's wgmma (M 64/128 per warpgroup);
# every config fits Ampere's 163 KiB of shared memory too. fp32 operands (TF32 or IEEE) take twice
# the bytes per tile, so they get their own list with K-tiles of 32.
IGEMM_CONFIGS_16 = [
    _cfg(128, 128, 64, 3, 8),
    _cfg(128, 128, 32, 4, 8),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(128, 32, 64, 4, 4),
    _cfg(64, 64, 32, 3, 4),
]
IGEMM_CONFIGS_32 = [
    _cfg(128, 128, 32, 3, 8),
    _cfg(128, 64, 32, 4, 4),
    _cfg(64, 128, 32, 3, 4),
    _cfg(128, 32, 32, 4, 4),
    _cfg(64, 64, 32, 3, 4),
]
# Weight gradients: M = taps * C_a rows, N = C_b columns, K = pixels (split over the grid's y).
WGRAD_CONFIGS_16 = [
    _cfg(128, 128, 64, 3, 8),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(64, 64, 64, 4, 4),
]
WGRAD_CONFIGS_32 = [
    _cfg(128, 128, 32, 3, 8),
    _cfg(128, 64, 32, 3, 4),
    _cfg(64, 128, 32, 3, 4),
    _cfg(64, 64, 32, 3, 4),
]


def _config_key(c):
    return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages


_FP16_KEYS = {_config_key(c) for c in IGEMM_CONFIGS_16 + WGRAD_CONFIGS_16}
_FP32_KEYS = {_config_key(c) for c in IGEMM_CONFIGS_32 + WGRAD_CONFIGS_32}
# Under the interpreter one small config each: autotuning would run every config, and small
# tiles make the odd-shape tests cross tile and K-chunk boundaries.
_INTERPRET_IGEMM = [_cfg(64, 32, 32, 1, 4)]
_INTERPRET_WGRAD = [_cfg(32, 32, 64, 1, 4)]

# Elementwise kernels (pool, crop-copy): (pixels x channels) tiles, channels innermost.
ELEMWISE_CONFIGS = [
    triton.Config({"BLOCK_P": 32, "BLOCK_C": 64}, num_warps=4),
    triton.Config({"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=4),
    triton.Config({"BLOCK_P": 128, "BLOCK_C": 16}, num_warps=4),
    triton.Config({"BLOCK_P": 16, "BLOCK_C": 128}, num_warps=4),
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
    return _INTERPRET_IGEMM if INTERPRET else _unique(IGEMM_CONFIGS_16 + IGEMM_CONFIGS_32)


def wgrad_configs():
    return _INTERPRET_WGRAD if INTERPRET else _unique(WGRAD_CONFIGS_16 + WGRAD_CONFIGS_32)


def config_for_dtype(config, dtype: torch.dtype) -> bool:
    """Whether a GEMM config belongs to the list for this operand dtype."""
    return _config_key(config) in (_FP32_KEYS if dtype == torch.float32 else _FP16_KEYS)


def elemwise_configs():
    return _INTERPRET_ELEMWISE if INTERPRET else ELEMWISE_CONFIGS


def k_align() -> int:
    """Channel counts that are a multiple of this take the per-tap K path with every config."""
    return max(c.kwargs["BLOCK_K"] for c in igemm_configs())


def prune_gemm(configs, named_args, **kwargs):
    """The configs for the operands' dtype, without tiles much wider than the GEMM's N (a 2-class
    head does not need 128 columns)."""
    dtype = named_args["a_ptr"].dtype
    configs = [c for c in configs if config_for_dtype(c, dtype)] or configs
    n = named_args["N_GEMM"]
    keep = [c for c in configs if c.kwargs["BLOCK_N"] <= max(32, triton.next_power_of_2(n))]
    return keep or configs[-1:]


def m_bucket(m: int) -> int:
    """Autotune key for a GEMM's M: its power-of-two bucket, so batch sizes share tunings."""
    return max(int(m) - 1, 1).bit_length()


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
