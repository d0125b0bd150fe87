"""The torch backend (unet_fast/backends/torch_backend.py), PyTorch's own ops: the fallback and, in
float64, the oracle of every other backend's tests (parity.REFERENCE writes the same ops again in
torch.nn.functional). Its ops equal torch.nn.functional bit for bit and keep the memory format."""
import torch
import torch.nn.functional as F

import unet_fast as uf

from parity import REFERENCE


def test_torch_ops_match_functional():
    x = torch.randn(3, 5, 17, 23, dtype=torch.float64)
    w3, b = torch.randn(7, 5, 3, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    r = REFERENCE
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
