"""The machine's own ceilings, measured first in every run: a device-to-device copy (bytes read +
written), an 8192^3 bf16 matmul on random data, and the L2 -> SM read bandwidth (the one machine
figure tools/kernel_model.py assumes rather than measures). Every other figure is also reported as a
fraction of the first two."""
import os
import sys

import pytest
import torch

import harness
from harness import Settings

pytestmark = pytest.mark.bench_tier(0)


def _device_or_skip():
    why = harness.gpu_skip_reason()
    if why:
        pytest.skip(why)
    return Settings.device()


def test_ceiling_copy_bandwidth(benchmark):
    device = _device_or_skip()
    benchmark.group = "ceilings"
    quick = Settings.level == "quick"
    nbytes = 2**30 if device == "cuda" else 2**26
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = harness.time_step(benchmark, lambda i: dst.copy_(src), 1, device, warmup=3,
                          target_s=0.3 if quick else 0.6, min_rounds=10, max_rounds=30 if quick else 60)
    gbps = 2 * nbytes / (t.median_ms / 1e3) / 1e9
    harness.CEILINGS.update(copy_gbps=gbps, copy_bytes=2 * nbytes, device=device)
    harness.finish(benchmark, dict(kind="ceiling", name="copy", op="copy", provider="torch", device=device,
                                   dtype="fp32", gbps=gbps, bytes=2 * nbytes, **t.as_dict()))


def test_ceiling_bf16_matmul(benchmark):
    device = _device_or_skip()
    benchmark.group = "ceilings"
    quick = Settings.level == "quick"
    n = 8192 if device == "cuda" else 512
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    c = torch.empty(n, n, device=device, dtype=dt)
    t = harness.time_step(benchmark, lambda i: torch.matmul(a, b, out=c), 1, device, warmup=5,
                          target_s=0.3 if quick else 0.6, min_rounds=10, max_rounds=30 if quick else 60)
    tflops = 2 * n**3 / (t.median_ms / 1e3) / 1e12
    harness.CEILINGS.update(matmul_tflops=tflops, matmul_n=n, matmul_dtype=str(dt).replace("torch.", ""),
                            device=device)
    harness.finish(benchmark, dict(kind="ceiling", name="matmul", op=f"matmul {n}^3", provider="torch",
                                   device=device, dtype="bf16" if device == "cuda" else "fp32",
                                   tflops=tflops, flops=2 * n**3, **t.as_dict()))


def test_ceiling_l2_bandwidth(benchmark):
    device = _device_or_skip()
    if device != "cuda":
        pytest.skip("the L2 probe is a Triton kernel: on the CPU only the interpreter runs it "
                    "(tests/test_measure_kernels.py), and its time would mean nothing")
    benchmark.group = "ceilings"
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tools"))
    import measure_kernels
    run, info = measure_kernels.l2_probe(device)
    quick = Settings.level == "quick"
    t = harness.time_step(benchmark, lambda i: run(), 1, device, warmup=3,
                          target_s=0.3 if quick else 0.6, min_rounds=10, max_rounds=30 if quick else 60)
    gbps = info["bytes_per_launch"] / (t.median_ms / 1e3) / 1e9
    harness.CEILINGS.update(l2_gbps=gbps, device=device)
    harness.finish(benchmark, dict(kind="ceiling", name="l2", op="L2 read", provider="triton",
                                   device=device, dtype="fp32", gbps=gbps,
                                   bytes=info["bytes_per_launch"], buffer_bytes=info["buffer_bytes"],
                                   l2_cache_bytes=info["l2_cache_bytes"], **t.as_dict()))
