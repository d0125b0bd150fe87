"""Backends: `torch` (reference), `triton` (our Triton kernels), `cuda` (our extension `_C`).

Importing this package registers every backend that can be imported; one that cannot records why,
and `available()` reports it.
"""
from __future__ import annotations

from .._dispatch import BACKENDS, available, register_backend
from . import torch_backend  # noqa: F401  (registers the reference ops)

try:
    from . import triton_backend  # noqa: F401
except ImportError as _e:  # the module itself registers its own reason when it imports
    _triton_import_error = f"the Triton backend could not be imported: {_e}"
    register_backend("triton", lambda: _triton_import_error)

from . import cuda_backend  # noqa: F401,E402  (reports a missing extension itself)

__all__ = ["BACKENDS", "available"]
