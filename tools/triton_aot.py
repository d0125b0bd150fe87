#!/usr/bin/env python
"""Ahead-of-time compile every Triton kernel of unet_fast with every autotune config, no GPU needed.

For each kernel variant (the constexpr combinations the backend launches), each autotune config,
each dtype and each target (sm_90 Hopper, sm_80 Ampere) this runs `triton.compile` with an explicit
`GPUTarget`, then reads
- the PTX: the GEMM kernels in bf16/fp16 must use the tensor cores -- `wgmma.mma_async` on sm_90,
  `mma.sync` on sm_80 -- or the run fails;
- the cubin (cuobjdump from Triton's wheel): registers, local memory (spills) per thread;
- the metadata: shared memory per block, which must fit the target (227 KiB on sm_90, 163 KiB on
  sm_80; a config over that is reported, and autotuning skips it there at run time).

Writes a markdown table (default docs/triton_kernels.md). Must run without TRITON_INTERPRET (the
interpreter replaces the kernels); it removes it from its own environment before importing.

    python tools/triton_aot.py                 # everything, writes docs/triton_kernels.md
    python tools/triton_aot.py --subset        # one config per variant, bf16 (the test's check)
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

os.environ.pop("TRITON_INTERPRET", None)

ARCHS = (90, 80)
SMEM_LIMIT = {90: 232448, 80: 166912}   # opt-in shared memory per block, bytes
_TT = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
_STRIDE_C = re.compile(r"^[a-z]+_sc$")      # channel strides: 1 on NHWC data
_STRIDE_NHW = re.compile(r"^[a-z]+_s[nhw]$")


def _variants():
    """(kernel attribute path, label, constexprs, is_gemm, dtypes) of every launch the backend
    makes. Imported lazily so that worker processes import triton without the interpreter."""
    base = dict(STRIDE=1, PAD=1, SIGN=1, MASK_A=False, HAS_BIAS=True, RELU=True, POOL=False,
                UPSCATTER=False, FLAT_K=False, DOT_F32=False)
    conv = dict(base, KS=3)
    fwd = [
        ("conv3x3_relu fwd", conv, ("bf16", "fp16", "fp32")),
        ("conv3x3_relu fwd, valid (PAD=0)", dict(conv, PAD=0), ("bf16",)),
        ("conv3x3_relu fwd, TF32 off (IEEE fp32)", dict(conv, PRECISION="ieee"), ("fp32",)),
        ("conv3x3_relu_pool fwd", dict(conv, POOL=True), ("bf16", "fp16")),
        ("conv3x3_relu fwd, C_in not a multiple of 64", dict(conv, FLAT_K=True), ("bf16",)),
        ("conv3x3 dgrad (ReLU mask)", dict(conv, SIGN=-1, MASK_A=True, HAS_BIAS=False,
                                            RELU=False), ("bf16", "fp16", "fp32")),
        ("conv3x3 dgrad (ReLU mask), TF32 off (IEEE fp32)",
         dict(conv, SIGN=-1, MASK_A=True, HAS_BIAS=False, RELU=False, PRECISION="ieee"), ("fp32",)),
        ("conv3x3 dgrad (pool variant, no mask)", dict(conv, SIGN=-1, HAS_BIAS=False, RELU=False),
         ("bf16",)),
        ("conv1x1 fwd", dict(base, KS=1, PAD=0, RELU=False), ("bf16", "fp16")),
        ("conv1x1 dgrad (2-class head: C_in not a multiple of 64)",
         dict(base, KS=1, PAD=0, RELU=False, HAS_BIAS=False, FLAT_K=True), ("bf16",)),
        ("conv_transpose2x2 fwd (into concat slice)", dict(base, KS=1, PAD=0, RELU=False,
                                                            UPSCATTER=True), ("bf16", "fp16")),
        ("conv_transpose2x2 dgrad", dict(base, KS=2, STRIDE=2, PAD=0, RELU=False,
                                         HAS_BIAS=False), ("bf16", "fp16")),
    ]
    wg = dict(STRIDE=1, PAD=1, SIGN=1, MASK_B=True, DBIAS=1, DOT_F32=False)
    wgrad = [
        ("conv3x3 wgrad + dbias (ReLU mask)", dict(wg, KS=3), ("bf16", "fp16", "fp32")),
        ("conv3x3 wgrad + dbias (ReLU mask), TF32 off (IEEE fp32)",
         dict(wg, KS=3, PRECISION="ieee"), ("fp32",)),
        ("conv3x3 wgrad + dbias (pool variant)", dict(wg, KS=3, MASK_B=False), ("bf16",)),
        ("conv1x1 wgrad + dbias", dict(wg, KS=1, PAD=0, MASK_B=False), ("bf16",)),
        ("conv_transpose2x2 wgrad + dbias", dict(wg, KS=2, STRIDE=2, PAD=0, MASK_B=False,
                                                 DBIAS=2), ("bf16", "fp16")),
    ]
    out = [("igemm.igemm_fwd_kernel", label, c, True, d) for label, c, d in fwd]
    out += [("igemm.igemm_wgrad_kernel", label, c, True, d) for label, c, d in wgrad]
    out += [
        ("max_pool._max_pool2x2_forward_kernel", "max_pool2x2 fwd", {}, False, ("bf16",)),
        ("max_pool._max_pool2x2_backward_kernel", "max_pool2x2 bwd",
         dict(ADD_DY=False, RELU_MASK=False), False, ("bf16",)),
        ("max_pool._max_pool2x2_backward_kernel", "conv+pool bwd (skip grad + ReLU mask)",
         dict(ADD_DY=True, RELU_MASK=True), False, ("bf16",)),
        ("crop_concat._crop_copy_kernel", "crop copy / pad", {}, False, ("bf16",)),
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


def compile_one(job):
    """Compile one (variant, config, dtype, arch); returns a result row (dict)."""
    path, label, consts, is_gemm, dtype, cfg_index, arch = job
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
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif _STRIDE_C.match(name):
            signature[name] = "constexpr"
            constexprs[name] = 1
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in ("r_ptr", "db_ptr") else "*" + _TT[dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if _STRIDE_NHW.match(name):
                attrs[(i,)] = [["tt.divisibility", 16]]
    cfg_text = ", ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    cfg_text += f", warps={cfg.num_warps}, stages={cfg.num_stages}"
    row = dict(kernel=fn.__name__, variant=label, dtype=dtype, arch=f"sm_{arch}", config=cfg_text,
               ok=False, error="", regs="", spill="", smem="", mma="", seconds=0.0)
    t0 = time.time()
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
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
    reg = re.search(r"REG:(\d+)", out)
    local = re.search(r"LOCAL:(\d+)", out)
    return (int(reg.group(1)) if reg else "?"), (int(local.group(1)) if local else "?")


_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def jobs(subset: bool):
    import torch
    out = []
    for path, label, consts, is_gemm, dtypes in _variants():
        configs = _kernel(path).configs
        utils = sys.modules[_PKG + ".utils"]
        for dtype in (dtypes[:1] if subset else dtypes):
            tdt = getattr(torch, _TORCH_DTYPE[dtype])
            cfgs = [i for i, c in enumerate(configs) if not is_gemm or utils.config_for_dtype(c, tdt)]
            for ci in (cfgs[:1] if subset else cfgs):
                for arch in ARCHS:
                    out.append((path, label, consts, is_gemm, dtype, ci, arch))
    return out


def write_table(rows, path):
    rows = sorted(rows, key=lambda r: (r["kernel"], r["variant"], r["dtype"], r["config"], r["arch"]))
    lines = [
        "# Triton kernels: ahead-of-time compilation report",
        "",
        "Generated by `python tools/triton_aot.py` (no GPU needed): every kernel variant the triton",
        "backend launches, with every autotune config, compiled for sm_90 (H100/H200) and sm_80 (A100).",
        "`mma`: the tensor-core instruction found in the PTX (`wgmma` = Hopper warpgroup MMA,",
        "`mma` = Ampere mma.sync, `-` = none, expected for the memory-bound kernels).",
        "`regs`: registers per thread; `spill`: local memory bytes per thread (0 = no spills);",
        "`smem`: shared memory bytes per block. Channel strides are specialized to 1 (NHWC data).",
        "fp32 GEMMs follow `torch.backends.cudnn.allow_tf32`: TF32 tensor cores when allowed (rows",
        "without a label), FMA units for the `TF32 off (IEEE fp32)` rows.",
        "",
        "At run time the autotuner times only the configs `utils.prune_gemm` keeps for a shape: the",
        "dtype's list, those whose shared-memory estimate (an upper bound of the `smem` column) fits",
        "the device, no tile much wider than N or taller than M, and (forward/dgrad) none whose grid",
        "is less than half a wave when smaller tiles would fill the GPU. Each config is timed for",
        "5 + 20 ms instead of Triton's 25 + 100 ms.",
        "",
        "| kernel | variant | dtype | config | arch | regs | spill | smem | mma | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = "ok" if r["ok"] and not r.get("problems") else (r.get("problems") or r["error"])
        lines.append(f"| {r['kernel']} | {r['variant']} | {r['dtype']} | {r['config']} | "
                     f"{r['arch']} | {r['regs']} | {r['spill']} | {r['smem']} | {r['mma']} | "
                     f"{status} |")
    n_ok = sum(1 for r in rows if r["ok"] and not r.get("problems"))
    lines += ["", f"{n_ok} of {len(rows)} compilations passed.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", action="store_true",
                    help="one autotune config and one dtype per variant (a quick check)")
    ap.add_argument("--out", default=None,
                    help="markdown table to write (default: docs/triton_kernels.md for a full "
                         "run, nothing for --subset)")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    out = args.out
    if out is None and not args.subset:
        out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                           "triton_kernels.md")
    todo = jobs(args.subset)
    t0 = time.time()
    rows = []
    if args.jobs > 1:
        with cf.ProcessPoolExecutor(args.jobs) as ex:
            rows = list(ex.map(compile_one, todo))
    else:
        rows = [compile_one(j) for j in todo]
    failed = [r for r in rows if not r["ok"] or r.get("problems")]
    for r in rows:
        flag = "FAIL" if (not r["ok"] or r.get("problems")) else "ok  "
        print(f"{flag} {r['arch']} {r['dtype']} {r['kernel']} [{r['variant']}] {r['config']}: "
              f"regs={r['regs']} spill={r['spill']} smem={r['smem']} mma={r['mma']} "
              f"{r.get('problems') or r['error']} ({r['seconds']:.1f}s)")
    if out:
        write_table(rows, out)
        print(f"wrote {out}")
    print(f"{len(rows) - len(failed)}/{len(rows)} compilations passed in {time.time() - t0:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
