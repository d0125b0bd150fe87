// The dgrad unit (bf16, 256x64 tiles; conv3x3_dgrad.cuh), for the layers with 64 input channels
// (the GEMM's N); conv3x3_dgrad_check/run choose it. Its own translation unit: built in parallel.
#include "conv3x3_dgrad.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE_UNIT(dgrad, DgradArgs, bf16_n64, DgradUnit<cutlass::bfloat16_t, 256, 64>)

}  // namespace sm90
}  // namespace unet_fast
