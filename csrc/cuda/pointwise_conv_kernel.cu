// The 1x1 conv and the 2x2 stride-2 transposed conv as per-pixel GEMMs: forward (written at any
// channel offset, e.g. straight into a concat buffer) and input gradient.
#include "../igemm_pointwise.h"
#include "igemm.cuh"

namespace unet_fast {

cudaError_t pointwise_fprop_cuda(const GemmLaunch& l, cudaStream_t stream) {
  return igemm::run<PointwiseFprop>(l, stream);
}

cudaError_t pointwise_dgrad_cuda(const GemmLaunch& l, cudaStream_t stream) {
  return igemm::run<PointwiseDgrad>(l, stream);
}

}  // namespace unet_fast
