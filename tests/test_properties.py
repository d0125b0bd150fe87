"""Property-based parity (hypothesis) of every op on every backend this machine can run (the C++ CPU
kernels of `cuda`, the Triton kernels under the interpreter, the CUDA kernels on a GPU or, without
one, on the CPU emulator of tests/cuda_emu): random batch, channels, odd sizes, padding and memory
format; forward and every gradient against the float64 reference, shrinking to a minimal failing
case. A fixed seed and example count bound CI time.

Tolerance, float32 against float64: a sum of K products carries at most about K * 2**-24 of the
sum of the magnitudes of its terms, so each element is compared with rtol = 1e-5 times that
magnitude (computed in float64 from |x|, |w|, |b|, |dy|), which holds for K up to ~160 and is
tighter than a plain relative test where terms cancel. Pooling and concat are copies: exact.
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, seed, settings, strategies as st

import unet_fast as uf
from cuda_emu import build

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
AVAILABLE = uf.backends.available()
BACKENDS = [b for b in ("cuda", "triton") if AVAILABLE[b] is None]
# Without a GPU the CUDA kernels themselves run on the CPU emulator (tests/cuda_emu) as a third
# "backend": `cuda` with the emulated kernels in place of the C++ CPU ones.
EMULATED = "cuda-emulated"
if DEVICE == "cpu" and AVAILABLE["cuda"] is None and build.cuda_include_dir() is not None:
    BACKENDS.append(EMULATED)
# the interpreter and the emulator are slow: fewer examples there
EXAMPLES = {"cuda": 25, "triton": 6, EMULATED: 12}
RTOL = 1e-5


def _op_backend(backend):
    return "cuda" if backend == EMULATED else backend


def _kernels(backend):
    """The context the property runs in: the emulated CUDA kernels for EMULATED, else nothing."""
    if backend != EMULATED:
        return contextlib.nullcontext()
    from test_cuda_emulated import emulated

    return emulated(build.load())


def _settings(backend):
    return settings(max_examples=EXAMPLES[backend] if DEVICE == "cpu" else 40, deadline=None,
                    derandomize=True, suppress_health_check=list(HealthCheck))


def _fmt(t, channels_last):
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _check(ours_out, ours_grads, ref_fn, mag_fn, inputs64, g64, exact=False):
    """Compare outputs and gradients with the float64 reference, within RTOL of the magnitude."""
    ins = [t.detach().clone().requires_grad_(t.requires_grad) if t is not None else None
           for t in inputs64]
    ref = ref_fn(*ins)
    req = [t for t in ins if t is not None and t.requires_grad]
    ref_grads = torch.autograd.grad(ref, req, g64)
    if exact:
        assert torch.equal(ours_out.double(), ref)
        for a, b in zip(ours_grads, ref_grads):
            assert torch.equal(a.double(), b)
        return
    absins = [t.detach().abs().requires_grad_(t.requires_grad) if t is not None else None
              for t in inputs64]
    mag = mag_fn(*absins)
    mag_grads = torch.autograd.grad((mag * g64.abs()).sum(), [t for t in absins if t is not None and t.requires_grad])
    for name, a, b, m in [("output", ours_out, ref, mag)] + [
            (f"grad {i}", a, b, m) for i, (a, b, m) in enumerate(zip(ours_grads, ref_grads, mag_grads))]:
        err = (a.double() - b).abs()
        bound = RTOL * m + 1e-30
        bad = err > bound
        assert not bad.any(), (f"{name}: {int(bad.sum())} of {bad.numel()} elements off; worst "
                               f"{(err / bound).max().item():.3g}x the bound at "
                               f"{tuple(torch.nonzero(bad)[0].tolist())}")


def _run(op_fn, inputs32, g32):
    outs = op_fn(*inputs32)
    req = [t for t in inputs32 if t is not None and t.requires_grad]
    grads = torch.autograd.grad(outs, req, g32)
    return outs, grads


shape = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(3, 12), st.integers(3, 12))


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv3x3_relu(backend):
    @seed(1)
    @_settings(backend)
    @given(shape=shape, cout=st.integers(1, 7), padding=st.sampled_from([0, 1]),
           bias=st.booleans(), cl=st.booleans())
    def prop(shape, cout, padding, bias, cl):
        n, c, h, w = shape
        x64 = torch.randn(n, c, h, w, dtype=torch.float64)
        w64 = torch.randn(cout, c, 3, 3, dtype=torch.float64)
        b64 = torch.randn(cout, dtype=torch.float64) if bias else None
        x, wt = _fmt(x64.float(), cl).to(DEVICE), w64.float().to(DEVICE)
        b = b64.float().to(DEVICE) if bias else None
        for t in (x, wt, b, x64, w64, b64):
            if t is not None:
                t.requires_grad_(True)
        ho, wo = h - 2 + 2 * padding, w - 2 + 2 * padding
        g64 = torch.randn(n, cout, ho, wo, dtype=torch.float64)
        out, grads = _run(lambda *a: uf.ops.conv3x3_relu(*a, padding=padding, backend=_op_backend(backend)),
                          (x, wt, b), _fmt(g64.float(), cl).to(DEVICE))
        if cl and c > 1 and cout > 1:
            assert out.is_contiguous(memory_format=torch.channels_last)
        _check(out.cpu(), [t.cpu() for t in grads],
               lambda x_, w_, b_: F.relu(F.conv2d(x_, w_, b_, padding=padding)),
               lambda x_, w_, b_: F.conv2d(x_, w_, b_, padding=padding),
               (x64, w64, b64), g64)
    with _kernels(backend):
        prop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv3x3_relu_pool(backend):
    @seed(2)
    @_settings(backend)
    @given(shape=shape, cout=st.integers(1, 7), padding=st.sampled_from([0, 1]), cl=st.booleans())
    def prop(shape, cout, padding, cl):
        n, c, h, w = shape
        ho, wo = h - 2 + 2 * padding, w - 2 + 2 * padding
        if ho < 2 or wo < 2:
            return
        x64 = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
        w64 = torch.randn(cout, c, 3, 3, dtype=torch.float64, requires_grad=True)
        b64 = torch.randn(cout, dtype=torch.float64, requires_grad=True)
        x = _fmt(x64.detach().float(), cl).to(DEVICE).requires_grad_()
        wt = w64.detach().float().to(DEVICE).requires_grad_()
        b = b64.detach().float().to(DEVICE).requires_grad_()
        y, p = uf.ops.conv3x3_relu_pool(x, wt, b, padding, backend=_op_backend(backend))
        y_ref = F.relu(F.conv2d(x64, w64, b64, padding=padding))
        # the pooled map is exactly the max of the (ours) conv output: a copy
        assert torch.equal(p, F.max_pool2d(y, 2, 2))
        mag = F.conv2d(x64.detach().abs(), w64.detach().abs(), b64.detach().abs(), padding=padding)
        err = (y.detach().cpu().double() - y_ref.detach()).abs()
        assert (err <= RTOL * mag).all()
        gy = torch.randn_like(y_ref)
        gp = torch.randn(p.shape, dtype=torch.float64)
        # gradients flow into both outputs; compare through the float64 reference composition
        ours = torch.autograd.grad((y, p), (x, wt, b), (_fmt(gy.float(), cl).to(DEVICE),
                                                         _fmt(gp.float(), cl).to(DEVICE)))
        # the argmax of the pool is taken on ours (ties and float32 rounding may pick another
        # element than float64 would): route gp through our own y's argmax in float64
        idx = F.max_pool2d(y.detach().cpu().double(), 2, 2, return_indices=True)[1]
        y2 = F.relu(F.conv2d(x64, w64, b64, padding=padding))
        flat = y2.flatten(2)
        pooled_ref = flat.gather(2, idx.flatten(2)).view_as(gp)
        ref = torch.autograd.grad((y2, pooled_ref), (x64, w64, b64), (gy, gp))
        gtot = gy.abs() + F.max_unpool2d(gp.abs(), idx, 2, 2, output_size=y2.shape[-2:])
        xa, wa, ba = (t.detach().abs().requires_grad_() for t in (x64, w64, b64))
        mags = torch.autograd.grad((F.conv2d(xa, wa, ba, padding=padding) * gtot).sum(), (xa, wa, ba))
        for name, a, r, m in zip(("dx", "dw", "db"), ours, ref, mags):
            e = (a.cpu().double() - r).abs()
            assert (e <= RTOL * m + 1e-30).all(), (name, (e / (RTOL * m + 1e-30)).max().item())
    with _kernels(backend):
        prop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool2x2(backend):
    @seed(3)
    @_settings(backend)
    @given(shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(2, 13), st.integers(2, 13)),
           cl=st.booleans())
    def prop(shape, cl):
        x64 = torch.randn(*shape, dtype=torch.float64)
        x = _fmt(x64.float(), cl).to(DEVICE).requires_grad_()
        x64.requires_grad_()
        g64 = torch.randn(*F.max_pool2d(x64, 2, 2).shape, dtype=torch.float64)
        out, grads = _run(lambda t: uf.ops.max_pool2x2(t, backend=_op_backend(backend)), (x,),
                          _fmt(g64.float(), cl).to(DEVICE))
        # float32 copies of the float64 data keep the order of distinct values: exact
        _check(out.cpu(), [t.cpu() for t in grads], lambda t: F.max_pool2d(t, 2, 2), None,
               (x64.float().double().requires_grad_(),), g64.float().double(), exact=True)
    with _kernels(backend):
        prop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_crop_concat(backend):
    @seed(4)
    @_settings(backend)
    @given(n=st.integers(1, 3), cs=st.integers(1, 9), cu=st.integers(1, 9), hu=st.integers(1, 9),
           wu=st.integers(1, 9), dh=st.integers(0, 7), dw=st.integers(0, 7), cl=st.booleans())
    def prop(n, cs, cu, hu, wu, dh, dw, cl):
        s = torch.randn(n, cs, hu + dh, wu + dw)
        u = torch.randn(n, cu, hu, wu)
        s_, u_ = (_fmt(t, cl).to(DEVICE).requires_grad_() for t in (s, u))
        g = torch.randn(n, cs + cu, hu, wu)
        out, grads = _run(lambda a, b: uf.ops.crop_concat(a, b, backend=_op_backend(backend)), (s_, u_),
                          _fmt(g, cl).to(DEVICE))
        _check(out.cpu(), [t.cpu() for t in grads],
               lambda a, b: torch.cat([a[..., dh // 2:dh // 2 + hu, dw // 2:dw // 2 + wu], b], 1), None,
               (s.double().requires_grad_(), u.double().requires_grad_()), g.double(), exact=True)
    with _kernels(backend):
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
        x64 = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
        wshape = (c, cout, 2, 2) if op != "conv1x1" else (cout, c, 1, 1)
        w64 = torch.randn(*wshape, dtype=torch.float64, requires_grad=True)
        b64 = torch.randn(cout, dtype=torch.float64, requires_grad=True) if bias else None
        x = _fmt(x64.detach().float(), cl).to(DEVICE).requires_grad_()
        wt = w64.detach().float().to(DEVICE).requires_grad_()
        b = b64.detach().float().to(DEVICE).requires_grad_() if bias else None
        if op == "conv1x1":
            fn = lambda x_, w_, b_: uf.ops.conv1x1(x_, w_, b_, backend=_op_backend(backend))  # noqa: E731
            ref = lambda x_, w_, b_: F.conv2d(x_, w_, b_)  # noqa: E731
            args, args64 = (x, wt, b), (x64, w64, b64)
        elif op == "conv_transpose2x2":
            fn = lambda x_, w_, b_: uf.ops.conv_transpose2x2(x_, w_, b_, backend=_op_backend(backend))  # noqa: E731
            ref = lambda x_, w_, b_: F.conv_transpose2d(x_, w_, b_, stride=2)  # noqa: E731
            args, args64 = (x, wt, b), (x64, w64, b64)
        else:
            s64 = torch.randn(n, cs, 2 * h + dh, 2 * w + dw, dtype=torch.float64, requires_grad=True)
            s = _fmt(s64.detach().float(), cl).to(DEVICE).requires_grad_()
            t0, l0 = dh // 2, dw // 2
            fn = lambda s_, x_, w_, b_: uf.ops.up_concat(s_, x_, w_, b_, backend=_op_backend(backend))  # noqa: E731
            ref = lambda s_, x_, w_, b_: torch.cat(  # noqa: E731
                [s_[..., t0:t0 + 2 * h, l0:l0 + 2 * w], F.conv_transpose2d(x_, w_, b_, stride=2)], 1)
            args, args64 = (s, x, wt, b), (s64, x64, w64, b64)
        with torch.no_grad():
            gshape = ref(*[a.detach() if a is not None else None for a in args64]).shape
        g64 = torch.randn(*gshape, dtype=torch.float64)
        out, grads = _run(fn, args, _fmt(g64.float(), cl).to(DEVICE))
        _check(out.cpu(), [t.cpu() for t in grads], ref, ref, args64, g64)
    with _kernels(backend):
        prop()
