"""Small helpers shared by the model and the backends."""
import torch


def is_channels_last(t: torch.Tensor) -> bool:
    """The one memory-format rule of unet_fast (csrc/common.h `format_of` mirrors it): whether a
    4-D tensor is laid out NHWC, so that an op answers in channels_last.
    - NHWC-contiguous: yes; when C == 1 (or H == W == 1) both formats are contiguous and the strides
      decide: (HW, 1, W, 1) is channels_last, (HW, HW, W, 1) is NCHW.
    - a non-contiguous view whose channels are innermost (a channel slice of an NHWC buffer): yes."""
    if t.dim() != 4:
        return False
    if t.is_contiguous(memory_format=torch.channels_last):
        return not t.is_contiguous() or t.stride(1) < t.stride(2)
    if t.is_contiguous():
        return False
    return t.stride(1) == 1 and t.shape[1] > 1


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format
