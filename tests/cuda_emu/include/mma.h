// nvcuda::wmma for the CPU emulator of the CUDA execution model (tests/cuda_emu/cuda_emu.h).
//
// On a GPU a fragment is spread over the 32 lanes of a warp in an unspecified way; here every lane
// holds the whole tile (row-major), which is equivalent for code that, like unet_fast's, only
// loads, stores, multiplies and applies element-wise functions to fragments. The operations check
// what the hardware requires (32-byte aligned pointers, leading dimensions in 16-byte multiples)
// and record each call in the lane's trace, so lanes of one warp that diverge are reported.
// TF32 multiplies read only the 19 TF32 bits of each input, as the tensor cores do; products are
// summed in float32 in k order.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../cuda_emu.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <class T>
struct storage { using type = T; };
template <>
struct storage<precision::tf32> { using type = float; };

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

inline float tf32_bits(float v) {  // what a TF32 tensor core reads of a float
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u &= 0xFFFFE000u;
  std::memcpy(&v, &u, 4);
  return v;
}

inline void check(const void* p, unsigned ldm, size_t elem, const char* what) {
  uf_emu::check_align(p, 32, what);
  if ((ldm * elem) % 16 != 0)
    uf_emu::fail(std::string(what) + ": the leading dimension is not a multiple of 16 bytes");
}

inline void trace(int op, const void* p, unsigned ldm) {
  uf_emu::wmma_trace((uint64_t)op);
  uf_emu::wmma_trace((uint64_t)(uintptr_t)p);
  uf_emu::wmma_trace((uint64_t)ldm);
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  using element_type = typename detail::storage<T>::type;
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  static constexpr bool col = std::is_same_v<Layout, col_major>;
  element_type x[num_elements];  // element (r, c) at x[r * cols + c]
};

template <class Use, int M, int N, int K, class T, class L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f,
                          typename fragment<Use, M, N, K, T, L>::element_type v) {
  detail::trace(1, nullptr, 0);
  for (auto& e : f.x) e = v;
}

// matrix_a / matrix_b with a layout in the type.
template <class Use, int M, int N, int K, class T, class L, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, L>;
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load needs a layout_t");
  detail::check(p, ldm, sizeof(P), "wmma::load_matrix_sync");
  detail::trace(2, p, ldm);
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = static_cast<typename F::element_type>(F::col ? p[c * ldm + r] : p[r * ldm + c]);
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                              layout_t layout) {
  detail::check(p, ldm, sizeof(float), "wmma::store_matrix_sync");
  detail::trace(3, p, ldm);
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[r * N + c];
}

template <int M, int N, int K, class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  detail::trace(4, nullptr, 0);
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) {
        float av = detail::to_float(a.x[i * K + k]), bv = detail::to_float(b.x[k * N + j]);
        if constexpr (std::is_same_v<T, precision::tf32>) {
          av = detail::tf32_bits(av);
          bv = detail::tf32_bits(bv);
        }
        s = std::fma(av, bv, s);
      }
      out[i * N + j] = s;
    }
  std::memcpy(d.x, out, sizeof(out));
}

// cvt.rna.tf32.f32: round to the nearest TF32 value, ties away from zero.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u + 0x1000u) & 0xFFFFE000u;
  std::memcpy(&v, &u, 4);
  return v;
}

}  // namespace wmma
}  // namespace nvcuda
