// The convolutions of unet_fast as implicit GEMMs: C[M, N] = sum_k A[m, k] * B[k, n], where A and
// B are never materialized but gathered from the activations and the (re-laid) weights.
//
// This header is plain C++ with no torch and no CUDA dependency: the same problem descriptions
// drive the C++ CPU engine (csrc/cpu/igemm_cpu.h) and the CUDA engine (csrc/cuda/igemm.cuh), so
// the CPU tests exercise exactly the index arithmetic the GPU kernels run.
//
// Conventions
// - Activations are read "NHWC-ish": channel stride 1, arbitrary pixel strides (sN, sH, sW), so a
//   channel slice of a channels_last tensor (the upper half of a concat's gradient) is read in
//   place. The torch glue makes any other input channels_last first.
// - Outputs are written with general 4-D strides (NCHW or channels_last, as the input was).
// - Each operand is loaded in runs of V = 16 / sizeof(T) consecutive elements along its
//   contiguous dimension: `load_a(owner, start, dst)` writes V elements to dst. For an operand
//   whose contiguous dimension is K ("K-contig"), owner is the row (m or n) and start the k; for
//   an "M-contig"/"N-contig" operand, owner is the k and start the m (or n). With `vec_*` set (the
//   run is one aligned 16-byte word in memory) a run is one load; otherwise element by element.
// - `Num<T>` (specialized by the includer, CPU or CUDA) converts T to the accumulator type.
// - Weight gradients (kAtomic) accumulate into a float/double workspace laid out like the torch
//   weight (out_index); dbias accumulates per GEMM row (kBiasFromA: row sums of A) and is folded
//   to C_out by the glue.
#pragma once
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define UF_HD __host__ __device__ __forceinline__
#else
#define UF_HD inline
#endif

namespace unet_fast {

enum class GemmKind {
  kConv3x3Fprop,
  kConv3x3FpropPool,
  kConv3x3Dgrad,
  kConv3x3Wgrad,
  kPointwiseFprop,
  kPointwiseDgrad,
  kPointwiseWgrad,
};

template <class T>
struct Num;  // to(T) -> acc_t, from(acc_t) -> T, zero(); specialized for CPU and CUDA types

// Everything a problem needs; one struct for all of them (unused fields stay zero).
struct GemmArgs {
  const void* x = nullptr;  // input activation (NHWC-ish)
  int64_t xsN = 0, xsH = 0, xsW = 0;
  const void* g = nullptr;  // output gradient (NHWC-ish)
  int64_t gsN = 0, gsH = 0, gsW = 0;
  const void* y = nullptr;  // saved ReLU output for the mask, same sizes as g (NHWC-ish)
  int64_t ysN = 0, ysH = 0, ysW = 0;
  const void* w = nullptr;     // weight re-laid by the glue, contiguous, see each problem
  const void* bias = nullptr;  // may be null
  void* out = nullptr;         // output, general strides (N, C, H, W)
  int64_t os[4] = {0, 0, 0, 0};
  void* pool = nullptr;  // pooled output (conv3x3 + pool), general strides
  int64_t ps[4] = {0, 0, 0, 0};
  int nb = 0, cin = 0, hin = 0, win = 0;     // input sizes
  int cout = 0, hout = 0, wout = 0, pad = 0;  // output sizes; padding of the 3x3 conv
  int G = 1;                                  // 1: 1x1 conv, 2: 2x2 stride-2 transposed conv
  int M = 0, N = 0, K = 0;
  bool vec_a = false, vec_b = false;
};

template <class T>
UF_HD void copy_run(T* dst, const T* src) {  // one 16-byte word
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#else
  memcpy(dst, src, 16);
#endif
}

template <class T>
UF_HD void zero_run(T* dst) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
#else
  memset(dst, 0, 16);
#endif
}

// Row n, elements k..k+V-1 of a dense row-major (rows x K) weight; zeros outside.
template <class T>
UF_HD void load_dense_rows(const void* w, int n, int k, int N, int K, bool vec, T* dst) {
  constexpr int V = 16 / sizeof(T);
  const T* p = static_cast<const T*>(w);
  if (vec && n < N && k < K) return copy_run(dst, p + (int64_t)n * K + k);
  for (int i = 0; i < V; ++i)
    dst[i] = (n < N && k + i < K) ? p[(int64_t)n * K + k + i] : Num<T>::zero();
}

// ----------------------------------------------------------------------------- 3x3 conv + ReLU
// Forward. M = N*OH*OW pixels, N = C_out, K = 9*C_in with k = (r*3 + s)*C_in + c.
// A: K-contig (x at pixel shifted by the tap). B: K-contig, w laid out (C_out, 3, 3, C_in).
// POOL: rows are ordered window-major (the 4 pixels of each 2x2 pooling window are 4 consecutive
// rows, windows first, then the pixels the floor-pooling drops), so a tile's epilogue sees whole
// windows and writes the pooled map too.
template <class T, bool POOL>
struct Conv3x3Fprop {
  using elem_t = T;
  using acc_t = typename Num<T>::acc_t;
  static constexpr int V = 16 / sizeof(T);
  static constexpr bool kAKContig = true, kBKContig = true;
  static constexpr bool kAtomic = false, kBiasFromA = false;
  static constexpr int kGroup = POOL ? 4 : 1;
  GemmArgs a;
  int mpool;  // rows that belong to whole pooling windows (POOL only)

  explicit Conv3x3Fprop(const GemmArgs& args) : a(args) {
    mpool = POOL ? a.nb * (a.hout / 2) * (a.wout / 2) * 4 : 0;
  }

  UF_HD void pixel(int m, int& n, int& oh, int& ow) const {
    if (!POOL) {
      ow = m % a.wout;
      const int t = m / a.wout;
      oh = t % a.hout;
      n = t / a.hout;
      return;
    }
    const int ph_n = a.hout / 2, pw_n = a.wout / 2;
    if (m < mpool) {
      const int q = m >> 2, sub = m & 3;
      const int pw = q % pw_n, t = q / pw_n;
      const int ph = t % ph_n;
      n = t / ph_n;
      oh = 2 * ph + (sub >> 1);
      ow = 2 * pw + (sub & 1);
      return;
    }
    // The dropped pixels: the last row (if OH is odd), then the last column above it (if OW is odd).
    const int extra_rows = a.hout - 2 * ph_n;
    const int tail = a.hout * a.wout - 4 * ph_n * pw_n;
    const int t = m - mpool;
    n = t / tail;
    const int r = t - n * tail;
    if (r < extra_rows * a.wout) {
      oh = 2 * ph_n;
      ow = r;
    } else {
      oh = r - extra_rows * a.wout;
      ow = a.wout - 1;
    }
  }

  UF_HD void load_a(int m, int k, T* dst) const {
    const T* x = static_cast<const T*>(a.x);
    int n, oh, ow;
    if (m >= a.M) {
      for (int i = 0; i < V; ++i) dst[i] = Num<T>::zero();
      return;
    }
    pixel(m, n, oh, ow);
    const int64_t base = (int64_t)n * a.xsN;
    if (a.vec_a) {
      if (k >= a.K) return zero_run(dst);
      const int rs = k / a.cin, c = k - rs * a.cin, r = rs / 3, s = rs - 3 * r;
      const int ih = oh + r - a.pad, iw = ow + s - a.pad;
      if (ih < 0 || ih >= a.hin || iw < 0 || iw >= a.win) return zero_run(dst);
      return copy_run(dst, x + base + ih * a.xsH + iw * a.xsW + c);
    }
    for (int i = 0; i < V; ++i) {
      const int kk = k + i;
      T v = Num<T>::zero();
      if (kk < a.K) {
        const int rs = kk / a.cin, c = kk - rs * a.cin, r = rs / 3, s = rs - 3 * r;
        const int ih = oh + r - a.pad, iw = ow + s - a.pad;
        if (ih >= 0 && ih < a.hin && iw >= 0 && iw < a.win) v = x[base + ih * a.xsH + iw * a.xsW + c];
      }
      dst[i] = v;
    }
  }

  UF_HD void load_b(int n, int k, T* dst) const { load_dense_rows<T>(a.w, n, k, a.N, a.K, a.vec_b, dst); }

  template <class A>
  UF_HD T epilogue_value(int n, A v) const {
    if (a.bias) v += Num<T>::to(static_cast<const T*>(a.bias)[n]);
    return Num<T>::from(v < A(0) ? A(0) : v);  // relu, NaN stays NaN
  }

  template <class A>
  UF_HD void store(int m, int n, A v) const {
    int b, oh, ow;
    pixel(m, b, oh, ow);
    static_cast<T*>(a.out)[b * a.os[0] + n * a.os[1] + oh * a.os[2] + ow * a.os[3]] =
        epilogue_value(n, v);
  }

  // v: the max of the window's 4 accumulators (relu(max + bias) == max(relu(. + bias))).
  template <class A>
  UF_HD void store_pool(int m, int n, A v) const {
    const int q = m >> 2, pw_n = a.wout / 2, ph_n = a.hout / 2;
    const int pw = q % pw_n, t = q / pw_n, ph = t % ph_n, b = t / ph_n;
    static_cast<T*>(a.pool)[b * a.ps[0] + n * a.ps[1] + ph * a.ps[2] + pw * a.ps[3]] =
        epilogue_value(n, v);
  }

  UF_HD int mpool_rows() const { return mpool; }
};

// The ReLU-masked gradient g * (y > 0) at one pixel offset: V elements.
template <class T>
UF_HD void load_masked_run(const T* g, const T* y, int64_t go, int64_t yo, bool vec, int count,
                           T* dst) {
  constexpr int V = 16 / sizeof(T);
  if (vec) {
    T gv[V], yv[V];
    copy_run(gv, g + go);
    copy_run(yv, y + yo);
#pragma unroll
    for (int i = 0; i < V; ++i) dst[i] = Num<T>::to(yv[i]) > 0 ? gv[i] : Num<T>::zero();
    return;
  }
  for (int i = 0; i < V; ++i)
    dst[i] = (i < count && Num<T>::to(y[yo + i]) > 0) ? g[go + i] : Num<T>::zero();
}

// Input gradient of conv3x3 + ReLU. M = N*H*W input pixels, N = C_in, K = 9*C_out with
// k = (r*3 + s)*C_out + o. dx[h, w] = sum g'[h + pad - r, w + pad - s, o] * w[o, c, r, s],
// g' = g * (y > 0) applied while loading. B: w laid out (C_in, 3, 3, C_out).
template <class T>
struct Conv3x3Dgrad {
  using elem_t = T;
  using acc_t = typename Num<T>::acc_t;
  static constexpr int V = 16 / sizeof(T);
  static constexpr bool kAKContig = true, kBKContig = true;
  static constexpr bool kAtomic = false, kBiasFromA = false;
  static constexpr int kGroup = 1;
  GemmArgs a;
  explicit Conv3x3Dgrad(const GemmArgs& args) : a(args) {}

  UF_HD void pixel(int m, int& n, int& h, int& w) const {
    w = m % a.win;
    const int t = m / a.win;
    h = t % a.hin;
    n = t / a.hin;
  }

  UF_HD void load_a(int m, int k, T* dst) const {
    const T* g = static_cast<const T*>(a.g);
    const T* y = static_cast<const T*>(a.y);
    int n, h, w;
    if (m >= a.M) {
      for (int i = 0; i < V; ++i) dst[i] = Num<T>::zero();
      return;
    }
    pixel(m, n, h, w);
    if (a.vec_a) {
      if (k >= a.K) return zero_run(dst);
      const int rs = k / a.cout, o = k - rs * a.cout, r = rs / 3, s = rs - 3 * r;
      const int oh = h + a.pad - r, ow = w + a.pad - s;
      if (oh < 0 || oh >= a.hout || ow < 0 || ow >= a.wout) return zero_run(dst);
      return load_masked_run(g, y, n * a.gsN + oh * a.gsH + ow * a.gsW + o,
                             n * a.ysN + oh * a.ysH + ow * a.ysW + o, true, V, dst);
    }
    for (int i = 0; i < V; ++i) {
      const int kk = k + i;
      T v = Num<T>::zero();
      if (kk < a.K) {
        const int rs = kk / a.cout, o = kk - rs * a.cout, r = rs / 3, s = rs - 3 * r;
        const int oh = h + a.pad - r, ow = w + a.pad - s;
        if (oh >= 0 && oh < a.hout && ow >= 0 && ow < a.wout) {
          const int64_t yo = n * a.ysN + oh * a.ysH + ow * a.ysW + o;
          if (Num<T>::to(y[yo]) > 0) v = g[n * a.gsN + oh * a.gsH + ow * a.gsW + o];
        }
      }
      dst[i] = v;
    }
  }

  UF_HD void load_b(int n, int k, T* dst) const {
    load_dense_rows<T>(a.w, n, k, a.N, a.K, a.vec_b, dst);
  }

  template <class A>
  UF_HD void store(int m, int n, A v) const {
    int b, h, w;
    pixel(m, b, h, w);
    static_cast<T*>(a.out)[b * a.os[0] + n * a.os[1] + h * a.os[2] + w * a.os[3]] = Num<T>::from(v);
  }
  template <class A>
  UF_HD void store_pool(int, int, A) const {}
};

// Weight gradient of conv3x3 + ReLU. M = C_out, N = 9*C_in with n = (r*3 + s)*C_in + c,
// K = N*OH*OW output pixels. A: M-contig, g' = g * (y > 0) at pixel k. B: N-contig, x at pixel k
// shifted by the tap. Out: the (C_out, C_in, 3, 3) workspace; dbias = row sums of A.
template <class T>
struct Conv3x3Wgrad {
  using elem_t = T;
  using acc_t = typename Num<T>::acc_t;
  static constexpr int V = 16 / sizeof(T);
  static constexpr bool kAKContig = false, kBKContig = false;
  static constexpr bool kAtomic = true, kBiasFromA = true;
  static constexpr int kGroup = 1;
  GemmArgs a;
  explicit Conv3x3Wgrad(const GemmArgs& args) : a(args) {}

  UF_HD void pixel(int k, int& n, int& oh, int& ow) const {
    ow = k % a.wout;
    const int t = k / a.wout;
    oh = t % a.hout;
    n = t / a.hout;
  }

  UF_HD void load_a(int k, int m, T* dst) const {  // owner k (pixel), run along m (C_out)
    if (k >= a.K) {
      for (int i = 0; i < V; ++i) dst[i] = Num<T>::zero();
      return;
    }
    int n, oh, ow;
    pixel(k, n, oh, ow);
    const int count = a.M - m;
    if (count <= 0) {
      for (int i = 0; i < V; ++i) dst[i] = Num<T>::zero();
      return;
    }
    load_masked_run(static_cast<const T*>(a.g), static_cast<const T*>(a.y),
                    n * a.gsN + oh * a.gsH + ow * a.gsW + m, n * a.ysN + oh * a.ysH + ow * a.ysW + m,
                    a.vec_a && count >= V, count, dst);
  }

  UF_HD void load_b(int k, int nn, T* dst) const {  // owner k (pixel), run along n = (tap, c)
    const T* x = static_cast<const T*>(a.x);
    if (k >= a.K) {
      for (int i = 0; i < V; ++i) dst[i] = Num<T>::zero();
      return;
    }
    int n, oh, ow;
    pixel(k, n, oh, ow);
    const int64_t base = (int64_t)n * a.xsN;
    if (a.vec_b) {
      if (nn >= a.N) return zero_run(dst);
      const int rs = nn / a.cin, c = nn - rs * a.cin, r = rs / 3, s = rs - 3 * r;
      const int ih = oh + r - a.pad, iw = ow + s - a.pad;
      if (ih < 0 || ih >= a.hin || iw < 0 || iw >= a.win) return zero_run(dst);
      return copy_run(dst, x + base + ih * a.xsH + iw * a.xsW + c);
    }
    for (int i = 0; i < V; ++i) {
      const int q = nn + i;
      T v = Num<T>::zero();
      if (q < a.N) {
        const int rs = q / a.cin, c = q - rs * a.cin, r = rs / 3, s = rs - 3 * r;
        const int ih = oh + r - a.pad, iw = ow + s - a.pad;
        if (ih >= 0 && ih < a.hin && iw >= 0 && iw < a.win) v = x[base + ih * a.xsH + iw * a.xsW + c];
      }
      dst[i] = v;
    }
  }

  UF_HD int64_t out_index(int m, int n) const {  // (C_out, C_in, 3, 3)
    const int rs = n / a.cin, c = n - rs * a.cin;
    return ((int64_t)m * a.cin + c) * 9 + rs;
  }
  template <class A>
  UF_HD void store(int, int, A) const {}
  template <class A>
  UF_HD void store_pool(int, int, A) const {}
};

// ------------------------------------------------------------ 1x1 conv and 2x2 transposed conv
// Both are per-pixel GEMMs: G = 1 (1x1: out pixel = in pixel) or G = 2 (stride-2 transposed
// conv: in pixel (h, w) scatters to the 2x2 block (2h + i, 2w + j)). The GEMM column n = (i*G + j)
// * C_out + o, so C_out is contiguous (coalesced NHWC stores).
//
// Forward. M = N*H*W input pixels, N = G*G*C_out, K = C_in. A: K-contig (x). B: K-contig, w laid
// out (G, G, C_out, C_in). Out[n, o, G*h + i, G*w + j] = acc + bias[o], written at any channel
// offset of a larger buffer (the concat's upper slice).
template <class T>
struct PointwiseFprop {
  using elem_t = T;
  using acc_t = typename Num<T>::acc_t;
  static constexpr int V = 16 / sizeof(T);
  static constexpr bool kAKContig = true, kBKContig = true;
  static constexpr bool kAtomic = false, kBiasFromA = false;
  static constexpr int kGroup = 1;
  GemmArgs a;
  explicit PointwiseFprop(const GemmArgs& args) : a(args) {}

  UF_HD void pixel(int m, int& n, int& h, int& w) const {
    w = m % a.win;
    const int t = m / a.win;
    h = t % a.hin;
    n = t / a.hin;
  }

  UF_HD void load_a(int m, int k, T* dst) const {
    const T* x = static_cast<const T*>(a.x);
    if (m >= a.M) {
      for (int i = 0; i < V; ++i) dst[i] = Num<T>::zero();
      return;
    }
    int n, h, w;
    pixel(m, n, h, w);
    const int64_t o = n * a.xsN + h * a.xsH + w * a.xsW;
    if (a.vec_a && k + V <= a.K) return copy_run(dst, x + o + k);
    for (int i = 0; i < V; ++i) dst[i] = k + i < a.K ? x[o + k + i] : Num<T>::zero();
  }

  UF_HD void load_b(int n, int k, T* dst) const {
    load_dense_rows<T>(a.w, n, k, a.N, a.K, a.vec_b, dst);
  }

  template <class A>
  UF_HD void store(int m, int n, A v) const {
    int b, h, w;
    pixel(m, b, h, w);
    const int ij = n / a.cout, o = n - ij * a.cout, i = ij / a.G, j = ij - i * a.G;
    if (a.bias) v += Num<T>::to(static_cast<const T*>(a.bias)[o]);
    static_cast<T*>(a.out)[b * a.os[0] + o * a.os[1] + (a.G * h + i) * a.os[2] +
                           (a.G * w + j) * a.os[3]] = Num<T>::from(v);
  }
  template <class A>
  UF_HD void store_pool(int, int, A) const {}
};

// Input gradient. M = N*H*W input pixels, N = C_in, K = G*G*C_out with k = (i*G + j)*C_out + o.
// A: K-contig, g at (G*h + i, G*w + j). B: K-contig, w laid out (C_in, G, G, C_out).
template <class T>
struct PointwiseDgrad {
  using elem_t = T;
  using acc_t = typename Num<T>::acc_t;
  static constexpr int V = 16 / sizeof(T);
  static constexpr bool kAKContig = true, kBKContig = true;
  static constexpr bool kAtomic = false, kBiasFromA = false;
  static constexpr int kGroup = 1;
  GemmArgs a;
  explicit PointwiseDgrad(const GemmArgs& args) : a(args) {}

  UF_HD void pixel(int m, int& n, int& h, int& w) const {
    w = m % a.win;
    const int t = m / a.win;
    h = t % a.hin;
    n = t / a.hin;
  }

  UF_HD void load_a(int m, int k, T* dst) const {
    const T* g = static_cast<const T*>(a.g);
    if (m >= a.M) {
      for (int i = 0; i < V; ++i) dst[i] = Num<T>::zero();
      return;
    }
    int n, h, w;
    pixel(m, n, h, w);
    if (a.vec_a) {
      if (k >= a.K) return zero_run(dst);
      const int ij = k / a.cout, o = k - ij * a.cout, i = ij / a.G, j = ij - i * a.G;
      return copy_run(dst, g + n * a.gsN + (a.G * h + i) * a.gsH + (a.G * w + j) * a.gsW + o);
    }
    for (int q = 0; q < V; ++q) {
      const int kk = k + q;
      T v = Num<T>::zero();
      if (kk < a.K) {
        const int ij = kk / a.cout, o = kk - ij * a.cout, i = ij / a.G, j = ij - i * a.G;
        v = g[n * a.gsN + (a.G * h + i) * a.gsH + (a.G * w + j) * a.gsW + o];
      }
      dst[q] = v;
    }
  }

  UF_HD void load_b(int n, int k, T* dst) const {
    load_dense_rows<T>(a.w, n, k, a.N, a.K, a.vec_b, dst);
  }

  template <class A>
  UF_HD void store(int m, int n, A v) const {
    int b, h, w;
    pixel(m, b, h, w);
    static_cast<T*>(a.out)[b * a.os[0] + n * a.os[1] + h * a.os[2] + w * a.os[3]] = Num<T>::from(v);
  }
  template <class A>
  UF_HD void store_pool(int, int, A) const {}
};

// Weight gradient. M = G*G*C_out with m = (i*G + j)*C_out + o, N = C_in, K = N*H*W input pixels.
// A: M-contig, g at (G*h + i, G*w + j). B: N-contig, x. Out: the torch weight layout,
// (C_in, C_out, 2, 2) for the transposed conv, (C_out, C_in, 1, 1) for the 1x1 conv; dbias = row
// sums of A, folded over (i, j) by the glue.
template <class T>
struct PointwiseWgrad {
  using elem_t = T;
  using acc_t = typename Num<T>::acc_t;
  static constexpr int V = 16 / sizeof(T);
  static constexpr bool kAKContig = false, kBKContig = false;
  static constexpr bool kAtomic = true, kBiasFromA = true;
  static constexpr int kGroup = 1;
  GemmArgs a;
  explicit PointwiseWgrad(const GemmArgs& args) : a(args) {}

  UF_HD void pixel(int k, int& n, int& h, int& w) const {
    w = k % a.win;
    const int t = k / a.win;
    h = t % a.hin;
    n = t / a.hin;
  }

  UF_HD void load_a(int k, int m, T* dst) const {  // owner k (pixel), run along m = (ij, o)
    const T* g = static_cast<const T*>(a.g);
    if (k >= a.K) {
      for (int i = 0; i < V; ++i) dst[i] = Num<T>::zero();
      return;
    }
    int n, h, w;
    pixel(k, n, h, w);
    const int64_t base = (int64_t)n * a.gsN + (int64_t)a.G * h * a.gsH + (int64_t)a.G * w * a.gsW;
    if (a.vec_a) {  // C_out % V == 0: a run never crosses an (i, j) block
      if (m >= a.M) return zero_run(dst);
      const int ij = m / a.cout, o = m - ij * a.cout, i = ij / a.G, j = ij - i * a.G;
      return copy_run(dst, g + base + i * a.gsH + j * a.gsW + o);
    }
    for (int q = 0; q < V; ++q) {
      const int mm = m + q;
      T v = Num<T>::zero();
      if (mm < a.M) {
        const int ij = mm / a.cout, o = mm - ij * a.cout, i = ij / a.G, j = ij - i * a.G;
        v = g[base + i * a.gsH + j * a.gsW + o];
      }
      dst[q] = v;
    }
  }

  UF_HD void load_b(int k, int n, T* dst) const {  // owner k (pixel), run along n = c_in
    const T* x = static_cast<const T*>(a.x);
    if (k >= a.K) {
      for (int i = 0; i < V; ++i) dst[i] = Num<T>::zero();
      return;
    }
    int b, h, w;
    pixel(k, b, h, w);
    const int64_t o = b * a.xsN + h * a.xsH + w * a.xsW;
    if (a.vec_b && n + V <= a.N) return copy_run(dst, x + o + n);
    for (int i = 0; i < V; ++i) dst[i] = n + i < a.N ? x[o + n + i] : Num<T>::zero();
  }

  UF_HD int64_t out_index(int m, int n) const {
    const int ij = m / a.cout, o = m - ij * a.cout;
    if (a.G == 2) return ((int64_t)n * a.cout + o) * 4 + ij;  // (C_in, C_out, 2, 2)
    return (int64_t)o * a.N + n;                              // (C_out, C_in, 1, 1)
  }
  template <class A>
  UF_HD void store(int, int, A) const {}
  template <class A>
  UF_HD void store_pool(int, int, A) const {}
};

// ---------------------------------------------------------------------- the shared epilogue
// Writes a finished tile C (rows m0.., columns n0.., leading dimension ldc) through the problem's
// store (and store_pool for whole pooling windows); items tid, tid + nth, ... of the tile.
template <class P, class A>
UF_HD void store_tile(const P& p, const A* C, int ldc, int m0, int n0, int bm, int bn, int tid,
                      int nth) {
  if constexpr (P::kGroup == 4) {
    const int mpool = p.mpool_rows();
    for (int idx = tid; idx < (bm / 4) * bn; idx += nth) {
      const int gi = idx / bn, c = idx - gi * bn, n = n0 + c, m = m0 + 4 * gi;
      if (n >= p.a.N || m >= p.a.M) continue;
      A best = C[(4 * gi) * ldc + c];
      for (int i = 0; i < 4; ++i) {
        const A v = C[(4 * gi + i) * ldc + c];
        if (m + i < p.a.M) p.store(m + i, n, v);
        // max_pool2d's NaN rule: a NaN wins
        if (v > best || v != v) best = v;
      }
      if (m < mpool) p.store_pool(m, n, best);
    }
  } else {
    for (int idx = tid; idx < bm * bn; idx += nth) {
      const int r = idx / bn, c = idx - r * bn, m = m0 + r, n = n0 + c;
      if (m < p.a.M && n < p.a.N) p.store(m, n, C[r * ldc + c]);
    }
  }
}

}  // namespace unet_fast
