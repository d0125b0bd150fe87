"""Size arithmetic of the U-Net: which input sizes are legal and what comes out.

"valid" (the paper): each level of the contracting path loses 4 pixels to two unpadded 3x3
convolutions and then halves; the expanding path doubles and loses 4 again. Every max-pool must see
an even size, so for depth 4 the legal inputs are 16*b + 124 and the outputs 16*b - 60.
"same": sizes are kept, so H and W must be multiples of 2**depth.

Everything here is closed-form (no search over sizes), so it answers at once for any depth and
size; sizes and depths must be ints.

In "valid" mode, with p = 2**depth: an input s reaches the bottleneck at s_b = (s - 4(p - 1)) / p,
which must be an integer (every pool sees an even size); the bottleneck's convolutions leave
b = s_b - 4 and the expanding path gives p*(b - 4) + 4. Every map on the way must keep at least
one pixel, which holds exactly when b >= 4 (depth >= 2), b >= 3 (depth 1) or b >= 1 (depth 0).
"""
from __future__ import annotations

import numbers
import os

PADDINGS = ("valid", "same")


def check_padding(padding: str) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    return padding


def _check_int(value, name: str, minimum: int | None = None) -> int:
    """`value` as an int: TypeError for a non-integer (1.5, "3", True), ValueError below
    `minimum`."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _valid_params(depth: int) -> tuple[int, int, int]:
    """(step, offset, smallest) of the legal "valid" inputs: offset + k * step, k integer, at
    least `smallest`."""
    step = 2**depth
    offset = 4 * (step - 1)
    b_min = 4 if depth >= 2 else (3 if depth == 1 else 1)
    return step, offset, step * (b_min + 4) + offset


def _trace_valid(size: int, depth: int) -> int | None:
    """Output size for one axis in "valid" mode, or None if the size is illegal."""
    step, offset, smallest = _valid_params(depth)
    if size < smallest or (size - offset) % step:
        return None
    b = (size - offset) // step - 4
    return step * (b - 4) + 4


def _axis_output(size: int, depth: int, padding: str) -> int | None:
    if padding == "valid":
        return _trace_valid(size, depth)
    if size < 2**depth or size % (2**depth):
        return None
    return size


def _step_and_min(depth: int, padding: str) -> tuple[int, int, int]:
    """(step, offset, smallest): the legal inputs are offset + k * step >= smallest."""
    if padding == "valid":
        return _valid_params(depth)
    return 2**depth, 0, 2**depth


def min_input_size(depth: int = 4, padding: str = "valid") -> int:
    """The smallest legal input size on one axis."""
    depth = _check_int(depth, "depth", 0)
    check_padding(padding)
    return _step_and_min(depth, padding)[2]


def legal_input_sizes(depth: int = 4, padding: str = "valid", count: int = 24) -> list[int]:
    """The `count` smallest legal input sizes on one axis."""
    depth = _check_int(depth, "depth", 0)
    count = _check_int(count, "count", 0)
    check_padding(padding)
    step, _, smallest = _step_and_min(depth, padding)
    return [smallest + k * step for k in range(count)]


def nearest_legal_sizes(size: int, depth: int = 4, padding: str = "valid") -> tuple[int, ...]:
    """The legal input sizes closest to `size` on one axis: itself if legal, else the one below
    (if any) and the one above."""
    size = _check_int(size, "size")
    depth = _check_int(depth, "depth", 0)
    check_padding(padding)
    step, offset, smallest = _step_and_min(depth, padding)
    if size <= smallest:
        return (smallest,)
    lo = offset + (size - offset) // step * step     # the largest legal size <= size
    return (size,) if lo == size else (lo, lo + step)


def output_size(size, depth: int = 4, padding: str = "valid") -> tuple[int, int]:
    """Output (H, W) for an input (H, W); ValueError naming the nearest legal sizes if illegal."""
    check_padding(padding)
    depth = _check_int(depth, "depth", 0)
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
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
    out = _check_int(out, "out")
    depth = _check_int(depth, "depth", 0)
    check_padding(padding)
    if padding == "same":
        output_size((out, out), depth, padding)
        return out
    # legal "valid" inputs are smallest + k * step, and the output grows by `step` with each k
    step, _, smallest = _valid_params(depth)
    first = _trace_valid(smallest, depth)
    k = max(0, -(-(out - first) // step))             # ceil: the first output >= out
    s = smallest + k * step
    if _trace_valid(s, depth) == out:
        return s
    near = [o for o in (_trace_valid(s - step, depth), _trace_valid(s, depth)) if o]
    raise ValueError(f"no input gives a 'valid' depth-{depth} output of {out}; nearest reachable "
                     f"outputs: {', '.join(map(str, near))}")


# ----------------------------------------------------------------------------- network size
# The largest network a U-Net constructor builds: its parameters, in the default dtype, must fit in
# 16 GiB and in the machine's physical memory. 16 GiB of float32 is 4.3 billion parameters, ~140x
# the paper's network (31 million) and about base_channels=64 with depth=7; training it needs ~4x
# that (weights, gradients, two Adam moments), 64 GiB, before a single activation. Past that the
# constructor would only run the machine out of memory (depth=10 wants 475 GiB).
MAX_PARAMETER_BYTES = 16 * 2**30


def parameter_count(in_channels: int = 1, num_classes: int = 2, base_channels: int = 64,
                    depth: int = 4) -> int:
    """The number of parameters of the U-Net of this configuration (31,030,658 for the paper's),
    without building it."""
    ch = [base_channels * 2**i for i in range(depth + 1)]

    def double_conv(cin, cout):                       # two 3x3 convolutions with biases
        return 9 * cin * cout + cout + 9 * cout * cout + cout

    n = sum(double_conv(in_channels if i == 0 else ch[i - 1], ch[i]) for i in range(depth))
    n += double_conv(ch[depth - 1], ch[depth])         # bottleneck
    n += sum(4 * ch[i + 1] * ch[i] + ch[i] + double_conv(2 * ch[i], ch[i]) for i in range(depth))
    return n + base_channels * num_classes + num_classes   # 1x1 head


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_network_fits(in_channels: int, num_classes: int, base_channels: int, depth: int,
                       bytes_per_parameter: int = 4) -> int:
    """The parameter count of a U-Net configuration; ValueError saying its size when its
    parameters would not fit (see MAX_PARAMETER_BYTES)."""
    n = parameter_count(in_channels, num_classes, base_channels, depth)
    need = n * bytes_per_parameter
    phys = _physical_memory()
    limit = MAX_PARAMETER_BYTES if phys is None else min(MAX_PARAMETER_BYTES, phys)
    if need > limit:
        where = ("unet_fast's limit" if limit == MAX_PARAMETER_BYTES else
                 "this machine's memory")
        raise ValueError(
            f"a U-Net with base_channels={base_channels} and depth={depth} has {n:,} parameters "
            f"({_gb(need)} for the weights alone, {_gb(4 * need)} to train with Adam), more than "
            f"{where} ({_gb(limit)}); lower depth or base_channels (the paper: 64 and 4, "
            f"{parameter_count(1, 2, 64, 4):,} parameters)")
    return n


def _gb(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
