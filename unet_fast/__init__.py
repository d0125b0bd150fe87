"""unet_fast: the U-Net of Ronneberger et al. (2015) on fused Triton and CUDA kernels."""
from __future__ import annotations

__version__ = "0.1.0"

from ._dispatch import BackendUnavailable, use_backend  # noqa: E402
from . import backends, ops, reference, sizes  # noqa: E402
from .model import UNet  # noqa: E402

__all__ = ["UNet", "reference", "ops", "backends", "sizes", "use_backend", "BackendUnavailable",
           "__version__"]
