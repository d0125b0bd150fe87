"""Neutral helpers shared by the reference, the model, the ops and the backends.

Imports nothing of unet_fast's backends, so the reference model (the test oracle) loads neither
Triton nor the compiled extension.
"""
import torch

from . import sizes


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


def center_crop(skip: torch.Tensor, size) -> torch.Tensor:
    """View of `skip` cropped to `size` (H, W) around its center; offset (skip - size) // 2."""
    h, w = size
    top = (skip.shape[-2] - h) // 2
    left = (skip.shape[-1] - w) // 2
    return skip[..., top:top + h, left:left + w]


def check_config(in_channels, num_classes, base_channels, depth, padding) -> None:
    """The U-Net constructor arguments (both models)."""
    for name, v in (("in_channels", in_channels), ("num_classes", num_classes),
                    ("base_channels", base_channels), ("depth", depth)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    sizes.check_padding(padding)
    # a network whose weights cannot fit is refused before they are allocated (sizes.py says why)
    sizes.check_network_fits(in_channels, num_classes, base_channels, depth,
                             torch.get_default_dtype().itemsize)


def check_model_input(model, x) -> None:
    """A model's input against its configuration and parameters (both models)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != model.in_channels:
        raise ValueError(f"x has {x.shape[1]} channels but the model was built with "
                         f"in_channels={model.in_channels}")
    if x.shape[0] == 0:
        raise ValueError("x has batch size 0")
    p = next(model.parameters(), None)
    if p is not None:
        if x.device != p.device:
            raise ValueError(f"x is on {x.device} but the model's parameters are on {p.device}; "
                             f"move one to the other: model.to(x.device) or x.to('{p.device}')")
        autocast = x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type)
        if x.dtype != p.dtype and not autocast:
            raise TypeError(f"x is {x.dtype} but the model's parameters are {p.dtype}; use "
                            f"x.to({p.dtype}) or model.to({x.dtype}), or run under torch.autocast")
    sizes.output_size(tuple(int(s) for s in x.shape[-2:]), model.depth, model.padding)


class _ReluInputGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by (x > 0) as ReLU's backward does
    (threshold_backward: zero where x <= 0, a NaN x passes it)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, x, 0)


def relu_input(x: torch.Tensor, flag: bool) -> torch.Tensor:
    """The `relu_input` contract for a backend whose kernels do not mask dx themselves: x whose
    gradient leaves the op already multiplied by (x > 0) (a no-op when `flag` is False)."""
    return _ReluInputGrad.apply(x) if flag else x


def bias_as(bias, x: torch.Tensor):
    """`bias` in x's dtype, for kernels that take one dtype: under autocast an fp32 bias reaches
    the backends as it is (ops._autocast), and this differentiable cast is the one PyTorch's
    autocast would have made."""
    return bias if bias is None or bias.dtype == x.dtype else bias.to(x.dtype)


def nonfinite_weight_on_cpu(weight: torch.Tensor) -> bool:
    """Whether a 3x3 convolution must run PyTorch's own ops to give PyTorch's NaN/Inf pattern:
    its weight holds a NaN or Inf, on the CPU. An implicit GEMM reads what lies outside the image
    (padding, or the gradient beyond the output) as zeros, so a border pixel gets 0 * w = NaN from
    taps that do not reach it, where PyTorch's CPU convolution adds only the taps that do.
    Checking costs a host sync, free on the CPU; on a GPU the pattern is cuDNN's, an implicit
    GEMM too (checked by the GPU tests). Not checked while torch.compile traces."""
    return (weight.device.type == "cpu" and not torch.compiler.is_compiling()
            and not bool(torch.isfinite(weight).all()))
