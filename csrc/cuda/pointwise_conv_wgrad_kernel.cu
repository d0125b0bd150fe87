// Weight and bias gradients of the 1x1 conv and the 2x2 transposed conv in one kernel.
#include "../igemm_pointwise.h"
#include "igemm.cuh"
#include "pointwise_thin.cuh"

namespace unet_fast {

cudaError_t pointwise_wgrad_cuda(const GemmLaunch& l, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  if (pointwise_thin_run<PointwisePass::kWgrad>(l, stream, err)) return err;  // (the head: pointwise_thin.cuh)
  return igemm::run<PointwiseWgrad>(l, stream);
}

}  // namespace unet_fast
