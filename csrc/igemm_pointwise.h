// The 1x1 convolution and the 2x2 stride-2 transposed convolution as per-pixel implicit GEMMs (on
// the base of igemm_base.h): forward, input gradient, weight gradient.
//
// G = 1 (1x1: out pixel = in pixel) or G = 2 (stride-2 transposed conv: in pixel (h, w) scatters
// to the 2x2 block (2h + i, 2w + j)). The GEMM index of the output side is q = (i*G + j)*C_out + o,
// so C_out is contiguous (coalesced NHWC stores). The input gradient and the weight gradient both
// read g along q from the G x G block of an input pixel (load_g_block).
#pragma once
#include "igemm_base.h"

namespace unet_fast {
namespace pointwise {

// Offset in g of index q = (i*G + j)*C_out + o from the block's top-left pixel.
UF_HD int64_t block_off(const GemmArgs& a, int q) {
  const int ij = q / a.cout, o = q - ij * a.cout, i = ij / a.G, j = ij - i * a.G;
  return i * a.gsH + j * a.gsW + o;
}

// g at the G x G block of input pixel (n, h, w): indices q..q+V-1, zeros from `limit` on. With
// `vec` C_out % V == 0, so a run never crosses an (i, j) block.
template <class T>
UF_HD void load_g_block(const GemmArgs& a, int n, int h, int w, int q, int limit, bool vec, T* dst) {
  const T* g = static_cast<const T*>(a.g) + a.g_at(n, a.G * h, a.G * w);
  if (vec) return q < limit ? copy_run_tile(dst, g + block_off(a, q)) : zero_run(dst);
  for (int i = 0; i < kRun<T>; ++i) dst[i] = q + i < limit ? g[block_off(a, q + i)] : Num<T>::zero();
}

}  // namespace pointwise

// Forward. M = N*H*W input pixels, N = G*G*C_out, K = C_in. A: K-contig (x). B: K-contig, w laid
// out (G, G, C_out, C_in). Out[n, o, G*h + i, G*w + j] = acc + bias[o], written at any channel
// offset of a larger buffer (the concat's upper slice).
template <class T>
struct PointwiseFprop : GemmProblem<T, true, true> {
  using B = GemmProblem<T, true, true>;
  using B::B, B::a;

  UF_HD void load_a(int m, int k, T* dst) const {  // x at pixel m, channels k..
    if (m >= a.M) return zero_run(dst);
    int n, h, w;
    a.in_pixel(m, n, h, w);
    load_run(static_cast<const T*>(a.x) + a.x_at(n, h, w), k, a.K, a.vec_a, dst);
  }

  // Row part: the input pixel's top-left output pixel; column part: channel o and the (i, j)
  // position inside the G x G block.
  UF_HD int64_t out_row(int m) const {
    int b, h, w;
    a.in_pixel(m, b, h, w);
    return a.out_at(b, a.G * h, a.G * w);
  }
  UF_HD int64_t out_col(int n) const {
    const int ij = n / a.cout, o = n - ij * a.cout, i = ij / a.G, j = ij - i * a.G;
    return o * a.os[1] + i * a.os[2] + j * a.os[3];
  }
  UF_HD int bias_col(int n) const { return n % a.cout; }  // channel o of column n
  template <class A>
  UF_HD void store_at(int64_t off, int bc, A v) const {
    static_cast<T*>(a.out)[off] = bias_act<false, T>(a, bc, v);
  }
};

// Input gradient. M = N*H*W input pixels, N = C_in, K = G*G*C_out. A: K-contig, g at the pixel's
// block. B: K-contig, w laid out (C_in, G, G, C_out). Out: the base's epilogue.
template <class T>
struct PointwiseDgrad : GemmProblem<T, true, true> {
  using B = GemmProblem<T, true, true>;
  using B::B, B::a;

  UF_HD void load_a(int m, int k, T* dst) const {
    if (m >= a.M) return zero_run(dst);
    int n, h, w;
    a.in_pixel(m, n, h, w);
    pointwise::load_g_block(a, n, h, w, k, a.K, a.vec_a, dst);
  }
};

// Weight gradient. M = G*G*C_out, N = C_in, K = N*H*W input pixels. A: M-contig, g at pixel k's
// block. B: N-contig, x at pixel k. Out: the (G, G, C_out, C_in) workspace, which the glue
// permutes to the torch layout ((C_in, C_out, 2, 2) for the transposed conv; (C_out, C_in, 1, 1)
// for the 1x1 conv is the same memory); dbias = row sums of A, folded over (i, j).
template <class T>
struct PointwiseWgrad : GemmProblem<T, false, false, true> {
  using B = GemmProblem<T, false, false, true>;
  using B::B, B::a;

  UF_HD void load_a(int k, int m, T* dst) const {  // owner k (pixel), run along m = (ij, o)
    if (k >= a.K) return zero_run(dst);
    int n, h, w;
    a.in_pixel(k, n, h, w);
    pointwise::load_g_block(a, n, h, w, m, a.M, a.vec_a, dst);
  }
  UF_HD void load_b(int k, int n, T* dst) const {  // owner k (pixel), run along n = c_in
    if (k >= a.K) return zero_run(dst);
    int b, h, w;
    a.in_pixel(k, b, h, w);
    load_run(static_cast<const T*>(a.x) + a.x_at(b, h, w), n, a.N, a.vec_b, dst);
  }
};

}  // namespace unet_fast
