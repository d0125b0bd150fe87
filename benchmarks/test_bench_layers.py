"""Every distinct layer shape of the paper U-Net (572x572 valid, batch 1 and 8) and of the "same"
U-Net at 512x512 (batch 16), per op, in modes fwd / bwd / fwd+bwd, for each provider:
eager NCHW, eager channels_last, torch.compile (default, max-autotune), ours (triton, cuda, auto).

Shapes come from the model configuration (harness.derive_layers). Data is bf16, random; the
`fwd` mode runs under no_grad; `bwd` repeats the backward of one forward (retain_graph); `fwd+bwd`
is one forward and its backward. The network's input needs no gradient (no dgrad for down.0.0)."""
import time

import pytest
import torch

import harness
import unet_fast as uf
from harness import COMPILE, DTYPES, OURS, Settings


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        harness.parametrize_cases(metafunc, harness.plan_layers(Settings.level, Settings.simulate))


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def test_layer(benchmark, case, ceilings):
    if case is not None and case.mode == "bwd" and case.provider in COMPILE:
        # The repeated backward needs retain_graph, which AOTAutograd's donated buffers forbid.
        import torch._functorch.config as fcfg
        if hasattr(fcfg, "donated_buffer"):
            with fcfg.patch(donated_buffer=False):
                return _test_layer(benchmark, case, ceilings)
    return _test_layer(benchmark, case, ceilings)


def _test_layer(benchmark, case, ceilings):
    device = Settings.device()
    benchmark.group = case.group
    spec, prov, mode = case.spec, case.provider, case.mode
    why = harness.provider_unavailable(prov, device)
    if why:
        pytest.skip(why)
    dtype = DTYPES[case.dtype]
    base = harness.reference_fn(spec)
    if prov in OURS:
        fn = harness.ours_fn(spec, prov)
    elif prov in COMPILE:
        fn = harness.compile_fn(base, prov, per_op=True)
    else:
        fn = base
    channels_last = prov != "eager"
    weights_cl = prov in ("eager_cl",) + COMPILE   # as model.to(memory_format=channels_last) does
    needs_grad = mode != "fwd"

    def new_set():
        return harness.make_inputs(spec, dtype, device, channels_last, weights_cl, needs_grad)

    first = new_set()
    in_bytes = sum(t.numel() * t.element_size() for t in first)
    # outputs and output gradients are about as large as the inputs of these ops
    nsets = harness.rotation_sets(in_bytes * (3 if needs_grad else 2), device)
    sets = [first] + [new_set() for _ in range(nsets - 1)]

    # First call: does the provider run this input, is it right, and (compile) how long it takes.
    t0 = time.perf_counter()
    try:
        with torch.set_grad_enabled(needs_grad):
            out0 = _as_tuple(fn(*sets[0]))
    except uf.BackendUnavailable as e:
        pytest.skip(f"{prov}: {e}")
    harness.sync(device)
    first_call_s = time.perf_counter() - t0
    with torch.no_grad():
        ref = _as_tuple(base(*[t.detach().float() for t in sets[0]]))
    err = harness.rel_err([o.float() for o in out0], ref)
    del ref

    gins = [[t for t in s if t.requires_grad] for s in sets]
    if needs_grad:
        gouts = [[torch.randn_like(o) for o in out0] for _ in range(nsets)]
    del out0

    if mode == "fwd":
        def step(i):
            with torch.no_grad():
                return fn(*sets[i])
    elif mode == "fwd+bwd":
        def step(i):
            out = _as_tuple(fn(*sets[i]))
            return torch.autograd.grad(out, gins[i], gouts[i])
    else:  # bwd: one forward per set, its backward repeated
        outs = [_as_tuple(fn(*s)) for s in sets]

        def step(i):
            return torch.autograd.grad(outs[i], gins[i], gouts[i], retain_graph=True)

    quick = Settings.level == "quick"
    timing = harness.time_step(benchmark, step, nsets, device, warmup=3 if prov not in COMPILE else 4,
                               target_s=0.05 if quick else 0.12, min_rounds=5, max_rounds=15 if quick else 30)
    mem = harness.measure_peak_memory(lambda: step(0), device)
    memory_bound = spec.op in harness.MEMORY_BOUND_OPS
    derived = harness.derived_metrics(timing.median_ms, harness.layer_flops(spec, mode),
                                      harness.min_bytes(spec, mode, dtype), ceilings, memory_bound,
                                      images=case.batch)
    harness.finish(benchmark, dict(
        kind="layer", name=case.id, config=case.config_id, model=case.config.name, batch=case.batch,
        layer=spec.layer, uses=",".join(spec.uses), op=spec.op, shape=spec.describe(),
        padding=spec.padding, mode=mode, dtype=case.dtype, provider=prov, device=device,
        layout="NCHW" if not channels_last else "channels_last", input_sets=nsets,
        compile_mode=harness.compile_mode_name(prov, per_op=True), first_call_s=first_call_s,
        rel_err_vs_fp32=err, **timing.as_dict(), **derived, **mem))
