// conv3x3 + bias + ReLU forward, with and without the 2x2 max-pool epilogue (igemm.cuh).
#include "../igemm_conv3x3.h"
#include "igemm.cuh"

namespace unet_fast {
namespace {

template <class T>
using FpropPlain = Conv3x3Fprop<T, false>;
template <class T>
using FpropPool = Conv3x3Fprop<T, true>;

}  // namespace

cudaError_t conv3x3_fprop_cuda(const GemmLaunch& l, bool pool, cudaStream_t stream) {
  return pool ? igemm::run<FpropPool>(l, stream) : igemm::run<FpropPlain>(l, stream);
}

}  // namespace unet_fast
