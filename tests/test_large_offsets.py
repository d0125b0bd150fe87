"""Offsets past 2**31 elements, checked without a GPU.

A batch whose activations span more than 2**31 elements (batch 10 at 1920x1920x64, bf16 on an
H200) needs 64-bit offsets in every kernel that addresses them (the Triton launchers' INT64 path,
utils.needs_int64); an int32 product left in the arithmetic wraps, and the kernel reads or writes
another image's memory. On a GPU, test_triton_gpu.py's test_offsets_beyond_2_31_elements_gpu runs
one such batch through two kernels. Here every kernel gets such offsets at a small cost:

- each tensor of activations (inputs, output gradients, and through `outputs_past_2_31` every
  output and gradient the backend allocates) is a batch of 3 images whose batch stride is
  2**30 + 2**16 elements: an int32 stride, as a real batch's is, and image 2 starts past 2**31;
- its storage is allocated but only the images are written: the pages between them are never
  touched, so the CPU commits none of them (a few MB a tensor, not 8 GiB);
- the interpreter runs in debug mode (`interpreter_debug`): every int32 +, - and * of a kernel is
  checked, and one that overflows raises (conftest.py), so a missing 64-bit cast is an error that
  names the operation, not a read of unmapped memory.

The values are checked against the float64 oracle (parity.py's tolerances) on compact copies.
The CUDA kernels, on the CPU emulator (parity.EMULATED), get the same inputs and output gradients
(their outputs are the extension's, compact); C++ has no overflow check, so a 32-bit offset there
reads unmapped memory and crashes the test (checked once: `x_at` cut to int).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import unet_fast as uf
from parity import (BACKENDS, EMULATED, EXACT_OPS, REFERENCE, _bound, assert_within, kernels, make, op_args,
                    op_backend, run)

triton_backend = pytest.importorskip("unet_fast.backends.triton_backend")
from unet_fast._utils import is_channels_last  # noqa: E402  (the backends' own format rule)
from unet_fast.backends.triton_backend import crop_concat as t_crop  # noqa: E402
from unet_fast.backends.triton_backend import igemm as t_igemm  # noqa: E402
from unet_fast.backends.triton_backend import utils as t_utils  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_tf32")

INTERPRETED = pytest.mark.skipif(
    not t_utils.INTERPRET, reason="storage committed only where written (the CPU's lazily mapped "
                                  "pages); on a GPU: test_offsets_beyond_2_31_elements_gpu")
# The emulated CUDA kernels (parity.EMULATED) read the spread inputs and output gradients in place;
# their outputs are allocated by the extension's C++, compact.
OFFSET_BACKENDS = [pytest.param("triton", marks=INTERPRETED)] + (
    [EMULATED] if EMULATED in BACKENDS else [])


BATCH_STRIDE = 2**30 + 2**16   # < 2**31 (an int32 argument); image 2 lies past 2**31 elements
BATCH = 3


def _layout_strides(shape, channels_last: bool):
    n, c, h, w = shape
    return (BATCH_STRIDE,) + ((1, w * c, c) if channels_last else (h * w, w, 1))


def spread_empty(shape, dtype, channels_last: bool, device="cpu") -> torch.Tensor:
    """An uninitialized (N >= 3, C, H, W) tensor whose images lie BATCH_STRIDE elements apart."""
    n, c, h, w = shape
    assert n >= BATCH and c * h * w <= BATCH_STRIDE, shape
    storage = torch.empty((n - 1) * BATCH_STRIDE + c * h * w, dtype=dtype, device=device)
    return storage.as_strided(tuple(shape), _layout_strides(shape, channels_last))


def past_2_31(t: torch.Tensor) -> torch.Tensor:
    """t's values, its images BATCH_STRIDE elements apart (channels_last within one if t is)."""
    v = spread_empty(t.shape, t.dtype, is_channels_last(t), t.device)
    v.copy_(t)
    return v


def spread(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.shape[0] >= BATCH and t.stride(0) == BATCH_STRIDE


@pytest.fixture
def interpreter_debug(monkeypatch):
    """The interpreter in debug mode for this test: an int32 overflow raises (conftest.py)."""
    from triton.runtime import interpreter
    monkeypatch.setattr(interpreter.interpreter_builder, "options", dataclasses.replace(
        interpreter.interpreter_builder.options, debug=True))


class _Int64Spy:
    """Stands in for a GEMM kernel: records each launch's INT64 switch, then launches it."""

    def __init__(self, kernel, seen):
        self.kernel, self.seen = kernel, seen

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.seen.append(kwargs["INT64"])
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.fixture
def outputs_past_2_31(monkeypatch):
    """Every activation-shaped tensor the triton backend allocates (outputs, input gradients, the
    skip's ring) spread as past_2_31's are. Returns the shapes it made, and the INT64 switch of
    every launch of the GEMM kernels that have one (the first layer's and the head's one-K-tile
    kernel always computes its offsets in 64 bits)."""
    made, int64 = [], []
    own_empty, own_ring = t_utils.empty_like_format, t_crop.empty_ring

    def empty_like_format(shape, like, dtype=None):
        if len(shape) != 4 or shape[0] < BATCH:
            return own_empty(shape, like, dtype)
        made.append(tuple(shape))
        return spread_empty(shape, dtype or like.dtype, is_channels_last(like), like.device)

    def empty_ring(nb, c, y_hw, crop_hw, like):
        if nb < BATCH:
            return own_ring(nb, c, y_hw, crop_hw, like)
        shape = (nb,) + tuple(own_ring(1, c, y_hw, crop_hw, like).shape[1:])
        made.append(("ring",) + shape)
        return spread_empty(shape, like.dtype, True, like.device)

    monkeypatch.setattr(t_utils, "empty_like_format", empty_like_format)
    monkeypatch.setattr(t_crop, "empty_ring", empty_ring)
    for name in ("igemm_fwd_kernel", "igemm_wgrad_kernel"):
        monkeypatch.setattr(t_igemm, name, _Int64Spy(getattr(t_igemm, name), int64))
    return made, int64


# The arguments of parity.op_args that are activations (the others: weights, biases, padding)
ACTIVATIONS = {"crop_concat": (0, 1), "up_concat": (0, 1), "concat_conv3x3_relu": (0, 1)}


def check_past_2_31(op, args, backend="triton", wrt=None):
    """uf.ops.<op> on `backend` with its activations and output gradients past_2_31, forward and
    the gradient of every tensor argument (or of those at `wrt`), against the float64 oracle on
    compact copies. Returns our outputs and gradients, and which tensor arguments were spread."""
    ours_args = [past_2_31(a) if i in ACTIVATIONS.get(op, (0,)) else a
                 for i, a in enumerate(args)]
    assert any(isinstance(a, torch.Tensor) and spread(a) for a in ours_args)
    ref_args = [a.detach().double() if isinstance(a, torch.Tensor) else a for a in args]
    grads64 = []

    def grads_out(outs):
        for o in outs:
            g = torch.randn(o.shape, dtype=torch.float64).to(o.dtype).double()
            grads64.append(g)
        return [past_2_31(g.to(o.dtype)) if o.dim() == 4 and o.shape[0] >= BATCH else g
                for g, o in zip(grads64, outs)]

    with kernels(backend):
        ours, ours_g = run(lambda *a: getattr(uf.ops, op)(*a, backend=op_backend(backend)),
                           ours_args, grads_out, wrt)
    ref, ref_g = run(REFERENCE[op], ref_args, grads64, wrt)
    exact = op in EXACT_OPS
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert_within(f"{op} output {i}", o, r, _bound(o.dtype, False, exact, r)[0])
    for i, (g, r) in enumerate(zip(ours_g, ref_g)):
        assert_within(f"{op} gradient {i}", g, r, _bound(g.dtype, False, exact, r)[0])
    spread_args = [spread(a) for a in ours_args if isinstance(a, torch.Tensor)]
    return ours, ours_g, spread_args


CASES = [  # op, C_in, C_out, H, W, padding, layout
    ("conv3x3_relu", 8, 6, 9, 10, 0, "channels_last"),
    ("conv3x3_relu", 8, 6, 9, 10, 1, "nchw"),
    ("conv3x3_relu", 1, 5, 13, 11, 0, "nchw"),              # the first layer: one K-tile
    ("conv3x3_relu_pool", 8, 6, 11, 10, 0, "channels_last"),
    ("max_pool2x2", 6, 0, 9, 10, 0, "channels_last"),
    ("max_pool2x2", 6, 0, 9, 10, 0, "nchw"),
    ("crop_concat", 5, 4, 7, 6, 0, "channels_last"),
    ("conv_transpose2x2", 8, 6, 5, 6, 0, "channels_last"),
    ("up_concat", 8, 6, 5, 6, 0, "channels_last"),
    ("concat_conv3x3_relu", 6, 5, 8, 9, 1, "channels_last"),
    ("conv3x3_relu_conv1x1", 8, 6, 9, 8, 0, "channels_last"),
    ("conv1x1", 64, 2, 7, 6, 0, "channels_last"),         # the head: one K-tile
]


@pytest.mark.parametrize("backend", OFFSET_BACKENDS)
@pytest.mark.parametrize("op,ci,co,h,w,padding,layout", CASES,
                         ids=[f"{c[0]}-{c[1]}to{c[2]}-p{c[5]}-{c[6]}" for c in CASES])
def test_ops_with_offsets_past_2_31(interpreter_debug, outputs_past_2_31, op, ci, co, h, w,
                                    padding, layout, backend):
    """Each op, forward and every gradient, with its inputs, output gradients, and on triton its
    outputs and input gradients, all reaching past 2**31 elements: the launchers take the 64-bit
    path and the kernels' arithmetic never overflows int32 (debug mode would raise)."""
    made, int64 = outputs_past_2_31
    args = op_args(op, BATCH, ci, co, h, w, padding, layout)
    outs, grads, spread_args = check_past_2_31(op, args, backend)
    if backend != "triton":
        return
    assert made, "the backend allocated no output through the patched allocators"
    assert all(spread(o) for o in outs), [o.stride() for o in outs]
    assert all(spread(g) for g, s in zip(grads, spread_args) if s), [g.stride() for g in grads]
    assert all(int64), int64


@pytest.mark.parametrize("backend", OFFSET_BACKENDS)
def test_unet_with_offsets_past_2_31(interpreter_debug, outputs_past_2_31, backend):
    """A valid U-Net of depth 2 trained one step on a batch whose activations reach past 2**31
    elements (on triton every one of them; else the input and the output gradient): the model's
    fused paths (the encoder's skip and ring, the pool backward's dReLU, the decoder's concat,
    the head) give the reference's output and gradients."""
    made, int64 = outputs_past_2_31
    model = uf.UNet(in_channels=1, num_classes=2, base_channels=8, depth=2, padding="valid",
                    backend=op_backend(backend)).to(memory_format=torch.channels_last)
    ref = uf.UNet(in_channels=1, num_classes=2, base_channels=8, depth=2, padding="valid",
                  backend="torch").double()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(BATCH, 1, 44, 44)
    with kernels(backend):
        out = model(past_2_31(x))
        g = torch.randn(out.shape, dtype=torch.float64)
        out.backward(past_2_31(g.float()))
    ref_out = ref(x.double())
    ref_out.backward(g)
    assert_within("U-Net output", out, ref_out, _bound(torch.float32, False, False, ref_out)[0])
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert_within(f"gradient of {name}", p.grad, q.grad,
                      _bound(torch.float32, False, False, q.grad)[0])
    assert set(model.backend_report().values()) == {op_backend(backend)}
    if backend == "triton":
        assert len(made) > 10 and len(int64) > 10 and all(int64), (made, int64)


@INTERPRETED
def test_an_int32_offset_past_2_31_is_caught(interpreter_debug, outputs_past_2_31, monkeypatch):
    """The check can fail: with the launchers' INT64 switch forced off, the first kernel's
    int32 arithmetic overflows and the debug interpreter says so."""
    monkeypatch.setattr(t_utils, "needs_int64", lambda *t: False)
    x = past_2_31(make((BATCH, 8, 9, 10), "channels_last"))
    w = make((6, 8, 3, 3), scale=0.1)
    with pytest.raises(uf.BackendUnavailable, match="int32 overflow"):
        uf.ops.conv3x3_relu(x, w, None, 0, backend="triton")
