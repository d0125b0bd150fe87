"""The CUTLASS sm_90a convolutions (csrc/cutlass_sm90) without a GPU: their host code, CUTLASS's
can_implement included, accepts every 3x3 convolution of the paper U-Net (572x572, "valid") and of
the "same" U-Net (512x512), batch 1 to 16, in all three passes and both dtypes (bf16, fp16: one
set of instantiations each), except the first layer (1 input channel), which stays on the
hand-written kernels; and it refuses, with a reason, what the units do
not take. Called through the extension's `_cutlass_sm90_check` op (host code only).

The kernels themselves run only on an sm_90 GPU: tests/test_cuda_sass.py checks their machine code,
the first-run self-check and the GPU suite their numbers.
"""
import os

import pytest
import torch
import torch.nn.functional as F

import unet_fast as uf

from conftest import GPU_ONLY

PASSES = ("fprop", "dgrad", "wgrad")
DTYPES = ("bf16", "f16")   # the units' element types, as the host ops name them
UNITS_PER_DTYPE = 7        # instantiations per dtype: fprop, dgrad 2 tiles each; wgrad 3


def _check_op():
    if uf.backends.available()["cuda"] is not None:
        pytest.skip(f"the extension is not built: {uf.backends.available()['cuda']}")
    try:
        return torch.ops.unet_fast._cutlass_sm90_check
    except (AttributeError, RuntimeError):
        if os.environ.get("UNET_FAST_REQUIRE_CUTLASS"):
            pytest.fail("UNET_FAST_REQUIRE_CUTLASS=1 but the extension was built without the CUTLASS units")
        pytest.skip("the extension was built without the CUTLASS sm_90a units (see setup.py's output)")


def unet_conv3x3_problems(padding: str, size: int):
    """(c_in, c_out, h, w, pad) of every 3x3 convolution of the U-Net (depth 4, 64 base channels)
    on a size x size image, from the reference model itself (the helper tools/kernel_model.py
    uses too)."""
    return [p[1:] for p in uf.reference.conv3x3_problems(1, padding, size)]


NETWORKS = (("valid", 572), ("same", 512))


def test_the_networks_have_the_expected_convolutions():
    for padding, size in NETWORKS:
        probs = unet_conv3x3_problems(padding, size)
        assert len(probs) == 18, probs  # depth 4: 2 per level, 9 levels
        assert probs[0][0] == 1 and all(c % 64 == 0 for c, *_ in probs[1:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding,size", NETWORKS)
@pytest.mark.parametrize("conv_pass", PASSES)
def test_can_implement_every_unet_convolution(conv_pass, padding, size, dtype):
    check = _check_op()
    refused = []
    for c, k, h, w, pad in unet_conv3x3_problems(padding, size)[1:]:
        for n in range(1, 17):
            why = check(conv_pass, [n, h, w, c, k, pad], dtype)
            if why:
                refused.append(f"n={n} {c}->{k} {h}x{w} pad {pad}: {why}")
    assert not refused, "\n".join(refused)


@pytest.mark.parametrize("conv_pass", PASSES)
def test_the_first_layer_is_refused_with_a_reason(conv_pass):
    """1 input channel: not a multiple of the 64-channel K step; the hand-written kernels run it."""
    check = _check_op()
    c, k, h, w, pad = unet_conv3x3_problems("valid", 572)[0]
    why = check(conv_pass, [8, h, w, c, k, pad])
    assert "multiples of 64" in why, why


@pytest.mark.parametrize("conv_pass", PASSES)
@pytest.mark.parametrize("shape,expected", [
    ([2, 16, 16, 64, 96, 1], "multiples of 64"),     # 96 output channels
    ([2, 16, 16, 64, 64, 2], "padding must be 0 or 1"),
    ([2, 2, 16, 64, 64, 0], "no 3x3 output"),         # 2 rows, no padding
    ([0, 16, 16, 64, 64, 1], "positive"),
    ([64, 1024, 1024, 1024, 64, 1], "32-bit"),      # 2^36 input elements
])
def test_refusals_say_why(conv_pass, shape, expected):
    why = _check_op()(conv_pass, shape)
    assert expected in why, why


def test_small_problems_of_the_first_run_check_are_accepted():
    """The first-run check (unet_fast/backends/cutlass_sm90.py) runs each unit on a small problem
    with both paddings: those must be problems the units take, in both dtypes."""
    from unet_fast.backends import cutlass_sm90
    check = _check_op()
    for conv_pass in PASSES:
        for shape in cutlass_sm90.SELF_CHECK_SHAPES:
            for dtype in DTYPES:
                assert check(conv_pass, list(shape), dtype) == "", (conv_pass, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_first_run_check_runs_every_instantiation(dtype):
    """SELF_CHECK_SHAPES reach each pass's every tile, in each dtype: an instantiation the
    first-run check never ran would go unchecked onto a GPU."""
    from unet_fast.backends import cutlass_sm90
    _check_op()
    configs = torch.ops.unet_fast._cutlass_sm90_configs()
    for conv_pass in PASSES:
        built = {c for c in configs if c.split()[:2] == [conv_pass, dtype + ":"]}
        ran = {torch.ops.unet_fast._cutlass_sm90_config_for(conv_pass, list(shape), dtype)
               for shape in cutlass_sm90.SELF_CHECK_SHAPES}
        assert ran == built, (conv_pass, built - ran)


def unet_up_problems(padding: str, size: int):
    """(c, k, h, w) of the input x (n, c, h, w) -> k channels of every 2x2 transposed convolution
    of the U-Net, from the reference model (as unet_conv3x3_problems)."""
    return [(p.c_in, p.c_out, p.h, p.w) for p in uf.reference.up_problems(1, padding, size)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding,size", NETWORKS)
@pytest.mark.parametrize("unit", ["up_fprop", "up_dgrad", "up_wgrad"])
def test_can_implement_every_unet_up_convolution(unit, padding, size, dtype):
    """The up-conv's units take every transposed convolution of both U-Nets, batch 1 to 16: the
    forward (per tap a 1x1 fprop stored into every other pixel of the concat's upper channels:
    each tap's problem through can_implement), the dgrad (a strided 2x2 forward convolution of
    the output gradient) and the wgrad (that convolution's wgrad on the 3x3 wgrad's kernels,
    with its split-K count)."""
    check = _check_op()
    probs = unet_up_problems(padding, size)
    assert len(probs) == 4 and all(k * 2 == c for c, k, _, _ in probs), probs
    refused = [f"n={n} {c}->{k} {h}x{w}: {why}" for c, k, h, w in probs for n in range(1, 17)
               if (why := check(unit, [n, h, w, c, k, 0], dtype))]
    assert not refused, "\n".join(refused)


@pytest.mark.parametrize("unit,shape,expected", [
    ("up_dgrad", [2, 16, 16, 128, 96, 0], "multiples of 64"),
    ("up_dgrad", [0, 16, 16, 128, 64, 0], "positive"),
    ("up_dgrad", [64, 1024, 1024, 1024, 512, 0], "32-bit"),
    ("up_wgrad", [2, 16, 16, 128, 96, 0], "output channels k a multiple of 64"),
    ("up_wgrad", [2, 16, 16, 96, 128, 0], "input channels c a multiple of 64"),
    ("up_wgrad", [0, 16, 16, 128, 64, 0], "positive"),
    ("up_wgrad", [64, 1024, 1024, 1024, 512, 0], "32-bit"),
    ("up_fprop", [2, 16, 16, 128, 96, 0], "multiples of 64"),
    ("up_fprop", [2, 0, 16, 128, 64, 0], "positive"),
    ("up_fprop", [64, 1024, 1024, 1024, 512, 0], "32-bit"),
])
def test_up_refusals_say_why(unit, shape, expected):
    why = _check_op()(unit, shape)
    assert expected in why, why


def test_up_wgrad_runs_on_the_wgrad_instantiations_with_a_split():
    """up_wgrad (M = c, N = 4k: an N tile holds one tap's channels) runs the 3x3 wgrad's 128x128
    kernel where k is a multiple of 128, else its 128x64 one; the first-run problems reach both,
    and the first is split in two (so the check runs the split-K path). Every up-conv of both
    networks, batch 1-16, is split by the Triton backend's rule (as the 3x3 wgrad's, below) on
    the tiles that run: c / 128 x 4k / (128 or 64), N tiles rounded to the 1x2 cluster."""
    from unet_fast.backends import cutlass_sm90
    _check_op()
    config_for = torch.ops.unet_fast._cutlass_sm90_config_for
    splits = torch.ops.unet_fast._cutlass_sm90_wgrad_splits
    for dtype in DTYPES:
        assert config_for("up_wgrad", [2, 8, 8, 256, 128, 0], dtype).startswith(
            f"wgrad {dtype}: tile 128x128x64")
        assert config_for("up_wgrad", [2, 8, 8, 128, 64, 0], dtype).startswith(
            f"wgrad {dtype}: tile 128x64x64")
    got = [splits([n, h, w, c, k, 0], 132, "up_wgrad")
           for n, h, w, c, k in cutlass_sm90.UP_SELF_CHECK_SHAPES]
    assert got == [2, 1], got
    from unet_fast.backends.triton_backend import utils as triton_utils
    differ, seen = [], set()
    for padding, size in NETWORKS:
        for c, k, h, w in unet_up_problems(padding, size):
            tiles = -(-c // 128) * (-(-(4 * k // (128 if k % 128 == 0 else 64)) // 2) * 2)
            for n in range(1, 17):
                want = triton_utils.wgrad_split(tiles, -(-n * h * w // 64), 132, max_split=64)
                got = splits([n, h, w, c, k, 0], 132, "up_wgrad")
                seen.add(got)
                if got != want:
                    differ.append(f"n={n} {c}->{k} {h}x{w}: {got} != {want}")
    assert not differ, "\n".join(differ[:20])
    assert len(seen) > 3, seen   # (1, 4, 16, 32, 33: the rule is exercised)
    with pytest.raises(RuntimeError, match="'wgrad' or 'up_wgrad'"):
        splits([1, 8, 8, 64, 64, 0], 132, "up_dgrad")


@pytest.mark.parametrize("unit", ["up_fprop", "up_dgrad"])
def test_up_first_run_problems_are_accepted_and_name_the_unit(unit):
    from unet_fast.backends import cutlass_sm90
    check = _check_op()
    for n, h, w, c, k in cutlass_sm90.UP_SELF_CHECK_SHAPES:
        for dtype in DTYPES:
            assert check(unit, [n, h, w, c, k, 0], dtype) == "", (n, h, w, c, k, dtype)
            cfg = torch.ops.unet_fast._cutlass_sm90_config_for(unit, [n, h, w, c, k, 0], dtype)
            # (up_fprop's N is k: 64 output channels fill the 256x64 tile)
            tile = "256x64x64" if unit == "up_fprop" and k == 64 else "128x128x64"
            assert cfg.startswith(f"{unit} {dtype}: tile {tile}"), cfg
    # both of up_fprop's instantiations run in the first-run check
    assert {k == 64 for *_, k in cutlass_sm90.UP_SELF_CHECK_SHAPES} == {True, False}


def test_bad_pass_name_is_an_error():
    with pytest.raises(RuntimeError, match="fprop"):
        _check_op()("forward", [1, 8, 8, 64, 64, 1])
    with pytest.raises(RuntimeError, match="'bf16' or 'f16'"):
        _check_op()("fprop", [1, 8, 8, 64, 64, 1], "fp32")


def test_configs_name_the_instantiations():
    """Seven 3x3 instantiations per dtype, bf16's then fp16's, in the same order: the same tiles;
    then the up-conv's dgrad, bf16 and fp16, and its forward, 128x128 and 256x64 (k = 64)."""
    _check_op()
    configs = torch.ops.unet_fast._cutlass_sm90_configs()
    assert len(configs) == (UNITS_PER_DTYPE + 3) * len(DTYPES), configs
    up = configs[UNITS_PER_DTYPE * len(DTYPES):]
    assert [c.split(":")[0] for c in up] == ["up_dgrad bf16", "up_dgrad f16", "up_fprop bf16",
                                             "up_fprop f16", "up_fprop bf16", "up_fprop f16"], up
    assert all("tile 128x128x64" in c for c in up[:4]), up
    assert all("tile 256x64x64" in c for c in up[4:]), up
    assert all("mask" in c for c in up[:2]) and all("every other pixel" in c for c in up[2:]), up
    configs = configs[:UNITS_PER_DTYPE * len(DTYPES)]
    for d, dtype in enumerate(DTYPES):
        mine = configs[d * UNITS_PER_DTYPE:(d + 1) * UNITS_PER_DTYPE]
        assert [c.split()[0] for c in mine] == list(PASSES) + ["fprop", "dgrad", "wgrad", "wgrad"]
        assert all(c.split()[1] == dtype + ":" for c in mine), mine
        assert all("tile" in c and "stages" in c for c in mine), mine
        assert "tile 256x64x64" in mine[3] and "tile 256x64x64" in mine[4], mine
        assert "tile 128x64x64" in mine[2] and "tile 128x128x64" in mine[5], mine
        assert "tile 64x64x64" in mine[6], mine
        assert [c.split(":", 1)[1] for c in mine] == [
            c.split(":", 1)[1] for c in configs[:UNITS_PER_DTYPE]], "fp16 tiles differ from bf16's"


@pytest.mark.parametrize("conv_pass,narrow", [("fprop", "k"), ("dgrad", "c")])
def test_64_channel_gemms_run_the_narrow_tile(conv_pass, narrow):
    """A pass whose GEMM N is 64 channels (fprop: k, dgrad: c) runs the 256x64 instantiation,
    every other the 128x128 one; both accept the problem."""
    check = _check_op()
    configs = torch.ops.unet_fast._cutlass_sm90_configs()
    wide, thin = configs[PASSES.index(conv_pass)], configs[3 + PASSES.index(conv_pass)]
    for c, k in ((64, 64), (64, 128), (128, 64), (128, 256)):
        shape = [2, 30, 28, c, k, 1]
        n = {"c": c, "k": k}[narrow]
        got = torch.ops.unet_fast._cutlass_sm90_config_for(conv_pass, shape)
        assert got == (thin if n == 64 else wide), (shape, got)
        assert check(conv_pass, shape) == "", shape


def test_wgrad_runs_the_tile_its_channels_fill():
    """The wgrad's GEMM is k x 9c: 64 output channels run the 64x64 instantiation (a 128-row tile
    would be half empty); otherwise input channels c that are a multiple of 128 run the 128x128
    one (an N tile holds channels of one filter tap), the rest the 128x64 one. Each accepts its
    problems."""
    check = _check_op()
    configs = torch.ops.unet_fast._cutlass_sm90_configs()
    narrow, wide, short = configs[2], configs[5], configs[6]
    for c, k in ((64, 64), (128, 64), (64, 128), (128, 128), (192, 128), (256, 512), (1024, 512)):
        shape = [2, 30, 28, c, k, 1]
        got = torch.ops.unet_fast._cutlass_sm90_config_for("wgrad", shape)
        assert got == (short if k == 64 else wide if c % 128 == 0 else narrow), (shape, got)
        assert check("wgrad", shape) == "", shape


def test_wgrad_split_is_the_triton_rule():
    """The wgrad unit's split-K count (C++ host code) follows the Triton backend's rule
    (utils.wgrad_split, at most 64 slices) on the tiles of the instantiation that runs (64x64 for
    k = 64, else 128 output channels x 128 of 9c where c is a multiple of 128, else x 64; N tiles
    rounded to the 1x2 cluster; 64 pixels per K step): every convolution of both networks, batch
    1-16, on H100/H200 and smaller GPUs. Its split must also keep the deterministic order: the
    count depends on the shape and the SM count only."""
    _check_op()
    from unet_fast.backends.triton_backend import utils as triton_utils
    splits = torch.ops.unet_fast._cutlass_sm90_wgrad_splits
    differ, seen = [], set()
    for padding, size in NETWORKS:
        for c, k, h, w, pad in unet_conv3x3_problems(padding, size)[1:]:
            for n in range(1, 17):
                p, q = h + 2 * pad - 2, w + 2 * pad - 2
                tile_m = 64 if k == 64 else 128
                tile_n = 128 if c % 128 == 0 and k != 64 else 64
                tiles = -(-k // tile_m) * (-(-(-(-9 * c // tile_n)) // 2) * 2)
                k_steps = -(-n * p * q // 64)
                for sms in (132, 114, 78):
                    want = triton_utils.wgrad_split(tiles, k_steps, sms, max_split=64)
                    got = splits([n, h, w, c, k, pad], sms)
                    seen.add(got)
                    if got != want:
                        differ.append(f"n={n} {c}->{k} {h}x{w} pad {pad} sms {sms}: {got} != {want}")
    assert not differ, "\n".join(differ[:20])
    assert len(seen) > 5, seen  # the rule is exercised, not 1 everywhere
    with pytest.raises(RuntimeError, match="sms must be"):
        splits([1, 8, 8, 64, 64, 1], 0)


# ---------------------------------------------------------------- on an sm_90 GPU (the GPU suite)
def _sm90():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


requires_sm90 = pytest.mark.skipif(not _sm90(), reason=f"needs an sm_90 GPU {GPU_ONLY}")


def _within_tolerance(what, ours, ref64, own):
    """docs/design.md: at most twice PyTorch's own error in the dtype (bf16, fp16) plus 1e-3 of the
    reference's scale."""
    ref64 = ref64.detach()
    scale = ref64.abs().max().item()
    bound = 2 * (own.detach().double() - ref64).abs().max().item() + 1e-3 * scale
    err = (ours.double() - ref64).abs().max().item()
    assert err <= bound, f"{what}: max error {err:.4g} > {bound:.4g} (scale {scale:.4g})"


@requires_sm90
@pytest.mark.parametrize("n,h,w,c,k,pad", [(1, 9, 7, 64, 64, 0), (3, 17, 23, 128, 64, 1),
                                           (2, 33, 30, 64, 192, 0), (2, 20, 20, 192, 128, 1)])
@pytest.mark.parametrize("relu_input,grad_masked", [(False, False), (True, True)])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_parity_forward_and_backward(n, h, w, c, k, pad, relu_input, grad_masked, channels_last,
                                         dtype):
    from unet_fast.backends import cutlass_sm90
    _check_op()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, h, w, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    wt = (torch.randn(k, c, 3, 3, device="cuda") * (9 * c) ** -0.5).to(dtype)
    b = (torch.randn(k, device="cuda") * 0.1).to(dtype)
    y = torch.ops.unet_fast._conv3x3_relu_sm90(x, wt, b, pad, relu_input, grad_masked)
    assert y.is_contiguous(memory_format=fmt)
    own_y = cutlass_sm90.reference("fprop", x, wt, b, None, None, pad, dtype)[0]
    _within_tolerance("y", y, cutlass_sm90.reference("fprop", x, wt, b, None, None, pad,
                                                          torch.float64)[0], own_y)
    gy = torch.randn_like(y)
    g_in = gy * (y > 0) if grad_masked else gy
    dx, dw, db = torch.ops.unet_fast._conv3x3_relu_sm90_backward(
        g_in, y, x, wt, pad, [True, True, True], relu_input, grad_masked)
    ref = {t: cutlass_sm90.reference("dgrad", x, wt, b, gy, y, pad, t) for t in (torch.float64, dtype)}
    i = 0 if relu_input else 1
    _within_tolerance("dx", dx, ref[torch.float64][i], ref[dtype][i])
    ref = {t: cutlass_sm90.reference("wgrad", x, wt, b, gy, y, pad, t) for t in (torch.float64, dtype)}
    _within_tolerance("dweight", dw, ref[torch.float64][0], ref[dtype][0])
    _within_tolerance("dbias", db, ref[torch.float64][1], ref[dtype][1])
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == dtype


@requires_sm90
def test_gpu_first_run_check_passes_and_the_backend_uses_the_units():
    from unet_fast import _dispatch
    from unet_fast.backends import cutlass_sm90
    _check_op()
    cutlass_sm90.reset()
    assert cutlass_sm90.verdict(cutlass_sm90.UNITS, torch.device("cuda")) is None
    assert cutlass_sm90.verdict(cutlass_sm90.UNITS, torch.device("cuda"), torch.float16) is None
    x = torch.randn(2, 64, 30, 30, device="cuda", dtype=torch.bfloat16,
                    requires_grad=True).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 128, 3).cuda().to(torch.bfloat16)
    assert cutlass_sm90.wanted(x, conv.weight, 0)
    y = uf.ops.conv3x3_relu(x, conv.weight, conv.bias, 0, backend="cuda")
    assert _dispatch.last_used("conv3x3_relu") == "cuda"
    y.float().square().sum().backward()
    assert conv.weight.grad is not None and x.grad is not None


@requires_sm90
def test_gpu_wgrad_is_deterministic():
    _check_op()
    x = torch.randn(4, 64, 66, 66, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    wt = (torch.randn(64, 64, 3, 3, device="cuda") * 0.04).to(torch.bfloat16)
    y = torch.ops.unet_fast._conv3x3_relu_sm90(x, wt, None, 0, False, False)
    gy = torch.randn_like(y)
    runs = [torch.ops.unet_fast._conv3x3_relu_sm90_backward(gy, y, x, wt, 0, [False, True, True], False,
                                                            False)[1] for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def _up_operands(n, h, w, c, k, dtype, grad_layout):
    """An up-conv's x (NCHW), weight (channels_last, as the model's) and output gradient: dense,
    the upper channel slice of a concat's (read in place), or NCHW."""
    x = torch.randn(n, c, h, w, device="cuda", dtype=dtype)
    wt = (torch.randn(c, k, 2, 2, device="cuda") * (4 * k) ** -0.5).to(dtype).contiguous(
        memory_format=torch.channels_last)
    cat = torch.randn(n, 2 * k, 2 * h, 2 * w, device="cuda", dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    gy = {"channels_last": cat[:, k:].contiguous(memory_format=torch.channels_last),
          "concat_slice": cat[:, k:], "nchw": cat[:, k:].contiguous()}[grad_layout]
    return x, wt, gy


@requires_sm90
@pytest.mark.parametrize("n,h,w,c,k", [(1, 7, 9, 128, 64), (2, 13, 11, 256, 128), (3, 28, 28, 128, 64)])
@pytest.mark.parametrize("relu_input", [False, True])
@pytest.mark.parametrize("grad_layout", ["channels_last", "concat_slice", "nchw"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_parity_up_conv_dgrad(n, h, w, c, k, relu_input, grad_layout, dtype):
    """The up-conv's dgrad unit against the float64 transposed convolution's input gradient:
    masked or not, with the output gradient dense, as the concat gradient's channel slice (read
    in place), or NCHW (made NHWC first); and through the cuda backend's up_concat."""
    from unet_fast.backends import cutlass_sm90
    _check_op()
    x, wt, gy = _up_operands(n, h, w, c, k, dtype, grad_layout)
    x = x.contiguous(memory_format=torch.channels_last)
    dx = torch.ops.unet_fast._conv_transpose2x2_dgrad_sm90(gy, x, wt, relu_input)
    assert dx.dtype == dtype and dx.shape == x.shape
    i = 0 if relu_input else 1
    _within_tolerance("dx", dx, cutlass_sm90.reference_up(x, wt, gy, torch.float64)[i],
                      cutlass_sm90.reference_up(x, wt, gy, dtype)[i])


@requires_sm90
# (k = 64 runs the 256x64 instantiation: 63 pixels, one partial tile; 286, two)
@pytest.mark.parametrize("n,h,w,c,k", [(1, 7, 9, 128, 64), (2, 13, 11, 128, 64), (2, 13, 11, 256, 128),
                                       (3, 28, 28, 128, 192)])
@pytest.mark.parametrize("skip", [None, "same", "crop"])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_parity_up_conv_fprop(n, h, w, c, k, skip, layout, bias, dtype):
    """The up-conv's forward unit (four 1x1 launches into every other pixel) against the float64
    transposed convolution: alone or as the upper channels of the concat buffer beside a skip
    (the same size, or center-cropped from a larger one), x channels_last or NCHW (the output
    in x's format), with and without bias."""
    _check_op()
    x, wt, _ = _up_operands(n, h, w, c, k, dtype, "nchw")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    b = torch.randn(k, device="cuda", dtype=dtype) if bias else None
    extra = {None: 0, "same": 0, "crop": 6}[skip]
    s = (None if skip is None else torch.randn(n, 32, 2 * h + extra, 2 * w + extra + 2, device="cuda",
                                               dtype=dtype).contiguous(memory_format=torch.channels_last))
    out = torch.ops.unet_fast._up_concat_sm90(s, x, wt, b)

    def ref(dt):
        y = F.conv_transpose2d(x.to(dt), wt.to(dt), None if b is None else b.to(dt), stride=2)
        if s is None:
            return y
        top, left = extra // 2, (extra + 2) // 2
        return torch.cat([s[:, :, top:top + 2 * h, left:left + 2 * w].to(dt), y], 1)
    assert out.dtype == dtype and out.shape == ref(dtype).shape
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    _within_tolerance("y", out, ref(torch.float64), ref(dtype))


@requires_sm90
@pytest.mark.parametrize("n,h,w,c,k", [(1, 7, 9, 128, 64), (2, 13, 11, 256, 128), (4, 40, 36, 128, 64),
                                       (3, 28, 28, 256, 192)])
@pytest.mark.parametrize("grad_layout", ["channels_last", "concat_slice", "nchw"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_parity_up_conv_wgrad(n, h, w, c, k, grad_layout, dtype):
    """The up-conv's wgrad (the 3x3 wgrad's kernels on the strided 2x2 problem) against the float64
    transposed convolution's weight and bias gradients: its 128x64 (k = 64, 192) and 128x128
    (k = 128) instantiations, unsplit and split (5760 pixels of x: 90 K steps), the output
    gradient dense, the concat's channel slice (read in place) or NCHW; x NCHW (made dense NHWC
    for the unit); and bit-identical over repeated runs (a fixed split order)."""
    from unet_fast.backends import cutlass_sm90
    _check_op()
    x, wt, gy = _up_operands(n, h, w, c, k, dtype, grad_layout)
    dw, db = torch.ops.unet_fast._conv_transpose2x2_wgrad_sm90(gy, x, wt, [True, True])
    assert dw.dtype == db.dtype == dtype and dw.shape == wt.shape and db.shape == (k,)
    for name, ours, r, own in zip(("dweight", "dbias"), (dw, db),
                                  cutlass_sm90.reference_up_wgrad(x, wt, gy, torch.float64),
                                  cutlass_sm90.reference_up_wgrad(x, wt, gy, dtype)):
        _within_tolerance(name, ours, r, own)
    again = torch.ops.unet_fast._conv_transpose2x2_wgrad_sm90(gy, x, wt, [True, False])[0]
    assert torch.equal(again, dw)


@requires_sm90
def test_gpu_up_dgrad_first_run_check_passes_and_up_concat_uses_it():
    from unet_fast.backends import cutlass_sm90
    _check_op()
    cutlass_sm90.reset()
    for dtype in (torch.bfloat16, torch.float16):
        assert cutlass_sm90.verdict(cutlass_sm90.UP_UNITS, torch.device("cuda"), dtype) is None
    x = torch.randn(2, 128, 14, 14, device="cuda", dtype=torch.bfloat16).relu().contiguous(
        memory_format=torch.channels_last).requires_grad_()
    up = torch.nn.ConvTranspose2d(128, 64, 2, stride=2).cuda().to(torch.bfloat16).to(
        memory_format=torch.channels_last)
    skip = torch.randn(2, 64, 30, 30, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert cutlass_sm90.wanted_up(x, up.weight)
    out = uf.ops.up_concat(skip, x, up.weight, up.bias, backend="cuda")
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, (skip, x, up.weight, up.bias), g)

    def torch_grads(dtype):
        xr, wr, br, sr = (t.detach().to(dtype).requires_grad_() for t in (x, up.weight, up.bias, skip))
        out = torch.cat([sr[:, :, 1:29, 1:29], torch.nn.functional.conv_transpose2d(xr, wr, br, 2)], 1)
        return torch.autograd.grad(out, (sr, xr, wr, br), g.to(dtype))
    for name, a, r, own in zip(("dskip", "dx", "dweight", "dbias"), ours, torch_grads(torch.float64),
                               torch_grads(torch.bfloat16)):
        _within_tolerance(name, a, r, own)
