"""Bad input to the ops (unet_fast/ops.py) and the model: a clear ValueError/TypeError that names
the argument and the fix (wrong rank, channels, dtype, device, empty tensors, sizes, padding,
config and backend names); nothing silently wrong. The C++ checks of the extension's own ops are in
test_cuda_backend.py."""
import pytest
import torch

import unet_fast as uf


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


def test_crop_concat_bad_shapes():
    with pytest.raises(ValueError, match="at least as large"):
        uf.ops.crop_concat(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 6, 4))
    with pytest.raises(ValueError, match="batch"):
        uf.ops.crop_concat(torch.randn(2, 2, 8, 8), torch.randn(1, 2, 6, 4))


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


@pytest.mark.parametrize("bad", [(0, 4), (7, 4), (3,), (3.0, 4), "3x4"])
def test_conv3x3_relu_pool_bad_skip_crop(bad):
    """The model's skip crop must fit the conv output (here 6x6)."""
    x, w = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match=r"_skip_hw must be None or \(H, W\) ints"):
        uf.ops.conv3x3_relu_pool(x, w, None, 0, _skip_hw=bad)


def test_concat_conv3x3_relu_bad_input():
    skip, up = torch.randn(1, 4, 10, 10), torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"weight must have shape \(C_out, 8, 3, 3\)"):
        uf.ops.concat_conv3x3_relu(skip, up, torch.randn(5, 4, 3, 3))
    with pytest.raises(ValueError, match="at least as large"):
        uf.ops.concat_conv3x3_relu(torch.randn(1, 4, 6, 10), up, torch.randn(5, 8, 3, 3))
    with pytest.raises(TypeError, match="skip is torch.float64 but up is torch.float32"):
        uf.ops.concat_conv3x3_relu(skip.double(), up, torch.randn(5, 8, 3, 3))
    with pytest.raises(ValueError, match="padding must be 0"):
        uf.ops.concat_conv3x3_relu(skip, up, torch.randn(5, 8, 3, 3), None, 2)
    # a valid call: the reference's numbers, the crop taken from the skip's center
    w = torch.randn(5, 8, 3, 3)
    ref = torch.relu(torch.nn.functional.conv2d(torch.cat([skip[..., 1:9, 1:9], up], 1), w))
    torch.testing.assert_close(uf.ops.concat_conv3x3_relu(skip, up, w), ref)


def test_conv3x3_relu_conv1x1_bad_input():
    x, w, hw = torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(2, 6, 1, 1)
    with pytest.raises(ValueError, match=r"head_weight must have shape \(classes, 6, 1, 1\)"):
        uf.ops.conv3x3_relu_conv1x1(x, w, None, torch.randn(2, 5, 1, 1))
    with pytest.raises(ValueError, match=r"head_weight must have shape \(classes, 6, 1, 1\)"):
        uf.ops.conv3x3_relu_conv1x1(x, w, None, torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match=r"head_bias must have shape \(2,\) to match the "
                                         r"head_weight's output channels"):
        uf.ops.conv3x3_relu_conv1x1(x, w, None, hw, torch.randn(6))
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        uf.ops.conv3x3_relu_conv1x1(x, w, torch.randn(2), hw)
    with pytest.raises(TypeError, match="head_weight is torch.float64 but x is torch.float32"):
        uf.ops.conv3x3_relu_conv1x1(x, w, None, hw.double())
    with pytest.raises(TypeError, match="head_weight must be a torch.Tensor"):
        uf.ops.conv3x3_relu_conv1x1(x, w, None, None)
    with pytest.raises(ValueError, match="padding must be 0"):
        uf.ops.conv3x3_relu_conv1x1(x, w, None, hw, None, 2)
    # a valid call: the reference's numbers
    hb = torch.randn(2)
    ref = torch.nn.functional.conv2d(torch.relu(torch.nn.functional.conv2d(x, w, padding=1)),
                                     hw, hb)
    torch.testing.assert_close(uf.ops.conv3x3_relu_conv1x1(x, w, None, hw, hb, 1), ref)
