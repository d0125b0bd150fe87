"""The `cuda` backend (the extension unet_fast._C): every op, forward and every gradient.

On the CPU these run the C++ CPU kernels, which share the CUDA kernels' implicit-GEMM problem
descriptions (csrc/igemm_problems.h): index arithmetic, 16-byte run loaders, epilogues. The oracle
is PyTorch in float64. Tolerances follow the dtype (DESIGN.md section 4):
- float32 kernels vs float64 reference: 1e-5 relative to the output's scale (our CPU kernels
  accumulate in double, so their only error is the final float32 rounding);
- float64: torch.autograd.gradcheck;
- pooling and concat: exact;
- float16/bfloat16 (and the GPU tests): |ours - ref64| <= 2 * |torch_lowp - ref64| + eps.
The GPU parity tests at the end are skipped without a GPU (they run in the GPU suite).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import unet_fast as uf
from unet_fast.backends import cuda_backend

from conftest import requires_cuda

pytestmark = pytest.mark.skipif(uf.backends.available()["cuda"] is not None,
                                reason=f"cuda backend unavailable: {uf.backends.available()['cuda']}")

_ops = torch.ops.unet_fast if cuda_backend._LOAD_ERROR is None else None


# ---------------------------------------------------------------- references (float64 oracle)
def _center_crop(skip, h, w):
    top, left = (skip.shape[-2] - h) // 2, (skip.shape[-1] - w) // 2
    return skip[..., top:top + h, left:left + w]


REF = {
    "conv3x3_relu": lambda x, w, b, p: F.relu(F.conv2d(x, w, b, padding=p)),
    "conv3x3_relu_pool": lambda x, w, b, p: (F.relu(F.conv2d(x, w, b, padding=p)),
                                             F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=p)), 2, 2)),
    "max_pool2x2": lambda x: F.max_pool2d(x, 2, 2),
    "crop_concat": lambda s, u: torch.cat([_center_crop(s, *u.shape[-2:]), u], 1),
    "conv_transpose2x2": lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2),
    "up_concat": lambda s, x, w, b: torch.cat(
        [_center_crop(s, 2 * x.shape[-2], 2 * x.shape[-1]), F.conv_transpose2d(x, w, b, stride=2)], 1),
    "conv1x1": lambda x, w, b: F.conv2d(x, w, b),
}


def _layout(t, kind):
    """'nchw', 'nhwc' (channels_last) or 'strided' (a non-contiguous view of a larger tensor)."""
    if kind == "nhwc":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "strided":
        big = torch.zeros(t.shape[0], t.shape[1] + 2, t.shape[2], t.shape[3] * 2, dtype=t.dtype)
        big[:, 1:-1, :, ::2] = t
        v = big[:, 1:-1, :, ::2]
        assert not v.is_contiguous() and not v.is_contiguous(memory_format=torch.channels_last)
        return v
    return t.contiguous()


def _make_args(op, n, cin, cout, h, w, padding, dtype, layout):
    g = lambda *s: torch.randn(*s, dtype=torch.float64)  # noqa: E731
    x = _layout(g(n, cin, h, w), layout).to(dtype)
    if op in ("conv3x3_relu", "conv3x3_relu_pool"):
        return (x, (g(cout, cin, 3, 3) / (3 * cin ** 0.5)).to(dtype), g(cout).to(dtype), padding)
    if op == "max_pool2x2":
        return (x,)
    if op == "crop_concat":
        skip = _layout(g(n, cout, h + 3, w + 2), layout).to(dtype)
        return (skip, x)
    if op == "conv_transpose2x2":
        return (x, (g(cin, cout, 2, 2) / cin ** 0.5).to(dtype), g(cout).to(dtype))
    if op == "up_concat":
        skip = _layout(g(n, cout + 1, 2 * h + 3, 2 * w + 2), layout).to(dtype)
        return (skip, x, (g(cin, cout, 2, 2) / cin ** 0.5).to(dtype), g(cout).to(dtype))
    if op == "conv1x1":
        return (x, (g(cout, cin, 1, 1) / cin ** 0.5).to(dtype), g(cout).to(dtype))
    raise AssertionError(op)


def _run(op, args, backend):
    fn = getattr(uf.ops, op)
    return fn(*args, backend=backend)


def _outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _fwd_bwd(op, args, backend, grads_out):
    """Outputs and the gradients of every floating input, for fixed output gradients."""
    args = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    outs = _outputs(_run(op, args, backend) if backend else REF[op](*args))
    loss = sum((o * go.to(o.dtype)).sum() for o, go in zip(outs, grads_out))
    ins = [a for a in args if isinstance(a, torch.Tensor)]
    return outs, list(torch.autograd.grad(loss, ins))


def _close_f32(ours, ref, what):
    scale = ref.abs().max().item() or 1.0
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}")


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
             + [("conv1x1", 3, 4, 2, 13, 11, 0), ("up_concat", 1, 17, 1, 3, 5, 0)])


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("op,n,cin,cout,h,w,padding", OPS_CASES)
def test_op_float32_vs_float64(op, n, cin, cout, h, w, padding, layout):
    args64 = _make_args(op, n, cin, cout, h, w, padding, torch.float64, layout)
    args32 = [a.float() if isinstance(a, torch.Tensor) else a for a in args64]
    ref_in = [a.double() if isinstance(a, torch.Tensor) else a for a in args32]  # same values
    ref_outs = _outputs(REF[op](*ref_in))
    grads_out = [torch.randn_like(o).float().double() for o in ref_outs]  # exact in float32
    outs, grads = _fwd_bwd(op, args32, "cuda", grads_out)
    ref_outs, ref_grads = _fwd_bwd(op, ref_in, None, grads_out)
    exact = op in ("max_pool2x2", "crop_concat")
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert o.dtype == torch.float32 and o.shape == r.shape
        if exact:
            assert torch.equal(o.double(), r), f"output {i} differs"
        else:
            _close_f32(o, r, f"output {i}")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert g.shape == r.shape
        if exact:
            assert torch.equal(g.double(), r), f"grad {i} differs"
        else:
            _close_f32(g, r, f"grad of input {i}")


@pytest.mark.parametrize("op", list(REF))
def test_output_keeps_memory_format(op):
    for layout in ("nchw", "nhwc"):
        args = _make_args(op, 2, 8, 8, 6, 6, 1, torch.float32, layout)
        for o in _outputs(_run(op, args, "cuda")):
            if layout == "nhwc":
                assert o.is_contiguous(memory_format=torch.channels_last), layout
            else:
                assert o.is_contiguous(), layout


@pytest.mark.parametrize("op", list(REF))
def test_gradcheck_float64(op):
    args = _make_args(op, 2, 3, 2, 5, 4, 1, torch.float64, "nchw")
    if op == "conv3x3_relu_pool":
        args = _make_args(op, 2, 3, 2, 5, 6, 0, torch.float64, "nchw")
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]

    def fn(*a):
        return _run(op, a, "cuda")

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
    args64 = _make_args(op, 2, 16, 8, 9, 10, 1, torch.float64, "nhwc")
    lowp = [a.to(dtype) if isinstance(a, torch.Tensor) else a for a in args64]
    ref = _outputs(REF[op](*[a.double() if isinstance(a, torch.Tensor) else a for a in lowp]))
    ours = _outputs(_run(op, lowp, "cuda"))
    theirs = _outputs(REF[op](*lowp))
    for o, t, r in zip(ours, theirs, ref):
        assert o.dtype == dtype
        err, terr = (o.double() - r).abs().max().item(), (t.double() - r).abs().max().item()
        assert err <= 2 * terr + 1e-3 * r.abs().max().item(), (err, terr)


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
    assert torch.equal(out[:, :cs], _center_crop(skip, 16, 14))
    torch.testing.assert_close(out[:, cs:], uf.ops.conv_transpose2x2(x, w, b, backend="cuda"))


# ---------------------------------------------------------------- the model
@pytest.mark.parametrize("padding,depth,size,in_ch", [("valid", 2, 44, 1), ("same", 2, 16, 3),
                                                       ("valid", 3, 92, 3), ("same", 3, 24, 1)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_unet_matches_reference(padding, depth, size, in_ch, layout):
    ref = uf.reference.UNet(in_channels=in_ch, num_classes=2, base_channels=4, depth=depth,
                            padding=padding).double()
    model = uf.UNet(in_channels=in_ch, num_classes=2, base_channels=4, depth=depth, padding=padding,
                    backend="cuda").double()
    model.load_state_dict(ref.state_dict())
    x = _layout(torch.randn(2, in_ch, size, size + 8, dtype=torch.float64), layout)
    out = model(x)
    out_ref = ref(x)
    assert set(model.backend_report().values()) == {"cuda"}
    assert out.shape == out_ref.shape
    if layout == "nhwc" and in_ch > 1:  # with one channel, NCHW and NHWC are the same tensor
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
    _close_f32(out, out_ref, "UNet output")


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
        ("max_pool2x2", tuple(rg(xl))),
        ("_max_pool2x2_backward", (torch.randn(2, 8, 3, 3), x, torch.randn(2, 8, 6, 7))),
        ("_max_pool2x2_backward", (torch.randn(2, 8, 3, 3), xl, None)),
        ("crop_concat", tuple(rg(skip, torch.randn(2, 3, 12, 14)))),
        ("crop_concat", tuple(rg(torch.randn(2, 5, 12, 14), torch.randn(2, 3, 12, 14)))),  # uncropped
        ("_crop_concat_backward", (torch.randn(2, 8, 12, 14), 5, 15, 16)),
        ("_crop_concat_backward", (torch.randn(2, 8, 12, 14).contiguous(memory_format=torch.channels_last),
                                   5, 15, 16)),
        ("conv_transpose2x2", (*rg(xl, wt, b4),)),
        ("_conv_transpose2x2_backward", (torch.randn(2, 4, 12, 14), x, wt, [True, True, True])),
        ("up_concat", (*rg(skip, x, wt, b4),)),
        ("up_concat", (*rg(skip, xl, wt), None)),
        ("conv1x1", (*rg(x, w1, b3),)),
        ("_conv1x1_backward", (torch.randn(2, 3, 6, 7), xl, w1, [True, False, True])),
    ]


@pytest.mark.parametrize("case", range(len(_opcheck_cases())))
def test_opcheck(case):
    name, args = _opcheck_cases()[case]
    torch.library.opcheck(getattr(_ops, name).default, args)


# Every op of the extension's schema (csrc/unet_fast.cpp): the forward ops and their backwards.
EXTENSION_OPS = ("conv3x3_relu", "conv3x3_relu_pool", "_conv3x3_relu_backward", "max_pool2x2",
                 "_max_pool2x2_backward", "crop_concat", "_crop_concat_backward", "conv_transpose2x2",
                 "_conv_transpose2x2_backward", "up_concat", "conv1x1", "_conv1x1_backward")


def test_every_op_has_cpu_kernel_and_fake():
    for name in EXTENSION_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"unet_fast::{name}", "CPU"), name
    assert set(cuda_backend.cuda_ops.IMPLS) == set(uf._dispatch.OPS)


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
    with pytest.raises(RuntimeError, match="grad_skip must have x's shape"):
        _ops._max_pool2x2_backward(torch.randn(2, 3, 4, 4), x, torch.randn(2, 3, 7, 8))


def test_missing_extension_is_backend_unavailable(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_LOAD_ERROR", "the extension unet_fast._C is not built; build "
                        "it with `pip install --no-build-isolation -e .`")
    with pytest.raises(uf.BackendUnavailable, match="pip install"):
        uf.ops.conv3x3_relu(torch.randn(1, 1, 5, 5), torch.randn(2, 1, 3, 3), backend="cuda")
    assert uf.ops.conv3x3_relu(torch.randn(1, 1, 5, 5), torch.randn(2, 1, 3, 3)).shape == (1, 2, 3, 3)


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


def _round_tf32(t):
    """float32 -> the nearest TF32 value (ties away from zero, as cvt.rna.tf32.f32), as float32."""
    bits = t.float().contiguous().view(torch.int32)
    finite = torch.isfinite(t.float())
    rounded = ((bits + 0x1000) & -0x2000).view(torch.float32)
    return torch.where(finite, rounded, t.float()).view_as(t)


def tf32_errors(op, args, grads_out, ref, ref_g):
    """PyTorch-in-TF32's own error: the float64 result from TF32-rounded inputs (what a TF32
    tensor core multiplies) against the float64 reference, per output and per gradient."""
    rounded = [_round_tf32(a).double() if isinstance(a, torch.Tensor) else a for a in args]
    outs, grads = _fwd_bwd(op, rounded, None, [_round_tf32(g).double() for g in grads_out])
    return ([(o - r).abs().max().item() for o, r in zip(outs, ref)],
            [(g - r).abs().max().item() for g, r in zip(grads, ref_g)])


def check_parity(op, args64, dtype, tf32, run_ours):
    """Our outputs and input gradients, `run_ours(lowp_args, grads_out) -> (outs, grads)`, against
    the float64 oracle with the tolerances of the module docstring (TF32: 3e-4 of the scale, or
    twice TF32's own error where a long sum, like the weight gradient's over every pixel, makes
    that larger). PyTorch's own error is measured on the device of `args64`."""
    lowp = [a.to(dtype) if isinstance(a, torch.Tensor) else a for a in args64]
    ref_in = [a.double() if isinstance(a, torch.Tensor) else a for a in lowp]
    grads_out = [torch.randn_like(o) for o in _outputs(REF[op](*ref_in))]
    ours, ours_g = run_ours(lowp, grads_out)
    ref, ref_g = _fwd_bwd(op, ref_in, None, grads_out)
    theirs, theirs_g = _fwd_bwd(op, lowp, "torch", grads_out)
    exact = op in ("max_pool2x2", "crop_concat")
    if dtype == torch.float32 and tf32:
        tf32_err = dict(zip(("output", "grad"), tf32_errors(op, lowp, grads_out, ref, ref_g)))
    for what, a_s, r_s, t_s in (("output", ours, ref, theirs), ("grad", ours_g, ref_g, theirs_g)):
        for i, (a, r, t) in enumerate(zip(a_s, r_s, t_s)):
            assert a.dtype == dtype and a.shape == r.shape, (what, i, a.dtype, a.shape, r.shape)
            err = (a.double() - r).abs().max().item()
            scale = r.abs().max().item() or 1.0
            if exact:
                assert torch.equal(a, t), f"{what} {i} differs"
            elif dtype == torch.float32 and not tf32:
                assert err <= 1e-5 * scale, f"{what} {i}: err {err:.3g} (scale {scale:.3g})"
            elif dtype == torch.float32:
                bound = max(3e-4 * scale, 2 * tf32_err[what][i])
                assert err <= bound, f"{what} {i}: err {err:.3g} > {bound:.3g} (scale {scale:.3g})"
            else:
                terr = (t.double() - r).abs().max().item()
                assert err <= 2 * terr + 1e-3 * scale, f"{what} {i}: err {err:.3g} vs torch {terr:.3g}"


def _gpu_parity(op, n, cin, cout, h, w, padding, dtype, layout, tf32):
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    args64 = [a.cuda() if isinstance(a, torch.Tensor) else a
              for a in _make_args(op, n, cin, cout, h, w, padding, torch.float64, layout)]
    check_parity(op, args64, dtype, tf32, lambda lowp, grads_out: _fwd_bwd(op, lowp, "cuda", grads_out))


@requires_cuda
@pytest.mark.parametrize("dtype,tf32", [(torch.float32, False), (torch.float32, True),
                                        (torch.float16, True), (torch.bfloat16, True)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("op,n,cin,cout,h,w,padding", GPU_OPS)
def test_gpu_parity(op, n, cin, cout, h, w, padding, dtype, tf32, layout):
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        _gpu_parity(op, n, cin, cout, h, w, padding, dtype, layout, tf32)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


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
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out, theirs = model(x), ref(x)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    err, terr = (out.double() - r).abs().max().item(), (theirs.double() - r).abs().max().item()
    # the whole network: at most twice PyTorch's own error in the same precision
    assert err <= 2 * terr + 1e-5 * r.abs().max().item(), (err, terr)


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
