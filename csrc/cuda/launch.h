// Plain-C++ interface between the torch glue (registration.cpp) and the CUDA kernels (*.cu), so
// the .cu units compile without torch headers.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace unet_fast {

// Sizes and strides of an element-wise 4-D pass. `order` lists the dims from slowest to fastest
// in the destination's memory layout; `numel` elements are visited in that order.
struct Geometry4 {
  int64_t size[4];  // iteration extents (N, C, H, W) of the destination
  int order[4];
  int64_t numel;
  int64_t o[4], s[4], u[4];  // strides: destination, skip, up (or grad)
  int64_t cs, h, w, top, left;
  __host__ __device__ inline void unravel(int64_t i, int64_t* idx) const {
    for (int k = 3; k >= 0; --k) {
      const int d = order[k];
      idx[d] = i % size[d];
      i /= size[d];
    }
  }
};

struct CropConcatArgs {
  const void* skip;  // forward: the skip; backward: unused
  const void* up;    // forward: up; backward: grad
  void* out;         // forward: the concat; backward: the skip's gradient
  int64_t elem_size, n, cs, cu, hs, ws;
  bool nhwc_vec;     // all NHWC-contiguous, channel runs 16-byte multiples, 16-byte aligned
  Geometry4 geom;
};

cudaError_t crop_concat_cuda_launch(const CropConcatArgs& a, cudaStream_t stream);
cudaError_t crop_concat_backward_cuda_launch(const CropConcatArgs& a, cudaStream_t stream);

}  // namespace unet_fast
