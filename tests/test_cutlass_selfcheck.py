"""The first-run check of the CUTLASS sm_90a units (unet_fast/backends/cutlass_sm90.py), on the CPU
by fault injection: the check's own machinery (inputs, float64 reference, bf16 tolerance, verdict,
warning, dispatch) runs on CPU tensors with stand-in units, correct ones and broken ones.

On an sm_90 GPU the same check runs the real kernels the first time each unit would run.
"""
import warnings

import pytest
import torch

import unet_fast as uf
from unet_fast import _dispatch
from unet_fast.backends import cutlass_sm90

CPU = torch.device("cpu")


def correct(unit):
    """A stand-in unit computing exactly what the real one must: PyTorch in the inputs' dtype."""
    if unit in cutlass_sm90.UP_UNITS:
        ref = {"up_fprop": cutlass_sm90.reference_up_fprop, "up_dgrad": cutlass_sm90.reference_up,
               "up_wgrad": cutlass_sm90.reference_up_wgrad}[unit]

        def run_up(x, w, b, gy):
            return tuple(t.detach() for t in ref(x, w, b, gy, x.dtype))
        return run_up

    def run(x, w, b, gy, y, pad):
        return tuple(t.detach() for t in cutlass_sm90.reference(unit, x, w, b, gy, y, pad, x.dtype))
    return run


def off_by(unit, amount, which=0):
    """A broken unit: output `which` has one element off by `amount` times the output's scale."""
    def run(*args):
        outs = list(correct(unit)(*args))
        o = outs[which].clone()
        flat = o.view(-1) if o.is_contiguous() else o.reshape(-1)
        flat[flat.numel() // 3] += amount * o.abs().max()
        outs[which] = flat.view_as(o) if o.is_contiguous() else flat.reshape(o.shape)
        return tuple(outs)
    return run


@pytest.fixture(autouse=True)
def _fresh():
    cutlass_sm90.reset()
    saved = dict(cutlass_sm90._runners)
    yield
    cutlass_sm90._runners.clear()
    cutlass_sm90._runners.update(saved)
    cutlass_sm90.reset()


@pytest.mark.parametrize("unit", cutlass_sm90.UNITS)
def test_a_correct_unit_passes(unit):
    assert cutlass_sm90.check_unit(unit, CPU, correct(unit)) is None


@pytest.mark.parametrize("unit", cutlass_sm90.UNITS)
def test_the_fp16_instantiations_are_checked_in_fp16(unit):
    """fp16 has its own instantiations and its own verdicts, at fp16's tolerance: a unit right
    in fp16 passes; one that computes in bf16 (8 bits of mantissa less) fails with the numbers."""
    assert cutlass_sm90.check_unit(unit, CPU, correct(unit), dtype=torch.float16) is None

    def in_bf16(x, w, b, gy, y, pad):
        outs = cutlass_sm90.reference(unit, *(t if t is None else t.to(torch.bfloat16)
                                              for t in (x, w, b, gy, y)), pad, torch.bfloat16)
        return tuple(t.detach().to(torch.float16) for t in outs)
    why = cutlass_sm90.check_unit(unit, CPU, in_bf16, dtype=torch.float16)
    assert why is not None and "in fp16" in why and "PyTorch's own fp16 error" in why, why


def test_verdicts_are_kept_per_dtype():
    cutlass_sm90._runners["fprop"] = correct("fprop")
    assert cutlass_sm90.verdict(("fprop",), CPU, torch.bfloat16) is None
    cutlass_sm90._runners["fprop"] = off_by("fprop", 0.5)
    assert cutlass_sm90.verdict(("fprop",), CPU, torch.bfloat16) is None   # kept
    with pytest.warns(RuntimeWarning, match="in fp16"):
        assert "fprop" in cutlass_sm90.verdict(("fprop",), CPU, torch.float16)


@pytest.mark.parametrize("unit,which", [("fprop", 0), ("dgrad", 0), ("dgrad", 1), ("wgrad", 0),
                                        ("wgrad", 1)])
def test_one_wrong_element_fails_with_the_numbers(unit, which):
    why = cutlass_sm90.check_unit(unit, CPU, off_by(unit, 0.05, which))
    assert why is not None and "first-run check" in why, why
    assert cutlass_sm90.OUTPUT_NAMES[unit][which] in why
    assert "off by up to" in why and "allowed" in why and "PyTorch's own bf16 error" in why


def test_the_check_is_not_fooled_by_autocast():
    """The first use usually comes inside the model's autocast region: the reference must still
    be float64 (else a unit off by bf16 rounding-sized errors would pass against a bf16 reference
    that errs the same way, or a correct one fail)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cutlass_sm90.check_unit("wgrad", CPU, correct("wgrad")) is None
        assert cutlass_sm90.check_unit("wgrad", CPU, off_by("wgrad", 0.05)) is not None


def test_rounding_within_bf16_tolerance_passes():
    """An error of the size of bf16's own rounding is not a failure (the tolerance follows the
    dtype: twice PyTorch's own error plus 1e-3 of the scale)."""
    assert cutlass_sm90.check_unit("fprop", CPU, off_by("fprop", 2e-4)) is None


def test_a_dgrad_that_forgets_the_mask_fails():
    def unmasked(*args):
        _, plain = correct("dgrad")(*args)
        return plain, plain
    why = cutlass_sm90.check_unit("dgrad", CPU, unmasked)
    assert why is not None and "dx * (x > 0)" in why, why


def test_a_wgrad_with_one_split_lost_fails():
    """The failure mode of a wrong split-K partition: part of the pixel sum missing."""
    def partial(*args):
        dw, db = correct("wgrad")(*args)
        return dw * 0.9, db
    assert "dweight" in cutlass_sm90.check_unit("wgrad", CPU, partial)


def test_nan_output_fails():
    def nan(*args):
        (y,) = correct("fprop")(*args)
        return (torch.full_like(y, float("nan")),)
    assert "off by up to inf" in cutlass_sm90.check_unit("fprop", CPU, nan)


def test_a_unit_that_raises_or_answers_wrongly_shaped_fails():
    def boom(*args):
        raise RuntimeError("CUTLASS initialize failed")
    assert "failed to run" in cutlass_sm90.check_unit("fprop", CPU, boom)

    def fp32(*args):
        return tuple(t.float() for t in correct("fprop")(*args))
    assert "expected bfloat16" in cutlass_sm90.check_unit("fprop", CPU, fp32)


def test_verdicts_are_kept_and_a_failure_warns_once():
    cutlass_sm90._runners["fprop"] = correct("fprop")
    cutlass_sm90._runners["wgrad"] = off_by("wgrad", 0.5)
    calls = []
    dgrad = correct("dgrad")
    cutlass_sm90._runners["dgrad"] = lambda *a: calls.append(1) or dgrad(*a)
    assert cutlass_sm90.verdict(("fprop",), CPU) is None
    with pytest.warns(RuntimeWarning, match="wgrad kernel failed its first-run check"):
        why = cutlass_sm90.verdict(cutlass_sm90.UNITS, CPU)
    assert "wgrad" in why
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert cutlass_sm90.verdict(cutlass_sm90.UNITS, CPU) == why
    assert len(calls) == len(cutlass_sm90.SELF_CHECK_SHAPES)  # checked once per device


# ---------------------------------------------------------------- the up-conv's units
def _passes_and_fails_off_by_one_element(unit, dtype):
    """A correct stand-in for an up-conv unit passes; one element off in either of its outputs
    fails with the numbers, the output and the problem named."""
    check = cutlass_sm90.check_unit
    assert check(unit, CPU, correct(unit), dtype=dtype) is None
    for which in (0, 1):
        why = check(unit, CPU, off_by(unit, 0.05, which), dtype=dtype)
        assert why is not None and cutlass_sm90.OUTPUT_NAMES[unit][which] in why, why
        assert "transposed convolution" in why and "off by up to" in why, why


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_the_up_dgrad_unit_is_checked_like_the_others(dtype):
    """up_dgrad (the transposed convolution's dx as a strided 2x2 forward convolution, masked by
    the up-conv's input): a correct stand-in passes in both dtypes; one element off in either
    output, a forgotten mask or the filter's taps read transposed (i <-> j: a wrong KRSC layout)
    fail with the numbers and the problem named."""
    check = cutlass_sm90.check_unit
    _passes_and_fails_off_by_one_element("up_dgrad", dtype)

    def unmasked(x, w, b, gy):
        _, plain = correct("up_dgrad")(x, w, b, gy)
        return plain, plain
    assert "dx * (x > 0)" in check("up_dgrad", CPU, unmasked, dtype=dtype)

    def taps_transposed(x, w, b, gy):
        return correct("up_dgrad")(x, w.transpose(2, 3), b, gy)
    assert "off by up to" in check("up_dgrad", CPU, taps_transposed, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_the_up_fprop_unit_is_checked_like_the_others(dtype):
    """up_fprop (the transposed convolution, per tap a 1x1 fprop stored into every other pixel,
    alone and as a concat's upper channels): a correct stand-in passes in both dtypes; one
    element off in either output, the bias left out, the taps stored transposed (i <-> j) or the
    skip's channels overwritten fail with the numbers and the problem named."""
    check = cutlass_sm90.check_unit
    _passes_and_fails_off_by_one_element("up_fprop", dtype)

    def no_bias(x, w, b, gy):
        return correct("up_fprop")(x, w, torch.zeros_like(b), gy)
    assert "off by up to" in check("up_fprop", CPU, no_bias, dtype=dtype)

    def taps_transposed(x, w, b, gy):
        return correct("up_fprop")(x, w.transpose(2, 3), b, gy)
    assert "off by up to" in check("up_fprop", CPU, taps_transposed, dtype=dtype)

    def skip_overwritten(x, w, b, gy):
        y, cat = correct("up_fprop")(x, w, b, gy)
        return y, torch.cat([y, y], 1)
    assert "y beside a skip" in check("up_fprop", CPU, skip_overwritten, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_the_up_wgrad_unit_is_checked_like_the_others(dtype):
    """up_wgrad (the transposed convolution's weight and bias gradients, the wgrad of the strided
    2x2 convolution): a correct stand-in passes in both dtypes; one element off in either output,
    the taps read transposed (a wrong (c, 2, 2, k) layout) or one image's pixels left out of the
    sum (a lost split-K slice) fail with the numbers and the problem named."""
    check = cutlass_sm90.check_unit
    _passes_and_fails_off_by_one_element("up_wgrad", dtype)

    def taps_transposed(x, w, b, gy):
        dw, db = correct("up_wgrad")(x, w, b, gy)
        return dw.transpose(2, 3), db
    assert "dweight" in check("up_wgrad", CPU, taps_transposed, dtype=dtype)

    def one_image_lost(x, w, b, gy):
        return correct("up_wgrad")(x[:1], w, b, gy[:1])
    assert "off by up to" in check("up_wgrad", CPU, one_image_lost, dtype=dtype)


def test_the_up_problems_cross_the_tiles():
    """UP_SELF_CHECK_SHAPES: more pixels than one 128-row M tile, one and two 128-wide N tiles
    (c), 64 and 128 output channels (4 and 8 K steps); for up_wgrad (M = c, N = 4k) both its
    instantiations (k = 64: 128x64, k = 128: 128x128) and more than 16 K steps of 64 pixels in
    one problem (a split; the extension's own count: test_cutlass.py)."""
    shapes = cutlass_sm90.UP_SELF_CHECK_SHAPES
    assert all(n * h * w > 128 for n, h, w, c, k in shapes)
    assert {c // 128 for *_, c, k in shapes} == {1, 2} and {k for *_, k in shapes} == {64, 128}
    assert max(n * h * w for n, h, w, c, k in shapes) > 16 * 64


def _extension_on_cpu():
    if uf.backends.available()["cuda"] is not None:
        pytest.skip(f"the extension is not built: {uf.backends.available()['cuda']}")


def _args():
    x = torch.randn(2, 64, 9, 8, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(64, 64, 3, 3) * 0.04).to(torch.bfloat16)
    b = torch.randn(64, dtype=torch.bfloat16)
    return x, w, b


@pytest.fixture
def cutlass_wanted_on_cpu(monkeypatch):
    """Pretend the CPU is an sm_90 device with the CUTLASS units, so that the cuda backend's
    dispatch consults their first-run check for bf16 CPU tensors."""
    _extension_on_cpu()
    monkeypatch.setattr(cutlass_sm90, "wanted", lambda x, w, pad: x.dtype == torch.bfloat16)


def test_explicit_cuda_raises_with_the_numbers(cutlass_wanted_on_cpu):
    cutlass_sm90._runners["fprop"] = off_by("fprop", 0.5)
    x, w, b = _args()
    with pytest.warns(RuntimeWarning), pytest.raises(uf.BackendUnavailable) as e:
        uf.ops.conv3x3_relu(x, w, b, 1, backend="cuda")
    msg = str(e.value)
    assert "backend='cuda' cannot run conv3x3_relu" in msg and "fprop" in msg
    assert "off by up to" in msg and "allowed" in msg


def test_auto_falls_back_after_one_warning(cutlass_wanted_on_cpu, monkeypatch):
    cutlass_sm90._runners["fprop"] = off_by("fprop", 0.5)
    monkeypatch.setattr(_dispatch, "auto_order", lambda device: ("cuda", "torch"))
    x, w, b = _args()
    ref = torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))
    with pytest.warns(RuntimeWarning, match="first-run check"):
        out = uf.ops.conv3x3_relu(x, w, b, 1, backend="auto")
    assert _dispatch.last_used("conv3x3_relu") == "torch"
    torch.testing.assert_close(out, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        uf.ops.conv3x3_relu(x, w, b, 1, backend="auto")
    assert _dispatch.last_used("conv3x3_relu") == "torch"


def test_the_backward_units_are_checked_when_gradients_are_wanted(cutlass_wanted_on_cpu):
    """A forward without gradients needs only fprop; with gradients dgrad and wgrad must pass too."""
    cutlass_sm90._runners["fprop"] = correct("fprop")
    cutlass_sm90._runners["dgrad"] = correct("dgrad")
    cutlass_sm90._runners["wgrad"] = off_by("wgrad", 0.5, which=1)
    x, w, b = _args()
    assert _dispatch.why_not("conv3x3_relu", "cuda", (x, w, b, 1, False, False)) is None
    w.requires_grad_()
    with pytest.warns(RuntimeWarning):
        why = _dispatch.why_not("conv3x3_relu", "cuda", (x, w, b, 1, False, False))
    assert "wgrad" in why and "dbias" in why


@pytest.fixture
def cutlass_up_wanted_on_cpu(monkeypatch):
    """As cutlass_wanted_on_cpu, for the up-conv's units."""
    _extension_on_cpu()
    monkeypatch.setattr(cutlass_sm90, "wanted_up", lambda x, w, skip=None: x.dtype == torch.bfloat16)


def _up_args():
    x = torch.randn(2, 128, 5, 6, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(128, 64, 2, 2) * 0.05).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    return x, w, torch.randn(64, dtype=torch.bfloat16)


def test_the_up_dgrad_unit_is_checked_when_gradients_are_wanted(cutlass_up_wanted_on_cpu):
    """conv_transpose2x2 and up_concat of the cuda backend: without gradients only the forward's
    unit is checked; with them a failed dgrad unit makes backend='cuda' raise with the numbers,
    and 'auto' warn once and fall back."""
    cutlass_sm90._runners["up_fprop"] = correct("up_fprop")
    cutlass_sm90._runners["up_dgrad"] = off_by("up_dgrad", 0.5)
    x, w, b = _up_args()
    skip = torch.randn(2, 64, 10, 12, dtype=torch.bfloat16)
    assert _dispatch.why_not("conv_transpose2x2", "cuda", (x, w, b, True)) is None
    x.requires_grad_()
    with pytest.warns(RuntimeWarning, match="up_dgrad kernel failed its first-run check"):
        why = _dispatch.why_not("conv_transpose2x2", "cuda", (x, w, b, True))
    assert "transposed convolution" in why and "off by up to" in why
    assert _dispatch.why_not("up_concat", "cuda", (skip, x, w, b, True)) == why
    with pytest.raises(uf.BackendUnavailable, match="up_dgrad"):
        uf.ops.conv_transpose2x2(x, w, b, backend="cuda")


def test_the_up_wgrad_unit_is_checked_when_gradients_are_wanted(cutlass_up_wanted_on_cpu):
    """With a passing up_fprop and up_dgrad, a failing up_wgrad keeps the up-conv off the units in
    the same way, named in the message."""
    cutlass_sm90._runners["up_fprop"] = correct("up_fprop")
    cutlass_sm90._runners["up_dgrad"] = correct("up_dgrad")
    cutlass_sm90._runners["up_wgrad"] = off_by("up_wgrad", 0.5, which=1)
    x, w, b = _up_args()
    w.requires_grad_()
    with pytest.warns(RuntimeWarning, match="up_wgrad kernel failed its first-run check"):
        why = _dispatch.why_not("conv_transpose2x2", "cuda", (x, w, b, True))
    assert "dbias" in why and "off by up to" in why
    with pytest.raises(uf.BackendUnavailable, match="up_wgrad"):
        uf.ops.conv_transpose2x2(x, w, b, backend="cuda")


def test_the_up_fprop_unit_is_checked_without_gradients(cutlass_up_wanted_on_cpu):
    """The up-conv's forward is the unit's: a failed up_fprop keeps even an inference call off
    the units (backend='cuda' raises with the numbers), and the backward units are not run."""
    cutlass_sm90._runners["up_fprop"] = off_by("up_fprop", 0.5)
    ran = []
    cutlass_sm90._runners["up_dgrad"] = lambda *a: ran.append("up_dgrad") or correct("up_dgrad")(*a)
    x, w, b = _up_args()
    with pytest.warns(RuntimeWarning, match="up_fprop kernel failed its first-run check"):
        why = _dispatch.why_not("conv_transpose2x2", "cuda", (x, w, b, True))
    assert "off by up to" in why and not ran
    with pytest.raises(uf.BackendUnavailable, match="up_fprop"):
        uf.ops.conv_transpose2x2(x, w, b, backend="cuda")


def test_not_checked_while_compiling_means_not_used(cutlass_wanted_on_cpu, monkeypatch):
    """torch.compile traces with fake tensors, where no kernel can run: a unit not yet checked in
    eager is not put into a compiled graph."""
    monkeypatch.setattr(cutlass_sm90, "_is_compiling", lambda: True)
    x, w, b = _args()
    why = _dispatch.why_not("conv3x3_relu", "cuda", (x, w, b, 1, False, False))
    assert "not passed their first-run check" in why


def test_the_units_take_bf16_and_fp16():
    """bf16 and fp16 each have their instantiations; fp32 and mixed dtypes stay on the other
    kernels, with the reason."""
    w = torch.empty(64, 64, 3, 3)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.empty(1, 64, 8, 8, dtype=dtype)
        assert cutlass_sm90.eligible(x, w.to(dtype), 1) is None
    why = cutlass_sm90.eligible(torch.empty(1, 64, 8, 8), w, 1)
    assert "bf16 or fp16" in why and "float32" in why
    assert "bf16 or fp16" in cutlass_sm90.eligible(torch.empty(1, 64, 8, 8, dtype=torch.float16),
                                                   w.to(torch.bfloat16), 1)


def test_the_up_units_take_what_they_can_store():
    """The up-conv's units: bf16/fp16, channels multiples of 64; up_concat's skip with a multiple
    of 8 channels (the forward unit stores the upper channels by TMA: 16-byte aligned pixels),
    else the hand-written kernels, with the reason."""
    x = torch.empty(1, 128, 4, 4, dtype=torch.bfloat16)
    w = torch.empty(128, 64, 2, 2, dtype=torch.bfloat16)
    assert cutlass_sm90.eligible_up(x, w) is None
    assert cutlass_sm90.eligible_up(x, w, torch.empty(1, 64, 8, 8, dtype=torch.bfloat16)) is None
    why = cutlass_sm90.eligible_up(x, w, torch.empty(1, 3, 8, 8, dtype=torch.bfloat16))
    assert "skip's channels must be a multiple of 8" in why and "3" in why
    assert "multiples of 64" in cutlass_sm90.eligible_up(x, w[:, :48])
    assert not cutlass_sm90.wanted_up(x, w)   # (no sm_90 device here)
