"""The build chain's first op: crop_concat as torch.ops.unet_fast.crop_concat through the C++
extension (CPU kernel here; the CUDA kernel in the GPU suite)."""
import pytest
import torch

import unet_fast as uf
from conftest import requires_cuda

ext_reason = uf.backends.available()["cuda"]
pytestmark = pytest.mark.skipif(
    ext_reason is not None and not __import__("os").environ.get("UNET_FAST_REQUIRE_EXTENSION"),
    reason=f"extension not built: {ext_reason}")


def test_extension_is_loaded_when_required():
    # .ci/run sets UNET_FAST_REQUIRE_EXTENSION=1: there a missing extension is a failure, not a skip.
    assert ext_reason is None, ext_reason
    assert hasattr(torch.ops.unet_fast, "crop_concat")


def _ref(skip, up):
    h, w = up.shape[-2:]
    t, l = (skip.shape[-2] - h) // 2, (skip.shape[-1] - w) // 2
    return torch.cat([skip[..., t:t + h, l:l + w], up], 1)


SHAPES = [((3, 5, 17, 23), (3, 3, 13, 11)), ((1, 1, 8, 8), (1, 2, 8, 8)), ((2, 16, 9, 10), (2, 8, 4, 4)),
          ((2, 3, 6, 7), (2, 17, 5, 5))]


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontiguous"])
def test_crop_concat_cpu_matches_reference(shapes, dtype, layout):
    skip = torch.randn(*shapes[0]).to(dtype)
    up = torch.randn(*shapes[1]).to(dtype)
    if layout == "channels_last":
        skip, up = (t.contiguous(memory_format=torch.channels_last) for t in (skip, up))
    elif layout == "noncontiguous":
        skip = torch.randn(shapes[0][0], shapes[0][1] * 2, *shapes[0][2:]).to(dtype)[:, ::2]
        up = up.transpose(2, 3).contiguous().transpose(2, 3)
    skip.requires_grad_(True)
    up.requires_grad_(True)
    out = uf.ops.crop_concat(skip, up, backend="cuda")
    ref = _ref(skip.detach(), up.detach())
    assert torch.equal(out, ref)  # a copy is exact
    if layout == "channels_last" and up.shape[1] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(out)
    gs, gu = torch.autograd.grad(out, (skip, up), g)
    s2, u2 = skip.detach().clone().requires_grad_(), up.detach().clone().requires_grad_()
    rs, ru = torch.autograd.grad(_ref(s2, u2), (s2, u2), g)
    assert torch.equal(gs, rs) and torch.equal(gu, ru)


def test_crop_concat_gradcheck_float64():
    skip = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, u: uf.ops.crop_concat(s, u, backend="cuda"), (skip, up))


def test_crop_concat_opcheck():
    skip = torch.randn(2, 3, 7, 6, requires_grad=True)
    up = torch.randn(2, 2, 4, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.unet_fast.crop_concat.default, (skip, up))


def test_crop_concat_compiles_fullgraph():
    skip, up = torch.randn(2, 3, 7, 6), torch.randn(2, 2, 4, 5)
    f = torch.compile(lambda s, u: torch.ops.unet_fast.crop_concat(s, u) * 2, fullgraph=True,
                      backend="aot_eager")
    assert torch.equal(f(skip, up), 2 * _ref(skip, up))


def test_torch_check_messages_name_arguments():
    with pytest.raises(RuntimeError, match="skip .* must be at least as large as up"):
        torch.ops.unet_fast.crop_concat(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 3, 3))
    with pytest.raises(RuntimeError, match="skip is .* but up is"):
        torch.ops.unet_fast.crop_concat(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3).double())


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_crop_concat_cuda_matches_reference(dtype, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for cs, cu in ((64, 64), (5, 3)):  # vectorized and strided paths
        skip = torch.randn(2, cs, 31, 29, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
        up = torch.randn(2, cu, 20, 18, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
        skip.requires_grad_(True)
        up.requires_grad_(True)
        out = uf.ops.crop_concat(skip, up, backend="cuda")
        assert torch.equal(out, _ref(skip.detach(), up.detach()))
        g = torch.randn_like(out)
        gs, gu = torch.autograd.grad(out, (skip, up), g)
        s2, u2 = skip.detach().clone().requires_grad_(), up.detach().clone().requires_grad_()
        rs, ru = torch.autograd.grad(_ref(s2, u2), (s2, u2), g)
        assert torch.equal(gs, rs) and torch.equal(gu, ru)
