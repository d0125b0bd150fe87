// The 3x3 convolution + ReLU as implicit GEMMs (on the base of igemm_base.h): the forward, the
// forward with the 2x2 max-pool epilogue, the input gradient and the weight gradient.
//
// Every operand indexed by a tap is k = (r*3 + s)*C + c (tap (r, s), channel c). The forward's A
// and the weight gradient's B both read x through a 3x3 window (XWindow: im2col without the
// copy); the input gradient reads the ReLU-masked output gradient g' = g * (y > 0) through the
// mirrored window. Rows and taps past the GEMM are shifted kFar outside the image, so the bounds
// test that zero-fills the padding zero-fills them too.
#pragma once
#include "igemm_base.h"

namespace unet_fast {
namespace conv3x3 {

constexpr int kFar = 1 << 29;  // outside any image, and 2 * kFar still fits an int

// Channel c and tap (r, s) of GEMM index q = (r*3 + s)*C + c.
struct Tap {
  int c, r, s;
};
UF_HD Tap tap_of(int q, int C) {
  const int rs = q / C, r = rs / 3;
  return Tap{q - rs * C, r, rs - 3 * r};
}
// The tap of a 16-byte run starting at q: r = -kFar from `limit` on (the run is zeros then).
UF_HD Tap tap(int q, int C, int limit) {
  Tap t = tap_of(q, C);
  if (q >= limit) t.r = -kFar;
  return t;
}

// A run element by element (C % V != 0: it may cross taps): element i is at(tap_of(q + i, C))
// below `limit`, zero from there. (Decoding only below the limit, rather than through the
// sentinel of `tap`, keeps this fallback from raising the kernels' register count.)
template <class T, class At>
UF_HD void gather_taps(int q, int C, int limit, T* dst, const At& at) {
  for (int i = 0; i < kRun<T>; ++i) dst[i] = q + i < limit ? at(tap_of(q + i, C)) : Num<T>::zero();
}

UF_HD bool inside(int h, int w, int H, int W) { return h >= 0 && h < H && w >= 0 && w < W; }

// The 3x3 window of x under one output pixel: tap (r, s) reads x[base + (ih0 + r, iw0 + s)].
struct XWindow {
  int64_t base;  // n * xsN
  int ih0, iw0;  // top-left input pixel; ih0 = -kFar for rows past the GEMM
};
UF_HD XWindow x_window(const GemmArgs& a, int n, int oh, int ow) {
  return XWindow{n * a.xsN, oh - a.pad, ow - a.pad};
}
UF_HD XWindow no_window() { return XWindow{0, -kFar, 0}; }

// One 16-byte run of x at tap t (channels t.c..t.c+V-1; zeros in the padding).
template <class T>
UF_HD void load_x_run(const GemmArgs& a, const XWindow& w, const Tap& t, T* dst) {
  const int ih = w.ih0 + t.r, iw = w.iw0 + t.s;
  if (!inside(ih, iw, a.hin, a.win)) return zero_run(dst);
  copy_run_tile(dst, static_cast<const T*>(a.x) + w.base + ih * a.xsH + iw * a.xsW + t.c);
}

// The same element by element: GEMM indices q..q+V-1.
template <class T>
UF_HD void gather_x(const GemmArgs& a, const XWindow& w, int q, int limit, T* dst) {
  const T* x = static_cast<const T*>(a.x);
  gather_taps(q, a.cin, limit, dst, [&](const Tap& t) {
    const int ih = w.ih0 + t.r, iw = w.iw0 + t.s;
    return inside(ih, iw, a.hin, a.win) ? x[w.base + ih * a.xsH + iw * a.xsW + t.c] : Num<T>::zero();
  });
}

}  // namespace conv3x3

// Forward. M = N*OH*OW pixels, N = C_out, K = 9*C_in. A: K-contig (x through the window of the
// row's pixel). B: K-contig, w laid out (C_out, 3, 3, C_in). Out: relu(acc + bias).
// POOL: rows are ordered window-major (the 4 pixels of each 2x2 pooling window are 4 consecutive
// rows, windows first, then the pixels the floor-pooling drops), so a tile's epilogue sees whole
// windows and writes the pooled map too.
template <class T, bool POOL>
struct Conv3x3Fprop : GemmProblem<T, true, true> {
  using B = GemmProblem<T, true, true>;
  using B::a;
  static constexpr int kGroup = POOL ? 4 : 1;
  int mpool;  // rows that belong to whole pooling windows (POOL only)

  explicit Conv3x3Fprop(const GemmArgs& args)
      : B(args), mpool(POOL ? args.nb * (args.hout / 2) * (args.wout / 2) * 4 : 0) {}

  // The pooling window of row m < mpool: image n, pooled pixel (ph, pw).
  UF_HD void window(int m, int& n, int& ph, int& pw) const {
    GemmArgs::unravel(m >> 2, a.hout / 2, a.wout / 2, n, ph, pw);
  }
  UF_HD void pixel(int m, int& n, int& oh, int& ow) const {
    if (!POOL) return a.out_pixel(m, n, oh, ow);
    if (m < mpool) {
      int ph, pw;
      window(m, n, ph, pw);
      oh = 2 * ph + ((m & 3) >> 1);
      ow = 2 * pw + (m & 1);
      return;
    }
    // The dropped pixels: the last row (if OH is odd), then the last column above it (if OW is odd).
    const int ph_n = a.hout / 2, pw_n = a.wout / 2;
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
  using ARow = conv3x3::XWindow;
  using AK = conv3x3::Tap;
  UF_HD ARow a_row(int m) const {
    if (m >= a.M) return conv3x3::no_window();
    int n, oh, ow;
    pixel(m, n, oh, ow);
    return conv3x3::x_window(a, n, oh, ow);
  }
  UF_HD AK a_k(int k) const { return conv3x3::tap(k, a.cin, a.K); }
  UF_HD void load_a_at(const ARow& row, const AK& t, T* dst) const { conv3x3::load_x_run(a, row, t, dst); }

  UF_HD void load_a(int m, int k, T* dst) const {
    if (a.vec_a) return load_a_at(a_row(m), a_k(k), dst);
    conv3x3::gather_x(a, a_row(m), k, a.K, dst);
  }

  UF_HD int64_t out_row(int m) const {
    int b, oh, ow;
    pixel(m, b, oh, ow);
    return a.out_at(b, oh, ow);
  }
  template <class A>
  UF_HD void store_at(int64_t off, int bc, A v) const {
    static_cast<T*>(a.out)[off] = bias_act<true, T>(a, bc, v);
  }

  // The pooled map: pool_row(m) for the window whose first row is m (m < mpool, m % 4 == 0);
  // v: the max of the window's 4 accumulators (relu(max + bias) == max(relu(. + bias))).
  UF_HD int64_t pool_row(int m) const {
    int b, ph, pw;
    window(m, b, ph, pw);
    return b * a.ps[0] + ph * a.ps[2] + pw * a.ps[3];
  }
  template <class A>
  UF_HD void store_pool_at(int64_t row_off, int n, A v) const {
    static_cast<T*>(a.pool)[row_off + n * a.ps[1]] = bias_act<true, T>(a, n, v);
  }
  UF_HD int mpool_rows() const { return mpool; }
};

// Input gradient. M = N*H*W input pixels, N = C_in, K = 9*C_out with k = (r*3 + s)*C_out + o.
// dx[h, w] = sum g'[h + pad - r, w + pad - s, o] * w[o, c, r, s], g' = g * (y > 0) applied while
// loading -- or, kPremasked, g is g' already (the model's grad_masked: the next layer's dgrad
// masked it) and y is not read: the 16-byte runs are then plain async copies. B: w laid out
// (C_in, 3, 3, C_out). Out: the base's epilogue (rows are input pixels).
template <class T, bool kPremasked>
struct Conv3x3DgradOf : GemmProblem<T, true, true> {
  using B = GemmProblem<T, true, true>;
  using B::B, B::a;

  // The 16-byte path (vec_a) in two halves, as in Conv3x3Fprop:
  // load_a(m, k) == load_a_at(a_row(m), a_k(k)) when vec_a.
  struct ARow {
    int n;         // batch index
    int oh0, ow0;  // h + pad, w + pad: tap (r, s) reads g' at (oh0 - r, ow0 - s); kFar past M
  };
  using AK = conv3x3::Tap;  // (channel o of g)
  UF_HD ARow a_row(int m) const {
    if (m >= a.M) return ARow{0, conv3x3::kFar, 0};
    int n, h, w;
    a.in_pixel(m, n, h, w);
    return ARow{n, h + a.pad, w + a.pad};
  }
  UF_HD AK a_k(int k) const { return conv3x3::tap(k, a.cout, a.K); }
  UF_HD void load_a_at(const ARow& row, const AK& t, T* dst) const {
    const int oh = row.oh0 - t.r, ow = row.ow0 - t.s;
    if (!conv3x3::inside(oh, ow, a.hout, a.wout)) return zero_run(dst);
    if constexpr (kPremasked) {
      copy_run_tile(dst, static_cast<const T*>(a.g) + a.g_at(row.n, oh, ow) + t.c);
    } else {
      load_masked_run(static_cast<const T*>(a.g), static_cast<const T*>(a.y),
                      a.g_at(row.n, oh, ow) + t.c, a.y_at(row.n, oh, ow) + t.c, true, B::V, dst);
    }
  }

  UF_HD void load_a(int m, int k, T* dst) const {
    const ARow row = a_row(m);
    if (a.vec_a) return load_a_at(row, a_k(k), dst);
    const T* g = static_cast<const T*>(a.g);
    const T* y = static_cast<const T*>(a.y);
    conv3x3::gather_taps(k, a.cout, a.K, dst, [&](const AK& t) {
      const int oh = row.oh0 - t.r, ow = row.ow0 - t.s;
      if (!conv3x3::inside(oh, ow, a.hout, a.wout)) return Num<T>::zero();
      const T* gp = g + a.g_at(row.n, oh, ow) + t.c;
      if constexpr (kPremasked) return T(*gp);
      else return masked(gp, y + a.y_at(row.n, oh, ow) + t.c);
    });
  }
};
// (structs, not aliases as Conv3x3Fprop's pool flag: each keeps its own name in the SASS tables,
// docs/cuda_kernels.md, which tools/kernel_model.py looks the kernels up by)
template <class T>
struct Conv3x3Dgrad : Conv3x3DgradOf<T, false> {
  using Conv3x3DgradOf<T, false>::Conv3x3DgradOf;
};
template <class T>
struct Conv3x3DgradPremasked : Conv3x3DgradOf<T, true> {
  using Conv3x3DgradOf<T, true>::Conv3x3DgradOf;
};

// Weight gradient. M = C_out, N = 9*C_in with n = (r*3 + s)*C_in + c, K = N*OH*OW output pixels.
// A: M-contig, g' at pixel k (kPremasked: g as it is, as in Conv3x3DgradOf). B: N-contig, x
// through the window of pixel k. Out: the (C_out, 3, 3, C_in) workspace (the glue permutes it to
// (C_out, C_in, 3, 3)); dbias = row sums of A.
template <class T, bool kPremasked>
struct Conv3x3WgradOf : GemmProblem<T, false, false, true> {
  using B = GemmProblem<T, false, false, true>;
  using B::B, B::a;
  // the first layer's N = 9 or 27 (1 or 3 input channels) on 64x16 or 64x32 tiles
  static constexpr bool kNarrowN = true;

  UF_HD void load_a(int k, int m, T* dst) const {  // owner k (pixel), run along m (C_out)
    if (k >= a.K) return zero_run(dst);
    int n, oh, ow;
    a.out_pixel(k, n, oh, ow);
    const int count = a.M - m;
    if (count <= 0) return zero_run(dst);  // (after the decode: 24 fewer registers in fp32 SIMT)
    if constexpr (kPremasked) {
      load_run(static_cast<const T*>(a.g) + a.g_at(n, oh, ow), m, a.M, a.vec_a, dst);
    } else {
      load_masked_run(static_cast<const T*>(a.g), static_cast<const T*>(a.y), a.g_at(n, oh, ow) + m,
                      a.y_at(n, oh, ow) + m, a.vec_a && count >= B::V, count, dst);
    }
  }

  UF_HD void load_b(int k, int nn, T* dst) const {  // owner k (pixel), run along n = (tap, c)
    conv3x3::XWindow w = conv3x3::no_window();
    if (k < a.K) {
      int n, oh, ow;
      a.out_pixel(k, n, oh, ow);
      w = conv3x3::x_window(a, n, oh, ow);
    }
    if (a.vec_b) return conv3x3::load_x_run(a, w, conv3x3::tap(nn, a.cin, a.N), dst);
    conv3x3::gather_x(a, w, nn, a.N, dst);
  }
};
template <class T>
struct Conv3x3Wgrad : Conv3x3WgradOf<T, false> {
  using Conv3x3WgradOf<T, false>::Conv3x3WgradOf;
};
template <class T>
struct Conv3x3WgradPremasked : Conv3x3WgradOf<T, true> {
  using Conv3x3WgradOf<T, true>::Conv3x3WgradOf;
};

}  // namespace unet_fast
