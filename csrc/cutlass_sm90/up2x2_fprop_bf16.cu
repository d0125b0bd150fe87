// The up-conv's forward unit with bf16 128x128 tiles (up2x2_fprop.cuh), and the pass's entry
// points: the problem's element type picks the bf16 or the fp16 instantiations, and an up-conv
// with 64 output channels runs the 256x64 ones (up2x2_fprop_*_n64.cu), whose tiles it fills.
#include "up2x2_fprop.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE(up2x2_fprop, UpFpropArgs, bf16, UpFpropUnit<cutlass::bfloat16_t, 128, 128>)

static bool narrow(const UpFpropArgs& a) { return a.k == 64; }

int up2x2_fprop_check(const UpFpropArgs& a, char* why, int len) {
  if (a.elem == Elem::kF16)
    return narrow(a) ? up2x2_fprop_f16_n64_check(a, why, len) : up2x2_fprop_f16_check(a, why, len);
  return narrow(a) ? up2x2_fprop_bf16_n64_check(a, why, len) : up2x2_fprop_bf16_check(a, why, len);
}

int up2x2_fprop_run(const UpFpropArgs& a, cudaStream_t stream, char* why, int len) {
  if (a.elem == Elem::kF16)
    return narrow(a) ? up2x2_fprop_f16_n64_run(a, stream, why, len) : up2x2_fprop_f16_run(a, stream, why, len);
  return narrow(a) ? up2x2_fprop_bf16_n64_run(a, stream, why, len) : up2x2_fprop_bf16_run(a, stream, why, len);
}

const char* up2x2_fprop_config_for(const UpFpropArgs& a) {
  if (a.elem == Elem::kF16) return narrow(a) ? up2x2_fprop_f16_n64_config() : up2x2_fprop_f16_config();
  return narrow(a) ? up2x2_fprop_bf16_n64_config() : up2x2_fprop_bf16_config();
}

}  // namespace sm90
}  // namespace unet_fast
