"""The reference network (unet_fast/reference.py, the paper's figure in plain PyTorch) and the fast
UNet (unet_fast/model.py) against it on the torch backend: architecture and parameter count,
center-cropped skips, identical state_dicts both ways, float64 equality forward and backward, and
bit equality under autocast."""
import pytest
import torch
import torch.nn.functional as F

import unet_fast as uf
from unet_fast._utils import memory_format_of


# ------------------------------------------------------------------ the reference network
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


def test_crop_to_output_on_the_paper_size():
    m = uf.reference.UNet()
    target = torch.arange(572 * 572).reshape(1, 572, 572)
    cropped = m.crop_to_output(target)
    assert cropped.shape == (1, 388, 388)
    assert torch.equal(cropped, target[:, 92:480, 92:480])
    # any leading dimensions, any dtype, non-square legal sizes; a view
    w = torch.rand(2, 3, 556, 572)
    assert m.crop_to_output(w).shape == (2, 3, 372, 388)
    assert m.crop_to_output(w).data_ptr() == w[..., 92:464, 92:480].data_ptr()
    assert torch.equal(uf.reference.UNet(padding="same").crop_to_output(w[..., :512, :512]),
                       w[..., :512, :512])
    with pytest.raises(ValueError, match="not legal.*nearest legal sizes"):
        m.crop_to_output(torch.zeros(1, 570, 572))
    with pytest.raises(ValueError, match="last two dimensions"):
        m.crop_to_output(torch.zeros(5))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_crop_to_output_is_centered_where_the_output_is(depth):
    """The output covers the center of the input: with mirror-symmetric weights, mirroring the
    input mirrors the output exactly, so the output's pixels sit symmetrically inside the input,
    which is what crop_to_output cuts out (equal margins, never off by one)."""
    torch.manual_seed(0)
    m = uf.reference.UNet(1, 1, base_channels=2, depth=depth).double()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                w = mod.weight
                w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)
    for size in m.legal_input_sizes(70) + m.legal_input_sizes(150):
        x = torch.rand(1, 1, size, size + 2**depth, dtype=torch.float64)
        y = m(x)
        for dims in ((-1,), (-2,)):
            torch.testing.assert_close(m(x.flip(dims)), y.flip(dims), rtol=1e-12, atol=1e-12)
        coords = torch.arange(x.shape[-1], dtype=torch.float64).expand(x.shape[-2], -1)
        c = m.crop_to_output(coords)
        assert c.shape == y.shape[-2:]
        # mirrored coordinates land on mirrored coordinates: the crop is centered
        torch.testing.assert_close(c.flip(-1), (x.shape[-1] - 1) - c)
