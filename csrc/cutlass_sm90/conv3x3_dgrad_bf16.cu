// The dgrad unit with bf16 128x128 tiles (conv3x3_dgrad.cuh), and the pass's entry points: the
// problem's element type picks the bf16 or the fp16 instantiations, and a problem with 64 input
// channels (the GEMM's N) runs the 256x64 ones (conv3x3_dgrad_*_n64.cu), whose tiles it fills.
#include "conv3x3_dgrad.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE_UNIT(dgrad, DgradArgs, bf16, DgradUnit<cutlass::bfloat16_t, 128, 128>)

static bool narrow(const Conv3x3Shape& s) { return s.c == 64; }

int conv3x3_dgrad_check(const DgradArgs& a, char* why, int len) {
  if (a.elem == Elem::kF16)
    return narrow(a.s) ? conv3x3_dgrad_f16_n64_check(a, why, len)
                       : conv3x3_dgrad_f16_check(a, why, len);
  return narrow(a.s) ? conv3x3_dgrad_bf16_n64_check(a, why, len)
                     : conv3x3_dgrad_bf16_check(a, why, len);
}

int conv3x3_dgrad_run(const DgradArgs& a, cudaStream_t stream, char* why, int len) {
  if (a.elem == Elem::kF16)
    return narrow(a.s) ? conv3x3_dgrad_f16_n64_run(a, stream, why, len)
                       : conv3x3_dgrad_f16_run(a, stream, why, len);
  return narrow(a.s) ? conv3x3_dgrad_bf16_n64_run(a, stream, why, len)
                     : conv3x3_dgrad_bf16_run(a, stream, why, len);
}

const char* conv3x3_dgrad_config_for(const Conv3x3Shape& s, Elem elem) {
  if (elem == Elem::kF16)
    return narrow(s) ? conv3x3_dgrad_f16_n64_config() : conv3x3_dgrad_f16_config();
  return narrow(s) ? conv3x3_dgrad_bf16_n64_config() : conv3x3_dgrad_bf16_config();
}

}  // namespace sm90
}  // namespace unet_fast
