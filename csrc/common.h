// Argument checks shared by the CPU and CUDA kernels (user errors: TORCH_CHECK naming the
// argument and what was expected). Every TORCH_CHECK of the extension lives here; the op code
// (conv_ops.h, cuda/glue.h, cpu/*.cpp) calls these helpers.
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

// The device check of an engine (the CPU kernels, the CUDA glue's Dev policy): "x must be <what>".
inline void check_device_type(const at::Tensor& t, const char* name, c10::DeviceType type,
                              const char* what) {
  TORCH_CHECK(t.device().type() == type, name, " must be ", what, ", got one on ", t.device());
}

inline void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kHalf || s == at::kBFloat16 || s == at::kDouble, name,
              " must be float32, float16, bfloat16 or float64, got ", s);
}

// The dtypes of the CUDA kernels.
inline void check_cuda_dtype(at::ScalarType s) {
  TORCH_CHECK(s == at::kFloat || s == at::kHalf || s == at::kBFloat16,
              "unet_fast's CUDA kernels support float32, float16 and bfloat16, got ", s,
              " (float64 runs on the CPU kernels only)");
}

// The implicit GEMMs index with 32-bit ints (csrc/igemm_base.h).
inline void check_gemm_size(int64_t M, int64_t N, int64_t K) {
  constexpr int64_t kMax = (int64_t(1) << 31) - 1024;
  TORCH_CHECK(M < kMax && N < kMax && K < kMax, "the problem is too large for 32-bit GEMM indices (M=",
              M, ", N=", N, ", K=", K, "); split the batch");
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

// ------------------------------------------------------------------------------ convolutions
inline void check_bias(const c10::optional<at::Tensor>& bias, int64_t channels, const at::Tensor& x) {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == channels, "bias must have shape (", channels,
              ",) to match the weight's output channels, got ", bias->sizes());
  check_same(x, "x", *bias, "bias");
}

inline void check_grad(const at::Tensor& grad, c10::IntArrayRef expected, const at::Tensor& x) {
  check_4d(grad, "grad");
  TORCH_CHECK(grad.sizes() == expected, "grad must have shape ", expected, ", got ", grad.sizes());
  check_same(x, "x", grad, "grad");
}

// pool: the output also goes through a 2x2 max-pool.
inline void check_conv3x3(const at::Tensor& x, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias, int64_t padding, bool pool = false) {
  check_4d(x, "x");
  check_4d(weight, "weight");
  check_float_dtype(x, "x");
  check_same(x, "x", weight, "weight");
  TORCH_CHECK(weight.size(2) == 3 && weight.size(3) == 3 && weight.size(1) == x.size(1),
              "weight must have shape (C_out, ", x.size(1), ", 3, 3) for x with ", x.size(1),
              " channels, got ", weight.sizes());
  TORCH_CHECK(padding == 0 || padding == 1, "padding must be 0 (valid) or 1 (same), got ", padding);
  TORCH_CHECK(x.size(2) + 2 * padding >= 3 && x.size(3) + 2 * padding >= 3, "x is ", x.size(2), "x",
              x.size(3), "; a 3x3 convolution with padding ", padding, " needs at least ",
              3 - 2 * padding, "x", 3 - 2 * padding);
  check_bias(bias, weight.size(0), x);
  const int64_t oh = x.size(2) - 2 + 2 * padding, ow = x.size(3) - 2 + 2 * padding;
  if (pool)
    TORCH_CHECK(oh >= 2 && ow >= 2, "the conv output is ", oh, "x", ow,
                "; 2x2 max-pooling needs at least 2x2");
}

// grad (of y) and y itself (for the ReLU mask; absent: grad is masked already) of
// conv3x3_relu(x, weight), shaped (nb, co, oh, ow).
inline void check_conv3x3_grads(const at::Tensor& grad, const c10::optional<at::Tensor>& y,
                                const at::Tensor& x, c10::IntArrayRef shape) {
  check_grad(grad, shape, x);
  if (!y.has_value()) return;
  check_4d(*y, "y");
  TORCH_CHECK(y->sizes() == grad.sizes(), "y must have grad's shape ", grad.sizes(), ", got ",
              y->sizes());
  check_same(x, "x", *y, "y");
}

// weight: (C_out, C_in, 1, 1) for G = 1 (1x1 conv), (C_in, C_out, 2, 2) for G = 2 (transposed).
inline void check_pointwise(const at::Tensor& x, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, int G) {
  check_4d(x, "x");
  check_4d(weight, "weight");
  check_float_dtype(x, "x");
  check_same(x, "x", weight, "weight");
  if (G == 1) {
    TORCH_CHECK(weight.size(2) == 1 && weight.size(3) == 1 && weight.size(1) == x.size(1),
                "weight must have shape (C_out, ", x.size(1), ", 1, 1) for x with ", x.size(1),
                " channels, got ", weight.sizes());
  } else {
    TORCH_CHECK(weight.size(2) == 2 && weight.size(3) == 2 && weight.size(0) == x.size(1),
                "weight must have shape (", x.size(1), ", C_out, 2, 2) for x with ", x.size(1),
                " channels, got ", weight.sizes());
  }
  check_bias(bias, G == 1 ? weight.size(0) : weight.size(1), x);
}

// The skip of up_concat against the upsampled x (h x w).
inline void check_up_concat(const at::Tensor& skip, const at::Tensor& x, int64_t h, int64_t w) {
  check_4d(skip, "skip");
  check_same(x, "x", skip, "skip");
  TORCH_CHECK(skip.size(0) == x.size(0), "skip has batch ", skip.size(0), " but x has batch ", x.size(0));
  TORCH_CHECK(skip.size(2) >= h && skip.size(3) >= w, "skip (", skip.size(2), "x", skip.size(3),
              ") must be at least as large as the upsampled x (", h, "x", w, ")");
}

// ------------------------------------------------------------------------------ max-pool 2x2
inline void check_max_pool2x2(const at::Tensor& x) {
  check_4d(x, "x");
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "x is ", x.size(2), "x", x.size(3),
              "; 2x2 max-pooling needs at least 2x2");
}

// base: the gradient x already has (grad_skip), optional: of x's shape, or smaller in H and W,
// the gradient of x's center crop of that size (offset (x - crop) / 2, rounded down), 0 elsewhere.
inline void check_max_pool2x2_backward(const at::Tensor& grad, const at::Tensor& x,
                                       const c10::optional<at::Tensor>& base) {
  check_4d(x, "x");
  check_4d(grad, "grad");
  check_same(x, "x", grad, "grad");
  TORCH_CHECK(grad.size(0) == x.size(0) && grad.size(1) == x.size(1) && grad.size(2) == x.size(2) / 2 &&
                  grad.size(3) == x.size(3) / 2,
              "grad must have shape (", x.size(0), ", ", x.size(1), ", ", x.size(2) / 2, ", ",
              x.size(3) / 2, ") for x of shape ", x.sizes(), ", got ", grad.sizes());
  if (base.has_value() && base->defined()) {
    check_same(x, "x", *base, "grad_skip");
    TORCH_CHECK(base->dim() == 4 && base->size(0) == x.size(0) && base->size(1) == x.size(1) &&
                    base->size(2) >= 1 && base->size(2) <= x.size(2) && base->size(3) >= 1 &&
                    base->size(3) <= x.size(3),
                "grad_skip must have x's shape ", x.sizes(),
                " or be the gradient of its center crop (x's batch and channels, 1 <= H <= ",
                x.size(2), ", 1 <= W <= ", x.size(3), "), got ", base->sizes());
  }
}

// ------------------------------------------------------------------------------ crop-concat
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
