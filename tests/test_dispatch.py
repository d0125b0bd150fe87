"""The dispatch layer (unet_fast/_dispatch.py, unet_fast/backends/): which backends this machine can
run and why not, choosing one (argument, use_backend, UNET_FAST_BACKEND), registering an
implementation, BackendUnavailable for an explicit backend that cannot run, and the TF32 switch the
backends follow. What "auto" measures and remembers is in test_auto.py."""
import pytest
import torch
import torch.nn.functional as F

import unet_fast as uf


def test_available_reports_every_backend():
    av = uf.backends.available()
    assert set(av) == {"torch", "triton", "cuda"}
    assert av["torch"] is None
    for name, reason in av.items():
        assert reason is None or (isinstance(reason, str) and reason)


def test_use_backend_and_environment(monkeypatch):
    from unet_fast import _dispatch
    x = torch.randn(1, 2, 4, 4)
    assert _dispatch.requested_backend() == "auto"
    with uf.use_backend("torch"):
        assert _dispatch.requested_backend() == "torch"
        assert _dispatch.requested_backend("cuda") == "cuda"  # the argument wins
    monkeypatch.setenv("UNET_FAST_BACKEND", "torch")
    assert _dispatch.requested_backend() == "torch"
    with uf.use_backend("auto"):
        assert _dispatch.requested_backend() == "auto"  # the context beats the environment
    monkeypatch.setenv("UNET_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="UNET_FAST_BACKEND"):
        uf.ops.max_pool2x2(x)


class _OnAnotherThread(torch.autograd.Function):
    """Runs `fn` in the backward of a reentrant backward 70 deep: beyond its depth limit autograd
    hands the rest to a thread of its pool with the caller's thread state, as it hands a GPU's
    nodes to its device thread (which a CPU backward never reaches)."""

    @staticmethod
    def forward(ctx, x, depth, fn):
        ctx.depth, ctx.fn = depth, fn
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        with torch.enable_grad():
            if ctx.depth:
                y = torch.zeros(1, requires_grad=True)
                _OnAnotherThread.apply(y, ctx.depth - 1, ctx.fn).sum().backward()
            else:
                ctx.fn()
        return g, None, None


def on_a_backwards_thread(fn):
    import threading
    ran = []
    _OnAnotherThread.apply(torch.zeros(1, requires_grad=True), 70,
                           lambda: ran.append((threading.get_ident(), fn()))).sum().backward()
    assert ran and ran[0][0] != threading.get_ident(), "ran on the caller's thread"
    return ran[0][1]


def test_use_backend_reaches_the_threads_that_run_a_backward(monkeypatch):
    """On a GPU a backward runs on autograd's device thread: a request of `use_backend` holds
    there too when the backward is called inside the block, and a block entered there restores
    what it found. Where a region of uf.ops is checkpointed, the recomputation then runs on the
    backend its forward ran on (a recomputation under "auto", on the torch ops here, would save
    other tensors: CheckpointError)."""
    from unet_fast import _dispatch
    assert on_a_backwards_thread(_dispatch.requested_backend) == "auto"
    if not _dispatch._STASH:
        pytest.skip(f"torch {torch.__version__} cannot take a Python object out of its per-thread "
                    "stash again (torch._C._remove_obj_from_tls: torch 2.13 and 2.14 have it): "
                    "use_backend stays in its own thread")

    def nested():
        with uf.use_backend("cuda"):
            inner = _dispatch.requested_backend()
        return inner, _dispatch.requested_backend()
    with uf.use_backend("torch"):
        assert on_a_backwards_thread(_dispatch.requested_backend) == "torch"
        assert on_a_backwards_thread(nested) == ("cuda", "torch")
    assert _dispatch.requested_backend() == "auto"
    assert not torch._C._is_key_in_tls(_dispatch._TLS_KEY)   # (nothing left in the thread)

    if uf.backends.available()["triton"] is not None:
        return
    from torch.utils.checkpoint import checkpoint
    torch.manual_seed(0)
    x = torch.randn(1, 4, 10, 10, requires_grad=True)
    w, b = torch.randn(8, 4, 3, 3, requires_grad=True), torch.randn(8, requires_grad=True)
    ran = []
    record = _dispatch.record
    monkeypatch.setattr(_dispatch, "record", lambda op, name: ran.append(name) or record(op, name))

    def region(x):
        return uf.ops.max_pool2x2(uf.ops.conv3x3_relu(x, w, b))
    with uf.use_backend("triton"):
        y = checkpoint(region, x, use_reentrant=False)
        on_a_backwards_thread(lambda: y.square().sum().backward())
    assert len(ran) > 2 and set(ran) == {"triton"}, ran   # the forward, then the recomputation
    grads = [t.grad for t in (x, w, b)]
    with uf.use_backend("triton"):
        for t in (x, w, b):
            t.grad = None
        region(x).square().sum().backward()
    for g, t in zip(grads, (x, w, b)):
        assert torch.equal(g, t.grad)


def test_auto_on_cpu_is_torch():
    from unet_fast import _dispatch
    uf.ops.max_pool2x2(torch.randn(1, 2, 4, 4))
    assert _dispatch.last_used("max_pool2x2") == "torch"


def test_registering_a_backend_is_enough(monkeypatch):
    """Adding an implementation is a matter of registering it: the op then reaches it."""
    from unet_fast import _dispatch
    calls = []
    saved = dict(_dispatch._impls["max_pool2x2"])
    monkeypatch.setitem(_dispatch._backend_reason, "triton", lambda: None)
    try:
        _dispatch.register_impl("max_pool2x2", "triton",
                                lambda x: calls.append(x) or F.max_pool2d(x, 2, 2),
                                supports=lambda x: None if x.dtype == torch.float32 else "float32 only")
        x = torch.randn(1, 2, 4, 4)
        uf.ops.max_pool2x2(x, backend="triton")
        assert len(calls) == 1
        with pytest.raises(uf.BackendUnavailable, match="float32 only"):
            uf.ops.max_pool2x2(x.double(), backend="triton")
    finally:
        _dispatch._impls["max_pool2x2"].clear()
        _dispatch._impls["max_pool2x2"].update(saved)


def test_fused_follows_the_request_and_the_registration(monkeypatch):
    """`fused(op, backend)` is False only where the backend asked for (argument, use_backend, the
    environment) registered that op as a composite of its unfused kernels; "auto" times whole
    ops and counts as fused."""
    from unet_fast import _dispatch
    _dispatch.ensure_backends()
    op = "concat_conv3x3_relu"
    monkeypatch.setitem(_dispatch._impls[op], "triton", _dispatch._Impl(None, None, None, True))
    monkeypatch.setitem(_dispatch._impls[op], "cuda", _dispatch._Impl(None, None, None, False))
    assert _dispatch.fused(op) and _dispatch.fused(op, "auto") and _dispatch.fused(op, "torch")
    assert _dispatch.fused(op, "cuda") and not _dispatch.fused(op, "triton")
    with uf.use_backend("triton"):
        assert not _dispatch.fused(op) and _dispatch.fused(op, "torch")
    monkeypatch.setenv("UNET_FAST_BACKEND", "triton")
    assert not _dispatch.fused(op)
    monkeypatch.delitem(_dispatch._impls[op], "triton")
    assert _dispatch.fused(op)   # (no implementation: the call itself will say so)


def test_auto_never_raises_for_a_broken_backend(monkeypatch):
    from unet_fast import _dispatch
    monkeypatch.setitem(_dispatch._backend_reason, "cuda", lambda: 1 / 0)
    assert "failed" in uf.backends.available()["cuda"]
    assert uf.ops.max_pool2x2(torch.randn(1, 1, 2, 2)).shape == (1, 1, 1, 1)


def test_explicit_backend_that_cannot_run_raises():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    reasons = uf.backends.available()
    for name in ("triton", "cuda"):
        if reasons[name] is not None:
            with pytest.raises(uf.BackendUnavailable) as e:
                uf.ops.max_pool2x2(x, backend=name)
            assert reasons[name] in str(e.value) and "backend='auto'" in str(e.value)
    assert issubclass(uf.BackendUnavailable, RuntimeError)


def test_conv_tf32_setting_follows_both_pytorch_apis(fp32_precision_restored, monkeypatch):
    from unet_fast._utils import conv_allows_tf32
    from unet_fast.backends.triton_backend import utils as tutils

    b = torch.backends
    for legacy in (True, False):
        b.cudnn.allow_tf32 = legacy
        assert conv_allows_tf32() is legacy
    # the new API, mixed with the legacy one: PyTorch's own legacy getter raises here
    b.cudnn.rnn.fp32_precision = "tf32"
    b.cudnn.conv.fp32_precision = "ieee"
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        b.cudnn.allow_tf32
    assert conv_allows_tf32() is False
    monkeypatch.setattr(tutils, "INTERPRET", False)  # what a GPU run would ask
    assert tutils.dot_precision(torch.float32) == "ieee"
    b.cudnn.conv.fp32_precision = "tf32"
    assert conv_allows_tf32() is True and tutils.dot_precision(torch.float32) == "tf32"
    assert tutils.dot_precision(torch.bfloat16) == "ieee"
    b.cudnn.conv.fp32_precision = "none"  # defers to cuDNN's, then the global setting
    b.cudnn.fp32_precision = "tf32"
    assert conv_allows_tf32() is True
    b.cudnn.fp32_precision = "none"
    assert conv_allows_tf32() is False
