"""The triton backend on a GPU: compiled kernels (not the interpreter), autotuning, tensor cores.

Skipped without CUDA (benchmarks' GPU suite runs them). Shapes are U-Net-like (64-256 channels) so
the autotuned tensor-core tiles, the per-tap K path and the split-K weight gradient all run. The
op checks go through the parity harness (parity.py) with the tolerances of the dtype: float32 with
TF32 off 1e-5 of the scale, with TF32 on (PyTorch's cuDNN default) 3e-4 or twice TF32's own error;
bfloat16/float16 at most twice PyTorch's own error, here with the real bf16 tensor-core dot;
pooling and concat exact.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import unet_fast as uf

from conftest import requires_cuda
from parity import assert_lowp_within, assert_within, check, config_id, make

pytestmark = [requires_cuda, pytest.mark.usefixtures("no_tf32")]

GPU_CASES = {  # name -> args builder (U-Net-like layer shapes, odd spatial sizes)
    "conv3x3_relu": lambda: [make((2, 64, 38, 42), "channels_last"), make((64, 64, 3, 3), scale=0.05),
                             make((64,)), 0],
    "conv3x3_relu_first": lambda: [make((2, 1, 45, 39), "nchw"), make((64, 1, 3, 3), scale=0.3),
                                   make((64,)), 1],
    # the "same" U-Net's RGB first layer: K = 27 (tap, channel) columns in one tile
    "conv3x3_relu_first_rgb": lambda: [make((2, 3, 40, 36), "channels_last"),
                                       make((64, 3, 3, 3), scale=0.3), make((64,)), 1],
    "conv3x3_relu_pool": lambda: [make((2, 128, 23, 27), "channels_last"),
                                  make((128, 128, 3, 3), scale=0.03), make((128,)), 1],
    "max_pool2x2": lambda: [make((2, 64, 37, 42), "channels_last")],
    "crop_concat": lambda: [make((2, 64, 41, 43), "channels_last"), make((2, 64, 34, 30), "channels_last")],
    "conv_transpose2x2": lambda: [make((2, 256, 13, 11), "channels_last"), make((256, 128, 2, 2), scale=0.05),
                                  make((128,))],
    "up_concat": lambda: [make((2, 128, 33, 29), "channels_last"), make((2, 256, 13, 11), "channels_last"),
                          make((256, 128, 2, 2), scale=0.05), make((128,))],
    "conv1x1": lambda: [make((2, 64, 37, 41), "channels_last"), make((2, 64, 1, 1), scale=0.1), make((2,))],
    # the decoder's first conv: the concat's two halves read in place (CAT), 64 channels each
    # (the three-tap B_L1 weight gradient) and 128 (one-tap tiles in one half)
    "concat_conv3x3_relu": lambda: [make((2, 64, 34, 30), "channels_last"),
                                    make((2, 64, 34, 30), "channels_last"),
                                    make((64, 128, 3, 3), scale=0.03), make((64,)), 1],
    "concat_conv3x3_relu_wide": lambda: [make((2, 128, 26, 22), "channels_last"),
                                         make((2, 128, 26, 22), "channels_last"),
                                         make((128, 256, 3, 3), scale=0.02), make((128,)), 0],
    # the last conv with the 2-class head in its epilogue (HEAD: one 64-wide column tile)
    "conv3x3_relu_conv1x1": lambda: [make((2, 64, 37, 41), "channels_last"),
                                     make((64, 64, 3, 3), scale=0.05), make((64,)),
                                     make((2, 64, 1, 1), scale=0.1), make((2,)), 0],
}


def _op_name(case):
    return case.split("_first")[0].removesuffix("_wide")


def check_triton(case, args, **kw):
    return check(_op_name(case), args, backend="triton", grad_layout="nchw", **kw)


@pytest.mark.parametrize("case", sorted(GPU_CASES))
def test_float32_gpu(case):
    check_triton(case, GPU_CASES[case]())


@pytest.mark.parametrize("case", ["conv3x3_relu", "conv_transpose2x2", "conv1x1",
                                  "conv3x3_relu_conv1x1"])
def test_float32_tf32_gpu(case):
    """With TF32 allowed (cuDNN's default) the GEMMs use it: about 3e-4 relative."""
    check_triton(case, GPU_CASES[case](), tf32=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", sorted(GPU_CASES))
def test_half_precision_gpu(case, dtype):
    check_triton(case, GPU_CASES[case](), dtype=dtype)


_L1_CONFIGS, _POOL_CONFIGS, _CAT_CONFIGS, _PAIR_CONFIGS, _HEAD_CONFIGS = [], [], [], [], []
try:
    from unet_fast.backends.triton_backend import utils as _t_utils
    _L1_CONFIGS = [c for c in _t_utils.IGEMM_CONFIGS_16 if c.kwargs.get("A_L1")]
    # every 16-bit config the decoder's concat forward (CAT) may run on Hopper, and the weight
    # gradient's two-half tiles (PAIR) of 128-channel halves
    _CAT_CONFIGS = _t_utils.launch_configs(
        _t_utils.IGEMM_CONFIGS_16, dtype=torch.bfloat16, precision="ieee", arch=90,
        narrow=False, wgrad=False, ks=3)
    _PAIR_CONFIGS = [c for c in _t_utils.launch_configs(
        _t_utils.WGRAD_CONFIGS_16, dtype=torch.bfloat16, precision="ieee", arch=90,
        narrow=False, wgrad=True, sub_n=2)
        if _t_utils.sub_tile_fits(c, 2, 2) and _t_utils.cat_fits(c, 128, 2)]
    # every 16-bit config the last conv with the fused head (64 channels: one column tile) may
    # run on Hopper
    _HEAD_CONFIGS = [c for c in _t_utils.launch_configs(
        _t_utils.IGEMM_CONFIGS_16, dtype=torch.bfloat16, precision="ieee", arch=90,
        narrow=False, wgrad=False, ks=3, head=True) if c.kwargs["BLOCK_N"] == 64]
    # every 16-bit config a padded 3x3 forward with the pool epilogue may run on Hopper
    _POOL_CONFIGS = _t_utils.launch_configs(
        _t_utils.IGEMM_CONFIGS_16, dtype=torch.bfloat16, precision="ieee", arch=90,
        narrow=False, wgrad=False, pool=True, ks=3)
except ImportError:   # (no triton: every test here is skipped anyway)
    pass


@pytest.mark.parametrize("cfg", _POOL_CONFIGS, ids=[config_id(c) for c in _POOL_CONFIGS])
def test_pool_row_orders_gpu(monkeypatch, cfg):
    """The fused pool's row order follows the compiled accumulators' rows (igemm._pool_rows,
    from the config's warps): each config the pool epilogue may run, compiled and forced, gives
    pooled == max_pool2d(y) exactly and the op's parity in bf16 (128 channels: every tile width
    fits; rows of windows shorter and longer than a tile)."""
    from unet_fast.backends.triton_backend import igemm
    monkeypatch.setattr(igemm.igemm_fwd_kernel, "configs", [cfg])
    monkeypatch.setattr(igemm.igemm_fwd_kernel, "cache", {})
    for shape in ((2, 128, 23, 27), (1, 128, 12, 530)):
        args = [make(shape, "channels_last"), make((128, 128, 3, 3), scale=0.03), make((128,)), 1]
        y, pooled = check("conv3x3_relu_pool", args, backend="triton", grad_layout="nchw",
                          dtype=torch.bfloat16).outs
        assert_within("pooled == max_pool2d(y) exactly", pooled, F.max_pool2d(y, 2, 2), 0)
        assert igemm.igemm_fwd_kernel.best_config is cfg


@pytest.mark.parametrize("cfg", _L1_CONFIGS, ids=[config_id(c) for c in _L1_CONFIGS])
@pytest.mark.parametrize("op,padding", [("conv3x3_relu", 1), ("conv3x3_relu", 0),
                                        ("conv3x3_relu_pool", 1)])
def test_l1_gather_configs_gpu(monkeypatch, cfg, op, padding):
    """Each config that gathers A through the L1 (8-byte cp.async.ca, taps inner), compiled and
    run on the GPU whatever the autotuner would pick: forward and dgrad of a 64-channel layer
    whose rows are wider than a tile (and of a narrower one), in bf16."""
    from unet_fast.backends.triton_backend import igemm
    monkeypatch.setattr(igemm.igemm_fwd_kernel, "configs", [cfg])
    monkeypatch.setattr(igemm.igemm_fwd_kernel, "cache", {})
    for shape in ((2, 64, 20, 301), (2, 64, 38, 42)):
        args = [make(shape, "channels_last"), make((64, 64, 3, 3), scale=0.05), make((64,)),
                padding]
        check(op, args, backend="triton", grad_layout="nchw", dtype=torch.bfloat16)
        assert igemm.igemm_fwd_kernel.best_config is cfg


@pytest.mark.parametrize("padding", [0, 1])
def test_l1_wgrad_config_gpu(monkeypatch, padding):
    """The weight-gradient config that reads B through the L1 (B_L1: 8-byte cp.async.ca, three
    taps' sub-tiles), compiled and run on the GPU whatever the autotuner would pick, in bf16."""
    from unet_fast.backends.triton_backend import igemm, utils
    cfg = next(c for c in utils.WGRAD_CONFIGS_16 if c.kwargs.get("B_L1"))
    monkeypatch.setattr(igemm.igemm_wgrad_kernel, "configs", [cfg])
    monkeypatch.setattr(igemm.igemm_wgrad_kernel, "cache", {})
    args = [make((2, 64, 20, 301), "channels_last"), make((64, 64, 3, 3), scale=0.05),
            make((64,)), padding]
    check("conv3x3_relu", args, backend="triton", grad_layout="channels_last",
          dtype=torch.bfloat16)
    assert igemm.igemm_wgrad_kernel.best_config is cfg


@pytest.mark.parametrize("cfg", _CAT_CONFIGS, ids=[config_id(c) for c in _CAT_CONFIGS])
def test_concat_forward_configs_gpu(monkeypatch, cfg):
    """Each config the concat forward may run (K-tiles of half channels from each half),
    compiled and forced: the op's parity in bf16, padded and valid, 64-channel halves."""
    from unet_fast.backends.triton_backend import igemm
    monkeypatch.setattr(igemm.igemm_fwd_kernel, "configs", [cfg])
    monkeypatch.setattr(igemm.igemm_fwd_kernel, "cache", {})
    for padding, hw in ((1, (38, 42)), (0, (20, 301))):
        args = [make((2, 64) + hw, "channels_last"), make((2, 64) + hw, "channels_last"),
                make((64, 128, 3, 3), scale=0.03), make((64,)), padding]
        check("concat_conv3x3_relu", args, backend="triton", grad_layout="nchw",
              dtype=torch.bfloat16)


@pytest.mark.parametrize("cfg", _HEAD_CONFIGS, ids=[config_id(c) for c in _HEAD_CONFIGS])
def test_head_forward_configs_gpu(monkeypatch, cfg):
    """Each config the last conv with the fused head may run, compiled and forced: the op's
    parity in bf16 (padded and valid), and without gradients (y not stored) the same classes."""
    from unet_fast.backends.triton_backend import igemm
    monkeypatch.setattr(igemm.igemm_fwd_kernel, "configs", [cfg])
    monkeypatch.setattr(igemm.igemm_fwd_kernel, "cache", {})
    for padding, hw in ((1, (38, 42)), (0, (20, 301))):
        args = [make((2, 64) + hw, "channels_last"), make((64, 64, 3, 3), scale=0.05),
                make((64,)), make((2, 64, 1, 1), scale=0.1), make((2,)), padding]
        z = check("conv3x3_relu_conv1x1", args, backend="triton", grad_layout="nchw",
                  dtype=torch.bfloat16).outs[0]
        with torch.no_grad():
            bf = [a.to(torch.bfloat16) if isinstance(a, torch.Tensor) else a for a in args]
            assert torch.equal(uf.ops.conv3x3_relu_conv1x1(*bf, backend="triton"), z)


@pytest.mark.parametrize("cfg", _PAIR_CONFIGS, ids=[config_id(c) for c in _PAIR_CONFIGS])
def test_concat_pair_wgrad_configs_gpu(monkeypatch, cfg):
    """Each config of the concat weight gradient's two-half tiles (PAIR, 128-channel halves),
    compiled and forced, in bf16."""
    from unet_fast.backends.triton_backend import igemm
    monkeypatch.setattr(igemm.igemm_wgrad_kernel, "configs", [cfg])
    monkeypatch.setattr(igemm.igemm_wgrad_kernel, "cache", {})
    launches = []
    real = igemm.igemm_wgrad_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                launches.append(kw["SUB_N"])
                return real[grid](*args, **kw)
            return launch
    monkeypatch.setattr(igemm, "igemm_wgrad_kernel", Spy())
    args = [make((2, 128, 26, 22), "channels_last"), make((2, 128, 26, 22), "channels_last"),
            make((64, 256, 3, 3), scale=0.02), make((64,)), 1]
    check("concat_conv3x3_relu", args, backend="triton", grad_layout="channels_last",
          dtype=torch.bfloat16)
    assert launches == [2] and real.best_config is cfg


def test_pool_epilogue_exact_gpu():
    x = make((2, 64, 30, 34), "channels_last", dtype=torch.bfloat16)
    w = make((64, 64, 3, 3), scale=0.05, dtype=torch.bfloat16)
    y, pooled = uf.ops.conv3x3_relu_pool(x, w, None, 1, backend="triton")
    assert_within("pooled == max_pool2d(y)", pooled, F.max_pool2d(y, 2, 2), 0)


@pytest.mark.parametrize("padding,size", [("valid", 188), ("same", 96)])
def test_unet_autocast_bf16_gpu(padding, size):
    """A depth-4 U-Net under bf16 autocast, forward and backward, within twice eager's error."""
    model = uf.UNet(in_channels=1, num_classes=2, base_channels=16, depth=4, padding=padding,
                    backend="triton").cuda().to(memory_format=torch.channels_last)
    ref = uf.reference.UNet(in_channels=1, num_classes=2, base_channels=16, depth=4,
                            padding=padding).cuda()
    ref.load_state_dict(model.state_dict())
    ref64 = uf.reference.UNet(in_channels=1, num_classes=2, base_channels=16, depth=4,
                              padding=padding).cuda().double()
    ref64.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, size, size, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(x)
        y_eager = ref(x)
    y64 = ref64(x.double())
    g = torch.randn_like(y64)
    y.float().backward(g.float())
    y_eager.float().backward(g.float())
    y64.backward(g)
    assert set(model.backend_report().values()) == {"triton"}
    assert_lowp_within("output", y, y_eager, y64, eps=1e-2)
    for (n, p), (_, q), (_, r) in zip(model.named_parameters(), ref.named_parameters(),
                                      ref64.named_parameters()):
        assert_lowp_within(f"gradient of {n}", p.grad, q.grad, r.grad, eps=1e-2)


def test_compile_inductor_gpu():
    torch._dynamo.reset()
    model = uf.UNet(in_channels=1, num_classes=2, base_channels=16, depth=3, padding="same",
                    backend="triton").cuda()
    x = torch.randn(2, 1, 64, 64, device="cuda")
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)


def test_offsets_beyond_2_31_elements_gpu():
    """A batch whose activations exceed 2**31 elements (batch/pixel offsets must be 64-bit):
    the last image of the batch equals cuDNN's result for that image alone. (Every kernel's
    offsets past 2**31 are checked without a GPU in test_large_offsets.py.)"""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    x = torch.randn(10, 64, 1920, 1920, device="cuda", dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last)                      # 2.4e9 elements
    assert x.numel() > 2**31
    w = make((64, 64, 3, 3), scale=0.05, dtype=torch.bfloat16)
    with torch.no_grad():
        y, pooled = uf.ops.conv3x3_relu_pool(x, w, None, 1, backend="triton")
        ref = F.relu(F.conv2d(x[-1:].float(), w.float(), padding=1))
        tail = y[-1:].float()
        assert (tail - ref).abs().max().item() <= 0.05 * ref.abs().max().item()
        assert_within("pooled tail", pooled[-1:], F.max_pool2d(y[-1:], 2, 2), 0)
        del pooled
        p2 = uf.ops.max_pool2x2(y, backend="triton")
        assert_within("max_pool2x2 tail", p2[-1:], F.max_pool2d(y[-1:], 2, 2), 0)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_non_current_device_gpu():
    """Triton launches on the current device: the launchers must switch to the tensors' own."""
    torch.cuda.set_device(0)
    x = make((2, 16, 20, 18), "channels_last").to("cuda:1")
    w = make((32, 16, 3, 3), scale=0.1).to("cuda:1")
    y = uf.ops.conv3x3_relu(x, w, None, 1, backend="triton")
    torch.testing.assert_close(y, F.relu(F.conv2d(x, w, padding=1)), rtol=1e-4, atol=1e-4)


def test_unet_one_input_channel_bf16_training_step_gpu():
    """The paper's configuration (1 input channel, 2 classes) at a small size: a full training
    step under bf16 autocast runs on the triton kernels, loss finite, gradients finite."""
    model = uf.UNet(in_channels=1, num_classes=2, base_channels=64, depth=4, padding="valid",
                    backend="triton").cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(2, 1, 188, 188, device="cuda")
    target = torch.randint(0, 2, (2,) + model.output_size((188, 188)), device="cuda")
    for _ in range(2):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), target)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert set(model.backend_report().values()) == {"triton"}
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
