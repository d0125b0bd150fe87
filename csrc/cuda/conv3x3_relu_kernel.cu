// conv3x3 + bias + ReLU forward, with and without the 2x2 max-pool epilogue (igemm.cuh); one input
// channel (the first layer on grey images) on the CUDA cores (conv3x3_thin.cuh).
#include "../igemm_conv3x3.h"
#include "conv3x3_thin.cuh"
#include "igemm.cuh"

namespace unet_fast {
namespace {

template <class T>
using FpropPlain = Conv3x3Fprop<T, false>;
template <class T>
using FpropPool = Conv3x3Fprop<T, true>;

}  // namespace

cudaError_t conv3x3_fprop_cuda(const GemmLaunch& l, bool pool, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  if (conv3x3_thin_fprop_run(l, pool, stream, err)) return err;
  return pool ? igemm::run<FpropPool>(l, stream) : igemm::run<FpropPlain>(l, stream);
}

}  // namespace unet_fast
