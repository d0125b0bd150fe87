// max_pool2x2 and _max_pool2x2_backward on the CPU: plain loops over (n, c, pooled row) with
// at::parallel_for; any strides. The backward recomputes each window's argmax from x (first
// maximum in row-major order, a NaN wins, as in max_pool2d) and adds the optional base gradient
// (the skip's gradient from the decoder, or its center crop's, added where the crop lies) in the
// same pass.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../common.h"

namespace unet_fast {
namespace {

template <typename T>
inline int window_argmax(const T* x, int64_t sh, int64_t sw) {
  using A = at::opmath_type<T>;
  int best = 0;
  A bv = static_cast<A>(x[0]);
  for (int i = 1; i < 4; ++i) {
    const A v = static_cast<A>(x[(i >> 1) * sh + (i & 1) * sw]);
    if (v > bv || std::isnan(v)) {  // max_pool2d's rule
      best = i;
      bv = v;
    }
  }
  return best;
}

at::Tensor max_pool2x2_cpu(const at::Tensor& x) {
  check_max_pool2x2(x);
  const int64_t N = x.size(0), C = x.size(1), PH = x.size(2) / 2, PW = x.size(3) / 2;
  at::Tensor y = at::empty({N, C, PH, PW}, x.options(), format_of(x));
  const auto xs = x.strides();
  const auto ys = y.strides();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2x2_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, N * C * PH, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t ph = r % PH, nc = r / PH, c = nc % C, n = nc / C;
        for (int64_t pw = 0; pw < PW; ++pw) {
          const scalar_t* w = xp + n * xs[0] + c * xs[1] + 2 * ph * xs[2] + 2 * pw * xs[3];
          const int i = window_argmax(w, xs[2], xs[3]);
          yp[n * ys[0] + c * ys[1] + ph * ys[2] + pw * ys[3]] = w[(i >> 1) * xs[2] + (i & 1) * xs[3]];
        }
      }
    });
  });
  return y;
}

at::Tensor max_pool2x2_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                    const c10::optional<at::Tensor>& base_, bool relu_mask) {
  check_max_pool2x2_backward(grad, x, base_);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t PH = H / 2, PW = W / 2;
  const bool has_base = base_.has_value() && base_->defined();
  const at::Tensor base = has_base ? *base_ : at::Tensor();
  at::Tensor gx = at::empty(x.sizes(), x.options(), format_of(x));
  const auto xs = x.strides();
  const auto gs = grad.strides();
  const auto os = gx.strides();
  const auto bs = has_base ? base.strides() : x.strides();
  // the base may be the gradient of x's center crop (check_max_pool2x2_backward)
  const int64_t BH = has_base ? base.size(2) : H, BW = has_base ? base.size(3) : W;
  const int64_t top = (H - BH) / 2, left = (W - BW) / 2;
  const int64_t HH = (H + 1) / 2, WW = (W + 1) / 2;  // windows, partial ones included
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2x2_backward_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const T* xp = x.data_ptr<T>();
    const T* gp = grad.data_ptr<T>();
    const T* bp = has_base ? base.data_ptr<T>() : nullptr;
    T* op = gx.data_ptr<T>();
    at::parallel_for(0, N * C * HH, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t wh = r % HH, nc = r / HH, c = nc % C, n = nc / C;
        for (int64_t ww = 0; ww < WW; ++ww) {
          const bool full = wh < PH && ww < PW;
          const int arg = full ? window_argmax(xp + n * xs[0] + c * xs[1] + 2 * wh * xs[2] + 2 * ww * xs[3],
                                               xs[2], xs[3])
                               : -1;
          const A g = full ? static_cast<A>(gp[n * gs[0] + c * gs[1] + wh * gs[2] + ww * gs[3]]) : A(0);
          for (int i = 0; i < 4; ++i) {
            const int64_t h = 2 * wh + (i >> 1), w = 2 * ww + (i & 1);
            if (h >= H || w >= W) continue;
            const int64_t bh = h - top, bw = w - left;
            const bool in_base = bp && bh >= 0 && bh < BH && bw >= 0 && bw < BW;
            A v = in_base ? static_cast<A>(bp[n * bs[0] + c * bs[1] + bh * bs[2] + bw * bs[3]]) : A(0);
            if (i == arg) v += g;
            // relu_mask: x is a ReLU output; zero where x <= 0 (threshold_backward's rule)
            if (relu_mask && static_cast<A>(xp[n * xs[0] + c * xs[1] + h * xs[2] + w * xs[3]]) <= A(0)) v = A(0);
            op[n * os[0] + c * os[1] + h * os[2] + w * os[3]] = static_cast<T>(v);
          }
        }
      }
    });
  });
  return gx;
}

// (grad_x, its sum over (n, h, w)) as the CUDA kernel gives them: the sum accumulated in fp32 (in
// float64 for float64), returned in x's dtype.
std::tuple<at::Tensor, at::Tensor> max_pool2x2_backward_sum_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                const c10::optional<at::Tensor>& base_,
                                                                bool relu_mask) {
  at::Tensor gx = max_pool2x2_backward_cpu(grad, x, base_, relu_mask);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {gx, gx.sum({0, 2, 3}, false, acc).to(x.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("max_pool2x2", &max_pool2x2_cpu);
  m.impl("_max_pool2x2_backward", &max_pool2x2_backward_cpu);
  m.impl("_max_pool2x2_backward_sum", &max_pool2x2_backward_sum_cpu);
}

}  // namespace unet_fast
