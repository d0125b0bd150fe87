"""The parity harness every backend's tests use: inputs, the float64 oracle, the tolerances.

- `make(shape, layout)`: a random tensor stored in one of LAYOUTS; `op_args(op, ...)`: the arguments
  of one op at one size.
- `REFERENCE[op]`: the op written in plain torch.nn.functional; run in float64 on the very values
  the op under test got, it is the oracle.
- `check(op, args, backend=...)`: `uf.ops.<op>(*args, backend=...)` against the oracle: every
  output, the gradient of every tensor argument (input, skip, weight, bias), their dtypes, shapes
  and the output's memory format. Tolerances follow the dtype (docs/design.md, section 4), never the
  result; `scale` is the reference's largest magnitude:
  - float32: max|ours - ref| <= 1e-5 * scale (a sum of K products in float32 errs in proportion
    to the size of its terms, not of its result);
  - float32 with TF32 allowed: <= max(3e-4 * scale, 2 * the error TF32-rounded inputs alone cause
    in float64), the second term for long sums such as a weight gradient over every pixel;
  - float16/bfloat16: <= 2 * max|torch_lowp - ref| + 1e-3 * scale, where torch_lowp is PyTorch
    computing in the same dtype (at most twice PyTorch's own error);
  - max_pool2x2, crop_concat (and any op with exact=True): equal, element for element.
  A failure names the tensor, how many elements are off and where the worst one is.
- `assert_within(what, ours, ref, bound)`: the comparison itself, for tests with their own oracle
  (the property tests bound each element by its sum of magnitudes, `magnitudes`).
- BACKENDS: the backends this machine can run; without a GPU one more, EMULATED: `cuda` with the
  CUDA kernels on the CPU emulator of tests/cuda_emu (`emulated`) in place of the C++ CPU ones.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

import unet_fast as uf
from cuda_emu import build as emulator_build

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# ---------------------------------------------------------------- the backends this machine can run
AVAILABLE = uf.backends.available()
EMULATED = "cuda-emulated"
BACKENDS = [b for b in ("cuda", "triton") if AVAILABLE[b] is None]
if DEVICE == "cpu" and AVAILABLE["cuda"] is None and emulator_build.cuda_include_dir() is not None:
    BACKENDS.append(EMULATED)

# Every op of the extension's schema (csrc/unet_fast.cpp): the forward ops and their backwards.
EXTENSION_OPS = ("conv3x3_relu", "conv3x3_relu_pool", "_conv3x3_relu_backward", "max_pool2x2",
                 "_max_pool2x2_backward", "_max_pool2x2_backward_sum", "crop_concat", "_crop_concat_backward", "conv_transpose2x2",
                 "_conv_transpose2x2_backward", "up_concat", "conv1x1", "_conv1x1_backward")
FORWARD, REVERSE, RANDOM = 0, 1, 2  # the emulator's order of threads (and CTAs)
_EMULATOR = []


def emulator():
    """The CPU emulator of the CUDA kernels (tests/cuda_emu), built on first use."""
    if not _EMULATOR:
        _EMULATOR.append(emulator_build.load())
    return _EMULATOR[0]


@contextlib.contextmanager
def emulated(m=None, schedule=FORWARD, seed=0, num_sms=132):
    """The emulated CUDA kernels (of module m, default `emulator()`) as the CPU kernels of
    torch.ops.unet_fast, then the C++ ones again: `backend="cuda"` (autograd, fake kernels and all)
    runs the CUDA code paths. Each schema op's twin has its name without the leading "_"."""
    m = emulator() if m is None else m
    m.configure(schedule, seed, num_sms)
    lib = torch.library.Library("unet_fast", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
            for name in EXTENSION_OPS:
                lib.impl(name, getattr(m, name.lstrip("_")), "CPU")
        yield
    finally:
        lib._destroy()


def op_backend(backend):
    """The backend= an op gets for one of BACKENDS."""
    return "cuda" if backend == EMULATED else backend


def kernels(backend):
    """The context ops of `backend` run in: the emulated CUDA kernels for EMULATED, else none."""
    return emulated() if backend == EMULATED else contextlib.nullcontext()


# ---------------------------------------------------------------- inputs
LAYOUTS = ("nchw", "channels_last", "nchw_strided", "nhwc_strided", "channel_slice")
"""How a logical (N, C, H, W) tensor is stored:
- nchw, channels_last: the two dense formats;
- nchw_strided: every other column of an NCHW tensor with two more channels, offset by one channel
  (width stride 2, a storage offset);
- nhwc_strided: every other column of an NHWC tensor (channels innermost, pixel stride 2C);
- channel_slice: channels [c0, c0 + C) of a channels_last buffer with more channels, as the
  decoder's concat buffer hands its slices to the kernels (c0 = 1 by default: not 16-byte aligned).
The memory around a view is NaN: a kernel that reads outside its tensor gets a NaN result."""


def to_layout(t: torch.Tensor, layout: str, c0: int = 1) -> torch.Tensor:
    """t's values stored in `layout` (one of LAYOUTS)."""
    if layout == "nchw":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    n, c, h, w = t.shape
    if layout == "nchw_strided":
        big = t.new_full((n, c + 2, h, 2 * w), float("nan"))
        v = big[:, 1:-1, :, ::2]
    elif layout == "nhwc_strided":
        v = t.new_full((n, h, 2 * w, c), float("nan"))[:, :, ::2, :].permute(0, 3, 1, 2)
    elif layout == "channel_slice":
        big = t.new_full((n, c0 + c + 3, h, w), float("nan")).contiguous(memory_format=torch.channels_last)
        v = big[:, c0:c0 + c]
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    v.copy_(t)
    assert not v.is_contiguous() and not v.is_contiguous(memory_format=torch.channels_last), layout
    return v


def make(shape, layout="nchw", dtype=torch.float32, device=DEVICE, scale=1.0, c0=1) -> torch.Tensor:
    """A random (normal, times `scale`) tensor of `shape` in `dtype`, stored in `layout`."""
    t = torch.randn(shape, device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    t = (t * scale).to(dtype)
    return t if len(shape) != 4 else to_layout(t, layout, c0)


def cast(t, dtype):
    """t in `dtype` with t's strides and storage offset (Tensor.to makes a strided view dense)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype == dtype:
        return t
    storage = torch.full((t.untyped_storage().nbytes() // t.element_size(),), float("nan"),
                         dtype=dtype, device=t.device)
    out = storage.as_strided(t.shape, t.stride(), t.storage_offset())
    out.copy_(t)
    return out


HEAD_CLASSES = 3


def op_args(op, n, cin, cout, h, w, padding=0, layout="nchw", dtype=torch.float32, device=DEVICE):
    """The arguments of `op` for an input of (n, cin, h, w) and `cout` output channels, weights
    scaled to keep outputs near 1; the skip of crop_concat is (n, cout, h + 3, w + 2), that of
    up_concat (n, cout + 1, 2h + 3, 2w + 2), of concat_conv3x3_relu (n, cin, h + 3, w + 2): odd
    crop offsets."""
    def t(*shape, scale=1.0, lay="nchw"):
        return make(shape, lay, dtype, device, scale)

    x = t(n, cin, h, w, lay=layout)
    if op in ("conv3x3_relu", "conv3x3_relu_pool"):
        return (x, t(cout, cin, 3, 3, scale=1 / (3 * cin ** 0.5)), t(cout), padding)
    if op == "max_pool2x2":
        return (x,)
    if op == "crop_concat":
        return (t(n, cout, h + 3, w + 2, lay=layout), x)
    if op == "conv_transpose2x2":
        return (x, t(cin, cout, 2, 2, scale=cin ** -0.5), t(cout))
    if op == "up_concat":
        return (t(n, cout + 1, 2 * h + 3, 2 * w + 2, lay=layout), x, t(cin, cout, 2, 2, scale=cin ** -0.5),
                t(cout))
    if op == "conv1x1":
        return (x, t(cout, cin, 1, 1, scale=cin ** -0.5), t(cout))
    if op == "concat_conv3x3_relu":   # skip (n, cin, h + 3, w + 2): odd crop offsets
        return (t(n, cin, h + 3, w + 2, lay=layout), x,
                t(cout, 2 * cin, 3, 3, scale=1 / (3 * (2 * cin) ** 0.5)), t(cout), padding)
    if op == "conv3x3_relu_conv1x1":   # a head of HEAD_CLASSES classes
        return (x, t(cout, cin, 3, 3, scale=1 / (3 * cin ** 0.5)), t(cout),
                t(HEAD_CLASSES, cout, 1, 1, scale=cout ** -0.5), t(HEAD_CLASSES), padding)
    raise ValueError(f"unknown op {op!r}")


# ---------------------------------------------------------------- the oracle
def center_crop(skip, h, w):
    top, left = (skip.shape[-2] - h) // 2, (skip.shape[-1] - w) // 2
    return skip[..., top:top + h, left:left + w]


def _conv3x3_relu_pool(x, w, b, p):
    y = F.relu(F.conv2d(x, w, b, padding=p))
    return y, F.max_pool2d(y, 2, 2)


REFERENCE = {
    "conv3x3_relu": lambda x, w, b, p: F.relu(F.conv2d(x, w, b, padding=p)),
    "conv3x3_relu_pool": _conv3x3_relu_pool,
    "max_pool2x2": lambda x: F.max_pool2d(x, 2, 2),
    "crop_concat": lambda s, u: torch.cat([center_crop(s, *u.shape[-2:]), u], 1),
    "conv_transpose2x2": lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2),
    "up_concat": lambda s, x, w, b: torch.cat(
        [center_crop(s, 2 * x.shape[-2], 2 * x.shape[-1]), F.conv_transpose2d(x, w, b, stride=2)], 1),
    "conv1x1": lambda x, w, b: F.conv2d(x, w, b),
    "concat_conv3x3_relu": lambda s, u, w, b, p: F.relu(F.conv2d(
        torch.cat([center_crop(s, *u.shape[-2:]), u], 1), w, b, padding=p)),
    "conv3x3_relu_conv1x1": lambda x, w, b, hw, hb, p: F.conv2d(
        F.relu(F.conv2d(x, w, b, padding=p)), hw, hb),
}
EXACT_OPS = ("max_pool2x2", "crop_concat")  # they move values: no arithmetic, no rounding
FORMAT_ARG = {"crop_concat": 1, "up_concat": 1, "concat_conv3x3_relu": 1}  # the argument whose memory format the output keeps

# ---------------------------------------------------------------- tolerances (docs/design.md, section 4)
F32_RTOL = 1e-5   # float32 against float64, of the reference's scale
TF32_RTOL = 3e-4  # float32 when TF32 is allowed
LOWP_FACTOR = 2   # float16/bfloat16: at most twice PyTorch's own error in the dtype ...
LOWP_EPS = 1e-3   # ... plus this much of the reference's scale


def scale_of(ref: torch.Tensor) -> float:
    """The reference's largest magnitude (1e-30 for an all-zero one: then ours must be zero too)."""
    return max(ref.abs().max().item(), 1e-30) if ref.numel() else 1e-30


def max_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref).abs().max().item() if ref.numel() else 0.0


def assert_within(what, ours, ref, bound, detail=""):
    """|ours - ref| <= bound element for element (bound a number or a tensor; NaN is off); on
    failure says how many elements are off and where the worst one is."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)}, reference {tuple(ref.shape)}"
    err = (ours.double() - ref.double()).abs()
    ok = err <= bound
    if bool(ok.all()):
        return
    bad = ~ok
    bound_t = torch.as_tensor(bound, dtype=torch.float64, device=err.device).expand_as(err)
    excess = torch.where(bad, torch.nan_to_num(err - bound_t, nan=float("inf")), torch.zeros_like(err))
    worst = tuple(int(i) for i in torch.unravel_index(excess.flatten().argmax(), err.shape))
    first = tuple(bad.nonzero()[0].tolist())
    raise AssertionError(
        f"{what}: {int(bad.sum())} of {bad.numel()} elements off; worst at {worst}: ours "
        f"{ours[worst].item():.6g}, reference {ref[worst].item():.6g}, error {err[worst].item():.3g} > "
        f"bound {bound_t[worst].item():.3g}; first at {first}{detail}")


def assert_float32_close(what, ours, ref):
    """float32 against float64: max|ours - ref| <= 1e-5 * scale (for checks outside `check`)."""
    scale = scale_of(ref)
    assert_within(what, ours, ref, F32_RTOL * scale, f" (float32: {F32_RTOL:g} x scale {scale:.3g})")


def _bound(dtype, tf32, exact, ref, torch_lowp=None, tf32_error=None):
    """The largest error allowed for one output or gradient, and a note for the failure message."""
    scale = scale_of(ref)
    if exact:
        return 0.0, " (exact)"
    if dtype == torch.float32 and not tf32:
        return F32_RTOL * scale, f" (float32: {F32_RTOL:g} x scale {scale:.3g})"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"no tolerance for {dtype} (float64 parity: torch.autograd.gradcheck)")
    if dtype == torch.float32:
        b = max(TF32_RTOL * scale, 2 * tf32_error)
        return b, f" (TF32: max({TF32_RTOL:g} x scale {scale:.3g}, 2 x TF32's own {tf32_error:.3g}))"
    terr = max_error(torch_lowp, ref)
    b = LOWP_FACTOR * terr + LOWP_EPS * scale
    return b, f" ({dtype}: {LOWP_FACTOR} x PyTorch's error {terr:.3g} + {LOWP_EPS:g} x scale {scale:.3g})"


# ---------------------------------------------------------------- running ops
def _tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _differentiated(args, wrt):
    """The positions of the arguments whose gradients are taken: every tensor's, or those of
    `wrt` (positions in args)."""
    assert wrt is None or all(isinstance(args[i], torch.Tensor) for i in wrt), wrt
    return [i for i, a in enumerate(args)
            if isinstance(a, torch.Tensor) and (wrt is None or i in wrt)]


def run(fn, args, grads_out, wrt=None):
    """fn(*args) and the gradients of every tensor argument (or of those at the positions `wrt`)
    for output gradients `grads_out` (a list, or a function of the outputs giving one)."""
    diff = _differentiated(args, wrt)
    args = [a.detach().requires_grad_(i in diff) if isinstance(a, torch.Tensor) else a
            for i, a in enumerate(args)]
    outs = _tuple(fn(*args))
    if callable(grads_out):
        grads_out = grads_out(outs)
    tensors = [args[i] for i in diff]
    grads = torch.autograd.grad(outs, tensors, [g.to(o.dtype) for g, o in zip(grads_out, outs)])
    return outs, grads


def round_tf32(t):
    """float32 -> the nearest TF32 value (ties away from zero, as cvt.rna.tf32.f32), as float32."""
    bits = t.float().contiguous().view(torch.int32)
    finite = torch.isfinite(t.float())
    rounded = ((bits + 0x1000) & -0x2000).view(torch.float32)
    return torch.where(finite, rounded, t.float()).view_as(t)


def tf32_errors(op, args, grads_out, ref_outs, ref_grads, wrt=None):
    """PyTorch-in-TF32's own error: the float64 result from TF32-rounded inputs (what a TF32
    tensor core multiplies) against the float64 reference, per output and per gradient."""
    rounded = [round_tf32(a).double() if isinstance(a, torch.Tensor) else a for a in args]
    outs, grads = run(REFERENCE[op], rounded, [round_tf32(g).double() for g in grads_out], wrt)
    return ([max_error(o, r) for o, r in zip(outs, ref_outs)],
            [max_error(g, r) for g, r in zip(grads, ref_grads)])


@contextlib.contextmanager
def allow_tf32(on: bool):
    """PyTorch's TF32 switches for convolutions and matmuls (our kernels follow the first)."""
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


def expected_format(t: torch.Tensor):
    """The memory format an op answers in for an input like t (docs/design.md, section 2: the output keeps the
    input's format; a view with its channels innermost, such as a channel slice of an NHWC buffer,
    counts as channels_last), or None where both formats describe t (one channel)."""
    cl, nchw = t.is_contiguous(memory_format=torch.channels_last), t.is_contiguous()
    if cl and nchw:
        return None
    if cl:
        return torch.channels_last
    if nchw:
        return torch.contiguous_format
    return torch.channels_last if t.stride(1) == 1 and t.shape[1] > 1 else torch.contiguous_format


def _grad_like(o: torch.Tensor, layout, dtype):
    """A random gradient for output o, exactly representable in `dtype`, in float64, stored like o
    (or in `layout`)."""
    g = torch.randn(o.shape, dtype=torch.float64, device=o.device).to(dtype).double()
    return to_layout(g, layout) if layout else torch.empty_like(o, dtype=torch.float64).copy_(g)


class Checked(NamedTuple):
    outs: tuple          # ours
    grads: tuple         # ours, one per tensor argument
    ref_outs: tuple      # the oracle's (float64)
    ref_grads: tuple
    grads_out: list      # the output gradients (float64, exact in the dtype checked)
    ref_args: list       # the arguments in float64


def check(op, args, *, backend, dtype=None, tf32=False, context=None, grad_layout=None, exact=None,
          wrt=None):
    """uf.ops.<op>(*args, backend=backend), forward and the gradient of every tensor argument,
    against the float64 oracle with the tolerance of the dtype (module docstring).

    backend: one of "torch", "triton", "cuda", EMULATED.
    dtype: cast the floating arguments first (keeping their strides); else the arguments' own.
    tf32: allow TF32 for float32 (PyTorch's switch, which our kernels follow) and judge by it.
    context: a function giving a context manager that our op runs in (default: `kernels(backend)`;
    the emulator's tests pass one with their thread order).
    grad_layout: the layout of the output gradients (default: each output's own format).
    wrt: the positions of the arguments whose gradients are checked (default: every tensor's);
    the others are constants, so their kernels do not run.
    Returns a Checked: our outputs and gradients, the oracle's, and the output gradients used."""
    if dtype is not None:
        args = [cast(a, dtype) for a in args]
    dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor))
    exact = op in EXACT_OPS if exact is None else exact
    ref_args = [a.detach().double() if isinstance(a, torch.Tensor) else a for a in args]
    grads64 = []

    def grads_out(outs):
        grads64.extend(_grad_like(o, grad_layout, dtype) for o in outs)
        return grads64

    with allow_tf32(tf32), (context() if context is not None else kernels(backend)):
        ours, ours_g = run(lambda *a: getattr(uf.ops, op)(*a, backend=op_backend(backend)), args,
                           grads_out, wrt)
    ref, ref_g = run(REFERENCE[op], ref_args, grads64, wrt)
    lowp = [None] * len(ref), [None] * len(ref_g)
    if dtype in (torch.float16, torch.bfloat16) and not exact:
        lowp = run(REFERENCE[op], args, grads64, wrt)
    tf32_err = [0.0] * len(ref), [0.0] * len(ref_g)
    if dtype == torch.float32 and tf32 and not exact:
        tf32_err = tf32_errors(op, args, grads64, ref, ref_g, wrt)

    like = args[FORMAT_ARG.get(op, 0)]
    fmt = expected_format(like)
    tensor_args = [args[i] for i in _differentiated(args, wrt)]
    for i, (o, r, t, e) in enumerate(zip(ours, ref, lowp[0], tf32_err[0])):
        what = f"{op} [{backend}, {dtype}] output {i}"
        assert o.dtype == dtype, f"{what}: dtype {o.dtype}"
        if fmt is not None:
            assert o.is_contiguous(memory_format=fmt), f"{what}: not {fmt} like its input (strides {o.stride()})"
        bound, note = _bound(dtype, tf32, exact, r, t, e)
        assert_within(what, o, r, bound, note)
    for i, (g, r, t, e, a) in enumerate(zip(ours_g, ref_g, lowp[1], tf32_err[1], tensor_args)):
        what = f"{op} [{backend}, {dtype}] gradient of argument {i} {tuple(a.shape)}"
        assert g.dtype == a.dtype, f"{what}: dtype {g.dtype}"
        bound, note = _bound(dtype, tf32, exact, r, t, e)
        assert_within(what, g, r, bound, note)
    return Checked(ours, ours_g, ref, ref_g, grads64, ref_args)


# ---------------------------------------------------------------- magnitudes (property tests)
# The sum of K float32 products errs by at most about K * 2**-24 of the sum of the magnitudes of its
# terms: a bound per element, tighter than one relative to the scale where terms cancel.
MAGNITUDE = {  # the op without its ReLU, to run on |arguments|
    "conv3x3_relu": lambda x, w, b, p: F.conv2d(x, w, b, padding=p),
    "conv_transpose2x2": REFERENCE["conv_transpose2x2"],
    "up_concat": REFERENCE["up_concat"],
    "conv1x1": REFERENCE["conv1x1"],
}


def magnitudes(fn, args64, grads64):
    """Per element, the sum of the magnitudes of the terms each output and gradient adds up:
    `fn` (the op without its ReLU) on |args|, and its gradients for |grads| (float64)."""
    absargs = [a.detach().abs().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args64]
    outs = _tuple(fn(*absargs))
    tensors = [a for a in absargs if isinstance(a, torch.Tensor)]
    loss = sum((o * g.abs()).sum() for o, g in zip(outs, grads64))
    return [o.detach() for o in outs], list(torch.autograd.grad(loss, tensors))


def assert_within_magnitudes(op, checked: Checked, rtol):
    """Each element of every output and gradient of a `check` within rtol of its magnitude."""
    mag, mag_g = magnitudes(MAGNITUDE[op], checked.ref_args, checked.grads_out)
    pairs = ([(f"{op} output {i}", z) for i, z in enumerate(zip(checked.outs, checked.ref_outs, mag))]
             + [(f"{op} gradient of argument {i}", z)
                for i, z in enumerate(zip(checked.grads, checked.ref_grads, mag_g))])
    for what, (ours, ref, m) in pairs:
        assert_within(what, ours, ref, rtol * m + 1e-30, f" ({rtol:g} x the magnitude)")


# ---------------------------------------------------------------- the whole network
def assert_lowp_within(what, ours, torch_lowp, ref, eps=LOWP_EPS):
    """max|ours - ref| <= 2 * max|torch_lowp - ref| + eps * scale (the model under autocast)."""
    err, terr = max_error(ours, ref), max_error(torch_lowp, ref)
    bound = LOWP_FACTOR * terr + eps * scale_of(ref)
    assert err <= bound, f"{what}: error {err:.3g} > {bound:.3g} (PyTorch's own {terr:.3g}, eps {eps:g})"


def rms_error(ours, ref) -> float:
    return ((ours.double() - ref.double()) ** 2).mean().sqrt().item()


def assert_lowp_rms_within(what, ours, torch_lowp, ref, eps=LOWP_EPS):
    """rms(ours - ref) <= 2 * rms(torch_lowp - ref) + eps * scale: the same rule as
    assert_lowp_within with the error of a whole tensor measured by its root mean square. For the
    parameter gradients of a whole network under autocast: there a pre-activation that rounds to
    the other side of zero flips a ReLU mask (in PyTorch's bf16 run as in ours, at different
    pixels), so the largest single error of a small tensor (a bias of 8 values) is a heavy-tailed
    statistic of where the flips fell, not a measure of the arithmetic."""
    err, terr = rms_error(ours, ref), rms_error(torch_lowp, ref)
    bound = LOWP_FACTOR * terr + eps * scale_of(ref)
    assert err <= bound, (f"{what}: rms error {err:.3g} > {bound:.3g} (PyTorch's own {terr:.3g}, "
                          f"eps {eps:g})")


# ---------------------------------------------------------------- what ran
class OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten calls of `ops` (overload packets, e.g. torch.ops.aten.copy_) run under it
    whose arguments `only` accepts (all by default): the copies, casts or adds a path must not
    launch."""

    def __init__(self, ops, only=lambda args: True):
        super().__init__()
        self.ops, self.only, self.n = tuple(ops), only, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in self.ops and self.only(args):
            self.n += 1
        return func(*args, **(kwargs or {}))


def config_id(c) -> str:
    """A Triton config as a test id: tile, warps, stages, L1 gather (A_L1), 2-D patch (TILE_W)."""
    return (f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}x{c.kwargs['BLOCK_K']}"
            f"w{c.num_warps}s{c.num_stages}" + ("L1" if c.kwargs.get("A_L1") else "")
            + (f"p{c.kwargs['TILE_W']}" if c.kwargs.get("TILE_W") else ""))
