// The wgrad unit with bf16 128x64 tiles (conv3x3_wgrad.cuh), and the pass's entry points: the
// problem's element type picks the bf16 or the fp16 instantiations; a problem with 64 output
// channels runs the 64x64 one (conv3x3_wgrad_*_m64.cu), whose rows it fills, where a 128-row tile
// would compute half empty; one whose input channels are a multiple of 128 runs the 128x128 one
// (conv3x3_wgrad_*_n128.cu): the same g tile feeds twice the FMAs, so its K step needs 24 KB from
// L2 for 512 tensor cycles where the 128x64 tile needs 16 KB for 256.
#include "conv3x3_wgrad.cuh"

namespace unet_fast {
namespace sm90 {

UNET_FAST_SM90_DEFINE_UNIT(wgrad, WgradArgs, bf16, WgradUnit<cutlass::bfloat16_t, 128, 64>)

static bool short_m(const Conv3x3Shape& s) { return s.k == 64; }
static bool wide(const Conv3x3Shape& s) { return !short_m(s) && s.c % 128 == 0; }

int conv3x3_wgrad_splits(const Conv3x3Shape& s, int num_sms) {
  // At most about eight waves of CTAs (and kWgradMaxSplits, and 8 K steps a slice: the pipeline
  // fills), and of those the count of least cost in K steps of the busiest SM: rounds x (steps a
  // slice + 1 to fill), plus each further slice's fp32 partials written and read back (8 bytes a
  // weight element) at the DRAM bandwidth, at kFlopPerDramByte. Units of 1/(64 x sms) step, all
  // integers: the Triton backend's utils.wgrad_split computes the same. Tiles: those of the
  // instantiation that runs (64x64, 128x128 or 128x64), the N tiles rounded to the 1x2 cluster.
  constexpr int64_t kFlopPerDramByte = 200;  // H200 790 TFLOP/s / 4.3 TB/s, H100 989 / 3.35
  constexpr int64_t kStepPixels = 64;
  const int64_t sms = num_sms > 0 ? num_sms : 132;
  const int64_t tile_m = short_m(s) ? 64 : 128, tile_n = wide(s) ? 128 : 64;
  const int64_t m_tiles = (s.k + tile_m - 1) / tile_m;
  const int64_t n_tiles = ((9 * int64_t(s.c) + tile_n - 1) / tile_n + 1) / 2 * 2;
  const int64_t tiles = m_tiles * n_tiles;
  const int64_t k_tiles = wgrad_k_tiles(s);
  int64_t most = (8 * sms + tiles - 1) / tiles;
  if (most > kWgradMaxSplits) most = kWgradMaxSplits;
  if (most > k_tiles / 8) most = k_tiles / 8;
  int64_t best = 1, best_cost = -1;
  for (int64_t sp = 1; sp <= most; ++sp) {
    // the busiest SM's K steps
    const int64_t busiest = (tiles * sp + sms - 1) / sms * ((k_tiles + sp - 1) / sp + 1);
    const int64_t cost = busiest * kStepPixels * sms + (sp - 1) * tiles * 4 * kFlopPerDramByte;
    if (best_cost < 0 || cost < best_cost) {
      best = sp;
      best_cost = cost;
    }
  }
  return int(best);
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

}  // namespace sm90
}  // namespace unet_fast
