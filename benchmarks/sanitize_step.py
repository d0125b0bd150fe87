#!/usr/bin/env python3
"""A small training step of unet_fast.UNet per backend, to run under compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 86 \\
        python benchmarks/sanitize_step.py --backends triton,cuda

PYTORCH_NO_CUDA_MEMORY_CACHING=1 gives every tensor its own allocation, so memcheck sees an
out-of-bounds access past a tensor's end (with PyTorch's caching allocator it would land inside
a neighbour's block, unseen).

Per backend: forward + backward + SGD step of small U-Nets (valid 188x188 and same 64x64,
base_channels 16, batch 2) in bf16 autocast with channels_last input, fp32 NCHW and fp16 autocast,
then a check that the loss is finite and the forward matches the reference. Prints one line per
backend: `SANITIZE backend=<name> status=ok|skipped|failed ...`. Exit status 1 if any step failed.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback


def steps():
    """(name, model config kwargs, input size, batch, dtype or None, channels_last)."""
    import torch
    return [
        ("valid188-bf16-cl", dict(in_channels=1, num_classes=2, base_channels=16, padding="valid"), 188, 2,
         torch.bfloat16, True),
        ("valid188-fp32-nchw", dict(in_channels=1, num_classes=2, base_channels=16, padding="valid"), 188, 2,
         None, False),
        ("same64-fp16-cl", dict(in_channels=3, num_classes=2, base_channels=16, padding="same"), 64, 2,
         torch.float16, True),
    ]


def run_one(uf, backend, device, kw, size, batch, dtype, channels_last):
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    ref = uf.reference.UNet(**kw).to(device)
    model = uf.UNet(**kw, backend=backend).to(device)
    model.load_state_dict(ref.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, kw["in_channels"], size, size, device=device).contiguous(memory_format=fmt)
    oh, ow = model.output_size((size, size))
    y = torch.randint(0, kw["num_classes"], (batch, oh, ow), device=device)
    ac = torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)
    with ac:
        out = model(x)
    loss = F.cross_entropy(out.float(), y)
    loss.backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    with torch.no_grad(), ac:
        ref_out = ref(x)
    err = float((out.detach().double() - ref_out.double()).norm() / ref_out.double().norm())
    grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    return loss.item(), err, grads_finite, model.backend_report()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="triton,cuda", help="comma-separated (default triton,cuda)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = ap.parse_args(argv)
    # memcheck slows every kernel many times over: the explicit backends' first-run check (each new
    # input once more beside the reference ops) would double the step's time; its numbers are the
    # tests stage's job, memory errors this one's
    os.environ.setdefault("UNET_FAST_CHECK", "0")
    import torch
    import unet_fast as uf
    if args.device == "cuda" and not torch.cuda.is_available():
        print("sanitize_step.py: no CUDA device", file=sys.stderr)
        return 2
    avail = uf.backends.available()
    failed = False
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        why = avail.get(backend, f"unknown backend {backend!r}")
        if why:
            print(f"SANITIZE backend={backend} status=skipped reason={why}", flush=True)
            continue
        ran, skipped = [], []
        for name, kw, size, batch, dtype, cl in steps():
            if args.device == "cpu" and dtype is torch.float16:
                continue
            try:
                loss, err, finite, report = run_one(uf, backend, args.device, kw, size, batch, dtype, cl)
            except uf.BackendUnavailable as e:
                skipped.append(f"{name}: {e}")
                print(f"  {backend} {name}: skipped ({e})", flush=True)
                continue
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                print(f"  {backend} {name}: FAILED", flush=True)
                failed = True
                ran.append(name + ":failed")
                continue
            used = sorted(set(report.values()))
            ok = finite and loss == loss
            print(f"  {backend} {name}: loss {loss:.4f}, rel err vs reference {err:.2e}, grads finite {finite}, "
                  f"ran on {','.join(used)}", flush=True)
            if not ok:
                failed = True
            ran.append(name)
        status = "failed" if any(r.endswith(":failed") for r in ran) else ("ok" if ran else "skipped")
        print(f"SANITIZE backend={backend} status={status} steps={len(ran)} skipped={len(skipped)}"
              + (f" reason={skipped[0]}" if skipped and not ran else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
