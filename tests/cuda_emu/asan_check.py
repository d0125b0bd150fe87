"""Every emulated CUDA op, forward and backward, in the AddressSanitizer build of the emulator.

tests/test_cuda_emulated.py runs this in a subprocess with libasan preloaded: an out-of-bounds
read or write of any tensor by a kernel (what compute-sanitizer's memcheck finds on a GPU) ends
the process with ASan's report. `python asan_check.py overflow` runs a kernel that reads one past
a heap buffer, to show that the check is live.
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
                m.max_pool2x2_backward(torch.randn_like(p), y, torch.randn_like(y))
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
                count += 1
    print(f"asan_check: {count} cases, every op forward and backward, no report")


if __name__ == "__main__":
    main()
