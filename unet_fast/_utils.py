"""Small helpers shared by the model and the backends."""
import torch


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-D tensor is laid out NHWC. A tensor with C == 1 (or H == W == 1) is contiguous
    in both formats; it counts as channels_last when its channel stride says so."""
    if t.dim() != 4 or not t.is_contiguous(memory_format=torch.channels_last):
        return False
    return not t.is_contiguous() or t.stride(1) < t.stride(2)


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format
