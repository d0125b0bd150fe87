"""tools/kernel_model.py, the static performance model of the compiled kernels: its SASS reader on
a hand-written listing, and the whole tool on one real kernel (recorded from a training step of
the paper U-Net, compiled for sm_90, read twice: the mainloop is found and its counts are stable).
The tool compiles real kernels, so it runs in a subprocess without TRITON_INTERPRET."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

SASS = """
        .text.k:
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   IMAD R1, R0, 0x2, RZ ;
.L_x_0:
        /*0020*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R4.64] ;
        /*0030*/              @!P0 IADD3 R5, R5, 0x40, RZ ;
        /*0040*/                   WARPGROUP.ARRIVE ;
        /*0050*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8].tnspA, R24 ;
        /*0060*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12].tnspA, R24, gsb0 ;
        /*0070*/                   LDG.E.U16 R7, desc[UR4][R8.64] ;
        /*0080*/               @P1 BRA `(.L_x_0) ;
        /*0090*/                   STG.E.128 desc[UR4][R10.64], R12 ;
        /*00a0*/                   EXIT ;
.L_x_1:
        /*00b0*/                   BRA `(.L_x_1);
"""


def test_sass_reader_finds_the_mainloop_and_counts_it():
    import kernel_model as km
    a = km.analyze_sass(SASS)
    ml = a["mainloop"]
    assert a["total"] == 12 and a["loops"] == 2           # the trailing self-branch is a loop too
    assert ml["instructions"] == 7 and a["outside"] == 5  # 0x20..0x80
    assert ml["classes"]["tensor"] == 2 and ml["classes"]["async copy"] == 1
    assert ml["mma"] == [("wgmma", 64 * 128 * 16, "BF16")] * 2
    assert ml["load_bytes_per_thread"] == 16 + 2 and ml["sync_global_loads"] == 1
    assert ml["l1_bypass"]


def test_model_of_one_kernel_is_stable():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "kernel_model.py"), "--check"],
                         capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "error" not in out, out
    ml = out["mainloop"]
    assert ml is not None and ml == out["mainloop_again"]  # found, and the same count twice
    assert any(kind == "wgmma" for kind, _, _ in ml["mma"]), ml["mma"]
    assert 0 < ml["instructions"] and ml["sync_global_loads"] == 0  # both operands async copies
    assert out["spill"] == 0
    assert out["kernel"].endswith("igemm_wgrad_kernel") and out["phase"] == "bwd"
    assert out["tensor_cycles_per_iter"] > 0 and out["issue_cycles_per_iter"] > 0
    # launches are attributed to the model's layers, forward and backward
    layers = {tuple(x) for x in out["layers"]}
    assert ("down.0.0", "fwd") in layers and ("down.0.0", "bwd") in layers
    assert ("head", "fwd") in layers and ("up.3.up", "bwd") in layers
