"""Shared machinery of the unet_fast benchmarks (used by conftest.py and the test_bench_*.py files).

What is measured and how:
- Shapes come from the model configuration: `derive_layers` runs the reference U-Net on the meta
  device with hooks and records every op call (no hand-written shape lists).
- GPU timing: CUDA events around each call, after warm-up; the reported figure is the median.
  Each round synchronizes, so pytest-benchmark's own (wall-clock) statistics are also right; the
  event median (`median_ms` in extra_info) is the figure the summaries use. Inputs are random
  (never zeros) and rotated among several sets when one set is smaller than twice the L2 cache.
- CPU timing: pytest-benchmark's own timer (the CPU work is synchronous).
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` on the reference, on the meta device. Bytes of
  the memory-bound ops (pool, crop_concat): the fewest a kernel must move (inputs read once,
  outputs written once).
- Ceilings: a device-to-device copy (bytes read + written) and an 8192^3 bf16 matmul, measured in
  the same run; every figure is also given as a fraction of them.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unet_fast as uf
from unet_fast import reference
from unet_fast._utils import conv_allows_tf32
from unet_fast._utils import center_crop

# --------------------------------------------------------------------------- providers
# auto_ckpt: "auto" with activation checkpointing; auto_up: with the decoder's up-sampled maps
# recomputed (UNet(checkpointing="up")) (whole-model training step only: peak memory)
PROVIDERS = ("eager", "eager_cl", "compile", "compile_max", "triton", "cuda", "auto", "auto_ckpt",
             "auto_up")
PROVIDER_LABELS = {
    "eager": "eager NCHW",
    "eager_cl": "eager channels_last",
    "compile": "torch.compile",
    "compile_max": "torch.compile max-autotune",
    "triton": "ours: triton",
    "cuda": "ours: cuda",
    "auto": "ours: auto",
    "auto_ckpt": "ours: auto + activation checkpointing",
    "auto_up": "ours: auto + up-convs recomputed",
}
OURS = ("triton", "cuda", "auto", "auto_ckpt", "auto_up")
COMPILE = ("compile", "compile_max")
MODES = ("fwd", "bwd", "fwd+bwd")
MODEL_MODES = ("train", "infer")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_BOUND_OPS = ("max_pool2x2", "crop_concat")
# The model's fused ops: each does the work of unfused ones also listed, so sums over a step's
# layers count the unfused ones only.
FUSED_OPS = ("conv3x3_relu_pool", "up_concat", "concat_conv3x3_relu", "conv3x3_relu_conv1x1")
LEVELS = ("quick", "default", "full")


# --------------------------------------------------------------------------- configurations
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    in_channels: int
    num_classes: int
    size: int
    padding: str
    base_channels: int = 64
    depth: int = 4

    def build_reference(self):
        return reference.UNet(self.in_channels, self.num_classes, self.base_channels, self.depth,
                              self.padding)

    def build_ours(self, backend):
        ckpt = {"auto_ckpt": True, "auto_up": "up"}.get(backend, False)
        return uf.UNet(self.in_channels, self.num_classes, self.base_channels, self.depth,
                       self.padding, backend="auto" if ckpt else backend, checkpointing=ckpt)


PAPER = ModelConfig("valid572", 1, 2, 572, "valid")
SAME = ModelConfig("same512", 3, 2, 512, "same")
# Toy versions for --bench-simulate (the GPU benchmark code on the CPU) and the CPU subset.
TOY_VALID = ModelConfig("valid188c4", 1, 2, 188, "valid", base_channels=4)
TOY_SAME = ModelConfig("same64c4", 3, 2, 64, "same", base_channels=4)
CPU_VALID = ModelConfig("valid188c8", 1, 2, 188, "valid", base_channels=8)
CPU_SAME = ModelConfig("same64c8", 3, 2, 64, "same", base_channels=8)
CPU_MODEL = ModelConfig("valid188c16", 1, 2, 188, "valid", base_channels=16)


def config_id(cfg: ModelConfig, batch: int) -> str:
    return f"{cfg.name}-b{batch}"


# --------------------------------------------------------------------------- layer shapes
@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One distinct call of an op inside the U-Net: shapes of its tensor arguments."""
    op: str
    layer: str                      # the first layer (module path) that makes this call
    uses: tuple                     # every layer that makes the same call
    shapes: tuple                   # ((arg name, shape), ...) in the op's argument order
    padding: Optional[int] = None   # conv3x3 ops only
    input_grad: bool = True         # False for the network's input (no dgrad in training)

    def shape(self, name):
        return dict(self.shapes)[name]

    @property
    def main_shape(self) -> tuple:
        return self.shapes[0][1]

    def describe(self) -> str:
        parts = ["x".join(map(str, s)) for _, s in self.shapes]
        return " ".join(f"{n}={p}" for (n, _), p in zip(self.shapes, parts))


def derive_layers(cfg: ModelConfig, batch: int) -> list[LayerSpec]:
    """Every distinct (op, shapes) call of a forward pass of `cfg` at `batch`, in forward order.

    Runs the reference U-Net on the meta device with hooks: conv modules give conv3x3_relu /
    conv1x1 / conv_transpose2x2 (and, for each encoder level's second conv, the fused
    conv3x3_relu_pool); each pooling gives max_pool2x2; each decoder step gives crop_concat and
    the fused up_concat (transposed conv written into the concat buffer), and the fused
    concat_conv3x3_relu (the first decoder conv reading the cropped skip and the up-sampled map in
    place, as the model calls it: the skip already cropped); the head gives conv1x1 and the
    fused conv3x3_relu_conv1x1 (the last 3x3 conv with the head in its epilogue)."""
    with torch.device("meta"):
        model = cfg.build_reference()
        x = torch.empty(batch, cfg.in_channels, cfg.size, cfg.size)
    names = {mod: n for n, mod in model.named_modules()}
    raw: list[tuple] = []
    pool_count = [0]
    last_conv = []   # the latest 3x3 conv's (name, args, padding): the head's fused partner

    def conv_hook(mod, inputs):
        name = names[mod]
        xs, ws = tuple(inputs[0].shape), tuple(mod.weight.shape)
        bs = (ws[1],) if isinstance(mod, nn.ConvTranspose2d) else (ws[0],)
        first = name == "down.0.0"
        if isinstance(mod, nn.ConvTranspose2d):
            raw.append(("conv_transpose2x2", name, (("x", xs), ("weight", ws), ("bias", bs)), None, True))
        elif mod.kernel_size == (3, 3):
            args = (("x", xs), ("weight", ws), ("bias", bs))
            raw.append(("conv3x3_relu", name, args, mod.padding[0], not first))
            if name.startswith("down.") and name.endswith(".2"):
                raw.append(("conv3x3_relu_pool", name + "+pool", args, mod.padding[0], True))
            last_conv[:] = [name, args, mod.padding[0]]
        else:
            raw.append(("conv1x1", name, (("x", xs), ("weight", ws), ("bias", bs)), None, True))
            c_name, c_args, c_pad = last_conv
            raw.append(("conv3x3_relu_conv1x1", f"{c_name}+{name}",
                        c_args + (("head_weight", ws), ("head_bias", bs)), c_pad, True))

    def pool_hook(mod, inputs):
        raw.append(("max_pool2x2", f"down.{pool_count[0]}.pool", (("x", tuple(inputs[0].shape)),), None, True))
        pool_count[0] += 1

    def up_hook(mod, inputs):
        xin, skip = inputs
        n, _, h, w = xin.shape
        up_shape = (n, mod.up.weight.shape[1], 2 * h, 2 * w)
        name = names[mod]
        raw.append(("crop_concat", name + ".cat", (("skip", tuple(skip.shape)), ("up", up_shape)), None, True))
        ws = tuple(mod.up.weight.shape)
        raw.append(("up_concat", name + ".up+cat", (("skip", tuple(skip.shape)), ("x", tuple(xin.shape)),
                                                     ("weight", ws), ("bias", (ws[1],))), None, True))
        cw = tuple(mod.conv[0].weight.shape)
        cropped = tuple(skip.shape[:2]) + up_shape[2:]
        raw.append(("concat_conv3x3_relu", name + ".cat+conv.0",
                    (("skip", cropped), ("up", up_shape), ("weight", cw), ("bias", (cw[0],))),
                    mod.conv[0].padding[0], True))

    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            mod.register_forward_pre_hook(conv_hook)
        elif isinstance(mod, nn.MaxPool2d):
            mod.register_forward_pre_hook(pool_hook)
        elif isinstance(mod, reference.Up):
            mod.register_forward_pre_hook(up_hook)
    with torch.no_grad():
        model(x)

    specs: dict[tuple, list] = {}
    for op, name, shapes, padding, input_grad in raw:
        key = (op, shapes, padding, input_grad)
        if key in specs:
            specs[key][1].append(name)
        else:
            specs[key] = [name, [name]]
    return [LayerSpec(op, first, tuple(uses), shapes, padding, input_grad)
            for (op, shapes, padding, input_grad), (first, uses) in specs.items()]


# --------------------------------------------------------------------------- the ops
def _ref_conv3x3_relu(p):
    return lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=p))


def _ref_conv3x3_relu_pool(p):
    def fn(x, w, b):
        y = F.relu(F.conv2d(x, w, b, padding=p))
        return y, F.max_pool2d(y, 2, 2)
    return fn


def _ref_crop_concat(skip, up):
    return torch.cat([center_crop(skip, up.shape[-2:]), up], dim=1)


def _ref_up_concat(skip, x, w, b):
    return _ref_crop_concat(skip, F.conv_transpose2d(x, w, b, stride=2))


def reference_fn(spec: LayerSpec) -> Callable:
    """The op in plain PyTorch (what eager and torch.compile run), taking the tensors only."""
    return {
        "conv3x3_relu": lambda: _ref_conv3x3_relu(spec.padding),
        "conv3x3_relu_pool": lambda: _ref_conv3x3_relu_pool(spec.padding),
        "max_pool2x2": lambda: (lambda x: F.max_pool2d(x, 2, 2)),
        "crop_concat": lambda: _ref_crop_concat,
        "conv_transpose2x2": lambda: (lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2)),
        "conv1x1": lambda: (lambda x, w, b: F.conv2d(x, w, b)),
        "up_concat": lambda: _ref_up_concat,
        "concat_conv3x3_relu": lambda: (lambda s, u, w, b: _ref_conv3x3_relu(spec.padding)(
            _ref_crop_concat(s, u), w, b)),
        "conv3x3_relu_conv1x1": lambda: (lambda x, w, b, hw, hb: F.conv2d(
            _ref_conv3x3_relu(spec.padding)(x, w, b), hw, hb)),
    }[spec.op]()


def ours_fn(spec: LayerSpec, backend: str) -> Callable:
    """The op through unet_fast's public API with an explicit backend."""
    op = getattr(uf.ops, spec.op)
    if spec.padding is not None:
        return lambda *t: op(*t, spec.padding, backend=backend)
    return lambda *t: op(*t, backend=backend)


def make_inputs(spec: LayerSpec, dtype, device, channels_last: bool, weights_channels_last: bool,
                requires_grad: bool, generator=None) -> list:
    """Random inputs of `spec` (weights scaled by 1/sqrt(fan-in), so activations stay O(1))."""
    out = []
    for name, shape in spec.shapes:
        t = torch.randn(shape, device=device, dtype=torch.float32, generator=generator)
        if name in ("weight", "head_weight"):
            fan_in = shape[1] * shape[2] * shape[3] if spec.op != "up_concat" and spec.op != "conv_transpose2x2" \
                else shape[0]
            t = t / math.sqrt(fan_in)
        elif name in ("bias", "head_bias"):
            t = t * 0.1
        t = t.to(dtype)
        if len(shape) == 4 and ((name == "weight" and weights_channels_last)
                                or (name != "weight" and channels_last)):
            t = t.contiguous(memory_format=torch.channels_last)
        grad = requires_grad and not (name == "x" and spec.layer == "down.0.0" and not spec.input_grad)
        out.append(t.requires_grad_(grad))
    return out


def tensor_bytes(shape, dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def min_bytes(spec: LayerSpec, mode: str, dtype) -> int:
    """The fewest bytes the memory-bound ops must move (each input read once, each output written
    once); 0 for the convolutions (they are compute-bound: judged by FLOPs)."""
    e = torch.empty((), dtype=dtype).element_size()
    if spec.op == "max_pool2x2":
        n, c, h, w = spec.shape("x")
        x, y = n * c * h * w, n * c * (h // 2) * (w // 2)
        fwd, bwd = x + y, x + y + x          # bwd: read x (argmax recomputed) and dy, write dx
    elif spec.op == "crop_concat":
        n, cs, hs, ws = spec.shape("skip")
        _, cu, h, w = spec.shape("up")
        crop, up, skip = n * cs * h * w, n * cu * h * w, n * cs * hs * ws
        fwd = 2 * (crop + up)                # read crop(skip) and up, write the concat
        bwd = crop + skip                    # read dy's skip slice, write d(skip); d(up) is a view
    else:
        return 0
    return e * {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


_FLOP_CACHE: dict = {}


def count_flops(fn: Callable, shapes: list, mode: str, grad_mask=None) -> int:
    """FLOPs of `fn` on tensors of `shapes` (meta device) for mode fwd / bwd / fwd+bwd / infer /
    train, counted by torch.utils.flop_counter on the reference."""
    from torch.utils.flop_counter import FlopCounterMode
    grad_mask = grad_mask or [True] * len(shapes)
    with torch.device("meta"):
        ts = [torch.empty(s).requires_grad_(g) for s, g in zip(shapes, grad_mask)]
    fwd_counter, bwd_counter = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with fwd_counter:
        out = fn(*ts)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    flops_fwd = fwd_counter.get_total_flops()
    flops_bwd = 0
    if mode in ("bwd", "fwd+bwd", "train") and any(grad_mask):
        with bwd_counter:
            torch.autograd.backward([o for o in outs], [torch.ones_like(o) for o in outs])
        flops_bwd = bwd_counter.get_total_flops()
    return {"fwd": flops_fwd, "infer": flops_fwd, "bwd": flops_bwd,
            "fwd+bwd": flops_fwd + flops_bwd, "train": flops_fwd + flops_bwd}[mode]


def layer_flops(spec: LayerSpec, mode: str) -> int:
    key = (spec, mode)
    if key not in _FLOP_CACHE:
        grad_mask = [not (n == "x" and not spec.input_grad) for n, _ in spec.shapes]
        _FLOP_CACHE[key] = count_flops(reference_fn(spec), [s for _, s in spec.shapes], mode, grad_mask)
    return _FLOP_CACHE[key]


def model_flops(cfg: ModelConfig, batch: int, mode: str) -> int:
    key = (cfg, batch, mode)
    if key not in _FLOP_CACHE:
        from torch.utils.flop_counter import FlopCounterMode
        with torch.device("meta"):
            model = cfg.build_reference()
            x = torch.empty(batch, cfg.in_channels, cfg.size, cfg.size)
        with FlopCounterMode(display=False) as fc:
            y = model(x)
            if mode == "train":
                y.float().sum().backward()
        _FLOP_CACHE[key] = fc.get_total_flops()
    return _FLOP_CACHE[key]


# --------------------------------------------------------------------------- environment
_ENV: Optional[dict] = None


def environment() -> dict:
    """GPU name and the versions every result carries."""
    global _ENV
    if _ENV is None:
        env = {"torch": torch.__version__, "cuda": torch.version.cuda,
               "python": platform.python_version(), "unet_fast": uf.__version__,
               "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
        try:
            import triton
            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env.update(gpu=p.name, gpu_capability=f"{p.major}.{p.minor}", gpu_sms=p.multi_processor_count,
                       gpu_memory_gib=round(p.total_memory / 2**30, 1),
                       gpu_l2_bytes=getattr(p, "L2_cache_size", None),
                       cudnn_allow_tf32=conv_allows_tf32(),
                       matmul_allow_tf32=torch.backends.cuda.matmul.fp32_precision == "tf32")
        else:
            env["gpu"] = None
        env["backends"] = {k: v for k, v in uf.backends.available().items()}
        _ENV = env
    return _ENV


def record_env() -> dict:
    """The per-result subset of `environment()`."""
    e = environment()
    return {k: e.get(k) for k in ("gpu", "torch", "triton", "cuda", "cudnn", "python")}


def l2_bytes() -> int:
    if torch.cuda.is_available():
        return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 50 * 2**20
    return 50 * 2**20


def rotation_sets(bytes_per_set: int, device: str, max_sets: int = 8) -> int:
    """How many input sets to cycle through so that consecutive calls don't hit in L2."""
    if device != "cuda" or bytes_per_set <= 0:
        return 1
    return max(1, min(max_sets, math.ceil(2 * l2_bytes() / bytes_per_set)))


# --------------------------------------------------------------------------- timing
def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


class Timing:
    """Timing figures of one benchmark, in milliseconds."""

    def __init__(self, times_ms: list, timer: str):
        self.times_ms = times_ms
        self.timer = timer

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    def as_dict(self) -> dict:
        t = sorted(self.times_ms)
        q = statistics.quantiles(t, n=4) if len(t) >= 2 else [t[0]] * 3
        return {"median_ms": statistics.median(t), "min_ms": t[0], "iqr_ms": q[2] - q[0],
                "rounds": len(t), "timer": self.timer}


def time_step(benchmark, step: Callable[[int], object], nsets: int, device: str, *,
              warmup: int = 3, target_s: float = 0.2, min_rounds: int = 5, max_rounds: int = 30) -> Timing:
    """Time `step(i)` (i cycles through the input sets) after `warmup` calls.

    CUDA: each round records events around the call and synchronizes, so the round time that
    pytest-benchmark measures is right too; the event times are returned. CPU: pytest-benchmark's
    own timer, with enough iterations per round to make a round >= 1 ms.
    The number of rounds is chosen from the warm-up time to take about `target_s`."""
    counter = [0]

    def nxt():
        i = counter[0] % nsets
        counter[0] += 1
        return i

    for _ in range(max(1, warmup)):
        step(nxt())
    sync(device)
    if device == "cuda":
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        step(nxt())
        e.record()
        e.synchronize()
        est = max(s.elapsed_time(e) / 1e3, 1e-6)
        rounds = int(min(max_rounds, max(min_rounds, target_s / est)))
        times: list = []

        def target():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            i = nxt()
            a.record()
            step(i)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))

        benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=0)
        if not times:  # --benchmark-disable runs the target once at most
            target()
        return Timing(times, "cuda-event")
    t1 = time.perf_counter()
    step(nxt())
    est = max(time.perf_counter() - t1, 1e-7)
    iterations = max(1, int(1e-3 / est))
    rounds = int(min(max_rounds, max(min_rounds, target_s / (est * iterations))))
    def cpu_target():
        step(nxt())

    benchmark.pedantic(cpu_target, rounds=rounds, iterations=iterations, warmup_rounds=0)
    st = getattr(getattr(benchmark, "stats", None), "stats", None)
    if st is not None and getattr(st, "data", None):   # per-iteration seconds
        return Timing([v * 1e3 for v in st.data], "perf_counter")
    return Timing([est * 1e3], "perf_counter (one call: benchmarks disabled)")


def measure_peak_memory(step: Callable[[], object], device: str) -> dict:
    """Peak allocated bytes during one call (absolute, and above what was allocated before)."""
    if device != "cuda":
        return {"peak_mem_bytes": None, "peak_mem_delta_bytes": None}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_mem_bytes": peak, "peak_mem_delta_bytes": peak - base}


def rel_err(a, b) -> Optional[float]:
    """||a - b|| / ||b|| in float64, over all outputs."""
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    num = sum(float((x.detach().double() - y.detach().double()).norm() ** 2) for x, y in zip(a, b))
    den = sum(float(y.detach().double().norm() ** 2) for y in b)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


# --------------------------------------------------------------------------- ceilings
def measure_copy_bandwidth(nbytes: int = 2**30, reps: int = 20) -> dict:
    """Device-to-device copy, counting bytes read + written (GB/s = 1e9 B/s)."""
    n = nbytes // 4
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = _event_times(lambda: dst.copy_(src), reps)
    med = statistics.median(times)
    return {"copy_gbps": 2 * n * 4 / (med / 1e3) / 1e9, "copy_bytes": 2 * n * 4, "copy_median_ms": med}


def measure_matmul_peak(n: int = 8192, reps: int = 20) -> dict:
    """An n^3 bf16 matmul on random data (TFLOP/s = 1e12 FLOP/s)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        torch.matmul(a, b, out=c)
    times = _event_times(lambda: torch.matmul(a, b, out=c), reps)
    med = statistics.median(times)
    return {"matmul_tflops": 2 * n**3 / (med / 1e3) / 1e12, "matmul_n": n, "matmul_median_ms": med}


def measure_cpu_ceilings() -> dict:
    """The same two ceilings on the CPU (fp32 matmul), at sizes that take a moment."""
    src = torch.randn(2**24)
    dst = torch.empty_like(src)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    mm = []
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(a, b)
        mm.append(time.perf_counter() - t)
    return {"copy_gbps": 2 * src.numel() * 4 / statistics.median(times) / 1e9,
            "matmul_tflops": 2 * 1024**3 / statistics.median(mm) / 1e12, "matmul_dtype": "fp32",
            "matmul_n": 1024}


def _event_times(fn, reps: int) -> list:
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        out.append((a, b))
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in out]


def derived_metrics(timing_ms: float, flops: int, nbytes: int, ceilings: dict, memory_bound: bool,
                    images: Optional[int] = None) -> dict:
    """TFLOP/s, GB/s, images/s and the fraction of the machine's measured ceiling."""
    s = timing_ms / 1e3
    d = {"flops": flops, "bytes": nbytes,
         "tflops": flops / s / 1e12 if flops else None,
         "gbps": nbytes / s / 1e9 if nbytes else None,
         "bound": "memory" if memory_bound else "compute"}
    if images is not None:
        d["images_per_s"] = images / s
    ceil_key, val = ("copy_gbps", d["gbps"]) if memory_bound else ("matmul_tflops", d["tflops"])
    ceil = (ceilings or {}).get(ceil_key)
    d["frac_peak"] = val / ceil if (val and ceil) else None
    d["peak_ref"] = "copy bandwidth" if memory_bound else "bf16 matmul"
    return d


# --------------------------------------------------------------------------- compile helpers
def compile_fn(fn, provider: str, per_op: bool):
    """torch.compile for the two compile providers. Per op, max-autotune runs without CUDA graphs
    (a per-op graph would only hide the launch, which every other provider pays too, and graph
    replays cannot be interleaved with the repeated backward of the `bwd` mode); whole models use
    mode="max-autotune" as a user would."""
    import torch._dynamo.config as dcfg
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(dcfg, name):
            setattr(dcfg, name, max(getattr(dcfg, name), 64))
    torch.compiler.reset()
    if provider == "compile":
        return torch.compile(fn, dynamic=False, fullgraph=per_op)
    mode = "max-autotune-no-cudagraphs" if per_op else "max-autotune"
    return torch.compile(fn, mode=mode, dynamic=False, fullgraph=per_op)


def compile_mode_name(provider: str, per_op: bool) -> Optional[str]:
    if provider == "compile":
        return "default"
    if provider == "compile_max":
        return "max-autotune-no-cudagraphs" if per_op else "max-autotune"
    return None


def release(device: str):
    import gc
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the plan
class Settings:
    """What this run measures; set once by conftest.py from the command line."""
    level = "default"
    suite = "cpu"            # which subset runs: "gpu", "cpu" or "all"
    simulate = False         # the GPU benchmarks on the CPU at toy sizes (tests the harness)
    simulate_compile = False
    plan = False             # collect the GPU cases even without a GPU (for --collect-only)
    deadline = None          # time.time() after which no case starts
    budget = None
    providers = PROVIDERS

    @classmethod
    def device(cls) -> str:
        return "cpu" if cls.simulate else "cuda"

    @classmethod
    def as_dict(cls) -> dict:
        return {k: getattr(cls, k) for k in ("level", "suite", "simulate", "plan", "deadline", "budget")} | \
            {"providers": list(cls.providers)}


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str                       # "layer" | "model"
    config: ModelConfig
    batch: int
    mode: str                       # fwd / bwd / fwd+bwd (layer), train / infer (model)
    dtype: str                      # fp32 / bf16 / fp16
    provider: str
    spec: Optional[LayerSpec] = None
    tier: int = 99                  # run order: lower first (the suite's time budget cuts the tail)
    est_s: float = 1.0              # rough cost, for the time budget

    @property
    def config_id(self) -> str:
        return config_id(self.config, self.batch)

    @property
    def id(self) -> str:
        if self.kind == "layer":
            return f"{self.config_id}-{self.spec.layer}-{self.spec.op}-{self.mode}-{self.dtype}-{self.provider}"
        return f"{self.config_id}-{self.mode}-{self.dtype}-{self.provider}"

    @property
    def group(self) -> str:
        if self.kind == "layer":
            return f"layer {self.config_id} {self.spec.layer} {self.spec.op} {self.mode} {self.dtype}"
        return f"model {self.config_id} {self.mode} {self.dtype}"


def _gpu_configs(simulate: bool):
    """(paper config, batch), (same config, batch) for the layer and model benchmarks."""
    if simulate:
        return {"paper8": (TOY_VALID, 2), "paper1": (TOY_VALID, 1), "same16": (TOY_SAME, 2)}
    return {"paper8": (PAPER, 8), "paper1": (PAPER, 1), "same16": (SAME, 16)}


_NONCOMPILE = ("eager", "eager_cl", "triton", "cuda", "auto")
_CL_OURS = ("eager_cl", "triton", "cuda", "auto")

# What each level measures, in run order (tier: lower first; a time budget cuts the tail).
# Layers: (config key, modes, providers, tier). Models: (config key, dtypes, modes, providers, tier).
_LAYER_PLAN = {
    "quick": [("paper8", ("fwd+bwd",), _CL_OURS, 3), ("paper8", ("fwd",), _CL_OURS, 6)],
    "default": [("paper8", ("fwd+bwd",), _NONCOMPILE, 3), ("paper8", ("fwd",), _NONCOMPILE, 6),
                ("same16", ("fwd+bwd",), _CL_OURS, 9), ("same16", ("fwd",), _CL_OURS, 10)],
    "full": [("paper8", ("fwd+bwd",), _NONCOMPILE, 3), ("paper8", ("fwd",), _NONCOMPILE, 6),
             ("same16", ("fwd+bwd",), _NONCOMPILE, 9), ("same16", ("fwd",), _NONCOMPILE, 10),
             ("paper1", ("fwd+bwd", "fwd"), _NONCOMPILE, 11),
             ("paper8", ("bwd",), _NONCOMPILE, 12), ("same16", ("bwd",), _NONCOMPILE, 12),
             ("paper1", ("bwd",), _NONCOMPILE, 12),
             ("paper8", ("fwd+bwd", "fwd"), ("compile",), 14),
             ("paper8", ("bwd",), ("compile",), 17), ("same16", MODES, ("compile",), 17),
             ("paper1", MODES, ("compile",), 17), ("paper8", MODES, ("compile_max",), 17),
             ("same16", MODES, ("compile_max",), 17), ("paper1", MODES, ("compile_max",), 17)],
}
_MODEL_PLAN = {
    "quick": [("paper8", ("bf16",), ("train",), _NONCOMPILE, 1), ("paper8", ("bf16",), ("infer",), _NONCOMPILE, 2),
              ("paper8", ("bf16",), ("train",), ("compile",), 5)],
    "default": [("paper8", ("bf16",), ("train",), _NONCOMPILE, 1),
                ("paper8", ("bf16",), ("infer",), _NONCOMPILE, 2),
                ("paper8", ("bf16",), ("train",), ("auto_up", "auto_ckpt"), 3),
                ("paper8", ("bf16",), ("train",), ("compile_max",), 4),
                ("paper8", ("bf16",), ("train",), ("compile",), 5),
                ("paper8", ("bf16",), ("infer",), COMPILE, 7),
                ("same16", ("bf16",), MODEL_MODES, _NONCOMPILE, 8)],
    "full": [("paper8", ("bf16",), ("train",), _NONCOMPILE, 1),
             ("paper8", ("bf16",), ("infer",), _NONCOMPILE, 2),
             ("paper8", ("bf16",), ("train",), ("auto_up", "auto_ckpt"), 3),
             ("paper8", ("bf16",), ("train",), ("compile_max",), 4),
             ("paper8", ("bf16",), ("train",), ("compile",), 5),
             ("paper8", ("bf16",), ("infer",), COMPILE, 7),
             ("same16", ("bf16",), MODEL_MODES, _NONCOMPILE, 8),
             ("paper8", ("fp16", "fp32"), MODEL_MODES, _NONCOMPILE, 13),
             ("same16", ("fp16", "fp32"), MODEL_MODES, _NONCOMPILE, 13),
             ("same16", ("bf16",), MODEL_MODES, COMPILE, 15),
             ("paper8", ("fp16", "fp32"), MODEL_MODES, COMPILE, 16),
             ("same16", ("fp16", "fp32"), MODEL_MODES, COMPILE, 16)],
}


def plan_layers(level: str, simulate: bool = False) -> list[Case]:
    cfgs = _gpu_configs(simulate)
    cases, seen = [], set()
    for key, modes, providers, tier in _LAYER_PLAN[level]:
        cfg, batch = cfgs[key]
        for spec in derive_layers(cfg, batch):
            for mode in modes:
                for prov in providers:
                    if (key, spec, mode, prov) not in seen:
                        seen.add((key, spec, mode, prov))
                        cases.append(Case("layer", cfg, batch, mode, "bf16", prov, spec, tier,
                                          _layer_est(mode, prov)))
    return cases


def _layer_est(mode, prov) -> float:
    if prov == "compile":
        return 5.0 if mode == "fwd" else 10.0
    if prov == "compile_max":
        return 25.0 if mode == "fwd" else 40.0
    return 0.3


def plan_models(level: str, simulate: bool = False) -> list[Case]:
    cfgs = _gpu_configs(simulate)
    cases = []
    for key, dtypes, modes, providers, tier in _MODEL_PLAN[level]:
        cfg, batch = cfgs[key]
        for dtype in dtypes:
            if simulate and dtype == "fp16":
                continue
            for mode in modes:
                for prov in providers:
                    cases.append(Case("model", cfg, batch, mode, dtype, prov, None, tier,
                                      _model_est(mode, dtype, prov)))
    return cases


def _model_est(mode, dtype, prov) -> float:
    base = {"infer": 3.0, "train": 5.0}[mode] * (2 if dtype == "fp32" else 1)
    if prov == "compile":
        return base + (30.0 if mode == "infer" else 60.0)
    if prov == "compile_max":
        return base + (90.0 if mode == "infer" else 150.0)
    return base


def provider_unavailable(provider: str, device: str) -> Optional[str]:
    """Why this provider cannot run on this device at all (None if it may)."""
    if provider not in Settings.providers:
        return f"provider {provider} not selected (--bench-providers)"
    if provider in ("triton", "cuda"):
        why = uf.backends.available().get(provider)
        if why:
            return f"backend {provider!r} unavailable: {why}"
        if provider == "triton" and device == "cpu":
            return ("the triton backend runs CPU tensors only under the Triton interpreter; timing "
                    "the interpreter means nothing")
    if provider in COMPILE and device == "cpu" and Settings.simulate and not Settings.simulate_compile:
        return "torch.compile is skipped in --bench-simulate (add --bench-simulate-compile)"
    return None


OBSERVED: dict = {}      # (kind, provider, mode, dtype) -> wall seconds of the cases run so far


def _obs_key(case) -> tuple:
    return (case.kind, case.provider, case.mode, case.dtype)


def observe(case, seconds: float) -> None:
    """Remember how long a case took: later cases of its kind are budgeted by what was seen."""
    OBSERVED.setdefault(_obs_key(case), []).append(seconds)


def expected_seconds(case) -> float:
    seen = OBSERVED.get(_obs_key(case))
    return max(case.est_s, statistics.mean(seen)) if seen else case.est_s


def budget_skip_reason(case, now: float) -> Optional[str]:
    """Why `case` is not started under the time budget (None: start it)."""
    if Settings.deadline is None or not isinstance(case, Case):
        return None
    left = Settings.deadline - now
    need = expected_seconds(case)
    if need <= left:
        return None
    return (f"time budget: not started (needs ~{need:.0f} s, {max(left, 0):.0f} s of the "
            f"{Settings.budget:.0f} s budget left)")


RECORDS: list = []       # extra_info of every benchmark of this session
CEILINGS: dict = {}      # measured ceilings of this session


def finish(benchmark, info: dict) -> dict:
    """Attach `info` (and the environment) to the benchmark's extra_info and keep it."""
    info = dict(info)
    info.update(record_env())
    benchmark.extra_info.update(info)
    RECORDS.append(dict(benchmark.extra_info))
    return info


# --------------------------------------------------------------------------- collection helpers
def gpu_skip_reason():
    """Why the GPU benchmarks don't run here (None if they do)."""
    if Settings.simulate:
        return None
    if not torch.cuda.is_available():
        return ("needs a CUDA GPU (torch.cuda.is_available() is False); run benchmarks/gpu_suite.sh on "
                "a GPU machine, or add --bench-simulate to exercise this code on the CPU")
    if Settings.suite not in ("gpu", "all"):
        return f"GPU benchmarks not selected (--bench-suite={Settings.suite})"
    return None


def cpu_skip_reason():
    if Settings.suite in ("cpu", "all"):
        return None
    return "the CPU subset runs without a GPU, or with --bench-suite=cpu|all"


def parametrize_cases(metafunc, cases):
    """Parametrize `case` with `cases`, or with one skipped placeholder when the GPU part can't run
    (unless --bench-plan asks for the full list)."""
    why = gpu_skip_reason()
    if why and not Settings.plan:
        metafunc.parametrize("case", [pytest.param(None, id="not-run", marks=pytest.mark.skip(reason=why))])
        return
    params = []
    for c in cases:
        marks = [pytest.mark.skip(reason=why)] if why else []
        params.append(pytest.param(c, id=c.id, marks=marks))
    metafunc.parametrize("case", params)




def plan_table(cases) -> list[str]:
    """The plan of a GPU run, grouped in run order: one line per (tier, kind, config, mode, provider kind)."""
    import collections
    by = collections.OrderedDict()
    for c in sorted(cases, key=lambda c: c.tier):
        key = (c.tier, c.kind, c.config_id, c.mode if c.kind == "layer" else f"{c.mode} {c.dtype}",
               c.provider if c.provider in COMPILE else "eager/ours")
        n, s = by.get(key, (0, 0.0))
        by[key] = (n + 1, s + c.est_s)
    lines, total = [], 0.0
    for (tier, kind, cfg, mode, prov), (n, s) in by.items():
        total += s
        lines.append(f"  tier {tier:2d}  {kind:5s} {cfg:12s} {mode:12s} {prov:11s} {n:5d} cases  est {s:7.0f} s"
                     f"  (cumulative {total:6.0f} s)")
    lines.append(f"  total: {sum(n for n, _ in by.values())} cases, est {total:.0f} s (+ 3 ceilings)")
    return lines
