"""The compiled extension unet_fast._C (csrc/): loaded when the build is required (CI), the package
working without it, and every op of its schema with a CPU kernel and a fake. Its ops' parity is in
test_cuda_backend.py (C++ CPU kernels) and test_cuda_emulated.py (CUDA kernels, emulated)."""
import os
import subprocess
import sys

import pytest
import torch

import unet_fast as uf
from unet_fast.backends import cuda_backend

from parity import EXTENSION_OPS

ext_reason = uf.backends.available()["cuda"]
requires_extension = pytest.mark.skipif(ext_reason is not None,
                                        reason=f"cuda backend unavailable: {ext_reason}")


@pytest.mark.skipif(ext_reason is not None and not os.environ.get("UNET_FAST_REQUIRE_EXTENSION"),
                    reason=f"extension not built: {ext_reason}")
def test_extension_is_loaded_when_required():
    # .ci/run sets UNET_FAST_REQUIRE_EXTENSION=1: there a missing extension is a failure, not a skip.
    assert ext_reason is None, ext_reason
    assert hasattr(torch.ops.unet_fast, "crop_concat")


def test_package_imports_without_extension(tmp_path):
    """The pure-Python package works when _C is absent: cuda says how to build it (and, with
    first-use builds off, an explicit request raises instead of building)."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'unet_fast._C': raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, unet_fast as uf\n"
        "r = uf.backends.available()['cuda']\n"
        "assert r and 'pip install' in r and 'unet-fast build-ext' in r, r\n"
        "try:\n"
        "    uf.ops.crop_concat(torch.randn(1,1,4,4), torch.randn(1,1,2,2), backend='cuda')\n"
        "except uf.BackendUnavailable as e: print('OK', e)\n"
        "m = uf.UNet(1, 2, base_channels=2, depth=2)\n"
        "print(m(torch.randn(1, 1, 44, 44)).shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1", "UNET_FAST_JIT": "0",
                              "UNET_FAST_EXT_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "torch.Size([1, 2, 4, 4])" in out.stdout


@requires_extension
def test_missing_extension_is_backend_unavailable(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_LOAD_ERROR", "the extension unet_fast._C is not built; build "
                        "it with `pip install --no-build-isolation -e .`")
    with pytest.raises(uf.BackendUnavailable, match="pip install"):
        uf.ops.conv3x3_relu(torch.randn(1, 1, 5, 5), torch.randn(2, 1, 3, 3), backend="cuda")
    assert uf.ops.conv3x3_relu(torch.randn(1, 1, 5, 5), torch.randn(2, 1, 3, 3)).shape == (1, 2, 3, 3)


@requires_extension
def test_every_op_has_cpu_kernel_and_fake():
    for name in EXTENSION_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"unet_fast::{name}", "CPU"), name
    assert set(cuda_backend.cuda_ops.IMPLS) == set(uf._dispatch.OPS)
