"""The CUDA kernels of csrc/cuda, run without a GPU on the CPU emulator in tests/cuda_emu.

The emulator compiles the unchanged kernels and their torch glue (csrc/cuda/glue.h) with the host
compiler and runs each CTA's threads as fibers, with cp.async copies that land only when waited
for, wmma on whole tiles, and checks of what the hardware requires (cuda_emu.h says which). For
the length of a test its ops replace the C++ CPU kernels of torch.ops.unet_fast, so
`backend="cuda"` (autograd, fake kernels and all) runs the real CUDA code paths: wmma tensor-core
mainloops in fp16/bf16/TF32, the exact fp32 SIMT mainloop, cp.async double buffering, the pool
epilogue, the masked dgrad, split-K wgrad with atomics, the 16-byte vector pool/concat kernels.
The context that swaps the kernels in is parity.emulated.

The op parity tests go through the parity harness (parity.py) with the tolerances of the GPU tests
(docs/design.md, section 4): float32 1e-5 of the output's scale (with TF32: 3e-4, or twice the error
TF32-rounded inputs alone cause where a long sum makes that larger), float16/bfloat16 at most twice
PyTorch's own error in the dtype, pooling and concat exact. Each case runs with threads (and CTAs)
in forward order; a subset again in reverse and in seeded random order, so a missing barrier
changes the result. An AddressSanitizer build of the emulator runs every op in a subprocess
(cuda_emu/asan_check.py): no access outside the tensors.
"""
from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unet_fast as uf
from unet_fast._utils import center_crop

from cuda_emu import build
from parity import FORWARD, RANDOM, REVERSE, assert_lowp_rms_within, assert_lowp_within, check, emulated, emulator, op_args

pytestmark = [
    pytest.mark.skipif(uf.backends.available()["cuda"] is not None,
                       reason=f"cuda backend unavailable: {uf.backends.available()['cuda']}"),
    pytest.mark.skipif(build.cuda_include_dir() is None,
                       reason="the CUDA emulator needs the CUDA toolkit headers (set CUDA_HOME)"),
]


@pytest.fixture(scope="module")
def emu():
    return emulator()


def test_overrides_are_undone(emu):
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)  # float64: the C++ CPU kernels only
    with emulated(emu), pytest.raises(RuntimeError, match="float32, float16 and bfloat16"):
        torch.ops.unet_fast.max_pool2x2(x)
    assert torch.equal(torch.ops.unet_fast.max_pool2x2(x), torch.nn.functional.max_pool2d(x, 2))


# (op, n, cin, cout, h, w, padding): 64x64 tiles with M/N/K tails, 16-byte runs (8/16 channels) and
# element-wise loaders (odd channels), two N tiles (72 outputs), odd sizes under the pool epilogue;
# the first layer's weight gradient on its narrow tiles (1 and 3 input channels: N = 9 and 27 on
# 64x16 and 64x32, the latter over two M tiles); each NCHW, NHWC and as a channel slice of a wider
# NHWC buffer (odd offset: not 16-byte aligned). The CUDA-core kernels of thin.cuh take the 1x1
# convs with at most 8 outputs and 16-byte channel runs (16 -> 8, the head's 64 -> 2:
# pointwise_thin.cuh) and the 3x3 convs of one input channel (1 -> 16 valid, 1 -> 64 padded:
# conv3x3_thin.cuh, forward and weight gradient), where their outputs (forward) or gradients
# (weight gradient) take 16-byte runs; the others (5 -> 2, 3 -> 72, the misaligned slices) the tile
# engine.
CASES = [
    ("conv3x3_relu", 2, 8, 16, 13, 11, 0),
    ("conv3x3_relu", 1, 5, 7, 9, 10, 1),
    ("conv3x3_relu", 1, 16, 72, 6, 9, 1),
    ("conv3x3_relu", 2, 1, 16, 13, 11, 0),
    ("conv3x3_relu", 1, 3, 72, 9, 10, 1),
    ("conv3x3_relu", 2, 1, 64, 9, 10, 1),
    ("conv3x3_relu_pool", 2, 8, 16, 13, 11, 0),
    ("conv3x3_relu_pool", 1, 5, 7, 9, 10, 1),
    ("max_pool2x2", 2, 16, 16, 9, 10, 0),
    ("max_pool2x2", 3, 5, 5, 7, 6, 0),
    ("crop_concat", 2, 16, 8, 6, 8, 0),
    ("crop_concat", 3, 5, 3, 7, 5, 0),
    ("conv_transpose2x2", 2, 16, 8, 5, 4, 0),
    ("conv_transpose2x2", 3, 5, 3, 7, 6, 0),
    ("up_concat", 2, 16, 8, 5, 4, 0),
    ("up_concat", 1, 17, 3, 3, 5, 0),
    ("conv1x1", 2, 16, 8, 9, 7, 0),
    ("conv1x1", 3, 5, 2, 7, 6, 0),
    ("conv1x1", 2, 64, 2, 9, 7, 0),
]
DTYPES = [(torch.float32, False), (torch.float32, True), (torch.float16, False), (torch.bfloat16, False)]


def _parity(m, op, n, cin, cout, h, w, padding, dtype, tf32, layout, schedule=FORWARD, seed=0):
    torch.manual_seed(1000 * n + 10 * cin + cout)
    args = op_args(op, n, cin, cout, h, w, padding, layout, dtype, device="cpu")
    # tf32: PyTorch's switch, which the kernels follow as PyTorch's convs do
    check(op, args, backend="cuda", tf32=tf32, context=lambda: emulated(m, schedule, seed))


@pytest.mark.parametrize("dtype,tf32", DTYPES, ids=["fp32", "tf32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channel_slice"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_op_parity(emu, case, layout, dtype, tf32):
    _parity(emu, *case, dtype, tf32, layout)


def test_thin_pixel_decode_divides_exactly(emu):
    """thin.cuh's ThinDiv (a multiply and a shift per division, the CUDA-core kernels' pixel
    decode) equals integer division for the divisors a grid can have (1, small, powers of two and
    their neighbours, large) and dividends over the whole int32 range the kernels pass it."""
    g = torch.Generator().manual_seed(0)
    edges = torch.tensor([0, 1, 2, 3, 2 ** 16 - 1, 2 ** 16, 2 ** 30, 2 ** 31 - 2, 2 ** 31 - 1])
    n = torch.cat([edges, torch.randint(0, 2 ** 31, (20000,), generator=g),
                   torch.randint(0, 4096, (4000,), generator=g)])
    divisors = (list(range(1, 600)) + [2 ** k + e for k in range(10, 31) for e in (-1, 0, 1)]
                + [572, 570, 568, 388, 1 << 20, 99991, 2 ** 31 - 1])
    for d in divisors:
        got = emu.thin_divmod(n, d)
        assert torch.equal(got[:, 0], n // d) and torch.equal(got[:, 1], n % d), d


@pytest.mark.parametrize("schedule", [FORWARD, REVERSE], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype,tf32", DTYPES, ids=["fp32", "tf32", "fp16", "bf16"])
@pytest.mark.parametrize("cout,padding", [(16, 0), (64, 1)], ids=["1-16-valid", "1-64-same"])
def test_one_channel_input_in_channels_last_strides(emu, cout, padding, dtype, tf32, schedule):
    """The first layer on grey images as the model gives it: x (N, 1, H, W) with channels_last
    strides (stride(1) == 1; (N, 1, H, W).contiguous(channels_last) keeps NCHW strides, which
    CASES' "channels_last" layout therefore is for one channel). y comes out channels_last, so
    conv3x3_thin.cuh's forward stores its 16-byte runs and its weight gradient reads g's: forward
    and every gradient against the float64 reference (the parity harness's tolerances)."""
    torch.manual_seed(cout + padding)
    x, w, b = op_args("conv3x3_relu", 2, 1, cout, 13, 11, padding, "nchw", dtype, device="cpu")[:3]
    n, _, h, wd = x.shape
    x = torch.empty_strided(x.shape, (h * wd, 1, wd, 1), dtype=dtype).copy_(x)
    got = check("conv3x3_relu", (x, w, b, padding), backend="cuda", tf32=tf32,
                context=lambda: emulated(emu, schedule, 0))
    assert got.outs[0].stride(1) == 1, got.outs[0].stride()


@pytest.mark.parametrize("schedule,seed", [(REVERSE, 0), (RANDOM, 1), (RANDOM, 2)],
                         ids=["reverse", "random1", "random2"])
@pytest.mark.parametrize("dtype,tf32", [(torch.float16, False), (torch.float32, False)], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", [c for c in CASES if c[2] % 8 == 0], ids=lambda c: "-".join(map(str, c)))
def test_op_parity_any_thread_order(emu, case, dtype, tf32, schedule, seed):
    _parity(emu, *case, dtype, tf32, "channels_last", schedule, seed)


@pytest.mark.parametrize("relu_mask", [False, True], ids=["", "relu_mask"])
@pytest.mark.parametrize("crop", [None, (5, 7), (8, 1)], ids=["whole", "crop5x7", "crop8x1"])
@pytest.mark.parametrize("c0", [0, 8, 4], ids=["slice0", "slice8", "misaligned-slice4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_pool_backward_with_a_channel_slice_base(emu, dtype, c0, crop, relu_mask):
    """The skip's gradient is a channel slice of the concat's NHWC gradient: the pool backward
    reads it as rows of 16-byte words at the wider pixel stride (or element-wise when the slice
    is not 16-byte aligned) and equals the reference. In the valid U-Net it is the gradient of
    x's center crop (smaller than x): added where the crop lies, 0 elsewhere, odd offsets too.
    relu_mask (x a ReLU output): the sum zeroed where x <= 0, the odd last row and column too."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 10).to(dtype).contiguous(memory_format=torch.channels_last)
    x[:, :, 8, ::3] = 0.0   # (the last row, outside every window: masked there too)
    g = torch.randn(2, 8, 4, 5).to(dtype).contiguous(memory_format=torch.channels_last)
    wide = torch.randn(2, 24, *(crop or (9, 10))).to(dtype).contiguous(
        memory_format=torch.channels_last)
    base = wide[:, c0:c0 + 8]
    emu.configure(REVERSE, 0, 132)
    ours = emu.max_pool2x2_backward(g, x, base, relu_mask)
    xr = x.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(torch.nn.functional.max_pool2d(xr, 2), xr, g.double())
    center_crop(ref, base.shape[-2:]).add_(base.double())
    ref = ref.to(dtype).double()
    if relu_mask:
        ref = torch.where(x.double() <= 0, 0.0, ref)
        assert (ref == 0).sum() > (x == 0).sum()   # (the mask zeroes something)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=0)


@pytest.mark.parametrize("schedule,seed", [(FORWARD, 0), (REVERSE, 0), (RANDOM, 1)],
                         ids=["forward", "reverse", "random"])
@pytest.mark.parametrize("c,crop,layout", [
    (64, None, "channels_last"),      # 8 runs of bf16 (4 passes of pixels a CTA), 16 of fp32
    (8, (13, 15), "channels_last"),   # one run a pixel; a cropped skip's gradient
    (512, (12, 13), "channels_last"),  # 64 runs of bf16: 4 pixels a pass, 2 CTAs' rows a pixel
    (24, None, "channels_last"),      # 3 runs of bf16: no whole pixels a CTA: summed after
    (64, None, "nchw"),               # the strided kernel: summed after
], ids=["c64", "c8-crop", "c512-crop", "c24", "c64-nchw"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_pool_backward_sums_the_channels_it_writes(emu, dtype, c, crop, layout, schedule, seed):
    """_max_pool2x2_backward_sum (the CUTLASS path's pooled convs: y's gradient and its bias
    gradient from one pass): grad_x exactly the plain pool backward's, and its sum over (n, h, w)
    -- each CTA's fp32 channel sums of the values it wrote, its threads walking several items
    each (one SM: 8 CTAs), odd rows and columns and a cropped skip included, then the CTAs' rows
    summed -- against the float64 sum of that grad_x: fp32 accumulation (1e-6 of the channel's
    absolute sum), then one rounding to x's dtype (bf16: its unit roundoff, 2^-8 of the sum)."""
    from parity import to_layout
    torch.manual_seed(c)
    x = to_layout(torch.relu(torch.randn(2, c, 27, 29)).to(dtype), layout)
    g = to_layout(torch.randn(2, c, 13, 14).to(dtype), layout)
    base = to_layout(torch.randn(2, c, *(crop or (27, 29))).to(dtype), layout)
    emu.configure(schedule, seed, 1)
    plain = emu.max_pool2x2_backward(g, x, base, True)
    gx, db = emu.max_pool2x2_backward_sum(g, x, base, True)
    assert torch.equal(gx, plain) and gx.stride() == plain.stride()
    assert db.shape == (c,) and db.dtype == dtype
    ref = gx.double().sum((0, 2, 3))
    atol = 1e-6 * gx.double().abs().sum((0, 2, 3))
    rtol = 2.0 ** -8 if dtype == torch.bfloat16 else 0.0
    bound = (1 + rtol) * atol + rtol * ref.abs()
    err = (db.double() - ref).abs()
    assert (err <= bound).all(), (err - bound).max()
    assert ref.abs().max() > 100 * atol.max()   # (not sums of nothing)


@pytest.mark.parametrize("layout", ["channels_last", "nchw", "nhwc_strided"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("op", ["conv1x1", "conv3x3", "conv_transpose2x2"])
def test_dgrad_masks_by_a_relu_input(emu, op, dtype, layout):
    """An input gradient with relu_input (x a ReLU output: the head on the last conv's y, every
    3x3 conv but the first, the decoder's up-convs): the wmma dgrad's epilogue zeroes dx where
    x <= 0 (a NaN x passes it), in the dense layouts where dx has x's strides; a strided x takes
    the pass after the GEMM. Exactly threshold_backward of the plain dx."""
    from parity import to_layout
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 16, 5, 7))
    x[0, 0, 0, :4] = torch.tensor([-0.0, float("nan"), -1.0, 2.0])
    x = to_layout(x.to(dtype), layout)
    mask = [True, False, False]
    if op == "conv1x1":
        w, g = torch.randn(3, 16, 1, 1).to(dtype), torch.randn(2, 3, 5, 7).to(dtype)
        call = lambda g, relu: emu.conv1x1_backward(g, x, w, mask, relu)   # noqa: E731
    elif op == "conv3x3":   # (padding 1: g has x's size; the gradient arrives masked: no y)
        w, g = torch.randn(3, 16, 3, 3).to(dtype) / 6, torch.randn(2, 3, 5, 7).to(dtype)
        call = lambda g, relu: emu.conv3x3_relu_backward(g, None, x, w, 1, mask, relu)  # noqa: E731
    else:
        w, g = torch.randn(16, 3, 2, 2).to(dtype), torch.randn(2, 3, 10, 14).to(dtype)
        call = lambda g, relu: emu.conv_transpose2x2_backward(g, x, w, mask, relu)  # noqa: E731
    g = to_layout(g, layout)
    emu.configure(REVERSE, 0, 132)
    plain = call(g, False)[0]
    ours = call(g, True)[0]
    ref = torch.ops.aten.threshold_backward(plain, x, 0)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0, equal_nan=True)
    assert (ours[x <= 0] == 0).all() and ours[x > 0].ne(0).all()


def _masked_gradient_case(emu, case, layout, dtype, tf32, schedule):
    from parity import to_layout
    _, n, c, k, h, w, pad = case
    torch.backends.cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"
    torch.manual_seed(0)
    oh, ow = h - 2 + 2 * pad, w - 2 + 2 * pad
    x = to_layout(torch.randn(n, c, h, w).to(dtype), layout)
    wt = (torch.randn(k, c, 3, 3) / (3 * c ** 0.5)).to(dtype)
    y = torch.relu(torch.randn(n, k, oh, ow))
    y[0, 0, 0, :2] = torch.tensor([float("nan"), -0.0])
    y = to_layout(y.to(dtype), layout)
    g = to_layout(torch.randn(n, k, oh, ow).to(dtype), layout)
    # (in g's layout: the kernels a gradient takes depend on its runs' alignment (the first
    # layer's CUDA-core weight gradient, conv3x3_thin.cuh, needs 16-byte runs))
    gm = to_layout(torch.ops.aten.threshold_backward(g, y, 0), layout)
    emu.configure(schedule, 0, 132)
    ref = emu.conv3x3_relu_backward(g, y, x, wt, pad, [True, True, True])
    ours = emu.conv3x3_relu_backward(gm, None, x, wt, pad, [True, True, True])
    for name, a, r in zip(("dx", "dw", "db"), ours, ref):
        torch.testing.assert_close(a, r, rtol=0, atol=0, equal_nan=True, msg=name)


_CONV3X3_CASES = [c for c in CASES if c[0] == "conv3x3_relu"]


@pytest.mark.parametrize("dtype,tf32", DTYPES, ids=["fp32", "tf32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channel_slice"])
@pytest.mark.parametrize("case", _CONV3X3_CASES, ids=lambda c: "-".join(map(str, c[1:])))
def test_conv3x3_gradients_of_a_masked_gradient(emu, case, layout, dtype, tf32,
                                                fp32_precision_restored):
    """The Premasked dgrad and wgrad kernels (no y: the gradient arrives masked, the model's
    grad_masked): their gradients equal the masking kernels' given the unmasked gradient and y,
    exactly (the same values reach the same wmma and atomics in the same order), on 64x64 tiles
    with tails, 16-byte cp.async runs and element-wise runs, and the first layer's narrow
    weight-gradient tiles. y holds a NaN (passes the gradient) and a -0.0 (masks it)."""
    _masked_gradient_case(emu, case, layout, dtype, tf32, FORWARD)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", _CONV3X3_CASES, ids=lambda c: "-".join(map(str, c[1:])))
def test_conv3x3_gradients_of_a_masked_gradient_reverse_order(emu, case, dtype,
                                                              fp32_precision_restored):
    """The same with threads and CTAs in reverse order (the cp.async A copies of the Premasked
    kernels: a missing wait or barrier changes the result; both calls sum in the same order)."""
    _masked_gradient_case(emu, case, "channels_last", dtype, False, REVERSE)


def test_wgrad_split_k_and_few_sms(emu):
    """Weight gradients split over many CTAs (grid.z) and over one: the same sums."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 20, 18).to(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3) / 12
    y = torch.relu(torch.nn.functional.conv2d(x, w))
    g = torch.randn_like(y)
    ref = torch.ops.unet_fast._conv3x3_relu_backward(g.double(), y.double(), x.double(), w.double(), 0,
                                                      [True, True, True])
    for sms in (1, 132, 100000):
        emu.configure(REVERSE, 0, sms)
        dx, dw, db = emu.conv3x3_relu_backward(g, y, x, w, 0, [True, True, True])
        for ours, r in zip((dx, dw, db), ref):
            scale = r.abs().max().item()
            assert (ours.double() - r).abs().max().item() <= 1e-5 * scale


def test_tf32_follows_the_fp32_precision_api(emu, fp32_precision_restored):
    """The glue asks PyTorch for the conv TF32 setting the way its convs do, so the new API works,
    also mixed with the legacy one (where the op-less query raises)."""
    torch.manual_seed(0)
    x = torch.randn(1, 16, 9, 9).to(memory_format=torch.channels_last)
    w, b = torch.randn(16, 16, 3, 3) / 12, torch.randn(16)
    ref = torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), b.double()))
    emu.configure(FORWARD, 0, 132)
    errs = {}
    for conv in ("ieee", "tf32"):
        torch.backends.cudnn.rnn.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = conv
        errs[conv] = (emu.conv3x3_relu(x, w, b, 0).double() - ref).abs().max().item() / ref.abs().max().item()
    assert errs["ieee"] <= 1e-6 < errs["tf32"] <= 3e-4, errs


@pytest.mark.parametrize("padding,size", [("valid", 44), ("same", 16)])
def test_unet_training_step(emu, padding, size):
    """A small U-Net, forward and backward, every layer on the emulated CUDA kernels (bf16 autocast)."""
    torch.manual_seed(0)
    ref = uf.reference.UNet(in_channels=1, num_classes=2, base_channels=8, depth=2, padding=padding)
    model = uf.UNet(in_channels=1, num_classes=2, base_channels=8, depth=2, padding=padding, backend="cuda")
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, size, size)
    ref64 = copy.deepcopy(ref).double()
    out64 = ref64(x.double())
    gout = torch.randn_like(out64)
    (out64 * gout).sum().backward()

    def run(net, emulate):
        net.zero_grad()
        with emulated(emu) if emulate else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = net(x)
            (out.float() * gout.float()).sum().backward()
        return out, {k: p.grad for k, p in net.named_parameters()}

    out, grads = run(model, True)
    theirs, tgrads = run(ref, False)
    assert_lowp_within("UNet output", out, theirs, out64)
    for name, p in ref64.named_parameters():
        # (parity.assert_lowp_rms_within says why a whole network's gradients use the rms)
        assert_lowp_rms_within(f"gradient of {name}", grads[name], tgrads[name], p.grad)


# ---------------------------------------------------------------- the emulator catches bugs
@pytest.mark.parametrize("schedule", [FORWARD, REVERSE])
def test_emulator_correct_kernels_pass(emu, schedule):
    emu.configure(schedule, 0, 132)
    assert emu.selftest("barrier")[:64] == [float((i + 1) % 64 + 1) for i in range(64)]
    assert emu.selftest("waited_read")[:64] == [float(4 * ((i + 1) % 64)) for i in range(64)]
    a = torch.tensor([float(i % 7 - 3) for i in range(256)]).view(16, 16)
    assert emu.selftest("wmma_aligned") == (a @ a.t()).flatten().tolist()  # B col-major = a^T


def test_emulator_catches_a_missing_barrier(emu):
    results = []
    for schedule in (FORWARD, REVERSE):
        emu.configure(schedule, 0, 132)
        results.append(emu.selftest("race")[:64])
    assert results[0] != results[1], "a read racing a write must depend on the thread order"


@pytest.mark.parametrize("schedule", [FORWARD, REVERSE])
def test_emulator_catches_reading_a_copy_before_waiting(emu, schedule):
    import math
    emu.configure(schedule, 0, 132)
    assert any(math.isnan(v) for v in emu.selftest("early_read")[:64])


@pytest.mark.parametrize("case,message", [
    ("wmma_misaligned", "not 32-byte aligned"),
    ("divergent_barrier", "barrier divergence"),
    ("unfinished_copy", "copies in flight"),
])
def test_emulator_reports_violations(emu, case, message):
    emu.configure(FORWARD, 0, 132)
    with pytest.raises(RuntimeError, match=message):
        emu.selftest(case)


def test_emulator_aborts_on_a_misaligned_uint4_access(emu):
    """UBSan's fatal alignment check: what a GPU reports as "misaligned address" (a subprocess,
    since the check ends the process)."""
    emu.configure(FORWARD, 0, 132)
    assert emu.selftest("uint4_aligned")[:4] == [0.0, 1.0, 2.0, 3.0]
    code = ("import sys; sys.path.insert(0, %r); from cuda_emu import build; "
            "build.load().selftest('uint4_misaligned')" % str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "misaligned address" in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------- AddressSanitizer
@pytest.fixture(scope="module")
def asan_env():
    lib = build.libasan()
    if lib is None:
        pytest.skip("no AddressSanitizer runtime (c++ -print-file-name=libasan.so found none)")
    return dict(os.environ, LD_PRELOAD=lib, ASAN_OPTIONS="detect_leaks=0")


def _asan_check(env, *args):
    script = Path(__file__).parent / "cuda_emu" / "asan_check.py"
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                          timeout=1500)


def test_no_out_of_bounds_access_under_asan(asan_env):
    """Every op forward and backward (fp32/bf16, NCHW/NHWC, vector and element-wise loaders) in
    the ASan build: no kernel reads or writes outside its tensors (memcheck's job on a GPU)."""
    proc = _asan_check(asan_env)
    assert proc.returncode == 0 and "ERROR: AddressSanitizer" not in proc.stderr, proc.stderr[-4000:]
    assert "no report" in proc.stdout


def test_asan_catches_a_read_past_a_buffer(asan_env):
    proc = _asan_check(asan_env, "overflow")
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr, proc.stderr[-2000:]
