// Registers the CUDA kernels as the CUDA implementations of the unet_fast ops. The glue they
// share with the CPU emulator of the CUDA execution model (tests/cuda_emu) is in glue.h; this file
// adds what only a GPU has: device checks, the device guard, the current stream, the SM count.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "glue.h"
#if defined(UNET_FAST_WITH_CUTLASS_SM90)
#include "cutlass_sm90_glue.h"
#endif

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
  m.impl("_max_pool2x2_backward_sum", &G::max_pool2x2_backward_sum);
  m.impl("conv_transpose2x2", &G::conv_transpose2x2);
  m.impl("_conv_transpose2x2_backward", &G::conv_transpose2x2_backward);
  m.impl("up_concat", &G::up_concat);
  m.impl("conv1x1", &G::conv1x1);
  m.impl("_conv1x1_backward", &G::conv1x1_backward);
}

#if defined(UNET_FAST_WITH_CUTLASS_SM90)
// The CUTLASS sm_90a path (csrc/cutlass_sm90): its own ops, chosen by unet_fast/backends/cuda_ops.py.
TORCH_LIBRARY_FRAGMENT(unet_fast, m) {
  // relu_input / grad_masked: the model's ReLU-gradient flags (unet_fast/_dispatch.py), unused by
  // the forward but kept with it for the autograd formula (cuda_ops.py).
  m.def("_conv3x3_relu_sm90(Tensor x, Tensor weight, Tensor? bias, int padding, bool relu_input, "
        "bool grad_masked) -> Tensor");
  m.def("_conv3x3_relu_sm90_backward(Tensor grad, Tensor y, Tensor x, Tensor weight, int padding, "
        "bool[3] output_mask, bool relu_input, bool grad_masked) -> (Tensor, Tensor, Tensor)");
  // The decoder's up-conv (conv_transpose2x2; with a skip, up_concat) ...
  m.def("_up_concat_sm90(Tensor? skip, Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // ... its dx, times (x > 0) with relu_input,
  m.def("_conv_transpose2x2_dgrad_sm90(Tensor grad, Tensor x, Tensor weight, bool relu_input) -> Tensor");
  // ... and its weight and bias gradients (output_mask: [weight, bias]).
  m.def("_conv_transpose2x2_wgrad_sm90(Tensor grad, Tensor x, Tensor weight, bool[2] output_mask) "
        "-> (Tensor, Tensor)");
  // Host-side checks of the units (CUTLASS's can_implement included): no tensors, no GPU.
  m.def("_cutlass_sm90_check(str pass_, int[] shape, str dtype=\"bf16\") -> str", &cutlass_glue::cutlass_sm90_check);
  m.def("_cutlass_sm90_configs() -> str[]", &cutlass_glue::cutlass_sm90_configs);
  m.def("_cutlass_sm90_config_for(str pass_, int[] shape, str dtype=\"bf16\") -> str",
        &cutlass_glue::cutlass_sm90_config_for);
  m.def("_cutlass_sm90_wgrad_splits(int[] shape, int sms, str pass_=\"wgrad\") -> int",
        &cutlass_glue::cutlass_sm90_wgrad_splits);
}

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("_conv3x3_relu_sm90", &cutlass_glue::conv3x3_relu_sm90);
  m.impl("_conv3x3_relu_sm90_backward", &cutlass_glue::conv3x3_relu_sm90_backward);
  m.impl("_up_concat_sm90", &cutlass_glue::up_concat_sm90<G::Engine>);
  m.impl("_conv_transpose2x2_dgrad_sm90", &cutlass_glue::conv_transpose2x2_dgrad_sm90);
  m.impl("_conv_transpose2x2_wgrad_sm90", &cutlass_glue::conv_transpose2x2_wgrad_sm90);
}
#endif

}  // namespace unet_fast
