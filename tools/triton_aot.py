#!/usr/bin/env python
"""Ahead-of-time compile every Triton kernel of unet_fast with every autotune config, no GPU needed.

For each kernel variant (the constexpr combinations the backend launches), each autotune config,
each dtype, each target (sm_90 Hopper, sm_80 Ampere) and each specialization of the integer
arguments (below) this runs `triton.compile` with an explicit `GPUTarget`, then reads
- the PTX: the GEMM kernels in bf16/fp16 must use the tensor cores -- `wgmma.mma_async` on sm_90,
  `mma.sync` on sm_80 -- or the run fails;
- the cubin (cuobjdump from Triton's wheel): registers, and spills per thread (local memory plus
  the stack frame, where ptxas puts spilled registers);
- the metadata: shared memory per block, which must fit the target (227 KiB on sm_90, 163 KiB on
  sm_80; a config over that is reported, and autotuning skips it there at run time).

Specializations (the table's `spec` column). At launch Triton specializes every integer argument
that is not in the kernel's `do_not_specialize`: a value of 1 becomes a compile-time constant, a
multiple of 16 is marked divisible by 16 (pointers too, by address), which changes the code
(16-byte vector loads and stores, cp.async tiles). So one kernel variant compiles to different
binaries for different shapes and layouts:
- `base`: the historical ahead-of-time signature, the same for every variant: pointers and the
  n/h/w strides divisible by 16, channel strides the constant 1 (NHWC), every other integer plain.
- `runtime`: what the launcher gives Triton for the default U-Net (`UNet()`: 1 input channel,
  2 classes, 64..1024 channels, 572x572 valid input) on channels_last data: every specializable
  integer divisible by 16 except where those shapes make it 1 (channel strides, the first
  layer's single input channel) or not a multiple of 16 (the
  first layer's and the 2-class head's channel counts and strides). Each variant lists these.
- `runtime NCHW`: the same on NCHW data: w strides 1, channel strides (H*W) and h strides (W,
  e.g. 570) not multiples of 16, n strides (C*H*W) are.

Writes one markdown table for every Triton version it was run with (default docs/triton_kernels.md:
a run replaces its own version's rows and keeps the others'). Must run without TRITON_INTERPRET (the
interpreter replaces the kernels); it removes it from its own environment before importing.

    python tools/triton_aot.py                 # everything, into docs/triton_kernels.md
    python tools/triton_aot.py --subset        # one config per variant and spec (the test's check)
    python tools/triton_aot.py --kernel igemm_fwd_kernel --variant "skip cropped"   # those rows
    /path/to/triton-3.6-venv/bin/python tools/triton_aot.py   # adds 3.6 rows (on demand)

CI's Triton (3.8) has rows in the committed table, which tests/test_triton_aot.py checks; rows of
the GPU machines' 3.6 are added on demand: a venv with triton==3.6.0 (pip install --no-deps) and
two .pth files naming this project's .venv site-packages and the project root. 2072 compiles of
3.6.0 took 601 s on 2 cores (--jobs 2, cold cache); igemm_onek_kernel's 132 (--kernel) took 31 s.

A full run compiles about two thousand kernels: about 10 minutes on 2 cores the first time (more
on a loaded machine), seconds once Triton's cache (~/.triton/cache) holds them.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import re
import subprocess
import sys
import tempfile
import time

import sass_report  # tools/: this script's directory, first on sys.path when it runs

if __name__ == "__main__":   # (worker processes inherit it; an importing test keeps its own)
    os.environ.pop("TRITON_INTERPRET", None)

ARCHS = (90, 80)
SMEM_LIMIT = {90: 232448, 80: 166912}   # opt-in shared memory per block, bytes
_TT = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
_STRIDE_C = re.compile(r"^[a-z]+_sc$")      # channel strides: 1 on NHWC data
_STRIDE_NHW = re.compile(r"^[a-z]+_s[nhw]$")
SPECS = ("base", "runtime", "runtime NCHW")  # see the module docstring
_BASE = ("base", "runtime")
_ALL = SPECS
ALL_DTYPES = ("bf16", "fp16", "fp32")
# fp32 whatever the operands' dtype: the weight gradient's partial sums (r, db); and in the
# `runtime` specs, the default U-Net's autocast step, the bias and its gradient (autocast keeps an
# fp32 bias fp32: ops._autocast), where `base` keeps them in the operands' dtype (a model whose
# parameters are in that dtype)
_FP32_PTRS = ("r_ptr", "db_ptr")
_BIAS_PTRS = ("bias_ptr", "h_b_ptr", "dbo_ptr")


def _variants():
    """(kernel attribute path, label, constexprs, is_gemm, dtypes, specs, rt) of every launch the
    backend makes. `specs`: the specializations to compile (SPECS); `rt`: for the runtime ones,
    dict(one=..., odd=...) -- the integer arguments the default U-Net's shapes make 1, or not a
    multiple of 16 (every other specializable one is). Imported lazily so that worker processes
    import triton without the interpreter."""
    base = dict(STRIDE=1, PAD=1, SIGN=1, BOUNDS=True, HAS_BIAS=True, RELU=True, POOL=False,
                SKIP=False, UPSCATTER=False, RELU_IN=False, FLAT_K=False, DOT_F32=False,
                INT64=False, WIDE=False, CO_UP=1, CAT=False, HEAD=0, STORE_Y=True)
    conv = dict(base, KS=3)
    dgrad = dict(conv, SIGN=-1, HAS_BIAS=False, RELU=False)
    # Weights are read through strides W[tap, ca, j] (w_st, w_sc, w_sj); the model keeps them
    # channels_last: C_in has stride 1, so the forward's ca stride is 1 and dgrad's j stride is
    # 1; every other weight stride is a multiple of 16. (`d16`: a channel-stride-like name that
    # is a multiple of 16 here, not 1.)
    w_fwd = {}
    w_dgrad = dict(one=("w_sj",), d16=("w_sc",))
    # the default U-Net's first layer: x has one channel (CA = 1, w stride 1, h stride 572)
    first = dict(one=("CA", "a_sw", "w_st", "w_sc"), odd=("a_sh", "w_sj"))
    # its head: 2 classes, so the head's output (and its gradient) has n/h/w strides
    # 2*388*388 (a multiple of 16), 2*388 and 2 (not), and N_GEMM / CA = 2
    head_out = dict(odd=("N_GEMM", "o_sh", "o_sw", "q_sh", "q_sw", "x_sh", "x_sw"))
    head_dgrad = dict(w_dgrad, odd=("CA", "a_sh", "a_sw"))
    fwd = [
        ("conv3x3_relu fwd", conv, ALL_DTYPES, _ALL, w_fwd),
        ("conv3x3_relu fwd, valid (PAD=0)", dict(conv, PAD=0, BOUNDS=False), ("bf16",), _BASE,
         w_fwd),
        ("conv3x3_relu fwd, TF32 off (IEEE fp32)", dict(conv, PRECISION="ieee"), ("fp32",),
         _ALL, w_fwd),
        ("conv3x3_relu_pool fwd", dict(conv, POOL=True), ALL_DTYPES, _ALL, w_fwd),
        ("conv3x3_relu_pool fwd, valid (PAD=0)", dict(conv, POOL=True, PAD=0, BOUNDS=False),
         ("bf16",), _BASE, w_fwd),
        ("conv3x3_relu_pool fwd, valid, skip cropped (SKIP)",
         dict(conv, POOL=True, SKIP=True, PAD=0, BOUNDS=False), ALL_DTYPES, _BASE, w_fwd),
        ("conv3x3_relu_pool fwd, valid, skip cropped, 64-bit offsets",
         dict(conv, POOL=True, SKIP=True, PAD=0, BOUNDS=False, INT64=True), ("bf16",),
         ("runtime",), w_fwd),
        ("conv3x3 dgrad, ReLU input, 64-bit offsets", dict(dgrad, RELU_IN=True, INT64=True),
         ("bf16",), ("runtime",), w_dgrad),
        ("conv3x3_relu fwd, C_in not a multiple of 64", dict(conv, FLAT_K=True), ("bf16",),
         _BASE, first),
        # the decoder's first conv: the concat of skip and up-sampled map read in place
        ("concat conv3x3_relu fwd (CAT)", dict(conv, CAT=True), ALL_DTYPES, _BASE, w_fwd),
        ("concat conv3x3_relu fwd, valid (CAT, PAD=0)", dict(conv, CAT=True, PAD=0, BOUNDS=False),
         ("bf16",), _BASE, w_fwd),
        # the last conv with the 2-class head in its epilogue (tiles as wide as its 64 channels)
        # (not with TF32 off: utils.head_fits, every IEEE tile spilled 96-168 B)
        ("conv3x3_relu + 1x1 head fwd (HEAD)", dict(conv, HEAD=2), ALL_DTYPES, _ALL, w_fwd),
        ("conv3x3_relu + 1x1 head fwd, valid (HEAD, PAD=0)",
         dict(conv, HEAD=2, PAD=0, BOUNDS=False), ("bf16",), _BASE, w_fwd),
        ("conv3x3_relu + 1x1 head fwd, inference: y not stored (HEAD, STORE_Y off)",
         dict(conv, HEAD=2, STORE_Y=False, PAD=0, BOUNDS=False), ("bf16",), _BASE, w_fwd),
        ("conv3x3 dgrad", dgrad, ALL_DTYPES, _ALL, w_dgrad),
        ("conv3x3 dgrad, ReLU input (RELU_IN)", dict(dgrad, RELU_IN=True), ALL_DTYPES, _ALL,
         w_dgrad),
        ("conv3x3 dgrad, valid (PAD=0)", dict(dgrad, PAD=0), ("bf16",), _BASE, w_dgrad),
        ("conv3x3 dgrad, TF32 off (IEEE fp32)", dict(dgrad, PRECISION="ieee"), ("fp32",), _ALL,
         w_dgrad),
        # the high-resolution layers' rows hold a whole tile (WIDE: no divisions per row)
        ("conv3x3_relu fwd, wide rows (WIDE)", dict(conv, WIDE=True), ALL_DTYPES, ("runtime",),
         w_fwd),
        ("conv3x3_relu fwd, valid, wide rows", dict(conv, PAD=0, BOUNDS=False, WIDE=True),
         ("bf16",), ("runtime",), w_fwd),
        ("conv3x3_relu_pool fwd, wide rows", dict(conv, POOL=True, WIDE=True), ALL_DTYPES,
         ("runtime",), w_fwd),
        ("conv3x3_relu_pool fwd, valid, skip cropped, wide rows",
         dict(conv, POOL=True, SKIP=True, PAD=0, BOUNDS=False, WIDE=True), ALL_DTYPES,
         ("runtime",), w_fwd),
        ("conv3x3 dgrad, ReLU input, wide rows", dict(dgrad, RELU_IN=True, WIDE=True),
         ALL_DTYPES, ("runtime",), w_dgrad),
        ("conv1x1 fwd", dict(base, KS=1, PAD=0, RELU=False, BOUNDS=False), ALL_DTYPES, _BASE,
         head_out),
        ("conv1x1 dgrad (2-class head: C_in not a multiple of 64)",
         dict(base, KS=1, PAD=0, RELU=False, HAS_BIAS=False, FLAT_K=True, RELU_IN=True),
         ("bf16", "fp32"), _BASE, head_dgrad),
        # (CO_UP, the output channels, is a constant: 128, up.2's; the others differ in shifts)
        ("conv_transpose2x2 fwd (into concat slice)",
         dict(base, KS=1, PAD=0, RELU=False, BOUNDS=False, UPSCATTER=True, CO_UP=128),
         ALL_DTYPES, _ALL, w_dgrad),
        ("conv_transpose2x2 dgrad", dict(base, KS=2, STRIDE=2, PAD=0, RELU=False, BOUNDS=False,
                                         HAS_BIAS=False, RELU_IN=True), ALL_DTYPES, _ALL, w_fwd),
        # UNET_FAST_TRITON_TMA=1 (opt-in, sm_90 only: jobs): the weight through a tensor
        # descriptor (W_DESC 2: channels_last forward weights; 1: the dgrad's, the transposed
        # conv's) and the output stored by TMA (O_DESC); the A_L1 configs keep pointers
        ("conv3x3_relu fwd, TMA (W_DESC=2, O_DESC)", dict(conv, W_DESC=2, O_DESC=True),
         ("bf16",), ("runtime",), w_fwd),
        ("conv3x3 dgrad, ReLU input, TMA (W_DESC=1, O_DESC)",
         dict(dgrad, RELU_IN=True, W_DESC=1, O_DESC=True), ("bf16",), ("runtime",), w_dgrad),
        ("conv3x3 dgrad, ReLU input, wide rows, TMA (W_DESC=1, O_DESC)",
         dict(dgrad, RELU_IN=True, WIDE=True, W_DESC=1, O_DESC=True), ("bf16",), ("runtime",),
         w_dgrad),
        ("conv_transpose2x2 fwd (into concat slice), TMA (W_DESC=1)",
         dict(base, KS=1, PAD=0, RELU=False, BOUNDS=False, UPSCATTER=True, CO_UP=128, W_DESC=1),
         ("bf16",), ("runtime",), w_dgrad),
        ("conv_transpose2x2 dgrad, TMA (W_DESC=2, O_DESC)",
         dict(base, KS=2, STRIDE=2, PAD=0, RELU=False, BOUNDS=False, HAS_BIAS=False,
              RELU_IN=True, W_DESC=2, O_DESC=True), ("bf16",), ("runtime",), w_fwd),
    ]
    wg = dict(KS=3, STRIDE=1, PAD=1, SHIFT_A=False, FLAT_A=False, FLAT_B=False, SUB_N=1,
              DBIAS=True, INT64=False, DOT_F32=False, CAT=False)
    wgrad = [
        ("conv3x3 wgrad + dbias", wg, ALL_DTYPES, _ALL, {}),
        ("conv3x3 wgrad + dbias, valid (PAD=0)", dict(wg, PAD=0), ("bf16",), _BASE, {}),
        ("conv3x3 wgrad + dbias, 64/128 input channels: three taps a tile (SUB_N=3)",
         dict(wg, SUB_N=3), ALL_DTYPES, _ALL, {}),
        ("conv3x3 wgrad + dbias, SUB_N=3, valid (PAD=0)", dict(wg, SUB_N=3, PAD=0), ("bf16",),
         _BASE, {}),
        ("concat conv3x3 wgrad + dbias (CAT)", dict(wg, CAT=True), ALL_DTYPES, _BASE, {}),
        ("concat conv3x3 wgrad + dbias, the halves' same columns (CAT, SUB_N=2)",
         dict(wg, CAT=True, SUB_N=2), ALL_DTYPES, _BASE, {}),
        ("concat conv3x3 wgrad + dbias, SUB_N=3 (CAT: B_L1 tiles only), valid",
         dict(wg, CAT=True, SUB_N=3, PAD=0), ("bf16",), _BASE, {}),
        ("conv3x3 wgrad + dbias, first layer (C_in = 1)", dict(wg, PAD=0, FLAT_B=True),
         ("bf16", "fp32"), ("runtime",), dict(one=("CB", "b_sw"), odd=("b_sh",))),
        ("conv3x3 wgrad + dbias, TF32 off (IEEE fp32)", dict(wg, PRECISION="ieee"), ("fp32",),
         _ALL, {}),
        ("conv3x3 wgrad + dbias, 64-bit offsets", dict(wg, INT64=True), ("bf16",), _BASE, {}),
        ("conv1x1 wgrad + dbias", dict(wg, KS=1, PAD=0), ALL_DTYPES, _BASE,
         dict(odd=("M_GEMM", "CA", "a_sh", "a_sw"))),
        ("conv_transpose2x2 wgrad + dbias", dict(wg, KS=2, STRIDE=2, PAD=0, SHIFT_A=True),
         ALL_DTYPES, _ALL, {}),
    ]
    out = []
    for label, c, d, specs, rt in fwd:
        out.append(("igemm.igemm_fwd_kernel", label, c, True, d, specs, rt))
    out += [("igemm.igemm_wgrad_kernel", label, c, True, d, specs, rt)
            for label, c, d, specs, rt in wgrad]
    # the persistent one-K-tile GEMM: BLOCK_N and BLOCK_K are the launcher's (N and K rounded up)
    ok = dict(PAD=0, SIGN=1, BOUNDS=False, HAS_BIAS=True, RELU=True, RELU_IN=False,
              DOT_F32=False)
    onek = [
        ("first layer fwd (C_in = 1, valid: K = 9)", dict(ok, KS=3, BLOCK_N=64, BLOCK_K=16),
         ALL_DTYPES, _BASE, first),
        ("first layer fwd (C_in = 3, same: input pre-padded, K = 27)",
         dict(ok, KS=3, BLOCK_N=64, BLOCK_K=32), ALL_DTYPES, _BASE,
         dict(odd=("CA", "a_sh", "a_sw", "w_st", "w_sj"))),
        ("dgrad of a 3-channel conv, padded (SIGN=-1: masked window, K = 27)",
         dict(ok, KS=3, PAD=1, SIGN=-1, BOUNDS=True, HAS_BIAS=False, RELU=False, BLOCK_N=64,
              BLOCK_K=32), ("bf16", "fp32"), _BASE, {}),
        ("head fwd (K = 64 channels, N = 2 classes)",
         dict(ok, KS=1, RELU=False, BLOCK_N=16, BLOCK_K=64), ALL_DTYPES, _BASE, head_out),
        ("head dgrad (K = 2 classes, masked by the last ReLU)",
         dict(ok, KS=1, RELU=False, HAS_BIAS=False, RELU_IN=True, BLOCK_N=64, BLOCK_K=16),
         ALL_DTYPES, _BASE, head_dgrad),
    ]   # (no NCHW rows: NCHW data takes igemm_fwd_kernel's narrow configs, utils.use_onek)
    out += [("igemm.igemm_onek_kernel", label, c, True, d, specs, rt)
            for label, c, d, specs, rt in onek]
    out += [
        ("max_pool._max_pool2x2_forward_kernel", "max_pool2x2 fwd", {}, False, ("bf16",), _ALL,
         {}),
        ("max_pool._max_pool2x2_backward_kernel", "max_pool2x2 bwd",
         dict(ADD_DY=False, RELU_MASK=False, DY_CROP=False, RING=False), False, ("bf16",), _ALL, {}),
        ("max_pool._max_pool2x2_backward_kernel", "conv+pool bwd (skip grad + ReLU mask)",
         dict(ADD_DY=True, RELU_MASK=True, DY_CROP=False, RING=False), False, ("bf16",), _ALL, {}),
        ("max_pool._max_pool2x2_backward_kernel",
         "conv+pool bwd, skip grad of the crop (DY_CROP)",
         dict(ADD_DY=True, RELU_MASK=True, DY_CROP=True, RING=False), False, ("bf16",), _ALL, {}),
        ("max_pool._max_pool2x2_backward_kernel",
         "conv+pool bwd, y kept as the skip and the ring (RING)",
         dict(ADD_DY=True, RELU_MASK=True, DY_CROP=True, RING=True), False, ("bf16",), _ALL, {}),
        ("crop_concat._crop_copy_kernel", "crop copy / pad", {}, False, ("bf16",), _ALL, {}),
        ("igemm._split_sum_kernel", "wgrad split-K sum + cast", {}, False, ALL_DTYPES, _BASE,
         {}),
    ]
    return out


_PKG = "_unet_fast_triton_kernels"


def _kernel(path):
    """The autotuned kernel `module.name` of the triton backend. The kernel modules are loaded as
    a bare package of their own, so this tool depends on them only (not on the rest of unet_fast
    or the dispatch registrations)."""
    import importlib
    import types
    if _PKG not in sys.modules:
        pkg = types.ModuleType(_PKG)
        pkg.__path__ = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "unet_fast", "backends", "triton_backend")]
        sys.modules[_PKG] = pkg
    mod, name = path.split(".")
    return getattr(importlib.import_module(f"{_PKG}.{mod}"), name)


def _precision(dtype):
    return "tf32" if dtype == "fp32" else "ieee"


def _int_spec(name, spec, rt, nospec):
    """How an integer argument is specialized under `spec`: "one" (Triton's constant 1), "div16"
    (tt.divisibility 16) or "" (a plain i32)."""
    if spec == "base" and name in rt.get("d16", ()):
        return "div16"
    if spec == "base":
        if _STRIDE_C.match(name):
            return "one"
        return "div16" if _STRIDE_NHW.match(name) else ""
    if name in nospec:           # do_not_specialize: Triton leaves it alone at run time
        return ""
    if name in rt.get("one", ()):
        return "one"
    if name in rt.get("odd", ()):
        return ""
    if name in rt.get("d16", ()):
        return "div16"
    if name.startswith("w_"):    # weight strides: channels_last weights in every spec
        return "one" if _STRIDE_C.match(name) else "div16"
    if spec == "runtime NCHW" and (_STRIDE_C.match(name) or _STRIDE_NHW.match(name)):
        # (n, c, h, w) strides (C*H*W, H*W, W, 1): n divisible, c and h not in general
        return {"w": "one", "n": "div16"}.get(name[-1], "")
    if _STRIDE_C.match(name):    # NHWC: channel stride 1
        return "one"
    return "div16"


def _options(cfg) -> dict:
    """The compile options a config gives Triton's launcher (maxnreg only where it is set)."""
    opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if cfg.maxnreg:
        opts["maxnreg"] = cfg.maxnreg
    return opts


def with_defaults(fn, constexprs: dict) -> dict:
    """`constexprs` plus each constexpr parameter of `fn` that has a default and is not given
    (igemm's A_L1 and B_L1: a config that leaves them out runs the default, off)."""
    out = dict(constexprs)
    for p in fn.params:
        if p.is_constexpr and p.has_default and p.name not in out:
            out[p.name] = p.default
    return out


def compile_one(job):
    """Compile one (variant, config, dtype, arch, spec); returns a result row (dict)."""
    path, label, consts, is_gemm, dtype, cfg_index, arch, spec, rt = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    autotuner = _kernel(path)
    fn = autotuner.fn
    cfg = autotuner.configs[cfg_index]
    constexprs = dict(consts)
    constexprs.update(cfg.kwargs)
    if "PRECISION" in fn.arg_names and "PRECISION" not in constexprs:
        constexprs["PRECISION"] = _precision(dtype)   # tf32 for fp32 unless the variant says
    nospec = {p.name for p in fn.params if p.do_not_specialize}
    constexprs = with_defaults(fn, constexprs)
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            fp32 = name in _FP32_PTRS or (name in _BIAS_PTRS and spec != "base")
            signature[name] = "*fp32" if fp32 else "*" + _TT[dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            how = _int_spec(name, spec, rt, nospec)
            if how == "one":
                signature[name] = "constexpr"
                constexprs[name] = 1
            else:
                signature[name] = "i32"
                if how == "div16":
                    attrs[(i,)] = [["tt.divisibility", 16]]
    cfg_text = ", ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    cfg_text += f", warps={cfg.num_warps}, stages={cfg.num_stages}"
    if cfg.maxnreg:
        cfg_text += f", maxnreg={cfg.maxnreg}"
    row = dict(triton=triton.__version__, kernel=fn.__name__, variant=label, spec=spec,
               dtype=dtype, arch=f"sm_{arch}",
               config=cfg_text, ok=False, error="", regs="", spill="", smem="", mma="",
               seconds=0.0)
    t0 = time.time()
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                           options=_options(cfg))
    except Exception as e:  # a GPU-only compile error is what this tool exists to catch
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        row["seconds"] = time.time() - t0
        return row
    row["seconds"] = time.time() - t0
    ptx = k.asm["ptx"]
    row["smem"] = int(k.metadata.shared)
    if "wgmma.mma_async" in ptx:
        row["mma"] = "wgmma"
    elif "mma.sync" in ptx:
        row["mma"] = "mma"
    else:
        row["mma"] = "-"
    regs, spill = _resource_usage(k.asm["cubin"])
    row["regs"], row["spill"] = regs, spill
    row["ok"] = True
    problems = []
    if row["smem"] > SMEM_LIMIT[arch]:
        problems.append(f"shared memory {row['smem']} > {SMEM_LIMIT[arch]}")
    if is_gemm and dtype in ("bf16", "fp16"):
        want = "wgmma" if arch == 90 else "mma"
        if row["mma"] != want:
            problems.append(f"expected {want} in the PTX, found {row['mma']}")
    row["problems"] = "; ".join(problems)
    return row


def _resource_usage(cubin: bytes):
    """(registers, spill bytes) from cuobjdump's resource usage of the cubin."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                                 text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return "?", "?"
    regs, spill = sass_report.resource_usage(out)
    return ("?" if regs is None else regs), ("?" if spill is None else spill)


_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _narrow(path, spec, rt) -> bool:
    """Whether launches of this variant and spec gather their operands element by element
    (utils.gathers_elementwise): NCHW data, or a channel count that is not a multiple of 16 --
    `base` leaves channel counts plain, and in `runtime` the default U-Net's first layer (one
    input channel) and 2-class head have such counts."""
    if spec != "runtime":
        return True
    counts = ("CA", "CB") if "wgrad" in path else ("CA", "N_GEMM")
    return any(n in rt.get("one", ()) + tuple(rt.get("odd", ())) for n in counts)


def jobs(subset: bool):
    """Every (variant, dtype, config, arch, spec): for a GEMM, the configs the autotuner may run
    for such a launch (utils.launch_configs: the launch's config list, less those that would not
    fit the registers). With `subset`, the specializations real launches get (`runtime`,
    `runtime NCHW`; `base` only in the full run), one config per variant, spec, dtype and arch,
    and only the first dtype -- plus fp32 for the `runtime` spec where a 16-bit dtype comes first
    (fp32 tiles are twice the bytes: the likeliest to spill)."""
    import torch
    out = []
    for path, label, consts, is_gemm, dtypes, specs, rt in _variants():
        configs = _kernel(path).configs
        utils = sys.modules[_PKG + ".utils"]
        wgrad = "wgrad" in path
        sub = consts.get("SUB_N", 1)
        for dtype in dtypes:
            tdt = getattr(torch, _TORCH_DTYPE[dtype])
            precision = consts.get("PRECISION", _precision(dtype))
            for spec in specs:
                if subset and (spec == "base" or (dtype != dtypes[0]
                                                   and not (spec == "runtime" and dtype == "fp32"))):
                    continue
                narrow = _narrow(path, spec, rt)
                for arch in ARCHS:
                    if (consts.get("W_DESC") or consts.get("O_DESC")) and arch < 90:
                        continue   # (TMA: utils.tma_enabled, sm_90 and later)
                    if sub > 1 and not utils.use_sub_tiles(tdt, precision, arch, narrow):
                        continue   # (the launcher takes one tap a tile there)
                    if is_gemm and "onek" not in path:
                        mine = utils.launch_configs(
                            configs, dtype=tdt, precision=precision, arch=arch,
                            narrow=narrow, wgrad=wgrad,
                            pool=consts.get("POOL", False), skip=consts.get("SKIP", False),
                            int64=consts.get("INT64", False),
                            relu_in=consts.get("RELU_IN", False), sub_n=sub,
                            ks=consts.get("KS", 1), flat_k=consts.get("FLAT_K", False),
                            bounds=consts.get("BOUNDS", True),
                            upscatter=consts.get("UPSCATTER", False),
                            head=consts.get("HEAD", 0) > 0)
                        if consts.get("CAT"):   # (the concat: tiles in one of its halves)
                            mine = [c for c in mine if utils.cat_fits(c, 1 << 20, sub)]
                        if consts.get("HEAD"):  # (one column tile of the conv's 64 channels
                            #                      or fewer: prune_gemm)
                            mine = [c for c in mine if c.kwargs["BLOCK_N"] <= 64]
                        cfgs = [configs.index(c) for c in mine]
                    elif "onek" in path:
                        cfgs = [configs.index(c) for c in utils.onek_launch_configs(configs, tdt)]
                    elif "BLOCK_P" in configs[0].kwargs:   # the pool and crop kernels
                        cfgs = [configs.index(c) for c in utils.elemwise_launch_configs(
                            configs, spec == "runtime NCHW")]
                    else:
                        cfgs = list(range(len(configs)))
                    # (a three-B-tile config over the target's shared memory: the autotuner
                    # skips it there, prune_gemm's estimate too)
                    cfgs = [i for i in cfgs if sub == 1 or utils._smem_estimate(
                        configs[i], tdt.itemsize, sub) <= SMEM_LIMIT[arch]]
                    for ci in (cfgs[:1] if subset else cfgs):
                        out.append((path, label, consts, is_gemm, dtype, ci, arch, spec, rt))
    return out


def _passed(r):
    return r["ok"] and not r.get("problems")


def summary(rows):
    """Lines summing the rows up: passes per spec, spills, largest shared memory per target."""
    n_ok = sum(1 for r in rows if _passed(r))
    per_spec = ", ".join(
        f"{spec}: {sum(1 for r in rows if r['spec'] == spec and _passed(r))}/"
        f"{sum(1 for r in rows if r['spec'] == spec)}"
        for spec in SPECS if any(r["spec"] == spec for r in rows))
    kernels = sorted({r["kernel"] for r in rows})
    variants = {(r["kernel"], r["variant"]) for r in rows}
    compiled = [r for r in rows if r["ok"]]
    spills = [r for r in compiled if r["spill"] not in (0, "0")]
    lines = [f"{n_ok} of {len(rows)} compilations passed ({per_spec}); {len(kernels)} kernels, "
             f"{len(variants)} variants."]
    lines.append("Register spills: " + ("none." if not spills else
                                         f"{len(spills)} compilations spill (see `spill`)."))
    for arch in ARCHS:
        mine = [r for r in compiled if r["arch"] == f"sm_{arch}" and isinstance(r["smem"], int)]
        if mine:
            top = max(mine, key=lambda r: r["smem"])
            lines.append(f"Largest shared memory on sm_{arch}: {top['smem']} bytes of "
                         f"{SMEM_LIMIT[arch]} ({top['kernel']}, {top['variant']}, {top['spec']}, "
                         f"{top['dtype']}, {top['config']}).")
    return lines


_COLUMNS = ("triton", "kernel", "variant", "spec", "dtype", "config", "arch", "regs", "spill", "smem",
            "mma", "status")


def read_table(path):
    """The rows of an existing table, as dicts keyed by column name ([] if there is none)."""
    if not os.path.exists(path):
        return []
    lines = [ln for ln in open(path).read().splitlines() if ln.startswith("| ")]
    if not lines:
        return []
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in ln.strip().strip("|").split("|"))))
            for ln in lines[1:] if not ln.startswith("|---")]
    for r in rows:
        for c in ("regs", "spill", "smem"):
            if str(r.get(c, "")).isdigit():
                r[c] = int(r[c])
    return rows


def write_table(rows, path, only=None):
    """One table for every Triton version it was run with: this run's rows replace the rows of
    the same version (those `only(row)` holds for, if given), the other versions' rows are
    kept."""
    import triton
    mine = triton.__version__
    kept = [r for r in read_table(path) if r.get("triton")
            and (r["triton"] != mine or (only is not None and not only(r)))]
    fresh = [dict(r, status="ok" if _passed(r) else (r.get("problems") or r["error"]))
             for r in rows]
    order = {spec: i for i, spec in enumerate(SPECS)}
    merged = sorted(kept + fresh, key=lambda r: (r["kernel"], r["variant"], order[r["spec"]],
                                                 r["dtype"], r["config"], r["arch"], r["triton"]))
    versions = sorted({r["triton"] for r in merged}, reverse=True)
    lines = [
        f"# Triton kernels: ahead-of-time compilation report (Triton {', '.join(versions)})",
        "",
        "Generated by `python tools/triton_aot.py` (no GPU needed), once per Triton version (CI's",
        "always; others, such as the GPU machines' 3.6, on demand: a run keeps the other versions'",
        "rows): every kernel variant the triton",
        "backend launches, with every autotune config it may run there (below), compiled for",
        "sm_90 (H100/H200) and sm_80 (A100).",
        "`mma`: the tensor-core instruction found in the PTX (`wgmma` = Hopper warpgroup MMA,",
        "`mma` = Ampere mma.sync, `-` = none, expected for the memory-bound kernels).",
        "`regs`: registers per thread; `spill`: local memory + stack frame bytes per thread (0 = no spills);",
        "`smem`: shared memory bytes per block. Channel strides are specialized to 1 (NHWC data)",
        "except in the `runtime NCHW` rows. `dtype` is the operands'; a bias and its gradient",
        "are fp32 in the `runtime` rows (as under autocast, which keeps an fp32 bias fp32:",
        "ops._autocast) and in the operands' dtype in the `base` rows.",
        "fp32 GEMMs follow `torch.backends.cudnn.allow_tf32`: TF32 tensor cores when allowed (rows",
        "without a label), FMA units for the `TF32 off (IEEE fp32)` rows.",
        "",
        "`spec`: how the integer arguments are specialized, which changes the code (vector widths,",
        "cp.async tiles). `base`: the same signature for every variant (pointers and n/h/w strides",
        "divisible by 16, channel strides 1, other integers plain). `runtime`: what Triton's",
        "launcher specializes for the default `UNet()` (1 input channel, 2 classes, 64..1024",
        "channels, 572x572 valid) on channels_last data: every integer not in the kernel's",
        "`do_not_specialize` is divisible by 16 (channel counts, GEMM widths, CHUNK, strides)",
        "except where those shapes make it 1 or not a multiple of 16: the first layer's one",
        "input channel (the `runtime` rows of `C_in not a",
        "multiple of 64` and of `first layer (C_in = 1)`); the 2-class head (the conv1x1 rows).",
        "`runtime NCHW`: the same on NCHW data, where w strides are 1 and channel (H*W) and h (W)",
        "strides are in general not multiples of 16. Each variant's runtime exceptions are listed",
        "in `_variants()` of tools/triton_aot.py.",
        "",
        "Which configs a launch may run (`utils.launch_configs`, the rows below): its list -- by",
        "dtype (16-bit, TF32, IEEE fp32) and, where operands are gathered element by element",
        "(NCHW data, channel counts not a multiple of 16: the `base` and `runtime NCHW` rows, the",
        "first layer and the 2-class head), the small `narrow` tiles --, less the configs that",
        "spill registers on that target for that kind of launch (`utils.fits_registers`,",
        "`utils.wgrad_fits_registers`: the rules this table shows). The pool and crop kernels take",
        "1024-element tiles on NCHW data; NCHW launches never take `igemm_onek_kernel`.",
        "At run time the autotuner then times only the configs `utils.prune_gemm` keeps for a",
        "shape: those whose shared-memory estimate (an upper bound of the `smem` column) fits",
        "the device, no tile much wider than N or taller than M, and (forward/dgrad) none whose grid",
        "is less than half a wave when smaller tiles would fill the GPU; of those the best three by",
        "its cost estimate, each timed for 5 + 20 ms instead of Triton's 25 + 100 ms.",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for r in merged:
        lines.append("| " + " | ".join(str(r[c]) for c in _COLUMNS) + " |")
    lines.append("")
    for v in versions:
        lines += [f"Triton {v}: " + line for line in summary(
            [dict(r, ok=r["status"] == "ok", problems="" if r["status"] == "ok" else r["status"],
                  error="")
             for r in merged if r["triton"] == v])]
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", action="store_true",
                    help="one autotune config per variant and spec, first dtype (and fp32 "
                         "for the runtime spec): the test's quick check")
    ap.add_argument("--out", default=None,
                    help="markdown table to write (default: docs/triton_kernels.md for a full "
                         "run, nothing for --subset)")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--kernel", default=None,
                    help="compile only this kernel's rows (e.g. igemm_wgrad_kernel, after a change "
                         "to it); the table keeps every other kernel's rows")
    ap.add_argument("--variant", default=None,
                    help="with --kernel: only its variants whose label contains this (e.g. "
                         "'skip cropped'); the table keeps every other row")
    args = ap.parse_args(argv)
    if args.variant and not args.kernel:
        ap.error("--variant needs --kernel")
    out = args.out
    if out is None and not args.subset:
        out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                           "triton_kernels.md")
    todo = jobs(args.subset)
    if args.kernel:
        todo = [j for j in todo if j[0].split(".")[-1] == args.kernel
                and (args.variant is None or args.variant in j[1])]
        if not todo:
            ap.error(f"no kernel named {args.kernel!r}"
                     + (f" with a variant {args.variant!r}" if args.variant else ""))
    t0 = time.time()
    rows = []
    if args.jobs > 1:
        with cf.ProcessPoolExecutor(args.jobs) as ex:
            rows = list(ex.map(compile_one, todo))
    else:
        rows = [compile_one(j) for j in todo]
    failed = [r for r in rows if not _passed(r)]
    for r in rows:
        flag = "ok  " if _passed(r) else "FAIL"
        print(f"{flag} {r['arch']} {r['dtype']} {r['kernel']} [{r['variant']}] <{r['spec']}> "
              f"{r['config']}: regs={r['regs']} spill={r['spill']} smem={r['smem']} "
              f"mma={r['mma']} {r.get('problems') or r['error']} ({r['seconds']:.1f}s)")
    if out:
        write_table(rows, out, only=None if not args.kernel else (
            lambda r: r["kernel"] == args.kernel
            and (args.variant is None or args.variant in r["variant"])))
        print(f"wrote {out}")
    for line in summary(rows):
        print(line)
    print(f"{len(rows) - len(failed)}/{len(rows)} compilations passed in {time.time() - t0:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
