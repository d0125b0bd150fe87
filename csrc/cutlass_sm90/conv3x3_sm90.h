// Plain C++ interface of the CUTLASS sm_90a convolutions (csrc/cutlass_sm90/*.cu): raw pointers,
// sizes, element strides and a stream in; a status and a message out. No CUTLASS and no torch
// headers here, so the torch glue includes it cheaply and the heavy templates stay in their own
// translation units (one instantiation each), compiled only for sm_90a.
//
// Every 3x3 pass is bf16 or fp16 NHWC (the args' `elem`) with fp32 accumulation, a 3x3 window,
// stride 1 and padding 0 or 1 (and the up-conv's passes, below, a 2x2 window at stride 2):
//   fprop  y  = relu(conv(x, w) + bias)                          (bias and ReLU in the epilogue)
//   dgrad  dx = conv_transpose(g, w) * (mask > 0)                 (mask: the layer input, a ReLU
//                                                                 output; none: plain dx)
//   wgrad  partial[s] = sum over the pixels of split s of g^T x  (fp32, summed by the caller)
// g is the output gradient already multiplied by the layer's own ReLU mask (design.md: the mask
// is applied once, where the gradient is formed; no mainloop masks).
//
// *_check runs only host code (our argument rules, then CUTLASS's can_implement): it needs no GPU
// and no valid pointers beyond their alignment. *_run checks the same, builds the TMA descriptors
// (CUDA driver) and launches on `stream`.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace unet_fast {
namespace sm90 {

// A 3x3 convolution: input (n, h, w, c), c -> k channels, padding 0 or 1, stride 1. The output
// is (n, p, q, k) with p = h + 2 pad - 2, q = w + 2 pad - 2.
struct Conv3x3Shape {
  int n = 0, h = 0, w = 0, c = 0, k = 0, pad = 0;
  int p() const { return h + 2 * pad - 2; }
  int q() const { return w + 2 * pad - 2; }
};

// The element type of a problem's tensors (all of them but wgrad's fp32 partial sums).
enum class Elem : int { kBf16 = 0, kF16 = 1 };

// An NHWC bf16/fp16 tensor: channel stride 1, element strides of the pixel dimensions.
struct Nhwc {
  const void* ptr = nullptr;
  int64_t sn = 0, sh = 0, sw = 0;
};

enum Status : int {
  kOk = 0,
  kUnsupported = 1,   // the problem or its tensors are outside what the kernel takes (message says why)
  kCutlassError = 2,  // CUTLASS refused or failed at initialize/run
  kCudaError = 3,     // a CUDA call failed (message has cudaGetErrorString)
};

// Messages are written into `why` (at most `why_len` bytes, NUL-terminated) when it is non-null.

// --------------------------------------------------------------------------- fprop + bias + ReLU
struct FpropArgs {
  Elem elem = Elem::kBf16;
  Conv3x3Shape s;
  Nhwc x;                      // (n, h, w, c)
  const void* w = nullptr;     // (k, 3, 3, c) dense (KRSC)
  const void* bias = nullptr;  // (k,) or null (no bias)
  Nhwc y;                      // (n, p, q, k), written
};
int conv3x3_fprop_check(const FpropArgs& a, char* why, int why_len);
int conv3x3_fprop_run(const FpropArgs& a, cudaStream_t stream, char* why, int why_len);

// --------------------------------------------------------------------------- dgrad x ReLU mask
struct DgradArgs {
  Elem elem = Elem::kBf16;
  Conv3x3Shape s;
  Nhwc g;                   // (n, p, q, k): the output gradient (already masked by this layer's ReLU)
  const void* w = nullptr;  // (k, 3, 3, c) dense (KRSC), the forward weight
  Nhwc mask;                // (n, h, w, c) with one pixel stride (sh = w sw, sn = h sh), or ptr null
  Nhwc dx;                  // (n, h, w, c), written
};
int conv3x3_dgrad_check(const DgradArgs& a, char* why, int why_len);
int conv3x3_dgrad_run(const DgradArgs& a, cudaStream_t stream, char* why, int why_len);

// --------------------------------------------------------------------------- wgrad (split-K)
// The pixel sum is split over `splits` slices of the grid (one launch); slice s writes
// partial[s] = (k, 3, 3, c) in fp32, dense. The caller sums the slices in a fixed order (so the
// result does not depend on scheduling) and converts/permutes to its weight layout. The bias
// gradient is not computed here (the caller reduces g over the pixels: one read of g).
struct WgradArgs {
  Elem elem = Elem::kBf16;
  Conv3x3Shape s;
  Nhwc g;                  // (n, p, q, k), dense NHWC (CUTLASS's wgrad takes packed tensors only)
  Nhwc x;                  // (n, h, w, c), the forward input
  float* partial = nullptr;  // splits x (k, 3, 3, c) floats, 16-byte aligned
  int splits = 1;
};
// The split-K count: at most about eight waves (of the tiles the shape runs with) on `num_sms`
// multiprocessors, at least 8 K-tiles of 64 pixels per split, at most 64 splits, and of those the
// one of least cost: the busiest SM's K steps plus each further split's fp32 partials at the DRAM
// bandwidth (the rule of the Triton backend's utils.wgrad_split; a test compares the two).
int conv3x3_wgrad_splits(const Conv3x3Shape& s, int num_sms);
int conv3x3_wgrad_check(const WgradArgs& a, char* why, int why_len);
int conv3x3_wgrad_run(const WgradArgs& a, cudaStream_t stream, char* why, int why_len);

// --------------------------------------------------------------------------- the up-conv's forward
// The decoder's 2x2 stride-2 transposed convolution itself, x (n, h, w, c) -> y (n, 2h, 2w, k):
//   y[n, 2h + i, 2w + j, :] = W[:, :, i, j]^T x[n, h, w, :] + bias
// per tap (i, j) a 1x1 forward convolution of x whose output is stored by TMA into every other
// pixel of y (y's pixel strides doubled, its base at the tap): four launches, no scatter kernel.
// y may be a channel slice (the concat buffer's upper channels, beside the skip).
struct UpFpropArgs {
  Elem elem = Elem::kBf16;
  int n = 0, h = 0, w = 0, c = 0, k = 0;  // as UpDgradArgs
  Nhwc x;                        // (n, h, w, c)
  const void* weight = nullptr;  // (2, 2, k, c) dense: tap (i, j)'s (k, 1, 1, c) KRSC filter
  const void* bias = nullptr;    // (k,) or null (no bias)
  Nhwc y;                        // (n, 2h, 2w, k), written
};
int up2x2_fprop_check(const UpFpropArgs& a, char* why, int why_len);
int up2x2_fprop_run(const UpFpropArgs& a, cudaStream_t stream, char* why, int why_len);
// the instantiation it runs: 128x128 tiles, 256x64 (n64) where k = 64 (N = k is 64 to 512 in
// the U-Net; a 128-wide tile would be half empty)
const char* up2x2_fprop_config_for(const UpFpropArgs& a);
#define UNET_FAST_SM90_UP_FPROP(tag)                                                        \
  int up2x2_fprop_##tag##_check(const UpFpropArgs& a, char* why, int why_len);              \
  int up2x2_fprop_##tag##_run(const UpFpropArgs& a, cudaStream_t stream, char* why, int why_len); \
  const char* up2x2_fprop_##tag##_config();
UNET_FAST_SM90_UP_FPROP(bf16)
UNET_FAST_SM90_UP_FPROP(bf16_n64)
UNET_FAST_SM90_UP_FPROP(f16)
UNET_FAST_SM90_UP_FPROP(f16_n64)
#undef UNET_FAST_SM90_UP_FPROP

// --------------------------------------------------------------------------- the up-conv's dgrad
// The input gradient of the decoder's 2x2 stride-2 transposed convolution x (n, h, w, c) ->
// (n, 2h, 2w, k) (`conv_transpose2x2`, `up_concat`):
//   dx = conv(g, w, 2x2 filter, stride 2) * (mask > 0)
// a strided forward convolution of the output gradient g, with the weight's (c, k, 2, 2)
// parameter in its channels_last order, (c, 2, 2, k), as the KRSC filter; the mask as the 3x3
// dgrad's. (CUTLASS's sm90 strided dgrad is sm100-only; a strided fprop is not.)
struct UpDgradArgs {
  Elem elem = Elem::kBf16;
  int n = 0, h = 0, w = 0, c = 0, k = 0;  // x's (n, h, w, c); k: the up-conv's output channels
  Nhwc g;                        // (n, 2h, 2w, k): read in place, also a channel slice of the concat's
  const void* weight = nullptr;  // (c, 2, 2, k) dense
  Nhwc mask;                     // (n, h, w, c) with one pixel stride, or ptr null
  Nhwc dx;                       // (n, h, w, c), written
};
int up2x2_dgrad_check(const UpDgradArgs& a, char* why, int why_len);
int up2x2_dgrad_run(const UpDgradArgs& a, cudaStream_t stream, char* why, int why_len);
// (one instantiation per element type, 128x128 tiles: N = c is 128 or more in the U-Net)
int up2x2_dgrad_bf16_check(const UpDgradArgs& a, char* why, int why_len);
int up2x2_dgrad_bf16_run(const UpDgradArgs& a, cudaStream_t stream, char* why, int why_len);
const char* up2x2_dgrad_bf16_config();
int up2x2_dgrad_f16_check(const UpDgradArgs& a, char* why, int why_len);
int up2x2_dgrad_f16_run(const UpDgradArgs& a, cudaStream_t stream, char* why, int why_len);
const char* up2x2_dgrad_f16_config();

// --------------------------------------------------------------------------- the up-conv's wgrad
// The weight gradient of the same transposed convolution: the wgrad of that strided forward
// convolution (activation g, output gradient x), run by the 3x3 wgrad's kernels and split-K:
//   partial[s][c, i, j, k] = sum over the pixels (n, h, w) of slice s of x[n, h, w, c] * g[n, 2h + i, 2w + j, k]
// (c, 2, 2, k) is the weight's channels_last order. The bias gradient is the caller's.
// GEMM: M = c, N = 4*k (tap-major: an N tile is channels of one tap), K = n*h*w.
struct UpWgradArgs {
  Elem elem = Elem::kBf16;
  int n = 0, h = 0, w = 0, c = 0, k = 0;  // as UpDgradArgs
  Nhwc g;                    // (n, 2h, 2w, k): read in place (TMA im2col), also a concat channel slice
  Nhwc x;                    // (n, h, w, c), dense NHWC (CUTLASS's wgrad takes this operand packed)
  float* partial = nullptr;  // splits x (c, 2, 2, k) floats, 16-byte aligned
  int splits = 1;
};
// The split-K count by conv3x3_wgrad_splits' rule, for the tiles this problem runs with.
int up2x2_wgrad_splits(const UpWgradArgs& a, int num_sms);
int up2x2_wgrad_check(const UpWgradArgs& a, char* why, int why_len);
int up2x2_wgrad_run(const UpWgradArgs& a, cudaStream_t stream, char* why, int why_len);
// the 3x3 wgrad instantiation it runs on: 128x128 tiles when k is a multiple of 128, else 128x64
const char* up2x2_wgrad_config_for(const UpWgradArgs& a);
#define UNET_FAST_SM90_UP_WGRAD(tag)                                                        \
  int up2x2_wgrad_##tag##_check(const UpWgradArgs& a, char* why, int why_len);              \
  int up2x2_wgrad_##tag##_run(const UpWgradArgs& a, cudaStream_t stream, char* why, int why_len);
UNET_FAST_SM90_UP_WGRAD(bf16)
UNET_FAST_SM90_UP_WGRAD(bf16_n128)
UNET_FAST_SM90_UP_WGRAD(f16)
UNET_FAST_SM90_UP_WGRAD(f16_n128)
#undef UNET_FAST_SM90_UP_WGRAD

// --------------------------------------------------------------------------- the instantiations
// conv3x3_{fprop,dgrad,wgrad}_check/run choose the instantiation of the problem's element type
// and shape; each is a translation unit of its own (built in parallel), with three functions:
// host check, launch, and what it was built as (tile shapes, cluster, stages, threads, shared
// memory: host-only constants, for reports and tests).
#define UNET_FAST_SM90_UNIT(pass, Args, tag)                                                   \
  int conv3x3_##pass##_##tag##_check(const Args& a, char* why, int why_len);                 \
  int conv3x3_##pass##_##tag##_run(const Args& a, cudaStream_t stream, char* why, int why_len); \
  const char* conv3x3_##pass##_##tag##_config();
// fprop and dgrad: 128x128 tiles, and 256x64 tiles (n64) for the layers whose GEMM N is 64
// channels (fprop k = 64, dgrad c = 64: the U-Net's first and last levels), which a 128-wide tile
// would compute half empty.
UNET_FAST_SM90_UNIT(fprop, FpropArgs, bf16)
UNET_FAST_SM90_UNIT(fprop, FpropArgs, bf16_n64)
UNET_FAST_SM90_UNIT(fprop, FpropArgs, f16)
UNET_FAST_SM90_UNIT(fprop, FpropArgs, f16_n64)
UNET_FAST_SM90_UNIT(dgrad, DgradArgs, bf16)
UNET_FAST_SM90_UNIT(dgrad, DgradArgs, bf16_n64)
UNET_FAST_SM90_UNIT(dgrad, DgradArgs, f16)
UNET_FAST_SM90_UNIT(dgrad, DgradArgs, f16_n64)
// wgrad: 128x64 tiles; 64x64 (m64) for the layers with 64 output channels k (the GEMM's M);
// 128x128 (n128) for the others whose input channels c are a multiple of 128 (an N tile holds
// channels of one tap).
UNET_FAST_SM90_UNIT(wgrad, WgradArgs, bf16)
UNET_FAST_SM90_UNIT(wgrad, WgradArgs, bf16_m64)
UNET_FAST_SM90_UNIT(wgrad, WgradArgs, bf16_n128)
UNET_FAST_SM90_UNIT(wgrad, WgradArgs, f16)
UNET_FAST_SM90_UNIT(wgrad, WgradArgs, f16_m64)
UNET_FAST_SM90_UNIT(wgrad, WgradArgs, f16_n128)
#undef UNET_FAST_SM90_UNIT

// The config of the instantiation a pass runs for a shape and element type.
const char* conv3x3_fprop_config_for(const Conv3x3Shape& s, Elem elem);
const char* conv3x3_dgrad_config_for(const Conv3x3Shape& s, Elem elem);
const char* conv3x3_wgrad_config_for(const Conv3x3Shape& s, Elem elem);

}  // namespace sm90
}  // namespace unet_fast
