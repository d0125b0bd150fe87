"""The foundation: size arithmetic, the reference network, the fast model on the torch backend,
state_dict compatibility, the dispatch layer and every bad input it must reject."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import unet_fast as uf
from unet_fast import sizes
from unet_fast._utils import memory_format_of


# ------------------------------------------------------------------ size arithmetic
def test_paper_sizes():
    assert sizes.output_size((572, 572)) == (388, 388)
    assert uf.UNet(1, 2).output_size((572, 572)) == (388, 388)
    assert uf.reference.UNet(1, 2).output_size((572, 572)) == (388, 388)


@pytest.mark.parametrize("b", [4, 5, 10, 27])
def test_valid_depth4_rule(b):
    # legal inputs 16*b + 124 give outputs 16*b - 60
    assert sizes.output_size((16 * b + 124, 16 * b + 124)) == (16 * b - 60, 16 * b - 60)
    for off in (1, 2, 8, 15):
        with pytest.raises(ValueError, match="nearest legal sizes"):
            sizes.output_size((16 * b + 124 + off, 16 * b + 124))


def test_legal_sizes_are_exactly_the_rule():
    legal = [s for s in range(1, 700) if sizes._axis_output(s, 4, "valid") is not None]
    assert legal == [16 * b + 124 for b in range(4, 36)]
    assert sizes.min_input_size() == 188


def test_illegal_size_message_names_neighbours():
    with pytest.raises(ValueError) as e:
        uf.UNet(1, 2).output_size((570, 572))
    assert "556" in str(e.value) and "572" in str(e.value) and "height" in str(e.value)
    assert uf.UNet(1, 2).legal_input_sizes(570) == (556, 572)
    assert uf.UNet(1, 2).legal_input_sizes(572) == (572,)


def test_same_sizes():
    m = uf.UNet(3, 2, padding="same")
    assert m.output_size((512, 256)) == (512, 256)
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth = 16"):
        m.output_size((520, 512))
    assert sizes.nearest_legal_sizes(520, 4, "same") == (512, 528)


def test_input_too_small_for_depth():
    with pytest.raises(ValueError, match="nearest legal sizes: 188"):
        sizes.output_size((100, 188))
    with pytest.raises(ValueError, match="nearest legal sizes: 16"):
        sizes.output_size((8, 16), padding="same")


def test_input_size_for_output():
    assert sizes.input_size_for_output(388) == 572
    for b in range(4, 20):
        assert sizes.output_size(sizes.input_size_for_output(16 * b - 60)) == (16 * b - 60,) * 2
    with pytest.raises(ValueError, match="nearest reachable outputs: 372, 388"):
        sizes.input_size_for_output(380)


# ------------------------------------------------------------------ the network
def _convs(model):
    return [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]


@pytest.mark.parametrize("cls", [uf.UNet, uf.reference.UNet])
def test_paper_architecture(cls):
    m = cls(in_channels=1, num_classes=2)
    assert sum(p.numel() for p in m.parameters()) == 31_030_658
    convs = _convs(m)
    assert len(convs) == 23
    assert sum(isinstance(c, torch.nn.ConvTranspose2d) for c in convs) == 4
    assert sum(isinstance(c, torch.nn.Conv2d) and c.kernel_size == (3, 3) for c in convs) == 18
    assert sum(isinstance(c, torch.nn.Conv2d) and c.kernel_size == (1, 1) for c in convs) == 1
    # channels double down the contracting path: 64 ... 1024
    assert [c.out_channels for c in convs if getattr(c, "kernel_size", None) == (3, 3)][:10] == \
        [64, 64, 128, 128, 256, 256, 512, 512, 1024, 1024]


def test_reference_forward_on_paper_size_is_388():
    # A cheap forward at the paper's size (tiny width) checks the cropping arithmetic end to end.
    m = uf.reference.UNet(1, 2, base_channels=2)
    with torch.no_grad():
        assert m(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)


def test_reference_skips_are_center_cropped_skip_first():
    # Hand-check one decoder step: the concat is [center_crop(skip), up] with offset (s-u)//2.
    from unet_fast.reference import Up
    up = Up(4, 2, 0)
    skip = torch.randn(1, 2, 13, 12)
    x = torch.randn(1, 4, 3, 3)
    seen = {}
    up.conv.register_forward_pre_hook(lambda mod, inp: seen.setdefault("cat", inp[0]))
    up(x, skip)
    cat = seen["cat"]
    u = F.conv_transpose2d(x, up.up.weight, up.up.bias, stride=2)
    assert torch.equal(cat[:, :2], skip[:, :, 3:9, 3:9])  # (13-6)//2 = 3, (12-6)//2 = 3
    assert torch.equal(cat[:, 2:], u)


def test_same_model_keeps_size():
    m = uf.reference.UNet(3, 4, base_channels=4, depth=3, padding="same")
    assert m(torch.randn(2, 3, 32, 48)).shape == (2, 4, 32, 48)


# ------------------------------------------------------------------ fast model == reference
def test_state_dict_round_trip_both_ways():
    fast, ref = uf.UNet(1, 2), uf.reference.UNet(1, 2)
    assert [(k, v.shape) for k, v in fast.state_dict().items()] == \
        [(k, v.shape) for k, v in ref.state_dict().items()]
    fast.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(fast.state_dict(), strict=True)
    for (k, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k


def test_same_seed_same_weights():
    torch.manual_seed(3)
    fast = uf.UNet(3, 5, base_channels=4, depth=2)
    torch.manual_seed(3)
    ref = uf.reference.UNet(3, 5, base_channels=4, depth=2)
    for (k, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k


CONFIGS = [
    dict(in_channels=3, num_classes=5, base_channels=4, depth=2, padding="valid", size=(44, 60), batch=3),
    dict(in_channels=1, num_classes=2, base_channels=4, depth=3, padding="valid", size=(92, 108), batch=2),
    dict(in_channels=3, num_classes=5, base_channels=4, depth=2, padding="same", size=(12, 20), batch=3),
    dict(in_channels=2, num_classes=3, base_channels=5, depth=3, padding="same", size=(24, 16), batch=2),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['padding']}-d{c['depth']}-c{c['base_channels']}")
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_backend_equals_reference_float64(cfg, channels_last):
    cfg = dict(cfg)
    size, batch = cfg.pop("size"), cfg.pop("batch")
    ref = uf.reference.UNet(**cfg).double()
    fast = uf.UNet(**cfg, backend="torch").double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(batch, cfg["in_channels"], *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y_ref, y = ref(x), fast(x)
    assert y.shape == (batch, cfg["num_classes"], *fast.output_size(size))
    # (with 1 input channel both layouts have the same strides: the input then counts as NCHW)
    assert y.is_contiguous(memory_format=memory_format_of(x))
    assert memory_format_of(x) == (torch.channels_last if channels_last and cfg["in_channels"] > 1
                                   else torch.contiguous_format)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    y_ref.backward(g)
    y.backward(g)
    for (name, p), (_, q) in zip(fast.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    assert set(fast.backend_report().values()) == {"torch"}
    assert len(fast.backend_report()) == 2 * cfg["depth"] + 2 + 3 * cfg["depth"] + 1


# ------------------------------------------------------------------ ops vs F, torch backend
def _ref_ops():
    return {
        "conv3x3_relu": lambda x, w, b, p: F.relu(F.conv2d(x, w, b, padding=p)),
        "conv1x1": lambda x, w, b: F.conv2d(x, w, b),
        "conv_transpose2x2": lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2),
        "max_pool2x2": lambda x: F.max_pool2d(x, 2, 2),
    }


def test_torch_ops_match_functional():
    x = torch.randn(3, 5, 17, 23, dtype=torch.float64)
    w3, b = torch.randn(7, 5, 3, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    r = _ref_ops()
    for p in (0, 1):
        assert torch.equal(uf.ops.conv3x3_relu(x, w3, b, p, backend="torch"), r["conv3x3_relu"](x, w3, b, p))
        y, pooled = uf.ops.conv3x3_relu_pool(x, w3, None, p, backend="torch")
        assert torch.equal(pooled, F.max_pool2d(y, 2, 2))
    assert torch.equal(uf.ops.max_pool2x2(x), r["max_pool2x2"](x))
    w1 = torch.randn(4, 5, 1, 1, dtype=torch.float64)
    assert torch.equal(uf.ops.conv1x1(x, w1, None), r["conv1x1"](x, w1, None))
    wt = torch.randn(5, 6, 2, 2, dtype=torch.float64)
    up = uf.ops.conv_transpose2x2(x, wt, None)
    assert torch.equal(up, r["conv_transpose2x2"](x, wt, None))
    skip = torch.randn(3, 2, 40, 50, dtype=torch.float64)
    cat = uf.ops.up_concat(skip, x, wt, None)
    assert torch.equal(cat, uf.ops.crop_concat(skip, up))
    assert torch.equal(cat[:, :2], skip[:, :, 3:37, 2:48])


def test_ops_keep_memory_format():
    x = torch.randn(2, 4, 10, 12).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 4, 3, 3)
    for y in (uf.ops.conv3x3_relu(x, w), uf.ops.max_pool2x2(x), uf.ops.crop_concat(x, x[:, :, 1:9, 1:9]),
              uf.ops.conv1x1(x, torch.randn(3, 4, 1, 1)), uf.ops.conv_transpose2x2(x, torch.randn(4, 2, 2, 2))):
        assert y.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------ dispatch layer
def test_available_reports_every_backend():
    av = uf.backends.available()
    assert set(av) == {"torch", "triton", "cuda"}
    assert av["torch"] is None
    for name, reason in av.items():
        assert reason is None or (isinstance(reason, str) and reason)


def test_use_backend_and_environment(monkeypatch):
    from unet_fast import _dispatch
    x = torch.randn(1, 2, 4, 4)
    assert _dispatch.requested_backend() == "auto"
    with uf.use_backend("torch"):
        assert _dispatch.requested_backend() == "torch"
        assert _dispatch.requested_backend("cuda") == "cuda"  # the argument wins
    monkeypatch.setenv("UNET_FAST_BACKEND", "torch")
    assert _dispatch.requested_backend() == "torch"
    with uf.use_backend("auto"):
        assert _dispatch.requested_backend() == "auto"  # the context beats the environment
    monkeypatch.setenv("UNET_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="UNET_FAST_BACKEND"):
        uf.ops.max_pool2x2(x)


def test_auto_on_cpu_is_torch():
    from unet_fast import _dispatch
    uf.ops.max_pool2x2(torch.randn(1, 2, 4, 4))
    assert _dispatch.last_used("max_pool2x2") == "torch"


def test_registering_a_backend_is_enough(monkeypatch):
    """Adding an implementation is a matter of registering it: the op then reaches it."""
    from unet_fast import _dispatch
    calls = []
    saved = dict(_dispatch._impls["max_pool2x2"])
    monkeypatch.setitem(_dispatch._backend_reason, "triton", lambda: None)
    try:
        _dispatch.register_impl("max_pool2x2", "triton",
                                lambda x: calls.append(x) or F.max_pool2d(x, 2, 2),
                                supports=lambda x: None if x.dtype == torch.float32 else "float32 only")
        x = torch.randn(1, 2, 4, 4)
        uf.ops.max_pool2x2(x, backend="triton")
        assert len(calls) == 1
        with pytest.raises(uf.BackendUnavailable, match="float32 only"):
            uf.ops.max_pool2x2(x.double(), backend="triton")
    finally:
        _dispatch._impls["max_pool2x2"].clear()
        _dispatch._impls["max_pool2x2"].update(saved)


def test_auto_never_raises_for_a_broken_backend(monkeypatch):
    from unet_fast import _dispatch
    monkeypatch.setitem(_dispatch._backend_reason, "cuda", lambda: 1 / 0)
    assert "failed" in uf.backends.available()["cuda"]
    assert uf.ops.max_pool2x2(torch.randn(1, 1, 2, 2)).shape == (1, 1, 1, 1)


# ------------------------------------------------------------------ bad input
def test_bad_rank():
    with pytest.raises(ValueError, match="x must be a 4-D tensor"):
        uf.ops.conv3x3_relu(torch.randn(2, 3, 8), torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="x must be a 4-D tensor"):
        uf.UNet(1, 2, base_channels=2)(torch.randn(1, 572, 572))


def test_channel_mismatch():
    with pytest.raises(ValueError, match="x has 2 channels but weight expects 3"):
        uf.ops.conv3x3_relu(torch.randn(1, 2, 8, 8), torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="in_channels=1"):
        uf.UNet(1, 2, base_channels=2)(torch.randn(1, 3, 188, 188))
    with pytest.raises(ValueError, match="bias must have shape \\(4,\\)"):
        uf.ops.conv1x1(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 1, 1), torch.randn(5))


def test_mixed_dtype_and_device():
    with pytest.raises(TypeError, match="weight is torch.float64 but x is torch.float32"):
        uf.ops.conv3x3_relu(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight is on meta but x is on cpu"):
        uf.ops.conv1x1(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 1, 1, device="meta"))
    with pytest.raises(TypeError, match="x must be float32"):
        uf.ops.max_pool2x2(torch.zeros(1, 1, 4, 4, dtype=torch.int64))


def test_empty_tensor():
    with pytest.raises(ValueError, match="x is empty"):
        uf.ops.max_pool2x2(torch.randn(0, 3, 4, 4))
    with pytest.raises(ValueError, match="batch size 0|is empty"):
        uf.UNet(1, 2, base_channels=2)(torch.randn(0, 1, 188, 188))


def test_illegal_spatial_size_in_model():
    m = uf.UNet(1, 2, base_channels=2)
    with pytest.raises(ValueError, match="nearest legal sizes: 556, 572"):
        m(torch.randn(1, 1, 570, 572))
    ms = uf.UNet(1, 2, base_channels=2, padding="same")
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth = 16"):
        ms(torch.randn(1, 1, 40, 48))
    with pytest.raises(ValueError, match="not legal"):
        m(torch.randn(1, 1, 60, 60))  # too small for depth 4


def test_bad_config_and_backend_names():
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same'"):
        uf.UNet(1, 2, padding="reflect")
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same'"):
        uf.reference.UNet(1, 2, padding=1)
    with pytest.raises(ValueError, match="backend must be one of"):
        uf.UNet(1, 2, backend="cudnn")
    with pytest.raises(ValueError, match="backend must be one of"):
        uf.ops.max_pool2x2(torch.randn(1, 1, 2, 2), backend="gpu")
    with pytest.raises(ValueError, match="depth must be a positive int"):
        uf.UNet(1, 2, depth=0)
    with pytest.raises(ValueError, match="padding must be 0"):
        uf.ops.conv3x3_relu(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3), padding=2)


def test_explicit_backend_that_cannot_run_raises():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    reasons = uf.backends.available()
    for name in ("triton", "cuda"):
        if reasons[name] is not None:
            with pytest.raises(uf.BackendUnavailable) as e:
                uf.ops.max_pool2x2(x, backend=name)
            assert reasons[name] in str(e.value) and "backend='auto'" in str(e.value)
    assert issubclass(uf.BackendUnavailable, RuntimeError)


def test_crop_concat_bad_shapes():
    with pytest.raises(ValueError, match="at least as large"):
        uf.ops.crop_concat(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 6, 4))
    with pytest.raises(ValueError, match="batch"):
        uf.ops.crop_concat(torch.randn(2, 2, 8, 8), torch.randn(1, 2, 6, 4))


def test_package_imports_without_extension():
    """The pure-Python package works when _C is absent: cuda says how to build it."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'unet_fast._C': raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, unet_fast as uf\n"
        "r = uf.backends.available()['cuda']\n"
        "assert r and 'pip install' in r, r\n"
        "try:\n"
        "    uf.ops.crop_concat(torch.randn(1,1,4,4), torch.randn(1,1,2,2), backend='cuda')\n"
        "except uf.BackendUnavailable as e: print('OK', e)\n"
        "m = uf.UNet(1, 2, base_channels=2, depth=2)\n"
        "print(m(torch.randn(1, 1, 44, 44)).shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "torch.Size([1, 2, 4, 4])" in out.stdout


def test_fast_model_under_autocast_equals_reference():
    """Autocast casts the convolutions' inputs exactly as PyTorch's own ops would: the torch backend
    of the fast model gives the reference's numbers bit for bit, forward and backward."""
    torch.manual_seed(0)
    ref = uf.reference.UNet(2, 3, base_channels=4, depth=2)
    fast = uf.UNet(2, 3, base_channels=4, depth=2, backend="torch")
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 2, 44, 44)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, y = ref(x), fast(x)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    y.float().sum().backward()
    y_ref.float().sum().backward()
    for p, q in zip(fast.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_model_input_that_does_not_match_the_parameters():
    m = uf.UNet(1, 2, base_channels=2, depth=2).double()
    with pytest.raises(TypeError, match=r"parameters are torch.float64; use x.to\(torch.float64\) or model.to"):
        m(torch.randn(1, 1, 44, 44))
    with pytest.raises(ValueError, match="model.to\\(x.device\\)"):
        uf.UNet(1, 2, base_channels=2, depth=2).to("meta")(torch.randn(1, 1, 44, 44))
    assert m.output_size((__import__("numpy").int64(188), 188)) == m.output_size((188, 188))


def test_float_padding_and_mixed_dtype_up_concat():
    with pytest.raises(ValueError, match="padding must be 0"):
        uf.ops.conv3x3_relu(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3), padding=1.0)
    skip = torch.randn(1, 2, 10, 10, dtype=torch.float64)
    x, w = torch.randn(1, 3, 4, 4), torch.randn(3, 2, 2, 2)
    out = uf.ops.up_concat(skip, x, w)
    assert out.dtype == torch.float64  # promoted like torch.cat, never lowered
    assert torch.equal(out, uf.ops.crop_concat(skip, uf.ops.conv_transpose2x2(x, w)))


def test_conv_tf32_setting_follows_both_pytorch_apis(fp32_precision_restored, monkeypatch):
    from unet_fast._utils import conv_allows_tf32
    from unet_fast.backends.triton_backend import utils as tutils

    b = torch.backends
    for legacy in (True, False):
        b.cudnn.allow_tf32 = legacy
        assert conv_allows_tf32() is legacy
    # the new API, mixed with the legacy one: PyTorch's own legacy getter raises here
    b.cudnn.rnn.fp32_precision = "tf32"
    b.cudnn.conv.fp32_precision = "ieee"
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        b.cudnn.allow_tf32
    assert conv_allows_tf32() is False
    monkeypatch.setattr(tutils, "INTERPRET", False)  # what a GPU run would ask
    assert tutils.dot_precision(torch.float32) == "ieee"
    b.cudnn.conv.fp32_precision = "tf32"
    assert conv_allows_tf32() is True and tutils.dot_precision(torch.float32) == "tf32"
    assert tutils.dot_precision(torch.bfloat16) == "ieee"
    b.cudnn.conv.fp32_precision = "none"  # defers to cuDNN's, then the global setting
    b.cudnn.fp32_precision = "tf32"
    assert conv_allows_tf32() is True
    b.cudnn.fp32_precision = "none"
    assert conv_allows_tf32() is False
