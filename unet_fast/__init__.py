"""unet_fast: the U-Net of Ronneberger et al. (2015) on fused Triton and CUDA kernels."""
from __future__ import annotations

__version__ = "0.1.0"

from ._dispatch import BackendUnavailable, use_backend  # noqa: E402
from . import ops, reference, sizes  # noqa: E402
from .model import UNet  # noqa: E402

__all__ = ["UNet", "reference", "ops", "backends", "sizes", "use_backend", "BackendUnavailable",
           "__version__"]


def __getattr__(name):
    # The backends (Triton, the compiled extension) load on first use, not on import, so the
    # reference model and the size arithmetic import without them.
    if name == "backends":
        import importlib
        return importlib.import_module(__name__ + ".backends")
    raise AttributeError(f"module 'unet_fast' has no attribute {name!r}")
