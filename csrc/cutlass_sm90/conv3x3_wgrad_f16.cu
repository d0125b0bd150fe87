// The wgrad unit (f16, 128x64 tiles; conv3x3_wgrad.cuh); conv3x3_wgrad_check/run and
// up2x2_wgrad_check/run choose it. Its own translation unit: built in parallel.
#include "conv3x3_wgrad.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE_UNIT(wgrad, WgradArgs, f16, WgradUnit<cutlass::half_t, 128, 64>)
UNET_FAST_SM90_DEFINE_UP_WGRAD(f16, WgradUnit<cutlass::half_t, 128, 64>)

}  // namespace sm90
}  // namespace unet_fast
