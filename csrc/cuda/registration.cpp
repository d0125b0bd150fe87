// Torch glue of the CUDA kernels: argument checks, output allocation in the right memory format,
// the current stream, launch checks, and TORCH_LIBRARY_IMPL(unet_fast, CUDA). The kernels
// themselves live in the *.cu files beside this one, behind launch.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../common.h"
#include "launch.h"

namespace unet_fast {
namespace {

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

bool nhwc(const at::Tensor& t) { return t.is_contiguous(at::MemoryFormat::ChannelsLast); }

// Iteration order of a 4-D tensor's memory layout, slowest dim first.
void fill_order(const at::Tensor& t, Geometry4& g) {
  int order[4] = {0, 1, 2, 3};
  auto st = t.strides();
  std::stable_sort(order, order + 4, [&](int a, int b) { return st[a] > st[b]; });
  for (int k = 0; k < 4; ++k) {
    g.order[k] = order[k];
    g.size[k] = t.size(k);
    g.o[k] = st[k];
  }
  g.numel = t.numel();
}

at::Tensor crop_concat_cuda(const at::Tensor& skip, const at::Tensor& up) {
  check_crop_concat(skip, up);
  check_cuda(up, "up");
  c10::cuda::CUDAGuard guard(up.device());
  const int64_t N = up.size(0), Cs = skip.size(1), Cu = up.size(1), H = up.size(2), W = up.size(3);
  at::Tensor out = at::empty({N, Cs + Cu, H, W}, up.options(), format_of(up));
  CropConcatArgs a{};
  a.skip = skip.data_ptr();
  a.up = up.data_ptr();
  a.out = out.data_ptr();
  a.elem_size = up.element_size();
  a.n = N; a.cs = Cs; a.cu = Cu; a.hs = skip.size(2); a.ws = skip.size(3);
  fill_order(out, a.geom);
  for (int k = 0; k < 4; ++k) { a.geom.s[k] = skip.stride(k); a.geom.u[k] = up.stride(k); }
  a.geom.cs = Cs; a.geom.h = H; a.geom.w = W;
  a.geom.top = (a.hs - H) / 2; a.geom.left = (a.ws - W) / 2;
  a.nhwc_vec = nhwc(skip) && nhwc(up) && nhwc(out) && (Cs * a.elem_size) % 16 == 0 &&
               (Cu * a.elem_size) % 16 == 0 && aligned16(a.skip) && aligned16(a.up) &&
               aligned16(a.out);
  C10_CUDA_CHECK(crop_concat_cuda_launch(a, c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor crop_concat_backward_cuda(const at::Tensor& grad, int64_t skip_channels, int64_t skip_h,
                                     int64_t skip_w) {
  check_crop_concat_backward(grad, skip_channels, skip_h, skip_w);
  check_cuda(grad, "grad");
  c10::cuda::CUDAGuard guard(grad.device());
  const int64_t N = grad.size(0), H = grad.size(2), W = grad.size(3);
  at::Tensor gs = at::empty({N, skip_channels, skip_h, skip_w}, grad.options(), format_of(grad));
  CropConcatArgs a{};
  a.up = grad.data_ptr();
  a.out = gs.data_ptr();
  a.elem_size = grad.element_size();
  a.n = N; a.cs = skip_channels; a.cu = grad.size(1) - skip_channels; a.hs = skip_h; a.ws = skip_w;
  fill_order(gs, a.geom);
  for (int k = 0; k < 4; ++k) a.geom.u[k] = grad.stride(k);
  a.geom.cs = skip_channels; a.geom.h = H; a.geom.w = W;
  a.geom.top = (skip_h - H) / 2; a.geom.left = (skip_w - W) / 2;
  a.nhwc_vec = nhwc(grad) && nhwc(gs) && (skip_channels * a.elem_size) % 16 == 0 &&
               (grad.size(1) * a.elem_size) % 16 == 0 && aligned16(a.up) && aligned16(a.out);
  C10_CUDA_CHECK(crop_concat_backward_cuda_launch(a, c10::cuda::getCurrentCUDAStream()));
  return gs;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("crop_concat", &crop_concat_cuda);
  m.impl("_crop_concat_backward", &crop_concat_backward_cuda);
}

}  // namespace unet_fast
