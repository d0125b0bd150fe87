"""Whole model: inference and one training step (forward, backward, optimizer) of
UNet(1, 2) valid at 572x572 batch 8 and UNet(3, 2, padding="same") at 512x512 batch 16, in float32,
bf16 autocast and fp16 autocast (with a GradScaler), for each provider.

Every provider starts from the same weights (one seed); eager/compile run the reference U-Net
(unet_fast.reference.UNet), ours run unet_fast.UNet(backend=...). The optimizer is the paper's
SGD with momentum 0.99, run eagerly for every provider. Inputs are random, two sets in turn."""
import contextlib
import time

import pytest
import torch
import torch.nn.functional as F

import harness
import unet_fast as uf
from unet_fast.app.runtime import optimizer_step
from harness import COMPILE, DTYPES, OURS, Settings


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        harness.parametrize_cases(metafunc, harness.plan_models(Settings.level, Settings.simulate))


def test_model(benchmark, case, ceilings):
    device = Settings.device()
    benchmark.group = case.group
    cfg, batch, prov, mode = case.config, case.batch, case.provider, case.mode
    why = harness.provider_unavailable(prov, device)
    if why:
        pytest.skip(why)
    if case.dtype == "fp16" and device == "cpu":
        pytest.skip("fp16 autocast is not benchmarked on the CPU")
    dtype = DTYPES[case.dtype]
    torch.manual_seed(0)
    ref = cfg.build_reference().to(device)
    if prov in OURS:
        model = cfg.build_ours(prov).to(device)
        model.load_state_dict(ref.state_dict())
    else:
        model = ref
    channels_last = prov != "eager"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if prov in ("eager_cl",) + COMPILE:
        model = model.to(memory_format=torch.channels_last)
    run = harness.compile_fn(model, prov, per_op=False) if prov in COMPILE else model

    oh, ow = uf.sizes.output_size((cfg.size, cfg.size), cfg.depth, cfg.padding)
    xs = [torch.randn(batch, cfg.in_channels, cfg.size, cfg.size, device=device).contiguous(memory_format=fmt)
          for _ in range(2)]
    ys = [torch.randint(0, cfg.num_classes, (batch, oh, ow), device=device) for _ in range(2)]

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device, dtype=dtype)

    mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None) if prov in COMPILE else None
    if mode == "infer":
        model.eval()

        def step(i):
            if mark_step:
                mark_step()
            with torch.no_grad(), autocast():
                return run(xs[i])
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.99)
        scaler = torch.amp.GradScaler(device) if dtype == torch.float16 else None

        def step(i):
            if mark_step:
                mark_step()
            opt.zero_grad(set_to_none=True)
            with autocast():
                out = run(xs[i])
            loss = F.cross_entropy(out.float(), ys[i])
            optimizer_step(loss, opt, scaler)
            return loss.detach()

    precompiled = None
    if prov in OURS and device == "cuda":
        # the step's Triton kernels compiled side by side first (UNet.precompile): first_call_s
        # below is then the first step's autotuning and launches, this its compiles
        what = "train" if mode == "train" else "evaluate"
        precompiled = model.precompile(**{what: xs[0]},
                                       autocast=None if dtype == torch.float32 else dtype)
    t0 = time.perf_counter()
    try:
        first = step(0)
    except uf.BackendUnavailable as e:
        pytest.skip(f"{prov}: {e}")
    harness.sync(device)
    first_call_s = time.perf_counter() - t0
    check = {}
    if mode == "train":
        check["loss0"] = float(first)
        check["loss_finite"] = bool(torch.isfinite(first))
    elif prov in OURS:  # the same forward through the reference, same dtype and input
        ref.eval()
        with torch.no_grad(), autocast():
            check["rel_err_vs_eager"] = harness.rel_err(first.float(), ref(xs[0]).float())
    del first
    if prov in OURS:
        del ref
    report = model.backend_report() if hasattr(model, "backend_report") else None

    quick = Settings.level == "quick"
    timing = harness.time_step(benchmark, step, 2, device, warmup=2 if prov not in COMPILE else 4,
                               target_s=0.3 if quick else 0.8, min_rounds=5, max_rounds=10 if quick else 20)
    mem = harness.measure_peak_memory(lambda: step(0), device)
    derived = harness.derived_metrics(timing.median_ms, harness.model_flops(cfg, batch, mode), 0,
                                      ceilings, False, images=batch)
    if report:
        used = {}
        for b in report.values():
            used[b] = used.get(b, 0) + 1
        check["backends_used"] = used
    harness.finish(benchmark, dict(
        kind="model", name=case.id, config=case.config_id, model=cfg.name, batch=batch,
        op=f"UNet({cfg.in_channels},{cfg.num_classes},padding={cfg.padding!r}) {cfg.size}x{cfg.size}",
        mode=mode, dtype=case.dtype, provider=prov, device=device,
        layout="NCHW" if not channels_last else "channels_last",
        compile_mode=harness.compile_mode_name(prov, per_op=False), first_call_s=first_call_s,
        precompile=precompiled,
        **check, **timing.as_dict(), **derived, **mem))
