// The convolution ops, written once for both devices: argument checks (common.h), output
// allocation in the input's memory format, weight re-layout, the GemmArgs of each implicit GEMM,
// and the weight-gradient finish. `Engine` runs a GEMM on its device:
//   Engine::acc_type()                      workspace dtype (double on CPU, float on CUDA)
//   Engine::check_device(t, name)           TORCH_CHECK that t lives on the engine's device
//   Engine::run(kind, args, dtype, ws, wsb) runs one implicit GEMM (ws / wsb may be undefined)
//   Engine::crop_into(skip, out, top, left)  out[:, :C_skip] = the (top, left)-cropped skip
// csrc/cpu/*_kernel.cpp instantiate it with the C++ engine, csrc/cuda/registration.cpp with the
// CUDA kernels.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "common.h"
#include "igemm_base.h"

namespace unet_fast {

// Channel stride 1 (any pixel strides): what the loaders read in place. Anything else is made
// channels_last first.
inline at::Tensor nhwc_ish(const at::Tensor& t) {
  if (t.size(1) == 1 || t.stride(1) == 1) return t;
  return t.contiguous(at::MemoryFormat::ChannelsLast);
}

inline bool ptr_aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether the rows of a re-laid (contiguous) weight with `row_len` elements per row can be read
// as aligned 16-byte words. `.contiguous()` returns the weight itself when it is already laid out
// so, and a weight can be a view at any storage offset (a flat parameter buffer): check the pointer.
inline bool rows_vectorizable(const at::Tensor& w, int64_t row_len) {
  return row_len % (16 / w.element_size()) == 0 && ptr_aligned16(w.data_ptr());
}

// Whether runs of `channels` along C can be read as aligned 16-byte words.
inline bool runs_vectorizable(const at::Tensor& t, int64_t channels) {
  const int64_t v = 16 / t.element_size();
  if (channels % v != 0) return false;
  if (!ptr_aligned16(t.data_ptr())) return false;
  for (int d : {0, 2, 3})
    if (t.size(d) > 1 && t.stride(d) % v != 0) return false;
  return t.size(1) == 1 || t.stride(1) == 1;
}

inline void set_x(GemmArgs& a, const at::Tensor& x) {
  a.x = x.data_ptr();
  a.xsN = x.stride(0); a.xsH = x.stride(2); a.xsW = x.stride(3);
}
inline void set_g(GemmArgs& a, const at::Tensor& g) {
  a.g = g.data_ptr();
  a.gsN = g.stride(0); a.gsH = g.stride(2); a.gsW = g.stride(3);
}
inline void set_y(GemmArgs& a, const at::Tensor& y) {
  a.y = y.data_ptr();
  a.ysN = y.stride(0); a.ysH = y.stride(2); a.ysW = y.stride(3);
}
inline void set_out(GemmArgs& a, const at::Tensor& o) {
  a.out = o.data_ptr();
  for (int d = 0; d < 4; ++d) a.os[d] = o.stride(d);
}
inline void set_gemm(GemmArgs& a, int64_t M, int64_t N, int64_t K) {
  check_gemm_size(M, N, K);
  a.M = (int)M; a.N = (int)N; a.K = (int)K;
}

// relu_input (x a ReLU output): dx comes back multiplied by (x > 0), by the GEMM's epilogue where
// dx has x's strides (GemmArgs::out_mask); returns whether a threshold_backward pass after the
// GEMM is left to do (the other layouts).
inline bool relu_mask_in_epilogue(GemmArgs& a, const at::Tensor& dx, const at::Tensor& x,
                                  bool relu_input) {
  if (!relu_input) return false;
  if (dx.strides() != x.strides()) return true;
  a.out_mask = x.data_ptr();
  return false;
}

inline const void* bias_ptr(const c10::optional<at::Tensor>& bias, at::Tensor& keep) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  keep = bias->contiguous();
  return keep.data_ptr();
}

template <class Engine>
struct ConvOps {
  // ------------------------------------------------------------------------- conv3x3 + ReLU
  static std::tuple<at::Tensor, at::Tensor> conv3x3_fprop(const at::Tensor& x_, const at::Tensor& weight,
                                                          const c10::optional<at::Tensor>& bias,
                                                          int64_t padding, bool pool) {
    check_conv3x3(x_, weight, bias, padding, pool);
    Engine::check_device(x_, "x");
    const int64_t nb = x_.size(0), c = x_.size(1), h = x_.size(2), w = x_.size(3);
    const int64_t co = weight.size(0), oh = h - 2 + 2 * padding, ow = w - 2 + 2 * padding;
    const auto fmt = format_of(x_);
    at::Tensor x = nhwc_ish(x_);
    at::Tensor y = at::empty({nb, co, oh, ow}, x.options(), fmt);
    at::Tensor pooled;
    at::Tensor wt = weight.permute({0, 2, 3, 1}).contiguous();  // (C_out, 3, 3, C_in)
    at::Tensor bkeep;
    GemmArgs a;
    set_x(a, x);
    a.w = wt.data_ptr();
    a.bias = bias_ptr(bias, bkeep);
    set_out(a, y);
    a.nb = (int)nb; a.cin = (int)c; a.hin = (int)h; a.win = (int)w;
    a.cout = (int)co; a.hout = (int)oh; a.wout = (int)ow; a.pad = (int)padding;
    set_gemm(a, nb * oh * ow, co, 9 * c);
    a.vec_a = runs_vectorizable(x, c);
    a.vec_b = rows_vectorizable(wt, 9 * c);
    if (pool) {
      pooled = at::empty({nb, co, oh / 2, ow / 2}, x.options(), fmt);
      a.pool = pooled.data_ptr();
      for (int d = 0; d < 4; ++d) a.ps[d] = pooled.stride(d);
    }
    Engine::run(pool ? GemmKind::kConv3x3FpropPool : GemmKind::kConv3x3Fprop, a, x.scalar_type(),
                at::Tensor(), at::Tensor());
    return {y, pooled};
  }

  static at::Tensor conv3x3_relu(const at::Tensor& x, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, int64_t padding) {
    return std::get<0>(conv3x3_fprop(x, weight, bias, padding, false));
  }

  static std::tuple<at::Tensor, at::Tensor> conv3x3_relu_pool(const at::Tensor& x, const at::Tensor& weight,
                                                              const c10::optional<at::Tensor>& bias,
                                                              int64_t padding) {
    return conv3x3_fprop(x, weight, bias, padding, true);
  }

  // Gradients of relu(conv3x3(x, weight) + bias) given grad (of y) and y itself (for the mask).
  // Without y, grad is the masked gradient already (the model's grad_masked: the next layer's
  // dgrad masked it): the loaders copy it as it is (cp.async on the GPU), and y is never read.
  // relu_input: x_ is a ReLU output and dx comes back multiplied by (x > 0) (relu_mask_in_epilogue).
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_relu_backward(
      const at::Tensor& grad_, const c10::optional<at::Tensor>& y_opt, const at::Tensor& x_,
      const at::Tensor& weight, int64_t padding, std::array<bool, 3> mask, bool relu_input) {
    check_conv3x3(x_, weight, c10::nullopt, padding);
    Engine::check_device(x_, "x");
    const int64_t nb = x_.size(0), c = x_.size(1), h = x_.size(2), w = x_.size(3);
    const int64_t co = weight.size(0), oh = h - 2 + 2 * padding, ow = w - 2 + 2 * padding;
    check_conv3x3_grads(grad_, y_opt, x_, {nb, co, oh, ow});
    const bool has_y = y_opt.has_value();
    at::Tensor g = nhwc_ish(grad_), x = nhwc_ish(x_);
    at::Tensor y = has_y ? nhwc_ish(*y_opt) : at::Tensor();
    const auto runs_ok = [&](int64_t ch) {
      return runs_vectorizable(g, ch) && (!has_y || runs_vectorizable(y, ch));
    };
    at::Tensor dx, dw, db;
    if (mask[0]) {
      dx = at::empty({nb, c, h, w}, x.options(), format_of(x_));
      at::Tensor wd = weight.permute({1, 2, 3, 0}).contiguous();  // (C_in, 3, 3, C_out)
      GemmArgs a = geometry(nb, c, h, w, co, oh, ow, padding);
      set_g(a, g); set_out(a, dx);
      if (has_y) set_y(a, y);
      a.w = wd.data_ptr();
      set_gemm(a, nb * h * w, c, 9 * co);
      a.vec_a = runs_ok(co);
      a.vec_b = rows_vectorizable(wd, 9 * co);
      const bool pass_after = relu_mask_in_epilogue(a, dx, x_, relu_input);
      Engine::run(has_y ? GemmKind::kConv3x3Dgrad : GemmKind::kConv3x3DgradPremasked, a,
                  x.scalar_type(), at::Tensor(), at::Tensor());
      if (pass_after) dx = at::threshold_backward(dx, x_, 0);
    } else {
      dx = at::empty({0}, x.options());
    }
    if (mask[1]) {
      at::Tensor ws = at::zeros({co, 3, 3, c}, x.options().dtype(Engine::acc_type()));  // GEMM C
      at::Tensor wsb = mask[2] ? at::zeros({co}, ws.options()) : at::Tensor();
      GemmArgs a = geometry(nb, c, h, w, co, oh, ow, padding);
      set_g(a, g); set_x(a, x);
      if (has_y) set_y(a, y);
      set_gemm(a, co, 9 * c, nb * oh * ow);
      a.vec_a = runs_ok(co);
      a.vec_b = runs_vectorizable(x, c);
      Engine::run(has_y ? GemmKind::kConv3x3Wgrad : GemmKind::kConv3x3WgradPremasked, a,
                  x.scalar_type(), ws, wsb);
      // (C_out, 3, 3, C_in) -> the weight's (C_out, C_in, 3, 3), converted in the same pass
      dw = ws.permute({0, 3, 1, 2}).to(x.scalar_type(), false, false, at::MemoryFormat::Contiguous);
      db = mask[2] ? wsb.to(x.scalar_type()) : at::empty({0}, x.options());
    } else {
      dw = at::empty({0}, x.options());
      // Bias without weight gradient (a frozen weight): a plain masked reduction.
      db = !mask[2] ? at::empty({0}, x.options())
           : has_y ? grad_.masked_fill(*y_opt <= 0, 0).sum({0, 2, 3}) : grad_.sum({0, 2, 3});
    }
    return {dx, dw, db};
  }

  // ------------------------------------------------- 1x1 conv and 2x2 stride-2 transposed conv
  // weight: (C_out, C_in, 1, 1) for G = 1, (C_in, C_out, 2, 2) for G = 2. `out` is a
  // preallocated (N, C_out, G*H, G*W) view to write into (the concat's upper slice).
  static void check_pointwise_args(const at::Tensor& x, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, int G) {
    check_pointwise(x, weight, bias, G);
    Engine::check_device(x, "x");
  }

  static void pointwise_fprop_into(const at::Tensor& x_, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, int G, at::Tensor& out) {
    const int64_t nb = x_.size(0), c = x_.size(1), h = x_.size(2), w = x_.size(3);
    const int64_t co = G == 1 ? weight.size(0) : weight.size(1);
    at::Tensor x = nhwc_ish(x_);
    // (G, G, C_out, C_in)
    at::Tensor wp = G == 1 ? weight.reshape({co, c}).contiguous() : weight.permute({2, 3, 1, 0}).contiguous();
    at::Tensor bkeep;
    GemmArgs a = geometry(nb, c, h, w, co, G * h, G * w, 0);
    a.G = G;
    set_x(a, x);
    a.w = wp.data_ptr();
    a.bias = bias_ptr(bias, bkeep);
    set_out(a, out);
    set_gemm(a, nb * h * w, G * G * co, c);
    a.vec_a = runs_vectorizable(x, c);
    a.vec_b = rows_vectorizable(wp, c);
    Engine::run(GemmKind::kPointwiseFprop, a, x.scalar_type(), at::Tensor(), at::Tensor());
  }

  static at::Tensor pointwise_fprop(const at::Tensor& x, const at::Tensor& weight,
                                    const c10::optional<at::Tensor>& bias, int G) {
    check_pointwise_args(x, weight, bias, G);
    const int64_t co = G == 1 ? weight.size(0) : weight.size(1);
    at::Tensor out = at::empty({x.size(0), co, G * x.size(2), G * x.size(3)}, x.options(), format_of(x));
    pointwise_fprop_into(x, weight, bias, G, out);
    return out;
  }

  static at::Tensor conv1x1(const at::Tensor& x, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias) {
    return pointwise_fprop(x, weight, bias, 1);
  }

  static at::Tensor conv_transpose2x2(const at::Tensor& x, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias) {
    return pointwise_fprop(x, weight, bias, 2);
  }

  // crop_concat(skip, conv_transpose2x2(x, weight, bias)) with one allocation: the cropped skip
  // is copied into the lower channels, the transposed conv writes the upper ones in place.
  static at::Tensor up_concat(const at::Tensor& skip, const at::Tensor& x, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias) {
    check_pointwise_args(x, weight, bias, 2);
    const int64_t nb = x.size(0), co = weight.size(1), h = 2 * x.size(2), w = 2 * x.size(3);
    check_up_concat(skip, x, h, w);
    const int64_t cs = skip.size(1);
    at::Tensor out = at::empty({nb, cs + co, h, w}, x.options(), format_of(x));
    const int64_t top = (skip.size(2) - h) / 2, left = (skip.size(3) - w) / 2;
    Engine::crop_into(skip, out, top, left);  // out[:, :cs] = skip[:, :, top:top+h, left:left+w]
    at::Tensor upper = out.narrow(1, cs, co);
    pointwise_fprop_into(x, weight, bias, 2, upper);
    return out;
  }

  // relu_input: x_ is a ReLU output and dx comes back multiplied by (x > 0) (relu_mask_in_epilogue).
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> pointwise_backward(
      const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& weight, int G,
      std::array<bool, 3> mask, bool relu_input = false) {
    check_pointwise_args(x_, weight, c10::nullopt, G);
    const int64_t nb = x_.size(0), c = x_.size(1), h = x_.size(2), w = x_.size(3);
    const int64_t co = G == 1 ? weight.size(0) : weight.size(1);
    check_grad(grad_, {nb, co, G * h, G * w}, x_);
    at::Tensor g = nhwc_ish(grad_), x = nhwc_ish(x_);
    at::Tensor dx, dw, db;
    if (mask[0]) {
      dx = at::empty({nb, c, h, w}, x.options(), format_of(x_));
      // (C_in, G, G, C_out)
      at::Tensor wq = G == 1 ? weight.reshape({co, c}).t().contiguous() : weight.permute({0, 2, 3, 1}).contiguous();
      GemmArgs a = geometry(nb, c, h, w, co, G * h, G * w, 0);
      a.G = G;
      set_g(a, g); set_out(a, dx);
      a.w = wq.data_ptr();
      set_gemm(a, nb * h * w, c, G * G * co);
      a.vec_a = runs_vectorizable(g, co);
      a.vec_b = rows_vectorizable(wq, G * G * co);
      const bool pass_after = relu_mask_in_epilogue(a, dx, x_, relu_input);
      Engine::run(GemmKind::kPointwiseDgrad, a, x.scalar_type(), at::Tensor(), at::Tensor());
      if (pass_after) dx = at::threshold_backward(dx, x_, 0);
    } else {
      dx = at::empty({0}, x.options());
    }
    if (mask[1]) {
      at::Tensor ws = at::zeros({G, G, co, c}, x.options().dtype(Engine::acc_type()));  // GEMM C
      at::Tensor wsb = mask[2] ? at::zeros({G * G * co}, ws.options()) : at::Tensor();
      GemmArgs a = geometry(nb, c, h, w, co, G * h, G * w, 0);
      a.G = G;
      set_g(a, g); set_x(a, x);
      set_gemm(a, G * G * co, c, nb * h * w);
      a.vec_a = runs_vectorizable(g, co);
      a.vec_b = runs_vectorizable(x, c);
      Engine::run(GemmKind::kPointwiseWgrad, a, x.scalar_type(), ws, wsb);
      // (G, G, C_out, C_in) -> (C_in, C_out, 2, 2) or (C_out, C_in, 1, 1), converted in one pass
      at::Tensor wl = G == 2 ? ws.permute({3, 2, 0, 1}) : ws.view({co, c, 1, 1});
      dw = wl.to(x.scalar_type(), false, false, at::MemoryFormat::Contiguous);
      db = mask[2] ? wsb.view({G * G, co}).sum(0).to(x.scalar_type()) : at::empty({0}, x.options());
    } else {
      dw = at::empty({0}, x.options());
      db = mask[2] ? grad_.sum({0, 2, 3}) : at::empty({0}, x.options());
    }
    return {dx, dw, db};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> conv1x1_backward(
      const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, std::array<bool, 3> mask,
      bool relu_input) {
    return pointwise_backward(grad, x, weight, 1, mask, relu_input);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2x2_backward(
      const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, std::array<bool, 3> mask,
      bool relu_input) {
    return pointwise_backward(grad, x, weight, 2, mask, relu_input);
  }

 private:
  static GemmArgs geometry(int64_t nb, int64_t c, int64_t h, int64_t w, int64_t co, int64_t oh,
                           int64_t ow, int64_t pad) {
    GemmArgs a;
    a.nb = (int)nb; a.cin = (int)c; a.hin = (int)h; a.win = (int)w;
    a.cout = (int)co; a.hout = (int)oh; a.wout = (int)ow; a.pad = (int)pad;
    return a;
  }
};

}  // namespace unet_fast
