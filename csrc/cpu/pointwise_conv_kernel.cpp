// conv1x1, conv_transpose2x2, up_concat and their backward ops on the CPU: per-pixel GEMMs
// (igemm_pointwise.h) on the C++ engine (igemm_cpu.h); argument checks and layouts in conv_ops.h.
#include <torch/library.h>

#include "igemm_cpu.h"

namespace unet_fast {

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  using Ops = ConvOps<CpuEngine>;
  m.impl("conv1x1", &Ops::conv1x1);
  m.impl("_conv1x1_backward", &Ops::conv1x1_backward);
  m.impl("conv_transpose2x2", &Ops::conv_transpose2x2);
  m.impl("_conv_transpose2x2_backward", &Ops::conv_transpose2x2_backward);
  m.impl("up_concat", &Ops::up_concat);
}

}  // namespace unet_fast
