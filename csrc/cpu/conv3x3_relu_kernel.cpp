// conv3x3_relu, conv3x3_relu_pool and _conv3x3_relu_backward on the CPU: the implicit GEMMs of
// igemm_conv3x3.h on the C++ engine (igemm_cpu.h); argument checks and layouts in conv_ops.h.
#include <torch/library.h>

#include "igemm_cpu.h"

namespace unet_fast {

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  using Ops = ConvOps<CpuEngine>;
  m.impl("conv3x3_relu", &Ops::conv3x3_relu);
  m.impl("conv3x3_relu_pool", &Ops::conv3x3_relu_pool);
  m.impl("_conv3x3_relu_backward", &Ops::conv3x3_relu_backward);
}

}  // namespace unet_fast
