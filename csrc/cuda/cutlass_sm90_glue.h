// Torch glue of the CUTLASS sm_90a convolutions (csrc/cutlass_sm90, plain C++ interface): argument
// checks, NHWC views, output allocation, the weight in KRSC, the split-K workspace and the ReLU
// masks. Included by registration.cpp only when the units are built (UNET_FAST_WITH_CUTLASS_SM90).
//
// Ops (unet_fast/backends/cuda_ops.py decides when they run: bf16 or fp16 on an sm_90 device,
// channel counts the units take, and only after the instantiation passed its first-run check):
//   _conv3x3_relu_sm90(x, weight, bias, padding, relu_input, grad_masked) -> y   = conv3x3_relu
//       (the flags only travel to the backward, through the autograd formula)
//   _conv3x3_relu_sm90_backward(grad, y, x, weight, padding, output_mask, relu_input, grad_masked)
//       grad_masked: grad is already dy * (y > 0) (else one threshold_backward pass forms it);
//       relu_input: dx comes out multiplied by (x > 0) (the dgrad epilogue's mask load)
//   _up_concat_sm90(skip?, x, weight, bias?) -> y                  = conv_transpose2x2 (no skip)
//       or up_concat (the skip's center crop in the lower channels)
//   _conv_transpose2x2_dgrad_sm90(grad, x, weight, relu_input) -> dx    = conv_transpose2x2's dx
//       (x, the up-conv's input: its shape and memory format, and with relu_input the mask)
//   _conv_transpose2x2_wgrad_sm90(grad, x, weight, output_mask) -> (dweight, dbias)
//       (output_mask: which of the two to compute; the other comes back empty)
//   _cutlass_sm90_check(pass, [n, h, w, c, k, pad], dtype="bf16"|"f16") -> ""  or why not
//                                                   (host code only, no GPU; pass "up_fprop",
//                                                   "up_dgrad", "up_wgrad": the up-conv
//                                                   x (n, h, w, c) -> k, pad 0)
//   _cutlass_sm90_configs() -> [fprop, dgrad, wgrad, fprop 256x64, dgrad 256x64, wgrad 128x128,
//                               wgrad 64x64] in bf16, then the same seven in fp16, then the
//                               up-conv's dgrad in bf16 and fp16, then its forward in both
//                                                   (what each instantiation was built as)
//   _cutlass_sm90_config_for(pass, [n, h, w, c, k, pad], dtype) -> the config of the one that
//                                                   runs it
//   _cutlass_sm90_wgrad_splits([n, h, w, c, k, pad], sms, pass="wgrad"|"up_wgrad") -> int
//                                                   (the wgrad's split-K count)
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "../common.h"
#include "../cutlass_sm90/conv3x3_sm90.h"

namespace unet_fast {
namespace cutlass_glue {

inline sm90::Nhwc nhwc(const at::Tensor& t) {
  sm90::Nhwc v;
  v.ptr = t.data_ptr();
  v.sn = t.stride(0);
  v.sh = t.stride(2);
  v.sw = t.stride(3);
  return v;
}

// Channel stride 1 and 16-byte pixel strides (a channels_last tensor or a channel slice of one
// whose pixel stride is a multiple of 8): read in place; anything else is made dense NHWC.
inline at::Tensor nhwc_view(const at::Tensor& t) {
  const bool ok = (t.size(1) == 1 || t.stride(1) == 1) && t.stride(0) % 8 == 0 && t.stride(2) % 8 == 0 &&
                  t.stride(3) % 8 == 0 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  return ok ? t : t.contiguous(at::MemoryFormat::ChannelsLast);
}

// A dgrad epilogue's ReLU mask: read in place with one pixel stride (a dense NHWC tensor or a
// channel slice of one), else made dense NHWC.
inline at::Tensor mask_view(const at::Tensor& x) {
  const at::Tensor t = nhwc_view(x);
  const bool one_stride = t.stride(2) == t.size(3) * t.stride(3) && t.stride(0) == t.size(2) * t.stride(2);
  return one_stride ? t : t.contiguous(at::MemoryFormat::ChannelsLast);
}

inline sm90::Conv3x3Shape shape_of(const at::Tensor& x, const at::Tensor& w, int64_t padding) {
  sm90::Conv3x3Shape s;
  s.n = static_cast<int>(x.size(0));
  s.c = static_cast<int>(x.size(1));
  s.h = static_cast<int>(x.size(2));
  s.w = static_cast<int>(x.size(3));
  s.k = static_cast<int>(w.size(0));
  s.pad = static_cast<int>(padding);
  return s;
}

inline void check_status(int status, const char* why, const char* what) {
  TORCH_CHECK(status == sm90::kOk, "unet_fast CUTLASS sm_90a ", what, ": ", why);
}

// The units' element type of a bf16 or fp16 CUDA tensor.
inline sm90::Elem elem_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf), name,
              " must be a bfloat16 or float16 CUDA tensor for the CUTLASS sm_90a kernels, got ",
              t.scalar_type(), " on ", t.device());
  return t.scalar_type() == at::kHalf ? sm90::Elem::kF16 : sm90::Elem::kBf16;
}

inline sm90::Elem elem_named(c10::string_view dtype) {
  TORCH_CHECK(dtype == "bf16" || dtype == "f16", "dtype must be 'bf16' or 'f16', got '",
              std::string(dtype), "'");
  return dtype == "f16" ? sm90::Elem::kF16 : sm90::Elem::kBf16;
}

inline int num_sms() {
  int dev = 0, n = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

// Output in x's memory format (the ops' contract); the kernels write NHWC.
inline at::Tensor in_format_of(const at::Tensor& out_nhwc, const at::Tensor& like) {
  return format_of(like) == at::MemoryFormat::ChannelsLast ? out_nhwc
                                                           : out_nhwc.contiguous(at::MemoryFormat::Contiguous);
}

inline at::Tensor conv3x3_relu_sm90(const at::Tensor& x_, const at::Tensor& weight,
                                    const c10::optional<at::Tensor>& bias, int64_t padding,
                                    bool /*relu_input*/, bool /*grad_masked*/) {
  check_conv3x3(x_, weight, bias, padding);
  const sm90::Elem elem = elem_of(x_, "x");
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = nhwc_view(x_);
  const at::Tensor wk = weight.permute({0, 2, 3, 1}).contiguous();  // (k, 3, 3, c)
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const sm90::Conv3x3Shape s = shape_of(x, weight, padding);
  at::Tensor y = at::empty({s.n, s.k, s.p(), s.q()}, x.options(), at::MemoryFormat::ChannelsLast);
  sm90::FpropArgs a;
  a.elem = elem;
  a.s = s;
  a.x = nhwc(x);
  a.w = wk.data_ptr();
  a.bias = b.defined() ? b.data_ptr() : nullptr;
  a.y = nhwc(y);
  char why[512];
  check_status(sm90::conv3x3_fprop_run(a, c10::cuda::getCurrentCUDAStream(), why, sizeof why), why,
               "fprop");
  return in_format_of(y, x_);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_relu_sm90_backward(
    const at::Tensor& grad_, const at::Tensor& y_, const at::Tensor& x_, const at::Tensor& weight,
    int64_t padding, std::array<bool, 3> mask, bool relu_input, bool grad_masked) {
  check_conv3x3(x_, weight, c10::nullopt, padding);
  const sm90::Elem elem = elem_of(x_, "x");
  const int64_t oh = x_.size(2) - 2 + 2 * padding, ow = x_.size(3) - 2 + 2 * padding;
  check_conv3x3_grads(grad_, y_, x_, {x_.size(0), weight.size(0), oh, ow});
  c10::cuda::CUDAGuard guard(x_.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  // g = dy * (y > 0), dense NHWC (CUTLASS's wgrad takes packed tensors only)
  at::Tensor g = grad_masked ? grad_ : at::threshold_backward(grad_, y_, 0);
  g = g.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = nhwc_view(x_);
  const sm90::Conv3x3Shape s = shape_of(x, weight, padding);
  char why[512];
  at::Tensor dx, dw, db;
  if (mask[0]) {
    const at::Tensor wk = weight.permute({0, 2, 3, 1}).contiguous();  // the forward's (k, 3, 3, c)
    dx = at::empty({s.n, s.c, s.h, s.w}, x.options(), at::MemoryFormat::ChannelsLast);
    const at::Tensor m = relu_input ? mask_view(x) : at::Tensor();
    sm90::DgradArgs a;
    a.elem = elem;
    a.s = s;
    a.g = nhwc(g);
    a.w = wk.data_ptr();
    if (m.defined()) a.mask = nhwc(m);
    a.dx = nhwc(dx);
    check_status(sm90::conv3x3_dgrad_run(a, stream, why, sizeof why), why, "dgrad");
    dx = in_format_of(dx, x_);
  } else {
    dx = at::empty({0}, x_.options());
  }
  if (mask[1]) {
    const int splits = sm90::conv3x3_wgrad_splits(s, num_sms());
    at::Tensor partial = at::empty({splits, s.k, 3, 3, s.c}, x.options().dtype(at::kFloat));
    sm90::WgradArgs a;
    a.elem = elem;
    a.s = s;
    a.g = nhwc(g);
    a.x = nhwc(x);
    a.partial = partial.data_ptr<float>();
    a.splits = splits;
    check_status(sm90::conv3x3_wgrad_run(a, stream, why, sizeof why), why, "wgrad");
    // the splits in a fixed order (deterministic), then (k, 3, 3, c) -> (k, c, 3, 3) in x's dtype
    dw = partial.sum(0).permute({0, 3, 1, 2}).to(x.scalar_type(), false, false, at::MemoryFormat::Contiguous);
  } else {
    dw = at::empty({0}, x_.options());
  }
  // the bias gradient: one fp32 reduction of g over the pixels
  db = mask[2] ? g.sum({0, 2, 3}, false, at::kFloat).to(x.scalar_type()) : at::empty({0}, x_.options());
  return {dx, dw, db};
}

// An up-conv unit's arguments with the problem's sizes: x (n, c, h, w) -> k output channels
// (`weight` (c, k, 2, 2)), or a host check's [n, h, w, c, k] shape.
template <class Args>
Args up_args(sm90::Elem elem, int64_t n, int64_t h, int64_t w, int64_t c, int64_t k) {
  Args a;
  a.elem = elem;
  a.n = static_cast<int>(n); a.h = static_cast<int>(h); a.w = static_cast<int>(w);
  a.c = static_cast<int>(c); a.k = static_cast<int>(k);
  return a;
}
template <class Args>
Args up_args(sm90::Elem elem, const at::Tensor& x, const at::Tensor& weight) {
  return up_args<Args>(elem, x.size(0), x.size(2), x.size(3), x.size(1), weight.size(1));
}
template <class Args>
Args up_args(sm90::Elem elem, const sm90::Conv3x3Shape& s) {
  return up_args<Args>(elem, s.n, s.h, s.w, s.c, s.k);
}

// The up-conv x -> (n, k, 2h, 2w) by the up_fprop unit (four 1x1 launches into every other pixel),
// or with a skip the concat buffer crop_concat(skip, up): the skip's center crop copied into the
// lower channels by the crop kernel of the hand-written up_concat (`Engine::crop_into`,
// csrc/cuda/glue.h), the unit writing the upper ones in place. Answers in x's memory format.
template <class Engine>
at::Tensor up_concat_sm90(const c10::optional<at::Tensor>& skip, const at::Tensor& x_,
                          const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_pointwise(x_, weight, bias, 2);
  const sm90::Elem elem = elem_of(x_, "x");
  const int64_t n = x_.size(0), k = weight.size(1), h = 2 * x_.size(2), w = 2 * x_.size(3);
  if (skip) check_up_concat(*skip, x_, h, w);
  c10::cuda::CUDAGuard guard(x_.device());
  const int64_t cs = skip ? skip->size(1) : 0;
  at::Tensor out = at::empty({n, cs + k, h, w}, x_.options(), at::MemoryFormat::ChannelsLast);
  if (skip) Engine::crop_into(*skip, out, (skip->size(2) - h) / 2, (skip->size(3) - w) / 2);
  const at::Tensor x = nhwc_view(x_);
  const at::Tensor wk = weight.permute({2, 3, 1, 0}).contiguous();  // (2, 2, k, c): a KRSC filter per tap
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  auto a = up_args<sm90::UpFpropArgs>(elem, x_, weight);
  a.x = nhwc(x);
  a.weight = wk.data_ptr();
  a.bias = b.defined() ? b.data_ptr() : nullptr;
  a.y = nhwc(out.narrow(1, cs, k));
  char why[512];
  check_status(sm90::up2x2_fprop_run(a, c10::cuda::getCurrentCUDAStream(), why, sizeof why), why,
               "up-conv forward");
  return in_format_of(out, x_);
}

inline at::Tensor conv_transpose2x2_dgrad_sm90(const at::Tensor& grad_, const at::Tensor& x_,
                                               const at::Tensor& weight, bool relu_input) {
  check_pointwise(x_, weight, c10::nullopt, 2);
  const sm90::Elem elem = elem_of(x_, "x");
  check_grad(grad_, {x_.size(0), weight.size(1), 2 * x_.size(2), 2 * x_.size(3)}, x_);
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor g = nhwc_view(grad_);  // (also the concat gradient's channel slice, in place)
  const at::Tensor wk = weight.permute({0, 2, 3, 1}).contiguous();  // (c, 2, 2, k): KRSC
  const at::Tensor m = relu_input ? mask_view(x_) : at::Tensor();
  auto a = up_args<sm90::UpDgradArgs>(elem, x_, weight);
  at::Tensor dx = at::empty({a.n, a.c, a.h, a.w}, x_.options(), at::MemoryFormat::ChannelsLast);
  a.g = nhwc(g);
  a.weight = wk.data_ptr();
  if (m.defined()) a.mask = nhwc(m);
  a.dx = nhwc(dx);
  char why[512];
  check_status(sm90::up2x2_dgrad_run(a, c10::cuda::getCurrentCUDAStream(), why, sizeof why), why,
               "up-conv dgrad");
  return in_format_of(dx, x_);
}

// The up-conv's weight and bias gradients: dw from the wgrad unit (split-K, the slices summed in
// a fixed order), (c, 2, 2, k) -> the parameter's (c, k, 2, 2), contiguous, as the hand-written
// kernel gives it; db one fp32 reduction of g over the pixels. output_mask: [dweight, dbias].
inline std::tuple<at::Tensor, at::Tensor> conv_transpose2x2_wgrad_sm90(const at::Tensor& grad_,
                                                                       const at::Tensor& x_,
                                                                       const at::Tensor& weight,
                                                                       std::array<bool, 2> mask) {
  check_pointwise(x_, weight, c10::nullopt, 2);
  const sm90::Elem elem = elem_of(x_, "x");
  check_grad(grad_, {x_.size(0), weight.size(1), 2 * x_.size(2), 2 * x_.size(3)}, x_);
  c10::cuda::CUDAGuard guard(x_.device());
  at::Tensor dw = at::empty({0}, x_.options()), db = at::empty({0}, x_.options());
  if (mask[0]) {
    // x is the GEMM's A operand, which CUTLASS's wgrad takes dense; g is read in place
    const at::Tensor x = x_.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor g = nhwc_view(grad_);
    auto a = up_args<sm90::UpWgradArgs>(elem, x, weight);
    a.splits = sm90::up2x2_wgrad_splits(a, num_sms());
    at::Tensor partial = at::empty({a.splits, a.c, 2, 2, a.k}, x.options().dtype(at::kFloat));
    a.g = nhwc(g);
    a.x = nhwc(x);
    a.partial = partial.data_ptr<float>();
    char why[512];
    check_status(sm90::up2x2_wgrad_run(a, c10::cuda::getCurrentCUDAStream(), why, sizeof why), why,
                 "up-conv wgrad");
    dw = partial.sum(0).permute({0, 3, 1, 2}).to(x.scalar_type(), false, false, at::MemoryFormat::Contiguous);
  }
  if (mask[1]) db = grad_.sum({0, 2, 3}, false, at::kFloat).to(x_.scalar_type());
  return {dw, db};
}

constexpr const char* kPasses = "'fprop', 'dgrad', 'wgrad', 'up_fprop', 'up_dgrad', 'up_wgrad'";

inline std::string cutlass_sm90_check(c10::string_view pass, std::vector<int64_t> shape,
                                      c10::string_view dtype) {
  const sm90::Elem elem = elem_named(dtype);
  TORCH_CHECK(shape.size() == 6, "shape must be [n, h, w, c, k, pad], got ", shape.size(), " values");
  for (int64_t v : shape)
    TORCH_CHECK(v >= 0 && v <= (int64_t(1) << 30), "shape values must be in [0, 2^30], got ", v);
  sm90::Conv3x3Shape s;
  s.n = int(shape[0]); s.h = int(shape[1]); s.w = int(shape[2]);
  s.c = int(shape[3]); s.k = int(shape[4]); s.pad = int(shape[5]);
  auto dense = [](int n, int h, int w, int c) {
    sm90::Nhwc t;
    t.sw = c; t.sh = int64_t(w) * c; t.sn = int64_t(h) * w * c;
    (void)n;
    return t;
  };
  char why[512];
  int r;
  if (pass == "fprop") {
    sm90::FpropArgs a;
    a.elem = elem; a.s = s; a.x = dense(s.n, s.h, s.w, s.c); a.y = dense(s.n, s.p(), s.q(), s.k);
    r = sm90::conv3x3_fprop_check(a, why, sizeof why);
  } else if (pass == "dgrad") {
    sm90::DgradArgs a;
    a.elem = elem; a.s = s; a.g = dense(s.n, s.p(), s.q(), s.k); a.dx = dense(s.n, s.h, s.w, s.c);
    a.mask = dense(s.n, s.h, s.w, s.c);
    r = sm90::conv3x3_dgrad_check(a, why, sizeof why);
  } else if (pass == "wgrad") {
    sm90::WgradArgs a;
    a.elem = elem; a.s = s; a.g = dense(s.n, s.p(), s.q(), s.k); a.x = dense(s.n, s.h, s.w, s.c);
    a.splits = sm90::conv3x3_wgrad_splits(s, 132);
    r = sm90::conv3x3_wgrad_check(a, why, sizeof why);
  } else if (pass == "up_dgrad") {
    auto a = up_args<sm90::UpDgradArgs>(elem, s);
    a.g = dense(s.n, 2 * s.h, 2 * s.w, s.k); a.dx = dense(s.n, s.h, s.w, s.c);
    a.mask = dense(s.n, s.h, s.w, s.c);
    r = sm90::up2x2_dgrad_check(a, why, sizeof why);
  } else if (pass == "up_fprop") {
    auto a = up_args<sm90::UpFpropArgs>(elem, s);
    a.x = dense(s.n, s.h, s.w, s.c);
    // y: the upper channel slice of a concat with as many skip channels (the U-Net's decoder)
    a.y = dense(s.n, 2 * s.h, 2 * s.w, 2 * s.k);
    r = sm90::up2x2_fprop_check(a, why, sizeof why);
  } else if (pass == "up_wgrad") {
    auto a = up_args<sm90::UpWgradArgs>(elem, s);
    a.g = dense(s.n, 2 * s.h, 2 * s.w, s.k); a.x = dense(s.n, s.h, s.w, s.c);
    a.splits = sm90::up2x2_wgrad_splits(a, 132);
    r = sm90::up2x2_wgrad_check(a, why, sizeof why);
  } else {
    TORCH_CHECK(false, "pass must be one of ", kPasses, ", got '", std::string(pass), "'");
  }
  return r == sm90::kOk ? std::string() : std::string(why);
}

// The wgrad unit's split-K count for a shape on `sms` multiprocessors (host code only): what the
// kernel model predicts with and what a test compares with the Triton backend's rule. pass
// "wgrad" (the 3x3 convolution's) or "up_wgrad" (the up-conv's, shape [n, h, w, c, k, 0]).
inline int64_t cutlass_sm90_wgrad_splits(std::vector<int64_t> shape, int64_t sms, c10::string_view pass) {
  TORCH_CHECK(shape.size() == 6, "shape must be [n, h, w, c, k, pad], got ", shape.size(), " values");
  for (int64_t v : shape)
    TORCH_CHECK(v >= 0 && v <= (int64_t(1) << 30), "shape values must be in [0, 2^30], got ", v);
  TORCH_CHECK(sms > 0 && sms <= 4096, "sms must be in [1, 4096], got ", sms);
  sm90::Conv3x3Shape s;
  s.n = int(shape[0]); s.h = int(shape[1]); s.w = int(shape[2]);
  s.c = int(shape[3]); s.k = int(shape[4]); s.pad = int(shape[5]);
  if (pass == "up_wgrad") return sm90::up2x2_wgrad_splits(up_args<sm90::UpWgradArgs>(sm90::Elem::kBf16, s), int(sms));
  TORCH_CHECK(pass == "wgrad", "pass must be 'wgrad' or 'up_wgrad', got '", std::string(pass), "'");
  return sm90::conv3x3_wgrad_splits(s, int(sms));
}

inline std::vector<std::string> cutlass_sm90_configs() {
  return {sm90::conv3x3_fprop_bf16_config(), sm90::conv3x3_dgrad_bf16_config(),
          sm90::conv3x3_wgrad_bf16_config(), sm90::conv3x3_fprop_bf16_n64_config(),
          sm90::conv3x3_dgrad_bf16_n64_config(), sm90::conv3x3_wgrad_bf16_n128_config(),
          sm90::conv3x3_wgrad_bf16_m64_config(),
          sm90::conv3x3_fprop_f16_config(), sm90::conv3x3_dgrad_f16_config(),
          sm90::conv3x3_wgrad_f16_config(), sm90::conv3x3_fprop_f16_n64_config(),
          sm90::conv3x3_dgrad_f16_n64_config(), sm90::conv3x3_wgrad_f16_n128_config(),
          sm90::conv3x3_wgrad_f16_m64_config(),
          sm90::up2x2_dgrad_bf16_config(), sm90::up2x2_dgrad_f16_config(),
          sm90::up2x2_fprop_bf16_config(), sm90::up2x2_fprop_f16_config(),
          sm90::up2x2_fprop_bf16_n64_config(), sm90::up2x2_fprop_f16_n64_config()};
}

// The config of the instantiation a pass runs for a shape (host code only): for the kernel model.
inline std::string cutlass_sm90_config_for(c10::string_view pass, std::vector<int64_t> shape,
                                           c10::string_view dtype) {
  const sm90::Elem elem = elem_named(dtype);
  TORCH_CHECK(shape.size() == 6, "shape must be [n, h, w, c, k, pad], got ", shape.size(), " values");
  sm90::Conv3x3Shape s;
  s.n = int(shape[0]); s.h = int(shape[1]); s.w = int(shape[2]);
  s.c = int(shape[3]); s.k = int(shape[4]); s.pad = int(shape[5]);
  if (pass == "fprop") return sm90::conv3x3_fprop_config_for(s, elem);
  if (pass == "dgrad") return sm90::conv3x3_dgrad_config_for(s, elem);
  if (pass == "wgrad") return sm90::conv3x3_wgrad_config_for(s, elem);
  if (pass == "up_dgrad")
    return elem == sm90::Elem::kF16 ? sm90::up2x2_dgrad_f16_config() : sm90::up2x2_dgrad_bf16_config();
  if (pass == "up_wgrad") return sm90::up2x2_wgrad_config_for(up_args<sm90::UpWgradArgs>(elem, s));
  if (pass == "up_fprop") return sm90::up2x2_fprop_config_for(up_args<sm90::UpFpropArgs>(elem, s));
  TORCH_CHECK(false, "pass must be one of ", kPasses, ", got '", std::string(pass), "'");
}

}  // namespace cutlass_glue
}  // namespace unet_fast
