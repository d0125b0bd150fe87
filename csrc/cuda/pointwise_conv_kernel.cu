// The 1x1 conv and the 2x2 stride-2 transposed conv as per-pixel GEMMs: forward (written at any
// channel offset, e.g. straight into a concat buffer) and input gradient. A 1x1 conv with few
// output channels (the head) runs on the CUDA cores instead (pointwise_thin.cuh).
#include "../igemm_pointwise.h"
#include "igemm.cuh"
#include "pointwise_thin.cuh"

namespace unet_fast {

cudaError_t pointwise_fprop_cuda(const GemmLaunch& l, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  if (pointwise_thin_run<PointwisePass::kFprop>(l, stream, err)) return err;
  return igemm::run<PointwiseFprop>(l, stream);
}

cudaError_t pointwise_dgrad_cuda(const GemmLaunch& l, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  if (pointwise_thin_run<PointwisePass::kDgrad>(l, stream, err)) return err;
  return igemm::run<PointwiseDgrad>(l, stream);
}

}  // namespace unet_fast
