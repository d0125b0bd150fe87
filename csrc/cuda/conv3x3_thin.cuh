// The 3x3 convolution of one input channel (the paper's U-Net: its first layer on grey images) on
// the CUDA cores (thin.cuh): the forward (bias + ReLU) and the weight and bias gradients.
//
// As a GEMM the first layer's K (forward) or N (weight gradient) is its 9 taps: the tensor-core
// engine pads them to a 32-wide step and gathers x one element at a time (no 16-byte runs in one
// channel), about 900 instructions a warp per step (valid572 b8, read off the SASS as a model:
// 0.19 ms forward, 0.39 ms weight gradient, where their bytes take 0.08 ms each). Here a thread
// owns one run of the output channels: the forward keeps the run's 9 x V weights in registers, the
// weight gradient its 9 x V sums (and V bias sums); per pixel it reads the 9 inputs of the window
// (the R threads of a pixel read the same ones: one request) and its run of y or g as a 16-byte
// word. fp32 accumulation in tap order; the weight gradient's CTA and CTA sums as thin_cta_sum.
//
// Taken by the launchers of conv3x3_relu_kernel.cu / conv3x3_relu_wgrad_kernel.cu for C_in = 1
// with C_out = V * 2^j <= V * kThinThreads, no pool epilogue, and 16-byte runs of y (forward) or
// of g and y (weight gradient); every other 3x3 problem keeps the tile engine.
#pragma once
#include "thin.cuh"

namespace unet_fast {

// The 3x3 window of one input channel: the taps' offsets from the window's corner (fixed for the
// kernel: computed once per thread, int32, the launchers check that they fit), then per output
// pixel its 9 inputs, zeros in the padding (BOUNDS: padding 1; padding 0 never leaves x).
struct ThinWindow {
  int off[9];
  UF_HD explicit ThinWindow(const GemmArgs& a) {
    for (int t = 0; t < 9; ++t) off[t] = (int)((t / 3) * a.xsH + (t % 3) * a.xsW);
  }
  static bool fits(const GemmArgs& a) { return 2 * (a.xsH + a.xsW) < (int64_t(1) << 31); }

  template <class T, bool BOUNDS>
  __device__ __forceinline__ void load(const GemmArgs& a, int n, int p, int q,
                                       float (&xv)[9]) const {
    const int ih = p - a.pad, iw = q - a.pad;
    const T* corner = static_cast<const T*>(a.x) + a.x_at(n, ih, iw);
    bool row[3] = {true, true, true}, col[3] = {true, true, true};
    if (BOUNDS) {
#pragma unroll
      for (int k = 0; k < 3; ++k) {  // (one unsigned compare a bound pair: -1 wraps past the size)
        row[k] = (unsigned)(ih + k) < (unsigned)a.hin;
        col[k] = (unsigned)(iw + k) < (unsigned)a.win;
      }
    }
#pragma unroll
    for (int t = 0; t < 9; ++t)
      xv[t] = row[t / 3] && col[t % 3] ? Num<T>::to(corner[off[t]]) : 0.f;
  }
};

// y[n, co, p, q] = relu(bias[co] + sum_tap W[co, tap] x[window tap]). W: the glue's
// (C_out, 3, 3, 1).
template <class T, bool BOUNDS>
__global__ void __launch_bounds__(kThinThreads) conv3x3_thin_fprop(const GemmArgs a, int R) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int V = kRun<T>;
  const int r = (int)threadIdx.x % R;  // (the thread's run, on every pass)
  const T* w = static_cast<const T*>(a.w);
  float wr[9][V];
#pragma unroll
  for (int t = 0; t < 9; ++t)
#pragma unroll
    for (int v = 0; v < V; ++v) wr[t][v] = Num<T>::to(w[(r * V + v) * 9 + t]);
  float br[V];  // the run's bias (zeros without one), added to the sum as bias_act does
#pragma unroll
  for (int v = 0; v < V; ++v)
    br[v] = a.bias ? Num<T>::to(static_cast<const T*>(a.bias)[r * V + v]) : 0.f;
  T* out = static_cast<T*>(a.out);
  const ThinPixels pixel(a.hout, a.wout);
  const ThinWindow window(a);
  thin_for_each_pixel(a, pixel, R, [&](int n, int p, int q) {
    float xv[9];
    window.load<T, BOUNDS>(a, n, p, q, xv);
    alignas(16) T ov[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float s = 0.f;
#pragma unroll
      for (int t = 0; t < 9; ++t) s = fmaf(xv[t], wr[t][v], s);
      s += br[v];
      ov[v] = Num<T>::from(s < 0.f ? 0.f : s);  // (ReLU; a NaN stays NaN, as bias_act's)
    }
    uint4 word;
    memcpy(&word, ov, 16);
    *reinterpret_cast<uint4*>(out + a.out_at(n, p, q) + r * V) = word;
  });
#else
  __trap();  // unet_fast's CUDA kernels need sm_80 or newer
#endif
}

// ws[co, tap] += sum_pixels g[co] x[window tap], ws_bias[co] += sum_pixels g[co] (fp32, zeroed by
// the glue; ws_bias may be null), g masked by y here (HAS_Y) or already (the Premasked problem).
template <class T, bool HAS_Y, bool BOUNDS>
__global__ void __launch_bounds__(kThinThreads) conv3x3_thin_wgrad(const GemmArgs a, int R,
                                                                   float* ws, float* ws_bias) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int V = kRun<T>;
  __shared__ float red[V * kThinThreads];
  const int r = (int)threadIdx.x % R;  // (the thread's run, on every pass)
  const T* g = static_cast<const T*>(a.g);
  const T* y = static_cast<const T*>(a.y);
  float acc[9][V], accb[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    accb[v] = 0.f;
#pragma unroll
    for (int t = 0; t < 9; ++t) acc[t][v] = 0.f;
  }
  const ThinPixels pixel(a.hout, a.wout);
  const ThinWindow window(a);
  thin_for_each_pixel(a, pixel, R, [&](int n, int p, int q) {
    alignas(16) T gv[V];
    copy_run(gv, g + a.g_at(n, p, q) + r * V);
    if (HAS_Y) {
      alignas(16) T yv[V];
      copy_run(yv, y + a.y_at(n, p, q) + r * V);
#pragma unroll
      for (int v = 0; v < V; ++v) gv[v] = masked(gv + v, yv + v);
    }
    float xv[9];
    window.load<T, BOUNDS>(a, n, p, q, xv);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const float gf = Num<T>::to(gv[v]);
      accb[v] += gf;
#pragma unroll
      for (int t = 0; t < 9; ++t) acc[t][v] = fmaf(xv[t], gf, acc[t][v]);
    }
  });
  // the CTA's sums: tap t's column co at ws[co * 9 + t]; the bias's at ws_bias[co]
#pragma unroll
  for (int t = 0; t < 9; ++t) thin_cta_sum<V>(acc[t], R, a.cout, ws + t, 9, red);
  if (ws_bias) thin_cta_sum<V>(accb, R, a.cout, ws_bias, 1, red);
#else
  __trap();
#endif
}

// The launchers: false when the problem is not this path's (the caller runs the tile engine).
// BOUNDS: padding 1 (0: the window never leaves x).
template <class T>
bool conv3x3_thin_fprop_launch(const GemmLaunch& l, bool pool, cudaStream_t stream) {
  const GemmArgs& a = l.args;
  const bool fits = a.cin == 1 && !pool && thin_out_runs<T>(a) && ThinWindow::fits(a);
  const int R = fits ? thin_pow2_runs<T>(a.cout, kThinThreads) : 0;
  if (!R) return false;
  const int grid = thin_grid(a.M, kThinThreads / R, l.num_sms);
  if (a.pad)
    UF_LAUNCH((conv3x3_thin_fprop<T, true>), grid, kThinThreads, stream, a, R);
  else
    UF_LAUNCH((conv3x3_thin_fprop<T, false>), grid, kThinThreads, stream, a, R);
  return true;
}

template <class T, bool HAS_Y>
void conv3x3_thin_wgrad_go(const GemmArgs& a, int R, const GemmLaunch& l, cudaStream_t stream) {
  const int grid = thin_grid(a.M, kThinThreads / R, l.num_sms);
  if (a.pad)
    UF_LAUNCH((conv3x3_thin_wgrad<T, HAS_Y, true>), grid, kThinThreads, stream, a, R, l.ws,
              l.ws_bias);
  else
    UF_LAUNCH((conv3x3_thin_wgrad<T, HAS_Y, false>), grid, kThinThreads, stream, a, R, l.ws,
              l.ws_bias);
}

template <class T>
bool conv3x3_thin_wgrad_launch(const GemmLaunch& l, bool premasked, cudaStream_t stream) {
  GemmArgs a = l.args;
  // (vec_a: g's runs, and y's where it is read, are 16-byte words)
  const bool fits = a.cin == 1 && a.vec_a && ThinWindow::fits(a);
  const int R = fits ? thin_pow2_runs<T>(a.cout, kThinThreads) : 0;
  if (!R) return false;
  a.M = a.K;  // (the GEMM is (C_out x 9) over K = the output pixels, which the kernel walks)
  premasked ? conv3x3_thin_wgrad_go<T, false>(a, R, l, stream)
            : conv3x3_thin_wgrad_go<T, true>(a, R, l, stream);
  return true;
}

// conv3x3_fprop_cuda / conv3x3_wgrad_cuda's first resort (`flag`: the forward's pool, the weight
// gradient's premasked); err: the launch's error when one ran.
inline bool conv3x3_thin_fprop_run(const GemmLaunch& l, bool pool, cudaStream_t s,
                                   cudaError_t& err) {
  return thin_dispatch(l.dtype, err, [&](auto t) {
    return conv3x3_thin_fprop_launch<decltype(t)>(l, pool, s);
  });
}
inline bool conv3x3_thin_wgrad_run(const GemmLaunch& l, bool premasked, cudaStream_t s,
                                   cudaError_t& err) {
  return thin_dispatch(l.dtype, err, [&](auto t) {
    return conv3x3_thin_wgrad_launch<decltype(t)>(l, premasked, s);
  });
}

}  // namespace unet_fast
