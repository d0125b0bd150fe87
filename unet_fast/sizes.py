"""Size arithmetic of the U-Net: which input sizes are legal and what comes out.

"valid" (the paper): each level of the contracting path loses 4 pixels to two unpadded 3x3
convolutions and then halves; the expanding path doubles and loses 4 again. Every max-pool must see
an even size, so for depth 4 the legal inputs are 16*b + 124 and the outputs 16*b - 60.
"same": sizes are kept, so H and W must be multiples of 2**depth.
"""
from __future__ import annotations

import numbers

PADDINGS = ("valid", "same")


def check_padding(padding: str) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    return padding


def _trace_valid(size: int, depth: int) -> int | None:
    """Output size for one axis in "valid" mode, or None if the size is illegal."""
    s = size
    for _ in range(depth):
        s -= 4
        if s < 2 or s % 2:
            return None
        s //= 2
    s -= 4  # bottleneck
    if s < 1:
        return None
    for _ in range(depth):
        s = 2 * s - 4
        if s < 1:
            return None
    return s


def _axis_output(size: int, depth: int, padding: str) -> int | None:
    if padding == "valid":
        return _trace_valid(size, depth)
    if size < 2**depth or size % (2**depth):
        return None
    return size


def min_input_size(depth: int = 4, padding: str = "valid") -> int:
    """The smallest legal input size on one axis."""
    s = 1
    while _axis_output(s, depth, padding) is None:
        s += 1
    return s


def nearest_legal_sizes(size: int, depth: int = 4, padding: str = "valid") -> tuple[int, ...]:
    """The legal input sizes closest to `size` on one axis: itself if legal, else the one below
    (if any) and the one above."""
    check_padding(padding)
    if _axis_output(size, depth, padding) is not None:
        return (size,)
    out = []
    lo = size - 1
    while lo >= 1 and _axis_output(lo, depth, padding) is None:
        lo -= 1
    if lo >= 1:
        out.append(lo)
    hi = size + 1
    while _axis_output(hi, depth, padding) is None:
        hi += 1
    out.append(hi)
    return tuple(out)


def output_size(size, depth: int = 4, padding: str = "valid") -> tuple[int, int]:
    """Output (H, W) for an input (H, W); ValueError naming the nearest legal sizes if illegal."""
    check_padding(padding)
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2:
        raise ValueError(f"size must be (height, width), got {size!r}")
    res = []
    for axis, s in zip(("height", "width"), size):
        if not isinstance(s, numbers.Integral) or isinstance(s, bool):
            raise TypeError(f"{axis} must be an int, got {type(s).__name__}")
        s = int(s)
        o = _axis_output(s, depth, padding)
        if o is None:
            near = nearest_legal_sizes(s, depth, padding)
            rule = (f"16*b + 124 for depth 4; smallest {min_input_size(depth, padding)}"
                    if padding == "valid" and depth == 4 else
                    f"smallest {min_input_size(depth, padding)}" if padding == "valid" else
                    f"a multiple of 2**depth = {2**depth}")
            raise ValueError(
                f"input {axis} {s} is not legal for a depth-{depth} U-Net with padding={padding!r} "
                f"({rule}); nearest legal sizes: {', '.join(map(str, near))}. "
                "The network never pads or resizes: crop or pad the input to a legal size.")
        res.append(o)
    return tuple(res)


def input_size_for_output(out: int, depth: int = 4, padding: str = "valid") -> int:
    """The input size on one axis whose output is exactly `out` (for overlap-tile inference);
    ValueError naming the nearest reachable outputs if none is."""
    check_padding(padding)
    if padding == "same":
        output_size((out, out), depth, padding)
        return out
    # legal "valid" inputs are min + k * 2**depth and the output grows with the input
    step, s = 2**depth, min_input_size(depth, padding)
    while _trace_valid(s, depth) < out:
        s += step
    if _trace_valid(s, depth) == out:
        return s
    near = [o for o in (_trace_valid(s - step, depth), _trace_valid(s, depth)) if o]
    raise ValueError(f"no input gives a 'valid' depth-{depth} output of {out}; nearest reachable "
                     f"outputs: {', '.join(map(str, near))}")
