"""Property-based parity (hypothesis) of every op on every backend this machine can run
(parity.BACKENDS: the C++ CPU kernels of `cuda`, the Triton kernels under the interpreter, the CUDA
kernels on a GPU or, without one, on the CPU emulator of tests/cuda_emu): random batch, channels,
odd sizes, padding and memory format; forward and every gradient against the float64 oracle,
shrinking to a minimal failing case. A fixed seed and example count bound CI time.

Each example goes through the parity harness (parity.check: float32 within 1e-5 of the scale,
pooling and concat exact). The GEMM ops are also held to a bound per element: a sum of K products
carries at most about K * 2**-24 of the sum of the magnitudes of its terms, so each element is
compared with rtol = 1e-5 times that magnitude (computed in float64 from |x|, |w|, |b|, |dy|),
which holds for K up to ~160 and is tighter than a plain relative test where terms cancel.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, seed, settings, strategies as st

import unet_fast as uf
from parity import (BACKENDS, DEVICE, EMULATED, assert_within, assert_within_magnitudes, check, kernels,
                    make, op_backend)

# the interpreter and the emulator are slow: fewer examples there
EXAMPLES = {"cuda": 25, "triton": 6, EMULATED: 12}
RTOL = 1e-5


def _settings(backend):
    return settings(max_examples=EXAMPLES[backend] if DEVICE == "cpu" else 40, deadline=None,
                    derandomize=True, suppress_health_check=list(HealthCheck))


def _layout(channels_last):
    return "channels_last" if channels_last else "nchw"


shape = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(3, 12), st.integers(3, 12))


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv3x3_relu(backend):
    @seed(1)
    @_settings(backend)
    @given(shape=shape, cout=st.integers(1, 7), padding=st.sampled_from([0, 1]),
           bias=st.booleans(), cl=st.booleans())
    def prop(shape, cout, padding, bias, cl):
        n, c, h, w = shape
        args = [make(shape, _layout(cl)), make((cout, c, 3, 3)), make((cout,)) if bias else None, padding]
        assert_within_magnitudes("conv3x3_relu", check("conv3x3_relu", args, backend=backend), RTOL)
    prop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv3x3_relu_pool(backend):
    """Its own oracle for the gradient: the pool's argmax is taken on our conv output (ties and
    float32 rounding may pick another element than float64 would)."""
    @seed(2)
    @_settings(backend)
    @given(shape=shape, cout=st.integers(1, 7), padding=st.sampled_from([0, 1]), cl=st.booleans())
    def prop(shape, cout, padding, cl):
        n, c, h, w = shape
        ho, wo = h - 2 + 2 * padding, w - 2 + 2 * padding
        if ho < 2 or wo < 2:
            return
        x = make(shape, _layout(cl)).requires_grad_()
        wt, b = make((cout, c, 3, 3)).requires_grad_(), make((cout,)).requires_grad_()
        x64, w64, b64 = (t.detach().cpu().double().requires_grad_() for t in (x, wt, b))
        y, p = uf.ops.conv3x3_relu_pool(x, wt, b, padding, backend=op_backend(backend))
        y_ref = F.relu(F.conv2d(x64, w64, b64, padding=padding))
        # the pooled map is exactly the max of the (ours) conv output: a copy
        assert_within("pooled == max_pool2d(y)", p, F.max_pool2d(y, 2, 2), 0)
        mag = F.conv2d(x64.detach().abs(), w64.detach().abs(), b64.detach().abs(), padding=padding)
        assert_within("y", y.detach().cpu(), y_ref.detach(), RTOL * mag)
        gy = torch.randn_like(y_ref)
        gp = torch.randn(p.shape, dtype=torch.float64)
        fmt = torch.channels_last if cl else torch.contiguous_format
        # gradients flow into both outputs; compare through the float64 reference composition
        ours = torch.autograd.grad((y, p), (x, wt, b), (gy.float().to(DEVICE).contiguous(memory_format=fmt),
                                                         gp.float().to(DEVICE).contiguous(memory_format=fmt)))
        # route gp through our own y's argmax in float64
        idx = F.max_pool2d(y.detach().cpu().double(), 2, 2, return_indices=True)[1]
        y2 = F.relu(F.conv2d(x64, w64, b64, padding=padding))
        pooled_ref = y2.flatten(2).gather(2, idx.flatten(2)).view_as(gp)
        ref = torch.autograd.grad((y2, pooled_ref), (x64, w64, b64), (gy, gp))
        gtot = gy.abs() + F.max_unpool2d(gp.abs(), idx, 2, 2, output_size=y2.shape[-2:])
        xa, wa, ba = (t.detach().abs().requires_grad_() for t in (x64, w64, b64))
        mags = torch.autograd.grad((F.conv2d(xa, wa, ba, padding=padding) * gtot).sum(), (xa, wa, ba))
        for name, a, r, m in zip(("dx", "dw", "db"), ours, ref, mags):
            assert_within(name, a.cpu(), r, RTOL * m + 1e-30)
    with kernels(backend):
        prop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool2x2(backend):
    @seed(3)
    @_settings(backend)
    @given(shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(2, 13), st.integers(2, 13)),
           cl=st.booleans())
    def prop(shape, cl):
        check("max_pool2x2", [make(shape, _layout(cl))], backend=backend)  # exact
    prop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_crop_concat(backend):
    @seed(4)
    @_settings(backend)
    @given(n=st.integers(1, 3), cs=st.integers(1, 9), cu=st.integers(1, 9), hu=st.integers(1, 9),
           wu=st.integers(1, 9), dh=st.integers(0, 7), dw=st.integers(0, 7), cl=st.booleans())
    def prop(n, cs, cu, hu, wu, dh, dw, cl):
        skip, up = make((n, cs, hu + dh, wu + dw), _layout(cl)), make((n, cu, hu, wu), _layout(cl))
        check("crop_concat", [skip, up], backend=backend)  # exact
    prop()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["conv_transpose2x2", "up_concat", "conv1x1"])
def test_gemm_ops(backend, op):
    @seed(5)
    @_settings(backend)
    @given(shape=st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)),
           cout=st.integers(1, 7), bias=st.booleans(), cl=st.booleans(), cs=st.integers(1, 5),
           dh=st.integers(0, 4), dw=st.integers(0, 4))
    def prop(shape, cout, bias, cl, cs, dh, dw):
        n, c, h, w = shape
        x = make(shape, _layout(cl))
        wt = make((c, cout, 2, 2) if op != "conv1x1" else (cout, c, 1, 1))
        b = make((cout,)) if bias else None
        args = [x, wt, b]
        if op == "up_concat":
            args = [make((n, cs, 2 * h + dh, 2 * w + dw), _layout(cl))] + args
        assert_within_magnitudes(op, check(op, args, backend=backend), RTOL)
    prop()
