// What the CUDA-core kernels for thin convolutions share: the 1x1 head (pointwise_thin.cuh) and the
// first layer's 3x3 conv of one input channel (conv3x3_thin.cuh), whose GEMMs have a side of 1-9
// (the head's classes, the first layer's taps) that a 64x64 tensor-core tile (igemm.cuh) would
// mostly pad. A CTA of kThinThreads threads; each thread owns one 16-byte run (V = 8 bf16/fp16
// channels, 4 fp32) of a pixel's channels, the R runs of a pixel are consecutive threads (a warp's
// loads and stores are whole pixels' rows), and the CTA walks the pixels kThinThreads / R at a
// time, grid-stride; the thread's run index r = tid % R is the same on every pass, so its slice of
// the weight (or of the weight gradient) stays in registers. fp32 accumulation, exact (no TF32).
#pragma once
#include "grid_walk.cuh"  // cta_run_sums
#include "igemm.cuh"

namespace unet_fast {

constexpr int kThinThreads = 256;
static_assert(kThinThreads == kWalkThreads, "thin_cta_sum reduces over cta_run_sums' CTA");

// n / d for one divisor d >= 1 and any 0 <= n < 2^31 by a multiply and a shift (Granlund and
// Montgomery's division by invariant integers): the pixel decode of every loop iteration, whose
// signed divisions by the runtime H and W cost about 30 instructions each (reciprocal included:
// ptxas does not hoist it).
struct ThinDiv {
  uint32_t d = 1, mul = 0, shift = 0;
  UF_HD explicit ThinDiv(int div) : d((uint32_t)div) {
    while (shift < 31 && (1u << shift) < d) ++shift;  // ceil(log2 d)
    mul = (uint32_t)((((uint64_t)1 << 32) * (((uint64_t)1 << shift) - d)) / d + 1);
  }
  UF_HD uint32_t div(uint32_t n) const {
    const uint32_t hi = (uint32_t)(((uint64_t)n * mul) >> 32);
    return (hi + n) >> shift;
  }
};

// Pixel m of an (N, H, W) grid -> (n, h, w), as GemmArgs::unravel.
struct ThinPixels {
  ThinDiv w, h;
  UF_HD ThinPixels(int H, int W) : w(W), h(H) {}
  UF_HD void operator()(int64_t m, int& n, int& hh, int& ww) const {
    const uint32_t mu = (uint32_t)m, t = w.div(mu), q = h.div(t);
    ww = (int)(mu - t * w.d);
    hh = (int)(t - q * h.d);
    n = (int)q;
  }
};

// R = channels / V when it is a power of two of at most `most` runs, else 0 (not this path).
template <class T>
inline int thin_pow2_runs(int channels, int most) {
  constexpr int V = kRun<T>;
  const int r = channels / V;
  return channels % V == 0 && r > 0 && (r & (r - 1)) == 0 && r <= most ? r : 0;
}

// Whether the output (and out_mask, at its offsets) takes 16-byte words at every pixel.
template <class T>
inline bool thin_out_runs(const GemmArgs& a) {
  constexpr int V = kRun<T>;
  auto al16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return a.os[1] == 1 && a.os[0] % V == 0 && a.os[2] % V == 0 && a.os[3] % V == 0 &&
         al16(a.out) && (!a.out_mask || al16(a.out_mask));
}

// f(n, h, w) for each pixel of this thread (the grid-stride walk every kernel but the head's
// forward has: pass after pass of kThinThreads / R pixels, the thread's at tid / R of each; no
// barrier inside).
template <class F>
__device__ __forceinline__ void thin_for_each_pixel(const GemmArgs& a, const ThinPixels& pixel,
                                                    int R, F&& f) {
  const int per_pass = kThinThreads / R;
  for (int64_t m = (int64_t)blockIdx.x * per_pass + (int)threadIdx.x / R; m < a.M;
       m += (int64_t)gridDim.x * per_pass) {
    int n, h, w;
    pixel(m, n, h, w);
    f(n, h, w);
  }
}

inline int thin_grid(int64_t pixels, int per_pass, int num_sms) {
  const int64_t passes = (pixels + per_pass - 1) / per_pass;
  // up to 8 CTAs an SM (2,048 threads, as many as the registers let in), then grid-stride
  const int64_t cap = 8L * (num_sms > 0 ? num_sms : 132);
  return (int)(passes < cap ? (passes > 0 ? passes : 1) : cap);
}

// The CTA's sums of one row of per-thread run sums (acc: element v of run r = tid % R, each thread
// its own pixels'), added into dst[c * cs] for the columns c = r * V + v < cols: the threads of a
// run summed in pixel order through `red` (V * kThinThreads floats), one fp32 atomic per column
// and CTA. Every thread of the CTA calls it (barriers).
template <int V>
__device__ __forceinline__ void thin_cta_sum(const float (&acc)[V], int R, int cols, float* dst,
                                             int64_t cs, float* red) {
  cta_run_sums(acc, R, cols, red, [&](int c, float s) { atomicAdd(dst + c * cs, s); });
}

// A run of V results stored as one 16-byte word, each zeroed where the ReLU input `mask` (at the
// same offset, may be null) is <= 0 (threshold_backward's rule: a NaN passes).
template <class T, int V>
__device__ __forceinline__ void thin_store_masked(T* out, const T* mask, const float (&acc)[V]) {
  alignas(16) T mv[V];
  alignas(16) T ov[V];
  if (mask) {
    copy_run(mv, mask);
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) mv[v] = Num<T>::from(1.f);  // (no mask: every value passes)
  }
#pragma unroll
  for (int v = 0; v < V; ++v) ov[v] = Num<T>::from(Num<T>::to(mv[v]) <= 0.f ? 0.f : acc[v]);
  uint4 word;
  memcpy(&word, ov, 16);
  *reinterpret_cast<uint4*>(out) = word;
}

// f(T{}) for the element type T of `dt` (a launcher: true when it launched); err: the launch's
// error when one ran.
template <class F>
bool thin_dispatch(DType dt, cudaError_t& err, F&& f) {
  bool ran = false;
  switch (dt) {
    case DType::kHalf: ran = f(__half{}); break;
    case DType::kBFloat16: ran = f(__nv_bfloat16{}); break;
    case DType::kFloat: ran = f(float{}); break;
  }
  if (ran) err = cudaGetLastError();
  return ran;
}

}  // namespace unet_fast
