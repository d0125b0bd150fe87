// The fprop unit (f16, 128x128 tiles; conv3x3_fprop.cuh); conv3x3_fprop_check/run choose it. Its
// own translation unit: built in parallel.
#include "conv3x3_fprop.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE_UNIT(fprop, FpropArgs, f16, FpropUnit<cutlass::half_t, 128, 128>)

}  // namespace sm90
}  // namespace unet_fast
