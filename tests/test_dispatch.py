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
