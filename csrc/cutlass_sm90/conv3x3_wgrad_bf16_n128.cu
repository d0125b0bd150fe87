// The wgrad unit (bf16, 128x128 tiles; conv3x3_wgrad.cuh), for the layers whose input channels are
// a multiple of 128 (the up-conv's: output channels); conv3x3_wgrad_check/run and
// up2x2_wgrad_check/run choose it. Its own translation unit: built in parallel.
#include "conv3x3_wgrad.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE_UNIT(wgrad, WgradArgs, bf16_n128, WgradUnit<cutlass::bfloat16_t, 128, 128>)
UNET_FAST_SM90_DEFINE_UP_WGRAD(bf16_n128, WgradUnit<cutlass::bfloat16_t, 128, 128>)

}  // namespace sm90
}  // namespace unet_fast
