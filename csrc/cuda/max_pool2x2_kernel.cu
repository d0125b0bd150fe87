// 2x2 stride-2 max-pool on CUDA, forward and backward (no torch headers).
//
// Fast path: NHWC-contiguous tensors whose channel runs are 16-byte multiples: one item per
// (window, 16-byte run of channels), reading the window's four runs as uint4 words. Otherwise a
// strided kernel, one item per window and channel. Threads walk their items grid-stride without
// dividing (grid_walk.cuh). The backward recomputes each window's argmax
// from x (first maximum, a NaN wins: max_pool2d's rule), routes grad there and adds the gradient
// x already has (the skip's gradient from the decoder) in the same pass -- in the valid U-Net the
// gradient of x's center crop, read as it is and added where the crop lies, so no zero-padded
// copy of x's size is made; it visits the partial windows of an odd last row/column too, so
// every element of grad_x is written once. With relu_mask (x a ReLU output: the encoder's conv
// before its pool) the sum is zeroed where x <= 0, as threshold_backward would in a pass of its
// own: the conv's backward then reads the gradient masked.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "grid_walk.cuh"
#include "launch.h"

namespace unet_fast {
namespace {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Index (0..3, row-major) of the window's maximum.
__device__ __forceinline__ int argmax4(float v0, float v1, float v2, float v3) {
  int best = 0;
  float bv = v0;
  if (v1 > bv || isnan(v1)) { best = 1; bv = v1; }
  if (v2 > bv || isnan(v2)) { best = 2; bv = v2; }
  if (v3 > bv || isnan(v3)) { best = 3; }
  return best;
}

// v[k] without a dynamically indexed array (which would live in local memory).
template <class T>
__device__ __forceinline__ T select4(int k, T v0, T v1, T v2, T v3) {
  return k == 0 ? v0 : k == 1 ? v1 : k == 2 ? v2 : v3;
}

template <class T>
union Run {
  uint4 u;
  T e[16 / sizeof(T)];
};

// The walks (grid_walk.cuh): digits x0 = the 16-byte word of the pixel's channels (vector paths)
// or the channel (strided paths: channel fastest, coalesced for channels_last and still correct
// for NCHW), x1 = the window's column, x2 = its row, x3 = the image.

template <class T>
__global__ void pool_fwd_nhwc(const T* __restrict__ x, T* __restrict__ y, int h, int w, int64_t total,
                              GridWalk walk) {
  constexpr int V = 16 / sizeof(T);
  const int cv = walk.r0;
  for (WalkPos p = walk.first(); p.i < total; walk.next(p)) {
    const uint4* base = reinterpret_cast<const uint4*>(x) + ((p.x3 * h + 2 * p.x2) * w + 2 * p.x1) * cv + p.x0;
    Run<T> r[4], o;
    r[0].u = base[0];
    r[1].u = base[cv];
    r[2].u = base[(int64_t)w * cv];
    r[3].u = base[(int64_t)w * cv + cv];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const int k = argmax4(to_f(r[0].e[e]), to_f(r[1].e[e]), to_f(r[2].e[e]), to_f(r[3].e[e]));
      o.e[e] = select4(k, r[0].e[e], r[1].e[e], r[2].e[e], r[3].e[e]);
    }
    reinterpret_cast<uint4*>(y)[p.i] = o.u;  // the pooled map is dense NHWC: word p.i
  }
}

// base: bv words per pixel (cv when dense; more when it is a channel slice of the concat's grad),
// crop.h x crop.w pixels at (crop.top, crop.left) of x (all of x when it is not a crop).
// The walk covers the partial windows of an odd last row/column too.
struct BaseCrop {
  int h, w, top, left;
  // pixel (hi, wi) of x in the base: (bi, bj), if it lies there
  __device__ __forceinline__ bool holds(int hi, int wi, int& bi, int& bj) const {
    bi = hi - top;
    bj = wi - left;
    return (unsigned)bi < (unsigned)h && (unsigned)bj < (unsigned)w;
  }
};

// SUMS: each thread also sums the values it writes per channel of its run (the walk's stride
// is a whole number of pixels, so a thread's run v is the same on every item), and the CTA
// writes its channel sums, one row of sums[blockIdx.x] (cta_run_sums: a fixed order).
template <class T, bool SUMS>
__global__ void pool_bwd_nhwc(const T* __restrict__ x, const T* __restrict__ g, const T* __restrict__ base,
                              T* __restrict__ gx, int h, int w, int64_t bv, BaseCrop crop, bool relu_mask,
                              float* __restrict__ sums, int64_t total, GridWalk walk) {
  constexpr int V = 16 / sizeof(T);
  const int cv = walk.r0, ph_n = h / 2, pw_n = w / 2;
  float acc[V];
#pragma unroll
  for (int e = 0; e < V; ++e) acc[e] = 0.f;
  for (WalkPos p = walk.first(); p.i < total; walk.next(p)) {
    const int v = p.x0, pw = p.x1, ph = p.x2;
    const int64_t b = p.x3;
    const bool full = ph < ph_n && pw < pw_n;
    Run<T> xr[4], gr, br[4], o[4];
    int64_t off[4];
    bool in[4], inb[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int hi = 2 * ph + (k >> 1), wi = 2 * pw + (k & 1);
      in[k] = hi < h && wi < w;
      off[k] = ((b * h + hi) * w + wi) * cv + v;
      if (full || (relu_mask && in[k])) xr[k].u = reinterpret_cast<const uint4*>(x)[off[k]];
      int bi, bj;
      inb[k] = base != nullptr && crop.holds(hi, wi, bi, bj);
      if (inb[k]) br[k].u = reinterpret_cast<const uint4*>(base)[((b * crop.h + bi) * crop.w + bj) * bv + v];
    }
    if (full) gr.u = reinterpret_cast<const uint4*>(g)[((b * ph_n + ph) * pw_n + pw) * cv + v];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const int am = full ? argmax4(to_f(xr[0].e[e]), to_f(xr[1].e[e]), to_f(xr[2].e[e]), to_f(xr[3].e[e])) : -1;
      const float gv = full ? to_f(gr.e[e]) : 0.f;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        float s = inb[k] ? to_f(br[k].e[e]) : 0.f;
        if (k == am) s += gv;
        if (relu_mask && in[k] && to_f(xr[k].e[e]) <= 0.f) s = 0.f;
        o[k].e[e] = from_f<T>(s);
        if (SUMS && in[k]) acc[e] += to_f(o[k].e[e]);  // (the value written, rounded)
      }
    }
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (in[k]) reinterpret_cast<uint4*>(gx)[off[k]] = o[k].u;
  }
  if (SUMS) {
    __shared__ float red[V * kWalkThreads];
    float* row = sums + (int64_t)blockIdx.x * cv * V;
    cta_run_sums(acc, cv, cv * V, red, [&](int c, float s) { row[c] = s; });
  }
}

// Strided kernels: one item per (n, c, window), any strides.
template <class T>
__global__ void pool_fwd_strided(const T* __restrict__ x, T* __restrict__ y, PoolArgs a, int64_t total,
                                 GridWalk walk) {
  for (WalkPos p = walk.first(); p.i < total; walk.next(p)) {
    const int c = p.x0, pw = p.x1, ph = p.x2;
    const int64_t b = p.x3;
    const T* q = x + b * a.xs[0] + c * a.xs[1] + 2 * ph * a.xs[2] + 2 * pw * a.xs[3];
    const T v0 = q[0], v1 = q[a.xs[3]], v2 = q[a.xs[2]], v3 = q[a.xs[2] + a.xs[3]];
    const int k = argmax4(to_f(v0), to_f(v1), to_f(v2), to_f(v3));
    y[b * a.ys[0] + c * a.ys[1] + ph * a.ys[2] + pw * a.ys[3]] = select4(k, v0, v1, v2, v3);
  }
}

template <class T>
__global__ void pool_bwd_strided(const T* __restrict__ x, const T* __restrict__ g, const T* __restrict__ base,
                                 T* __restrict__ gx, PoolArgs a, int64_t total, GridWalk walk) {
  const int ph_n = a.h / 2, pw_n = a.w / 2;
  const BaseCrop crop{a.base_h, a.base_w, a.base_top, a.base_left};
  for (WalkPos p = walk.first(); p.i < total; walk.next(p)) {
    const int c = p.x0, pw = p.x1, ph = p.x2;
    const int64_t b = p.x3;
    const bool full = ph < ph_n && pw < pw_n;
    int am = -1;
    float gv = 0.f;
    if (full) {
      const T* q = x + b * a.xs[0] + c * a.xs[1] + 2 * ph * a.xs[2] + 2 * pw * a.xs[3];
      am = argmax4(to_f(q[0]), to_f(q[a.xs[3]]), to_f(q[a.xs[2]]), to_f(q[a.xs[2] + a.xs[3]]));
      gv = to_f(g[b * a.gs[0] + c * a.gs[1] + ph * a.gs[2] + pw * a.gs[3]]);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int hi = 2 * ph + (k >> 1), wi = 2 * pw + (k & 1);
      if (hi >= a.h || wi >= a.w) continue;
      int bi, bj;
      float s = base != nullptr && crop.holds(hi, wi, bi, bj)
                    ? to_f(base[b * a.bs[0] + c * a.bs[1] + bi * a.bs[2] + bj * a.bs[3]])
                    : 0.f;
      if (k == am) s += gv;
      if (a.relu_mask && to_f(x[b * a.xs[0] + c * a.xs[1] + hi * a.xs[2] + wi * a.xs[3]]) <= 0.f) s = 0.f;
      gx[b * a.ys[0] + c * a.ys[1] + hi * a.ys[2] + wi * a.ys[3]] = from_f<T>(s);
    }
  }
}

// A walk over the windows (rows x cols) of `per_window` items each: its launch.
template <auto Kernel, class... A>
void launch_walk(const PoolArgs& a, int per_window, int rows, int cols, cudaStream_t st, A... args) {
  const int64_t total = (int64_t)a.n * rows * cols * per_window;
  const int blocks = walk_blocks<Kernel>(total, a.num_sms);
  UF_LAUNCH(Kernel, blocks, kWalkThreads, st, args..., total, GridWalk::make(per_window, cols, rows, blocks));
}

template <class T>
cudaError_t fwd(const PoolArgs& a, cudaStream_t st) {
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  if (a.vec)
    launch_walk<pool_fwd_nhwc<T>>(a, a.c / (16 / sizeof(T)), a.h / 2, a.w / 2, st, x, y, a.h, a.w);
  else
    launch_walk<pool_fwd_strided<T>>(a, a.c, a.h / 2, a.w / 2, st, x, y, a);
  return cudaGetLastError();
}

template <class T>
cudaError_t bwd(const PoolArgs& a, cudaStream_t st) {
  const T* x = static_cast<const T*>(a.x);
  const T* g = static_cast<const T*>(a.g);
  const T* b = static_cast<const T*>(a.base);
  T* gx = static_cast<T*>(a.y);
  const int hh = (a.h + 1) / 2, ww = (a.w + 1) / 2;  // windows, partial ones included
  const int64_t bv = a.base_pixel / (16 / sizeof(T));
  const BaseCrop crop{a.base_h, a.base_w, a.base_top, a.base_left};
  if (a.vec && a.channel_sums)
    launch_walk<pool_bwd_nhwc<T, true>>(a, a.c / (16 / sizeof(T)), hh, ww, st, x, g, b, gx, a.h, a.w, bv,
                                        crop, a.relu_mask, a.channel_sums);
  else if (a.vec)
    launch_walk<pool_bwd_nhwc<T, false>>(a, a.c / (16 / sizeof(T)), hh, ww, st, x, g, b, gx, a.h, a.w, bv,
                                         crop, a.relu_mask, nullptr);
  else
    launch_walk<pool_bwd_strided<T>>(a, a.c, hh, ww, st, x, g, b, gx, a);
  return cudaGetLastError();
}

// The grid of the summing backward (launch_walk's), 0 where it does not run.
template <class T>
int bwd_sum_blocks(const PoolArgs& a) {
  const int cv = a.c / (16 / sizeof(T));
  if (!a.vec || cv < 1 || kWalkThreads % cv != 0) return 0;
  const int64_t total = (int64_t)a.n * ((a.h + 1) / 2) * ((a.w + 1) / 2) * cv;
  return walk_blocks<pool_bwd_nhwc<T, true>>(total, a.num_sms);
}

}  // namespace

cudaError_t max_pool2x2_cuda(const PoolArgs& a, cudaStream_t stream) {
  switch (a.dtype) {
    case DType::kHalf: return fwd<__half>(a, stream);
    case DType::kBFloat16: return fwd<__nv_bfloat16>(a, stream);
    default: return fwd<float>(a, stream);
  }
}

int max_pool2x2_backward_sum_blocks(const PoolArgs& a) {
  switch (a.dtype) {
    case DType::kHalf: return bwd_sum_blocks<__half>(a);
    case DType::kBFloat16: return bwd_sum_blocks<__nv_bfloat16>(a);
    default: return bwd_sum_blocks<float>(a);
  }
}

cudaError_t max_pool2x2_backward_cuda(const PoolArgs& a, cudaStream_t stream) {
  switch (a.dtype) {
    case DType::kHalf: return bwd<__half>(a, stream);
    case DType::kBFloat16: return bwd<__nv_bfloat16>(a, stream);
    default: return bwd<float>(a, stream);
  }
}

}  // namespace unet_fast
