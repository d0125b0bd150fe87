"""The CPU subset: what can be measured without a GPU, at small sizes.

- dispatch: the cost of unet_fast's op layer (argument checks, autocast, backend choice) on tiny
  tensors: `uf.ops.<op>(..., backend="torch"|"auto")` against calling the reference F ops directly;
- cpu_kernel: the C++ CPU kernels of backend="cuda" (whichever ops the extension has) against the
  reference, on the layer shapes of a small U-Net (base_channels=8, 188x188 valid; 64x64 same);
- cpu_model: a small whole-model forward (base_channels=16, 188x188, batch 1): the reference U-Net
  against unet_fast.UNet with backend torch / auto / cuda.
"""
import pytest
import torch

import harness
import unet_fast as uf
from harness import CPU_MODEL, CPU_SAME, CPU_VALID, TOY_VALID

pytestmark = pytest.mark.bench_tier(1)
OPS = ("conv3x3_relu", "conv3x3_relu_pool", "max_pool2x2", "crop_concat", "conv_transpose2x2",
       "up_concat", "concat_conv3x3_relu", "conv1x1", "conv3x3_relu_conv1x1")


@pytest.fixture(autouse=True)
def _cpu_only():
    why = harness.cpu_skip_reason()
    if why:
        pytest.skip(why)


def _tiny_specs():
    """Per op, its smallest call in a toy U-Net: the op's own cost is small, so the layer's shows."""
    best = {}
    for s in harness.derive_layers(TOY_VALID, 1):
        n = sum(torch.Size(sh).numel() for _, sh in s.shapes)
        if s.op not in best or n < best[s.op][0]:
            best[s.op] = (n, s)
    return [best[op][1] for op in OPS]


def _kernel_specs():
    specs = [(harness.config_id(CPU_VALID, 1), s) for s in harness.derive_layers(CPU_VALID, 1)]
    # "same": the crop is the identity; only the concat ops differ in kind
    specs += [(harness.config_id(CPU_SAME, 1), s) for s in harness.derive_layers(CPU_SAME, 1)
              if s.op in ("crop_concat", "up_concat", "concat_conv3x3_relu")]
    return specs


def _run_fn(spec, provider):
    if provider in ("F", "reference"):
        return harness.reference_fn(spec)
    return harness.ours_fn(spec, provider)


def _timing(benchmark, step, target_s=0.1):
    return harness.time_step(benchmark, step, 1, "cpu", warmup=1, target_s=target_s, min_rounds=3, max_rounds=200)


@pytest.mark.parametrize("provider", ["F", "torch", "auto", "cuda"])
@pytest.mark.parametrize("spec", _tiny_specs(), ids=lambda s: s.op)
def test_dispatch_overhead(benchmark, spec, provider, ceilings):
    """Forward under no_grad on tiny tensors: ops(backend=...) minus F direct = the layer's cost."""
    fn = _run_fn(spec, provider)
    ts = harness.make_inputs(spec, torch.float32, "cpu", False, False, False)
    try:
        with torch.no_grad():
            fn(*ts)
    except uf.BackendUnavailable as e:
        pytest.skip(f"{provider}: {e}")

    def step(i):
        with torch.no_grad():
            return fn(*ts)

    benchmark.group = f"dispatch {spec.op} {spec.describe()}"
    t = _timing(benchmark, step, target_s=0.05)
    harness.finish(benchmark, dict(kind="dispatch", name=f"dispatch-{spec.op}-{provider}", op=spec.op,
                                   shape=spec.describe(), mode="fwd", dtype="fp32", provider=provider,
                                   device="cpu", layer=spec.layer, **t.as_dict()))


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", ["reference", "cuda"])
@pytest.mark.parametrize("cfg_spec", _kernel_specs(), ids=lambda cs: f"{cs[0]}-{cs[1].layer}-{cs[1].op}")
def test_cpu_kernel(benchmark, cfg_spec, provider, mode, ceilings):
    """The C++ CPU kernels (backend="cuda" on CPU tensors) against the reference, float32."""
    cfg_id, spec = cfg_spec
    # Measure the reference only where the extension has the op: there is nothing to compare else.
    probe = harness.make_inputs(spec, torch.float32, "cpu", False, False, False)
    args = tuple(probe) + ((spec.padding,) if spec.padding is not None else ())  # the op's own order
    why = uf._dispatch.why_not(spec.op, "cuda", args)
    if why:
        pytest.skip(f"no C++ CPU kernel of {spec.op} to compare: {why}")
    fn = _run_fn(spec, provider)
    needs_grad = mode != "fwd"
    ts = harness.make_inputs(spec, torch.float32, "cpu", False, False, needs_grad)
    gin = [t for t in ts if t.requires_grad]
    with torch.set_grad_enabled(needs_grad):
        out0 = fn(*ts)
    outs0 = out0 if isinstance(out0, tuple) else (out0,)
    err = harness.rel_err(outs0, harness.reference_fn(spec)(*[t.detach() for t in ts]))
    gouts = [torch.randn_like(o) for o in outs0]
    del out0, outs0

    if needs_grad:
        def step(i):
            out = fn(*ts)
            return torch.autograd.grad(out if isinstance(out, tuple) else (out,), gin, gouts)
    else:
        def step(i):
            with torch.no_grad():
                return fn(*ts)

    benchmark.group = f"cpu_kernel {cfg_id} {spec.layer} {spec.op} {mode}"
    t = _timing(benchmark, step, target_s=0.05)
    dt = torch.float32
    d = harness.derived_metrics(t.median_ms, harness.layer_flops(spec, mode), harness.min_bytes(spec, mode, dt),
                                ceilings, spec.op in harness.MEMORY_BOUND_OPS)
    name = f"cpu_kernel-{cfg_id}-{spec.layer}-{spec.op}-{mode}-{provider}"
    harness.finish(benchmark, dict(kind="cpu_kernel", name=name,
                                   config=cfg_id, layer=spec.layer, op=spec.op, shape=spec.describe(), mode=mode,
                                   dtype="fp32", provider=provider, device="cpu", rel_err_vs_reference=err,
                                   **t.as_dict(), **d))


@pytest.mark.parametrize("provider", ["reference", "torch", "auto", "cuda"])
def test_cpu_model_forward(benchmark, provider, ceilings):
    """A small whole-model forward (inference) on the CPU."""
    cfg, batch = CPU_MODEL, 1
    torch.manual_seed(0)
    ref = cfg.build_reference().eval()
    model = ref if provider == "reference" else cfg.build_ours(provider).eval()
    if model is not ref:
        model.load_state_dict(ref.state_dict())
    x = torch.randn(batch, cfg.in_channels, cfg.size, cfg.size)
    try:
        with torch.no_grad():
            y = model(x)
    except uf.BackendUnavailable as e:
        pytest.skip(f"{provider}: {e}")
    with torch.no_grad():
        err = harness.rel_err(y, ref(x))

    def step(i):
        with torch.no_grad():
            return model(x)

    benchmark.group = f"cpu_model {harness.config_id(cfg, batch)} infer"
    t = _timing(benchmark, step, target_s=0.3)
    d = harness.derived_metrics(t.median_ms, harness.model_flops(cfg, batch, "infer"), 0, ceilings, False,
                                images=batch)
    harness.finish(benchmark, dict(kind="cpu_model", name=f"cpu_model-{harness.config_id(cfg, batch)}-{provider}",
                                   config=harness.config_id(cfg, batch), op="UNet forward", mode="infer",
                                   dtype="fp32", provider=provider, device="cpu", rel_err_vs_reference=err,
                                   **t.as_dict(), **d))
