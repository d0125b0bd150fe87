// Registers the CUDA kernels as the CUDA implementations of the unet_fast ops. The glue they
// share with the CPU emulator of the CUDA execution model (tests/cuda_emu) is in glue.h; this file
// adds what only a GPU has: device checks, the device guard, the current stream, the SM count.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "glue.h"

namespace unet_fast {
namespace {

struct CudaDevice {
  static void check(const at::Tensor& t, const char* name) {
    check_device_type(t, name, at::kCUDA, "a CUDA tensor");
  }
  using Guard = c10::cuda::CUDAGuard;
  static cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }
  static int num_sms() {
    int dev = 0, n = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }
  static void check_launch(cudaError_t err) { C10_CUDA_CHECK(err); }
};

using G = CudaGlue<CudaDevice>;

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("crop_concat", &G::crop_concat);
  m.impl("_crop_concat_backward", &G::crop_concat_backward);
  m.impl("conv3x3_relu", &G::conv3x3_relu);
  m.impl("conv3x3_relu_pool", &G::conv3x3_relu_pool);
  m.impl("_conv3x3_relu_backward", &G::conv3x3_relu_backward);
  m.impl("max_pool2x2", &G::max_pool2x2);
  m.impl("_max_pool2x2_backward", &G::max_pool2x2_backward);
  m.impl("conv_transpose2x2", &G::conv_transpose2x2);
  m.impl("_conv_transpose2x2_backward", &G::conv_transpose2x2_backward);
  m.impl("up_concat", &G::up_concat);
  m.impl("conv1x1", &G::conv1x1);
  m.impl("_conv1x1_backward", &G::conv1x1_backward);
}

}  // namespace unet_fast
