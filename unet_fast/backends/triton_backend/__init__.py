"""The `triton` backend: unet_fast's Triton kernels, registered with the dispatch layer.

One module per op (kernels, host launchers, the torch operator and its autograd); the implicit-GEMM
kernels every convolution shares live in igemm.py, the layout/precision/autotune helpers in
utils.py. Each op is a `torch.library.custom_op` in the namespace `unet_fast_triton` with a fake
kernel and a registered autograd formula whose backward calls further custom ops, so the ops are
visible to torch.compile without graph breaks.

Triton needs CUDA tensors; with TRITON_INTERPRET=1 set before import, the same kernels run on CPU
tensors through Triton's interpreter (how the backend is tested without a GPU).
"""
from __future__ import annotations

import torch

from ..._dispatch import register_backend, register_impl

try:
    import triton  # noqa: F401
except ImportError as _e:  # pragma: no cover - the package's __init__ reports it
    raise ImportError(f"triton is not installed ({_e}); `pip install triton`") from _e

from . import conv1x1, conv3x3_relu, conv_transpose, crop_concat, max_pool, utils

_INT32_MAX = 2**31 - 1


def backend_reason():
    """None when the backend can run at all, else why not."""
    if torch.cuda.is_available() or utils.INTERPRET:
        return None
    return ("Triton kernels need a CUDA GPU, or TRITON_INTERPRET=1 to run them on the CPU "
            "through the interpreter (set it before importing unet_fast)")


def supports(*args):
    """None when the Triton kernels can run these (already validated) arguments, else why not."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    for t in tensors:
        if t.dtype not in utils.TRITON_DTYPES:
            return (f"Triton kernels support float32/float16/bfloat16, got {t.dtype}; "
                    "use backend='torch' for float64")
    dev = tensors[0].device
    if dev.type == "cpu":
        if not utils.INTERPRET:
            return ("Triton kernels need CUDA tensors and these are on the CPU; move them to a "
                    "GPU, or set TRITON_INTERPRET=1 before importing unet_fast to run the kernels "
                    "through the (slow) interpreter")
    elif dev.type != "cuda":
        return f"Triton kernels run on CUDA tensors, not on {dev.type}"
    for t in tensors:  # offsets inside one image are 32-bit (the batch offset is 64-bit)
        if t.dim() != 4:
            continue
        # x4: a transposed conv's output image is four times its input's
        if 4 * sum((s - 1) * abs(st) for s, st in zip(t.shape[1:], t.stride()[1:])) > _INT32_MAX:
            return (f"one image of a tensor of shape {tuple(t.shape)} spans more than 2**29 "
                    "elements, beyond the kernels' 32-bit in-image offsets; use backend='torch'")
        # GEMM rows / pixel indices (N*H*W, rounded up to whole 2x2 windows and tiles, and x4 for
        # the up-sampled output) are 32-bit program-local indices
        n, _, h, w = t.shape
        if 4 * n * (h + 1) * (w + 1) + 4096 > _INT32_MAX:
            return (f"a tensor of shape {tuple(t.shape)} has more than 2**29 pixels, beyond the "
                    "kernels' 32-bit pixel indices; split the batch or use backend='torch'")
    return None


_IMPLS = {
    "conv3x3_relu": conv3x3_relu.impl,
    "conv3x3_relu_pool": conv3x3_relu.impl_pool,
    "max_pool2x2": max_pool.impl,
    "crop_concat": crop_concat.impl,
    "conv_transpose2x2": conv_transpose.impl,
    "up_concat": conv_transpose.impl_up_concat,
    "concat_conv3x3_relu": conv3x3_relu.impl_concat,
    "conv1x1": conv1x1.impl,
    "conv3x3_relu_conv1x1": conv3x3_relu.impl_head,
}

register_backend("triton", backend_reason)
for _op, _fn in _IMPLS.items():
    register_impl(_op, "triton", _fn, supports)

__all__ = ["backend_reason", "supports"]
