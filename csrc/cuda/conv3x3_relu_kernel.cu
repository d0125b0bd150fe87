// conv3x3 + bias + ReLU forward, with and without the 2x2 max-pool epilogue (igemm.cuh).
#include "igemm.cuh"

namespace unet_fast {

cudaError_t conv3x3_fprop_cuda(const GemmLaunch& l, bool pool, cudaStream_t stream) {
  return pool ? igemm::run<igemm::FpropPool>(l, stream) : igemm::run<igemm::FpropPlain>(l, stream);
}

}  // namespace unet_fast
