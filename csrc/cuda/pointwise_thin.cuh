// The 1x1 convolution with few output channels (the U-Net's head: num_classes <= kThinClasses)
// on the CUDA cores: forward, input gradient, weight gradient.
//
// As a GEMM the head is 64x64 tiles with 2 of 64 columns (forward), 2 of 32 K (input gradient) or
// 2 of 64 rows (weight gradient) doing work: the tensor-core engine (igemm.cuh) issues a whole
// tile's gathers and fragments for it, about 1,000 instructions a warp per 32-wide K step (the
// same512 step: 0.25 / 0.33 / 0.76 ms for the three, read off the SASS as a model, where their
// bytes take about 0.13 ms each at the DRAM bandwidth). Here each thread owns one 16-byte run of a
// pixel's C_in channels (V = 8 bf16/fp16, 4 fp32) and that run's slice of the weight, in registers
// for the whole kernel; a pixel's R = C_in / V runs are R consecutive threads, so a warp's loads
// of x, dx or the mask are whole pixels' rows (coalesced). The CTA walks the pixels kThinThreads / R
// at a time (a grid-stride loop); fp32 accumulation, exact (no TF32), in a fixed order within a
// CTA: over the run's channels, then over the runs in channel order (forward), or over the CTA's
// pixels in pixel order (weight gradient; the CTAs' totals meet in fp32 atomics, as the engine's
// split-K does).
//
// Taken by the launchers of pointwise_conv_kernel.cu / pointwise_conv_wgrad_kernel.cu when
// thin_runs says so: the 1x1 conv (G = 1), C_out <= kThinClasses, C_in = V * 2^j <= V * kThinThreads
// (the forward: <= V * kThinFpropRuns),
// and 16-byte runs of x (the forward and the weight gradient read x's runs; the input gradient
// writes dx's, and reads the ReLU mask's at the same offsets). Everything else keeps the tile engine.
#pragma once
#include "igemm.cuh"

namespace unet_fast {

constexpr int kThinThreads = 256, kThinClasses = 8;
constexpr int kThinFpropRuns = 32;  // the forward's R at most (its sums over R are unrolled)

// R, the runs of one pixel's channels, when this path takes the problem; 0 when it does not.
template <class T>
inline int thin_runs(const GemmArgs& a, bool x_runs) {
  constexpr int V = kRun<T>;
  const int r = a.cin / V;
  const bool pow2 = r > 0 && (r & (r - 1)) == 0;
  return a.G == 1 && a.cout >= 1 && a.cout <= kThinClasses && x_runs && a.cin % V == 0 && pow2 &&
                 r <= kThinThreads
             ? r
             : 0;
}

// n / d and n % d for one divisor d >= 1 and any 0 <= n < 2^31 by a multiply and a shift (Granlund and
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

// Pixel m of the (N, H, W) input grid -> (n, h, w), as GemmArgs::in_pixel.
struct ThinPixels {
  ThinDiv w, h;
  UF_HD explicit ThinPixels(const GemmArgs& a) : w(a.win), h(a.hin) {}
  UF_HD void operator()(int64_t m, int& n, int& hh, int& ww) const {
    const uint32_t mu = (uint32_t)m, t = w.div(mu), q = h.div(t);
    ww = (int)(mu - t * w.d);
    hh = (int)(t - q * h.d);
    n = (int)q;
  }
};

inline int thin_grid(int64_t pixels, int per_pass, int num_sms) {
  const int64_t passes = (pixels + per_pass - 1) / per_pass;
  // up to 8 CTAs an SM (2,048 threads, as many as the registers let in), then grid-stride
  const int64_t cap = 8L * (num_sms > 0 ? num_sms : 132);
  return (int)(passes < cap ? (passes > 0 ? passes : 1) : cap);
}

// The thread's slice of the weight, W[k, c] for the classes k and run r's channels c, at
// k * sk + c * sc of the glue's dense weight (zeros for the classes past C_out).
template <class T, int KC>
__device__ __forceinline__ void thin_weights(const GemmArgs& a, int64_t sk, int64_t sc, int r,
                                             float (&wr)[KC][kRun<T>]) {
  const T* w = static_cast<const T*>(a.w);
#pragma unroll
  for (int k = 0; k < KC; ++k)
#pragma unroll
    for (int v = 0; v < kRun<T>; ++v)
      wr[k][v] = k < a.cout ? Num<T>::to(w[k * sk + (r * kRun<T> + v) * sc]) : 0.f;
}

// out[m, k] = bias[k] + sum_c W[k, c] x[m, c]. W: the glue's dense (C_out, C_in) rows.
template <class T, int KC>
__global__ void __launch_bounds__(kThinThreads) pointwise_thin_fprop(const GemmArgs a, int R) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int V = kRun<T>;
  __shared__ float part[KC * kThinThreads];  // [class][thread]: one pass's run sums
  const int tid = threadIdx.x, r = tid % R, per_pass = kThinThreads / R;
  float wr[KC][V];
  thin_weights<T, KC>(a, a.cin, 1, r, wr);
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const ThinPixels pixel(a);
  for (int64_t base = (int64_t)blockIdx.x * per_pass; base < a.M;
       base += (int64_t)gridDim.x * per_pass) {
    const int64_t m = base + tid / R;
    float acc[KC];
#pragma unroll
    for (int k = 0; k < KC; ++k) acc[k] = 0.f;
    if (m < a.M) {
      int n, h, ww;
      pixel(m, n, h, ww);
      alignas(16) T xv[V];
      copy_run(xv, x + a.x_at(n, h, ww) + r * V);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const float xf = Num<T>::to(xv[v]);
#pragma unroll
        for (int k = 0; k < KC; ++k)
          if (k < a.cout) acc[k] = fmaf(xf, wr[k][v], acc[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < KC; ++k)
      if (k < a.cout) part[k * kThinThreads + tid] = acc[k];
    __syncthreads();
    // thread q < per_pass (the first warps only): pixel q's runs summed in channel order, the
    // bias, the store
    if (tid < per_pass && base + tid < a.M) {
      int n, h, ww;
      pixel(base + tid, n, h, ww);
      const int64_t o = a.out_at(n, h, ww);
#pragma unroll
      for (int k = 0; k < KC; ++k) {
        if (k < a.cout) {
          float s = 0.f;
#pragma unroll
          for (int j = 0; j < kThinFpropRuns; ++j)  // (unrolled: straight-line, R <= 32)
            if (j < R) s += part[k * kThinThreads + tid * R + j];
          out[o + k * a.os[1]] = bias_act<false, T>(a, k, s);
        }
      }
    }
    __syncthreads();  // (the next pass overwrites part)
  }
#else
  __trap();  // unet_fast's CUDA kernels need sm_80 or newer
#endif
}

// dx[m, c] = sum_k g[m, k] W[k, c], zero where the ReLU input out_mask <= 0 (threshold_backward's
// rule). W: the glue's dense (C_in, C_out) rows. dx (and out_mask, at dx's offsets) has contiguous,
// 16-byte aligned channel runs at every pixel (the launcher's check).
template <class T, int KC>
__global__ void __launch_bounds__(kThinThreads) pointwise_thin_dgrad(const GemmArgs a, int R) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int V = kRun<T>;
  const int tid = threadIdx.x, r = tid % R, per_pass = kThinThreads / R;
  float wr[KC][V];
  thin_weights<T, KC>(a, 1, a.cout, r, wr);
  const T* g = static_cast<const T*>(a.g);
  const T* mask = static_cast<const T*>(a.out_mask);
  T* out = static_cast<T*>(a.out);
  const ThinPixels pixel(a);
  for (int64_t m = (int64_t)blockIdx.x * per_pass + tid / R; m < a.M;
       m += (int64_t)gridDim.x * per_pass) {
    int n, h, ww;
    pixel(m, n, h, ww);
    const T* gp = g + a.g_at(n, h, ww);
    float gk[KC];
#pragma unroll
    for (int k = 0; k < KC; ++k) gk[k] = k < a.cout ? Num<T>::to(gp[k]) : 0.f;
    float acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      acc[v] = 0.f;
#pragma unroll
      for (int k = 0; k < KC; ++k)
        if (k < a.cout) acc[v] = fmaf(gk[k], wr[k][v], acc[v]);
    }
    const int64_t o = a.out_at(n, h, ww) + r * V;
    alignas(16) T mv[V];
    alignas(16) T ov[V];
    if (mask) {
      copy_run(mv, mask + o);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) mv[v] = Num<T>::from(1.f);  // (no mask: every value passes)
    }
#pragma unroll
    for (int v = 0; v < V; ++v) ov[v] = Num<T>::from(Num<T>::to(mv[v]) <= 0.f ? 0.f : acc[v]);
    uint4 word;
    memcpy(&word, ov, 16);
    *reinterpret_cast<uint4*>(out + o) = word;
  }
#else
  __trap();
#endif
}

// ws[k, c] += sum_m g[m, k] x[m, c] and ws_bias[k] += sum_m g[m, k] (fp32 workspaces, zeroed by
// the glue; ws_bias may be null): each thread sums its pixels in registers, the CTA its threads
// in pixel order through shared memory, the CTAs with one atomic add per element.
template <class T, int KC>
__global__ void __launch_bounds__(kThinThreads) pointwise_thin_wgrad(const GemmArgs a, int R,
                                                                     float* ws, float* ws_bias) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int V = kRun<T>;
  __shared__ float red[V * kThinThreads];  // [run element][thread]: one class at a time
  const int tid = threadIdx.x, r = tid % R, per_pass = kThinThreads / R;
  const T* g = static_cast<const T*>(a.g);
  const T* x = static_cast<const T*>(a.x);
  float acc[KC][V], accb[KC];
#pragma unroll
  for (int k = 0; k < KC; ++k) {
    accb[k] = 0.f;
#pragma unroll
    for (int v = 0; v < V; ++v) acc[k][v] = 0.f;
  }
  const ThinPixels pixel(a);
  for (int64_t m = (int64_t)blockIdx.x * per_pass + tid / R; m < a.M;
       m += (int64_t)gridDim.x * per_pass) {
    int n, h, ww;
    pixel(m, n, h, ww);
    const T* gp = g + a.g_at(n, h, ww);
    alignas(16) T xv[V];
    copy_run(xv, x + a.x_at(n, h, ww) + r * V);
#pragma unroll
    for (int k = 0; k < KC; ++k) {
      if (k < a.cout) {
        const float gf = Num<T>::to(gp[k]);
        accb[k] += gf;  // (every run's thread sums it; the run-0 threads' sums are kept)
#pragma unroll
        for (int v = 0; v < V; ++v) acc[k][v] = fmaf(gf, Num<T>::to(xv[v]), acc[k][v]);
      }
    }
  }
  // the CTA's sums: column c = r * V + v of class k is element v of the threads tid % R == r, in
  // pixel order; the bias from the run-0 threads (tid % R == 0), likewise
  // (k unrolled: acc stays in registers; a.cout is the same for every thread, so are the barriers)
#pragma unroll
  for (int k = 0; k < KC; ++k) {
    if (k >= a.cout) break;
#pragma unroll
    for (int v = 0; v < V; ++v) red[v * kThinThreads + tid] = acc[k][v];
    __syncthreads();
    for (int c = tid; c < a.cin; c += kThinThreads) {
      const int rc = c / V, v = c - rc * V;
      float s = 0.f;
      for (int q = 0; q < per_pass; ++q) s += red[v * kThinThreads + q * R + rc];
      atomicAdd(ws + (int64_t)k * a.cin + c, s);
    }
    __syncthreads();
    if (ws_bias) {
      red[tid] = accb[k];
      __syncthreads();
      if (tid == 0) {
        float s = 0.f;
        for (int q = 0; q < per_pass; ++q) s += red[q * R];
        atomicAdd(ws_bias + k, s);
      }
      __syncthreads();
    }
  }
#else
  __trap();
#endif
}

// The launchers (KC: the classes the kernel is compiled for, 2 -- the binary head, as few
// registers as possible -- or kThinClasses), then the dtype dispatch: false when the problem is
// not this path's (the caller runs the tile engine).
template <class T, int KC>
void thin_fprop(const GemmLaunch& l, int R, cudaStream_t stream) {
  UF_LAUNCH((pointwise_thin_fprop<T, KC>), thin_grid(l.args.M, kThinThreads / R, l.num_sms),
            kThinThreads, stream, l.args, R);
}

// (dx's runs as 16-byte words, or not this path)
template <class T>
bool thin_dgrad_fits(const GemmArgs& a) {
  constexpr int V = kRun<T>;
  auto al16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return a.os[1] == 1 && a.os[0] % V == 0 && a.os[2] % V == 0 && a.os[3] % V == 0 &&
         al16(a.out) && (!a.out_mask || al16(a.out_mask));
}

template <class T, int KC>
void thin_dgrad(const GemmLaunch& l, int R, cudaStream_t stream) {
  UF_LAUNCH((pointwise_thin_dgrad<T, KC>), thin_grid(l.args.M, kThinThreads / R, l.num_sms),
            kThinThreads, stream, l.args, R);
}

template <class T, int KC>
void thin_wgrad(const GemmLaunch& l, int R, cudaStream_t stream) {
  GemmArgs a = l.args;
  a.M = a.K;  // (the GEMM is (C_out x C_in) over K = the pixels, which the kernel walks as M)
  UF_LAUNCH((pointwise_thin_wgrad<T, KC>), thin_grid(a.M, kThinThreads / R, l.num_sms),
            kThinThreads, stream, a, R, l.ws, l.ws_bias);
}

enum class ThinPass { kFprop, kDgrad, kWgrad };

template <ThinPass P, class T>
bool thin_launch(const GemmLaunch& l, cudaStream_t stream, cudaError_t& err) {
  // 16-byte runs of x (read by the forward and the weight gradient), of dx (the input gradient's)
  const bool x_runs = P == ThinPass::kFprop ? l.args.vec_a
                      : P == ThinPass::kWgrad ? l.args.vec_b : thin_dgrad_fits<T>(l.args);
  const int R = thin_runs<T>(l.args, x_runs);
  if (!R || (P == ThinPass::kFprop && R > kThinFpropRuns)) return false;
  const bool two = l.args.cout <= 2;
  if constexpr (P == ThinPass::kFprop) {
    two ? thin_fprop<T, 2>(l, R, stream) : thin_fprop<T, kThinClasses>(l, R, stream);
  } else if constexpr (P == ThinPass::kDgrad) {
    two ? thin_dgrad<T, 2>(l, R, stream) : thin_dgrad<T, kThinClasses>(l, R, stream);
  } else {
    two ? thin_wgrad<T, 2>(l, R, stream) : thin_wgrad<T, kThinClasses>(l, R, stream);
  }
  err = cudaGetLastError();
  return true;
}

template <ThinPass P>
bool thin_run(const GemmLaunch& l, cudaStream_t stream, cudaError_t& err) {
  switch (l.dtype) {
    case DType::kHalf: return thin_launch<P, __half>(l, stream, err);
    case DType::kBFloat16: return thin_launch<P, __nv_bfloat16>(l, stream, err);
    case DType::kFloat: return thin_launch<P, float>(l, stream, err);
  }
  return false;
}

}  // namespace unet_fast
