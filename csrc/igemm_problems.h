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
// - Weight gradients (kAtomic) accumulate into a float/double workspace laid out as the GEMM's C
//   (out_index; the glue permutes it to the torch weight layout); dbias accumulates per GEMM row (kBiasFromA: row sums of A) and is folded
//   to C_out by the glue.
#pragma once
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define UF_HD __host__ __device__ __forceinline__
#else
#define UF_HD inline
#endif
// A CTA-wide barrier in the GPU engine; nothing on the CPU (one thread per tile there).
#if defined(__CUDA_ARCH__)
#define UF_SYNC() __syncthreads()
#else
#define UF_SYNC() ((void)0)
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

// One 16-byte word into registers (a local T array, read element-wise afterwards). On the GPU one
// 128-bit load, then memcpy rather than a uint4 store into the T array: the T reads that follow
// must not be reordered before it under type-based aliasing (the CPU emulator of tests/cuda_emu,
// built by GCC with strict aliasing, showed exactly that); it compiles to register moves.
template <class T>
UF_HD void copy_run(T* dst, const T* src) {
#if defined(__CUDA_ARCH__)
  const uint4 word = *reinterpret_cast<const uint4*>(src);
  memcpy(dst, &word, 16);
#else
  memcpy(dst, src, 16);
#endif
}

// One 16-byte word from global memory into a shared-memory tile (the engine's A/B tiles): on the
// GPU an asynchronous copy (cp.async, sm_80+; the engine waits for it before the tile is read),
// on the CPU a plain copy. Only for tile destinations; register destinations use copy_run.
template <class T>
UF_HD void copy_run_tile(T* dst, const T* src) {
#if defined(UF_CUDA_EMULATOR)
  ::uf_emu::cp_async16(dst, src);  // (tests/cuda_emu: lands at the matching wait)
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src) : "memory");
#else
  copy_run(dst, src);
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
  if (vec && n < N && k < K) return copy_run_tile(dst, p + (int64_t)n * K + k);
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

  // The 16-byte path (vec_a) in two halves, so the engine decodes each of a thread's rows (the
  // pixel: 2-4 divisions) once per tile and each k (tap, channel) once per K-step:
  // load_a(m, k) == load_a_at(a_row(m), a_k(k)) when vec_a.
  struct ARow {
    int64_t base;  // n * xsN
    int ih0, iw0;  // top-left input pixel of the 3x3 window; ih0 = kNoRow for rows past M
  };
  struct AK {
    int c, r, s;  // channel and tap; r = kNoRow past K
  };
  static constexpr int kNoRow = -(1 << 29);  // far enough below 0 that ih0 + r stays < 0
  UF_HD ARow a_row(int m) const {
    ARow row{0, kNoRow, 0};
    if (m < a.M) {
      int n, oh, ow;
      pixel(m, n, oh, ow);
      row.base = (int64_t)n * a.xsN;
      row.ih0 = oh - a.pad;
      row.iw0 = ow - a.pad;
    }
    return row;
  }
  UF_HD AK a_k(int k) const {
    const int rs = k / a.cin, r = rs / 3;
    return AK{k - rs * a.cin, k < a.K ? r : kNoRow, rs - 3 * r};
  }
  UF_HD void load_a_at(const ARow& row, const AK& q, T* dst) const {
    const int ih = row.ih0 + q.r, iw = row.iw0 + q.s;
    if (ih < 0 || ih >= a.hin || iw < 0 || iw >= a.win) return zero_run(dst);
    copy_run_tile(dst, static_cast<const T*>(a.x) + row.base + ih * a.xsH + iw * a.xsW + q.c);
  }

  UF_HD void load_a(int m, int k, T* dst) const {
    const T* x = static_cast<const T*>(a.x);
    if (a.vec_a) return load_a_at(a_row(m), a_k(k), dst);
    int n, oh, ow;
    if (m >= a.M) {
      for (int i = 0; i < V; ++i) dst[i] = Num<T>::zero();
      return;
    }
    pixel(m, n, oh, ow);
    const int64_t base = (int64_t)n * a.xsN;
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

  // Output offsets split into a row (pixel) part and a column (channel) part, each decoded once
  // per tile by store_tile: store(m, n, v) == store_at(out_row(m) + out_col(n), n, v).
  UF_HD int64_t out_row(int m) const {
    int b, oh, ow;
    pixel(m, b, oh, ow);
    return b * a.os[0] + oh * a.os[2] + ow * a.os[3];
  }
  UF_HD int64_t out_col(int n) const { return n * a.os[1]; }
  UF_HD int bias_col(int n) const { return n; }  // the bias element of column n
  template <class A>
  UF_HD void store_at(int64_t off, int bc, A v) const {
    static_cast<T*>(a.out)[off] = epilogue_value(bc, v);
  }
  template <class A>
  UF_HD void store(int m, int n, A v) const { store_at(out_row(m) + out_col(n), bias_col(n), v); }

  // The pooled map: pool_row(m) for the window whose first row is m (m < mpool, m % 4 == 0);
  // v: the max of the window's 4 accumulators (relu(max + bias) == max(relu(. + bias))).
  UF_HD int64_t pool_row(int m) const {
    const int q = m >> 2, pw_n = a.wout / 2, ph_n = a.hout / 2;
    const int pw = q % pw_n, t = q / pw_n, ph = t % ph_n, b = t / ph_n;
    return b * a.ps[0] + ph * a.ps[2] + pw * a.ps[3];
  }
  template <class A>
  UF_HD void store_pool_at(int64_t row_off, int n, A v) const {
    static_cast<T*>(a.pool)[row_off + n * a.ps[1]] = epilogue_value(n, v);
  }
  template <class A>
  UF_HD void store_pool(int m, int n, A v) const { store_pool_at(pool_row(m), n, v); }

  UF_HD int mpool_rows() const { return mpool; }
};

// The ReLU-masked gradient at one pixel offset: V elements. As PyTorch's threshold_backward,
// g is zeroed where y <= 0 and passed where y > 0 or y is NaN.
template <class T>
UF_HD void load_masked_run(const T* g, const T* y, int64_t go, int64_t yo, bool vec, int count,
                           T* dst) {
  constexpr int V = 16 / sizeof(T);
  if (vec) {
    // 16-byte aligned: copy_run moves them as one uint4 word each
    alignas(16) T gv[V];
    alignas(16) T yv[V];
    copy_run(gv, g + go);
    copy_run(yv, y + yo);
#pragma unroll
    for (int i = 0; i < V; ++i) dst[i] = Num<T>::to(yv[i]) <= 0 ? Num<T>::zero() : gv[i];
    return;
  }
  for (int i = 0; i < V; ++i)
    dst[i] = (i < count && !(Num<T>::to(y[yo + i]) <= 0)) ? g[go + i] : Num<T>::zero();
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

  // The 16-byte path (vec_a) in two halves, as in Conv3x3Fprop:
  // load_a(m, k) == load_a_at(a_row(m), a_k(k)) when vec_a.
  struct ARow {
    int n;         // batch index
    int oh0, ow0;  // h + pad, w + pad; oh0 = kNoRow for rows past M
  };
  struct AK {
    int o, r, s;  // output channel and tap; r = -kNoRow past K
  };
  static constexpr int kNoRow = -(1 << 29);
  UF_HD ARow a_row(int m) const {
    ARow row{0, kNoRow, 0};
    if (m < a.M) {
      int n, h, w;
      pixel(m, n, h, w);
      row.n = n;
      row.oh0 = h + a.pad;
      row.ow0 = w + a.pad;
    }
    return row;
  }
  UF_HD AK a_k(int k) const {
    const int rs = k / a.cout, r = rs / 3;
    return AK{k - rs * a.cout, k < a.K ? r : -kNoRow, rs - 3 * r};
  }
  UF_HD void load_a_at(const ARow& row, const AK& q, T* dst) const {
    const int oh = row.oh0 - q.r, ow = row.ow0 - q.s;
    if (oh < 0 || oh >= a.hout || ow < 0 || ow >= a.wout) return zero_run(dst);
    load_masked_run(static_cast<const T*>(a.g), static_cast<const T*>(a.y),
                    row.n * a.gsN + oh * a.gsH + ow * a.gsW + q.o,
                    row.n * a.ysN + oh * a.ysH + ow * a.ysW + q.o, true, V, dst);
  }

  UF_HD void load_a(int m, int k, T* dst) const {
    const T* g = static_cast<const T*>(a.g);
    const T* y = static_cast<const T*>(a.y);
    if (a.vec_a) return load_a_at(a_row(m), a_k(k), dst);
    int n, h, w;
    if (m >= a.M) {
      for (int i = 0; i < V; ++i) dst[i] = Num<T>::zero();
      return;
    }
    pixel(m, n, h, w);
    for (int i = 0; i < V; ++i) {
      const int kk = k + i;
      T v = Num<T>::zero();
      if (kk < a.K) {
        const int rs = kk / a.cout, o = kk - rs * a.cout, r = rs / 3, s = rs - 3 * r;
        const int oh = h + a.pad - r, ow = w + a.pad - s;
        if (oh >= 0 && oh < a.hout && ow >= 0 && ow < a.wout) {
          const int64_t yo = n * a.ysN + oh * a.ysH + ow * a.ysW + o;
          if (!(Num<T>::to(y[yo]) <= 0)) v = g[n * a.gsN + oh * a.gsH + ow * a.gsW + o];
        }
      }
      dst[i] = v;
    }
  }

  UF_HD void load_b(int n, int k, T* dst) const {
    load_dense_rows<T>(a.w, n, k, a.N, a.K, a.vec_b, dst);
  }

  UF_HD int64_t out_row(int m) const {
    int b, h, w;
    pixel(m, b, h, w);
    return b * a.os[0] + h * a.os[2] + w * a.os[3];
  }
  UF_HD int64_t out_col(int n) const { return n * a.os[1]; }
  UF_HD int bias_col(int n) const { return n; }  // (no bias)
  template <class A>
  UF_HD void store_at(int64_t off, int, A v) const {
    static_cast<T*>(a.out)[off] = Num<T>::from(v);
  }
  template <class A>
  UF_HD void store(int m, int n, A v) const { store_at(out_row(m) + out_col(n), bias_col(n), v); }
  template <class A>
  UF_HD void store_pool(int, int, A) const {}
};

// Weight gradient of conv3x3 + ReLU. M = C_out, N = 9*C_in with n = (r*3 + s)*C_in + c,
// K = N*OH*OW output pixels. A: M-contig, g' = g * (y > 0) at pixel k. B: N-contig, x at pixel k
// shifted by the tap. Out: the (C_out, 3, 3, C_in) workspace; dbias = row sums of A.
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
      return copy_run_tile(dst, x + base + ih * a.xsH + iw * a.xsW + c);
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

  // The workspace is the GEMM's C, row-major: (C_out, 3, 3, C_in), so a warp's atomics hit
  // consecutive words; the glue permutes it to the torch layout (C_out, C_in, 3, 3) once.
  UF_HD int64_t out_index(int m, int n) const { return (int64_t)m * a.N + n; }
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
    if (a.vec_a && k + V <= a.K) return copy_run_tile(dst, x + o + k);
    for (int i = 0; i < V; ++i) dst[i] = k + i < a.K ? x[o + k + i] : Num<T>::zero();
  }

  UF_HD void load_b(int n, int k, T* dst) const {
    load_dense_rows<T>(a.w, n, k, a.N, a.K, a.vec_b, dst);
  }

  // Row part: the input pixel's top-left output pixel; column part: channel o and the (i, j)
  // position inside the G x G block.
  UF_HD int64_t out_row(int m) const {
    int b, h, w;
    pixel(m, b, h, w);
    return b * a.os[0] + (int64_t)a.G * h * a.os[2] + (int64_t)a.G * w * a.os[3];
  }
  UF_HD int64_t out_col(int n) const {
    const int ij = n / a.cout, o = n - ij * a.cout, i = ij / a.G, j = ij - i * a.G;
    return o * a.os[1] + i * a.os[2] + j * a.os[3];
  }
  UF_HD int bias_col(int n) const { return n % a.cout; }  // channel o of column n
  template <class A>
  UF_HD void store_at(int64_t off, int bc, A v) const {
    if (a.bias) v += Num<T>::to(static_cast<const T*>(a.bias)[bc]);
    static_cast<T*>(a.out)[off] = Num<T>::from(v);
  }
  template <class A>
  UF_HD void store(int m, int n, A v) const { store_at(out_row(m) + out_col(n), bias_col(n), v); }
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
      return copy_run_tile(dst, g + n * a.gsN + (a.G * h + i) * a.gsH + (a.G * w + j) * a.gsW + o);
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

  UF_HD int64_t out_row(int m) const {
    int b, h, w;
    pixel(m, b, h, w);
    return b * a.os[0] + h * a.os[2] + w * a.os[3];
  }
  UF_HD int64_t out_col(int n) const { return n * a.os[1]; }
  UF_HD int bias_col(int n) const { return n; }  // (no bias)
  template <class A>
  UF_HD void store_at(int64_t off, int, A v) const {
    static_cast<T*>(a.out)[off] = Num<T>::from(v);
  }
  template <class A>
  UF_HD void store(int m, int n, A v) const { store_at(out_row(m) + out_col(n), bias_col(n), v); }
  template <class A>
  UF_HD void store_pool(int, int, A) const {}
};

// Weight gradient. M = G*G*C_out with m = (i*G + j)*C_out + o, N = C_in, K = N*H*W input pixels.
// A: M-contig, g at (G*h + i, G*w + j). B: N-contig, x. Out: the (G, G, C_out, C_in) workspace
// (permuted to the torch weight layout by the glue); dbias = row sums of A, folded over (i, j).
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
      return copy_run_tile(dst, g + base + i * a.gsH + j * a.gsW + o);
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
    if (a.vec_b && n + V <= a.N) return copy_run_tile(dst, x + o + n);
    for (int i = 0; i < V; ++i) dst[i] = n + i < a.N ? x[o + n + i] : Num<T>::zero();
  }

  // The workspace is the GEMM's C, row-major: (G, G, C_out, C_in), so a warp's atomics hit
  // consecutive words; the glue permutes it to the torch layout ((C_in, C_out, 2, 2) for the
  // transposed conv; (C_out, C_in, 1, 1) for the 1x1 conv is the same memory) once.
  UF_HD int64_t out_index(int m, int n) const { return (int64_t)m * a.N + n; }
  template <class A>
  UF_HD void store(int, int, A) const {}
  template <class A>
  UF_HD void store_pool(int, int, A) const {}
};

// ---------------------------------------------------------------------- the shared epilogue
// Writes a finished tile C (rows m0.., columns n0.., leading dimension ldc) through the problem's
// store_at (and store_pool_at for whole pooling windows); items tid, tid + nth, ... of the tile.
// The row and column parts of the output offsets (and each column's bias element) are decoded
// once per tile into roff[bm], coff[bn], cbias[bn] and poff[bm / 4] (scratch: shared memory on the
// GPU), then every item is one add. All nth threads must call it (a CTA barrier on the GPU).
template <class P, class A>
UF_HD void store_tile(const P& p, const A* C, int ldc, int m0, int n0, int bm, int bn, int tid,
                      int nth, int64_t* roff, int64_t* coff, int64_t* poff, int* cbias) {
  for (int i = tid; i < bm; i += nth)
    if (m0 + i < p.a.M) roff[i] = p.out_row(m0 + i);
  for (int i = tid; i < bn; i += nth)
    if (n0 + i < p.a.N) {
      coff[i] = p.out_col(n0 + i);
      cbias[i] = p.bias_col(n0 + i);
    }
  if constexpr (P::kGroup == 4) {
    const int mpool = p.mpool_rows();
    for (int i = tid; i < bm / 4; i += nth)
      if (m0 + 4 * i < mpool) poff[i] = p.pool_row(m0 + 4 * i);
  }
  UF_SYNC();
  if constexpr (P::kGroup == 4) {
    const int mpool = p.mpool_rows();
    for (int idx = tid; idx < (bm / 4) * bn; idx += nth) {
      const int gi = idx / bn, c = idx - gi * bn, n = n0 + c, m = m0 + 4 * gi;
      if (n >= p.a.N || m >= p.a.M) continue;
      A best = C[(4 * gi) * ldc + c];
      for (int i = 0; i < 4; ++i) {
        const A v = C[(4 * gi + i) * ldc + c];
        if (m + i < p.a.M) p.store_at(roff[4 * gi + i] + coff[c], cbias[c], v);
        // max_pool2d's NaN rule: a NaN wins
        if (v > best || v != v) best = v;
      }
      if (m < mpool) p.store_pool_at(poff[gi], n, best);
    }
  } else {
    for (int idx = tid; idx < bm * bn; idx += nth) {
      const int r = idx / bn, c = idx - r * bn, m = m0 + r, n = n0 + c;
      if (m < p.a.M && n < p.a.N) p.store_at(roff[r] + coff[c], cbias[c], C[r * ldc + c]);
    }
  }
}

}  // namespace unet_fast
