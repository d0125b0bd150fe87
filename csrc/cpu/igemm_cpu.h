// The CPU engine of the implicit GEMMs of igemm_base.h: the same problems (igemm_conv3x3.h,
// igemm_pointwise.h), loaders and epilogue as the CUDA engine, tiled the same way (64x64 output
// tiles), accumulating in double. Tiles run in parallel with at::parallel_for. It is the C++
// layer's test bed, not a fast CPU convolution.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "../conv_ops.h"
#include "../igemm_conv3x3.h"
#include "../igemm_pointwise.h"

namespace unet_fast {

template <>
struct Num<float> {
  using acc_t = double;
  static float zero() { return 0.f; }
  static double to(float v) { return v; }
  static float from(double v) { return static_cast<float>(v); }
};
template <>
struct Num<double> {
  using acc_t = double;
  static double zero() { return 0.0; }
  static double to(double v) { return v; }
  static double from(double v) { return v; }
};
template <>
struct Num<c10::Half> {
  using acc_t = double;
  static c10::Half zero() { return c10::Half(0.f); }
  static double to(c10::Half v) { return static_cast<float>(v); }
  static c10::Half from(double v) { return c10::Half(static_cast<float>(v)); }
};
template <>
struct Num<c10::BFloat16> {
  using acc_t = double;
  static c10::BFloat16 zero() { return c10::BFloat16(0.f); }
  static double to(c10::BFloat16 v) { return static_cast<float>(v); }
  static c10::BFloat16 from(double v) { return c10::BFloat16(static_cast<float>(v)); }
};

// Tiles are plain arrays here: a 16-byte word is copied at once.
template <class T>
inline void copy_run_tile(T* dst, const T* src) {
  copy_run(dst, src);
}

// ws: the weight-gradient workspace (kAtomic problems), ws_bias: per-row sums of A (kBiasFromA),
// both double and zeroed by the caller; ws_bias may be null.
template <class P>
void igemm_cpu(const P& p, double* ws = nullptr, double* ws_bias = nullptr) {
  using T = typename P::elem_t;
  constexpr int V = P::V, BM = 64, BN = 64, BK = 64;
  const int M = p.a.M, N = p.a.N, K = p.a.K;
  const int64_t tm = (M + BM - 1) / BM, tn = (N + BN - 1) / BN;
  at::parallel_for(0, tm * tn, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> raw(BM * BK > BN * BK ? BM * BK : BN * BK);
    std::vector<double> A(BM * BK), B(BN * BK), C(BM * BN), rowsum(BM);
    std::vector<int64_t> offsets(BM + BN + BM / 4);  // store_tile's scratch
    std::vector<int> cbias(BN);
    for (int64_t t = begin; t < end; ++t) {
      const int m0 = (int)(t / tn) * BM, n0 = (int)(t % tn) * BN;
      const bool sum_rows = P::kBiasFromA && ws_bias != nullptr && n0 == 0;
      std::fill(C.begin(), C.end(), 0.0);
      std::fill(rowsum.begin(), rowsum.end(), 0.0);
      for (int k0 = 0; k0 < K; k0 += BK) {
        // A tile -> A[m][k], through the problem's loader in its own layout
        if (P::kAKContig) {
          for (int r = 0; r < BM; ++r)
            for (int kv = 0; kv < BK; kv += V) p.load_a(m0 + r, k0 + kv, &raw[r * BK + kv]);
          for (int i = 0; i < BM * BK; ++i) A[i] = Num<T>::to(raw[i]);
        } else {
          for (int kr = 0; kr < BK; ++kr)
            for (int mv = 0; mv < BM; mv += V) p.load_a(k0 + kr, m0 + mv, &raw[kr * BM + mv]);
          for (int kr = 0; kr < BK; ++kr)
            for (int r = 0; r < BM; ++r) A[r * BK + kr] = Num<T>::to(raw[kr * BM + r]);
        }
        // B tile -> B[n][k]
        if (P::kBKContig) {
          for (int c = 0; c < BN; ++c)
            for (int kv = 0; kv < BK; kv += V) p.load_b(n0 + c, k0 + kv, &raw[c * BK + kv]);
          for (int i = 0; i < BN * BK; ++i) B[i] = Num<T>::to(raw[i]);
        } else {
          for (int kr = 0; kr < BK; ++kr)
            for (int nv = 0; nv < BN; nv += V) p.load_b(k0 + kr, n0 + nv, &raw[kr * BN + nv]);
          for (int kr = 0; kr < BK; ++kr)
            for (int c = 0; c < BN; ++c) B[c * BK + kr] = Num<T>::to(raw[kr * BN + c]);
        }
        for (int r = 0; r < BM; ++r) {
          const double* ar = &A[r * BK];
          if (sum_rows)
            for (int k = 0; k < BK; ++k) rowsum[r] += ar[k];
          for (int c = 0; c < BN; ++c) {
            const double* bc = &B[c * BK];
            double s = 0;
            for (int k = 0; k < BK; ++k) s += ar[k] * bc[k];
            C[r * BN + c] += s;
          }
        }
      }
      if constexpr (P::kAtomic) {  // each (m, n) belongs to exactly one tile: plain stores
        for (int r = 0; r < BM && m0 + r < M; ++r)
          for (int c = 0; c < BN && n0 + c < N; ++c) ws[p.out_index(m0 + r, n0 + c)] = C[r * BN + c];
      } else {
        store_tile(p, C.data(), BN, m0, n0, BM, BN, 0, 1, offsets.data(), offsets.data() + BM,
                   offsets.data() + BM + BN, cbias.data());
      }
      if (sum_rows)
        for (int r = 0; r < BM && m0 + r < M; ++r) ws_bias[m0 + r] = rowsum[r];
    }
  });
}

// The CPU engine of ConvOps (conv_ops.h).
struct CpuEngine {
  static at::ScalarType acc_type() { return at::kDouble; }
  static void check_device(const at::Tensor& t, const char* name) {
    check_device_type(t, name, at::kCPU, "a CPU tensor here");
  }
  // out[:, :C_skip] = skip cropped at (top, left) to out's H x W (the lower slice of a concat).
  static void crop_into(const at::Tensor& skip, at::Tensor& out, int64_t top, int64_t left) {
    out.narrow(1, 0, skip.size(1)).copy_(skip.narrow(2, top, out.size(2)).narrow(3, left, out.size(3)));
  }
  static void run(GemmKind kind, const GemmArgs& a, at::ScalarType dtype, const at::Tensor& ws,
                  const at::Tensor& wsb) {
    double* w = ws.defined() ? ws.data_ptr<double>() : nullptr;
    double* b = wsb.defined() ? wsb.data_ptr<double>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "unet_fast_igemm_cpu", [&] {
      using T = scalar_t;
      switch (kind) {
        case GemmKind::kConv3x3Fprop: igemm_cpu(Conv3x3Fprop<T, false>(a)); break;
        case GemmKind::kConv3x3FpropPool: igemm_cpu(Conv3x3Fprop<T, true>(a)); break;
        case GemmKind::kConv3x3Dgrad: igemm_cpu(Conv3x3Dgrad<T>(a)); break;
        case GemmKind::kConv3x3DgradPremasked: igemm_cpu(Conv3x3DgradPremasked<T>(a)); break;
        case GemmKind::kConv3x3Wgrad: igemm_cpu(Conv3x3Wgrad<T>(a), w, b); break;
        case GemmKind::kConv3x3WgradPremasked: igemm_cpu(Conv3x3WgradPremasked<T>(a), w, b); break;
        case GemmKind::kPointwiseFprop: igemm_cpu(PointwiseFprop<T>(a)); break;
        case GemmKind::kPointwiseDgrad: igemm_cpu(PointwiseDgrad<T>(a)); break;
        case GemmKind::kPointwiseWgrad: igemm_cpu(PointwiseWgrad<T>(a), w, b); break;
      }
    });
  }
};

}  // namespace unet_fast
