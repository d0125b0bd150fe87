"""Ahead-of-time compilation of the Triton kernels for sm_90 and sm_80, without a GPU.

Runs tools/triton_aot.py --subset (every kernel variant the backend launches, one autotune config,
its first dtype -- and fp32 with the runtime specialization --, both targets, the integer
specializations real launches get: `runtime` and `runtime NCHW`; the full run adds `base`, with no
divisibility known) in a subprocess without TRITON_INTERPRET:
catches GPU-only compile errors the interpreter cannot see, and checks in the PTX that the GEMM
kernels use the tensor cores (wgmma on sm_90, mma.sync on sm_80). `python tools/triton_aot.py`
compiles every config and dtype and writes docs/triton_kernels.md; the last test checks that the
committed table has no failure and covers the runtime specializations.
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


@pytest.fixture(scope="module")
def subset():
    """tools/triton_aot.py --subset, run once for this module: (its result lines, its output)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, TOOL, "--subset", "--jobs", "2"], capture_output=True,
                         text=True, env=env, timeout=900, cwd=ROOT)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    return [ln for ln in res.stdout.splitlines() if ln.startswith(("ok", "FAIL"))], out


def test_aot_compiles_every_kernel_for_sm90_and_sm80(subset):
    lines, out = subset
    assert lines and not any(ln.startswith("FAIL") for ln in lines), out[-6000:]
    # tensor cores for the 16-bit GEMMs; IEEE fp32 (TF32 off) variants run on the FMA units
    half = [ln for ln in lines if "igemm" in ln and (" bf16 " in ln or " fp16 " in ln)]
    gemm_90 = [ln for ln in half if "sm_90" in ln]
    gemm_80 = [ln for ln in half if "sm_80" in ln]
    assert gemm_90 and all("mma=wgmma" in ln for ln in gemm_90), "\n".join(gemm_90)
    assert gemm_80 and all("mma=mma" in ln for ln in gemm_80), "\n".join(gemm_80)
    # the specializations Triton gives real launches compile too: NHWC with the U-Net's
    # divisibilities, and NCHW (channel stride not 1) for the convolution's forward and dgrad
    for spec in ("<runtime>", "<runtime NCHW>"):
        assert any(spec in ln for ln in lines), spec
    for variant in ("[conv3x3_relu fwd]", "[conv3x3_relu_pool fwd]", "[conv3x3 dgrad]",
                    "[conv3x3 dgrad, ReLU input (RELU_IN)]", "[conv3x3 wgrad + dbias]"):
        for spec in ("<runtime>", "<runtime NCHW>"):
            for arch in ("sm_90", "sm_80"):
                assert any(variant in ln and spec in ln and arch in ln for ln in lines), \
                    (variant, spec, arch)
    for variant in ("[conv_transpose2x2 fwd (into concat slice)]", "[conv_transpose2x2 dgrad]",
                    "[conv_transpose2x2 wgrad + dbias]", "[conv1x1 fwd]", "[conv1x1 wgrad + dbias]",
                    "[conv3x3_relu_pool fwd]"):
        assert any(variant in ln and "<runtime>" in ln and " fp32 " in ln for ln in lines), variant


def test_aot_subset_compiles_without_spills(subset):
    """No compile of the subset spills registers (cuobjdump's local memory plus stack frame: ptxas
    puts spilled registers in the stack frame). Each launch is offered only the configs that fit
    the registers there (utils.launch_configs), so the subset's first config per variant, spec,
    dtype and target is one the autotuner may run."""
    lines, out = subset
    assert lines and not any(ln.startswith("FAIL") for ln in lines), out[-6000:]
    spills = [ln for ln in lines if "spill=0 " not in ln]
    assert not spills, f"{len(spills)} of {len(lines)} compiles spill:\n" + "\n".join(spills[:20])


def _table_rows():
    """The committed table's rows as dicts keyed by its header's column names."""
    text = open(TABLE).read()
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    assert header[:2] == ["triton", "kernel"], header
    return [dict(zip(header, (c.strip() for c in ln.strip().strip("|").split("|"))))
            for ln in lines[1:]]


# CI's Triton (requirements-dev.txt) must have rows; another version's rows (the GPU machines'
# 3.6, generated on demand with a venv of that version) are optional, but cover the same compiles.
def _ci_version():
    pins = open(os.path.join(ROOT, "requirements-dev.txt")).read().splitlines()
    return next(ln.split("==")[1].strip() for ln in pins if ln.startswith("triton=="))


def test_committed_table_is_clean():
    assert os.path.exists(TABLE), "run `python tools/triton_aot.py` to write docs/triton_kernels.md"
    rows = _table_rows()
    assert rows
    bad = [r for r in rows if r["status"] != "ok"]
    assert not bad, "\n".join(str(r) for r in bad)
    versions = {r["triton"] for r in rows}
    assert _ci_version() in versions, versions
    for version in versions:
        kernels = {r["kernel"] for r in rows if r["triton"] == version}
        assert {"igemm_fwd_kernel", "igemm_wgrad_kernel", "igemm_onek_kernel",
                "_max_pool2x2_forward_kernel", "_max_pool2x2_backward_kernel",
                "_crop_copy_kernel"} <= kernels, version
    # every version present compiled the same rows (a version's rows left behind by a change of
    # variants or configs shows here: regenerate them or delete them)
    keys = {v: {(r["kernel"], r["variant"], r["spec"], r["dtype"], r["config"], r["arch"])
                for r in rows if r["triton"] == v} for v in versions}
    for v in versions:
        assert keys[v] == keys[_ci_version()], v


def test_committed_table_caps_registers_where_a_config_says():
    """A config with maxnreg (two CTAs an SM) is compiled with it: its rows stay within that many
    registers. The fused pool's epilogue spills under the cap (16-32 B), so a pool launch is
    offered it only with the cropped skip and K steps of 32 (utils.fits_registers)."""
    rows = [r for r in _table_rows() if "maxnreg=" in r["config"]]
    assert any(r["variant"].startswith("conv3x3_relu fwd") for r in rows), "no capped config"
    pool = [r for r in rows if r["variant"].startswith("conv3x3_relu_pool")]
    assert pool and all("skip cropped" in r["variant"] and "BLOCK_K=32" in r["config"]
                        for r in pool), pool
    for r in rows:
        cap = int(r["config"].split("maxnreg=")[1].split(",")[0])
        assert int(r["regs"]) <= cap, r


def test_committed_table_l1_gather_configs_leave_the_l1_alone():
    """The configs that gather A through the L1 (A_L1) compile to at most 48 KiB of shared
    memory in every version: above that Triton's launcher asks the driver for the largest shared
    carve-out and the L1 cannot hold a tile's window (utils.l1_left); and they are offered only
    to 3x3 windows (utils.launch_configs: nothing to reuse in the 1x1 and 2x2 GEMMs)."""
    rows = [r for r in _table_rows() if "A_L1=True" in r["config"]]
    assert rows, "no A_L1 rows"
    big = [r for r in rows if int(r["smem"]) > 48 * 1024]
    assert not big, big[:5]
    assert not [r for r in rows if r["variant"].startswith(("conv1x1", "conv_transpose"))
                or "C_in not a multiple" in r["variant"]]


def test_committed_table_has_no_spills():
    """No committed row spills (every version's)."""
    rows = _table_rows()
    spills = [r for r in rows if r["spill"] != "0"]
    assert not spills, (f"{len(spills)} of {len(rows)} rows spill:\n"
                        + "\n".join(str(r) for r in spills[:20]))


# The compiles tools/triton_aot.py would run now (the configs each launch may run), listed in a
# process without the interpreter (under it the kernels carry the interpreter's one config).
_JOBS = r"""
import json, sys
sys.path.insert(0, "tools")
import triton_aot
rows = []
for path, label, consts, is_gemm, dtype, ci, arch, spec, rt in triton_aot.jobs(False):
    cfg = triton_aot._kernel(path).configs[ci]
    text = ", ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    text += f", warps={cfg.num_warps}, stages={cfg.num_stages}"
    if cfg.maxnreg:
        text += f", maxnreg={cfg.maxnreg}"
    rows.append([path.split(".")[-1], label, spec, dtype, text, f"sm_{arch}"])
print(json.dumps(rows))
"""


def test_committed_table_is_current():
    """The committed rows of CI's Triton are exactly the compiles the tool runs today: every
    config a launch may run (utils.launch_configs), no stale row (regenerate the table after a
    change of configs or rules: `python tools/triton_aot.py`, and the GPU machines' 3.6 rows)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _JOBS], capture_output=True, text=True, env=env,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    import json
    want = {tuple(r) for r in json.loads(res.stdout.strip().splitlines()[-1])}
    have = {(r["kernel"], r["variant"], r["spec"], r["dtype"], r["config"], r["arch"])
            for r in _table_rows() if r["triton"] == _ci_version()}
    assert want == have, (sorted(want - have)[:10], sorted(have - want)[:10])


def test_committed_table_covers_runtime_specializations():
    """Rows for the code that actually runs: the runtime specialization (NHWC) of every kernel,
    NCHW for the convolution's forward, fused pool, dgrad and wgrad in every dtype, and fp32 for
    the transposed conv, the 1x1 conv and the fused pool -- all compiled, none spilling, for both
    targets. NHWC launches run the dtype's list (the narrow tiles only where channels are not a
    multiple of 16), NCHW ones the narrow list: every row of a 16-bit NCHW forward is a narrow
    config, and the NHWC forward offers more than those."""
    rows = [r for r in _table_rows() if r["triton"] == _ci_version()]
    have = {(r["kernel"], r["variant"], r["spec"], r["dtype"], r["arch"]) for r in rows}
    configs = {}
    for r in rows:
        configs.setdefault((r["variant"], r["spec"], r["dtype"], r["arch"]), set()).add(r["config"])
    assert {r["spec"] for r in rows} == {"base", "runtime", "runtime NCHW"}
    for kernel in {r["kernel"] for r in rows}:
        assert any(k == kernel and spec == "runtime" for k, _, spec, _, _ in have), kernel
    fwd = "igemm_fwd_kernel"
    for variant in ("conv3x3_relu fwd", "conv3x3_relu_pool fwd", "conv3x3 dgrad",
                    "conv3x3 dgrad, ReLU input (RELU_IN)"):
        for spec in ("runtime", "runtime NCHW"):
            for dtype in ("bf16", "fp16", "fp32"):
                for arch in ("sm_90", "sm_80"):
                    assert (fwd, variant, spec, dtype, arch) in have, (variant, spec, dtype, arch)
        for arch in ("sm_90", "sm_80"):
            nchw, nhwc = (configs[(variant, s, "bf16", arch)] for s in ("runtime NCHW", "runtime"))
            assert nchw and all(c.startswith("BLOCK_M=64,") for c in nchw), nchw
            assert len(nhwc) > len(nchw) and any("BLOCK_K=64" in c for c in nhwc), nhwc
    for kernel, variant in ((fwd, "conv_transpose2x2 fwd (into concat slice)"),
                            (fwd, "conv_transpose2x2 dgrad"),
                            ("igemm_wgrad_kernel", "conv_transpose2x2 wgrad + dbias"),
                            (fwd, "conv1x1 fwd"),
                            ("igemm_wgrad_kernel", "conv1x1 wgrad + dbias"),
                            (fwd, "conv3x3_relu_pool fwd"),
                            ("igemm_wgrad_kernel", "conv3x3 wgrad + dbias")):
        for spec in ("base", "runtime"):
            for arch in ("sm_90", "sm_80"):
                assert (kernel, variant, spec, "fp32", arch) in have, (variant, spec, arch)
    # three taps a tile: NHWC on sm_90 only (utils.use_sub_tiles)
    sub = "conv3x3 wgrad + dbias, 64/128 input channels: three taps a tile (SUB_N=3)"
    assert ("igemm_wgrad_kernel", sub, "runtime", "fp32", "sm_90") in have
    assert not any(v == sub and (a == "sm_80" or s != "runtime") for _, v, s, _, a in have)


# One real launch of an autotuned kernel (the pool's forward) in a process without the
# interpreter, on a stand-in driver for an sm_90 GPU: every launch runs as a warmup (compile, no
# launch) and the autotuner's timing is replaced by a stub that records what it had to compile.
_FIRST_LAUNCH = r"""
import json, sys, threading
import torch
from triton.runtime import driver
sys.path.insert(0, "tools")
from first_step_compiles import StandInDriver

driver.set_active(StandInDriver(90))
from unet_fast.backends.triton_backend import max_pool
tuner = max_pool._max_pool2x2_forward_kernel
fn = tuner.fn
fn.device_caches[0]
compiled_on, timed = [], []
compile_ = fn.compile
def compile_recorded(*a, **k):
    compiled_on.append(threading.current_thread().name)
    return compile_(*a, **k)
fn.compile = compile_recorded
run_ = fn.run
fn.run = lambda *a, warmup, **k: run_(*a, warmup=True, **k)
def bench(*args, config, **meta):
    before = len(compiled_on)
    fn.run(*args, **dict(meta, **config.all_kwargs()))
    timed.append(len(compiled_on) - before)
    return [float(len(timed))]
tuner._bench = bench
x = torch.randn(2, 64, 32, 32).contiguous(memory_format=torch.channels_last)
max_pool.max_pool2x2_forward(x)
print(json.dumps(dict(timed=timed, compiled_on=compiled_on)))
"""


@pytest.mark.parametrize("threads", [1, 3])
def test_a_new_shapes_configs_compile_in_parallel_before_timing(threads):
    """utils.autotune: the configs a new shape will time are compiled first, side by side on the
    compile threads (UNET_FAST_COMPILE_THREADS; 1: each compiles when it is first timed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["UNET_FAST_COMPILE_THREADS"] = str(threads)
    res = subprocess.run([sys.executable, "-c", _FIRST_LAUNCH], capture_output=True, text=True,
                         env=env, timeout=600, cwd=ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    import json
    out = json.loads(res.stdout.strip().splitlines()[-1])
    timed, compiled_on = out["timed"], out["compiled_on"]
    assert len(timed) >= 2 and len(compiled_on) == len(timed)   # one compile per config
    if threads == 1:
        assert timed == [1] * len(timed) and set(compiled_on) == {"MainThread"}
    else:
        assert timed == [0] * len(timed)   # the timing runs found every config compiled
        assert all(t.startswith("unet_fast-compile") for t in compiled_on)
