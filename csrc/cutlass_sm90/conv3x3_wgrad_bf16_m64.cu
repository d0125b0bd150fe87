// The wgrad unit with 64x64 tiles (conv3x3_wgrad_bf16.cuh), for the layers with 64 output
// channels (the GEMM's M); conv3x3_wgrad_bf16_check/run choose it. Its own translation
// unit: built in parallel.
#include "conv3x3_wgrad_bf16.cuh"

namespace unet_fast {
namespace sm90 {

int conv3x3_wgrad_bf16_m64_check(const WgradArgs& a, char* why, int len) {
  return WgradUnit<64, 64>::check_host(a, why, len);
}

int conv3x3_wgrad_bf16_m64_run(const WgradArgs& a, cudaStream_t stream, char* why, int len) {
  return WgradUnit<64, 64>::run(a, stream, why, len);
}

const char* conv3x3_wgrad_bf16_m64_config() { return detail::config<WgradUnit<64, 64>>(); }

}  // namespace sm90
}  // namespace unet_fast
