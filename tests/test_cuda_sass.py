"""Static check of the built extension's SASS (no GPU needed): tensor-core instructions (HMMA, or
HGMMA) in every tensor-core convolution kernel for sm_80 and sm_90, wgmma (HGMMA, pipelined) and
TMA loads (UTMALDG) in every CUTLASS sm_90a kernel, and no kernel using local memory (spills). The
same check regenerates docs/cuda_kernels.md: `python tools/sass_report.py`.
"""
import importlib.util
import os
import sys

import pytest

import unet_fast as uf
from conftest import extension_archs
from unet_fast.backends import cuda_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    spec = importlib.util.spec_from_file_location("sass_report", os.path.join(ROOT, "tools", "sass_report.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sass_report"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


_CACHE = {}


def _kernels():
    if "k" not in _CACHE:
        _CACHE["k"] = _analyse()  # cuobjdump over the whole library takes a while: once per session
    return _CACHE["k"]


def _analyse():
    if uf.backends.available()["cuda"] is not None:
        pytest.skip(f"the extension is not built: {uf.backends.available()['cuda']}")
    if not cuda_backend.has_kernel("conv3x3_relu", "cuda"):
        pytest.skip("the extension was built without CUDA (C++ CPU kernels only): no SASS to check")
    tool = _tool()
    cuobjdump = tool.find_cuobjdump()
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (it ships in Triton's wheel)")
    return tool, tool.analyse(cuda_backend.extension_path(), cuobjdump)


def test_conv_kernels_use_tensor_cores_on_sm80_and_sm90():
    """On every arch the library was built for (CI: both; the GPU suite's build: the GPU's)."""
    _, kernels = _kernels()
    archs = {k.arch for k in kernels}
    for arch in extension_archs():
        assert arch in archs, f"the extension has no {arch} code (archs: {sorted(archs)})"
        tc = [k for k in kernels if k.tensor_cores and k.arch == arch]
        # 7 GEMM problems x (fp16, bf16, tf32)
        assert len(tc) >= 21, [k.name for k in tc]
        missing = [k.name for k in tc if k.hmma + k.hgmma == 0]
        assert not missing, f"{arch}: conv kernels without HMMA/HGMMA: {missing}"


def test_no_kernel_spills_to_local_memory():
    _, kernels = _kernels()
    bad = [f"{k.arch} {k.name}: stack {k.stack} B, local {k.local} B, {k.local_ops} STL/LDL"
           for k in kernels if k.spills]
    assert not bad, "\n".join(bad)


def test_conv_kernels_copy_tiles_with_cp_async():
    """The double-buffered mainloop moves its 16-byte tile runs with cp.async (LDGSTS)."""
    _, kernels = _kernels()
    conv = [k for k in kernels if k.is_conv]
    assert conv
    missing = [f"{k.arch} {k.name}" for k in conv if k.ldgsts == 0]
    assert not missing, f"convolution kernels without LDGSTS: {missing}"


# The units of csrc/cutlass_sm90, one kernel each.
# each unit and how many instantiations it has per element type (bf16 and fp16; fprop and dgrad:
# 128x128 and 256x64 tiles; wgrad: 128x64, 128x128 and 64x64; the up-conv's forward: 128x128 and
# 256x64; its dgrad: 128x128; its wgrad is a 3x3 wgrad kernel)
CUTLASS_KERNELS = {"conv3x3 fprop": 2, "conv3x3 dgrad": 2, "conv3x3 wgrad split-K": 3,
                   "up2x2 fprop": 2, "up2x2 dgrad": 1}
CUTLASS_ELEMS = ("bf16", "f16")


def test_cutlass_kernels_use_wgmma_and_tma():
    """Every CUTLASS kernel issues wgmma (HGMMA) in batches, not one at a time, loads its tiles
    with TMA (UTMALDG) and uses no local memory; the five units' nine instantiations are all
    there in both element types, for sm_90a."""
    _, kernels = _kernels()
    cut = [k for k in kernels if k.is_cutlass]
    if not cut:
        if os.environ.get("UNET_FAST_REQUIRE_CUTLASS"):
            pytest.fail("UNET_FAST_REQUIRE_CUTLASS=1 but the extension has no CUTLASS kernels")
        pytest.skip("the extension was built without the CUTLASS sm_90a units (see setup.py's output)")
    names = sorted(k.name for k in cut)
    for unit, count in CUTLASS_KERNELS.items():
        for elem in CUTLASS_ELEMS:
            assert sum(f"{unit} {elem}" in n for n in names) == count, (unit, elem, names)
    assert len(cut) == sum(CUTLASS_KERNELS.values()) * len(CUTLASS_ELEMS), names
    assert {k.arch for k in cut} == {"sm_90a"}, [(k.name, k.arch) for k in cut]
    bad = [f"{k.name}: HGMMA {k.hgmma} ({k.hgmma_batches} batches), UTMALDG {k.utmaldg}, "
           f"stack {k.stack} B, local {k.local} B, {k.local_ops} STL/LDL"
           for k in cut if k.hgmma == 0 or k.wgmma_serialized or k.utmaldg == 0 or k.spills]
    assert not bad, "\n".join(bad)


def test_the_check_catches_serialized_wgmma_and_missing_tma():
    """What the CUTLASS check looks for, on made-up kernels (no build needed): every HGMMA its own
    batch (ptxas's C7510 fallback), or no TMA load."""
    tool = _tool()
    name = "_ZN7cutlass13device_kernelIN9unet_fast4sm90XEEEvNT_6ParamsE"
    ok = tool.Kernel("sm_90a", name, name="ok", hgmma=16, hgmma_batches=2, utmaldg=2)
    serial = tool.Kernel("sm_90a", name, name="serial", hgmma=16, hgmma_batches=16, utmaldg=2)
    no_tma = tool.Kernel("sm_90a", name, name="no_tma", hgmma=16, hgmma_batches=2)
    found = tool.problems([ok, serial, no_tma])
    assert not any(" ok:" in p for p in found), found
    assert any("serial" in p and "serialized" in p for p in found), found
    assert any("no_tma" in p and "UTMALDG" in p for p in found), found
