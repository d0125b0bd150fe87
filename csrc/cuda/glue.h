// Torch glue of the CUDA kernels: argument checks, output allocation in the right memory format,
// the kernel arguments, launch checks. The kernels themselves live in the *.cu files beside this
// one, behind launch.h.
//
// Written once for a device policy `Dev`, so the same glue drives the GPU and the CPU emulator of
// the CUDA execution model (tests/cuda_emu; one of its three hooks in production code, listed in
// tests/cuda_emu/cuda_emu.h), whose tests thereby run this code and these kernels without a GPU:
//   Dev::check(t, name)    TORCH_CHECK that t lives on the device (naming the argument)
//   Dev::Guard(device)     RAII guard making t's device current
//   Dev::stream()          the stream to launch on
//   Dev::num_sms()         multiprocessors of the current device (sizes the split-K of wgrad
//                          and the grids of the pool and crop kernels)
//   Dev::check_launch(e)   throws if a launch returned an error
// registration.cpp instantiates it for CUDA and registers the ops.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>

#include "../common.h"
#include "../conv_ops.h"
#include "launch.h"

namespace unet_fast {

template <class Dev>
struct CudaGlue {
  static bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
  static bool nhwc(const at::Tensor& t) { return t.is_contiguous(at::MemoryFormat::ChannelsLast); }

  // Iteration order of a 4-D tensor's memory layout, slowest dim first.
  static void fill_order(const at::Tensor& t, Geometry4& g) {
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

  static DType dtype_of(at::ScalarType s) {
    check_cuda_dtype(s);
    return s == at::kHalf ? DType::kHalf : s == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat;
  }

  // ---------------------------------------------------------------------------- crop-concat
  static at::Tensor crop_concat(const at::Tensor& skip, const at::Tensor& up) {
    check_crop_concat(skip, up);
    Dev::check(up, "up");
    typename Dev::Guard guard(up.device());
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
    a.num_sms = Dev::num_sms();
    Dev::check_launch(crop_concat_cuda_launch(a, Dev::stream()));
    return out;
  }

  static at::Tensor crop_concat_backward(const at::Tensor& grad, int64_t skip_channels, int64_t skip_h,
                                         int64_t skip_w) {
    check_crop_concat_backward(grad, skip_channels, skip_h, skip_w);
    Dev::check(grad, "grad");
    typename Dev::Guard guard(grad.device());
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
    a.num_sms = Dev::num_sms();
    Dev::check_launch(crop_concat_backward_cuda_launch(a, Dev::stream()));
    return gs;
  }

  // ------------------------------------------------------------ the engine of ConvOps (conv_ops.h)
  struct Engine {
    static at::ScalarType acc_type() { return at::kFloat; }
    // out[:, :C_skip] = skip cropped at (top, left): one coalesced pass of 16-byte words when both
    // are NHWC-dense with 16-byte channel runs (the model's channels_last fast path), else the
    // strided concat kernel over the lower slice.
    static void crop_into(const at::Tensor& skip, at::Tensor& out, int64_t top, int64_t left) {
      Dev::check(skip, "skip");
      const int64_t N = out.size(0), Cs = skip.size(1), H = out.size(2), W = out.size(3);
      at::Tensor lower = out.narrow(1, 0, Cs);
      CropConcatArgs a{};
      a.skip = skip.data_ptr();
      a.up = nullptr;
      a.out = out.data_ptr();
      a.elem_size = out.element_size();
      a.n = N; a.cs = Cs; a.cu = out.size(1) - Cs; a.hs = skip.size(2); a.ws = skip.size(3);
      fill_order(lower, a.geom);
      for (int k = 0; k < 4; ++k) { a.geom.s[k] = skip.stride(k); a.geom.u[k] = 0; }
      a.geom.cs = Cs; a.geom.h = H; a.geom.w = W; a.geom.top = top; a.geom.left = left;
      a.nhwc_vec = nhwc(skip) && nhwc(out) && (Cs * a.elem_size) % 16 == 0 &&
                   (out.size(1) * a.elem_size) % 16 == 0 && aligned16(a.skip) && aligned16(a.out);
      a.num_sms = Dev::num_sms();
      Dev::check_launch(crop_into_cuda_launch(a, Dev::stream()));
    }
    static void check_device(const at::Tensor& t, const char* name) {
      Dev::check(t, name);
      dtype_of(t.scalar_type());
    }
    static void run(GemmKind kind, const GemmArgs& a, at::ScalarType dtype, const at::Tensor& ws,
                    const at::Tensor& wsb) {
      GemmLaunch l;
      l.args = a;
      l.dtype = dtype_of(dtype);
      // float32 follows PyTorch's TF32 setting for cuDNN convolutions, as its convs do (asking for
      // CONV: the op-less query raises once the legacy and fp32_precision APIs have been mixed)
      l.tf32 = dtype == at::kFloat && at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
      l.ws = ws.defined() ? ws.data_ptr<float>() : nullptr;
      l.ws_bias = wsb.defined() ? wsb.data_ptr<float>() : nullptr;
      l.num_sms = Dev::num_sms();
      const auto st = Dev::stream();
      cudaError_t err = cudaSuccess;
      switch (kind) {
        case GemmKind::kConv3x3Fprop: err = conv3x3_fprop_cuda(l, false, st); break;
        case GemmKind::kConv3x3FpropPool: err = conv3x3_fprop_cuda(l, true, st); break;
        case GemmKind::kConv3x3Dgrad: err = conv3x3_dgrad_cuda(l, false, st); break;
        case GemmKind::kConv3x3DgradPremasked: err = conv3x3_dgrad_cuda(l, true, st); break;
        case GemmKind::kConv3x3Wgrad: err = conv3x3_wgrad_cuda(l, false, st); break;
        case GemmKind::kConv3x3WgradPremasked: err = conv3x3_wgrad_cuda(l, true, st); break;
        case GemmKind::kPointwiseFprop: err = pointwise_fprop_cuda(l, st); break;
        case GemmKind::kPointwiseDgrad: err = pointwise_dgrad_cuda(l, st); break;
        case GemmKind::kPointwiseWgrad: err = pointwise_wgrad_cuda(l, st); break;
      }
      Dev::check_launch(err);
    }
  };
  using Ops = ConvOps<Engine>;

  // ------------------------------------------------------------------ the convolution ops
  static at::Tensor conv3x3_relu(const at::Tensor& x, const at::Tensor& w,
                                 const c10::optional<at::Tensor>& b, int64_t p) {
    Dev::check(x, "x");
    typename Dev::Guard guard(x.device());
    return Ops::conv3x3_relu(x, w, b, p);
  }
  static std::tuple<at::Tensor, at::Tensor> conv3x3_relu_pool(const at::Tensor& x, const at::Tensor& w,
                                                              const c10::optional<at::Tensor>& b,
                                                              int64_t p) {
    Dev::check(x, "x");
    typename Dev::Guard guard(x.device());
    return Ops::conv3x3_relu_pool(x, w, b, p);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_relu_backward(
      const at::Tensor& g, const c10::optional<at::Tensor>& y, const at::Tensor& x,
      const at::Tensor& w, int64_t p, std::array<bool, 3> mask, bool relu_input) {
    Dev::check(x, "x");
    typename Dev::Guard guard(x.device());
    return Ops::conv3x3_relu_backward(g, y, x, w, p, mask, relu_input);
  }
  static at::Tensor conv1x1(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
    Dev::check(x, "x");
    typename Dev::Guard guard(x.device());
    return Ops::conv1x1(x, w, b);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> conv1x1_backward(const at::Tensor& g,
                                                                         const at::Tensor& x,
                                                                         const at::Tensor& w,
                                                                         std::array<bool, 3> mask,
                                                                         bool relu_input) {
    Dev::check(x, "x");
    typename Dev::Guard guard(x.device());
    return Ops::conv1x1_backward(g, x, w, mask, relu_input);
  }
  static at::Tensor conv_transpose2x2(const at::Tensor& x, const at::Tensor& w,
                                      const c10::optional<at::Tensor>& b) {
    Dev::check(x, "x");
    typename Dev::Guard guard(x.device());
    return Ops::conv_transpose2x2(x, w, b);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2x2_backward(
      const at::Tensor& g, const at::Tensor& x, const at::Tensor& w, std::array<bool, 3> mask,
      bool relu_input) {
    Dev::check(x, "x");
    typename Dev::Guard guard(x.device());
    return Ops::conv_transpose2x2_backward(g, x, w, mask, relu_input);
  }
  static at::Tensor up_concat(const at::Tensor& skip, const at::Tensor& x, const at::Tensor& w,
                              const c10::optional<at::Tensor>& b) {
    Dev::check(x, "x");
    typename Dev::Guard guard(x.device());
    return Ops::up_concat(skip, x, w, b);
  }

  // ------------------------------------------------------------------------------ max-pool 2x2
  // Each pixel's channels are whole aligned 16-byte words.
  static bool channel_words(const at::Tensor& t) {
    return (t.size(1) * t.element_size()) % 16 == 0 && aligned16(t.data_ptr());
  }
  static bool pool_vec(const at::Tensor& t) { return nhwc(t) && channel_words(t); }
  // NHWC rows of 16-byte words at a pixel stride that may exceed C: dense NHWC, or a channel slice
  // of a wider NHWC buffer (in "same" mode the skip's gradient is such a view of the concat's).
  static bool pool_vec_rows(const at::Tensor& t) {
    const int64_t ps = t.stride(3);
    const bool rows = (t.size(1) == 1 || t.stride(1) == 1) && ps >= t.size(1) &&
                      (t.size(2) == 1 || t.stride(2) == t.size(3) * ps) &&
                      (t.size(0) == 1 || t.stride(0) == t.size(2) * t.size(3) * ps);
    return rows && channel_words(t) && (ps * t.element_size()) % 16 == 0;
  }

  static at::Tensor max_pool2x2(const at::Tensor& x) {
    check_max_pool2x2(x);
    Dev::check(x, "x");
    typename Dev::Guard guard(x.device());
    at::Tensor y = at::empty({x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2}, x.options(), format_of(x));
    PoolArgs a{};
    a.x = x.data_ptr();
    a.y = y.data_ptr();
    for (int d = 0; d < 4; ++d) { a.xs[d] = x.stride(d); a.ys[d] = y.stride(d); }
    a.n = (int)x.size(0); a.c = (int)x.size(1); a.h = (int)x.size(2); a.w = (int)x.size(3);
    a.dtype = dtype_of(x.scalar_type());
    a.vec = pool_vec(x) && pool_vec(y);
    a.num_sms = Dev::num_sms();
    Dev::check_launch(max_pool2x2_cuda(a, Dev::stream()));
    return y;
  }

  static at::Tensor max_pool2x2_backward(const at::Tensor& grad, const at::Tensor& x,
                                         const c10::optional<at::Tensor>& base_, bool relu_mask) {
    return pool_backward(grad, x, base_, relu_mask, false).first;
  }

  // ... and the sum of grad_x over the pixels (fp32, in x's dtype): the bias gradient of the conv
  // whose ReLU output x is, from the pass that forms its output gradient (no pass of its own over
  // grad_x) where the kernel can sum the channels (max_pool2x2_backward_sum_blocks), else by
  // a sum of grad_x after it.
  static std::tuple<at::Tensor, at::Tensor> max_pool2x2_backward_sum(
      const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& base_, bool relu_mask) {
    auto r = pool_backward(grad, x, base_, relu_mask, true);
    if (!r.second.defined()) r.second = r.first.sum({0, 2, 3}, false, at::kFloat);
    return {r.first, r.second.to(x.scalar_type())};
  }

 private:
  // (grad_x, the CTAs' channel sums summed in fp32, or undefined where the kernel did not sum)
  static std::pair<at::Tensor, at::Tensor> pool_backward(const at::Tensor& grad, const at::Tensor& x,
                                                         const c10::optional<at::Tensor>& base_,
                                                         bool relu_mask, bool sum_channels) {
    check_max_pool2x2_backward(grad, x, base_);
    Dev::check(x, "x");
    typename Dev::Guard guard(x.device());
    const bool has_base = base_.has_value() && base_->defined();
    at::Tensor gx = at::empty(x.sizes(), x.options(), format_of(x));
    PoolArgs a{};
    a.x = x.data_ptr();
    a.y = gx.data_ptr();
    a.g = grad.data_ptr();
    a.base = has_base ? base_->data_ptr() : nullptr;
    for (int d = 0; d < 4; ++d) {
      a.xs[d] = x.stride(d); a.ys[d] = gx.stride(d); a.gs[d] = grad.stride(d);
      a.bs[d] = has_base ? base_->stride(d) : 0;
    }
    a.n = (int)x.size(0); a.c = (int)x.size(1); a.h = (int)x.size(2); a.w = (int)x.size(3);
    a.dtype = dtype_of(x.scalar_type());
    a.vec = pool_vec(x) && pool_vec(gx) && pool_vec(grad) && (!has_base || pool_vec_rows(*base_));
    a.base_pixel = has_base ? base_->stride(3) : x.size(1);
    a.base_h = has_base ? (int)base_->size(2) : a.h;
    a.base_w = has_base ? (int)base_->size(3) : a.w;
    a.base_top = (a.h - a.base_h) / 2;
    a.base_left = (a.w - a.base_w) / 2;
    a.relu_mask = relu_mask;
    a.num_sms = Dev::num_sms();
    const int rows = sum_channels ? max_pool2x2_backward_sum_blocks(a) : 0;
    at::Tensor sums;
    if (rows > 0) {
      sums = at::empty({rows, x.size(1)}, x.options().dtype(at::kFloat));  // (every row written)
      a.channel_sums = sums.data_ptr<float>();
    }
    Dev::check_launch(max_pool2x2_backward_cuda(a, Dev::stream()));
    return {gx, rows > 0 ? sums.sum(0) : at::Tensor()};
  }
};

}  // namespace unet_fast
