// The up-conv's dgrad unit in fp16 (up2x2_dgrad.cuh).
#include "up2x2_dgrad.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE(up2x2_dgrad, UpDgradArgs, f16, UpDgradUnit<cutlass::half_t>)

}  // namespace sm90
}  // namespace unet_fast
