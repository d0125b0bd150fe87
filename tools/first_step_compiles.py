#!/usr/bin/env python
"""Time the Triton compiles of a first training step, no GPU needed.

Runs one bf16-autocast training step of a model config (tools/kernel_model.py's: valid572,
same512, or NAME:BATCH) on the triton backend with CPU tensors, through Triton's own launch path
on a stand-in driver for an sm_90 GPU: every launch compiles its kernel as on the GPU (the same
specialization of its arguments, the configs the autotuner would time: each is compiled, and its
"timing" is a stub) and runs nothing. What it measures is the CPU side of a GPU's first step:
how many kernels Triton compiles and how long that takes with the compile threads
(UNET_FAST_COMPILE_THREADS), starting from an empty Triton cache. Not measured: the GPU's
autotune timing runs (tools/kernel_model.py counts them) and Triton's per-signature C launchers,
which a GPU run builds with the system compiler at each kernel's first launch.

    python tools/first_step_compiles.py                       # valid572 and same512
    python tools/first_step_compiles.py --models valid572 --threads 1
    python tools/first_step_compiles.py --precompile   # UNet.precompile's compiles of that step

Each model runs in a process of its own with an empty, temporary Triton cache (TRITON_CACHE_DIR),
without the interpreter; it prints one JSON line a model.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__":   # real compiles: never the interpreter
    os.environ.pop("TRITON_INTERPRET", None)

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


class StandInDriver:
    """What Triton's launch path asks of the active driver before it launches: a device, a
    stream and the target to compile for."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


@contextlib.contextmanager
def _stand_in(arch: int):
    """Within: Triton's active driver is a stand-in for an sm_`arch` GPU (a launch on it fails),
    and the yielded dict's "cubins" counts the kernels compiled (ptxas runs: a cache hit builds
    none)."""
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime import driver

    counts = {"cubins": 0}
    make_cubin = CUDABackend.make_cubin

    def counted(self, *args, **kwargs):
        counts["cubins"] += 1
        return make_cubin(self, *args, **kwargs)

    CUDABackend.make_cubin = counted
    active = driver._active   # (reset_active() would look for a real driver: none without a GPU)
    driver.set_active(StandInDriver(arch))
    try:
        yield counts
    finally:
        driver._active = active
        CUDABackend.make_cubin = make_cubin


@contextlib.contextmanager
def compile_only(arch: int):
    """Within: Triton compiles every kernel a launch asks for, for sm_`arch`, and launches none;
    an autotuner's timing of a config compiles it and reports a made-up time. Yields
    `_stand_in`'s counts."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    run, bench_ = JITFunction.run, Autotuner._bench

    def run_warmup(self, *args, warmup=False, **kwargs):
        return run(self, *args, warmup=True, **kwargs)

    def bench(self, *args, config, **meta):
        self.fn.run(*args, **dict(meta, **config.all_kwargs()))
        return [1.0, 1.0, 1.0]

    JITFunction.run, Autotuner._bench = run_warmup, bench
    try:
        with _stand_in(arch) as counts:
            yield counts
    finally:
        JITFunction.run, Autotuner._bench = run, bench_


def first_step(cfg, arch: int = 90, precompile: bool = False) -> dict:
    """Compile what the first training step of `cfg` compiles; its count and wall time. With
    `precompile`: what UNet.precompile compiles for that step (its dry step, every compile side by
    side), instead of the step itself."""
    import kernel_model as km
    with km.triton_as_on(km.H200):
        step = km.make_step(cfg, "cpu")
        counter = _precompiled if precompile else compile_only
        with counter(arch) as counts:
            t0 = time.perf_counter()
            if precompile:
                import torch
                counts["result"] = step.model.precompile(train=step.x, autocast=torch.bfloat16)
            else:
                step()
            seconds = time.perf_counter() - t0
    return dict(model=cfg.name, batch=cfg.batch, compiles=counts["cubins"], seconds=round(seconds, 1),
                **({"precompile": counts["result"]} if precompile else {}))


@contextlib.contextmanager
def _precompiled(arch: int):
    """Within: UNet.precompile compiles for sm_`arch` on the stand-in driver (CPU tensors).
    Yields `_stand_in`'s counts."""
    from unet_fast import _precompile
    saved, _precompile._ON_CPU = _precompile._ON_CPU, True
    try:
        with _stand_in(arch) as counts:
            yield counts
    finally:
        _precompile._ON_CPU = saved


def _config(spec: str):
    import kernel_model as km
    name, _, batch = spec.partition(":")
    if name not in km.MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(km.MODELS)}")
    return dataclasses.replace(km.MODELS[name], batch=int(batch)) if batch else km.MODELS[name]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="valid572,same512",
                    help="comma-separated model configs of tools/kernel_model.py, NAME or NAME:BATCH; "
                         "each is measured in a process of its own, from an empty Triton cache")
    ap.add_argument("--threads", type=int, help="UNET_FAST_COMPILE_THREADS (default: the package's)")
    ap.add_argument("--arch", type=int, default=90, help="compute capability to compile for (90, 80)")
    ap.add_argument("--precompile", action="store_true",
                    help="time UNet.precompile for the step (every compile side by side) instead "
                         "of the step's own compiles")
    ap.add_argument("--one", help=argparse.SUPPRESS)   # (the per-model process)
    args = ap.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be at least 1, got {args.threads}")
        os.environ["UNET_FAST_COMPILE_THREADS"] = str(args.threads)
    if args.one:
        import triton

        from unet_fast.backends.triton_backend import utils
        res = dict(first_step(_config(args.one), args.arch, args.precompile), arch=f"sm_{args.arch}",
                   triton=triton.__version__, python=platform.python_version(),
                   compile_threads=utils.compile_threads(), cpus=os.cpu_count())
        print(json.dumps(res), flush=True)
        return 0
    specs = args.models.split(",")
    for spec in specs:
        try:
            _config(spec)
        except ValueError as e:
            ap.error(str(e))
    for spec in specs:
        with tempfile.TemporaryDirectory(prefix="triton_cache_") as cache:
            env = dict(os.environ, TRITON_CACHE_DIR=cache)
            env.pop("TRITON_INTERPRET", None)
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", spec,
                                "--arch", str(args.arch)] + (["--precompile"] if args.precompile
                                                             else []),
                               env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stdout + r.stderr)
            return r.returncode
        print(r.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
