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


def conv_allows_tf32() -> bool:
    """Whether float32 convolutions may run on TF32 tensor cores, decided as PyTorch decides it for
    its cuDNN convolutions: the conv precision of the fp32_precision API, else cuDNN's, else the
    global one ("none" defers to the next); the legacy torch.backends.cudnn.allow_tf32 = X sets
    the conv precision to "tf32"/"none". (Reading the legacy flag itself raises once the two APIs
    have been mixed, so it is never read.)"""
    backends = torch.backends
    for precision in (backends.cudnn.conv.fp32_precision, backends.cudnn.fp32_precision,
                      backends.fp32_precision):
        if precision != "none":
            return precision == "tf32"
    return False


def skip_grad(grad_lower: torch.Tensor, skip_hw, crop_pad) -> torch.Tensor:
    """The skip's gradient from the concat's lower channel slice (both backends' rule): the slice
    itself, a view, when the skip was not cropped ("same" mode); else `crop_pad(grad_lower, h, w)`,
    the backend's kernel placing it at the center of a zero map of the skip's size (h, w)."""
    if tuple(grad_lower.shape[-2:]) == tuple(skip_hw):
        return grad_lower
    return crop_pad(grad_lower, int(skip_hw[0]), int(skip_hw[1]))
