// The up-conv's forward unit in fp16, 128x128 tiles (up2x2_fprop.cuh); up2x2_fprop_check/run choose it. Its own
// translation unit: built in parallel.
#include "up2x2_fprop.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE(up2x2_fprop, UpFpropArgs, f16, UpFpropUnit<cutlass::half_t, 128, 128>)

}  // namespace sm90
}  // namespace unet_fast
