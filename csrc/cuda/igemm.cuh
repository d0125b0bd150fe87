// The CUDA engine of the implicit GEMMs of igemm_base.h (no torch headers); the problems come
// from the family headers (igemm_conv3x3.h, igemm_pointwise.h) that each kernel unit includes.
//
// One CTA computes a 64x64 tile of C with 4 warps (2x2, 32x32 each); K advances in steps of 32.
// Each step gathers the A and B tiles into shared memory through the problem's 16-byte run
// loaders (plain copies as cp.async, double-buffered: step t + 1 is in flight while step t is
// multiplied), then multiplies them:
//   - tensor cores (TC = true): nvcuda::wmma, fp16/bf16 16x16x16 (HMMA.16816) or TF32 16x16x8
//     (HMMA.1684.F32.TF32) with fp32 accumulators;
//   - SIMT (TC = false): exact fp32 FMA, 4x8 outputs per thread (float32 when TF32 is off).
// The finished tile goes through shared memory to the problem's epilogue (store_tile: bias,
// ReLU, pooling, scatter), or, for weight gradients (kAtomic), is added atomically into an fp32
// workspace: their K (the pixels) is split across CTAs (grid.z) to fill the GPU. dbias (kBiasFromA)
// is the row sums of the A tiles, reduced by the n-tile-0 CTAs in the same kernel.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

#include "../igemm_base.h"
#include "launch.h"

namespace unet_fast {

template <>
struct Num<float> {
  using acc_t = float;
  static UF_HD float zero() { return 0.f; }
  static UF_HD float to(float v) { return v; }
  static UF_HD float from(float v) { return v; }
};
template <>
struct Num<__half> {
  using acc_t = float;
  static UF_HD __half zero() { return __float2half_rn(0.f); }
  static UF_HD float to(__half v) { return __half2float(v); }
  static UF_HD __half from(float v) { return __float2half_rn(v); }
};
template <>
struct Num<__nv_bfloat16> {
  using acc_t = float;
  static UF_HD __nv_bfloat16 zero() { return __float2bfloat16_rn(0.f); }
  static UF_HD float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  static UF_HD __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};

// ------------------------------------------------------------------------- the cp.async seam
// The engine's asynchronous tile copies: copy_run_tile (declared in igemm_base.h; the problems'
// loaders call it for each 16-byte word bound for a shared-memory tile), commit and wait. On the
// GPU cp.async (sm_80+). Under the CPU emulator of tests/cuda_emu (UF_CUDA_EMULATOR; one of its
// three hooks in production code, listed in tests/cuda_emu/cuda_emu.h) a copy's bytes land only
// at the wait that covers it, so a tile read before its wait is caught.
template <class T>
UF_HD void copy_run_tile(T* dst, const T* src) {
#if defined(UF_CUDA_EMULATOR)
  ::uf_emu::cp_async16(dst, src);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src) : "memory");
#else
  copy_run(dst, src);  // (host pass; the kernels trap below sm_80)
#endif
}

namespace igemm {

#if defined(UF_CUDA_EMULATOR)
__device__ __forceinline__ void cp_async_commit() { ::uf_emu::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { ::uf_emu::cp_async_wait(N); }
#else
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
#endif

constexpr int kThreads = 128, BM = 64, BK = 32;

// The tile's N: a problem's kTileN (64; igemm_base.h). The 3x3 weight gradient with a narrow N (the
// first layer's 9 or 27 (tap, channel) columns) runs as Narrow<P, 16 or 32> (launch_tile): a
// 64-wide tile would multiply and gather mostly padding.
template <class P, int TN>
struct Narrow : P {
  static constexpr int kTileN = TN;
  explicit Narrow(const P& p) : P(p) {}
};

template <class T>
struct Wmma;
template <>
struct Wmma<__half> {
  using frag_t = __half;
  static constexpr int K = 16;
};
template <>
struct Wmma<__nv_bfloat16> {
  using frag_t = __nv_bfloat16;
  static constexpr int K = 16;
};
template <>
struct Wmma<float> {
  using frag_t = nvcuda::wmma::precision::tf32;
  static constexpr int K = 8;
};

// Shared-memory tile shapes of a problem: A is (BM x BK) stored k-contiguous (row-major) or
// m-contiguous (BK x BM), B likewise; rows padded by one 16-byte run.
template <class P>
struct Smem {
  using T = typename P::elem_t;
  static constexpr int V = P::V, BN = P::kTileN;
  static constexpr bool AK = P::kAKContig, BKC = P::kBKContig;
  static constexpr int A_LD = AK ? BK + V : BM + V;
  static constexpr int A_SZ = (AK ? BM : BK) * A_LD;
  static constexpr int B_LD = BKC ? BK + V : BN + V;
  static constexpr int B_SZ = (BKC ? BN : BK) * B_LD;
  static constexpr int C_LD = BN + 4;
  static constexpr int STAGE = A_SZ + B_SZ;                 // elements of one stage (A then B)
  static constexpr int AB_BYTES = 2 * STAGE * (int)sizeof(T);  // two stages (double buffering)
  static constexpr int C_BYTES = BM * C_LD * (int)sizeof(float);
  // store_tile's scratch after the C tile: row, column and pooled-row offsets, column bias index
  static constexpr int EPI_BYTES = P::kAtomic ? 0 : (BM + BN + BM / 4) * 8 + BN * 4;
  static constexpr int BYTES = AB_BYTES > C_BYTES + EPI_BYTES ? AB_BYTES : C_BYTES + EPI_BYTES;
  static_assert(BYTES <= 48 * 1024, "static shared memory is limited to 48 KB (else opt in with "
                                    "dynamic shared memory and cudaFuncSetAttribute)");
  static_assert((STAGE * sizeof(T)) % 32 == 0, "each stage must keep wmma's 32-byte alignment");
  static __device__ __forceinline__ float a(const T* As, int m, int k) {
    return Num<T>::to(AK ? As[m * A_LD + k] : As[k * A_LD + m]);
  }
  static __device__ __forceinline__ float b(const T* Bs, int k, int n) {
    return Num<T>::to(BKC ? Bs[n * B_LD + k] : Bs[k * B_LD + n]);
  }
};

// Tensor-core mainloop: the 4 warps tile C as 2x2 (64-wide tiles: 32x32 each, 2x2 wmma
// accumulators) or 4x1 (narrow tiles: 16 x N each, N / 16 accumulators).
template <class P>
struct TensorCoreMath {
  using T = typename P::elem_t;
  using S = Smem<P>;
  using W = Wmma<T>;
  static constexpr int WN = S::BN >= 64 ? 2 : 1, WM = 4 / WN;  // warps along N and M
  static constexpr int FM = BM / WM / 16, FN = S::BN / WN / 16;  // fragments of a warp
  using ALayout = std::conditional_t<S::AK, nvcuda::wmma::row_major, nvcuda::wmma::col_major>;
  using BLayout = std::conditional_t<S::BKC, nvcuda::wmma::col_major, nvcuda::wmma::row_major>;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, W::K, float> acc[FM][FN];

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.f);
  }

  __device__ __forceinline__ void step(const T* As, const T* Bs) {
    using namespace nvcuda;
    const int warp = threadIdx.x / 32, wm = warp / WN, wn = warp % WN;
#pragma unroll
    for (int kk = 0; kk < BK; kk += W::K) {
      wmma::fragment<wmma::matrix_a, 16, 16, W::K, typename W::frag_t, ALayout> fa[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, W::K, typename W::frag_t, BLayout> fb[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i) {
        const int r = wm * (BM / WM) + i * 16;
        wmma::load_matrix_sync(fa[i], S::AK ? As + r * S::A_LD + kk : As + kk * S::A_LD + r, S::A_LD);
        if constexpr (std::is_same_v<T, float>) {
#pragma unroll
          for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
        }
      }
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        const int c = wn * (S::BN / WN) + j * 16;
        wmma::load_matrix_sync(fb[j], S::BKC ? Bs + c * S::B_LD + kk : Bs + kk * S::B_LD + c, S::B_LD);
        if constexpr (std::is_same_v<T, float>) {
#pragma unroll
          for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
        }
      }
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }

  __device__ __forceinline__ void store(float* Cs) {
    const int warp = threadIdx.x / 32, wm = warp / WN, wn = warp % WN;
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
        nvcuda::wmma::store_matrix_sync(
            Cs + (wm * (BM / WM) + i * 16) * S::C_LD + wn * (S::BN / WN) + j * 16, acc[i][j],
            S::C_LD, nvcuda::wmma::mem_row_major);
  }
};

// Exact fp32 mainloop: thread (tr, tc) owns rows 4*tr..4*tr+3 and columns tc, tc+8, ..., of the
// tile's N.
template <class P>
struct SimtMath {
  using T = typename P::elem_t;
  using S = Smem<P>;
  static constexpr int J = S::BN / 8;
  float acc[4][J];

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < J; ++j) acc[i][j] = 0.f;
  }

  __device__ __forceinline__ void step(const T* As, const T* Bs) {
    const int tr = threadIdx.x >> 3, tc = threadIdx.x & 7;
#pragma unroll 8
    for (int k = 0; k < BK; ++k) {
      float a[4], b[J];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = S::a(As, tr * 4 + i, k);
#pragma unroll
      for (int j = 0; j < J; ++j) b[j] = S::b(Bs, k, tc + 8 * j);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < J; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }

  __device__ __forceinline__ void store(float* Cs) {
    const int tr = threadIdx.x >> 3, tc = threadIdx.x & 7;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < J; ++j) Cs[(tr * 4 + i) * S::C_LD + tc + 8 * j] = acc[i][j];
  }
};

// Problems whose K-contiguous A loader comes in two halves (a_row / a_k / load_a_at).
template <class P, class = void>
struct HasRowCache : std::false_type {};
template <class P>
struct HasRowCache<P, std::void_t<typename P::ARow>> : std::true_type {};

// The A rows of this thread, decoded once per CTA (the thread's rows and its k offset within a
// K-step never change: item i = tid + j * kThreads of the (BM x BK/V) run grid is row
// i / R = tid / R + j * (kThreads / R), k offset (tid % R) * V).
template <class P, bool = HasRowCache<P>::value>
struct RowCache {
  __device__ __forceinline__ void init(const P&, int) {}
  __device__ __forceinline__ bool active() const { return false; }
  template <class T>
  __device__ __forceinline__ void load(const P&, int, T*) const {}
};
template <class P>
struct RowCache<P, true> {
  static constexpr int R = BK / P::V, ROWS = BM * R / kThreads;
  static_assert(kThreads % R == 0 && (BM * R) % kThreads == 0, "the run grid must tile the threads");
  typename P::ARow rows[ROWS];
  bool on;
  __device__ __forceinline__ void init(const P& p, int m0) {
    on = p.a.vec_a;
    if (!on) return;
#pragma unroll
    for (int j = 0; j < ROWS; ++j) rows[j] = p.a_row(m0 + (int)threadIdx.x / R + j * (kThreads / R));
  }
  __device__ __forceinline__ bool active() const { return on; }
  template <class T>
  __device__ __forceinline__ void load(const P& p, int k0, T* As) const {
    using S = Smem<P>;
    const int kv = ((int)threadIdx.x % R) * P::V;
    const typename P::AK q = p.a_k(k0 + kv);
#pragma unroll
    for (int j = 0; j < ROWS; ++j)
      p.load_a_at(rows[j], q, As + ((int)threadIdx.x / R + j * (kThreads / R)) * S::A_LD + kv);
  }
};

// Gathers the A and B tiles of K-step k0 into one stage of shared memory through the problem's
// loaders (16-byte runs: cp.async for plain copies, ordinary loads/stores for masked, zero-filled
// or element-wise runs).
template <class P, class RC>
__device__ __forceinline__ void load_tiles(const P& p, const RC& rc, int m0, int n0, int k0,
                                           typename P::elem_t* As, typename P::elem_t* Bs) {
  using S = Smem<P>;
  constexpr int V = P::V, BN = S::BN;
  const int tid = threadIdx.x;
  if (rc.active()) {
    rc.load(p, k0, As);
  } else if constexpr (S::AK) {
    constexpr int R = BK / V;
#pragma unroll
    for (int i = tid; i < BM * R; i += kThreads) {
      const int r = i / R, kv = (i - r * R) * V;
      p.load_a(m0 + r, k0 + kv, As + r * S::A_LD + kv);
    }
  } else {
    constexpr int R = BM / V;
#pragma unroll
    for (int i = tid; i < BK * R; i += kThreads) {
      const int kr = i / R, mv = (i - kr * R) * V;
      p.load_a(k0 + kr, m0 + mv, As + kr * S::A_LD + mv);
    }
  }
  if constexpr (S::BKC) {
    constexpr int R = BK / V;
#pragma unroll
    for (int i = tid; i < BN * R; i += kThreads) {
      const int r = i / R, kv = (i - r * R) * V;
      p.load_b(n0 + r, k0 + kv, Bs + r * S::B_LD + kv);
    }
  } else {
    constexpr int R = BN / V;
#pragma unroll
    for (int i = tid; i < BK * R; i += kThreads) {
      const int kr = i / R, nv = (i - kr * R) * V;
      p.load_b(k0 + kr, n0 + nv, Bs + kr * S::B_LD + nv);
    }
  }
}

// Mainloop: two shared-memory stages; the copies of step t + 1 are in flight while step t is
// multiplied. Barriers: (1) after the wait, so every thread's copies/stores of stage t are visible
// before any warp reads it; (2) after the math, so no thread overwrites a stage (the loads of step
// t + 2, or the C tile of the epilogue, which aliases stage 0) while a warp still reads it.
template <class P, bool TC>
__global__ void __launch_bounds__(kThreads, 4) igemm_kernel(const P p, int k_split, float* ws,
                                                         float* ws_bias) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using T = typename P::elem_t;
  using S = Smem<P>;
  constexpr int BN = S::BN;
  __shared__ __align__(128) unsigned char smem[S::BYTES];
  T* const stage0 = reinterpret_cast<T*>(smem);
  float* Cs = reinterpret_cast<float*>(smem);
  const int tid = threadIdx.x;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int k_begin = blockIdx.z * k_split;  // < K (the launch sizes grid.z so)
  const int k_end = (int)min((long long)p.a.K, (long long)k_begin + k_split);
  const int steps = (k_end - k_begin + BK - 1) / BK;
  const bool sum_rows = P::kBiasFromA && ws_bias != nullptr && blockIdx.y == 0;
  float rowsum = 0.f;
  std::conditional_t<TC, TensorCoreMath<P>, SimtMath<P>> math;
  math.init();

  RowCache<P> rc;
  rc.init(p, m0);
  if (steps > 0) load_tiles(p, rc, m0, n0, k_begin, stage0, stage0 + S::A_SZ);
  cp_async_commit();
  for (int t = 0; t < steps; ++t) {
    T* As = stage0 + (t & 1) * S::STAGE;
    T* Bs = As + S::A_SZ;
    if (t + 1 < steps) {
      T* An = stage0 + ((t + 1) & 1) * S::STAGE;
      load_tiles(p, rc, m0, n0, k_begin + (t + 1) * BK, An, An + S::A_SZ);
      cp_async_commit();
      cp_async_wait<1>();  // stage t has landed (stage t + 1 may still be in flight)
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (sum_rows && tid < BM) {
#pragma unroll 8
      for (int k = 0; k < BK; ++k) rowsum += S::a(As, tid, k);
    }
    math.step(As, Bs);
    __syncthreads();
  }
  cp_async_wait<0>();  // (nothing is in flight here; keeps the aliasing below safe by construction)
  __syncthreads();

  math.store(Cs);
  __syncthreads();
  if constexpr (P::kAtomic) {
    for (int idx = tid; idx < BM * BN; idx += kThreads) {
      const int r = idx / BN, c = idx - r * BN, m = m0 + r, n = n0 + c;
      if (m < p.a.M && n < p.a.N) atomicAdd(ws + p.out_index(m, n), Cs[r * S::C_LD + c]);
    }
  } else {
    int64_t* roff = reinterpret_cast<int64_t*>(smem + S::C_BYTES);
    store_tile(p, Cs, S::C_LD, m0, n0, BM, BN, tid, kThreads, roff, roff + BM, roff + BM + BN,
               reinterpret_cast<int*>(roff + BM + BN + BM / 4));
  }
  if (sum_rows && tid < BM && m0 + tid < p.a.M) atomicAdd(ws_bias + m0 + tid, rowsum);
#else
  __trap();  // unet_fast's CUDA kernels need sm_80 or newer
#endif
}

template <class P, bool TC>
cudaError_t launch(const P& p, float* ws, float* ws_bias, int num_sms, cudaStream_t stream) {
  constexpr int BN = P::kTileN;
  dim3 grid((p.a.M + BM - 1) / BM, (p.a.N + BN - 1) / BN, 1);
  int k_split = (p.a.K + BK - 1) / BK * BK;
  if (P::kAtomic) {  // weight gradients: split the pixels over CTAs until the GPU is full
    const long tiles = (long)grid.x * grid.y;
    const int steps = (p.a.K + BK - 1) / BK;
    long splits = (2L * (num_sms > 0 ? num_sms : 132) + tiles - 1) / tiles;
    splits = splits < 1 ? 1 : (splits > (steps + 3) / 4 ? (steps + 3) / 4 : splits);
    if (splits < 1) splits = 1;
    if (splits > 65535) splits = 65535;
    k_split = (int)((steps + splits - 1) / splits) * BK;
    grid.z = (p.a.K + k_split - 1) / k_split;
  }
  UF_LAUNCH((igemm_kernel<P, TC>), grid, kThreads, stream, p, k_split, ws, ws_bias);
  return cudaGetLastError();
}

// A narrow N on a narrow tile (Narrow: the problems with kNarrowN, the 3x3 weight gradient);
// every other launch on 64x64.
template <class P, bool TC>
cudaError_t launch_tile(const P& p, float* ws, float* ws_bias, int num_sms, cudaStream_t stream) {
  if constexpr (P::kNarrowN) {
    if (p.a.N <= 16) return launch<Narrow<P, 16>, TC>(Narrow<P, 16>(p), ws, ws_bias, num_sms, stream);
    if (p.a.N <= 32) return launch<Narrow<P, 32>, TC>(Narrow<P, 32>(p), ws, ws_bias, num_sms, stream);
  }
  return launch<P, TC>(p, ws, ws_bias, num_sms, stream);
}

// dtype x math dispatch of one problem template.
template <template <class> class Prob>
cudaError_t run(const GemmLaunch& l, cudaStream_t stream) {
  switch (l.dtype) {
    case DType::kHalf:
      return launch_tile<Prob<__half>, true>(Prob<__half>(l.args), l.ws, l.ws_bias, l.num_sms, stream);
    case DType::kBFloat16:
      return launch_tile<Prob<__nv_bfloat16>, true>(Prob<__nv_bfloat16>(l.args), l.ws, l.ws_bias,
                                                    l.num_sms, stream);
    case DType::kFloat:
      if (l.tf32)
        return launch_tile<Prob<float>, true>(Prob<float>(l.args), l.ws, l.ws_bias, l.num_sms, stream);
      return launch_tile<Prob<float>, false>(Prob<float>(l.args), l.ws, l.ws_bias, l.num_sms, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace igemm
}  // namespace unet_fast
