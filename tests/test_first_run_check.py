"""The first-run check of an explicitly requested backend (unet_fast/_dispatch.py): the first call
of an op on each input under backend="triton" or "cuda" is compared with the reference ops, and
wrong numbers are a BackendUnavailable with the numbers instead of a silently wrong result. On a
GPU it is on by default; here `_MEASURE_ON_CPU` switches it on for the CPU kernels."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import unet_fast as uf
from unet_fast import _autotune, _dispatch
from conftest import requires_cuda
from test_auto import fake_backend  # noqa: F401  (a fixture)


@pytest.fixture
def checked(fake_backend, monkeypatch):
    """test_auto's fake 'triton' max_pool2x2 a test controls, a reference that counts its calls
    (`ref_calls`), and the check on for CPU tensors with its memory empty."""
    def ref(x):
        fake_backend["ref_calls"] += 1
        return F.max_pool2d(x, 2, 2)

    fake_backend["ref_calls"] = 0
    monkeypatch.setattr(_dispatch, "_MEASURE_ON_CPU", True)   # (fake_backend's too)
    monkeypatch.delenv("UNET_FAST_CHECK", raising=False)
    monkeypatch.setattr(_dispatch, "_checked", {})
    _dispatch.register_impl("max_pool2x2", "torch", ref)   # (fake_backend restores the impls)
    return fake_backend


@pytest.mark.parametrize("mode,what,err", [("wrong", "output 0", "0.05"),   # 5% larger
                                           ("wrong-backward", "input gradient 0", "0.866")])
def test_wrong_numbers_under_an_explicit_backend_raise_with_them(checked, mode, what, err):
    """A kernel that runs but gives wrong numbers (its forward, or only its backward) is refused
    on its first call with the numbers, and on every later call with that input without running
    again; the backward's error is found in the forward call, before a training step uses it."""
    checked["mode"] = mode
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    match = (f"backend='triton' gives wrong numbers for max_pool2x2 .*its {what} \\(2, 3, "
             f".* by {err} .*backend='auto'")
    with pytest.raises(uf.BackendUnavailable, match=match):
        uf.ops.max_pool2x2(x, backend="triton")
    calls, ref_calls = checked["calls"], checked["ref_calls"]
    assert (calls, ref_calls) == (1, 1)   # the check's run of each, no more
    with uf.use_backend("triton"), pytest.raises(uf.BackendUnavailable, match=match):
        uf.ops.max_pool2x2(x)
    assert (checked["calls"], checked["ref_calls"]) == (calls, ref_calls)   # remembered
    # another input is checked on its own (inference: no backward, so a wrong backward passes)
    with torch.no_grad():
        if mode == "wrong":
            with pytest.raises(uf.BackendUnavailable, match="output 0"):
                uf.ops.max_pool2x2(x, backend="triton")
        else:
            y = uf.ops.max_pool2x2(x, backend="triton")
            assert torch.equal(y, F.max_pool2d(x, 2, 2))
    assert checked["ref_calls"] == ref_calls + 1


@pytest.mark.parametrize("mode", ["ok", "rounding"])
def test_right_numbers_are_checked_once_per_input(checked, mode):
    """Results within rounding pass; the check runs once per op and input (shape, dtype, layout,
    gradients or not), and later calls run the kernel alone."""
    checked["mode"] = mode
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = uf.ops.max_pool2x2(x, backend="triton")
    scale = 1 + 2**-9 if mode == "rounding" else 1
    assert torch.equal(y, F.max_pool2d(x, 2, 2) * scale)
    assert (checked["calls"], checked["ref_calls"]) == (2, 1)   # the check's, then the call's
    uf.ops.max_pool2x2(x, backend="triton")
    uf.ops.max_pool2x2(torch.randn(2, 3, 8, 8, requires_grad=True), backend="triton")
    assert (checked["calls"], checked["ref_calls"]) == (4, 1)   # same key: not checked again
    uf.ops.max_pool2x2(torch.randn(1, 3, 8, 8), backend="triton")   # a new key
    assert (checked["calls"], checked["ref_calls"]) == (6, 2)
    assert set(_dispatch._checked.values()) == {None}


def test_a_kernel_that_fails_in_the_check_is_not_remembered(checked):
    """A kernel that raises while checked is a BackendUnavailable like any failure to run, and
    is checked again on the next call (the failure may be transient, as out of memory is)."""
    checked["mode"] = "launch-error"
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(uf.BackendUnavailable, match="failed to run max_pool2x2: RuntimeError: "
                                                    "CUDA error: injected"):
        uf.ops.max_pool2x2(x, backend="triton")
    assert not _dispatch._checked and not getattr(_dispatch._checking, "active", False)
    checked["mode"] = "ok"
    assert torch.equal(uf.ops.max_pool2x2(x, backend="triton"), F.max_pool2d(x, 2, 2))
    assert checked["ref_calls"] == 2 and list(_dispatch._checked.values()) == [None]  # again


def test_no_check_where_it_is_off(checked, monkeypatch):
    """UNET_FAST_CHECK=0 turns it off; the reference backend and "auto" (which checks what it
    measures) get none; on the CPU it is off unless a test switches it on."""
    checked["mode"] = "wrong"
    x = torch.randn(2, 3, 8, 8)
    monkeypatch.setenv("UNET_FAST_CHECK", "0")
    assert torch.equal(uf.ops.max_pool2x2(x, backend="triton"), F.max_pool2d(x, 2, 2) * 1.05)
    monkeypatch.delenv("UNET_FAST_CHECK")
    uf.ops.max_pool2x2(x, backend="torch")
    assert checked["ref_calls"] == 1 and not _dispatch._checked
    monkeypatch.setattr(_dispatch, "_MEASURE_ON_CPU", False)
    assert torch.equal(uf.ops.max_pool2x2(x, backend="triton"), F.max_pool2d(x, 2, 2) * 1.05)
    assert checked["ref_calls"] == 1 and not _dispatch._checked
    monkeypatch.setattr(_dispatch, "_MEASURE_ON_CPU", True)
    with pytest.raises(uf.BackendUnavailable, match="wrong numbers"):
        uf.ops.max_pool2x2(x, backend="triton")


@pytest.mark.parametrize("backend,device", [
    ("cuda", "cpu"),
    pytest.param("cuda", "cuda", marks=requires_cuda),
    pytest.param("triton", "cuda", marks=requires_cuda)])
def test_our_kernels_pass_their_first_run_check(backend, device, monkeypatch):
    """No false alarm on real kernels: a small U-Net's training step and then its inference on an
    explicit backend (on the CPU: the extension's C++ kernels; on a GPU, where the check is on by
    default: the GPU kernels), under bf16 autocast (where rounding differs most), checks every
    op's first call, and every one passes: the fused ops, the model's ReLU-gradient contract, the
    pool epilogue, and on "cuda" the up-convolution written into the concat buffer. (The Triton
    kernels on the interpreter, whose model runs the same ops as under "auto", pass the same
    comparison in test_auto.py's test_our_kernels_pass_the_check_against_the_reference.)"""
    why = uf.backends.available()[backend]
    if why is not None:
        pytest.skip(f"{backend}: {why}")
    _dispatch.ensure_backends()
    monkeypatch.setattr(_dispatch, "_MEASURE_ON_CPU", device == "cpu")
    monkeypatch.delenv("UNET_FAST_CHECK", raising=False)
    monkeypatch.setattr(_dispatch, "_checked", {})
    checked = []
    compare = _autotune.compare_once

    def spy(op, fn, ref_fn, args):
        checked.append(op)
        compare(op, fn, ref_fn, args)
    monkeypatch.setattr(_autotune, "compare_once", spy)
    torch.manual_seed(0)
    m = uf.UNet(1, 2, base_channels=8, depth=1, backend=backend).to(device)   # every kind of op
    x = torch.randn(1, 1, 30, 30, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = m(x).float().square().mean()
    loss.backward()
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        m(x)
    assert _dispatch._checked and set(_dispatch._checked.values()) == {None}
    assert {k[1] for k in _dispatch._checked} == {backend}
    ops = {"conv3x3_relu", "conv3x3_relu_pool", "conv3x3_relu_conv1x1"}
    ops |= {"up_concat"} if backend == "cuda" else {"conv_transpose2x2", "concat_conv3x3_relu"}
    assert ops <= set(checked), checked
    # each (op, input) once: the training step's and the inference's keys differ
    assert len(checked) == len(_dispatch._checked) == len(set(_dispatch._checked))
