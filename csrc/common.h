// Argument checks shared by the CPU and CUDA kernels (user errors: TORCH_CHECK naming the
// argument and what was expected).
#pragma once
#include <ATen/ATen.h>

namespace unet_fast {

inline void check_4d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be a 4-D tensor (N, C, H, W), got ", t.dim(), "-D");
  TORCH_CHECK(t.numel() > 0, name, " must not be empty, got shape ", t.sizes());
}

inline void check_same(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), an, " is on ", a.device(), " but ", bn, " is on ",
              b.device(), "; move them to one device");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), an, " is ", a.scalar_type(), " but ", bn, " is ",
              b.scalar_type(), "; use one dtype");
}

// The one memory-format rule of unet_fast (unet_fast/_utils.py is_channels_last, mirrored here so
// the real outputs match the fake kernels): NHWC-contiguous tensors are channels_last, with the
// strides deciding when C == 1 or H == W == 1 make both formats contiguous; a non-contiguous view
// whose channels are innermost (a channel slice of an NHWC buffer) counts as channels_last too.
inline at::MemoryFormat format_of(const at::Tensor& t) {
  constexpr auto CL = at::MemoryFormat::ChannelsLast;
  constexpr auto NCHW = at::MemoryFormat::Contiguous;
  if (t.dim() != 4) return NCHW;
  if (t.is_contiguous(CL)) return (!t.is_contiguous() || t.stride(1) < t.stride(2)) ? CL : NCHW;
  if (t.is_contiguous()) return NCHW;
  return (t.stride(1) == 1 && t.size(1) > 1) ? CL : NCHW;
}

inline void check_crop_concat(const at::Tensor& skip, const at::Tensor& up) {
  check_4d(skip, "skip");
  check_4d(up, "up");
  check_same(skip, "skip", up, "up");
  TORCH_CHECK(skip.size(0) == up.size(0), "skip has batch ", skip.size(0), " but up has batch ",
              up.size(0));
  TORCH_CHECK(skip.size(2) >= up.size(2) && skip.size(3) >= up.size(3), "skip (",
              skip.size(2), "x", skip.size(3), ") must be at least as large as up (", up.size(2),
              "x", up.size(3), ") to be center-cropped to it");
}

inline void check_crop_concat_backward(const at::Tensor& grad, int64_t skip_channels,
                                       int64_t skip_h, int64_t skip_w) {
  check_4d(grad, "grad");
  TORCH_CHECK(skip_channels > 0 && skip_channels < grad.size(1), "skip_channels must be in (0, ",
              grad.size(1), "), got ", skip_channels);
  TORCH_CHECK(skip_h >= grad.size(2) && skip_w >= grad.size(3), "the skip size (", skip_h, "x",
              skip_w, ") must be at least grad's (", grad.size(2), "x", grad.size(3), ")");
}

}  // namespace unet_fast
