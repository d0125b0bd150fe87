// The 1x1 convolution with few output channels (the U-Net's head: num_classes <= kThinClasses)
// on the CUDA cores (thin.cuh): forward, input gradient, weight gradient.
//
// As a GEMM the head is 64x64 tiles with 2 of 64 columns (forward), 2 of 32 K (input gradient) or
// 2 of 64 rows (weight gradient) doing work: the tensor-core engine (igemm.cuh) issues a whole
// tile's gathers and fragments for it, about 1,000 instructions a warp per 32-wide K step. Here a
// thread owns one run of C_in and that run's slice of the weight (all classes). The forward sums
// its runs' partial dot products in channel order through shared memory; the weight gradient sums
// each thread's pixels in registers, then the CTA's (thin_cta_sum), then the CTAs' in fp32 atomics
// (as the tile engine's split-K).
//
// Taken by the launchers of pointwise_conv_kernel.cu / pointwise_conv_wgrad_kernel.cu when
// pointwise_thin_launch says so: the 1x1 conv (G = 1), C_out <= kThinClasses, C_in = V * 2^j
// <= V * kThinThreads (the forward: <= V * kThinFpropRuns), and 16-byte runs of x (the forward and
// the weight gradient read x's runs; the input gradient writes dx's, and reads the ReLU mask's at
// the same offsets).
// Everything else keeps the tile engine.
#pragma once
#include "thin.cuh"

namespace unet_fast {

constexpr int kThinClasses = 8;
constexpr int kThinFpropRuns = 32;  // the forward's R at most (its sums over R are unrolled)

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
  const ThinPixels pixel(a.hin, a.win);
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
  const int r = (int)threadIdx.x % R;  // (the thread's run, on every pass)
  float wr[KC][V];
  thin_weights<T, KC>(a, 1, a.cout, r, wr);
  const T* g = static_cast<const T*>(a.g);
  const T* mask = static_cast<const T*>(a.out_mask);
  T* out = static_cast<T*>(a.out);
  const ThinPixels pixel(a.hin, a.win);
  thin_for_each_pixel(a, pixel, R, [&](int n, int h, int ww) {
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
    thin_store_masked<T, V>(out + o, mask ? mask + o : nullptr, acc);
  });
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
  const int r = (int)threadIdx.x % R;  // (the thread's run, on every pass)
  const T* g = static_cast<const T*>(a.g);
  const T* x = static_cast<const T*>(a.x);
  float acc[KC][V], accb[KC];
#pragma unroll
  for (int k = 0; k < KC; ++k) {
    accb[k] = 0.f;
#pragma unroll
    for (int v = 0; v < V; ++v) acc[k][v] = 0.f;
  }
  const ThinPixels pixel(a.hin, a.win);
  thin_for_each_pixel(a, pixel, R, [&](int n, int h, int ww) {
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
  });
  // the CTA's sums: class k's columns from every run's threads, its bias from the run-0 threads
  // (whose sums are whole pixels'). (k unrolled: acc stays in registers; a.cout is the same for
  // every thread, so are the barriers.)
#pragma unroll
  for (int k = 0; k < KC; ++k) {
    if (k >= a.cout) break;
    thin_cta_sum<V>(acc[k], R, a.cin, ws + (int64_t)k * a.cin, 1, red);
    if (ws_bias) {
      float b[V] = {accb[k]};
      thin_cta_sum<V>(b, R, 1, ws_bias + k, 1, red);
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
void pointwise_thin_fprop_launch(const GemmLaunch& l, int R, cudaStream_t stream) {
  UF_LAUNCH((pointwise_thin_fprop<T, KC>), thin_grid(l.args.M, kThinThreads / R, l.num_sms),
            kThinThreads, stream, l.args, R);
}

template <class T, int KC>
void pointwise_thin_dgrad_launch(const GemmLaunch& l, int R, cudaStream_t stream) {
  UF_LAUNCH((pointwise_thin_dgrad<T, KC>), thin_grid(l.args.M, kThinThreads / R, l.num_sms),
            kThinThreads, stream, l.args, R);
}

template <class T, int KC>
void pointwise_thin_wgrad_launch(const GemmLaunch& l, int R, cudaStream_t stream) {
  GemmArgs a = l.args;
  a.M = a.K;  // (the GEMM is (C_out x C_in) over K = the pixels, which the kernel walks as M)
  UF_LAUNCH((pointwise_thin_wgrad<T, KC>), thin_grid(a.M, kThinThreads / R, l.num_sms),
            kThinThreads, stream, a, R, l.ws, l.ws_bias);
}

enum class PointwisePass { kFprop, kDgrad, kWgrad };

template <PointwisePass P, class T>
bool pointwise_thin_launch(const GemmLaunch& l, cudaStream_t stream) {
  const GemmArgs& a = l.args;
  // 16-byte runs of x (read by the forward and the weight gradient), of dx (the input gradient's)
  const bool x_runs = P == PointwisePass::kFprop ? a.vec_a
                      : P == PointwisePass::kWgrad ? a.vec_b : thin_out_runs<T>(a);
  const int most = P == PointwisePass::kFprop ? kThinFpropRuns : kThinThreads;
  const int R = a.G == 1 && a.cout >= 1 && a.cout <= kThinClasses && x_runs
                    ? thin_pow2_runs<T>(a.cin, most) : 0;
  if (!R) return false;
  constexpr int KC = kThinClasses;
  const bool two = a.cout <= 2;
  if constexpr (P == PointwisePass::kFprop) {
    two ? pointwise_thin_fprop_launch<T, 2>(l, R, stream)
        : pointwise_thin_fprop_launch<T, KC>(l, R, stream);
  } else if constexpr (P == PointwisePass::kDgrad) {
    two ? pointwise_thin_dgrad_launch<T, 2>(l, R, stream)
        : pointwise_thin_dgrad_launch<T, KC>(l, R, stream);
  } else {
    two ? pointwise_thin_wgrad_launch<T, 2>(l, R, stream)
        : pointwise_thin_wgrad_launch<T, KC>(l, R, stream);
  }
  return true;
}

// pointwise_{fprop,dgrad,wgrad}_cuda's first resort; err: the launch's error when one ran.
template <PointwisePass P>
bool pointwise_thin_run(const GemmLaunch& l, cudaStream_t stream, cudaError_t& err) {
  return thin_dispatch(l.dtype, err, [&](auto t) {
    return pointwise_thin_launch<P, decltype(t)>(l, stream);
  });
}

}  // namespace unet_fast
