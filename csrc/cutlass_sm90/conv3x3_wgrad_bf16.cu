// The wgrad unit with bf16 128x64 tiles (conv3x3_wgrad.cuh), and the pass's entry points (the
// 3x3 convolution's and the up-conv's, up2x2_wgrad_*: its 128x128 instantiations when the
// up-conv's output channels k are a multiple of 128, else the 128x64 ones): the
// problem's element type picks the bf16 or the fp16 instantiations; a problem with 64 output
// channels runs the 64x64 one (conv3x3_wgrad_*_m64.cu), whose rows it fills, where a 128-row tile
// would compute half empty; one whose input channels are a multiple of 128 runs the 128x128 one
// (conv3x3_wgrad_*_n128.cu): the same g tile feeds twice the FMAs, so its K step needs 24 KB from
// L2 for 512 tensor cycles where the 128x64 tile needs 16 KB for 256.
#include "conv3x3_wgrad.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE_UNIT(wgrad, WgradArgs, bf16, WgradUnit<cutlass::bfloat16_t, 128, 64>)
UNET_FAST_SM90_DEFINE_UP_WGRAD(bf16, WgradUnit<cutlass::bfloat16_t, 128, 64>)

static bool short_m(const Conv3x3Shape& s) { return s.k == 64; }
static bool wide(const Conv3x3Shape& s) { return !short_m(s) && s.c % 128 == 0; }

int conv3x3_wgrad_splits(const Conv3x3Shape& s, int num_sms) {
  // At most about eight waves of CTAs (and kWgradMaxSplits, and 8 K steps a slice: the pipeline
  // fills), and of those the count of least cost in K steps of the busiest SM: rounds x (steps a
  // slice + 1 to fill), plus each further slice's fp32 partials written and read back (8 bytes a
  // weight element) at the DRAM bandwidth, at kFlopPerDramByte. Units of 1/(64 x sms) step, all
  // integers: the Triton backend's utils.wgrad_split computes the same. Tiles: those of the
  // instantiation that runs (64x64, 128x128 or 128x64), the N tiles rounded to the 1x2 cluster.
  return wgrad_split_count(s.k, 9 * int64_t(s.c), short_m(s) ? 64 : 128, wide(s) ? 128 : 64,
                           wgrad_k_tiles(s), num_sms);
}

int conv3x3_wgrad_check(const WgradArgs& a, char* why, int len) {
  const bool f16 = a.elem == Elem::kF16;
  if (short_m(a.s))
    return f16 ? conv3x3_wgrad_f16_m64_check(a, why, len) : conv3x3_wgrad_bf16_m64_check(a, why, len);
  if (wide(a.s))
    return f16 ? conv3x3_wgrad_f16_n128_check(a, why, len) : conv3x3_wgrad_bf16_n128_check(a, why, len);
  return f16 ? conv3x3_wgrad_f16_check(a, why, len) : conv3x3_wgrad_bf16_check(a, why, len);
}

int conv3x3_wgrad_run(const WgradArgs& a, cudaStream_t stream, char* why, int len) {
  const bool f16 = a.elem == Elem::kF16;
  if (short_m(a.s))
    return f16 ? conv3x3_wgrad_f16_m64_run(a, stream, why, len)
               : conv3x3_wgrad_bf16_m64_run(a, stream, why, len);
  if (wide(a.s))
    return f16 ? conv3x3_wgrad_f16_n128_run(a, stream, why, len)
               : conv3x3_wgrad_bf16_n128_run(a, stream, why, len);
  return f16 ? conv3x3_wgrad_f16_run(a, stream, why, len) : conv3x3_wgrad_bf16_run(a, stream, why, len);
}

const char* conv3x3_wgrad_config_for(const Conv3x3Shape& s, Elem elem) {
  const bool f16 = elem == Elem::kF16;
  if (short_m(s)) return f16 ? conv3x3_wgrad_f16_m64_config() : conv3x3_wgrad_bf16_m64_config();
  if (wide(s)) return f16 ? conv3x3_wgrad_f16_n128_config() : conv3x3_wgrad_bf16_n128_config();
  return f16 ? conv3x3_wgrad_f16_config() : conv3x3_wgrad_bf16_config();
}

static bool up_wide(const UpWgradArgs& a) { return a.k % 128 == 0; }

int up2x2_wgrad_splits(const UpWgradArgs& a, int num_sms) {
  return wgrad_split_count(a.c, 4 * int64_t(a.k), 128, up_wide(a) ? 128 : 64, wgrad_k_tiles(a), num_sms);
}

int up2x2_wgrad_check(const UpWgradArgs& a, char* why, int len) {
  const bool f16 = a.elem == Elem::kF16;
  if (up_wide(a))
    return f16 ? up2x2_wgrad_f16_n128_check(a, why, len) : up2x2_wgrad_bf16_n128_check(a, why, len);
  return f16 ? up2x2_wgrad_f16_check(a, why, len) : up2x2_wgrad_bf16_check(a, why, len);
}

int up2x2_wgrad_run(const UpWgradArgs& a, cudaStream_t stream, char* why, int len) {
  const bool f16 = a.elem == Elem::kF16;
  if (up_wide(a))
    return f16 ? up2x2_wgrad_f16_n128_run(a, stream, why, len) : up2x2_wgrad_bf16_n128_run(a, stream, why, len);
  return f16 ? up2x2_wgrad_f16_run(a, stream, why, len) : up2x2_wgrad_bf16_run(a, stream, why, len);
}

const char* up2x2_wgrad_config_for(const UpWgradArgs& a) {
  const bool f16 = a.elem == Elem::kF16;
  if (up_wide(a)) return f16 ? conv3x3_wgrad_f16_n128_config() : conv3x3_wgrad_bf16_n128_config();
  return f16 ? conv3x3_wgrad_f16_config() : conv3x3_wgrad_bf16_config();
}

}  // namespace sm90
}  // namespace unet_fast
