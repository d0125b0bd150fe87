// The wgrad unit with 128x128 tiles (conv3x3_wgrad_bf16.cuh), for the layers whose input
// channels are a multiple of 128; conv3x3_wgrad_bf16_check/run choose it. Its own translation
// unit: built in parallel.
#include "conv3x3_wgrad_bf16.cuh"

namespace unet_fast {
namespace sm90 {

int conv3x3_wgrad_bf16_n128_check(const WgradArgs& a, char* why, int len) {
  return WgradUnit<128, 128>::check_host(a, why, len);
}

int conv3x3_wgrad_bf16_n128_run(const WgradArgs& a, cudaStream_t stream, char* why, int len) {
  return WgradUnit<128, 128>::run(a, stream, why, len);
}

const char* conv3x3_wgrad_bf16_n128_config() { return detail::config<WgradUnit<128, 128>>(); }

}  // namespace sm90
}  // namespace unet_fast
