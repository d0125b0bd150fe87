"""The `cuda` backend (the extension unet_fast._C, csrc/): every op against the float64 oracle,
forward and every gradient, through the parity harness (parity.py, which has the tolerances); then
float64 gradcheck, alignment edge cases, the model, torch.library registration and the C++
argument checks.

On the CPU these run the C++ CPU kernels (csrc/cpu), which share the CUDA kernels' implicit-GEMM
problem descriptions (csrc/igemm_*.h): index arithmetic, 16-byte run loaders, epilogues. Our
CPU kernels accumulate in double, so in float32 their only error is the final rounding. The CUDA
kernels themselves run here on the CPU emulator (test_cuda_emulated.py); the GPU parity tests at
the end are skipped without a GPU (they run in the GPU suite).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import unet_fast as uf
from unet_fast.backends import cuda_backend

from conftest import requires_cuda
from parity import (LAYOUTS, REFERENCE, OpCounter, allow_tf32, assert_float32_close,
                    assert_lowp_within, center_crop, check, make, op_args, to_layout)

pytestmark = pytest.mark.skipif(uf.backends.available()["cuda"] is not None,
                                reason=f"cuda backend unavailable: {uf.backends.available()['cuda']}")

_ops = torch.ops.unet_fast if cuda_backend._LOAD_ERROR is None else None


# ---------------------------------------------------------------- every op, C++ CPU kernels
# Odd shapes on purpose: batch 3, channels 1/3/5/17, sizes 13x11 and 17x23; 8/16 channels take the
# 16-byte-run paths.
CONV_CASES = [  # (n, cin, cout, h, w, padding)
    (3, 1, 5, 13, 11, 0),
    (3, 3, 8, 17, 23, 1),
    (2, 17, 5, 13, 11, 1),
    (2, 8, 16, 9, 12, 0),
    (1, 16, 8, 6, 7, 1),
]
OPS_CASES = ([("conv3x3_relu",) + c for c in CONV_CASES] + [("conv3x3_relu_pool",) + c for c in CONV_CASES]
             + [("max_pool2x2", 3, 5, 5, 13, 11, 0), ("max_pool2x2", 2, 16, 16, 8, 6, 0)]
             + [("crop_concat", 3, 5, 3, 13, 11, 0), ("crop_concat", 2, 8, 16, 6, 8, 0)]
             + [(o, 3, 5, 3, 7, 6, 0) for o in ("conv_transpose2x2", "up_concat", "conv1x1")]
             + [(o, 2, 16, 8, 5, 4, 0) for o in ("conv_transpose2x2", "up_concat", "conv1x1")]
             + [("conv1x1", 3, 4, 2, 13, 11, 0), ("up_concat", 1, 17, 1, 3, 5, 0)]
             + [("conv3x3_relu_conv1x1", 2, 5, 8, 9, 10, p) for p in (0, 1)])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op,n,cin,cout,h,w,padding", OPS_CASES)
def test_op_float32_vs_float64(op, n, cin, cout, h, w, padding, layout):
    check(op, op_args(op, n, cin, cout, h, w, padding, layout, device="cpu"), backend="cuda")


@pytest.mark.parametrize("op", list(REFERENCE))
def test_output_keeps_memory_format(op):
    for layout in ("nchw", "channels_last"):
        args = op_args(op, 2, 8, 8, 6, 6, 1, layout, device="cpu")
        out = getattr(uf.ops, op)(*args, backend="cuda")
        for o in (out if isinstance(out, tuple) else (out,)):
            if layout == "channels_last":
                assert o.is_contiguous(memory_format=torch.channels_last), layout
            else:
                assert o.is_contiguous(), layout


@pytest.mark.parametrize("op", list(REFERENCE))
def test_gradcheck_float64(op):
    args = op_args(op, 2, 3, 2, 5, 4, 1, dtype=torch.float64, device="cpu")
    if op == "conv3x3_relu_pool":
        args = op_args(op, 2, 3, 2, 5, 6, 0, dtype=torch.float64, device="cpu")
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]

    def fn(*a):
        return getattr(uf.ops, op)(*a, backend="cuda")

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_channels_last_no_bias():
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: uf.ops.conv3x3_relu_pool(a, b, None, 1, backend="cuda"),
                                    (x, w))
    wt = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(2, 2, 13, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, a, b: uf.ops.up_concat(s, a, b, None, backend="cuda"),
                                    (skip, x, wt))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", ["conv3x3_relu", "conv3x3_relu_pool", "conv_transpose2x2", "conv1x1",
                                "up_concat"])
def test_low_precision_cpu(op, dtype):
    """Our CPU kernels in half precision are at most twice as far from float64 as PyTorch's."""
    check(op, op_args(op, 2, 16, 8, 9, 10, 1, "channels_last", dtype, device="cpu"), backend="cuda")


# ---------------------------------------------------------------- crop_concat, any dtype and layout
# crop_concat was the build chain's first op; its C++ kernel copies, so it is exact in any dtype.
CROP_SHAPES = [((3, 5, 17, 23), (3, 3, 13, 11)), ((1, 1, 8, 8), (1, 2, 8, 8)), ((2, 16, 9, 10), (2, 8, 4, 4)),
               ((2, 3, 6, 7), (2, 17, 5, 5))]


@pytest.mark.parametrize("shapes", CROP_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS + ("mixed_strides",))
def test_crop_concat_cpu_matches_reference(shapes, dtype, layout):
    if layout == "mixed_strides":  # skip: every other channel of a wider tensor; up: H and W swapped in memory
        skip = torch.randn(shapes[0][0], shapes[0][1] * 2, *shapes[0][2:]).to(dtype)[:, ::2]
        up = torch.randn(*shapes[1]).to(dtype).transpose(2, 3).contiguous().transpose(2, 3)
    else:
        skip, up = make(shapes[0], layout, dtype, "cpu"), make(shapes[1], layout, dtype, "cpu")
    check("crop_concat", [skip, up], backend="cuda")


def test_crop_concat_gradcheck_float64():
    skip = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, u: uf.ops.crop_concat(s, u, backend="cuda"), (skip, up))


def test_crop_concat_opcheck():
    skip = torch.randn(2, 3, 7, 6, requires_grad=True)
    up = torch.randn(2, 2, 4, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.unet_fast.crop_concat.default, (skip, up))


def test_crop_concat_compiles_fullgraph():
    skip, up = torch.randn(2, 3, 7, 6), torch.randn(2, 2, 4, 5)
    f = torch.compile(lambda s, u: torch.ops.unet_fast.crop_concat(s, u) * 2, fullgraph=True,
                      backend="aot_eager")
    assert torch.equal(f(skip, up), 2 * REFERENCE["crop_concat"](skip, up))


def test_pool_epilogue_tiles_and_tails():
    """Many 64-row GEMM tiles, odd output sizes (the floor-dropped row/column) and NaN rules."""
    x = torch.randn(2, 3, 37, 30, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    y, p = uf.ops.conv3x3_relu_pool(x, w, None, 0, backend="cuda")
    torch.testing.assert_close(y, F.relu(F.conv2d(x, w)), rtol=1e-12, atol=1e-12)
    assert torch.equal(p, F.max_pool2d(y, 2, 2))
    xn = torch.randn(1, 2, 5, 5)
    xn[0, 0, 1, 1] = float("nan")
    torch.testing.assert_close(uf.ops.max_pool2x2(xn, backend="cuda"), F.max_pool2d(xn, 2, 2), equal_nan=True)


class _YSized(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten calls (views aside) that make a tensor of `numel` elements: the sums and
    zero-padded copies of y's size a backward must not make."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.calls = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "aten" and isinstance(out, torch.Tensor) \
                and out.numel() == self.numel and not func._schema.is_mutable \
                and not any(isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr()
                            == out.untyped_storage().data_ptr() for a in args):
            self.calls.append(func.name())
        elif func.namespace == "aten" and func._schema.is_mutable and isinstance(args[0], torch.Tensor) \
                and args[0].numel() == self.numel:
            self.calls.append(func.name())
        return out


class _CutlassUnits:   # torch.ops.unet_fast, with the CPU conv standing in for the CUTLASS units
    def __getattr__(self, name):
        return getattr(_ops, name)

    record = True   # (off: torch.compile traces no side effect)
    flags = []   # (relu_input, grad_masked) of each _conv3x3_relu_sm90 call
    backward_calls = []   # (output_mask, relu_input, grad_masked) of each backward unit call

    @staticmethod
    def _conv3x3_relu_sm90(x, w, b, padding, relu_input, grad_masked):
        if _CutlassUnits.record:
            _CutlassUnits.flags.append((relu_input, grad_masked))
        return _ops.conv3x3_relu(x, w, b, padding)

    @staticmethod
    def _conv3x3_relu_sm90_backward(grad, y, x, w, padding, mask, relu_input, grad_masked):
        # (as the glue: grad_masked -> grad is read as it is, y unread)
        if _CutlassUnits.record:
            _CutlassUnits.backward_calls.append((list(mask), relu_input, grad_masked))
        return _ops._conv3x3_relu_backward(grad, None if grad_masked else y, x, w, padding, mask,
                                           relu_input)


def _stand_in_cutlass(monkeypatch, quiet=False):
    from unet_fast.backends import cuda_ops, cutlass_sm90
    monkeypatch.setattr(cuda_ops, "_ops", _CutlassUnits())
    monkeypatch.setattr(_CutlassUnits, "record", not quiet)
    monkeypatch.setattr(cutlass_sm90, "wanted", lambda x, w, pad: True)
    monkeypatch.setattr(_CutlassUnits, "flags", [])
    monkeypatch.setattr(_CutlassUnits, "backward_calls", [])


def _spy_pool_backward(monkeypatch):
    """The pool backward calls of the stand-in units: ("plain" or "sum", relu_mask)."""
    calls = []

    def plain(grad, y, grad_skip, relu_mask=False):
        calls.append(("plain", relu_mask))
        return _ops._max_pool2x2_backward(grad, y, grad_skip, relu_mask)

    def summing(grad, y, grad_skip, relu_mask=False):
        calls.append(("sum", relu_mask))
        return _ops._max_pool2x2_backward_sum(grad, y, grad_skip, relu_mask)
    monkeypatch.setattr(_CutlassUnits, "_max_pool2x2_backward", staticmethod(plain), raising=False)
    monkeypatch.setattr(_CutlassUnits, "_max_pool2x2_backward_sum", staticmethod(summing),
                        raising=False)
    return calls


@pytest.mark.parametrize("path", ["cutlass", "hand"])
@pytest.mark.parametrize("crop", [None, (7, 5)])
@pytest.mark.parametrize("use", ["both", "skip", "pooled"])
def test_conv_pool_sums_the_skip_gradient_in_the_pool_pass(path, crop, use, monkeypatch):
    """conv3x3_relu_pool's backward on both paths of the cuda backend: (skip, pooled) of y -- the
    CUTLASS fprop's y and the pool kernel's map, or the hand-written fused kernel's -- through
    cuda_ops._ConvSkipAndPool, whose backward is the pool backward kernel with the skip's
    gradient added in the same pass, a cropped skip's where the crop lies: neither an autograd
    sum of y's two gradients nor a zero-padded copy of the crop's, whichever outputs are used.
    The CUTLASS path is reached with its units stood in for by the CPU conv (cutlass_sm90.wanted
    forced); float64 against autograd's own composition."""
    from unet_fast.backends import cuda_ops
    if path == "cutlass":
        _stand_in_cutlass(monkeypatch)
        pool_calls = _spy_pool_backward(monkeypatch)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 13, 11, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    w = (0.3 * torch.randn(6, 4, 3, 3, dtype=torch.float64)).requires_grad_()
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    sh, sw = crop or (0, 0)

    def grads(skip, pooled, gs, gp):   # (the outputs' gradients handed over as they are)
        used = [(skip, gs)] * (use != "pooled") + [(pooled, gp)] * (use != "skip")
        return torch.autograd.grad([o for o, _ in used], (x, w, b), [g for _, g in used])

    skip, pooled = cuda_ops.conv3x3_relu_pool(x, w, b, 0, False, sh, sw)
    assert skip.shape[-2:] == (crop or (11, 9)) and pooled.shape[-2:] == (5, 4)
    gs, gp = torch.randn_like(skip), torch.randn_like(pooled)
    with _YSized(2 * 6 * 11 * 9) as made:
        ours = grads(skip, pooled, gs, gp)
    assert made.calls == [], made.calls
    if path == "cutlass":
        # the pool pass masks y's gradient (ReLU) and sums the bias gradient; the conv's backward
        # units are told so: no dReLU pass (grad_masked), no bias gradient of their own
        assert _CutlassUnits.flags == [(False, True)], _CutlassUnits.flags
        assert pool_calls == [("sum", True)], pool_calls
        assert _CutlassUnits.backward_calls == [([True, True, False], False, True)], \
            _CutlassUnits.backward_calls
    y = torch.relu(F.conv2d(x, w, b))
    ref_skip = center_crop(y, *crop) if crop else y
    torch.testing.assert_close(skip, ref_skip, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pooled, F.max_pool2d(y, 2, 2), rtol=1e-12, atol=1e-12)
    ref = grads(ref_skip, F.max_pool2d(y, 2, 2), gs, gp)
    for name, a, r in zip(("dx", "dw", "db"), ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("relu_input", [False, True])
@pytest.mark.parametrize("with_skip", [False, True], ids=["conv_transpose2x2", "up_concat"])
def test_cutlass_path_up_conv_runs_on_the_units(with_skip, relu_input, monkeypatch):
    """conv_transpose2x2 / up_concat on the CUTLASS path (cuda_ops._UpConvSm90): the output from
    the up-conv's forward unit (with the skip: the concat buffer), dx from its dgrad unit (masked
    by (x > 0) there when relu_input), the weight and bias gradients from its wgrad unit, both
    reading the concat gradient's upper channels in place; the skip's gradient a view. The units
    stood in for by float64 PyTorch on the CPU (cutlass_sm90.wanted_up forced); output and
    gradients against autograd's."""
    from unet_fast.backends import cuda_ops, cutlass_sm90
    calls = []

    class Units(_CutlassUnits):
        @staticmethod
        def _up_concat_sm90(skip, x, w, b):
            calls.append(("fprop", None if skip is None else tuple(skip.shape)))
            y = F.conv_transpose2d(x, w, b, stride=2)
            return y if skip is None else torch.cat([center_crop(skip, *y.shape[-2:]), y], 1)

        @staticmethod
        def _conv_transpose2x2_dgrad_sm90(g, x, w, relu_input_):
            calls.append(("dgrad", tuple(g.shape),
                          g.is_contiguous(memory_format=torch.channels_last)))
            xr = x.detach().requires_grad_()
            with torch.enable_grad():
                (dx,) = torch.autograd.grad(F.conv_transpose2d(xr, w, stride=2), xr, g)
            return dx * (x > 0) if relu_input_ else dx

        @staticmethod
        def _conv_transpose2x2_wgrad_sm90(g, x, w, output_mask):
            calls.append(("wgrad", tuple(g.shape),
                          g.is_contiguous(memory_format=torch.channels_last), list(output_mask)))
            wr = w.detach().requires_grad_()
            with torch.enable_grad():
                (dw,) = torch.autograd.grad(F.conv_transpose2d(x, wr, stride=2), wr, g)
            return dw, g.sum((0, 2, 3))

    monkeypatch.setattr(cuda_ops, "_ops", Units())
    monkeypatch.setattr(cutlass_sm90, "wanted_up", lambda x, w, skip=None: True)
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(8, 4, 2, 2, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(2, 3, 12, 13, dtype=torch.float64, requires_grad=True)
    inputs = (skip, x, w, b) if with_skip else (x, w, b)
    out = (cuda_ops.up_concat(skip, x, w, b, relu_input) if with_skip
           else cuda_ops.conv_transpose2x2(x, w, b, relu_input))
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, inputs, g)
    dense = not with_skip   # (a channel slice of the concat's is not)
    assert calls == [("fprop", (2, 3, 12, 13) if with_skip else None),
                     ("dgrad", (2, 4, 10, 12), dense), ("wgrad", (2, 4, 10, 12), dense, [True, True])]
    xm = torch.relu(x) + (x.detach() - torch.relu(x).detach()) if relu_input else x
    ref_up = F.conv_transpose2d(xm, w, b, stride=2)
    ref = torch.cat([center_crop(skip, 10, 12), ref_up], 1) if with_skip else ref_up
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(ours, torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["cutlass", "hand"])
@pytest.mark.parametrize("crop", [(0, 0), (7, 5)])
def test_conv_pool_skip_and_pool_compile_fullgraph(path, crop, monkeypatch):
    """torch.compile(fullgraph=True) traces cuda_ops._ConvSkipAndPool on both of its convs (the
    CUTLASS units stood in for by the CPU conv; its skip is a view of y, or y itself) and gives
    eager's gradients."""
    from unet_fast.backends import cuda_ops
    if path == "cutlass":
        _stand_in_cutlass(monkeypatch, quiet=True)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 13, 11, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    w = (0.3 * torch.randn(6, 4, 3, 3, dtype=torch.float64)).requires_grad_()
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    inputs = (x, w, b)

    def f(*t):
        skip, pooled = cuda_ops._ConvSkipAndPool.apply(*t, 0, *crop, False, path == "cutlass")
        return skip.square().sum() + 3 * pooled.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for a, r in zip(torch.autograd.grad(compiled(*inputs), inputs),
                    torch.autograd.grad(f(*inputs), inputs)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_wgrad_with_frozen_weight_and_bias_only():
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    gb = torch.autograd.grad(uf.ops.conv3x3_relu(x, w, b, 1, backend="cuda").sum(), b)[0]
    bb = b.detach().clone().requires_grad_()
    torch.testing.assert_close(gb, torch.autograd.grad(F.relu(F.conv2d(x, w, bb, padding=1)).sum(), bb)[0])


# ---------------------------------------------------------------- alignment edge cases
# The GPU kernels read 16-byte words only where the address really is 16-byte aligned; on the CPU
# these run the same decisions (vectorized or element-wise loaders) and must give the same values.
_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("crop", [(9, 10), (5, 7), (8, 1), (1, 10)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("device", _DEVICES)
def test_pool_backward_adds_a_cropped_skip_gradient(device, layout, crop, dtype):
    """_max_pool2x2_backward(grad, x, grad_skip) with grad_skip the gradient of x's center crop
    (the valid U-Net's skip): the C++ CPU kernel (and on a GPU the CUDA kernels: 16-byte vectors
    in channels_last, strided otherwise) adds it where the crop lies (odd offsets, odd
    last row and column of x included) and routes grad to each window's argmax, one pass; the
    result rounds once, like the reference's sum."""
    torch.manual_seed(0)
    c = 8   # (16 bytes of bf16: the CUDA vector path in channels_last)
    x, g, base = (to_layout(torch.randn(2, c, *hw, dtype=torch.float64).to(device, dtype), layout)
                  for hw in ((9, 10), (4, 5), crop))
    ours = _ops._max_pool2x2_backward(g, x, base)
    xr = x.double().requires_grad_()
    (ref,) = torch.autograd.grad(F.max_pool2d(xr, 2), xr, g.double())
    center_crop(ref, *crop).add_(base.double())
    torch.testing.assert_close(ours.cpu(), ref.to(dtype).cpu(), rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("crop", [None, (9, 10), (5, 7)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", _DEVICES)
def test_pool_backward_applies_the_relu_mask(device, layout, crop, dtype):
    """_max_pool2x2_backward(..., relu_mask=True), x a ReLU output (the encoder's conv before its
    pool, on the CUTLASS path): the pool's and the skip's gradients summed and masked in the same
    pass exactly as threshold_backward(sum, x, 0) would in one of its own: zero where x <= 0 (0 and
    -0 included), a NaN x passing the gradient; the odd last row and column (no window) masked
    too."""
    torch.manual_seed(0)
    c = 8
    x = torch.relu(torch.randn(2, c, 9, 10, dtype=torch.float64))
    x[0, 0, 0, :4] = torch.tensor([-0.0, float("nan"), -1.0, 2.0], dtype=torch.float64)
    x[1, 2, 8, 9] = float("nan")   # (the last row and column: outside every window)
    x[1, 3, 8, :] = 0.0
    x, g = (to_layout(t.to(device, dtype), layout)
            for t in (x, torch.randn(2, c, 4, 5, dtype=torch.float64)))
    base = None if crop is None else to_layout(torch.randn(2, c, *crop, dtype=torch.float64)
                                               .to(device, dtype), layout)
    ours = _ops._max_pool2x2_backward(g, x, base, True)
    summed = _ops._max_pool2x2_backward(g, x, base)   # (the unmasked pass: tested above)
    ref = torch.ops.aten.threshold_backward(summed, x, 0)
    torch.testing.assert_close(ours.cpu(), ref.cpu(), rtol=0, atol=0, equal_nan=True)
    assert (ours[x <= 0] == 0).all() and ours[x > 0].ne(0).any()
    nan = torch.isnan(x)
    assert torch.equal(ours[nan], summed[nan])   # a NaN x passes the gradient


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c,crop", [(8, None), (64, (5, 7)), (24, (9, 10))])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", _DEVICES)
def test_pool_backward_sum_is_the_bias_gradient(device, dtype, c, crop, layout):
    """_max_pool2x2_backward_sum: the plain (masked) pool backward's grad_x, exactly, and its sum
    over (n, h, w) accumulated in fp32 (float64 for float64; the C++ CPU kernel, and on a GPU the
    CUDA kernel's CTA sums where its 16-byte runs tile a CTA, else a sum after it) in x's dtype:
    the bias gradient of the conv whose ReLU output x is. Against the float64 sum of grad_x: the
    accumulation's error (1e-6 of the absolute sum; 1e-12 in float64) and one rounding to x's
    dtype (bf16: its unit roundoff, 2^-8 of the sum)."""
    torch.manual_seed(c)
    x, g = (to_layout(t.to(device, dtype), layout) for t in (
        torch.relu(torch.randn(2, c, 9, 10, dtype=torch.float64)),
        torch.randn(2, c, 4, 5, dtype=torch.float64)))
    base = None if crop is None else to_layout(torch.randn(2, c, *crop, dtype=torch.float64)
                                               .to(device, dtype), layout)
    gx, db = _ops._max_pool2x2_backward_sum(g, x, base, True)
    plain = _ops._max_pool2x2_backward(g, x, base, True)
    assert torch.equal(gx, plain) and gx.stride() == plain.stride()
    assert db.shape == (c,) and db.dtype == dtype and db.device == x.device
    ref = gx.double().sum((0, 2, 3))
    atol = (1e-12 if dtype == torch.float64 else 1e-6) * gx.double().abs().sum((0, 2, 3))
    rtol = 2.0 ** -8 if dtype == torch.bfloat16 else 0.0
    err = (db.double() - ref).abs()
    assert (err <= (1 + rtol) * atol + rtol * ref.abs()).all(), err.max()


@pytest.mark.parametrize("needs", ["weight_bias", "weight", "bias", "input"])
def test_cutlass_pooled_conv_takes_its_bias_gradient_from_the_pool_pass(needs, monkeypatch):
    """The CUTLASS path's pooled conv (cuda_ops._ConvSkipAndPool with its units stood in for by
    the CPU conv): the bias gradient comes from the pool pass that forms y's gradient
    (_max_pool2x2_backward_sum) when the bias needs one, never from the backward units (told
    output_mask[2] False), which run only for dx or dW; the gradients asked for equal autograd's
    through relu, conv2d and max_pool2d (float64)."""
    from unet_fast.backends import cuda_ops
    _stand_in_cutlass(monkeypatch)
    pool_calls = _spy_pool_backward(monkeypatch)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 12, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = 0.3 * torch.randn(6, 4, 3, 3, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    wanted = {"weight_bias": (w, b), "weight": (w,), "bias": (b,), "input": (x,)}[needs]
    for t in wanted:
        t.requires_grad_()
    skip, pooled = cuda_ops.conv3x3_relu_pool(x, w, b, 0, False, 7, 5)
    gs, gp = torch.randn_like(skip), torch.randn_like(pooled)
    ours = torch.autograd.grad((skip, pooled), wanted, (gs, gp))
    y = torch.relu(F.conv2d(x, w, b))
    ref = torch.autograd.grad((center_crop(y, 7, 5), F.max_pool2d(y, 2, 2)), wanted, (gs, gp))
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    assert pool_calls == [("sum" if b.requires_grad else "plain", True)], pool_calls
    units = {"weight_bias": [[False, True, False]], "weight": [[False, True, False]], "bias": [],
             "input": [[True, False, False]]}[needs]
    assert [m for m, _, _ in _CutlassUnits.backward_calls] == units, _CutlassUnits.backward_calls


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", ["conv1x1", "conv3x3", "conv_transpose2x2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", _DEVICES)
def test_backward_applies_the_relu_mask(device, dtype, op, layout):
    """The input gradient with relu_input=True, x a ReLU output (the head on the last conv's y;
    every 3x3 conv but the first; the decoder's up-convs): dx is the plain dx masked exactly as
    threshold_backward(dx, x, 0) would (zero where x <= 0, signed zeros included, a NaN x
    passing the gradient), by the dgrad's epilogue where dx has x's strides and by a pass after
    it otherwise (the strided layouts); dW and db unchanged."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 16, 5, 7, dtype=torch.float64))
    x[0, 0, 0, :4] = torch.tensor([-0.0, float("nan"), -1.0, 2.0], dtype=torch.float64)
    x = to_layout(x.to(device, dtype), layout)
    mask = [True, True, True]
    shapes = {"conv1x1": ((3, 16, 1, 1), (2, 3, 5, 7)), "conv3x3": ((3, 16, 3, 3), (2, 3, 5, 7)),
              "conv_transpose2x2": ((16, 3, 2, 2), (2, 3, 10, 14))}[op]
    w = (torch.randn(shapes[0], dtype=torch.float64) / 4).to(device, dtype)
    g = to_layout(torch.randn(shapes[1], dtype=torch.float64).to(device, dtype), layout)
    call = {"conv1x1": lambda relu: _ops._conv1x1_backward(g, x, w, mask, relu),
            # (padding 1: g has x's size; the gradient arrives masked: no y)
            "conv3x3": lambda relu: _ops._conv3x3_relu_backward(g, None, x, w, 1, mask, relu),
            "conv_transpose2x2": lambda relu: _ops._conv_transpose2x2_backward(g, x, w, mask, relu),
            }[op]
    plain = call(False)
    ours = call(True)
    ref = torch.ops.aten.threshold_backward(plain[0], x, 0)
    torch.testing.assert_close(ours[0].cpu(), ref.cpu(), rtol=0, atol=0, equal_nan=True)
    assert (ours[0][x <= 0] == 0).all() and ours[0][x > 0].ne(0).all()
    for a, b in zip(ours[1:], plain[1:]):   # (the NaN of x reaches dW)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_head_takes_its_relu_mask_from_the_dgrad_epilogue():
    """conv1x1 with relu_input on the cuda backend (the head, fused op conv3x3_relu_conv1x1):
    its backward is one _conv1x1_backward call told relu_input, no threshold_backward pass, and
    the gradients are autograd's through relu: float64 on the CPU kernels."""
    from unet_fast.backends import cuda_ops
    torch.manual_seed(0)
    y = torch.relu(torch.randn(2, 8, 6, 5, dtype=torch.float64)).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(2, 8, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 2, 6, 5, dtype=torch.float64)
    out = cuda_ops.conv1x1(y, w, b, True)
    with OpCounter([torch.ops.aten.threshold_backward]) as masks:
        ours = torch.autograd.grad(out, (y, w, b), g)
    assert masks.n == 0
    yr = y.detach().requires_grad_()
    ref_out = F.conv2d(torch.relu(yr), w, b)
    ref = torch.autograd.grad(ref_out, (yr, w, b), g)
    assert (ref[0][y <= 0] == 0).all() and (y <= 0).any()   # (the mask matters here)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for name, a, r in zip(("dx", "dw", "db"), ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [(2, 8, 16, 9, 12, 0), (1, 5, 7, 6, 7, 1), (2, 3, 16, 10, 9, 1)],
                         ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", _DEVICES)
def test_conv3x3_backward_takes_a_masked_gradient(device, dtype, case, layout):
    """_conv3x3_relu_backward without y: grad is dy * (y > 0) already (the model's grad_masked),
    read as it is (csrc/igemm_conv3x3.h's Premasked problems: 16-byte runs, element-wise runs for
    odd channels, the first layer's narrow weight-gradient tile); every gradient equals that of
    the call that masks with y, y's NaN and signed zero included, and the bias gradient alone (a
    frozen weight) too. Exactly on the CPU kernels (the same values reach the same sums); on a GPU
    the weight gradient's split-K atomics may sum in another order, and the bias alone is an aten
    sum over another layout (masked_fill's output is NCHW) either way."""
    n, c, k, h, w, pad = case
    torch.manual_seed(0)
    oh, ow = h - 2 + 2 * pad, w - 2 + 2 * pad
    x = to_layout(torch.randn(n, c, h, w, dtype=torch.float64).to(device, dtype), layout)
    wt = torch.randn(k, c, 3, 3, dtype=torch.float64).to(device, dtype)
    y = torch.relu(torch.randn(n, k, oh, ow, dtype=torch.float64))
    y[0, 0, 0, :3] = torch.tensor([-0.0, float("nan"), 2.0], dtype=torch.float64)
    y = to_layout(y.to(device, dtype), layout)
    g = to_layout(torch.randn(n, k, oh, ow, dtype=torch.float64).to(device, dtype), layout)
    gm = torch.ops.aten.threshold_backward(g, y, 0)
    assert (gm == 0).sum() > (g == 0).sum()   # (the mask matters here)
    for mask in ([True, True, True], [True, False, False], [False, True, True], [False, False, True]):
        ref = _ops._conv3x3_relu_backward(g, y, x, wt, pad, mask)
        ours = _ops._conv3x3_relu_backward(gm, None, x, wt, pad, mask)
        exact = dict(rtol=0, atol=0)
        # (dW, db: the dtype's default tolerance where they are a sum in another order)
        sums = exact if device == "cpu" and mask[1] else {}
        for name, a, r in zip(("dx", "dw", "db"), ours, ref):
            torch.testing.assert_close(a, r, equal_nan=True, msg=f"{name} {mask}",
                                       **(exact if name == "dx" else sums))


class _Calls:   # torch.ops.unet_fast, each call recorded as (op name, args)
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        op = getattr(_ops, name)

        def call(*args):
            self.calls.append((name, args))
            return op(*args)
        return call

    def args_of(self, name):
        return [a for n, a in self.calls if n == name]


@pytest.mark.parametrize("pool", [False, True], ids=["conv3x3_relu", "conv3x3_relu_pool"])
def test_hand_written_path_reads_a_masked_gradient_without_y(pool, monkeypatch):
    """On the hand-written kernels the gradient of a conv's y reaches its gradient kernels
    masked and without y: conv3x3_relu told grad_masked (the next layer's dgrad masked it), and
    conv3x3_relu_pool, whose pool backward pass (which reads y anyway) masks the sum of the
    skip's and the pooled map's gradients. float64 against autograd through relu."""
    from unet_fast.backends import cuda_ops
    spy = _Calls()
    monkeypatch.setattr(cuda_ops, "_ops", spy)
    torch.manual_seed(0)
    x = torch.randn(2, 8, 13, 11, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    w = (0.3 * torch.randn(16, 8, 3, 3, dtype=torch.float64)).requires_grad_()
    b = torch.randn(16, dtype=torch.float64, requires_grad=True)
    y_ref = torch.relu(F.conv2d(x, w, b))
    if pool:
        outs = cuda_ops.conv3x3_relu_pool(x, w, b, 0, False, 7, 5)
        refs = (center_crop(y_ref, 7, 5), F.max_pool2d(y_ref, 2, 2))
        gs = [torch.randn_like(o) for o in outs]
    else:
        outs = (cuda_ops.conv3x3_relu(x, w, b, 0, False, True),)
        refs = (y_ref,)
        # what the next layer's dgrad hands over: masked by (y > 0)
        gs = [torch.ops.aten.threshold_backward(torch.randn_like(y_ref), y_ref.detach(), 0)]
    ours = torch.autograd.grad(outs, (x, w, b), gs)
    ref = torch.autograd.grad(refs, (x, w, b), gs)
    (bwd,) = spy.args_of("_conv3x3_relu_backward")
    assert bwd[1] is None
    if pool:
        (pool_bwd,) = spy.args_of("_max_pool2x2_backward")
        assert pool_bwd[3] is True
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
    for name, a, r in zip(("dx", "dw", "db"), ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("op", ["conv3x3_relu", "conv3x3_relu-grad_masked", "conv3x3_relu_pool",
                                "conv_transpose2x2", "up_concat"])
def test_hand_written_path_masks_by_a_relu_input_in_the_dgrad(op):
    """The cuda backend's hand-written ops told relu_input (their input x is a ReLU output): dx
    comes back multiplied by (x > 0) from the dgrad kernels' epilogue, with no threshold_backward
    pass (x NHWC: the epilogue's layout), and every gradient equals autograd's through relu
    (float64 on the CPU kernels); the 3x3 conv told grad_masked as well, given a masked gradient."""
    from unet_fast.backends import cuda_ops
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 8, 9, 10, dtype=torch.float64)).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    skip = torch.randn(2, 5, 21, 23, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    xr = x.detach().requires_grad_()
    if op.startswith("conv3x3"):
        w = (0.3 * torch.randn(6, 8, 3, 3, dtype=torch.float64)).requires_grad_()
        inputs = (x, w, b)
        y_ref = torch.relu(F.conv2d(torch.relu(xr), w, b, padding=int(op != "conv3x3_relu_pool")))
        if op == "conv3x3_relu_pool":
            outs = cuda_ops.conv3x3_relu_pool(x, w, b, 0, True, 7, 5)
            refs = (center_crop(y_ref, 7, 5), F.max_pool2d(y_ref, 2, 2))
        else:
            outs = (cuda_ops.conv3x3_relu(x, w, b, 1, True, op.endswith("grad_masked")),)
            refs = (y_ref,)
        gs = [torch.randn_like(r) for r in refs]
        if op.endswith("grad_masked"):   # (what the next layer's dgrad hands over)
            gs = [torch.ops.aten.threshold_backward(gs[0], y_ref.detach(), 0)]
    else:
        w = torch.randn(8, 6, 2, 2, dtype=torch.float64, requires_grad=True)
        up_ref = F.conv_transpose2d(torch.relu(xr), w, b, stride=2)
        if op == "up_concat":
            inputs = (skip, x, w, b)
            outs = (cuda_ops.up_concat(skip, x, w, b, True),)
            refs = (torch.cat([center_crop(skip, 18, 20), up_ref], 1),)
        else:
            inputs = (x, w, b)
            outs = (cuda_ops.conv_transpose2x2(x, w, b, True),)
            refs = (up_ref,)
        gs = [torch.randn_like(refs[0])]
    with OpCounter([torch.ops.aten.threshold_backward]) as masks:
        ours = torch.autograd.grad(outs, inputs, gs)
    assert masks.n == 0
    ref = torch.autograd.grad(refs, tuple(xr if t is x else t for t in inputs), gs)
    dx_ref = ref[[t is x for t in inputs].index(True)]
    assert (dx_ref[x <= 0] == 0).all() and (x <= 0).any()   # (the mask matters here)
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
    for i, (a, r) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12, msg=str(i))


def _flat_view(t, offset, order):
    """t's values in a view `offset` elements into a flat buffer (a flat parameter store), laid out
    in memory in the dim order `order`: the weight re-layouts then return views, not copies."""
    flat = torch.zeros(t.numel() + offset, dtype=t.dtype, device=t.device)
    shape = [t.shape[d] for d in order]
    v = flat[offset:].view(shape).permute(*[order.index(d) for d in range(4)])
    v.copy_(t)
    return v


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("offset", [0, 1, 4])
def test_weight_views_at_any_storage_offset(device, offset):
    dtype = torch.float16
    x = torch.randn(2, 8, 9, 10, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    w3 = (torch.randn(16, 8, 3, 3, device=device) / 8).to(dtype)
    b = torch.randn(16, device=device).to(dtype)
    # (C_out, 3, 3, C_in) in memory: the forward's re-layout is a view; (C_in, 3, 3, C_out): dgrad's
    for order in ([0, 2, 3, 1], [1, 2, 3, 0]):
        wv = _flat_view(w3, offset, order).requires_grad_()
        wc = w3.clone().requires_grad_()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = uf.ops.conv3x3_relu(xa, wv, b, 1, backend="cuda")
        yb = uf.ops.conv3x3_relu(xb, wc, b, 1, backend="cuda")
        torch.testing.assert_close(ya, yb)
        g = torch.randn_like(ya)
        torch.testing.assert_close(torch.autograd.grad(ya, (xa, wv), g), torch.autograd.grad(yb, (xb, wc), g))
    w1 = (torch.randn(8, 8, 1, 1, device=device) / 8).to(dtype)  # the 1x1 re-layout is a reshape (view)
    torch.testing.assert_close(uf.ops.conv1x1(x, _flat_view(w1, offset, [0, 1, 2, 3]), None, backend="cuda"),
                               uf.ops.conv1x1(x, w1, None, backend="cuda"))


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("c0", [0, 4, 8])
def test_channel_slice_inputs(device, c0):
    """x a channel slice of a channels_last buffer: 16-byte aligned at c0 = 0, 8 (fp16), not at 4."""
    big = torch.randn(2, 24, 11, 12, device=device).half().contiguous(memory_format=torch.channels_last)
    x = big[:, c0:c0 + 8]
    w = (torch.randn(16, 8, 3, 3, device=device) / 8).half()
    ours = uf.ops.conv3x3_relu(x, w, None, 0, backend="cuda")
    ref = uf.ops.conv3x3_relu(x.contiguous(memory_format=torch.channels_last), w, None, 0, backend="cuda")
    torch.testing.assert_close(ours, ref)
    wt = (torch.randn(8, 16, 2, 2, device=device) / 8).half()
    torch.testing.assert_close(uf.ops.conv_transpose2x2(x, wt, None, backend="cuda"),
                               uf.ops.conv_transpose2x2(x.contiguous(), wt, None, backend="cuda"))


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("dtype,cs", [(torch.float16, 16), (torch.float16, 12), (torch.float32, 8)])
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_up_concat_skip_copy(device, dtype, cs, fmt):
    """The skip lands in the lower slice exactly (the 16-byte pass on the GPU when channels_last
    with 16-byte channel runs, the strided kernel otherwise); the upper slice is the transposed conv."""
    skip = torch.randn(3, cs, 21, 19, device=device).to(dtype).contiguous(memory_format=fmt)
    x = torch.randn(3, 16, 8, 7, device=device).to(dtype).contiguous(memory_format=fmt)
    w = (torch.randn(16, 8, 2, 2, device=device) / 4).to(dtype)
    b = torch.randn(8, device=device).to(dtype)
    out = uf.ops.up_concat(skip, x, w, b, backend="cuda")
    assert out.shape == (3, cs + 8, 16, 14)
    assert out.is_contiguous(memory_format=fmt)
    assert torch.equal(out[:, :cs], center_crop(skip, 16, 14))
    torch.testing.assert_close(out[:, cs:], uf.ops.conv_transpose2x2(x, w, b, backend="cuda"))


# ---------------------------------------------------------------- the model
@pytest.mark.parametrize("padding,depth,size,in_ch", [("valid", 2, 44, 1), ("same", 2, 16, 3),
                                                       ("valid", 3, 92, 3), ("same", 3, 24, 1)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_unet_matches_reference(padding, depth, size, in_ch, layout):
    ref = uf.reference.UNet(in_channels=in_ch, num_classes=2, base_channels=4, depth=depth,
                            padding=padding).double()
    model = uf.UNet(in_channels=in_ch, num_classes=2, base_channels=4, depth=depth, padding=padding,
                    backend="cuda").double()
    model.load_state_dict(ref.state_dict())
    x = to_layout(torch.randn(2, in_ch, size, size + 8, dtype=torch.float64), layout)
    out = model(x)
    out_ref = ref(x)
    assert set(model.backend_report().values()) == {"cuda"}
    assert out.shape == out_ref.shape
    if layout == "channels_last" and in_ch > 1:  # with one channel, NCHW and NHWC are the same tensor
        assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    go = torch.randn_like(out_ref)
    g = torch.autograd.grad((out * go).sum(), list(model.parameters()))
    g_ref = torch.autograd.grad((out_ref * go).sum(), list(ref.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_unet_float32_matches_float64_reference():
    ref = uf.reference.UNet(in_channels=1, num_classes=2, base_channels=8, depth=2, padding="valid").double()
    model = uf.UNet(in_channels=1, num_classes=2, base_channels=8, depth=2, padding="valid", backend="cuda")
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 44, 44, dtype=torch.float64)
    out = model(x.float())
    ref.load_state_dict({k: v.float().double() for k, v in ref.state_dict().items()})
    out_ref = ref(x.float().double())
    assert_float32_close("UNet output", out, out_ref)


# ---------------------------------------------------------------- opcheck
def _opcheck_cases():
    x = torch.randn(2, 8, 6, 7)
    xl = x.contiguous(memory_format=torch.channels_last)
    w3 = torch.randn(4, 8, 3, 3)
    wt = torch.randn(8, 4, 2, 2)
    w1 = torch.randn(3, 8, 1, 1)
    b4, b3 = torch.randn(4), torch.randn(3)
    y = torch.relu(torch.randn(2, 4, 6, 7))
    skip = torch.randn(2, 5, 15, 16)
    rg = lambda *ts: [t.clone().requires_grad_() for t in ts]  # noqa: E731
    return [
        ("conv3x3_relu", (*rg(x, w3, b4), 1)),
        ("conv3x3_relu", (*rg(xl, w3), None, 0)),
        ("conv3x3_relu_pool", (*rg(xl, w3, b4), 1)),
        ("_conv3x3_relu_backward", (torch.randn(2, 4, 6, 7), y, x, w3, 1, [True, True, True])),
        ("_conv3x3_relu_backward", (torch.randn(2, 4, 6, 7), y, x, w3, 1, [False, True, False])),
        ("_conv3x3_relu_backward", (torch.randn(2, 4, 6, 7), None, xl, w3, 1, [True, True, True])),
        ("_conv3x3_relu_backward", (torch.randn(2, 4, 6, 7), y, xl, w3, 1, [True, True, True], True)),
        ("max_pool2x2", tuple(rg(xl))),
        ("_max_pool2x2_backward", (torch.randn(2, 8, 3, 3), x, torch.randn(2, 8, 6, 7))),
        ("_max_pool2x2_backward", (torch.randn(2, 8, 3, 3), xl, None)),
        ("_max_pool2x2_backward", (torch.randn(2, 8, 3, 3), xl, torch.randn(2, 8, 5, 4), True)),
        ("_max_pool2x2_backward_sum", (torch.randn(2, 8, 3, 3), xl, torch.randn(2, 8, 5, 4), True)),
        ("_max_pool2x2_backward_sum", (torch.randn(2, 8, 3, 3), x, None)),
        ("_conv1x1_backward", (torch.randn(2, 3, 6, 7), xl, torch.randn(3, 8, 1, 1), [True, True, True],
                               True)),
        ("crop_concat", tuple(rg(skip, torch.randn(2, 3, 12, 14)))),
        ("crop_concat", tuple(rg(torch.randn(2, 5, 12, 14), torch.randn(2, 3, 12, 14)))),  # uncropped
        ("_crop_concat_backward", (torch.randn(2, 8, 12, 14), 5, 15, 16)),
        ("_crop_concat_backward", (torch.randn(2, 8, 12, 14).contiguous(memory_format=torch.channels_last),
                                   5, 15, 16)),
        ("conv_transpose2x2", (*rg(xl, wt, b4),)),
        ("_conv_transpose2x2_backward", (torch.randn(2, 4, 12, 14), x, wt, [True, True, True])),
        ("_conv_transpose2x2_backward", (torch.randn(2, 4, 12, 14), xl, wt, [True, True, False],
                                         True)),
        ("up_concat", (*rg(skip, x, wt, b4),)),
        ("up_concat", (*rg(skip, xl, wt), None)),
        ("conv1x1", (*rg(x, w1, b3),)),
        ("_conv1x1_backward", (torch.randn(2, 3, 6, 7), xl, w1, [True, False, True])),
    ]


@pytest.mark.parametrize("case", range(len(_opcheck_cases())),
                         ids=[f"{i}-{name}" for i, (name, _) in enumerate(_opcheck_cases())])
def test_opcheck(case):
    name, args = _opcheck_cases()[case]
    torch.library.opcheck(getattr(_ops, name).default, args)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_inductor_training_step(dynamic):
    """Inductor checks every custom op's real output strides against its fake kernel's: a whole
    training step (NCHW caller, 3 channels, so the model converts to NHWC and back) must agree."""
    torch.manual_seed(0)
    model = uf.UNet(in_channels=3, num_classes=2, base_channels=4, depth=2, padding="same", backend="cuda")
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    y = compiled(x)
    y.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    y_eager = model(x)
    y_eager.square().sum().backward()
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-4, atol=1e-5, msg=k)


def test_torch_compile_fullgraph():
    model = uf.UNet(in_channels=1, num_classes=2, base_channels=4, depth=2, padding="same", backend="cuda")
    x = torch.randn(1, 1, 16, 16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))


# ---------------------------------------------------------------- bad input (C++ checks)
def test_torch_check_messages_name_the_argument():
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(RuntimeError, match="weight must have shape \\(C_out, 3, 3, 3\\)"):
        _ops.conv3x3_relu(x, torch.randn(4, 2, 3, 3), None, 0)
    with pytest.raises(RuntimeError, match="bias must have shape \\(4,\\)"):
        _ops.conv3x3_relu(x, w, torch.randn(5), 0)
    with pytest.raises(RuntimeError, match="padding must be 0"):
        _ops.conv3x3_relu(x, w, None, 2)
    with pytest.raises(RuntimeError, match="x must be a 4-D tensor"):
        _ops.conv3x3_relu(x[0], w, None, 0)
    with pytest.raises(RuntimeError, match="weight is Half but x is Float|x is Float but weight is Half"):
        _ops.conv3x3_relu(x, w.half(), None, 0)
    with pytest.raises(RuntimeError, match="x must be float32"):
        _ops.conv1x1(x.int(), torch.randn(2, 3, 1, 1).int(), None)
    with pytest.raises(RuntimeError, match="grad must have shape \\[2, 4, 6, 6\\]"):
        _ops._conv3x3_relu_backward(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), x, w, 0,
                                    [True, True, True])
    with pytest.raises(RuntimeError, match="weight must have shape \\(3, C_out, 2, 2\\)"):
        _ops.conv_transpose2x2(x, torch.randn(4, 3, 2, 2), None)
    with pytest.raises(RuntimeError, match="skip \\(8x8\\) must be at least as large"):
        _ops.up_concat(torch.randn(2, 4, 8, 8), x, torch.randn(3, 2, 2, 2), None)
    with pytest.raises(RuntimeError, match="x is 1x5; 2x2 max-pooling"):
        _ops.max_pool2x2(torch.randn(1, 2, 1, 5))
    for bad in ((2, 3, 9, 8), (2, 4, 8, 8), (1, 3, 8, 8)):   # larger than x; other C or N
        with pytest.raises(RuntimeError, match="grad_skip must have x's shape .* or be the "
                                               "gradient of its center crop"):
            _ops._max_pool2x2_backward(torch.randn(2, 3, 4, 4), x, torch.randn(*bad))



def test_crop_concat_torch_check_messages_name_arguments():
    with pytest.raises(RuntimeError, match="skip .* must be at least as large as up"):
        torch.ops.unet_fast.crop_concat(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 3, 3))
    with pytest.raises(RuntimeError, match="skip is .* but up is"):
        torch.ops.unet_fast.crop_concat(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3).double())

# ---------------------------------------------------------------- GPU parity (skipped without one)
GPU_CASES = [  # (n, cin, cout, h, w, padding): odd ones on the generic path, U-Net-like on the fast one
    (3, 3, 5, 17, 23, 1),
    (2, 1, 64, 68, 60, 0),
    (2, 64, 64, 36, 44, 0),
    (1, 128, 64, 30, 30, 1),
    (2, 17, 40, 13, 11, 1),
]
GPU_OPS = ([("conv3x3_relu",) + c for c in GPU_CASES] + [("conv3x3_relu_pool",) + c for c in GPU_CASES]
           + [(o, 2, 64, 32, 17, 18, 0) for o in ("conv_transpose2x2", "up_concat", "conv1x1")]
           + [(o, 3, 5, 3, 7, 6, 0) for o in ("conv_transpose2x2", "up_concat", "conv1x1")]
           + [("conv1x1", 2, 64, 2, 40, 30, 0)]
           + [("max_pool2x2", 2, 64, 64, 34, 30, 0), ("max_pool2x2", 3, 5, 5, 13, 11, 0),
              ("crop_concat", 2, 64, 64, 24, 24, 0), ("crop_concat", 3, 5, 3, 13, 11, 0)])


@requires_cuda
@pytest.mark.parametrize("dtype,tf32", [(torch.float32, False), (torch.float32, True),
                                        (torch.float16, True), (torch.bfloat16, True)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("op,n,cin,cout,h,w,padding", GPU_OPS)
def test_gpu_parity(op, n, cin, cout, h, w, padding, dtype, tf32, layout):
    check(op, op_args(op, n, cin, cout, h, w, padding, layout, dtype, "cuda"), backend="cuda", tf32=tf32)


@requires_cuda
@pytest.mark.parametrize("dtype,tf32", [(torch.float32, False), (torch.float32, True),
                                        (torch.float16, True), (torch.bfloat16, True)])
@pytest.mark.parametrize("padding", [0, 1])
def test_gpu_one_channel_input_in_channels_last_strides(padding, dtype, tf32):
    """The first layer as the model runs it on grey images: x (N, 1, H, W) with stride(1) == 1
    (op_args' layouts keep NCHW strides for one channel), so y and its gradient are channels_last
    and csrc/cuda/conv3x3_thin.cuh's forward and weight gradient run (the emulator's twin test:
    test_cuda_emulated.py::test_one_channel_input_in_channels_last_strides)."""
    x, w, b = op_args("conv3x3_relu", 2, 1, 64, 68, 60, padding, "nchw", dtype, "cuda")[:3]
    n, _, h, wd = x.shape
    x = torch.empty_strided(x.shape, (h * wd, 1, wd, 1), dtype=dtype, device="cuda").copy_(x)
    got = check("conv3x3_relu", (x, w, b, padding), backend="cuda", tf32=tf32)
    assert got.outs[0].stride(1) == 1, got.outs[0].stride()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_gpu_unet_matches_reference(padding, dtype):
    ref = uf.reference.UNet(in_channels=1, num_classes=2, base_channels=16, depth=3, padding=padding).cuda()
    model = uf.UNet(in_channels=1, num_classes=2, base_channels=16, depth=3, padding=padding,
                    backend="cuda").cuda()
    model.load_state_dict(ref.state_dict())
    size = 92 if padding == "valid" else 64
    x = torch.randn(2, 1, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    ref64 = uf.reference.UNet(in_channels=1, num_classes=2, base_channels=16, depth=3, padding=padding).cuda().double()
    ref64.load_state_dict(ref.state_dict())
    r = ref64(x.double())
    with allow_tf32(False), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out, theirs = model(x), ref(x)
    # the whole network: at most twice PyTorch's own error in the same precision
    assert_lowp_within(f"UNet output ({dtype})", out, theirs, r, eps=1e-5)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_crop_concat_cuda_matches_reference(dtype, layout):
    for cs, cu in ((64, 64), (5, 3)):  # vectorized and strided paths
        skip, up = make((2, cs, 31, 29), layout, dtype, "cuda"), make((2, cu, 20, 18), layout, dtype, "cuda")
        check("crop_concat", [skip, up], backend="cuda")


@requires_cuda
def test_gpu_opcheck():
    for name, args in _opcheck_cases():
        args = tuple(a.cuda().detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                     for a in args)
        torch.library.opcheck(getattr(_ops, name).default, args)


@requires_cuda
def test_gpu_float64_is_backend_unavailable():
    x = torch.randn(1, 2, 8, 8, device="cuda", dtype=torch.float64)
    with pytest.raises(uf.BackendUnavailable, match="float64"):
        uf.ops.conv3x3_relu(x, torch.randn(3, 2, 3, 3, device="cuda", dtype=torch.float64), backend="cuda")
