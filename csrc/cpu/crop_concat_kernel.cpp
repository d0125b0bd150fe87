// crop_concat on the CPU: plain loops over (n, h, w) rows with at::parallel_for; any strides.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common.h"

namespace unet_fast {
namespace {

// dst[n, c0 + c, h, w] = src[n, c, h + top, w + left] for the whole of src's window.
template <typename T>
void copy_window(const at::Tensor& src, at::Tensor& dst, int64_t c0, int64_t top, int64_t left,
                 int64_t channels, int64_t H, int64_t W) {
  const T* s = src.data_ptr<T>();
  T* d = dst.data_ptr<T>();
  const auto ss = src.strides();
  const auto ds = dst.strides();
  const int64_t N = dst.size(0);
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      for (int64_t w = 0; w < W; ++w) {
        const T* sp = s + n * ss[0] + (h + top) * ss[2] + (w + left) * ss[3];
        T* dp = d + n * ds[0] + c0 * ds[1] + h * ds[2] + w * ds[3];
        for (int64_t c = 0; c < channels; ++c) dp[c * ds[1]] = sp[c * ss[1]];
      }
    }
  });
}

at::Tensor crop_concat_cpu(const at::Tensor& skip, const at::Tensor& up) {
  check_crop_concat(skip, up);
  const int64_t N = up.size(0), Cs = skip.size(1), Cu = up.size(1), H = up.size(2), W = up.size(3);
  at::Tensor out = at::empty({N, Cs + Cu, H, W}, up.options(), format_of(up));
  const int64_t top = (skip.size(2) - H) / 2, left = (skip.size(3) - W) / 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, up.scalar_type(), "crop_concat_cpu", [&] {
    copy_window<scalar_t>(skip, out, 0, top, left, Cs, H, W);
    copy_window<scalar_t>(up, out, Cs, 0, 0, Cu, H, W);
  });
  return out;
}

at::Tensor crop_concat_backward_cpu(const at::Tensor& grad, int64_t skip_channels, int64_t skip_h,
                                    int64_t skip_w) {
  check_crop_concat_backward(grad, skip_channels, skip_h, skip_w);
  const int64_t H = grad.size(2), W = grad.size(3);
  // (at::zeros drops a memory format given in its options: allocate in the format, then zero)
  at::Tensor gs =
      at::empty({grad.size(0), skip_channels, skip_h, skip_w}, grad.options(), format_of(grad)).zero_();
  const int64_t top = (skip_h - H) / 2, left = (skip_w - W) / 2;
  // Write the window of gs: a view of gs offset by (top, left), filled from grad's first channels.
  at::Tensor window = gs.narrow(2, top, H).narrow(3, left, W);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "crop_concat_backward_cpu", [&] {
    copy_window<scalar_t>(grad, window, 0, 0, 0, skip_channels, H, W);
  });
  return gs;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("crop_concat", &crop_concat_cpu);
  m.impl("_crop_concat_backward", &crop_concat_backward_cpu);
}

}  // namespace unet_fast
