// The convolutions of unet_fast as implicit GEMMs: C[M, N] = sum_k A[m, k] * B[k, n], where A and
// B are never materialized but gathered from the activations and the (re-laid) weights.
//
// This header is what every problem shares: the arguments (GemmArgs) and their index arithmetic,
// the 16-byte run loaders, the problem base (GemmProblem: traits, the default epilogue) and the
// tile epilogue (store_tile). The problems come per convolution family, on this base:
//   igemm_conv3x3.h    3x3 conv + ReLU: forward (optionally with the 2x2 max-pool), dgrad, wgrad
//   igemm_pointwise.h  1x1 conv and 2x2 stride-2 transposed conv: forward, dgrad, wgrad
// Plain C++ with no torch and no CUDA dependency: the same problem structs drive the C++ CPU engine
// (csrc/cpu/igemm_cpu.h) and the CUDA engine (csrc/cuda/igemm.cuh), so the CPU tests exercise
// exactly the index arithmetic the GPU kernels run. Everything is inlined: no virtual calls.
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
// - Two things differ per engine; they are declared here and defined by the engine's header:
//   `Num<T>` (T to and from the accumulator type) and `copy_run_tile` (one 16-byte word into a
//   tile: cp.async on the GPU, a plain copy on the CPU).
// - Weight gradients (kAtomic) accumulate into a float/double workspace laid out as the GEMM's C
//   (out_index; the glue permutes it to the torch weight layout); dbias accumulates per GEMM row
//   (kBiasFromA: row sums of A) and is folded to C_out by the glue.
// - What an engine asks of a problem: the traits of GemmProblem, load_a, load_b, and out_index
//   (kAtomic) or out_row / out_col / bias_col / store_at (plus pool_row / store_pool_at /
//   mpool_rows when kGroup == 4); optionally the split A loader ARow / AK / a_row / a_k /
//   load_a_at, which the CUDA engine caches per CTA.
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
  kConv3x3DgradPremasked,  // the gradient arrives masked: no y (igemm_conv3x3.h)
  kConv3x3Wgrad,
  kConv3x3WgradPremasked,
  kPointwiseFprop,
  kPointwiseDgrad,
  kPointwiseWgrad,
};

template <class T>
struct Num;  // to(T) -> acc_t, from(acc_t) -> T, zero(); specialized for CPU and CUDA types

template <class T>
constexpr int kRun = 16 / sizeof(T);  // elements of one 16-byte run

// Everything a problem needs; one struct for all of them (unused fields stay zero).
struct GemmArgs {
  const void* x = nullptr;  // input activation (NHWC-ish)
  int64_t xsN = 0, xsH = 0, xsW = 0;
  const void* g = nullptr;  // output gradient (NHWC-ish)
  int64_t gsN = 0, gsH = 0, gsW = 0;
  const void* y = nullptr;  // saved ReLU output for the mask, same sizes as g (NHWC-ish); not
                            // read by the Premasked problems (g is masked already)
  int64_t ysN = 0, ysH = 0, ysW = 0;
  const void* w = nullptr;     // weight re-laid by the glue, contiguous, see each problem
  const void* bias = nullptr;  // may be null
  void* out = nullptr;         // output, general strides (N, C, H, W)
  int64_t os[4] = {0, 0, 0, 0};
  // input gradients (the base's epilogue): the layer's input x, a ReLU output, at out's offsets:
  // dx comes out multiplied by (x > 0) (relu_input; may be null)
  const void* out_mask = nullptr;
  void* pool = nullptr;  // pooled output (conv3x3 + pool), general strides
  int64_t ps[4] = {0, 0, 0, 0};
  int nb = 0, cin = 0, hin = 0, win = 0;     // input sizes
  int cout = 0, hout = 0, wout = 0, pad = 0;  // output sizes; padding of the 3x3 conv
  int G = 1;                                  // 1: 1x1 conv, 2: 2x2 stride-2 transposed conv
  int M = 0, N = 0, K = 0;
  bool vec_a = false, vec_b = false;

  // Pixel index m of an (nb, H, W) grid, w fastest -> (n, h, w).
  UF_HD static void unravel(int m, int H, int W, int& n, int& h, int& w) {
    w = m % W;
    const int t = m / W;
    h = t % H;
    n = t / H;
  }
  UF_HD void in_pixel(int m, int& n, int& h, int& w) const { unravel(m, hin, win, n, h, w); }
  UF_HD void out_pixel(int m, int& n, int& h, int& w) const { unravel(m, hout, wout, n, h, w); }
  // Element offsets of pixel (n, h, w), channel 0.
  UF_HD int64_t x_at(int n, int h, int w) const { return n * xsN + h * xsH + w * xsW; }
  UF_HD int64_t g_at(int n, int h, int w) const { return n * gsN + h * gsH + w * gsW; }
  UF_HD int64_t y_at(int n, int h, int w) const { return n * ysN + h * ysH + w * ysW; }
  UF_HD int64_t out_at(int n, int h, int w) const { return n * os[0] + h * os[2] + w * os[3]; }
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

// One 16-byte word from global memory into a tile of the engine (only for tile destinations;
// register destinations use copy_run). Defined by the engine: cuda/igemm.cuh (cp.async, which the
// engine waits for before the tile is read), cpu/igemm_cpu.h (a plain copy).
template <class T>
UF_HD void copy_run_tile(T* dst, const T* src);

// A run of zeros (tiles are 16-byte aligned: one store on the GPU).
template <class T>
UF_HD void zero_run(T* dst) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
#else
  memset(dst, 0, 16);
#endif
}

// Elements start..start+V-1 of the contiguous run p; those from `limit` on are zero. `vec`: one
// 16-byte word (the run is aligned and limit a multiple of V).
template <class T>
UF_HD void load_run(const T* p, int start, int limit, bool vec, T* dst) {
  if (vec && start < limit) return copy_run_tile(dst, p + start);
  for (int i = 0; i < kRun<T>; ++i) dst[i] = start + i < limit ? p[start + i] : Num<T>::zero();
}

// Row n, elements k..k+V-1 of a dense row-major (rows x K) weight; zeros outside.
template <class T>
UF_HD void load_dense_rows(const void* w, int n, int k, int N, int K, bool vec, T* dst) {
  if (n >= N) return zero_run(dst);
  load_run(static_cast<const T*>(w) + (int64_t)n * K, k, K, vec, dst);
}

// The ReLU-masked gradient: as PyTorch's threshold_backward, g is zeroed where y <= 0 and passed
// where y > 0 or y is NaN.
template <class T>
UF_HD T masked(const T* g, const T* y) {
  return Num<T>::to(*y) <= 0 ? Num<T>::zero() : *g;
}

// The masked gradient at one pixel offset: V elements (the first `count` when not `vec`).
template <class T>
UF_HD void load_masked_run(const T* g, const T* y, int64_t go, int64_t yo, bool vec, int count,
                           T* dst) {
  constexpr int V = kRun<T>;
  if (vec) {
    // 16-byte aligned: copy_run moves them as one uint4 word each
    alignas(16) T gv[V];
    alignas(16) T yv[V];
    copy_run(gv, g + go);
    copy_run(yv, y + yo);
#pragma unroll
    for (int i = 0; i < V; ++i) dst[i] = masked(gv + i, yv + i);
    return;
  }
  for (int i = 0; i < V; ++i) dst[i] = i < count ? masked(g + go + i, y + yo + i) : Num<T>::zero();
}

// A forward epilogue's value: acc + bias[bc] (no bias: acc), then ReLU if RELU (NaN stays NaN).
template <bool RELU, class T, class A>
UF_HD T bias_act(const GemmArgs& a, int bc, A v) {
  if (a.bias) v += Num<T>::to(static_cast<const T*>(a.bias)[bc]);
  if (RELU) v = v < A(0) ? A(0) : v;
  return Num<T>::from(v);
}

// The base of every problem: its traits, its arguments, the dense weight as B, and the epilogue
// of the input gradients (what a problem declares itself replaces these).
template <class T, bool AKContig, bool BKContig, bool WeightGrad = false>
struct GemmProblem {
  using elem_t = T;
  using acc_t = typename Num<T>::acc_t;
  static constexpr int V = kRun<T>;
  static constexpr bool kAKContig = AKContig, kBKContig = BKContig;
  // A weight gradient adds its tiles into the workspace (K split over CTAs: atomics on the GPU)
  // and reduces dbias as the row sums of A.
  static constexpr bool kAtomic = WeightGrad, kBiasFromA = WeightGrad;
  static constexpr int kGroup = 1;  // rows the epilogue takes together (4: pooling windows)
  static constexpr int kTileN = 64;  // the CUDA engine's tile N (cuda/igemm.cuh: Narrow)
  static constexpr bool kNarrowN = false;  // a narrow N may run on a narrow tile (Narrow)
  GemmArgs a;

  explicit GemmProblem(const GemmArgs& args) : a(args) {}

  // B of the forward and dgrad problems: the weight, re-laid by the glue as dense rows (N x K).
  UF_HD void load_b(int n, int k, T* dst) const { load_dense_rows<T>(a.w, n, k, a.N, a.K, a.vec_b, dst); }

  // kAtomic: the workspace is the GEMM's C, row-major, so a warp's atomics hit consecutive words.
  UF_HD int64_t out_index(int m, int n) const { return (int64_t)m * a.N + n; }

  // Output offsets split into a row (pixel) part and a column (channel) part, each decoded once
  // per tile by store_tile: an item is store_at(out_row(m) + out_col(n), bias_col(n), v).
  // Here: rows are input pixels, columns channels, no bias (dgrad).
  UF_HD int64_t out_row(int m) const {
    int b, h, w;
    a.in_pixel(m, b, h, w);
    return a.out_at(b, h, w);
  }
  UF_HD int64_t out_col(int n) const { return n * a.os[1]; }
  UF_HD int bias_col(int n) const { return n; }  // the bias element of column n
  template <class A>
  UF_HD void store_at(int64_t off, int, A v) const {
    // (threshold_backward's rule: zero where x <= 0, a NaN x passes the gradient)
    if (a.out_mask && Num<T>::to(static_cast<const T*>(a.out_mask)[off]) <= A(0)) v = A(0);
    static_cast<T*>(a.out)[off] = Num<T>::from(v);
  }
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
