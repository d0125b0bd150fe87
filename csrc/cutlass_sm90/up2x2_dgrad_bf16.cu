// The up-conv's dgrad unit in bf16 (up2x2_dgrad.cuh), and the pass's entry points: the problem's
// element type picks the bf16 or the fp16 instantiation.
#include "up2x2_dgrad.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE(up2x2_dgrad, UpDgradArgs, bf16, UpDgradUnit<cutlass::bfloat16_t>)

int up2x2_dgrad_check(const UpDgradArgs& a, char* why, int len) {
  return a.elem == Elem::kF16 ? up2x2_dgrad_f16_check(a, why, len) : up2x2_dgrad_bf16_check(a, why, len);
}
int up2x2_dgrad_run(const UpDgradArgs& a, cudaStream_t stream, char* why, int len) {
  return a.elem == Elem::kF16 ? up2x2_dgrad_f16_run(a, stream, why, len)
                              : up2x2_dgrad_bf16_run(a, stream, why, len);
}

}  // namespace sm90
}  // namespace unet_fast
