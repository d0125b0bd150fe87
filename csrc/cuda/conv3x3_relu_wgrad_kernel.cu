// Weight and bias gradients of conv3x3 + ReLU in one kernel (split over the pixels); one input
// channel (the first layer on grey images) on the CUDA cores (conv3x3_thin.cuh).
#include "../igemm_conv3x3.h"
#include "conv3x3_thin.cuh"
#include "igemm.cuh"

namespace unet_fast {

cudaError_t conv3x3_wgrad_cuda(const GemmLaunch& l, bool premasked, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  if (conv3x3_thin_wgrad_run(l, premasked, stream, err)) return err;
  return premasked ? igemm::run<Conv3x3WgradPremasked>(l, stream) : igemm::run<Conv3x3Wgrad>(l, stream);
}

}  // namespace unet_fast
