// Plain-C++ interface between the torch glue (registration.cpp) and the CUDA kernels (*.cu), so
// the .cu units compile without torch headers.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

#include "../igemm_base.h"

// Kernel launch, written once so the CPU emulator of the CUDA execution model (tests/cuda_emu,
// which defines UF_CUDA_EMULATOR) can run the same kernels: there it runs every CTA's threads as
// fibers on the calling thread. (Dynamic shared memory is not used, so it is always 0.) One of the
// emulator's three hooks in production code, listed in tests/cuda_emu/cuda_emu.h.
#if defined(UF_CUDA_EMULATOR)
#define UF_LAUNCH(kernel, grid, block, stream, ...) \
  ::uf_emu::launch(kernel, dim3(grid), dim3(block), __VA_ARGS__)
#else
#define UF_LAUNCH(kernel, grid, block, stream, ...) kernel<<<grid, block, 0, stream>>>(__VA_ARGS__)
#endif

namespace unet_fast {

// Sizes and strides of an element-wise 4-D pass. `order` lists the dims from slowest to fastest
// in the destination's memory layout; `numel` elements are visited in that order.
struct Geometry4 {
  int64_t size[4];  // iteration extents (N, C, H, W) of the destination
  int order[4];
  int64_t numel;
  int64_t o[4], s[4], u[4];  // strides: destination, skip, up (or grad)
  int64_t cs, h, w, top, left;
};

struct CropConcatArgs {
  const void* skip;  // forward: the skip; backward: unused
  const void* up;    // forward: up; backward: grad
  void* out;         // forward: the concat; backward: the skip's gradient
  int64_t elem_size, n, cs, cu, hs, ws;
  bool nhwc_vec;     // all NHWC-contiguous, channel runs 16-byte multiples, 16-byte aligned
  Geometry4 geom;
  int num_sms;       // multiprocessors: the grid is at most one wave (grid_walk.cuh)
};

// ------------------------------------------------------------------ implicit-GEMM convolutions
enum class DType { kFloat, kHalf, kBFloat16 };

struct GemmLaunch {
  GemmArgs args;
  DType dtype = DType::kFloat;
  bool tf32 = false;         // float32 on TF32 tensor cores (else exact fp32 FMA)
  float* ws = nullptr;       // weight-gradient workspace (fp32, torch weight layout, zeroed)
  float* ws_bias = nullptr;  // per-GEMM-row bias-gradient workspace (fp32, zeroed) or null
  int num_sms = 132;
};

// csrc/cuda/conv3x3_relu_kernel.cu (pool: also the 2x2 max-pooled map from the epilogue)
cudaError_t conv3x3_fprop_cuda(const GemmLaunch& l, bool pool, cudaStream_t stream);
// csrc/cuda/conv3x3_relu_dgrad_kernel.cu, conv3x3_relu_wgrad_kernel.cu (premasked: the gradient
// arrives masked, no y)
cudaError_t conv3x3_dgrad_cuda(const GemmLaunch& l, bool premasked, cudaStream_t stream);
cudaError_t conv3x3_wgrad_cuda(const GemmLaunch& l, bool premasked, cudaStream_t stream);
// csrc/cuda/pointwise_conv_kernel.cu (1x1 conv, 2x2 transposed conv), pointwise_conv_wgrad_kernel.cu
cudaError_t pointwise_fprop_cuda(const GemmLaunch& l, cudaStream_t stream);
cudaError_t pointwise_dgrad_cuda(const GemmLaunch& l, cudaStream_t stream);
cudaError_t pointwise_wgrad_cuda(const GemmLaunch& l, cudaStream_t stream);

// ------------------------------------------------------------------------------ max-pool 2x2
struct PoolArgs {
  const void* x = nullptr;     // input (forward and backward)
  void* y = nullptr;           // forward: pooled output; backward: grad_x
  const void* g = nullptr;     // backward: grad of the pooled output
  const void* base = nullptr;  // backward: gradient x already has (may be null)
  int64_t xs[4], ys[4], gs[4], bs[4];
  int n, c, h, w;
  DType dtype;
  bool vec;  // all NHWC-contiguous, C a multiple of 16 bytes, 16-byte aligned; except `base`,
             // which may be a channel slice of a wider NHWC buffer (the concat's gradient):
  int64_t base_pixel = 0;  // then its pixel stride in elements (a multiple of 16 bytes)
  // The base may be the gradient of x's center crop: its rows x cols, at (top, left) in x.
  int base_h = 0, base_w = 0, base_top = 0, base_left = 0;
  // backward: x is a ReLU output whose gradient this pass forms: zero where x <= 0 (as
  // threshold_backward: a NaN x passes the gradient)
  bool relu_mask = false;
  int num_sms = 132;       // multiprocessors: the grid is at most one wave (grid_walk.cuh)
  // backward: where not null, each CTA also writes its sums of grad_x over the pixels it walked,
  // one fp32 row of c per CTA ([max_pool2x2_backward_sum_blocks(a), c]): the conv's bias gradient
  // from the pass that forms its output gradient. Their sum over the rows is the bias gradient.
  float* channel_sums = nullptr;
};
cudaError_t max_pool2x2_cuda(const PoolArgs& a, cudaStream_t stream);
cudaError_t max_pool2x2_backward_cuda(const PoolArgs& a, cudaStream_t stream);
// The rows of PoolArgs::channel_sums the backward writes for `a`, 0 where it cannot sum the
// channels in the same pass (not the 16-byte vector path, or the CTA's threads do not cover a
// whole number of pixels: the glue then sums grad_x itself).
int max_pool2x2_backward_sum_blocks(const PoolArgs& a);

// ------------------------------------------------------------------------------ crop-concat
cudaError_t crop_concat_cuda_launch(const CropConcatArgs& a, cudaStream_t stream);
cudaError_t crop_concat_backward_cuda_launch(const CropConcatArgs& a, cudaStream_t stream);
// out[:, :cs] = the cropped skip, out being (n, cs + cu, h, w); geom describes that lower slice.
cudaError_t crop_into_cuda_launch(const CropConcatArgs& a, cudaStream_t stream);

}  // namespace unet_fast
