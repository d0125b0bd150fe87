#!/usr/bin/env python
"""Static performance model of the kernels one training step launches: a model, not a measurement.

No GPU is needed. For the paper U-Net (572x572, batch 8) and the "same" U-Net (512x512, batch 16),
one bf16-autocast training step (forward + backward, NHWC, backend="triton") is run with every
Triton kernel launch *recorded instead of executed* (CPU tensors, outputs left uninitialized):
kernel, arguments, the configs the autotuner would time (its own pruning, with an H100/H200's SM
count and shared memory), and the layer and pass the launch belongs to. The PyTorch (aten) kernels
the step also runs (weight casts, split-K sums, ...) are recorded through a dispatch mode.

Each distinct (kernel, specialization, config) is then compiled for sm_90 exactly as Triton's
launcher would compile it (same specialization of the integer arguments and pointer alignments),
its SASS is read with nvdisasm (shipped in Triton's wheel), the mainloop is found (the innermost
loop holding the tensor-core instructions) and counted per warp and iteration: instructions by
class, tensor-core instructions and the cycles they need, bytes loaded. From those counts and the
launch's grid, a ceiling is predicted for every launch:

    per CTA iteration:  tensor cycles = MMA work / (2048 bf16 FMA per SM and cycle)
                        issue cycles  = instructions per warp x warps per SM sub-partition
                        L2 cycles     = bytes the iteration loads / L2 bytes per SM and cycle
                                        (less what the L1 serves, for A_L1 configs)
    per tile:           iterations x max(the three) + the code outside the mainloop (issued
                        once) + one pipeline fill latency; with k CTAs per SM (occupancy) they
                        overlap: that / k, but at least the tile's total on the busiest resource
    per launch:         the busiest SM's tiles (ceil(CTAs / SMs); a weight gradient's shorter
                        last slice: CTAs to the SM that frees first) x the tile's time, no faster
                        than its unique DRAM bytes at the measured copy bandwidth, plus an
                        inter-kernel gap.

Memory-bound kernels (no mainloop) are bounded by their bytes at the DRAM bandwidth and by their
instruction issue; aten kernels are taken at their DRAM roofline (an optimistic guess: they are
not ours to read). The machine's figures are in `Machine` below; the ones measured on the GPU
machines (bf16 matmul 790 TFLOP/s, copy 4.3 TB/s) are labelled so, the rest are assumptions.

    python tools/kernel_model.py                     # both models -> docs/kernel_model.md + .json
    python tools/kernel_model.py --models valid572:1 --no-write    # quick look, batch 1
    python tools/kernel_model.py --extension         # the CUDA extension's part only: JSON

The CUDA extension (`backend="cuda"`, section 7): when unet_fast._C is built, its kernels are read
from the library's own SASS (cuobjdump): the CUTLASS sm_90a units' consumer (wgmma) and producer
(TMA) loops per K step, with per-layer predictions for the convolutions they run, the
hand-written kernels' mainloop counts, and the whole explicit backend="cuda" step (its extension
ops recorded on meta tensors, every launch priced: `cuda_step`).

This is an instrument for finding issue-bound loops, synchronous gathers and spills before a GPU
sees them. Every figure it prints is a model; the GPU suite measures.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

# Real kernels: they are compiled, never run. Only when run as the tool (its worker processes
# inherit the environment): a test that imports this module keeps its interpreter.
if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# ============================================================================ the machine
@dataclasses.dataclass(frozen=True)
class Machine:
    """An H200 (H100 SXM: same SMs and tensor cores, less DRAM bandwidth)."""
    name: str = "H200 (132 SMs)"
    sms: int = 132
    peak_flops: float = 790e12       # measured: 8192^3 bf16 matmul on the GPU machines
    dram_bw: float = 4.3e12          # measured: device-to-device copy, bytes read + written
    l2_bw: float = 10e12             # ASSUMPTION: L2 -> SM bandwidth (not measured here yet)
    fma_per_clk: int = 2048          # dense bf16/fp16 wgmma FMA per SM and cycle (4096 FLOP)
    tf32_fma_per_clk: int = 1024     # tf32 wgmma: half the 16-bit rate
    mma_sync_fma_per_clk: int = 1024  # ASSUMPTION: mma.sync (HMMA) on Hopper, half of wgmma
    smem_per_sm: int = 233472        # 228 KiB, of which a block may take 227 KiB
    smem_reserved_per_cta: int = 1024
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    max_ctas_per_sm: int = 32
    fill_latency_clk: int = 800      # ASSUMPTION: latency before a tile's first MMA (L2 hit)
    launch_gap_s: float = 2e-6       # ASSUMPTION: idle time between two dependent kernels

    @property
    def clock(self) -> float:
        """The clock at which the tensor cores' 4096 FLOP per SM and cycle give the measured
        peak (lower than the boost clock: the measured peak is what a real GEMM sustains)."""
        return self.peak_flops / (2 * self.fma_per_clk * self.sms)

    @property
    def l2_bytes_per_clk_sm(self) -> float:
        return self.l2_bw / self.clock / self.sms


H200 = Machine()


# ============================================================================ the model configs
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    in_channels: int
    num_classes: int
    size: int
    padding: str
    batch: int
    base_channels: int = 64
    depth: int = 4


MODELS = {
    "valid572": ModelConfig("valid572", 1, 2, 572, "valid", 8),   # the paper's U-Net
    "same512": ModelConfig("same512", 3, 2, 512, "same", 16),
}


# ============================================================================ 1. record a step
@dataclasses.dataclass
class Launch:
    kernel: str                  # "igemm.igemm_fwd_kernel", or "aten.<op>"
    phase: str                   # "fwd" | "bwd"
    layer: str
    args: dict                   # name -> ("tensor", dtype, shape, strides, elt, spec) | ("int", v, spec)
    constexprs: dict
    configs: list = dataclasses.field(default_factory=list)  # [(kwargs, warps, stages, grid, maxnreg)]
    tune_key: tuple = ()
    bytes: int = 0               # aten: bytes read + written


def _tensor_desc(t, spec):
    """("tensor", Triton pointer type, shape, strides, element size, alignment flag)."""
    return ("tensor", spec[0], tuple(t.shape), tuple(t.stride()), t.element_size(), spec[1])


class _Recorder:
    """Stands in for a Triton kernel (autotuned or not): `kernel[grid](*args, **kwargs)` records
    the launch instead of running it."""

    def __init__(self, path, kernel, state):
        self.path, self.kernel, self.state = path, kernel, state

    def __getitem__(self, grid):
        return functools.partial(self._launch, grid)

    def _launch(self, grid, *args, **kwargs):
        from triton.runtime.autotuner import Autotuner
        k = self.kernel
        if isinstance(k, Autotuner):
            k.nargs = dict(zip(k.fn.arg_names, args))
            try:
                configs = getattr(k, "prune_only", k.prune_configs)(kwargs)   # (never compiles)
            finally:
                # as Autotuner.run does: a reference kept here would make autograd copy a
                # gradient this launch wrote (the bias's) where it takes it over in a real step
                k.nargs = None
        else:
            configs = [None]
        self.state.launches.append(describe_launch(self.path, k, self.state, grid, args, kwargs,
                                                   configs))


def describe_launch(path, kernel, state, grid, args, kwargs, configs) -> "Launch":
    """A Launch of `kernel` (autotuned or not) with these arguments and candidate configs (None:
    a plain kernel), in the layer and phase `state` is in."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.autotuner import Autotuner
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    named = dict(zip(fn.arg_names, args))
    # (the interpreter's kernels have no params: their specialization is never compiled)
    params = getattr(fn, "params", None)
    nospec = {p.name for p in params if p.do_not_specialize} if params is not None else set()
    desc = {}
    for name in ([p.name for p in params] if params is not None else fn.arg_names):
        if name not in named:
            continue
        v = named[name]
        spec = native_specialize_impl(CUDABackend, v, False, name not in nospec, True)
        if hasattr(v, "data_ptr"):
            desc[name] = _tensor_desc(v, spec)
        else:
            desc[name] = ("int" if isinstance(v, int) else type(v).__name__, v, spec)
    if isinstance(kernel, Autotuner):
        # Autotuner.run's key: the key's names among the launch's arguments, the constexpr
        # keywords included (a dgrad and a forward of one shape are two keys), then the tensors'
        # dtypes
        every = dict(named, **kwargs)
        key = tuple(every[n] for n in kernel.keys if n in every) + tuple(
            str(v.dtype) for v in every.values() if hasattr(v, "dtype"))
    else:
        key = ()
    rows = []
    for c in configs:
        meta = dict(named, **kwargs, **(c.kwargs if c else {}))
        g = grid(meta) if callable(grid) else grid
        g = tuple(int(x) for x in g) + (1,) * (3 - len(g))
        rows.append(((dict(c.kwargs) if c else {}), c.num_warps if c else kwargs.get("num_warps", 4),
                     c.num_stages if c else kwargs.get("num_stages", 3), g,
                     c.maxnreg if c else None))
    return Launch(path, state.phase, _layer_of(state, kwargs), desc, dict(kwargs), rows, key)


def _layer_of(state, kwargs) -> str:
    """The layer a launch belongs to. A fused op runs several layers ("up.3.conv.2+head": the
    last conv and the 1x1 head); its forward is one kernel, but its backward runs each layer's
    own kernels, named here by their window: a 1x1 one (KS = 1) is the last layer's, a 3x3 one
    the first's, and a kernel without a window (the weight gradient's split sum) follows the
    launch before it."""
    layer = state.layer or "?"
    parts = layer.split("+")
    if len(parts) < 2 or state.phase != "bwd":
        return layer
    ks = kwargs.get("KS")
    if ks is not None:
        state.part = parts[-1] if ks == 1 else parts[0]
    return state.part if state.part in parts else layer


class _State:
    def __init__(self):
        self.launches: list[Launch] = []
        self.phase = "fwd"
        self.layer = None
        self.part = None             # the layer of a fused op's last backward kernel (_layer_of)
        self.kernels = {}            # path -> the real kernel object


# aten ops that launch no kernel (views, metadata, allocation)
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "view", "_unsafe_view",
              "as_strided", "expand", "permute", "t", "transpose", "slice", "select", "alias",
              "detach", "unsqueeze", "squeeze", "reshape", "split", "unbind", "lift_fresh",
              "_to_copy_noop", "set_", "resize_", "view_as", "unfold", "_reshape_alias",
              "new_empty_strided", "is_same_size", "sym_size", "sym_stride", "size", "stride"}


def _aten_recorder(state):
    import torch
    from torch._library.custom_ops import _maybe_get_opdef
    from torch.utils._python_dispatch import TorchDispatchMode

    class AtenRecorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.namespace != "aten":
                # one of our custom ops: run its Python body with this mode still on, so the
                # aten kernels inside it (weight re-layouts, split-K sums) are recorded too
                opdef = _maybe_get_opdef(func)
                if opdef is not None:
                    with self:
                        return opdef._init_fn(*args, **kwargs)
                return func(*args, **kwargs)
            out = func(*args, **kwargs)
            name = func.overloadpacket.__name__
            returns = func._schema.returns
            if name in _NO_KERNEL or name.startswith("_has_") or "view" in name:
                return out
            ts_in = [a for a in torch.utils._pytree.tree_leaves((args, kwargs))
                     if isinstance(a, torch.Tensor)]
            ts_out = [a for a in torch.utils._pytree.tree_leaves(out) if isinstance(a, torch.Tensor)]
            # an op that may return its input (aten.to, contiguous: seen unexpanded inside our
            # custom ops) launches a kernel only when it did not
            if returns and returns[0].alias_info is not None and not name.endswith("_"):
                ins = {t.untyped_storage().data_ptr() for t in ts_in}
                if not ts_out or any(t.untyped_storage().data_ptr() in ins for t in ts_out):
                    return out
            nbytes = sum(t.numel() * t.element_size() for t in ts_in + ts_out)
            if nbytes == 0 or not ts_out:
                return out
            state.launches.append(Launch(
                "aten." + name, state.phase, state.layer or "?",
                {"out": _tensor_desc(ts_out[0], (str(ts_out[0].dtype), ""))}, {}, [], (),
                nbytes))
            return out

    return AtenRecorder()


@contextlib.contextmanager
def _backend_unchecked(name: str):
    """Within: the dispatch layer takes `name` on any device, with no backend or op check (the
    step is recorded, never run)."""
    from unet_fast import _dispatch
    _dispatch.ensure_backends()
    saved_reason = _dispatch._backend_reason[name]
    _dispatch._backend_reason[name] = lambda: None
    saved = {op: impls[name].supports for op, impls in _dispatch._impls.items() if name in impls}
    for op in saved:
        _dispatch._impls[op][name].supports = None
    try:
        yield
    finally:
        _dispatch._backend_reason[name] = saved_reason
        for op, sup in saved.items():
            _dispatch._impls[op][name].supports = sup


@contextlib.contextmanager
def _patched(patches):
    """Within: each (object, attribute, value) set; afterwards each attribute as it was."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


@contextlib.contextmanager
def triton_as_on(machine: Machine = H200):
    """Within: the triton backend takes CPU tensors (its kernels are recorded or compiled, never
    run) as it would the modelled GPU's: it prunes its configs for that GPU's SMs and shared
    memory, and skips the CPU-only check for non-finite weights (PyTorch's NaN pattern), which
    never runs on a GPU."""
    from unet_fast.backends.triton_backend import conv3x3_relu, utils
    with _patched([(utils, "num_sms", lambda device: machine.sms),
                   (utils, "smem_limit",
                    lambda device: machine.smem_per_sm - machine.smem_reserved_per_cta),
                   (conv3x3_relu, "nonfinite_weight_on_cpu", lambda weight: False)]), \
            _backend_unchecked("triton"):
        yield


def record_step(cfg: ModelConfig, machine: Machine = H200, train: bool = True) -> list[Launch]:
    """The launches of one bf16-autocast training step of `cfg` on the Triton backend (train
    False: of a forward without gradients, an evaluation)."""
    state = _State()
    with triton_as_on(machine):
        step = make_step(cfg, "cpu", train=train)
        with labelled_launches(state, _Recorder), _aten_recorder(state):
            step(state)
    _KERNELS.update(state.kernels)
    return state.launches


def make_step(cfg: ModelConfig, device, backend: str = "triton", train: bool = True):
    """The modelled training step, as a function: UNet(backend=...) from seed 0, a random input,
    forward under bf16 autocast, backward of the output's sum (gradients set to None first, so
    no step accumulates into the last one's). step(state) names the phases for the recorder.
    record_step records it on the CPU; tools/measure_kernels.py runs it on a GPU. train False:
    the forward alone, without gradients (an evaluation)."""
    import torch

    import unet_fast as uf
    torch.manual_seed(0)
    model = uf.UNet(cfg.in_channels, cfg.num_classes, cfg.base_channels, cfg.depth, cfg.padding,
                    backend=backend).to(device)
    x = torch.randn(cfg.batch, cfg.in_channels, cfg.size, cfg.size, device=device)
    dev_type = torch.device(device).type

    def step(state=None):
        model.zero_grad(set_to_none=True)
        with torch.autocast(dev_type, dtype=torch.bfloat16), torch.set_grad_enabled(train):
            if state is not None:
                state.phase, state.layer = "fwd", "input"
            out = model(x)
        if not train:
            return
        if state is not None:
            state.phase, state.layer = "bwd", "loss"
        out.float().sum().backward()
    step.model, step.x = model, x   # (tools/first_step_compiles.py --precompile)
    return step


@contextlib.contextmanager
def labelled_launches(state: "_State", wrapper):
    """Within: every Triton kernel of the backend is replaced by `wrapper(path, kernel, state)`
    (_Recorder records its launches instead of running them; tools/measure_kernels.py's runs them
    and records the config that ran), and `state.layer` / `state.phase` name the layer whose
    forward or backward is running: the dispatch layer's names in the forward; in the backward, a
    hook on the autograd node of each op's output names the layer whose backward runs next. (The
    caller sets state.phase to "bwd" before calling backward.)"""
    import torch
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from unet_fast import _dispatch
    from unet_fast.backends import triton_backend

    patches = []

    def patch(obj, name, value):
        patches.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    _dispatch.ensure_backends()
    for mod_name in list(sys.modules):
        if not mod_name.startswith(triton_backend.__name__ + "."):
            continue
        mod = sys.modules[mod_name]
        for attr, val in list(vars(mod).items()):
            if isinstance(val, (Autotuner, JITFunction)) and attr.endswith("_kernel"):
                path = f"{mod_name.rsplit('.', 1)[1]}.{attr}"
                state.kernels[path] = val
                patch(mod, attr, wrapper(path, val, state))
    orig_run = _dispatch.run

    def run(op, args, backend=None):
        layer = _dispatch.current_layer() or op
        state.layer = layer
        out = orig_run(op, args, backend)
        outs = out if isinstance(out, tuple) else (out,)
        node = next((o.grad_fn for o in outs if isinstance(o, torch.Tensor) and o.grad_fn), None)
        if node is not None:
            def pre(grads, layer=layer):
                state.layer = layer
            node.register_prehook(pre)
        return out

    patch(_dispatch, "run", run)
    try:
        yield state
    finally:
        for obj, name, val in reversed(patches):
            setattr(obj, name, val)


_KERNELS: dict = {}   # kernel path -> the real (autotuned) kernel object, filled by record_step


# ============================================================================ 2. compile, read SASS
_TRITON_BIN = None


def _utils():
    from unet_fast.backends.triton_backend import utils
    return utils


def _tool(name):
    global _TRITON_BIN
    if _TRITON_BIN is None:
        import triton
        _TRITON_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return os.path.join(_TRITON_BIN, name)


def compile_key(launch: Launch, cfg_index: int) -> tuple:
    kw, warps, stages, _, maxnreg = launch.configs[cfg_index]
    sig = tuple((n, a[1] if a[0] == "tensor" else a[2][0], a[5] if a[0] == "tensor" else
                 (a[2][1] if a[2][0] != "constexpr" else a[1])) for n, a in launch.args.items())
    return (launch.kernel, tuple(sorted(launch.constexprs.items())), tuple(sorted(kw.items())),
            warps, stages, sig, maxnreg)


def _compile_job(job):
    """(key, arch) -> dict(sass=..., regs=, spill=, smem=, error=)."""
    key, arch = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.autotuner import Autotuner
    path, constexprs, cfg_kw, warps, stages, sig, maxnreg = key
    kernel = _KERNELS[path]
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    consts = _tools_module("triton_aot").with_defaults(fn, {**dict(constexprs), **dict(cfg_kw)})
    signature, attrs = {}, {}
    sig = dict((n, (ty, sp)) for n, ty, sp in sig)
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = "constexpr"
            continue
        ty, sp = sig[name]
        if ty == "constexpr":
            signature[name] = "constexpr"
            consts[name] = sp
            continue
        signature[name] = ty
        if sp == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    t0 = time.time()
    try:
        k = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs),
                           target=GPUTarget("cuda", arch, 32),
                           options=dict({"num_warps": warps, "num_stages": stages},
                                        **({"maxnreg": maxnreg} if maxnreg else {})))
    except Exception as e:  # noqa: BLE001
        return dict(error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1:]}",
                    seconds=time.time() - t0)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        sass = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True, text=True,
                              timeout=120).stdout
        res = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name],
                             capture_output=True, text=True, timeout=60).stdout
    regs, spill = _sass_report().resource_usage(res)
    return dict(sass=sass, regs=regs or 0, spill=spill or 0, smem=int(k.metadata.shared),
                seconds=time.time() - t0, error="")


# ---------------------------------------------------------------------------- SASS reading
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_GUARD = re.compile(r"^@!?U?P\w+\s+")
# instruction classes (by opcode prefix), for the tables
_CLASSES = [
    ("tensor", ("HGMMA", "HMMA", "IMMA", "QGMMA")),
    ("async copy", ("LDGSTS", "UTMALDG", "UBLKCP", "LDGDEPBAR", "DEPBAR", "SYNCS", "UTMACMDFLUSH")),
    ("global ld/st", ("LDG", "STG", "RED", "ATOM", "UTMASTG")),
    ("shared ld/st", ("LDS", "LDSM", "STS", "STSM")),
    ("sync", ("BAR", "WARPGROUP", "MEMBAR", "FENCE", "WARPSYNC", "ERRBAR")),
    ("fp", ("FADD", "FMUL", "FFMA", "FMNMX", "FSETP", "FSEL", "HADD2", "HMUL2", "HFMA2",
            "HSETP2", "HMNMX2", "F2F", "F2FP", "MUFU", "FCHK")),
    ("convert", ("I2F", "F2I", "I2FP", "F2IP", "PRMT")),
    ("uniform", ("U",)),
    ("integer", ("IMAD", "IADD", "VIADD", "LEA", "LOP", "SHF", "ISETP", "IABS", "IMNMX", "SEL",
                 "SGXT", "BMSK", "POPC", "FLO", "BREV", "VIMNMX", "IDP", "PLOP3", "P2R", "R2P")),
    ("move", ("MOV", "S2R", "S2UR", "R2UR", "CS2R", "LDC", "SHFL", "VOTE")),
    ("control", ("BRA", "BSSY", "BSYNC", "EXIT", "RET", "CALL", "NOP", "YIELD", "WARPSYNC")),
]


def _class_of(op: str) -> str:
    for name, prefixes in _CLASSES:
        if name == "uniform":
            if op.startswith("U") and not op.startswith(("UTMA", "UBLK")):
                return name
            continue
        if op.startswith(prefixes):
            return name
    return "other"


def parse_sass(text: str):
    """[(address, opcode, full text)] and {label: instruction index} of one function's SASS."""
    instrs, labels = [], {}
    for line in text.splitlines():
        m = _LABEL.match(line)
        if m:
            labels[m.group(1)] = len(instrs)
            continue
        m = _INSTR.match(line)
        if m:
            body = _GUARD.sub("", m.group(2).strip())
            instrs.append((int(m.group(1), 16), body.split()[0], body))
    return instrs, labels


def _bytes_of(op: str) -> int:
    """Bytes per thread of a global load / async copy opcode."""
    for suffix, n in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if suffix in op:
            return n
    return 4


def _loops(instrs, labels) -> list:
    """(first, last) instruction index of every backward branch's loop. nvdisasm names targets by
    label (`(.L_x_3)`), cuobjdump -sass by address (`BRA 0x1180`): both are resolved."""
    at = {addr: i for i, (addr, _, _) in enumerate(instrs)}
    loops = []
    for i, (_, op, body) in enumerate(instrs):
        if op.startswith("BRA"):
            m = re.search(r"(\.L_x_\d+)", body)
            if m:
                j = labels.get(m.group(1))
            else:
                m = re.findall(r"\b0x([0-9a-f]+)\b", body)
                j = at.get(int(m[-1], 16)) if m else None
            if j is not None and j <= i:
                loops.append((j, i))
    return loops


def analyze_sass(text: str) -> dict:
    """Loops of the kernel, the mainloop (innermost loop holding tensor-core instructions), and
    per-warp counts per iteration. Counts are static: a branch inside the loop counts both ways
    (an upper bound; Triton's mainloops are straight-line)."""
    instrs, labels = parse_sass(text)
    loops = _loops(instrs, labels)
    mma_loops = [(lo, hi) for lo, hi in loops
                 if any(instrs[j][1].startswith(("HGMMA", "HMMA")) for j in range(lo, hi + 1))]
    out = dict(total=len(instrs), loops=len(loops), mainloop=None)
    if mma_loops:
        # innermost: no other MMA loop strictly inside it
        inner = [l for l in mma_loops
                 if not any(o != l and l[0] <= o[0] and o[1] <= l[1] for o in mma_loops)]
        # Several: the variants of one loop (the wgrad's first column also sums the bias on the
        # tensor cores): the plain one, with the fewest MMA instructions, is what most tiles run.
        lo, hi = min(inner, key=lambda l: sum(instrs[j][1].startswith(("HGMMA", "HMMA"))
                                              for j in range(l[0], l[1] + 1)))
        body = instrs[lo:hi + 1]
        out["mainloop"] = _count(body)
        out["mainloop"]["range"] = (hex(instrs[lo][0]), hex(instrs[hi][0]))
        out["mainloop"]["others"] = len(mma_loops) - 1
        out["outside"] = len(instrs) - len(body)
    else:
        out["all"] = _count(instrs)
    return out


def _count(body) -> dict:
    classes = collections.Counter(_class_of(op) for _, op, _ in body)
    mma = []
    for _, op, text in body:
        # HGMMA.64x128x16.F32.BF16 (.TF32, .E4M3, ...); fp16 operands carry no suffix
        m = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)\.\w+?(?:\.(\w+))?(?:\s|$)", op + " ")
        if m:
            mma.append(("wgmma", int(m.group(1)) * int(m.group(2)) * int(m.group(3)),
                        m.group(4) or "F16"))
        elif op.startswith("HMMA"):
            m = re.match(r"HMMA\.(\d+)(\d)(\d+)\.\w+\.?(\w*)", op)
            shape = {"16816": 16 * 8 * 16, "1688": 16 * 8 * 8, "16832": 16 * 8 * 32,
                     "1684": 16 * 8 * 4}
            key = op.split(".")[1]
            mma.append(("mma.sync", shape.get(key, 2048), (op.split(".")[-1] if "." in op else "")))
    ld = sum(_bytes_of(op) for _, op, _ in body if op.startswith(("LDGSTS", "LDG")))
    sync_ld = sum(1 for _, op, _ in body if op.startswith("LDG") and not op.startswith("LDGSTS")
                  and not op.startswith("LDGDEPBAR"))
    return dict(instructions=len(body), classes=dict(classes.most_common()), mma=mma,
                load_bytes_per_thread=ld, sync_global_loads=sync_ld,
                tma_loads=sum(1 for _, op, _ in body if op.startswith("UTMALDG")),
                l1_bypass=all("BYPASS" in op for _, op, _ in body if op.startswith("LDGSTS")))


# ============================================================================ 3. work of a launch
def _numel(shape):
    return math.prod(shape)


def _tbytes(a):
    return _numel(a[2]) * a[4]


def _arg(launch, name):
    a = launch.args[name]
    return a[1] if a[0] != "tensor" else a


def work(launch: Launch, cfg_index: int) -> dict:
    """The launch's useful FLOPs, its mainloop trip count per CTA, the bytes one iteration loads
    (A and B tiles), the fewest bytes it must move through DRAM, and its pass name. One entry per
    kernel of the Triton backend: this table is where the model knows what each kernel does."""
    kw, _, _, grid, _ = launch.configs[cfg_index]
    c = dict(launch.constexprs, **kw, _grid=grid)
    name = launch.kernel.split(".")[-1]
    return _WORK[name](launch, c)


def _igemm_fwd_work(l, c):
    a = _arg(l, "a_ptr")
    elt = a[4]
    ks, ca = c["KS"], _arg(l, "CA")
    n_gemm, m_rows = _arg(l, "N_GEMM"), _arg(l, "NB") * _arg(l, "OH") * _arg(l, "OW")
    k_tot = ks * ks * ca
    bm, bn, bk = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]
    iters = math.ceil(k_tot / bk)
    tile_bytes = (bm * bk + bk * bn) * elt
    # A through the L1 (A_L1): what of A's tile the L2 still serves depends on the L1 the
    # compiled shared memory leaves (predict: l1_reuse)
    l1 = (dict(kind="window", bm=bm, bk=bk, elt=elt, ow=_arg(l, "OW"), ks=ks,
               pool=bool(c.get("POOL")), bytes=bm * bk * elt, tile_w=c.get("TILE_W", 0))
          if c.get("A_L1") else None)
    dram = _tbytes(a) + k_tot * n_gemm * elt + _tbytes(_arg(l, "out_ptr"))
    if c.get("CAT"):   # the concat's second half, read in place
        dram += _tbytes(_arg(l, "a2_ptr"))
    if c.get("POOL"):
        dram += _tbytes(_arg(l, "pool_ptr"))
    if c.get("SKIP"):   # y stored as the cropped skip and (out) the ring around it
        dram += _tbytes(_arg(l, "skip_ptr"))
    if c.get("RELU_IN"):   # the input whose ReLU masks the output, read once
        dram += _tbytes(_arg(l, "x_ptr"))
    if c.get("UPSCATTER"):
        what = "fwd"
    elif c.get("SIGN", 1) == -1 or (ks == 2 and c.get("STRIDE") == 2) or not c.get("HAS_BIAS", True):
        what = "dgrad"
    else:
        what = "fwd"
    return dict(flops=2 * m_rows * n_gemm * k_tot, iters=iters, tile_bytes=tile_bytes, dram=dram,
                pass_=what, mma=True, l1=l1)


def _igemm_onek_work(l, c):
    """The persistent one-K-tile GEMM: each CTA loads the weight once and walks its pixel tiles;
    an iteration is one pixel tile (its A tile from L2), the trip count the busiest CTA's tiles."""
    a = _arg(l, "a_ptr")
    elt = a[4]
    ks, ca = c["KS"], _arg(l, "CA")
    n_gemm, m_gemm = _arg(l, "N_GEMM"), _arg(l, "M_GEMM")
    k_tot = ks * ks * ca
    bm, bk = c["BLOCK_M"], c["BLOCK_K"]
    ctas = c["_grid"][0]
    iters = math.ceil(math.ceil(m_gemm / bm) / ctas)
    dram = _tbytes(a) + k_tot * n_gemm * elt + _tbytes(_arg(l, "out_ptr"))
    if c.get("RELU_IN"):
        dram += _tbytes(_arg(l, "x_ptr"))
    what = "dgrad" if c.get("SIGN", 1) == -1 or not c.get("HAS_BIAS", True) else "fwd"
    return dict(flops=2 * m_gemm * n_gemm * k_tot, iters=iters, tile_bytes=bm * bk * elt,
                dram=dram, pass_=what, mma=True)


def _igemm_wgrad_work(l, c):
    a = _arg(l, "a_ptr")
    elt = a[4]
    m, n, k_tot, chunk = _arg(l, "M_GEMM"), _arg(l, "N_GEMM"), _arg(l, "K_TOT"), _arg(l, "CHUNK")
    p_tot = _arg(l, "NB") * _arg(l, "PH") * _arg(l, "PW")  # useful pixels; K_TOT pads bands
    bm, bn, bk = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]
    split = math.ceil(k_tot / chunk)
    sub = c.get("SUB_N", 1)   # column sub-tiles sharing the A tile: each loads its own B tile
    tile_bytes = (bm * bk + sub * bk * bn) * elt + (bk * bn * elt if c.get("MASK_B") else 0)
    # B through the L1 (B_L1): the sub-tiles' shifted pixels (predict: l1_shift_reuse)
    l1 = (dict(kind="shift", qb=_arg(l, "QB"), bk=bk, bn=bn, elt=elt, sub=sub,
               bytes=sub * bk * bn * elt)
          if c.get("B_L1") and _arg(l, "CB") % bn == 0 and not c.get("SHIFT_A") else None)
    dram = _tbytes(a) + _tbytes(_arg(l, "b_ptr")) + split * m * n * 4
    if c.get("CAT"):   # the concat's second half, read in place
        dram += _tbytes(_arg(l, "b2_ptr"))
    if c.get("MASK_B"):
        dram += _tbytes(_arg(l, "mb_ptr"))
    # (the last slice takes the rest of K: shorter where igemm_wgrad front-loads the slices)
    return dict(flops=2 * m * n * p_tot, iters=math.ceil(chunk / bk), tile_bytes=tile_bytes,
                dram=dram, pass_="wgrad", mma=True, l1=l1,
                iters_last=math.ceil((k_tot - (split - 1) * chunk) / bk))


def _pool_fwd_work(l, c):
    y = _arg(l, "y_ptr")   # (x: four times the pooled map's bytes)
    return dict(flops=0, dram=4 * _tbytes(y) + _tbytes(y), pass_="pool", mma=False)


def _pool_bwd_work(l, c):
    s, dp, g = _arg(l, "s_ptr"), _arg(l, "dp_ptr"), _arg(l, "g_ptr")
    b = _tbytes(s) + _tbytes(dp) + _tbytes(g) + (_tbytes(_arg(l, "dy_ptr")) if c["ADD_DY"] else 0)
    if c.get("RING"):   # the source is the skip and the ring around it
        b += _tbytes(_arg(l, "ring_ptr"))
    return dict(flops=0, dram=b, pass_="pool bwd" + (" + dReLU" if c["RELU_MASK"] else ""),
                mma=False)


def _crop_copy_work(l, c):
    d = _arg(l, "d_ptr")
    return dict(flops=0, dram=2 * _tbytes(d), pass_="crop copy", mma=False)


def _split_sum_work(l, c):
    r, out = _arg(l, "r_ptr"), _arg(l, "out_ptr")
    dram = _tbytes(r) + _tbytes(out)
    if _arg(l, "db_ptr") != r:   # the bias gradient's sum too (split_sum passes r when none)
        dram += _tbytes(_arg(l, "db_ptr")) + _tbytes(_arg(l, "dbo_ptr"))
    return dict(flops=0, dram=dram, pass_="wgrad split sum", mma=False)


_WORK = {
    "igemm_fwd_kernel": _igemm_fwd_work,
    "igemm_wgrad_kernel": _igemm_wgrad_work,
    "igemm_onek_kernel": _igemm_onek_work,
    "_split_sum_kernel": _split_sum_work,
    "_max_pool2x2_forward_kernel": _pool_fwd_work,
    "_max_pool2x2_backward_kernel": _pool_bwd_work,
    "_crop_copy_kernel": _crop_copy_work,
}


# ============================================================================ 4. predict
def _occupancy(m: Machine, warps: int, regs: int, smem: int) -> int:
    threads = 32 * warps
    by_smem = m.smem_per_sm // (smem + m.smem_reserved_per_cta) if smem else m.max_ctas_per_sm
    regs_alloc = max(8, -(-regs // 8) * 8)
    by_regs = m.regs_per_sm // (regs_alloc * threads) if regs else m.max_ctas_per_sm
    return max(1, min(by_smem, by_regs, m.max_threads_per_sm // threads, m.max_ctas_per_sm))


def predict(launch: Launch, cfg_index: int, binary: dict, m: Machine = H200) -> dict:
    """The model's figures for one launch with one config (see the module docstring)."""
    kw, warps, stages, grid, maxnreg = launch.configs[cfg_index]
    w = work(launch, cfg_index)
    ctas = grid[0] * grid[1] * grid[2]
    occ = _occupancy(m, warps, binary["regs"], binary["smem"])
    clk = m.clock
    sass = binary["analysis"]
    issue_per_sub = math.ceil(warps / 4)
    row = dict(kernel=launch.kernel.split(".")[-1], pass_=w["pass_"], layer=launch.layer,
               phase=launch.phase, config=_cfg_text(kw, warps, stages, maxnreg)
               + _sub_text(launch.constexprs), ctas=ctas, occupancy=occ,
               regs=binary["regs"], spill=binary["spill"], smem=binary["smem"], flops=w["flops"],
               dram_bytes=w["dram"])
    dram_s = w["dram"] / m.dram_bw
    if w["mma"] and sass.get("mainloop"):
        ml = sass["mainloop"]
        fma = 0
        for kind, n, dtype in ml["mma"]:
            rate = (m.tf32_fma_per_clk if "TF32" in dtype.upper() else m.fma_per_clk)
            if kind == "wgmma":
                fma += n * (warps // 4) * (m.fma_per_clk / rate)
            else:
                fma += n * warps * (m.fma_per_clk / m.mma_sync_fma_per_clk)
        tensor = fma / m.fma_per_clk
        issue = ml["instructions"] * issue_per_sub
        tile_bytes = w["tile_bytes"]
        if w.get("l1") and not ml["l1_bypass"]:
            # an operand cached in the L1 (its copies are LDGSTS without .BYPASS): the L2 serves
            # each distinct pixel once (A_L1: of a chunk's window; B_L1: of the sub-tiles' shifted
            # bands), if the pixels read again fit the L1 the shared memory leaves
            g, u = w["l1"], _utils()
            left = u.l1_left(binary["smem"], occ) // occ
            if g["kind"] == "window":
                share = u.l1_reuse(g["bm"], g["bk"], g["elt"], g["ow"], g["ks"], g["pool"], left,
                                   g.get("tile_w", 0))
            else:
                share = u.l1_shift_reuse(g["qb"], g["bk"], g["bn"], g["elt"], g["sub"], left)
            tile_bytes -= g["bytes"] * (1 - share)
        l2 = tile_bytes / m.l2_bytes_per_clk_sm
        per_iter = max(tensor, issue, l2)
        bound = ("tensor" if per_iter == tensor else "issue" if per_iter == issue else "L2")
        # Alone on an SM (occupancy 1) a tile runs
        # its mainloop, then its epilogue (the code outside the loop), then fills the next
        # pipeline, one after the other. With `occ` tiles co-resident, one's epilogue and fill
        # run while another's mainloop runs: a tile then costs its serial time over the tiles in
        # flight, but never less than its demand on the SM's busiest resource (tensor cores,
        # issue slots, L2 bandwidth), which the co-resident tiles share.
        outside = sass["outside"] * issue_per_sub

        def cta_cycles(iters):
            serial = iters * per_iter + outside + m.fill_latency_clk
            return max(serial / occ, iters * tensor, iters * issue + outside, iters * l2)
        per_cta = cta_cycles(w["iters"])
        # A weight gradient's last slice of K (its grid's last row of CTAs, launched last) may
        # be shorter: the CTAs go to whichever SM frees first (utils.list_makespan); otherwise
        # the busiest SM runs ceil(CTAs / SMs) tiles.
        last = w.get("iters_last")
        if last is not None and grid[1] > 1 and last != w["iters"]:
            busiest = _utils().list_makespan(((ctas - grid[0], per_cta),
                                              (grid[0], cta_cycles(last))), m.sms)
        else:
            busiest = math.ceil(ctas / m.sms) * per_cta
        waves = math.ceil(ctas / (m.sms * occ))
        compute_s = busiest / clk
        t = max(compute_s, dram_s)
        if dram_s > compute_s:
            bound = "DRAM"
        row.update(instructions_per_iter=ml["instructions"], tensor_cycles_per_iter=round(tensor),
                   issue_cycles_per_iter=issue, l2_cycles_per_iter=round(l2, 1),
                   iterations=w["iters"], waves=waves, bound=bound,
                   classes=ml["classes"], sync_global_loads=ml["sync_global_loads"],
                   l1_bypass=ml["l1_bypass"])
    else:
        instrs = (sass.get("all") or {}).get("instructions", sass["total"])
        issue_s = ctas * warps * instrs / (m.sms * 4) / clk
        t = max(dram_s, issue_s)
        bound = "DRAM" if dram_s >= issue_s else "issue"
        row.update(instructions_per_iter=None, tensor_cycles_per_iter=None,
                   issue_cycles_per_iter=None, iterations=None, bound=bound,
                   instructions_per_warp=instrs)
    roof = max(w["flops"] / m.peak_flops, w["dram"] / m.dram_bw)
    # the kernel's own time against its roofline; the step adds the gap between launches
    row.update(kernel_s=t, time_s=t + m.launch_gap_s, roofline_s=roof,
               predicted_fraction_of_peak=(w["flops"] / m.peak_flops) / t if w["flops"] else None,
               fraction_of_roofline=roof / t)
    return row


def _cfg_text(kw, warps, stages, maxnreg=None):
    s = "x".join(str(kw[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in kw)
    s = s or ",".join(f"{k}={v}" for k, v in kw.items())
    return (f"{s} w{warps} s{stages}" + (f" r{maxnreg}" if maxnreg else "")
            + (" L1" if kw.get("A_L1") or kw.get("B_L1") else "")
            + (f" {kw['BLOCK_M'] // kw['TILE_W']}x{kw['TILE_W']}" if kw.get("TILE_W") else ""))


def _sub_text(constexprs) -> str:
    """A weight-gradient tile's column sub-tiles (SUB_N): " x3" three taps, " x2" the concat's
    two halves (PAIR); nothing for one."""
    n = constexprs.get("SUB_N", 1)
    return f" x{n}" if n > 1 else ""


def predict_aten(launch: Launch, m: Machine = H200) -> dict:
    t = launch.bytes / m.dram_bw
    return dict(kernel=launch.kernel, pass_="aten " + launch.kernel[5:], layer=launch.layer,
                phase=launch.phase, config="-", ctas=None, flops=0, dram_bytes=launch.bytes,
                kernel_s=t, time_s=t + m.launch_gap_s, roofline_s=t,
                bound="DRAM (aten, assumed)", predicted_fraction_of_peak=None,
                fraction_of_roofline=1.0, instructions_per_iter=None,
                tensor_cycles_per_iter=None, issue_cycles_per_iter=None)


# ============================================================================ 5. the whole run
def model_step(cfg: ModelConfig, jobs: int, machine: Machine = H200, arch: int = 90,
               log=print) -> dict:
    t0 = time.time()
    launches = record_step(cfg, machine)
    log(f"[{cfg.name} b{cfg.batch}] recorded {len(launches)} launches in {time.time() - t0:.0f}s")
    triton_launches = [l for l in launches if not l.kernel.startswith("aten.")]
    keys = _compile_all(triton_launches, arch, jobs, f"[{cfg.name} b{cfg.batch}]", log)
    failures = []
    rows, chosen = _predict_launches(launches, machine, failures)
    # inference: a forward without gradients, after the training step (its variants compiled
    # too; a key the training step tuned keeps the config chosen there, as the autotuner does)
    evaluated = record_step(cfg, machine, train=False)
    _compile_all([l for l in evaluated if not l.kernel.startswith("aten.")], arch, jobs,
                 f"[{cfg.name} b{cfg.batch} inference]", log)
    infer_failures = []
    infer_rows, _ = _predict_launches(evaluated, machine, infer_failures, chosen)
    known = set(map(repr, failures))
    failures += [f for f in infer_failures if repr(f) not in known]
    # first contact: what the first step compiles and times
    tunings = {}
    for l in triton_launches:
        tunings.setdefault((l.kernel, l.tune_key), len(l.configs))
    # (a shape with one config left is not timed: Triton launches it directly)
    # compiles one after another on the first step's path: a new shape's configs compile side by
    # side on COMPILE_THREADS threads before they are timed (utils.autotune), a lone config alone
    seen, rounds = set(), 0
    for l in triton_launches:
        new = [k for k in (compile_key(l, i) for i in range(len(l.configs))) if k not in seen]
        seen.update(new)
        rounds += -(-len(new) // COMPILE_THREADS) if len(l.configs) > 1 else len(new)
    first = dict(compiles=len(keys), autotune_keys=sum(1 for n in tunings.values() if n > 1),
                 autotune_runs=sum(n for n in tunings.values() if n > 1),
                 compile_rounds=rounds, compile_threads=COMPILE_THREADS,
                 first_eval=first_eval(triton_launches, evaluated))
    return dict(config=dataclasses.asdict(cfg), rows=rows, failures=failures, first_step=first,
                infer_rows=infer_rows)


def _compile_all(launches: list, arch: int, jobs: int, what: str, log=print) -> dict:
    """Compile (into _BINARIES, once per process) every config of every launch; the keys."""
    keys = {}
    for l in launches:
        for i in range(len(l.configs)):
            keys.setdefault(compile_key(l, i), None)
    todo = [(k, arch) for k in keys if k not in _BINARIES]
    t1 = time.time()
    if todo:
        if jobs > 1:
            with cf.ProcessPoolExecutor(jobs) as ex:
                results = list(ex.map(_compile_job, todo))
        else:
            results = [_compile_job(j) for j in todo]
        for (k, _), r in zip(todo, results):
            if not r.get("error"):
                r["analysis"] = analyze_sass(r.pop("sass"))
            _BINARIES[k] = r
    log(f"{what} compiled {len(todo)} binaries for sm_{arch} in {time.time() - t1:.0f}s")
    return keys


def _config_id(c) -> tuple:
    """A Launch config (kwargs, warps, stages, grid, maxnreg) less its grid."""
    return tuple(sorted(c[0].items())), c[1], c[2], c[4]


def _predict_launches(launches: list, machine: Machine, failures: list, fixed=None):
    """(rows, chosen): each launch's row with the config the model predicts fastest, or, where
    `fixed` holds the launch's autotune key, that config (an autotuner's earlier choice); chosen:
    (kernel, tune_key) -> the config taken (_config_id). Compile failures are appended to
    `failures`."""
    rows, chosen = [], {}
    for l in launches:
        if l.kernel.startswith("aten."):
            rows.append(predict_aten(l, machine))
            continue
        cands = []
        for i in range(len(l.configs)):
            b = _BINARIES[compile_key(l, i)]
            if b.get("error"):
                failures.append((l.kernel, l.configs[i], b["error"]))
                continue
            cands.append((predict(l, i, b, machine), i))
        pinned = (fixed or {}).get((l.kernel, l.tune_key))
        best, i = next(((r, i) for r, i in cands if _config_id(l.configs[i]) == pinned), None) \
            or min(cands, key=lambda c: c[0]["time_s"])
        best["candidates"] = len(cands)
        chosen.setdefault((l.kernel, l.tune_key), _config_id(l.configs[i]))
        rows.append(best)
    return rows, chosen


def first_eval(trained: list, evaluated: list) -> dict:
    """What a first evaluation (a forward without gradients) compiles and times after the
    training step whose launches are `trained`: a launch whose autotune key the training step
    tuned takes the config chosen then, and compiles it only where its kernel variant is new; a
    new key (the STORE_Y-off variants: igemm._FWD_KEY) compiles its configs and times them
    (where more than one)."""
    trained = [l for l in trained if not l.kernel.startswith("aten.")]
    compiled = {compile_key(l, i) for l in trained for i in range(len(l.configs))}
    tuned = {(l.kernel, l.tune_key) for l in trained}
    chosen = set()   # the variants compiled from a tuned key's choice (one config each)
    compiles = keys = runs = 0
    for l in evaluated:
        if l.kernel.startswith("aten."):
            continue
        ks = [compile_key(l, i) for i in range(len(l.configs))]
        if (l.kernel, l.tune_key) in tuned:
            variant = frozenset(ks)
            if not variant & compiled and variant not in chosen:
                chosen.add(variant)
                compiles += 1
            continue
        tuned.add((l.kernel, l.tune_key))
        compiles += sum(1 for k in ks if k not in compiled)
        compiled.update(ks)
        if len(ks) > 1:
            keys, runs = keys + 1, runs + len(ks)
    return dict(compiles=compiles, autotune_keys=keys, autotune_runs=runs)


_BINARIES: dict = {}
# the GPU machines' 16 cores give the default, utils.compile_threads(): up to 8
COMPILE_THREADS = 8


def summarize(result: dict, m: Machine = H200) -> dict:
    rows = result["rows"]
    total = sum(r["time_s"] for r in rows)
    roof = sum(r["roofline_s"] for r in rows)
    flops = sum(r["flops"] for r in rows)
    by_pass = collections.defaultdict(float)
    for r in rows:
        by_pass[r["pass_"]] += r["time_s"]
    return dict(predicted_s=total, roofline_s=roof, flops=flops, ideal_s=flops / m.peak_flops,
                images_per_s=result["config"]["batch"] / total, by_pass=dict(by_pass))


def summarize_inference(result: dict, m: Machine = H200) -> dict:
    """summarize() of the inference forward (a forward without gradients: result["infer_rows"])."""
    return summarize(dict(rows=result["infer_rows"], config=result["config"]), m)


def _inference_line(res: dict, m: Machine, fwd: float) -> str:
    """The report's inference line; `fwd`: the training step's forward kernels' time (s)."""
    i = summarize_inference(res, m)
    return (f"- Inference (the forward without gradients, bf16 autocast, after a training step; "
            f"a launch of an autotune key the step tuned keeps the step's config): predicted "
            f"**{_fmt_ms(i['predicted_s'])} ms** "
            f"({i['images_per_s']:.0f} images/s); roofline sum {_fmt_ms(i['roofline_s'])} ms "
            f"(ratio {i['predicted_s'] / i['roofline_s']:.2f}): our kernels "
            f"{_fmt_ms(i['by_pass'].get('fwd', 0.0))} ms (the training step's forward: "
            f"{_fmt_ms(fwd)} ms; inference stores no ring and no y under the head), aten ops "
            f"(mostly autocast's casts) {_fmt_ms(i['predicted_s'] - i['by_pass'].get('fwd', 0.0))} ms.")


# ============================================================================ 6. the report
def _fmt_ms(s):
    return f"{s * 1e3:.3f}"


def write_report(results: list, path_md: str, path_json: str, m: Machine = H200,
                 ext: dict | None = None) -> None:
    import triton
    lines = [
        "# Kernel model: model, not measurement",
        "",
        "Generated by `python tools/kernel_model.py` (no GPU): every kernel one bf16-autocast",
        "training step launches on `backend=\"triton\"`, recorded from the model itself, each",
        f"compiled for sm_90 with Triton {triton.__version__} as its launcher would, its SASS",
        "mainloop counted per warp and iteration, and a ceiling predicted from the counts. Every",
        "time and fraction below is a **prediction of a static model**; measured GPU figures live",
        "in benchmarks/results/ (none yet).",
        "",
        "## Assumptions",
        f"- Machine: {m.name}; bf16 peak {m.peak_flops / 1e12:.0f} TFLOP/s and DRAM {m.dram_bw / 1e12:.1f} TB/s "
        "(both measured on the GPU machines); the clock is taken as the one at which the tensor",
        f"  cores' 4096 FLOP per SM and cycle give that peak ({m.clock / 1e9:.3f} GHz).",
        f"- L2 -> SM bandwidth {m.l2_bw / 1e12:.0f} TB/s ({m.l2_bytes_per_clk_sm:.1f} B per SM and cycle): an "
        "assumption, not measured here; every tile load of a mainloop is counted as L2 traffic",
        "  (Triton 3.6 and 3.8 emit 16-byte cp.async.cg, L1 bypassed, whatever the load's cache modifier: LDGSTS.E.BYPASS.128 in",
        "  the SASS, so the nine taps' overlapping input tiles are each fetched from L2), except",
        "  in the configs marked L1 (A_L1): their A gather is 8-byte cp.async.ca (LDGSTS.E.64, no",
        "  BYPASS, read off the SASS) and takes a channel chunk's nine taps one after another, so",
        "  the L2 serves each distinct pixel of the tile's 3x3 window once and the taps of a kernel",
        "  row that read it again hit the L1 (utils.l1_reuse: about a third of A's bytes, a fifth",
        "  under the pool's 2x2 order; a config marked 8x16 gathers 2-D patches of the output grid",
        "  (TILE_W), whose whole (8 + 2) x (16 + 2) window its taps read again: about a sixth) -- if",
        "  the pixels read again fit the L1 the shared memory leaves;",
        "  likewise the wgrad's B_L1 configs, whose three sub-tiles (a kernel row's taps) read the",
        "  same pixels a column apart (utils.l1_shift_reuse: (band + 2) / (3 x band) of B's bytes).",
        "  The model has no latency term: a two-stage pipeline (B_L1) is judged as a deeper one.",
        "  A weight gradient's config marked x3 is a tile of three column sub-tiles (a kernel row's",
        "  taps) sharing the A tile, x2 the decoder concat's two halves' same columns (PAIR).",
        "  ASSUMPTIONS, to be measured: the L1 keeps those rows (LRU-like) and merges requests for a",
        "  line still being fetched (the next tap's copies are issued before the first's arrive);",
        "  a kernel of at most 48",
        "  KiB of shared memory (Triton sets no carve-out then) gets the smallest carve-out holding",
        "  its resident CTAs, 256 KiB less that is L1; above 48 KiB Triton asks for the largest",
        "  carve-out and the model counts no reuse (utils.l1_left).",
        "- Tensor cycles per iteration: the iteration's HGMMA work at 2048 bf16 FMA per SM and cycle",
        "  (tf32 at half); issue cycles: the loop's instructions per warp times the warps per SM",
        "  sub-partition (one instruction per cycle each); a mainloop whose issue cycles exceed its",
        "  tensor cycles is issue-bound and cannot reach the tensor peak.",
        f"- Per tile: the mainloop, the code outside it issued once, and {m.fill_latency_clk} cycles to fill",
        "  the pipeline, one after the other; where the compiled registers and shared memory let k >= 2",
        "  CTAs share an SM, one's epilogue and fill overlap another's mainloop: a tile costs that serial",
        "  time / k, but no less than its demand on the SM's busiest resource (tensor cycles, issue cycles",
        "  with the epilogue's, L2 cycles), which co-resident tiles share. The busiest SM runs",
        "  ceil(CTAs / SMs) tiles (where a weight gradient's last slice of K is shorter, its CTAs,",
        "  launched last, go to the SM that frees first: utils.list_makespan);",
        f"  {m.launch_gap_s * 1e6:.0f} us between dependent kernels; never faster than",
        "  the launch's unique bytes at the DRAM bandwidth.",
        "- Memory-bound kernels: their bytes at the DRAM bandwidth, or their instruction issue if that",
        "  is longer. PyTorch (aten) kernels the step launches are taken at their DRAM roofline.",
        "- For every launch, each config the autotuner would time is compiled and the model keeps the",
        "  best (an autotuner that measures well picks the same or better).",
        "- A fused op's forward kernel is one row under its layers' joined names (up.3.conv.2+head:",
        "  the last conv with the 1x1 head in its epilogue); its backward runs each layer's own",
        "  kernels, listed under each layer's name.",
        "",
    ]
    for res in results:
        cfg = res["config"]
        s = summarize(res, m)
        fs = res["first_step"]
        lines += [
            f"## {cfg['name']}: {cfg['size']}x{cfg['size']}, batch {cfg['batch']}, "
            f"{cfg['in_channels']} input channel(s), padding {cfg['padding']}",
            "",
            f"- Predicted step time **{_fmt_ms(s['predicted_s'])} ms** "
            f"({s['images_per_s']:.0f} images/s); roofline sum of the same launches "
            f"{_fmt_ms(s['roofline_s'])} ms (ratio {s['predicted_s'] / s['roofline_s']:.2f}); "
            f"all FLOPs at the peak {_fmt_ms(s['ideal_s'])} ms ({s['flops'] / 1e12:.2f} TFLOP).",
            f"- First step: {fs['compiles']} Triton compiles, {fs['autotune_keys']} autotuned "
            f"shapes, {fs['autotune_runs']} autotune timing runs; with {fs['compile_threads']} "
            f"compile threads (UNET_FAST_COMPILE_THREADS) the compiles take "
            f"{fs['compile_rounds']} rounds one after another (each shape's configs together). "
            f"A first evaluation after it (no gradients): {fs['first_eval']['compiles']} "
            f"compile{'s' * (fs['first_eval']['compiles'] != 1)}, "
            f"{fs['first_eval']['autotune_runs']} autotune timing runs.",
            _inference_line(res, m, s["by_pass"].get("fwd", 0.0)),
            "- Time by pass (ms): " + ", ".join(f"{k} {_fmt_ms(v)}" for k, v in
                                               sorted(s["by_pass"].items(), key=lambda kv: -kv[1])),
            "",
            "| layer | pass | kernel | config | CTAs x occ | instr/iter | issue cyc | tensor cyc "
            "| L2 cyc | bound | % peak | % roofline | ms (+gap) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            if r["kernel"].startswith("aten.") and r["time_s"] < 20e-6:
                continue  # small aten kernels: summed in the totals only
            pk = r.get("predicted_fraction_of_peak")
            lines.append(
                f"| {r['layer']} | {r['pass_']} | {r['kernel']} | {r['config']} | "
                f"{r['ctas'] or '-'}{'x' + str(r.get('occupancy')) if r.get('occupancy') else ''} | "
                f"{r['instructions_per_iter'] or '-'} | {r['issue_cycles_per_iter'] or '-'} | "
                f"{r['tensor_cycles_per_iter'] or '-'} | {r.get('l2_cycles_per_iter') or '-'} | "
                f"{r['bound']} | {'-' if pk is None else f'{100 * pk:.0f}'} | "
                f"{100 * r['fraction_of_roofline']:.0f} | {_fmt_ms(r['time_s'])} |")
        small = [r for r in res["rows"] if r["kernel"].startswith("aten.") and r["time_s"] < 20e-6]
        if small:
            lines.append(f"\n{len(small)} small aten kernels (each under 20 us, "
                         f"{_fmt_ms(sum(r['time_s'] for r in small))} ms together) are left out "
                         "of the table.")
        spilling = [r for r in res["rows"] if r.get("spill")]
        lines.append("\nRegister spills (cuobjdump: local memory + stack frame bytes a thread) in "
                     "the kernels above: " + ("none." if not spilling else "; ".join(
                         f"{r['layer']} {r['pass_']} {r['config']}: {r['spill']} B"
                         for r in spilling) + "."))
        if res["failures"]:
            lines.append("\nCompile failures (left out of the prediction):")
            lines += [f"- {k} {c}: {e}" for k, c, e in res["failures"]]
        lines.append("")
    ext = ext if ext is not None else dict(status="not read")
    lines += extension_markdown(ext, m, {res["config"]["name"]: summarize(res, m)["predicted_s"]
                                         for res in results})
    with open(path_md, "w") as f:
        f.write("\n".join(lines))
    out = []
    for res in results:
        for r in res["rows"]:
            out.append(dict(model=res["config"]["name"], name=r["kernel"], pass_=r["pass_"],
                            layer=r["layer"], config=r["config"],
                            instructions_per_iter=r["instructions_per_iter"],
                            tensor_cycles_per_iter=r["tensor_cycles_per_iter"],
                            issue_cycles_per_iter=r["issue_cycles_per_iter"],
                            predicted_fraction_of_peak=r["predicted_fraction_of_peak"],
                            bound=r["bound"], predicted_ms=r["time_s"] * 1e3,
                            kernel_ms=r["kernel_s"] * 1e3, roofline_ms=r["roofline_s"] * 1e3,
                            spill_bytes_per_thread=r.get("spill")))
    with open(path_json, "w") as f:
        json.dump(dict(note="model, not measurement", triton=triton.__version__,
                       machine=dataclasses.asdict(m),
                       kernels=[{("pass" if k == "pass_" else k): v for k, v in d.items()}
                                for d in out],
                       summary={res["config"]["name"]: dict(summarize(res, m),
                                                           first_step=res["first_step"],
                                                           inference=summarize_inference(res, m),
                                                           config=res["config"])
                                for res in results},
                       extension=_extension_json(ext)), f, indent=1)


# ============================================================================ 7. the CUDA extension
# backend="cuda" runs the extension unet_fast._C. On sm_90 its CUTLASS sm_90a units take every bf16
# 3x3 convolution the units accept (all but the first layer: docs/cutlass_sm90.md); the
# hand-written wmma kernels run the rest, and everything on sm_80. The SASS is the built library's
# (cuobjdump, through tools/sass_report.py); tiles, clusters, stages, threads and shared memory
# are the units' own config strings, and what they accept their own check (host code, no GPU).

_UNIT_CONFIG = re.compile(r"(\w+) (bf16|f16): tile (\d+)x(\d+)x(\d+), cluster (\d+)x(\d+)x(\d+), "
                          r"(\d+) stages, (\d+) threads, (\d+) B shared memory")
_UNIT_PASSES = ("fprop", "dgrad", "wgrad")
_UP_PASSES = ("up_fprop", "up_dgrad", "up_wgrad")   # the transposed convolutions' units


def _tools_module(name):
    """A sibling script of tools/ as a module (tools/ is on the path when this file runs as a
    script, and in tests; otherwise it is put there)."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        return importlib.import_module(name)


def _sass_report():
    return _tools_module("sass_report")


def _shortest_loop(instrs, loops, want):
    """The shortest loop whose opcodes satisfy `want`, as its instructions. Shortest rather than
    innermost by containment: a barrier wait's retry block, placed after EXIT, branches back into
    the loop and so makes a longer "loop" that overlaps it without containing it."""
    found = [(hi - lo, lo, hi) for lo, hi in loops
             if want([op for _, op, _ in instrs[lo:hi + 1]])]
    if not found:
        return None
    _, lo, hi = min(found)
    return instrs[lo:hi + 1]


def _igemm_warps() -> int:
    """Warps per CTA of the hand-written implicit GEMM (kThreads in csrc/cuda/igemm.cuh)."""
    try:
        with open(os.path.join(ROOT, "csrc", "cuda", "igemm.cuh")) as f:
            return int(re.search(r"kThreads = (\d+)", f.read()).group(1)) // 32
    except (OSError, AttributeError):
        return 4


def _unit_counts(k, configs: dict, m: Machine) -> dict:
    """One CUTLASS unit: its consumer loop (the wgmma one) and producer loop (the TMA loads) per
    K step, and the cycles per K step on one SM."""
    instrs, labels = parse_sass("\n".join(k.sass))
    loops = _loops(instrs, labels)
    cons = _shortest_loop(instrs, loops, lambda ops: any(o.startswith("HGMMA") for o in ops))
    prod = _shortest_loop(instrs, loops, lambda ops: any(o.startswith("UTMALDG") for o in ops)
                          and not any(o.startswith("HGMMA") for o in ops))
    op = re.search(r"(conv3x3|up2x2) (\w+)", k.name)
    pass_ = f"up_{op.group(2)}" if op.group(1) == "up2x2" else op.group(2)
    elem = re.search(r"\b(bf16|f16)\b", k.name)
    elem = elem.group(1) if elem else "?"
    # a pass built with several tiles: the wgrad's names carry their tile (two of its three share
    # a wgmma shape); fprop's and dgrad's two (128x128, 256x64) differ in their wgmma's N
    cands = configs.get((pass_, elem), [])
    mma_n = re.search(r"wgmma \d+x(\d+)x\d+", k.name)
    tile = re.search(r" tile (\d+)x(\d+)", k.name)
    if len(cands) > 1 and tile:
        cands = [c for c in cands if c["tile"][:2] == (int(tile.group(1)), int(tile.group(2)))]
    elif len(cands) > 1 and mma_n:
        cands = [c for c in cands if c["tile"][1] == int(mma_n.group(1))]
    cfg = cands[0] if len(cands) == 1 else None
    c, p = (_count(cons) if cons else {}), (_count(prod) if prod else {})
    u = dict(name=k.name, pass_=pass_, elem=elem, arch=k.arch, regs=k.regs, instructions=len(instrs),
             config=cfg["text"] if cfg else None,
             consumer_instructions_per_iter=c.get("instructions"),
             consumer_classes=c.get("classes"), hgmma_per_iter=len(c.get("mma", [])),
             producer_instructions_per_iter=p.get("instructions"),
             producer_classes=p.get("classes"))
    if cfg is None or cons is None:
        return u  # incomplete: the report and the test say so
    bm, bn, bk = cfg["tile"]
    cm, cn, _ = cfg["cluster"]
    # KernelImplicitTmaWarpSpecializedSm90: one producer warp group (one elected warp issues the
    # TMA loads), the other warp groups consume; a warp group's 4 warps sit on the 4 sub-partitions
    wgs = cfg["threads"] // 128 - 1
    fma = sum(n for kind, n, _ in c["mma"] if kind == "wgmma") * wgs
    # TMA multicast: the A tile is shared along the cluster's N extent, the B tile along its M
    # extent (fprop/dgrad 2x1x1: the weight tile; wgrad 1x2x1: the gradient tile)
    l2_bytes = 2 * (bm * bk // cn + bn * bk // cm)  # 16-bit elements
    u.update(tile=cfg["tile"], cluster=cfg["cluster"], stages=cfg["stages"],
             threads=cfg["threads"], smem=cfg["smem"], consumer_warpgroups=wgs,
             tile_fma_matches=fma == bm * bn * bk, tensor_cycles=fma / m.fma_per_clk,
             # conservative: the producer warp shares a sub-partition with a consumer warp
             issue_cycles=c["instructions"] * wgs + p.get("instructions", 0),
             l2_bytes=l2_bytes, l2_cycles=round(l2_bytes / m.l2_bytes_per_clk_sm, 1),
             outside=len(instrs) - len(cons) - (len(prod) if prod else 0))
    return u


def _hand_counts(k, warps: int, m: Machine) -> dict:
    """One hand-written tensor-core kernel: its mainloop per warp and iteration (a BK = 32 step)."""
    ml = analyze_sass("\n".join(k.sass))["mainloop"]
    row = dict(name=k.name, arch=k.arch, regs=k.regs, mma_kinds=sorted(k.mma_kinds), warps=warps,
               instructions_per_iter=None, tensor_cycles_per_iter=None, issue_cycles_per_iter=None)
    if ml:
        # mma.sync: 1024 dense 16-bit FMA per SM and cycle on an A100, assumed the same on Hopper
        # (Machine.mma_sync_fma_per_clk); tf32 at half
        tensor = sum(n * warps / (m.mma_sync_fma_per_clk / (2 if "TF32" in dt.upper() else 1))
                     for _, n, dt in ml["mma"])
        row.update(instructions_per_iter=ml["instructions"], tensor_cycles_per_iter=round(tensor),
                   issue_cycles_per_iter=ml["instructions"] * math.ceil(warps / 4),
                   classes=ml["classes"])
    return row


def _thin_counts(k) -> dict:
    """One CUDA-core kernel of csrc/cuda/thin.cuh (pointwise_thin.cuh, conv3x3_thin.cuh): its
    grid-stride loop (the longest loop holding a global load) per warp and iteration, split at its
    barriers:
    `all_warps` the instructions every warp issues (an iteration: one 16-byte run of a pixel per
    thread), `first_warps` those between the forward's two barriers, which only the threads of the
    first per-pass pixels (the first warps) run. Static counts (both ways of a branch)."""
    instrs, labels = parse_sass("\n".join(k.sass))
    loops = [(lo, hi) for lo, hi in _loops(instrs, labels)
             if any(instrs[j][1].startswith("LDG") for j in range(lo, hi + 1))]
    row = dict(name=k.name, arch=k.arch, regs=k.regs, all_warps=None, first_warps=0)
    if loops:
        lo, hi = max(loops, key=lambda l: l[1] - l[0])
        bars = [j for j in range(lo, hi + 1) if instrs[j][1].startswith("BAR")]
        inside = bars[-1] - bars[0] - 1 if len(bars) >= 2 else 0
        row.update(all_warps=hi - lo + 1 - inside, first_warps=inside)
    return row


def read_extension(m: Machine = H200) -> dict:
    """The built extension's kernels, or {"status": why not}: per CUTLASS unit its config and
    loop counts, per hand-written tensor-core kernel and arch its mainloop counts."""
    import torch

    import unet_fast as uf
    from unet_fast.backends import cuda_backend
    so = cuda_backend.extension_path()
    if so is None:
        return dict(status=f"not built: {uf.backends.available()['cuda']}")
    sr = _sass_report()
    tool = sr.find_cuobjdump()
    if tool is None:
        return dict(status="cuobjdump not found (it ships in Triton's wheel)", so=so)
    try:
        texts = list(torch.ops.unet_fast._cutlass_sm90_configs())
    except (AttributeError, RuntimeError):
        texts = []  # built without the units
    configs = {}   # (pass, element type) -> its instantiations' configs
    for t in texts:
        g = _UNIT_CONFIG.match(t)
        if g:
            v = [int(x) for x in g.groups()[2:]]
            configs.setdefault((g.group(1), g.group(2)), []).append(
                dict(text=t, tile=tuple(v[0:3]), cluster=tuple(v[3:6]), stages=v[6],
                     threads=v[7], smem=v[8]))
    kernels = sr.analyse(so, tool, keep_sass=True)
    warps = _igemm_warps()
    units = [_unit_counts(k, configs, m) for k in kernels if k.is_cutlass]
    hand = [_hand_counts(k, warps, m) for k in kernels if k.tensor_cores]
    thin = [_thin_counts(k) for k in kernels
            if k.name.startswith(("pointwise_thin_", "conv3x3_thin_"))]
    status = "read" if units else "built without the CUTLASS sm_90a units"
    so = os.path.relpath(so, ROOT) if so.startswith(ROOT + os.sep) else so
    return dict(status=status, so=so, configs=texts, units=units, hand_written=hand, thin=thin,
                rows=[])


def _unit_row(u: dict, prob, cfg: ModelConfig, m: Machine, pass_: str = None) -> dict:
    """The model's figures for one unit on one convolution (see the module docstring; one CTA per
    SM: the pipeline's shared memory). The up-conv's units: prob is its (name, c, k, h, w, 0),
    x (n, h, w, c) -> k; the forward's GEMM per tap M = n*h*w, N = k, K = c (four launches, one
    row); the dgrad's M = n*h*w, N = c, K = 4k; the wgrad's (`pass_` "up_wgrad": the 3x3 wgrad
    unit `u` on another problem) M = c, N = 4k, K = n*h*w."""
    import torch
    pass_ = pass_ or u["pass_"]
    n, (name, c, k, h, w, pad) = cfg.batch, prob
    p, q = h + 2 * pad - 2, w + 2 * pad - 2
    M, N, K = {"fprop": (n * p * q, k, 9 * c), "dgrad": (n * h * w, c, 9 * k),
               "wgrad": (k, 9 * c, n * p * q), "up_dgrad": (n * h * w, c, 4 * k),
               "up_wgrad": (c, 4 * k, n * h * w), "up_fprop": (n * h * w, k, c)}[pass_]
    launches = 4 if pass_ == "up_fprop" else 1
    (bm, bn, bk), (cm, cn, _) = u["tile"], u["cluster"]
    m_tiles = -(-math.ceil(M / bm) // cm) * cm  # the grid is whole clusters
    n_tiles = -(-math.ceil(N / bn) // cn) * cn
    steps = math.ceil(K / bk)
    # the wgrad's split-K count from the unit's own host code (conv3x3_wgrad_splits,
    # up2x2_wgrad_splits)
    splits = (int(torch.ops.unet_fast._cutlass_sm90_wgrad_splits([n, h, w, c, k, pad], m.sms,
                                                                  pass_))
              if pass_ in ("wgrad", "up_wgrad") else 1)
    steps = math.ceil(steps / splits)  # the busiest slice
    ctas = m_tiles * n_tiles * splits
    waves = math.ceil(ctas / m.sms)
    tensor, issue, l2 = u["tensor_cycles"], u["issue_cycles"], u["l2_cycles"]
    per_step = max(tensor, issue, l2)
    bound = "tensor" if per_step == tensor else "issue" if per_step == issue else "L2"
    per_cta = steps * per_step + u["outside"] + m.fill_latency_clk
    compute_s = waves * per_cta / m.clock
    # unique bytes: bf16 activations and weights; the dgrad's ReLU mask is its input x except
    # where the model passes relu_input=False (the up blocks' first conv: a concat; model.py);
    # the wgrad writes fp32 partial sums per slice
    x, y, wt = n * h * w * c, n * p * q * k, 9 * c * k
    if pass_.startswith("up_"):   # g (n, 2h, 2w, k) and the (c, k, 2, 2) weight
        y, wt = 4 * n * h * w * k, 4 * c * k
    masked = not name.endswith("conv.0")
    dram = {"fprop": 2 * (x + wt + y), "dgrad": 2 * (y + wt + x * (2 if masked else 1)),
            "wgrad": 2 * (x + y) + 4 * splits * wt,
            # g, the weight, the mask x (the up-conv's input: a ReLU output), dx
            "up_dgrad": 2 * (y + wt + 2 * x),
            "up_wgrad": 2 * (x + y) + 4 * splits * wt,
            # one tap's launch: x, its quarter of the weight, a quarter of y
            "up_fprop": 2 * (x + (wt + y) // 4)}[pass_]
    dram_s = dram / m.dram_bw
    t = max(compute_s, dram_s)
    if dram_s > compute_s:
        bound = "DRAM"
    # (up_fprop: the row is its four launches, one a tap, each of these figures)
    flops, dram, t = launches * 2 * M * N * K, launches * dram, launches * t
    # the caller sums a split wgrad's fp32 slices (partial.sum(0), an aten kernel after the unit):
    # its bytes at the DRAM roofline and one more launch gap, counted in this row
    sum_s = (4 * (splits + 1) * wt / m.dram_bw + m.launch_gap_s) if splits > 1 else 0.0
    return dict(model=cfg.name, name=u["name"], pass_=pass_, layer=name,
                config=f"{bm}x{bn}x{bk} c{cm}x{cn}" + (f" split {splits}" if splits > 1 else "")
                + (f" x{launches} launches" if launches > 1 else ""),
                gemm=[M, N, K], ctas=ctas, waves=waves, k_steps=steps,
                instructions_per_iter=u["consumer_instructions_per_iter"],
                producer_instructions_per_iter=u["producer_instructions_per_iter"],
                tensor_cycles_per_iter=round(tensor), issue_cycles_per_iter=issue,
                l2_cycles_per_iter=l2, flops=flops, dram_bytes=dram, kernel_s=t,
                time_s=t + launches * m.launch_gap_s + sum_s,
                predicted_fraction_of_peak=flops / m.peak_flops / t,
                bound=bound)


def extension_rows(ext: dict, cfg: ModelConfig, m: Machine = H200) -> list:
    """Per 3x3 convolution of `cfg` and pass: the unit's prediction, or the refusal (the units'
    own check) of a layer that stays on the hand-written kernels."""
    import torch

    from unet_fast.reference import conv3x3_problems, up_problems
    units = {u["config"]: u for u in ext["units"] if "tensor_cycles" in u}
    check = torch.ops.unet_fast._cutlass_sm90_check
    config_for = torch.ops.unet_fast._cutlass_sm90_config_for  # the instantiation that runs it
    rows = []
    for prob in conv3x3_problems(cfg.in_channels, cfg.padding, cfg.size, cfg.base_channels,
                                 cfg.depth):
        shape = [cfg.batch, prob.h, prob.w, prob.c_in, prob.c_out, prob.pad]
        refused = {p: check(p, shape) or ("" if config_for(p, shape) in units else "no unit read")
                   for p in _UNIT_PASSES}
        if all(refused.values()):
            rows.append(_refused_row(cfg, "all", prob.name, refused["fprop"]))
            continue
        rows += [_unit_row(units[config_for(p, shape)], prob, cfg, m) for p in _UNIT_PASSES
                 if not refused[p]]
    # the decoder's transposed convolutions, forward and gradients (the up-conv's units; the
    # wgrad's runs a 3x3 wgrad kernel); a problem is (name, c_in, c_out, h, w, pad 0) of the
    # up-conv's input, as _unit_row reads it
    for prob in up_problems(cfg.in_channels, cfg.padding, cfg.size, cfg.base_channels, cfg.depth):
        shape = [cfg.batch, prob.h, prob.w, prob.c_in, prob.c_out, 0]
        for p in _UP_PASSES:
            why = check(p, shape) or ("" if config_for(p, shape) in units else "no unit read")
            rows.append(_refused_row(cfg, p, prob.name, why) if why else
                        _unit_row(units[config_for(p, shape)], prob, cfg, m, pass_=p))
    return rows


def _refused_row(cfg: ModelConfig, pass_: str, layer: str, why: str) -> dict:
    """A layer and pass the units refuse (their own check's reason): the hand-written kernels."""
    return dict(model=cfg.name, name="hand-written igemm kernels", pass_=pass_, layer=layer,
                config="refused: " + why, instructions_per_iter=None, tensor_cycles_per_iter=None,
                issue_cycles_per_iter=None, predicted_fraction_of_peak=None, bound="-")


def extension_model(cfgs: list, m: Machine = H200) -> dict:
    ext = read_extension(m)
    if ext.get("units"):
        ext["rows"] = [r for cfg in cfgs for r in extension_rows(ext, cfg, m)]
        ext["steps"] = [cuda_step(cfg, ext, m) for cfg in cfgs]
    return ext


# ---------------------------------------------------------------- the explicit backend="cuda" step
# The whole step as backend="cuda" runs it on sm_90: the extension's ops one bf16-autocast step
# calls, recorded on meta tensors (their fake kernels give every shape; nothing runs, no GPU), each
# priced: a CUTLASS unit by its row above; the hand-written tensor-core kernels (the first layer,
# the 1x1 head) by their static mainloop counts; everything else, ours or aten's, at its DRAM bytes.
# (op, pass) -> the hand-written igemm kernel that runs it (csrc/cuda; a 3x3 gradient given no y:
# the same name + "Premasked")
_HAND_KERNELS = {
    ("conv3x3_relu", "fwd"): "Conv3x3Fprop", ("_conv3x3_relu_backward", "dgrad"): "Conv3x3Dgrad",
    ("_conv3x3_relu_backward", "wgrad"): "Conv3x3Wgrad", ("conv1x1", "fwd"): "PointwiseFprop",
    ("_conv1x1_backward", "dgrad"): "PointwiseDgrad", ("_conv1x1_backward", "wgrad"): "PointwiseWgrad"}


@contextlib.contextmanager
def cuda_as_on_sm90():
    """Within: backend="cuda" takes CPU or meta tensors (its ops recorded or counted, never run)
    as it would an sm_90 GPU's: its CUTLASS units, their first-run checks taken as passed, and no
    CPU-only check for non-finite weights (PyTorch's NaN pattern), which never runs on a GPU."""
    from unet_fast.backends import cuda_ops, cutlass_sm90
    with _patched([(cutlass_sm90, "_is_sm90", lambda device: True),
                   (cutlass_sm90, "verdict", lambda units, device, dtype=None: None),
                   (cuda_ops, "nonfinite_weight_on_cpu", lambda weight: False)]), \
            _backend_unchecked("cuda"):
        yield


def record_cuda_step(cfg: ModelConfig) -> tuple:
    """The extension ops (name, phase, layer, args: a tensor as _tensor_desc describes it)
    and the aten launches of one bf16-autocast training step of `cfg` on backend="cuda" as an sm_90
    GPU with the CUTLASS units would run it (their first-run checks taken as passed), on meta
    tensors. Autocast is off on a machine without CUDA: the ops' own autocast casts are switched on
    for bf16 instead."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import unet_fast as uf
    from unet_fast import ops

    state, calls, patches = _State(), [], []

    def patch(obj, name, value):
        patches.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def desc(a):
        if isinstance(a, torch.Tensor):
            return _tensor_desc(a, (str(a.dtype), ""))
        return a

    class ExtRecorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "unet_fast":
                calls.append(dict(op=func.overloadpacket.__name__, phase=state.phase,
                                  layer=state.layer or "?",
                                  args=[[desc(x) for x in a] if isinstance(a, (list, tuple))
                                        else desc(a) for a in args]))
            return func(*args, **(kwargs or {}))

    patch(ops, "_autocast_on", lambda t: t.is_floating_point())
    patch(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    try:
        torch.manual_seed(0)
        with torch.device("meta"):
            model = uf.UNet(cfg.in_channels, cfg.num_classes, cfg.base_channels, cfg.depth,
                            cfg.padding, backend="cuda")
            x = torch.randn(cfg.batch, cfg.in_channels, cfg.size, cfg.size)
            with cuda_as_on_sm90(), labelled_launches(state, _Recorder), \
                    _aten_recorder(state), ExtRecorder():
                state.phase, state.layer = "fwd", "input"
                out = model(x)
                state.phase, state.layer = "bwd", "loss"
                out.float().sum().backward()
    finally:
        for obj, name, val in reversed(patches):
            setattr(obj, name, val)
    return calls, state.launches


def _mem_row(layer, pass_, kernel, nbytes, m: Machine, bound="DRAM") -> dict:
    t = nbytes / m.dram_bw
    return dict(layer=layer, pass_=pass_, kernel=kernel, dram_bytes=nbytes, kernel_s=t,
                time_s=t + m.launch_gap_s, bound=bound)


def _hand_row(layer, pass_, kernel, hand, gemm, nbytes, m: Machine) -> dict:
    """A hand-written igemm launch: 64x64 tiles (the 3x3 weight gradient's N of at most 16 or 32:
    64 x 16 or 64 x 32) of 32-wide K steps, every SM sub-partition
    issuing one warp's loop per CTA and step (4 warps), at the loop's static count (both ways of
    every branch: an upper bound; the epilogue is not counted), or its DRAM bytes if longer."""
    M, N, K = gemm
    # a narrow N runs on the narrowest tile the build has for the problem (igemm.cuh's launch_tile:
    # Narrow<P, 16 | 32>, the problems with kNarrowN), else on 64x64
    tn, k = 64, hand.get(f"igemm {kernel}<__nv_bfloat16> [tensor cores]")
    for narrow in (16, 32):
        kn = hand.get(f"igemm Narrow<{kernel}<__nv_bfloat16>, {narrow}> [tensor cores]")
        if N <= narrow and kn:
            tn, k = narrow, kn
            break
    steps = math.ceil(M / 64) * math.ceil(N / tn) * math.ceil(K / 32)
    issue = steps * k["issue_cycles_per_iter"] / m.sms / m.clock if k else 0.0
    dram = nbytes / m.dram_bw
    t = max(issue, dram)
    return dict(layer=layer, pass_=pass_, kernel=f"hand-written {kernel}", dram_bytes=nbytes,
                gemm=[M, N, K], kernel_s=t, time_s=t + m.launch_gap_s,
                bound="issue (static count)" if issue > dram else "DRAM")


# csrc/cuda/thin.cuh's CTA threads; pointwise_thin.cuh's most classes and its forward's most runs
_THIN_THREADS, _THIN_CLASSES, _THIN_FPROP_RUNS = 256, 8, 32


def _thin_price(layer, pass_, kernel, pixels, r, hand, nbytes, m: Machine, gemm):
    """A launch of a CUDA-core kernel of thin.cuh (pointwise_thin.cuh, conv3x3_thin.cuh), or None
    when the build lacks it: per pass of 256 / R pixels (R runs of 8 bf16 channels, a thread
    each) every warp issues the grid-stride loop's all_warps instructions and the first
    ceil(pixels / 32) warps its first_warps, 4 warps issuing on each SM per cycle; or the DRAM
    bytes if longer."""
    k = hand.get(kernel)
    if not k or k["all_warps"] is None:
        return None
    per_pass = _THIN_THREADS // r
    passes = math.ceil(pixels / per_pass)
    warp_instr = passes * (_THIN_THREADS // 32 * k["all_warps"]
                           + math.ceil(per_pass / 32) * k["first_warps"])
    issue = warp_instr / (4 * m.sms) / m.clock
    dram = nbytes / m.dram_bw
    t = max(issue, dram)
    return dict(layer=layer, pass_=pass_, kernel=f"hand-written {kernel}", dram_bytes=nbytes,
                gemm=gemm, kernel_s=t, time_s=t + m.launch_gap_s,
                bound="issue (static count)" if issue > dram else "DRAM")


def _thin_runs(channels: int, most: int) -> int:
    """thin.cuh's thin_pow2_runs for bf16: channels / 8 when a power of two <= most, else 0."""
    r = channels // 8
    return r if channels % 8 == 0 and r and not r & (r - 1) and r <= most else 0


def _thin_row(layer, pass_, x, classes, hand, nbytes, m: Machine, gemm=None):
    """The 1x1 conv on the CUDA-core kernels of pointwise_thin.cuh when its launcher takes it (bf16,
    x's channels in 16-byte runs, a power of two of them, few classes), else None."""
    n, c, h, wd = x[2]
    r = _thin_runs(c, _THIN_FPROP_RUNS if pass_ == "fwd" else _THIN_THREADS)
    if not r or not 1 <= classes <= _THIN_CLASSES:
        return None
    kc = 2 if classes <= 2 else _THIN_CLASSES
    kernel = f"pointwise_thin_{ {'fwd': 'fprop'}.get(pass_, pass_)}<__nv_bfloat16, {kc}>"
    return _thin_price(layer, pass_, kernel, n * h * wd, r, hand, nbytes, m, gemm)


def _conv3x3_thin_row(layer, pass_, c, k, pixels, premasked, runs, pad, hand, nbytes,
                      m: Machine, gemm):
    """The 3x3 conv of one input channel on conv3x3_thin.cuh's kernels when its launcher takes it
    (C_out a power of two of 16-byte runs; the forward without the pool; `runs`: y's channels
    (forward: y takes x's format, channels_last for a 1-channel x whose channel stride is the
    smallest) or g's (weight gradient) contiguous), else None."""
    r = _thin_runs(k, _THIN_THREADS)
    if c != 1 or not r or not runs:
        return None
    bounds = "true" if pad else "false"   # (the padded window's bounds checks)
    kernel = (f"conv3x3_thin_fprop<__nv_bfloat16, {bounds}>" if pass_ == "fwd" else
              f"conv3x3_thin_wgrad<__nv_bfloat16, {'false' if premasked else 'true'}, {bounds}>")
    return _thin_price(layer, pass_, kernel, pixels, r, hand, nbytes, m, gemm)


def _cuda_rows(call: dict, units: dict, hand: dict, m: Machine) -> list:
    """The kernels one extension op launches, priced (see the section's comment)."""
    op, layer, a = call["op"], call["layer"], call["args"]
    unit_layer = layer.split("+")[0]   # (the head's fused name: the units run the conv)

    def unit(pass_):
        r = units[(unit_layer, pass_)]
        return dict(layer=layer, pass_=pass_, kernel=r["name"], dram_bytes=r["dram_bytes"],
                    kernel_s=r["kernel_s"], time_s=r["time_s"], bound=r["bound"], flops=r["flops"])

    def relayout(w, order):
        """A weight permuted to `order` and made contiguous: a copy unless it already is."""
        shape, strides = [w[2][i] for i in order], [w[3][i] for i in order]
        dense, want = True, 1
        for n, st in zip(reversed(shape), reversed(strides)):
            dense &= n == 1 or st == want
            want *= n
        return [] if dense else [_mem_row(layer, "weight re-layout", "aten copy", 2 * _tbytes(w), m)]

    def bias_grad(g):   # one fp32 reduction of g over its pixels (aten sum), and its cast
        return [_mem_row(layer, "bias grad", "aten sum", _tbytes(g), m)]

    if op == "_conv3x3_relu_sm90":
        return relayout(a[1], (0, 2, 3, 1)) + [unit("fprop")]
    if op == "_conv3x3_relu_sm90_backward":
        gy, y, x, w, pad, mask, relu_input, grad_masked = a[:8]
        rows = [] if grad_masked else [_mem_row(layer, "dReLU", "aten threshold_backward",
                                                3 * _tbytes(gy), m)]
        rows += relayout(w, (0, 2, 3, 1)) if mask[0] else []
        rows += [unit("dgrad")] if mask[0] else []
        rows += [unit("wgrad"), _mem_row(layer, "weight grad cast", "aten _to_copy",
                                         6 * _numel(w[2]), m)] if mask[1] else []
        return rows + (bias_grad(gy) if mask[2] else [])
    if op == "_up_concat_sm90":
        skip, x, w = a[:3]
        rows = relayout(w, (2, 3, 1, 0))
        if isinstance(skip, tuple):   # the skip's center crop copied into the lower channels
            n, cs = skip[2][:2]
            crop = n * cs * 4 * x[2][2] * x[2][3] * skip[4]
            rows.append(_mem_row(layer, "crop into concat", "crop_into", 2 * crop, m))
        return rows + [unit("up_fprop")]
    if op == "_conv_transpose2x2_dgrad_sm90":
        return relayout(a[2], (0, 2, 3, 1)) + [unit("up_dgrad")]
    if op == "_conv_transpose2x2_wgrad_sm90":
        g, mask = a[0], a[3]
        return ([unit("up_wgrad"), _mem_row(layer, "weight grad cast", "aten _to_copy",
                                            6 * _numel(a[2][2]), m)] if mask[0] else []) + (
            bias_grad(g) if mask[1] else [])
    if op == "max_pool2x2":
        return [_mem_row(layer, "pool", "max_pool2x2", _tbytes(a[0]) * 5 // 4, m)]
    if op in ("_max_pool2x2_backward", "_max_pool2x2_backward_sum"):
        grad, x, skip = a[:3]
        nbytes = _tbytes(grad) + 2 * _tbytes(x) + (_tbytes(skip) if isinstance(skip, tuple) else 0)
        rows = [_mem_row(layer, "pool bwd", op, nbytes, m)]
        if op == "_max_pool2x2_backward_sum":
            # the bias gradient summed by the same pass: its CTAs' fp32 rows of channel sums
            # (at most one wave of 8 CTAs an SM) summed by aten, no read of the gradient
            rows.append(_mem_row(layer, "bias grad (CTA rows)", "aten sum",
                                 8 * m.sms * x[2][1] * 4, m))
        return rows
    if op == "conv3x3_relu":   # hand-written: the layers the units refuse (the first)
        x, w = a[:2]
        n, c, h, wd = x[2]
        k, pad = w[2][0], a[3]
        p, q = h + 2 * pad - 2, wd + 2 * pad - 2
        nbytes, gemm = _tbytes(x) + n * k * p * q * x[4] + _tbytes(w), (n * p * q, k, 9 * c)
        cl = x[3][1] < x[3][2]   # (csrc/common.h's format_of for one channel)
        return [_conv3x3_thin_row(layer, "fwd", c, k, n * p * q, False, cl, pad, hand, nbytes, m,
                                  gemm)
                or _hand_row(layer, "fwd", _HAND_KERNELS[(op, "fwd")], hand, gemm, nbytes, m)]
    if op == "_conv3x3_relu_backward":
        gy, y, x, w, pad, mask = a[:6]
        n, c, h, wd = x[2]
        k, p, q = gy[2][1], gy[2][2], gy[2][3]
        # no y: the gradient arrives masked (grad_masked), read as it is by the Premasked kernels
        pre, g_reads = ("", 2) if isinstance(y, tuple) else ("Premasked", 1)
        rows = []
        if mask[0]:
            rows.append(_hand_row(layer, "dgrad", _HAND_KERNELS[(op, "dgrad")] + pre, hand,
                                  (n * h * wd, c, 9 * k), g_reads * _tbytes(gy) + 2 * _tbytes(x),
                                  m))
        if mask[1] or mask[2]:
            nbytes, gemm = g_reads * _tbytes(gy) + _tbytes(x), (k, 9 * c, n * p * q)
            rows.append(_conv3x3_thin_row(layer, "wgrad", c, k, n * p * q, bool(pre),
                                          gy[3][1] == 1, pad, hand, nbytes, m, gemm)
                        or _hand_row(layer, "wgrad", _HAND_KERNELS[(op, "wgrad")] + pre, hand,
                                     gemm, nbytes, m))
        return rows
    if op == "conv1x1":
        x, w = a[:2]
        n, c, h, wd = x[2]
        k = w[2][0]
        nbytes = _tbytes(x) + n * k * h * wd * x[4]
        return [_thin_row(layer, "fwd", x, k, hand, nbytes, m, (n * h * wd, k, c))
                or _hand_row(layer, "fwd", _HAND_KERNELS[(op, "fwd")], hand, (n * h * wd, k, c),
                             nbytes, m)]
    if op == "_conv1x1_backward":
        gy, x, w, mask = a[:4]
        relu = len(a) > 4 and a[4]   # (dx masked by x > 0 in the epilogue: x read too)
        n, c, h, wd = x[2]
        k = gy[2][1]
        rows = []
        if mask[0]:
            nbytes = _tbytes(gy) + (2 if relu else 1) * _tbytes(x)
            rows.append(_thin_row(layer, "dgrad", x, k, hand, nbytes, m, (n * h * wd, c, k))
                        or _hand_row(layer, "dgrad", _HAND_KERNELS[(op, "dgrad")], hand,
                                     (n * h * wd, c, k), nbytes, m))
        if mask[1] or mask[2]:
            nbytes = _tbytes(gy) + _tbytes(x)
            rows.append(_thin_row(layer, "wgrad", x, k, hand, nbytes, m, (k, c, n * h * wd))
                        or _hand_row(layer, "wgrad", _HAND_KERNELS[(op, "wgrad")], hand,
                                     (k, c, n * h * wd), nbytes, m))
        return rows
    # any other op of ours: its tensors' bytes
    ts = [t for t in a if isinstance(t, tuple) and t and t[0] == "tensor"]
    return [_mem_row(layer, op, op, 2 * sum(_tbytes(t) for t in ts), m)]


def cuda_step(cfg: ModelConfig, ext: dict, m: Machine = H200) -> dict:
    """The explicit backend="cuda" training step of `cfg` on an sm_90 GPU, every launch priced."""
    calls, aten = record_cuda_step(cfg)
    units = {(r["layer"], r["pass_"]): r for r in ext["rows"]
             if r["model"] == cfg.name and "flops" in r}
    hand = {h["name"]: h for h in ext.get("hand_written", [])
            if h["arch"] == "sm_90" and h["issue_cycles_per_iter"]}
    hand.update({t["name"]: t for t in ext.get("thin", []) if t["arch"] == "sm_90"})
    rows = [dict(r, phase=c["phase"]) for c in calls for r in _cuda_rows(c, units, hand, m)]
    rows += [predict_aten(launch, m) for launch in aten]
    kind = collections.defaultdict(float)
    for r in rows:
        kind["CUTLASS units" if r["kernel"].startswith("cutlass") else
             "hand-written convolutions" if r["kernel"].startswith("hand-written") else
             "aten" if r["kernel"].startswith("aten") else "ours, memory-bound"] += r["time_s"]
    return dict(model=cfg.name, batch=cfg.batch, launches=len(rows),
                predicted_s=sum(r["time_s"] for r in rows), by_kind=dict(kind),
                flops=sum(r.get("flops", 0) for r in rows), rows=rows)


def _extension_json(ext: dict) -> dict:
    """The JSON's "extension" entry (the key "pass" as in the Triton part's)."""
    def ren(d):
        return {("pass" if k == "pass_" else k): v for k, v in d.items()}
    return dict(ext, units=[ren(u) for u in ext.get("units", [])],
                rows=[ren(r) for r in ext.get("rows", [])])


def extension_markdown(ext: dict, m: Machine = H200, triton_s: dict | None = None) -> list:
    """The extension's section; triton_s: the Triton step's predicted seconds by model name."""
    lines = ["## CUDA extension (`_C`): CUTLASS sm_90a units", ""]
    if ext.get("status") == "read":
        lines += _units_markdown(ext, m) + _cuda_step_markdown(ext, m, triton_s or {})
    else:
        lines += [f"Not modelled: the extension is {ext.get('status')}.", ""]
    return lines + _hand_markdown(ext)


def _units_markdown(ext: dict, m: Machine) -> list:
    lines = [
        f"Read from `{ext['so']}` (`cuobjdump -sass`, through tools/sass_report.py).",
        "`backend=\"cuda\"` on sm_90 runs these units for every bf16 and fp16 3x3 convolution they",
        "accept, and for the transposed convolutions (up_fprop) and their input and weight gradients",
        "(up_dgrad; up_wgrad, which runs the 3x3 wgrad's kernels on the up-conv's problem)",
        "(one set of instantiations per element type; the per-layer tables below are the",
        "bf16 step's); tile, cluster, stages, threads and shared memory are the units' own config strings",
        "(`_cutlass_sm90_configs`), what they accept their own check (`_cutlass_sm90_check`). Per K",
        "step (one 64-wide K slice of the GEMM) on one SM:",
        "",
        "- consumer loop: the shortest loop holding HGMMA (instructions per warp); producer loop:",
        "  the shortest loop with UTMALDG and no HGMMA (the one warp issuing the TMA loads);",
        "- tensor cycles: the consumer loop's HGMMA FMAs x consumer warp groups / 2048; issue cycles:",
        "  consumer instructions x consumer warps per sub-partition + producer instructions (as if",
        "  the producer warp shared a sub-partition with a consumer warp: conservative);",
        "- L2 bytes: the A tile / the cluster's N extent + the B tile / its M extent (TMA multicast),",
        f"  at {m.l2_bytes_per_clk_sm:.1f} B per SM and cycle (the assumption above).",
        "",
        "| kernel | arch | regs | smem (B) | config | consumer instr/iter | producer instr/iter "
        "| issue cyc | tensor cyc | L2 B / cyc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for u in ext["units"]:
        if "tensor_cycles" not in u:
            lines.append(f"| {u['name']} | {u['arch']} | {u['regs']} | - | {u['config'] or 'no config'} "
                         f"| {u['consumer_instructions_per_iter'] or 'not found'} | - | - | - | - |")
            continue
        cfg = (f"{'x'.join(map(str, u['tile']))}, cluster {'x'.join(map(str, u['cluster']))}, "
               f"{u['stages']} stages, {u['threads']} threads")
        lines.append(
            f"| {u['name']} | {u['arch']} | {u['regs']} | {u['smem']} | {cfg} | "
            f"{u['consumer_instructions_per_iter']} | {u['producer_instructions_per_iter'] or '-'} | "
            f"{u['issue_cycles']} | {u['tensor_cycles']:.0f} | {u['l2_bytes']} / {u['l2_cycles']} |")
    lines += [
        "",
        "Per layer and pass: GEMM fprop M=n*p*q, N=k, K=9c; dgrad M=n*h*w, N=c, K=9k; wgrad M=k, N=9c,",
        "K=n*p*q split over S slices as `conv3x3_wgrad_splits` picks them; up_dgrad (the 2x2",
        "transposed convolution x (n, h, w, c) -> k's input gradient, a strided 2x2 fprop of its",
        "output gradient) M=n*h*w, N=c, K=4k; up_wgrad (that convolution's wgrad) M=c, N=4k, K=n*h*w",
        "split as `up2x2_wgrad_splits` picks it; up_fprop (the up-conv itself) four launches, one a",
        "tap, of M=n*h*w, N=k, K=c (the GEMM column; the row's time and FLOPs are the four's). CTAs:",
        "the tiles, in",
        "whole clusters (assumed to fill all SMs), one per SM, in waves; a CTA takes K steps x",
        "max(tensor, issue, L2) + the code outside both loops issued once (conservative: both roles'",
        f"code, the wait retries) + {m.fill_latency_clk} cycles of fill; never faster than its unique DRAM",
        "bytes; % peak: the GEMM's FLOPs at the peak over that time. fprop and dgrad run the",
        "instantiation `_cutlass_sm90_config_for` names (256x64 tiles for a 64-channel N). The bias",
        "gradient, the split-K sum and the pool the path adds are other kernels (not here).",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in ext["rows"]):
        rows = [r for r in ext["rows"] if r["model"] == model]
        done = [r for r in rows if "flops" in r]   # (not the refused: the hand-written kernels)
        by_pass = collections.defaultdict(float)
        for r in done:
            by_pass[r["pass_"]] += r["time_s"]
        flops = sum(r["flops"] for r in done)
        total = sum(by_pass.values())
        lines += [f"### {model}: CUTLASS units, per layer and pass", "",
                  f"- {len(done)} unit launches, predicted {_fmt_ms(total)} ms (+gaps): "
                  + ", ".join(f"{p} {_fmt_ms(by_pass[p])}" for p in _UNIT_PASSES + _UP_PASSES
                              if p in by_pass)
                  + f"; their FLOPs at the peak {_fmt_ms(flops / m.peak_flops)} ms "
                  f"({100 * flops / m.peak_flops / total:.0f}%).", "",
                  "| layer | pass | GEMM M x N x K | config | CTAs | waves | K steps/CTA | bound "
                  "| % peak | ms (+gap) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "flops" not in r:
                lines.append(f"| {r['layer']} | {r['pass_']} | - | {r['name']}: {r['config']} | - "
                             "| - | - | - | - | - |")
                continue
            lines.append(
                f"| {r['layer']} | {r['pass_']} | {' x '.join(map(str, r['gemm']))} | {r['config']} "
                f"| {r['ctas']} | {r['waves']} | {r['k_steps']} | {r['bound']} | "
                f"{100 * r['predicted_fraction_of_peak']:.0f} | {_fmt_ms(r['time_s'])} |")
        lines.append("")
    return lines


def _cuda_step_markdown(ext: dict, m: Machine, triton_s: dict) -> list:
    lines = []
    for st in ext.get("steps", []):
        total = st["predicted_s"]
        vs = (f"; backend=\"triton\" predicted {_fmt_ms(triton_s[st['model']])} ms above"
              if st["model"] in triton_s else "")
        rows = [r for r in st["rows"] if not r["kernel"].startswith("cutlass")]
        big = [r for r in rows if r["time_s"] >= 20e-6]
        lines += [
            f"### {st['model']}: the explicit backend=\"cuda\" step", "",
            f"- Predicted step time **{_fmt_ms(total)} ms** ({st['batch'] / total:.0f} images/s)"
            f", {st['launches']} launches{vs}: "
            + ", ".join(f"{k} {_fmt_ms(v)}" for k, v in sorted(st["by_kind"].items(),
                                                             key=lambda kv: -kv[1])) + ".",
            "- The step's extension ops as `record_cuda_step` records them on meta tensors (bf16",
            "  autocast, every CUTLASS unit's first-run check taken as passed). A CUTLASS unit is",
            "  its row above (its split-K sum included); the glue's other kernels (the dReLU where",
            "  the gradient comes unmasked, the bias gradients' reductions, weight re-layouts and",
            "  casts, the skip's crop into the concat buffer), the pool and its backward and every",
            "  aten kernel are their bytes at the DRAM bandwidth (ours as well: not read from their",
            "  SASS); the hand-written tensor-core kernels (a first layer of three channels) their",
            "  loop's static count (the table below: both ways of every branch, 4 warps on the 4",
            "  sub-partitions, the epilogue not counted) over 64x64x32 steps (the 3x3 weight",
            "  gradient's N of at most 16 or 32: 64x16x32 or 64x32x32, its Narrow kernel), the",
            "  CUDA-core kernels of csrc/cuda/thin.cuh (the 1x1 head: pointwise_thin_*; a first layer",
            "  of one channel: conv3x3_thin_*) their grid-stride loop's static count (every warp its",
            "  instructions per pass of 256 / R pixels, R = the channels in 16-byte runs; the head's",
            "  forward's run sums between its barriers only the first warps), or their DRAM bytes",
            f"  if longer; {m.launch_gap_s * 1e6:.0f} us between kernels.",
            "",
            "| layer | phase | what | kernel | GEMM M x N x K | bound | ms (+gap) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in big:
            gemm = " x ".join(map(str, r["gemm"])) if r.get("gemm") else "-"
            lines.append(f"| {r['layer']} | {r['phase']} | {r['pass_']} | {r['kernel']} | {gemm} "
                         f"| {r['bound']} | {_fmt_ms(r['time_s'])} |")
        small = [r for r in rows if r["time_s"] < 20e-6]
        lines += [f"\nBesides the CUTLASS units and the rows above: {len(small)} launches under "
                  f"20 us ({_fmt_ms(sum(r['time_s'] for r in small))} ms together).", ""]
    return lines


def _hand_markdown(ext: dict) -> list:
    lines, by_kernel = [], {}
    for h in ext.get("hand_written", []):
        by_kernel.setdefault(h["name"], []).append(h)
    if by_kernel:
        lines += [
            "### Hand-written tensor-core kernels: mainloop per warp and iteration",
            "",
            f"The sm_80 path (on sm_90: fp16, fp32, the first layer and the GEMM-shaped ops). "
            f"{ext['hand_written'][0]['warps']} warps",
            "per CTA, an iteration is a 64x64x32 step (Narrow<P, N>: 64xNx32, the 3x3 weight gradient's",
            "narrow N); tensor cycles at 1024 FMA per SM and cycle for",
            "mma.sync (an A100's rate; assumed on Hopper), tf32 at half; issue cycles: instructions x",
            "warps per sub-partition. Static counts: both ways of every branch in the loop (the cp.async",
            "path and the fallback loads), an upper bound. No per-layer prediction.",
            "",
            "| kernel | arch | regs | instr/iter | MMA | tensor cyc/iter | issue cyc/iter |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, hs in by_kernel.items():
            def col(key):
                return " / ".join(str(h[key] if h[key] is not None else "-") for h in hs)
            lines.append(f"| {name} | {col('arch')} | {col('regs')} | {col('instructions_per_iter')} "
                         f"| {', '.join(sorted({k for h in hs for k in h['mma_kinds']}))} | "
                         f"{col('tensor_cycles_per_iter')} | {col('issue_cycles_per_iter')} |")
        lines.append("")
    return lines


def check_one(kernel: str = "igemm_wgrad_kernel", layer: str = "down.1.2") -> dict:
    """The tool on one small case, for its test: record the paper U-Net's step at batch 1, take
    the first launch of `kernel` in `layer`, compile its first config for sm_90 twice and read the
    mainloop both times."""
    cfg = dataclasses.replace(MODELS["valid572"], batch=1)
    launches = record_step(cfg)
    launch = next(l for l in launches if l.kernel.endswith(kernel) and l.layer == layer)
    runs = []
    for _ in range(2):
        b = _compile_job((compile_key(launch, 0), 90))
        if b.get("error"):
            return dict(error=b["error"])
        b["analysis"] = analyze_sass(b.pop("sass"))
        runs.append(b)
    row = predict(launch, 0, runs[0])
    layers = sorted({(l.layer, l.phase) for l in launches if not l.kernel.startswith("aten.")})
    return dict(kernel=launch.kernel, layer=launch.layer, phase=launch.phase,
                config=row["config"], mainloop=runs[0]["analysis"]["mainloop"],
                mainloop_again=runs[1]["analysis"]["mainloop"], regs=runs[0]["regs"],
                spill=runs[0]["spill"], bound=row["bound"],
                tensor_cycles_per_iter=row["tensor_cycles_per_iter"],
                issue_cycles_per_iter=row["issue_cycles_per_iter"],
                launches=len(launches), layers=[list(x) for x in layers])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="valid572,same512",
                    help="comma-separated model configs, each NAME or NAME:BATCH "
                         f"(names: {', '.join(MODELS)})")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "kernel_model.md"))
    ap.add_argument("--no-write", action="store_true", help="print the summary only")
    ap.add_argument("--check", action="store_true",
                    help="compile and read one kernel twice, print JSON (the tool's own test)")
    ap.add_argument("--extension", action="store_true",
                    help="only the CUDA extension's part (no Triton compiles): print its JSON")
    args = ap.parse_args(argv)
    if args.check:
        print(json.dumps(check_one()))
        return 0
    cfgs = []
    for spec in args.models.split(","):
        name, _, batch = spec.partition(":")
        if name not in MODELS:
            ap.error(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
        cfg = MODELS[name]
        cfgs.append(dataclasses.replace(cfg, batch=int(batch)) if batch else cfg)
    if args.extension:
        print(json.dumps(_extension_json(extension_model(cfgs)), indent=1))
        return 0
    results = []
    for cfg in cfgs:
        res = model_step(cfg, args.jobs)
        s = summarize(res)
        print(f"{cfg.name} b{cfg.batch}: predicted {_fmt_ms(s['predicted_s'])} ms per step "
              f"({s['images_per_s']:.0f} img/s), roofline sum {_fmt_ms(s['roofline_s'])} ms, "
              f"FLOPs at peak {_fmt_ms(s['ideal_s'])} ms; first step {res['first_step']}; "
              f"inference {_fmt_ms(summarize_inference(res)['predicted_s'])} ms")
        for k, v in sorted(s["by_pass"].items(), key=lambda kv: -kv[1]):
            print(f"    {k:28s} {_fmt_ms(v)} ms")
        results.append(res)
    ext = extension_model(cfgs)
    print(f"CUDA extension: {ext['status']}, {len(ext.get('rows', []))} CUTLASS rows")
    if not args.no_write:
        write_report(results, args.out, os.path.splitext(args.out)[0] + ".json", ext=ext)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
