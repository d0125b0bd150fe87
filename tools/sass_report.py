#!/usr/bin/env python
"""Static check of the built CUDA extension's machine code (no GPU needed).

Reads the SASS of unet_fast._C with cuobjdump (shipped in Triton's wheel, or the CUDA toolkit's)
and reports, per kernel and architecture: registers, shared memory, stack/local memory, local
loads/stores (STL/LDL: spills) and tensor-core instructions (HMMA / HGMMA).

    python tools/sass_report.py                 # regenerate docs/cuda_kernels.md, then check
    python tools/sass_report.py --check         # check only (exit 1 on a problem)
    python tools/sass_report.py --so path/to/_C.so --out report.md

The check fails when an architecture of the default build (sm_80, sm_90) is missing, when a
tensor-core convolution kernel (igemm_kernel<..., true>) has no HMMA/HGMMA, when a convolution
kernel has no LDGSTS (cp.async tile copies), when a CUTLASS sm_90a kernel (csrc/cutlass_sm90) has
no HGMMA (wgmma) or no UTMALDG (TMA loads), or when any kernel uses local memory (stack frame,
spills, STL/LDL). tests/test_cuda_sass.py runs it.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED_ARCHS = ("sm_80", "sm_90")


def resource_usage(text: str):
    """(registers, spill bytes a thread) of a one-kernel cubin from `cuobjdump --dump-resource-usage`
    text; None where it says nothing. Spills are LOCAL plus STACK: ptxas puts spilled registers in
    the stack frame (`ptxas -v`: "4952 bytes stack frame, 11818 bytes spill stores" where LOCAL
    read 0), and a Triton kernel makes no calls, so its stack frame is spills."""
    reg = re.search(r"REG:(\d+)", text)
    local = re.search(r"LOCAL:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    return (int(reg.group(1)) if reg else None,
            int(local.group(1)) + int(stack.group(1)) if local and stack else None)


@dataclass
class Kernel:
    arch: str
    mangled: str
    name: str = ""
    regs: int = 0
    stack: int = 0
    shared: int = 0
    local: int = 0
    hmma: int = 0
    hgmma: int = 0
    local_ops: int = 0
    ldgsts: int = 0  # cp.async global->shared copies (sm_80+)
    utmaldg: int = 0  # TMA tensor loads (sm_90)
    utmastg: int = 0  # TMA tensor stores (sm_90)
    hgmma_batches: int = 0  # HGMMA closing a wgmma batch (gsb0): one per HGMMA = serialized
    mma_kinds: set = field(default_factory=set)
    tma_kinds: set = field(default_factory=set)
    sass: list = field(default_factory=list, repr=False)  # the listing's lines, if asked for

    @property
    def is_conv(self) -> bool:
        return "igemm_kernel" in self.mangled

    @property
    def tensor_cores(self) -> bool:
        """The tensor-core instantiation of the implicit-GEMM engine (template flag TC = true)."""
        return self.is_conv and bool(re.search(r"ELb1EEEv", self.mangled))

    @property
    def is_cutlass(self) -> bool:
        """A CUTLASS kernel of csrc/cutlass_sm90 (cutlass::device_kernel<...>)."""
        return "cutlass13device_kernel" in self.mangled

    @property
    def wgmma_serialized(self) -> bool:
        """Every HGMMA its own batch, waited for before the next: what ptxas emits when it cannot
        pipeline wgmma (warning C7510, e.g. a call such as an assert's inside the region)."""
        return self.hgmma > 2 and self.hgmma_batches == self.hgmma

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0 or self.local_ops > 0


def find_cuobjdump() -> str | None:
    try:
        import triton
        cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.access(cand, os.X_OK):
            return cand
    except ImportError:
        pass
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.access(os.path.join(home, "bin", "cuobjdump"), os.X_OK):
            return os.path.join(home, "bin", "cuobjdump")
    return shutil.which("cuobjdump")


def find_extension() -> str | None:
    """The extension built in this checkout (build_ext --inplace, an editable install), else the
    importable unet_fast._C. In that order: run from a second worktree, the import finds the
    checkout the venv's editable install points at, whose build is not the one to report."""
    hits = glob.glob(os.path.join(ROOT, "unet_fast", "_C*.so"))
    if hits:
        return hits[0]
    try:
        import importlib.util
        spec = importlib.util.find_spec("unet_fast._C")
        if spec is not None and spec.origin:
            return spec.origin
    except ImportError:
        pass
    return None


def _run(cmd) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def demangle(names) -> dict:
    names = list(names)
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


# conv::Operator of a CUTLASS 3.x conv kernel, as it appears in the mangled ConvProblemShape.
_CUTLASS_PASS = {"0": "fprop", "1": "dgrad", "2": "wgrad"}


def _short_cutlass(mangled: str, name: str) -> str:
    """cutlass::device_kernel<...> names run to thousands of characters: the pass, the MMA tile
    and the epilogue's fusion say which unit it is."""
    m = re.search(r"ConvProblemShapeILNS\w*?8OperatorE(\d)", mangled)
    split_k = "WgradUnit" in name  # our split-K device entry (conv3x3_wgrad.cuh)
    conv = _CUTLASS_PASS.get(m.group(1), "?") if m else ("wgrad" if split_k else "?")
    tile = ""
    if split_k:
        conv += " split-K"
        # WgradUnit<Element, M, N>: cutlass::bfloat16_t or cutlass::half_t (a back-reference
        # into the name, S_), the tile
        t = re.search(r"WgradUnitIN\w*?(\d+)(bfloat16|half)_tELi(\d+)ELi(\d+)EE", mangled)
        tile = f" tile {t.group(3)}x{t.group(4)}" if t else ""
    # the wgmma atom names the element type: SM90_64x128x16_F32BF16BF16 or ..._F32F16F16 (the
    # wgrad's name holds no atom: its unit's element type)
    mma = re.search(r"MMA_(\d+x\d+x\d+)_F32(BF16|F16)\2", mangled)
    if mma:
        elem = {"BF16": "bf16", "F16": "f16"}[mma.group(2)]
    else:
        elem = {"bfloat16": "bf16", "half": "f16"}.get(t.group(2) if split_k and t else "", "?")
    # the up-conv's dgrad (up2x2_dgrad.cuh) is an fprop with the dgrad's mask epilogue, its
    # forward (up2x2_fprop.cuh) an fprop whose epilogue has no ReLU
    op = f"conv3x3 {conv}"
    if conv == "fprop" and "ReluGradMask" in name:
        op = "up2x2 dgrad"
    elif conv == "fprop" and "ReLu" not in name:
        op = "up2x2 fprop"
    return f"cutlass sm90 {op} {elem}{tile}" + (f" (wgmma {mma.group(1)})" if mma else "")


def _short(name: str) -> str:
    name = name.replace("unet_fast::", "").replace("(anonymous namespace)::", "").replace("igemm::", "")
    name = re.sub(r"\(.*\)$", "", name)  # drop the parameter list
    name = re.sub(r"^void ", "", name)
    m = re.match(r"igemm_kernel<(.*), (true|false)>$", name)
    if m:  # igemm_kernel<Problem<T[, pool]>, TC>
        prob, tc = m.groups()
        prob = prob.replace("Conv3x3Fprop<", "Conv3x3Fprop<").replace(", true>", ", pool>").replace(
            ", false>", ">")
        name = f"igemm {prob} [{'tensor cores' if tc == 'true' else 'fp32 FMA'}]"
    return name


def analyse(so: str, cuobjdump: str, keep_sass: bool = False) -> list[Kernel]:
    """The kernels of `so`; with keep_sass, each keeps its SASS lines (for tools/kernel_model.py,
    which counts their loops: one cuobjdump run for both)."""
    kernels: dict[tuple, Kernel] = {}
    arch = None
    cur = None
    for line in _run([cuobjdump, "-res-usage", so]).splitlines():
        m = re.match(r"\s*arch = (sm_\d+a?)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            cur = kernels.setdefault((arch, m.group(1)), Kernel(arch, m.group(1)))
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and cur is not None:
            cur.regs, cur.stack, cur.shared, cur.local = map(int, m.groups())
            cur = None
    arch = None
    cur = None
    for line in _run([cuobjdump, "-sass", so]).splitlines():
        m = re.match(r"\s*arch = (sm_\d+a?)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            cur = kernels.setdefault((arch, m.group(1)), Kernel(arch, m.group(1)))
            cur.sass = []  # a kernel in two cubins: one copy of its listing
            continue
        if cur is None or "/*" not in line:
            continue
        if keep_sass:
            cur.sass.append(line)
        m = re.search(r"\b(HGMMA|HMMA)(\.[A-Z0-9x.]+)?", line)
        if m:
            if m.group(1) == "HGMMA":
                cur.hgmma += 1
                cur.hgmma_batches += "gsb0" in line
            else:
                cur.hmma += 1
            cur.mma_kinds.add(m.group(0))
        if re.search(r"\b(STL|LDL)(\.[A-Z0-9]+)?\b", line):
            cur.local_ops += 1
        if re.search(r"\bLDGSTS\b", line):
            cur.ldgsts += 1
        m = re.search(r"\b(UTMALDG|UTMASTG)(\.[A-Z0-9.]+)?", line)
        if m:
            if m.group(1) == "UTMALDG":
                cur.utmaldg += 1
            else:
                cur.utmastg += 1
            cur.tma_kinds.add(m.group(0))
    names = demangle({k.mangled for k in kernels.values()})
    for k in kernels.values():
        full = names.get(k.mangled, k.mangled)
        k.name = _short_cutlass(k.mangled, full) if k.is_cutlass else _short(full)
        if k.is_cutlass and "(wgmma" not in k.name and k.mma_kinds:
            k.name += f" ({', '.join(sorted(k.mma_kinds))})"
    return sorted(kernels.values(), key=lambda k: (not k.is_conv, not k.is_cutlass, k.name, k.arch))


def problems(kernels: list[Kernel]) -> list[str]:
    out = []
    archs = {k.arch for k in kernels}
    for a in REQUIRED_ARCHS:
        if a not in archs:
            out.append(f"no {a} code in the extension (built archs: {sorted(archs)})")
        elif not any(k.tensor_cores and k.arch == a for k in kernels):
            out.append(f"no tensor-core convolution kernel for {a}")
    for k in kernels:
        if k.tensor_cores and k.hmma + k.hgmma == 0:
            out.append(f"{k.arch} {k.name}: no HMMA/HGMMA instructions")
        if k.is_conv and k.ldgsts == 0:
            out.append(f"{k.arch} {k.name}: no LDGSTS (cp.async) in the tile loads")
        if k.is_cutlass and k.hgmma == 0:
            out.append(f"{k.arch} {k.name}: no HGMMA (wgmma) instructions")
        if k.is_cutlass and k.utmaldg == 0:
            out.append(f"{k.arch} {k.name}: no UTMALDG (TMA loads)")
        if k.wgmma_serialized:
            out.append(f"{k.arch} {k.name}: every wgmma waited for before the next (serialized)")
        if k.spills:
            out.append(f"{k.arch} {k.name}: uses local memory (stack {k.stack} B, local {k.local} B, "
                       f"{k.local_ops} STL/LDL)")
    return out


def markdown(kernels: list[Kernel], so: str) -> str:
    import platform
    try:
        import torch
        tv = f"torch {torch.__version__} (CUDA {torch.version.cuda})"
    except ImportError:
        tv = "torch not importable"
    lines = [
        "# CUDA kernels of unet_fast._C: resources and tensor-core instructions",
        "",
        "Generated by `python tools/sass_report.py` from the SASS of the built extension "
        "(`cuobjdump -res-usage` and `cuobjdump -sass`); do not edit by hand.",
        f"Built with {tv} on {platform.python_implementation()} {platform.python_version()}.",
        "",
        "- regs: registers per thread; smem: static shared memory per CTA (bytes);",
        "- local: stack frame + local memory (bytes) and STL/LDL instructions; all must be 0 (no spills);",
        "- MMA: tensor-core instructions in the SASS (HMMA.16816 = fp16/bf16 m16n8k16, "
        "HMMA.1684.F32.TF32 = TF32 m16n8k4; the `fp32 FMA` kernels are the exact float32 path used "
        "when TF32 is disallowed).",
        "- LDGSTS: cp.async instructions (global -> shared tile copies of the double-buffered mainloop).",
        "- TMA: UTMALDG/UTMASTG instructions of the CUTLASS sm_90a kernels (csrc/cutlass_sm90; their "
        "smem column is the static part only: the pipeline's stages are dynamic shared memory).",
        "",
        "| kernel | arch | regs | smem | local (B / STL+LDL) | LDGSTS | TMA | MMA instructions |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for k in kernels:
        mma = ", ".join(f"{kind} x{n}" for kind, n in _mma_counts(k)) or "-"
        tma = ", ".join(sorted(k.tma_kinds)) or "-"
        lines.append(f"| `{k.name}` | {k.arch} | {k.regs} | {k.shared} | {k.stack + k.local} / {k.local_ops} "
                     f"| {k.ldgsts if k.is_conv else '-'} | {tma} | {mma} |")
    found = problems(kernels)
    lines += ["", "Check: " + ("passed (HMMA in every tensor-core convolution kernel on sm_80 and sm_90, "
                               "LDGSTS in every convolution kernel, HGMMA and UTMALDG in every CUTLASS "
                               "kernel, no kernel uses local memory)." if not found else "FAILED"), ""]
    lines += [f"- {p}" for p in found]
    return "\n".join(lines).rstrip() + "\n"


def _mma_counts(k: Kernel):
    # counts per instruction kind are not kept separately; show kinds with the kernel's total
    if not k.mma_kinds:
        return []
    total = k.hmma + k.hgmma
    return [(" / ".join(sorted(k.mma_kinds)), total)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--so", help="the extension's shared library (default: the one built in this checkout, "
                                 "else the importable unet_fast._C)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "cuda_kernels.md"))
    ap.add_argument("--check", action="store_true", help="only check, do not write the report")
    args = ap.parse_args(argv)
    so = args.so or find_extension()
    if not so:
        print("unet_fast._C is not built: pip install --no-build-isolation -e .", file=sys.stderr)
        return 2
    tool = find_cuobjdump()
    if not tool:
        print("cuobjdump not found (it ships with triton: pip install triton)", file=sys.stderr)
        return 2
    kernels = analyse(so, tool)
    if not kernels:
        print(f"{so} contains no CUDA kernels (built without CUDA?)", file=sys.stderr)
        return 2
    if not args.check:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(markdown(kernels, so))
        print(f"wrote {args.out} ({len(kernels)} kernels)")
    found = problems(kernels)
    for p in found:
        print("PROBLEM:", p, file=sys.stderr)
    conv = [k for k in kernels if k.tensor_cores]
    cut = [k for k in kernels if k.is_cutlass]
    print(f"{len(kernels)} kernels; {len(conv)} tensor-core conv kernels, "
          f"{sum(1 for k in conv if k.hmma + k.hgmma)} with HMMA/HGMMA; {len(cut)} CUTLASS sm_90a kernels, "
          f"{sum(1 for k in cut if k.hgmma and k.utmaldg)} with HGMMA and UTMALDG; "
          f"{sum(1 for k in kernels if k.spills)} using local memory")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
