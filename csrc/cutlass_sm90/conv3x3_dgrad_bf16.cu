// The dgrad unit with 128x128 tiles (conv3x3_dgrad_bf16.cuh), and the pass's entry points: a
// problem with 64 input channels (the GEMM's N) runs the 256x64 instantiation
// (conv3x3_dgrad_bf16_n64.cu), whose tiles it fills.
#include "conv3x3_dgrad_bf16.cuh"

namespace unet_fast {
namespace sm90 {

static bool narrow(const Conv3x3Shape& s) { return s.c == 64; }

int conv3x3_dgrad_bf16_check(const DgradArgs& a, char* why, int len) {
  if (narrow(a.s)) return conv3x3_dgrad_bf16_n64_check(a, why, len);
  return detail::check_unit<DgradUnit<128, 128>>(a, why, len);
}

int conv3x3_dgrad_bf16_run(const DgradArgs& a, cudaStream_t stream, char* why, int len) {
  if (narrow(a.s)) return conv3x3_dgrad_bf16_n64_run(a, stream, why, len);
  return detail::run_unit<DgradUnit<128, 128>>(a, stream, why, len);
}

const char* conv3x3_dgrad_bf16_config() { return detail::config<DgradUnit<128, 128>>(); }

const char* conv3x3_dgrad_bf16_config_for(const Conv3x3Shape& s) {
  return narrow(s) ? conv3x3_dgrad_bf16_n64_config() : conv3x3_dgrad_bf16_config();
}

}  // namespace sm90
}  // namespace unet_fast
