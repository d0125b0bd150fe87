// The wgrad unit (f16, 64x64 tiles; conv3x3_wgrad.cuh), for the layers with 64 output channels (the
// GEMM's M); conv3x3_wgrad_check/run choose it. Its own translation unit: built in parallel.
#include "conv3x3_wgrad.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE_UNIT(wgrad, WgradArgs, f16_m64, WgradUnit<cutlass::half_t, 64, 64>)

}  // namespace sm90
}  // namespace unet_fast
