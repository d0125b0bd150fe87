"""Ahead-of-time compilation of the Triton kernels for sm_90 and sm_80, without a GPU.

Runs tools/triton_aot.py --subset (every kernel variant the backend launches, one autotune config,
bf16, both targets) in a subprocess without TRITON_INTERPRET: catches GPU-only compile errors the
interpreter cannot see, and checks in the PTX that the GEMM kernels use the tensor cores (wgmma on
sm_90, mma.sync on sm_80). `python tools/triton_aot.py` compiles every config and dtype and writes
docs/triton_kernels.md; the last test checks that the committed table has no failure.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "triton_aot.py")
TABLE = os.path.join(ROOT, "docs", "triton_kernels.md")


def test_aot_compiles_every_kernel_for_sm90_and_sm80():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, TOOL, "--subset", "--jobs", "2"], capture_output=True,
                         text=True, env=env, timeout=900, cwd=ROOT)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("ok", "FAIL"))]
    assert lines and not any(ln.startswith("FAIL") for ln in lines), out[-6000:]
    # tensor cores for the 16-bit GEMMs; IEEE fp32 (TF32 off) variants run on the FMA units
    half = [ln for ln in lines if "igemm" in ln and (" bf16 " in ln or " fp16 " in ln)]
    gemm_90 = [ln for ln in half if "sm_90" in ln]
    gemm_80 = [ln for ln in half if "sm_80" in ln]
    assert gemm_90 and all("mma=wgmma" in ln for ln in gemm_90), "\n".join(gemm_90)
    assert gemm_80 and all("mma=mma" in ln for ln in gemm_80), "\n".join(gemm_80)
    for ln in lines:
        assert "spill=0" in ln, f"register spills: {ln}"


def test_committed_table_is_clean():
    assert os.path.exists(TABLE), "run `python tools/triton_aot.py` to write docs/triton_kernels.md"
    text = open(TABLE).read()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| kernel")]
    assert rows
    assert all(ln.rstrip().endswith("| ok |") for ln in rows), \
        "\n".join(ln for ln in rows if not ln.rstrip().endswith("| ok |"))
    kernels = {ln.split("|")[1].strip() for ln in rows}
    assert {"igemm_fwd_kernel", "igemm_wgrad_kernel", "_max_pool2x2_forward_kernel",
            "_max_pool2x2_backward_kernel", "_crop_copy_kernel"} <= kernels
