// The fprop unit (bf16, 256x64 tiles; conv3x3_fprop.cuh), for the layers with 64 output channels;
// conv3x3_fprop_check/run choose it. Its own translation unit: built in parallel.
#include "conv3x3_fprop.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE_UNIT(fprop, FpropArgs, bf16_n64, FpropUnit<cutlass::bfloat16_t, 256, 64>)

}  // namespace sm90
}  // namespace unet_fast
