// The fprop unit with 256x64 tiles (conv3x3_fprop_bf16.cuh), for the layers with 64 output
// channels; conv3x3_fprop_bf16_check/run choose it. Its own translation unit: built in parallel.
#include "conv3x3_fprop_bf16.cuh"

namespace unet_fast {
namespace sm90 {

int conv3x3_fprop_bf16_n64_check(const FpropArgs& a, char* why, int len) {
  return detail::check_unit<FpropUnit<256, 64>>(a, why, len);
}

int conv3x3_fprop_bf16_n64_run(const FpropArgs& a, cudaStream_t stream, char* why, int len) {
  return detail::run_unit<FpropUnit<256, 64>>(a, stream, why, len);
}

const char* conv3x3_fprop_bf16_n64_config() { return detail::config<FpropUnit<256, 64>>(); }

}  // namespace sm90
}  // namespace unet_fast
