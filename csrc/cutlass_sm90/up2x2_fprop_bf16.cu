// The up-conv's forward unit in bf16 (up2x2_fprop.cuh), and the pass's entry points: the problem's
// element type picks the bf16 or the fp16 instantiation.
#include "up2x2_fprop.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE(up2x2_fprop, UpFpropArgs, bf16, UpFpropUnit<cutlass::bfloat16_t>)

int up2x2_fprop_check(const UpFpropArgs& a, char* why, int len) {
  return a.elem == Elem::kF16 ? up2x2_fprop_f16_check(a, why, len) : up2x2_fprop_bf16_check(a, why, len);
}
int up2x2_fprop_run(const UpFpropArgs& a, cudaStream_t stream, char* why, int len) {
  return a.elem == Elem::kF16 ? up2x2_fprop_f16_run(a, stream, why, len)
                              : up2x2_fprop_bf16_run(a, stream, why, len);
}

}  // namespace sm90
}  // namespace unet_fast
