// The up-conv's forward unit in bf16, 256x64 tiles (up2x2_fprop.cuh), for the up-convs with 64
// output channels; up2x2_fprop_check/run choose it. Its own translation unit: built in parallel.
#include "up2x2_fprop.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE(up2x2_fprop, UpFpropArgs, bf16_n64, UpFpropUnit<cutlass::bfloat16_t, 256, 64>)

}  // namespace sm90
}  // namespace unet_fast
