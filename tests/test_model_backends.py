"""The whole fast UNet on each of our backends that this machine can run, under autocast:
error against a float64 reference at most twice PyTorch's own error in the same dtype
(parity.assert_lowp_within); NaN propagation and the layouts the backward kernels get."""
import pytest
import torch

import unet_fast as uf

from conftest import requires_cuda
from parity import (AVAILABLE, DEVICE, F32_RTOL, OpCounter, assert_float32_close,
                    assert_lowp_rms_within, assert_lowp_within, assert_within, kernels, scale_of)

DTYPES = [torch.bfloat16] + ([torch.float16] if DEVICE == "cuda" else [])
CASTS = (torch.ops.aten.copy_, torch.ops.aten._to_copy)   # (the copies and casts counted)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_unet_autocast_within_twice_torch_error(backend, dtype, padding):
    if AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    torch.manual_seed(0)
    ref = uf.reference.UNet(3, 2, base_channels=8, depth=2, padding=padding)
    fast = uf.UNet(3, 2, base_channels=8, depth=2, padding=padding, backend=backend)
    fast.load_state_dict(ref.state_dict())
    size = 44 if padding == "valid" else 16
    x = torch.randn(2, 3, size, size)
    ref64 = uf.reference.UNet(3, 2, base_channels=8, depth=2, padding=padding).double()
    ref64.load_state_dict(ref.state_dict())
    x64 = x.double().requires_grad_()
    y64 = ref64(x64)
    g = torch.randn_like(y64)
    gx64 = torch.autograd.grad(y64, x64, g)[0]

    def run(model):
        m = model.to(DEVICE)
        xi = x.to(DEVICE).requires_grad_()
        with torch.autocast(DEVICE, dtype=dtype):
            y = m(xi)
        gx = torch.autograd.grad(y.float(), xi, g.float().to(DEVICE))[0]
        return y.double().cpu(), gx.double().cpu()

    y_t, gx_t = run(ref)
    y_o, gx_o = run(fast)
    assert y_o.dtype == torch.float64 and fast.backend_report()["head"] == backend
    for name, ours, lowp, exact in (("output", y_o, y_t, y64), ("grad x", gx_o, gx_t, gx64)):
        assert_lowp_within(f"{name} ({dtype})", ours, lowp, exact, eps=1e-6)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("op", ["conv3x3_relu", "conv3x3_relu_pool"])
@pytest.mark.parametrize("relu_input", [False, True])
def test_nonfinite_weight_gives_pytorchs_nan_pattern(backend, padding, op, relu_input):
    """A NaN or Inf in the weight: NaN and Inf land where PyTorch's own convolution puts them on
    the same device, in the output and in every gradient (on the CPU an implicit-GEMM dgrad would
    add 0 * NaN at the border from taps that do not reach it)."""
    if AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, device=DEVICE)
    w = torch.randn(5, 4, 3, 3, device=DEVICE)
    w[1, 2, 0, 0] = float("nan")
    w[3, 0, 2, 1] = float("inf")
    b = torch.randn(5, device=DEVICE)

    def run(bk):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        xin = torch.relu(leaves[0]) if relu_input else leaves[0]
        outs = getattr(uf.ops, op)(xin, leaves[1], leaves[2], padding, backend=bk,
                                   _relu_input=relu_input)
        outs = outs if isinstance(outs, tuple) else (outs,)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), device=DEVICE).view_as(o)).nan_to_num(
            nan=0.0, posinf=0.0, neginf=0.0).sum() for o in outs)
        return outs + torch.autograd.grad(loss, leaves)

    names = (["out", "pooled"] if op.endswith("pool") else ["out"]) + ["dx", "dw", "db"]
    for name, ours, ref in zip(names, run(backend), run("torch")):
        assert torch.equal(ours.isnan(), ref.isnan()), (name, (ours.isnan() != ref.isnan()).sum())
        assert torch.equal(ours.isinf(), ref.isinf()), (name, (ours.isinf() != ref.isinf()).sum())


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_nan_propagates_like_pytorch(backend):
    """A NaN stays a NaN through ReLU and max-pooling (fused or not), in the same places as with
    PyTorch's ops, and the pool's gradient goes where max_pool2d sends it."""
    if AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 10, device=DEVICE)
    x[0, 1, 4, 4] = float("nan")
    x[1, 0, 2, 3] = float("nan")
    x[1, 0, 3, 3] = float("nan")  # two NaNs in one pooling window
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    b = torch.randn(4, device=DEVICE)
    for fn in (lambda bk: uf.ops.conv3x3_relu(x, w, b, backend=bk),
               lambda bk: uf.ops.conv3x3_relu_pool(x, w, b, backend=bk)[1],
               lambda bk: uf.ops.max_pool2x2(x, backend=bk)):
        ours, ref = fn(backend), fn("torch")
        assert torch.equal(ours.isnan(), ref.isnan())
    xs = x.clone().requires_grad_()
    xr = x.clone().requires_grad_()
    g = torch.randn(2, 3, 4, 5, device=DEVICE)
    (gs,) = torch.autograd.grad(uf.ops.max_pool2x2(xs, backend=backend), xs, g)
    (gr,) = torch.autograd.grad(uf.ops.max_pool2x2(xr, backend="torch"), xr, g)
    assert torch.equal(gs, gr)
    # ReLU's gradient where y is NaN passes, as threshold_backward's (zero only where y <= 0)
    for op in ("conv3x3_relu", "conv3x3_relu_pool"):
        def grads(bk, dtype):
            leaves = [t.to(dtype).requires_grad_() for t in (x, w, b)]
            outs = getattr(uf.ops, op)(*leaves, backend=bk)
            outs = outs if isinstance(outs, tuple) else (outs,)
            loss = sum((o * torch.linspace(-1, 1, o.numel(), device=DEVICE, dtype=dtype).view_as(o)).sum()
                       for o in outs)
            return torch.autograd.grad(loss, leaves)
        for name, ours, ref in zip(("dx", "dw", "db"), grads(backend, torch.float32),
                                   grads("torch", torch.float64)):
            assert torch.equal(ours.isnan(), ref.isnan()), (op, name)
            ok = ~ref.isnan()
            assert_within(f"{op} {name} where not NaN", ours[ok], ref[ok], F32_RTOL * scale_of(ref[ok]))


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("caller", ["nchw", "channels_last"])
def test_backward_runs_nhwc_whatever_the_caller(backend, caller):
    """The model runs NHWC inside and hands its output over in the caller's layout; the gradient
    of that output must re-enter the network NHWC, so every backward kernel gets the layout it is
    built for. A channels_last caller's loss may hand back a gradient of another layout:
    cross-entropy's is NCHW-contiguous whatever its input's (the whole backward would then run on
    NCHW gradients, the kernels' slow elementwise gathers)."""
    if AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    from torch.utils._python_dispatch import TorchDispatchMode

    class GradFormats(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.name()
            if name.startswith(("unet_fast::_", "unet_fast_triton::_")) and ("backward" in name or "grad" in name):
                self.seen.append((name, uf._utils.memory_format_of(args[0])))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = uf.UNet(3, 2, base_channels=8, depth=2, padding="same", backend=backend)
    fmt = torch.channels_last if caller == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=fmt)
    y = model(x)
    assert y.is_contiguous(memory_format=fmt)  # the caller's layout out
    loss = torch.nn.functional.cross_entropy(y, torch.randint(0, 2, (2, 16, 16)))
    with GradFormats() as mode:
        loss.backward()
    assert mode.seen, "no backward op of ours ran"
    assert all(fmt == torch.channels_last for _, fmt in mode.seen), mode.seen


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_activation_checkpointing_gives_the_same_gradients(backend):
    """With checkpointing each level's forward runs again inside the backward, whose saved tensors
    may be unpacked only once: the parameter gradients equal those without checkpointing."""
    if AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    torch.manual_seed(0)
    plain = uf.UNet(1, 2, base_channels=4, depth=2, backend=backend).to(DEVICE)
    ckpt = uf.UNet(1, 2, base_channels=4, depth=2, backend=backend, checkpointing=True).to(DEVICE)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 44, 44, device=DEVICE)  # batch 1: the interpreter's time is per image
    for m in (plain, ckpt):
        m(x).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert_within(name, q.grad, p.grad, F32_RTOL * scale_of(p.grad))


def test_checkpointed_levels_recompute_on_the_forwards_backend_in_any_thread(monkeypatch):
    """`use_backend` is per thread, and on a GPU the backward, and so a checkpointed level's
    recomputation, runs on the autograd engine's device thread: the recomputation runs on the
    backend the forward asked for, not on what "auto" would take there. (Here the backward runs
    on a thread of its own, as it does on a GPU.)"""
    import threading
    from unet_fast import _dispatch
    if AVAILABLE["triton"] is not None:
        pytest.skip(f"triton: {AVAILABLE['triton']}")
    torch.manual_seed(0)
    model = uf.UNet(1, 2, base_channels=4, depth=2, checkpointing=True).to(DEVICE)   # auto
    x = torch.randn(1, 1, 44, 44, device=DEVICE)
    with uf.use_backend("triton"):
        y = model(x)
    ran, errors = [], []
    record = _dispatch.record
    monkeypatch.setattr(_dispatch, "record", lambda op, name: ran.append(name) or record(op, name))

    def backward():
        try:
            y.square().sum().backward()
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    worker = threading.Thread(target=backward)
    worker.start()
    worker.join()
    assert not errors, errors
    assert ran and set(ran) == {"triton"}, ran   # (every level's forward ran again, on triton)


@pytest.mark.parametrize("backend", ["torch", "cuda", "triton"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_recomputed_up_convs_give_the_same_gradients(backend, autocast, monkeypatch):
    """checkpointing="up": the backward makes each up-sampled map (the cuda backend's concat
    buffer) again from the up-conv's input instead of keeping it, with the same kernel on the same
    input, under the forward's autocast: every parameter gradient is bit for bit the one of keeping
    it. (The torch backend's concat keeps a buffer of its own: nothing to recompute.) Channels in
    whole K-tiles (64), so that triton reads the concat in place (its up map is saved). What it
    saves: tests/test_memory_model.py."""
    if backend != "torch" and AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    from unet_fast import ops
    calls = []
    for op in ("conv_transpose2x2", "up_concat"):
        def spy(*args, _fn=getattr(ops, op), **kwargs):
            calls.append(torch.is_grad_enabled())
            return _fn(*args, **kwargs)
        monkeypatch.setattr(ops, op, spy)
    torch.manual_seed(0)
    plain = uf.UNet(1, 2, base_channels=64, depth=1, backend=backend).to(DEVICE)
    up = uf.UNet(1, 2, base_channels=64, depth=1, backend=backend, checkpointing="up").to(DEVICE)
    up.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 20, 20, device=DEVICE)
    made_again = []
    for m in (plain, up):
        calls.clear()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = m(x)
        out.float().square().sum().backward()
        made_again.append(calls.count(False))
    assert made_again == [0, 0 if backend == "torch" else 1]
    for (name, p), q in zip(plain.named_parameters(), up.parameters()):
        assert q.grad is not None and torch.equal(q.grad, p.grad), name


def test_checkpointing_takes_false_true_or_up():
    with pytest.raises(ValueError, match=r"checkpointing must be one of False, True, 'up', got 'all'"):
        uf.UNet(checkpointing="all")
    assert uf.UNet(base_channels=4, depth=1, checkpointing=1).checkpointing is True
    m = uf.UNet(1, 2, base_channels=4, depth=2, padding="same", checkpointing="up").double()
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    c = torch.compile(m, fullgraph=True, backend="aot_eager")   # (the compiler's own recompute)
    torch.testing.assert_close(c(x), m(x), rtol=0, atol=0)
    c(x).sum().backward()


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
@pytest.mark.parametrize("params_format", [torch.contiguous_format, torch.channels_last], ids=str)
def test_autocast_weight_grads_arrive_in_the_parameters_layout(backend, params_format, monkeypatch):
    """Under autocast the weights are cast channels_last for the kernels; their gradients are cast
    back into each parameter's own strides by that same cast's backward (ops._CastWeight), so
    AccumulateGrad keeps them without a re-layout copy. Same values as a plain .to() cast."""
    if backend != "torch" and AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    def grads(plain_cast: bool):
        torch.manual_seed(0)
        m = uf.UNet(3, 2, base_channels=8, depth=2, padding="valid", backend=backend)
        m = m.to(DEVICE, memory_format=params_format)
        x = torch.randn(1, 3, 44, 44, device=DEVICE)  # batch 1: the interpreter's time is per image
        if plain_cast:
            monkeypatch.setattr(uf.ops, "_cast_weight",
                                lambda t, dt, fmt: t.to(dt, memory_format=fmt))
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            y = m(x)
        copies = OpCounter(CASTS)
        with copies:
            y.float().square().sum().backward()
        monkeypatch.undo()
        return {n: p for n, p in m.named_parameters()}, copies.n

    ours, copies = grads(False)
    plain, plain_copies = grads(True)
    for name, p in ours.items():
        assert p.grad.dtype == p.dtype and p.grad.stride() == p.stride(), name
        assert torch.equal(p.grad, plain[name].grad), name
    # one copy per weight (cast and re-layout together) where the plain cast took two for each
    # weight whose gradient came back in another layout
    assert copies <= plain_copies
    if backend == "triton" and params_format == torch.contiguous_format:
        assert copies < plain_copies


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_autocast_bias_reaches_the_kernels_in_its_own_dtype(backend):
    """Under autocast a bias stays fp32 (ops._autocast): the Triton kernels add it to their fp32
    accumulators and store its gradient in fp32, so no bias is cast, forward or backward (two
    launches a layer fewer); the torch and cuda backends cast it as PyTorch's autocast would
    (the torch backend keeps PyTorch's numbers bit for bit: test_reference). Every parameter's
    gradient arrives in fp32, within twice PyTorch's bf16 error (rms) of the float64 reference."""
    if backend != "torch" and AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    torch.manual_seed(0)
    ref = uf.reference.UNet(3, 2, base_channels=8, depth=2, padding="valid")
    fast = uf.UNet(3, 2, base_channels=8, depth=2, padding="valid", backend=backend)
    fast.load_state_dict(ref.state_dict())
    ref64 = uf.reference.UNet(3, 2, base_channels=8, depth=2, padding="valid").double()
    ref64.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 44, 44)  # batch 1: the interpreter's time is per image
    y64 = ref64(x.double())
    g = torch.randn_like(y64)
    y64.backward(g)

    def run(model):
        m = model.to(DEVICE)
        bias_casts = OpCounter(
            CASTS, only=lambda args: any(isinstance(a, torch.Tensor) and a.dim() == 1 for a in args))
        with bias_casts:
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                y = m(x.to(DEVICE))
            y.float().backward(g.float().to(DEVICE))
        return {n: p.grad for n, p in m.named_parameters()}, bias_casts.n

    lowp, lowp_casts = run(ref)
    ours, casts = run(fast)
    assert lowp_casts == 2 * sum(1 for n, _ in ref.named_parameters() if n.endswith("bias"))
    assert casts == (0 if backend == "triton" else lowp_casts)
    for name, p in ref64.named_parameters():
        assert ours[name].dtype == torch.float32, name
        assert_lowp_rms_within(f"gradient of {name}", ours[name].double().cpu(),
                               lowp[name].double().cpu(), p.grad)


@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_autocast_keeps_only_an_fp32_bias(bias_dtype, monkeypatch):
    """ops._autocast leaves an fp32 bias fp32 for the backends; a bias of any other dtype reaches
    them in the autocast dtype, as PyTorch's autocast casts it."""
    seen = []
    run = uf._dispatch.run

    def spy(op, args, backend=None):
        seen.append(args[2].dtype)
        return run(op, args, backend)
    monkeypatch.setattr(uf._dispatch, "run", spy)
    x = torch.randn(1, 3, 8, 8)
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4, dtype=bias_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = uf.ops.conv3x3_relu(x, w, b, 1, backend="torch")
    assert y.dtype == torch.bfloat16
    assert seen == [torch.float32 if bias_dtype == torch.float32 else torch.bfloat16]


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
@pytest.mark.parametrize("use", ["both", "skip", "pooled"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
def test_conv3x3_relu_pool_with_the_skip_cropped(backend, use, layout):
    """The model's encoder step of the valid U-Net: conv3x3_relu_pool(_skip_hw=(h, w)) returns
    y's center crop in place of y (the Triton backend stores it from the conv's epilogue, and its
    pool backward reads the crop's gradient at the crop's offset). Odd offsets, a crop that drops
    rows the pool reads, and each output's gradient alone (the other unused)."""
    if backend != "torch" and AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    torch.manual_seed(0)
    x = torch.randn(2, 5, 15, 13, device=DEVICE).relu().contiguous(memory_format=layout)
    w, b = 0.3 * torch.randn(6, 5, 3, 3, device=DEVICE), torch.randn(6, device=DEVICE)
    crop = (8, 5)                                     # of the 13x11 output: offsets (2, 3)
    gs, gp = torch.randn(2, 6, *crop, device=DEVICE), torch.randn(2, 6, 6, 5, device=DEVICE)

    def grads(fn, ts):
        skip, pooled = fn(*ts)
        loss = (0 if use == "pooled" else (skip * gs.to(skip.dtype)).sum()) + (
            0 if use == "skip" else (pooled * gp.to(pooled.dtype)).sum())
        return (skip, pooled), torch.autograd.grad(loss, ts)

    ours_in = [t.detach().requires_grad_() for t in (x, w, b)]
    with kernels(backend):
        (skip, pooled), g = grads(lambda *t: uf.ops.conv3x3_relu_pool(
            *t, 0, backend=backend, _relu_input=True, _skip_hw=crop), ours_in)
    ref_in = [t.detach().double().requires_grad_() for t in (x, w, b)]

    def reference(x_, w_, b_):
        y = torch.relu(torch.nn.functional.conv2d(torch.relu(x_), w_, b_))
        return y[..., 2:10, 3:8], torch.nn.functional.max_pool2d(y, 2, 2)

    (rskip, rpooled), rg = grads(reference, ref_in)
    assert skip.shape == rskip.shape and pooled.shape == rpooled.shape
    assert_float32_close("cropped skip", skip, rskip)
    assert_float32_close("pooled", pooled, rpooled)
    for name, a, r in zip(("dx", "dw", "db"), g, rg):
        assert_float32_close(f"{name} through {use}", a, r)


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_each_skip_is_freed_once_its_decoder_level_has_read_it(backend, monkeypatch):
    """The skips are the largest tensors alive between the encoder and the decoder: in inference
    each is freed (nothing refers to it) as soon as its decoder level has read it, not when the
    forward returns. (The valid U-Net's cropped skips are tensors of their own on our kernels:
    freeing them is memory back.)"""
    if AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    import weakref
    from unet_fast import ops
    alive, seen = [], []
    encode = ops.conv3x3_relu_pool

    def pool_spy(*args, **kwargs):
        skip, pooled = encode(*args, **kwargs)
        alive.append(weakref.ref(skip))
        return skip, pooled

    def reads_skip(fn):   # (the decoder op that reads the skip: the concat conv, or up_concat)
        def spy(skip, *args, **kwargs):
            # every skip of a deeper level than this one's is gone already
            seen.append(sum(r() is not None for r in alive))
            return fn(skip, *args, **kwargs)
        return spy

    monkeypatch.setattr(ops, "conv3x3_relu_pool", pool_spy)
    for op in ("concat_conv3x3_relu", "up_concat"):
        monkeypatch.setattr(ops, op, reads_skip(getattr(ops, op)))
    torch.manual_seed(0)
    model = uf.UNet(1, 2, base_channels=4, depth=3, backend=backend).to(DEVICE)
    with torch.no_grad():
        model(torch.randn(1, 1, 92, 92, device=DEVICE))
    assert seen == [3, 2, 1]       # (the one passed to this level, and the shallower ones)
    assert all(r() is None for r in alive)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_inference_frees_each_decoder_input_once_read(backend, padding, monkeypatch):
    """In inference no frame holds a decoder level's inputs past the one op that reads them:
    when the level's second conv runs, its skip, its up-conv's input and the up-sampled map (or
    the concat buffer written with it) are gone. (tools/memory_model.py, the "same" U-Net's
    inference at 512x512, batch 16: 2.96 -> 1.94 GiB on the cuda backend, 1.96 -> 1.69 on
    triton.)"""
    if AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    import weakref
    from unet_fast import _dispatch, ops
    read, checked = {}, []

    def level():   # "up.2" of "up.2.up", "up.2.conv.0", "up.2.conv.2+head"
        return ".".join(_dispatch.current_layer().split(".")[:2])

    def activations(ts):   # (not the parameters, which require a gradient even now)
        return [weakref.ref(t) for t in ts
                if isinstance(t, torch.Tensor) and t.dim() == 4 and not t.requires_grad]

    def reads_inputs(fn, with_output):   # the up-conv (its output too) and the concat conv
        def spy(*args, **kwargs):
            out = fn(*args, **kwargs)
            read.setdefault(level(), []).extend(activations(args + ((out,) if with_output
                                                                     else ())))
            return out
        return spy

    def second_conv(fn):
        def spy(*args, **kwargs):
            if _dispatch.current_layer().startswith("up.") and ".conv.2" in \
                    _dispatch.current_layer():
                checked.append((level(), len(read[level()]),
                                [r() is None for r in read[level()]]))
            return fn(*args, **kwargs)
        return spy

    for op in ("conv_transpose2x2", "up_concat"):
        monkeypatch.setattr(ops, op, reads_inputs(getattr(ops, op), True))
    monkeypatch.setattr(ops, "concat_conv3x3_relu",
                        reads_inputs(ops.concat_conv3x3_relu, False))
    for op in ("conv3x3_relu", "conv3x3_relu_conv1x1"):
        monkeypatch.setattr(ops, op, second_conv(getattr(ops, op)))
    torch.manual_seed(0)
    model = uf.UNet(1, 2, base_channels=4, depth=3, padding=padding, backend=backend).to(DEVICE)
    with torch.no_grad():
        hw = 92 if padding == "valid" else 88
        model(torch.randn(1, 1, hw, hw, device=DEVICE))
    assert [c[0] for c in checked] == ["up.0", "up.1", "up.2"], checked
    # (up-conv input and output, skip; fused: the concat conv's skip and up again)
    assert all(n >= 3 and all(gone) for _, n, gone in checked), checked


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_training_keeps_no_concat_buffer(padding, monkeypatch):
    """With the Triton kernels the decoder's first conv reads the concat's halves in place: what
    autograd keeps for its backward is the skip and the up-sampled map themselves, never a buffer
    of both (a tensor with the concat's channels). Channels in whole K-tiles (64), as the U-Net's."""
    if AVAILABLE["triton"] is not None:
        pytest.skip(f"triton: {AVAILABLE['triton']}")
    from unet_fast import ops
    skips, ups, saved, cat_shape = [], [], [], []
    concat_conv = ops.concat_conv3x3_relu

    def concat_spy(skip, up, *args, **kwargs):
        skips.append(skip.untyped_storage().data_ptr())
        ups.append(up.untyped_storage().data_ptr())
        cat_shape.append((up.shape[0], skip.shape[1] + up.shape[1]) + tuple(up.shape[2:]))
        return concat_conv(skip, up, *args, **kwargs)

    monkeypatch.setattr(ops, "concat_conv3x3_relu", concat_spy)
    torch.manual_seed(0)
    model = uf.UNet(1, 2, base_channels=64, depth=1, padding=padding, backend="triton").to(DEVICE)
    size = 20 if padding == "valid" else 8
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append((t.shape, t.untyped_storage().data_ptr())) or t, lambda t: t):
        y = model(torch.randn(1, 1, size, size, device=DEVICE))
    y.sum().backward()
    kept = {p for _, p in saved}
    assert len(skips) == 1 and skips[0] in kept and ups[0] in kept
    assert not any(tuple(shape) == cat_shape[0] for shape, _ in saved), \
        [shape for shape, _ in saved]


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_decoder_concat_is_never_copied_twice(backend, monkeypatch):
    """The decoder's first conv over cat([cropped skip, up]): a backend that reads the two halves
    in place gets them as two tensors (conv_transpose2x2, then concat_conv3x3_relu); the cuda
    backend, whose concat_conv3x3_relu would copy both halves into a buffer, gets the up-conv
    written straight into that buffer (up_concat) and a plain conv3x3_relu over it, so only the
    skip is copied. Either way the encoder hands over the skip cropped already (a view), and no
    backward pads a cropped skip's gradient to the whole map (no crop-pad kernel, no view
    backward's zero fill): the pool backward adds it where the crop lies. Both formulations give
    the same numbers (bit for bit here: the cuda backend's up_concat runs its transposed-conv
    kernel into the buffer's channel slice)."""
    if AVAILABLE[backend] is not None:
        pytest.skip(f"{backend}: {AVAILABLE[backend]}")
    from unet_fast import _dispatch, ops
    calls, skips = [], []
    for op in ("conv_transpose2x2", "concat_conv3x3_relu", "up_concat"):
        def spy(*args, _fn=getattr(ops, op), _op=op, **kwargs):
            calls.append(_op)
            if _op == "up_concat":   # (skip, x, ...): the skip's size against the up-sampled map's
                skips.append((tuple(args[0].shape[-2:]), tuple(2 * s for s in args[1].shape[-2:])))
            return _fn(*args, **kwargs)
        monkeypatch.setattr(ops, op, spy)
    torch.manual_seed(0)
    model = uf.UNet(3, 2, base_channels=8, depth=2, backend=backend).to(DEVICE)
    x = torch.randn(2, 3, 44, 44, device=DEVICE)

    pads = ((torch.ops.aten.slice_backward,)
            + ((torch.ops.unet_fast_triton._crop_pad,) if AVAILABLE["triton"] is None else ())
            + ((torch.ops.unet_fast._crop_concat_backward,) if AVAILABLE["cuda"] is None else ()))

    def step():
        calls.clear()
        xi = x.clone().requires_grad_()
        y = model(xi)
        with OpCounter(pads) as padded:
            grads = torch.autograd.grad(y.square().sum(), [xi] + list(model.parameters()))
        assert backend == "torch" or padded.n == 0   # (the reference's crop is a plain view)
        return y.detach(), grads, list(calls), model.backend_report()

    y, grads, ran, report = step()
    composite = backend == "cuda"
    assert _dispatch.fused("concat_conv3x3_relu", backend) is not composite
    assert ran == (["up_concat"] * 2 if composite
                   else ["conv_transpose2x2", "concat_conv3x3_relu"] * 2), ran
    assert {report[f"up.{i}.{part}"] for i in range(2) for part in ("up", "conv.0")} == {backend}
    # the other formulation, forced: the same outputs and gradients
    monkeypatch.setattr(_dispatch, "fused", lambda op, b=None: composite)
    y2, grads2, ran2, _ = step()
    assert ran2 == (["conv_transpose2x2", "concat_conv3x3_relu"] * 2 if composite
                    else ["up_concat"] * 2), ran2
    assert torch.equal(y, y2)
    for a, b in zip(grads, grads2):
        assert torch.equal(a, b)
    # up_concat (in whichever step ran it) got each skip cropped to the up-sampled map already
    # (valid mode: smaller than the encoder's map), so its backward hands the skip its
    # gradient's channel slice, a view
    assert len(skips) == 2 and all(s == u for s, u in skips), skips


@requires_cuda
@pytest.mark.parametrize("backend", ["triton", "cuda", "auto"])
def test_training_step_replays_as_a_cuda_graph_gpu(backend, monkeypatch):
    """A whole bf16-autocast training step (forward, loss, backward into .grad) captured with
    torch.cuda.graph after a warm-up (Triton's compiles, the CUTLASS units' first-run checks, an
    explicit backend's first-run check of its numbers, on here as for a user, auto's
    measurements): nothing in the warm path may synchronize, copy to the host or allocate
    outside the graph's pool, or the capture raises. Each replay on new input equals the same step
    run eagerly: exactly on the triton backend (no atomics: its split sums have a fixed order),
    within fp32 reordering on the others (the hand-written weight gradients' fp32 atomics)."""
    import torch.nn.functional as F
    if backend != "auto" and AVAILABLE[backend] is not None:
        pytest.skip(f"{backend} backend unavailable: {AVAILABLE[backend]}")
    monkeypatch.delenv("UNET_FAST_CHECK", raising=False)
    torch.manual_seed(0)
    # 64 base channels: the CUTLASS units' channel multiple (backend="cuda" on sm_90)
    model = uf.UNet(in_channels=1, num_classes=2, base_channels=64, depth=2, padding="valid",
                    backend=backend).cuda().to(memory_format=torch.channels_last)
    size = 92
    x_in = torch.randn(2, 1, size, size, device="cuda")
    t_in = torch.randint(0, 2, (2,) + model.output_size((size, size)), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x_in).float(), t_in)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):   # warm-up off the default stream, as capture wants
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)   # .grad then comes from the graph's pool
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    graph.replay()
    first = static_loss.item()
    x_in.copy_(torch.randn_like(x_in))
    t_in.copy_(torch.randint_like(t_in, 0, 2))
    graph.replay()
    torch.cuda.synchronize()
    got_loss = static_loss.clone()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert got_loss.item() != first, "the replay did not read the new input"
    model.zero_grad(set_to_none=True)
    want_loss = step()
    assert set(model.backend_report().values()) <= {"triton", "cuda", "torch"}
    if backend != "auto":
        assert set(model.backend_report().values()) == {backend}, model.backend_report()
    for name, want in [("loss", want_loss)] + [(n, p.grad) for n, p in model.named_parameters()]:
        have = got_loss if name == "loss" else got[name]
        if backend == "triton":
            assert torch.equal(have, want), f"{name}: the replay differs from the eager step"
        else:
            assert_float32_close(f"{name} (replay vs eager)", have, want)
