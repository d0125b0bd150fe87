"""Every emulated CUDA op, forward and backward, in the AddressSanitizer build of the emulator.

tests/test_cuda_emulated.py runs this in a subprocess with libasan preloaded: an out-of-bounds
read or write of any tensor by a kernel (what compute-sanitizer's memcheck finds on a GPU) ends
the process with ASan's report. `python asan_check.py overflow` runs a kernel that reads one past
a heap buffer, to show that the check is live.

The pool and crop kernels size their grid to one wave of CTAs (here 8 per SM) and walk the rest
grid-stride (csrc/cuda/grid_walk.cuh); with the default 132 SMs no test tensor is that large, so
they run once more as on a 1-SM GPU, where every thread walks several items, and must equal
PyTorch exactly.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cuda_emu import build  # noqa: E402

MASK = [True, True, True]


def layouts(t):
    yield t.contiguous()
    yield t.contiguous(memory_format=torch.channels_last)


def main():
    m = build.load(asan=True)
    if sys.argv[1:] == ["overflow"]:
        m.selftest("heap_overflow")
        return
    torch.manual_seed(0)
    count = 0
    for dtype in (torch.float32, torch.bfloat16):
        for n, c, co, h, w, pad in [(2, 8, 16, 13, 11, 0), (1, 5, 7, 9, 10, 1), (1, 16, 72, 6, 9, 1)]:
            for x in layouts(torch.randn(n, c, h, w, dtype=dtype)):
                wt, b = torch.randn(co, c, 3, 3, dtype=dtype), torch.randn(co, dtype=dtype)
                y, p = m.conv3x3_relu_pool(x, wt, b, pad)
                m.conv3x3_relu(x, wt, b, pad)
                m.conv3x3_relu_backward(torch.randn_like(y), y, x, wt, pad, MASK)
                m.conv3x3_relu_backward(torch.randn_like(y), None, x, wt, pad, MASK)  # (masked g)
                m.max_pool2x2_backward(torch.randn_like(p), y, torch.randn_like(y))
                m.max_pool2x2_backward(torch.randn_like(p), y, None, True)   # (x read at every pixel)
                m.max_pool2x2_backward_sum(torch.randn_like(p), y, None, True)   # (+ CTA sums)
                m.max_pool2x2(x)
                wu, wp = torch.randn(c, co, 2, 2, dtype=dtype), torch.randn(co, c, 1, 1, dtype=dtype)
                up = m.conv_transpose2x2(x, wu, b)
                m.conv_transpose2x2_backward(torch.randn_like(up), x, wu, MASK)
                skip = torch.randn(n, 3, 2 * h + 3, 2 * w + 1, dtype=dtype)
                for s in layouts(skip):
                    cat = m.up_concat(s, x, wu, b)
                    m.crop_concat_backward(torch.randn_like(cat), 3, s.shape[2], s.shape[3])
                    m.crop_concat(s, up)
                o = m.conv1x1(x, wp, b)
                m.conv1x1_backward(torch.randn_like(o), x, wp, MASK)
                m.conv1x1_backward(torch.randn_like(o), x, wp, MASK, True)   # (dx masked by x)
                count += 1
    print(f"asan_check: {count} cases, every op forward and backward, no report")
    print(f"asan_check: {walks(m)} cases of the pool and crop kernels on 1 SM (grid-stride walks), exact")


def walks(m):
    """The pool and crop ops with 8 CTAs x 256 threads, on tensors of several times that many
    items: the 16-byte vector paths (channels_last, channel runs of whole 16-byte words) and the
    strided ones."""
    m.configure(0, 0, 1)
    F = torch.nn.functional
    count = 0
    for dtype in (torch.float32, torch.bfloat16):
        # (n, c, h, w): odd sizes, so the partial pooling windows and the crop offsets are walked
        for n, c, h, w in [(3, 24, 37, 45), (2, 5, 41, 39)]:
            for x in layouts(torch.randn(n, c, h, w, dtype=dtype)):
                p = m.max_pool2x2(x)
                assert torch.equal(p, F.max_pool2d(x, 2)), (dtype, n, c, h, w)
                g, base = torch.randn_like(p), torch.randn_like(x)
                xr = x.double().requires_grad_()
                (ref,) = torch.autograd.grad(F.max_pool2d(xr, 2), xr, g.double())
                assert torch.equal(m.max_pool2x2_backward(g, x, base), (ref + base.double()).to(dtype))
                up = torch.randn(n, 16, h - 5, w - 3, dtype=dtype)
                for u in layouts(up):
                    cat = m.crop_concat(x, u)
                    t, l = (h - up.shape[2]) // 2, (w - up.shape[3]) // 2
                    crop = x[:, :, t:t + up.shape[2], l:l + up.shape[3]]
                    assert torch.equal(cat, torch.cat([crop, u], 1))
                    gs = m.crop_concat_backward(cat, c, h, w)
                    assert torch.equal(gs, F.pad(crop, (l, w - l - up.shape[3], t, h - t - up.shape[2])))
                wu = torch.randn(c, 8, 2, 2, dtype=dtype)
                half = torch.randn(n, c, (h - 3) // 2, (w - 1) // 2, dtype=dtype)
                for hx in layouts(half):
                    cat = m.up_concat(x, hx, wu, None)
                    H, W = cat.shape[2:]
                    t, l = (h - H) // 2, (w - W) // 2
                    assert torch.equal(cat[:, :c], x[:, :, t:t + H, l:l + W])
                count += 1
        # the pool backward that sums the channels it writes (whole pixels a CTA: 32 channels)
        for x in layouts(torch.relu(torch.randn(2, 32, 37, 45, dtype=dtype))):
            g, base = torch.randn(2, 32, 18, 22, dtype=dtype), torch.randn(2, 32, 31, 40, dtype=dtype)
            gx, db = m.max_pool2x2_backward_sum(g, x, base, True)
            assert torch.equal(gx, m.max_pool2x2_backward(g, x, base, True))
            count += 1
    m.configure(0, 0, 132)
    return count


if __name__ == "__main__":
    main()
