// Weight and bias gradients of conv3x3 + ReLU in one kernel (split over the pixels).
#include "../igemm_conv3x3.h"
#include "igemm.cuh"

namespace unet_fast {

cudaError_t conv3x3_wgrad_cuda(const GemmLaunch& l, bool premasked, cudaStream_t stream) {
  return premasked ? igemm::run<Conv3x3WgradPremasked>(l, stream) : igemm::run<Conv3x3Wgrad>(l, stream);
}

}  // namespace unet_fast
