// Input gradient of conv3x3 + ReLU, the ReLU mask applied while the gradient is loaded (or the
// gradient arrives masked: Conv3x3DgradPremasked).
#include "../igemm_conv3x3.h"
#include "igemm.cuh"

namespace unet_fast {

cudaError_t conv3x3_dgrad_cuda(const GemmLaunch& l, bool premasked, cudaStream_t stream) {
  return premasked ? igemm::run<Conv3x3DgradPremasked>(l, stream) : igemm::run<Conv3x3Dgrad>(l, stream);
}

}  // namespace unet_fast
