// crop_concat on CUDA. Pure CUDA (no torch headers, so this unit compiles in seconds); the torch
// glue is in registration.cpp. A concat only moves bytes, so the kernels copy raw words of the
// element size and never look at the dtype.
//
// Fast path: NHWC (channels_last) tensors whose channel runs are 16-byte multiples: each output
// pixel is (Cs + Cu) * elem / 16 uint4 words, read and written coalesced. Otherwise a strided
// element-wise kernel in the output's order.
#include <cuda_runtime.h>
#include <cstdint>

#include "launch.h"

namespace unet_fast {
namespace {

template <typename W>
__global__ void crop_concat_nhwc_vec(const W* __restrict__ skip, const W* __restrict__ up,
                                     W* __restrict__ out, int64_t pixels, int H, int Wd,
                                     int Hs, int Ws, int top, int left, int vs, int vu) {
  const int vp = vs + vu;  // words per output pixel
  const int64_t total = pixels * vp;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t p = i / vp;
    const int v = (int)(i - p * vp);
    W val;
    if (v < vs) {
      const int64_t n = p / ((int64_t)H * Wd);
      const int r = (int)(p - n * H * Wd);
      const int h = r / Wd, w = r - (r / Wd) * Wd;
      val = skip[((n * Hs + h + top) * (int64_t)Ws + w + left) * vs + v];
    } else {
      val = up[p * vu + (v - vs)];
    }
    out[i] = val;
  }
}

template <typename W>
__global__ void crop_concat_backward_nhwc_vec(const W* __restrict__ grad, W* __restrict__ gs,
                                              int64_t pixels, int H, int Wd, int Hs, int Ws,
                                              int top, int left, int vs, int vg) {
  const int64_t total = pixels * vs;  // pixels of the skip
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t p = i / vs;
    const int v = (int)(i - p * vs);
    const int64_t n = p / ((int64_t)Hs * Ws);
    const int r = (int)(p - n * Hs * Ws);
    const int h = r / Ws - top, w = r - (r / Ws) * Ws - left;
    W val{};
    if (h >= 0 && h < H && w >= 0 && w < Wd) val = grad[((n * H + h) * (int64_t)Wd + w) * vg + v];
    gs[i] = val;
  }
}

// The cropped skip into the lower channels of a wider NHWC buffer (vo words per output pixel):
// the skip half of up_concat, whose upper channels the transposed conv writes itself.
template <typename W>
__global__ void crop_into_nhwc_vec(const W* __restrict__ skip, W* __restrict__ out, int64_t pixels,
                                   int H, int Wd, int Hs, int Ws, int top, int left, int vs, int vo) {
  const int64_t total = pixels * vs;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t p = i / vs;
    const int v = (int)(i - p * vs);
    const int64_t n = p / ((int64_t)H * Wd);
    const int r = (int)(p - n * H * Wd);
    const int h = r / Wd, w = r - h * Wd;
    out[p * vo + v] = skip[((n * Hs + h + top) * (int64_t)Ws + w + left) * vs + v];
  }
}

// Strided fallback, one element per thread, iterating in the output's own memory order
// (given by `order`: dims from slowest to fastest) so writes are coalesced.
template <typename T>
__global__ void crop_concat_strided(const T* __restrict__ skip, const T* __restrict__ up,
                                    T* __restrict__ out, Geometry4 g) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < g.numel;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t idx[4];
    g.unravel(i, idx);
    const int64_t n = idx[0], c = idx[1], h = idx[2], w = idx[3];
    T val = c < g.cs ? skip[n * g.s[0] + c * g.s[1] + (h + g.top) * g.s[2] + (w + g.left) * g.s[3]]
                     : up[n * g.u[0] + (c - g.cs) * g.u[1] + h * g.u[2] + w * g.u[3]];
    out[n * g.o[0] + c * g.o[1] + h * g.o[2] + w * g.o[3]] = val;
  }
}

// gs (the skip's gradient) element-wise: the window at (top, left) comes from grad, the rest is 0.
template <typename T>
__global__ void crop_concat_backward_strided(const T* __restrict__ grad, T* __restrict__ gs,
                                             Geometry4 g) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < g.numel;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t idx[4];
    g.unravel(i, idx);
    const int64_t n = idx[0], c = idx[1], h = idx[2] - g.top, w = idx[3] - g.left;
    T val{};
    if (h >= 0 && h < g.h && w >= 0 && w < g.w)
      val = grad[n * g.u[0] + c * g.u[1] + h * g.u[2] + w * g.u[3]];
    gs[idx[0] * g.o[0] + c * g.o[1] + idx[2] * g.o[2] + idx[3] * g.o[3]] = val;
  }
}

inline int grid_for(int64_t n, int threads = 256) {
  int64_t blocks = (n + threads - 1) / threads;
  return (int)(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

template <typename T>
void strided(const CropConcatArgs& a, cudaStream_t st, bool backward) {
  if (backward)
    UF_LAUNCH((crop_concat_backward_strided<T>), grid_for(a.geom.numel), 256, st, (const T*)a.up,
              (T*)a.out, a.geom);
  else
    UF_LAUNCH((crop_concat_strided<T>), grid_for(a.geom.numel), 256, st, (const T*)a.skip,
              (const T*)a.up, (T*)a.out, a.geom);
}

}  // namespace

cudaError_t crop_concat_cuda_launch(const CropConcatArgs& a, cudaStream_t stream) {
  if (a.nhwc_vec) {
    const int64_t e = a.elem_size;
    const int vs = (int)(a.cs * e / 16), vu = (int)(a.cu * e / 16);
    const int64_t pixels = a.n * a.geom.h * a.geom.w;
    UF_LAUNCH((crop_concat_nhwc_vec<uint4>), grid_for(pixels * (vs + vu)), 256, stream,
              (const uint4*)a.skip, (const uint4*)a.up, (uint4*)a.out, pixels, (int)a.geom.h,
              (int)a.geom.w, (int)a.hs, (int)a.ws, (int)a.geom.top, (int)a.geom.left, vs, vu);
  } else {
    switch (a.elem_size) {
      case 2: strided<uint16_t>(a, stream, false); break;
      case 4: strided<uint32_t>(a, stream, false); break;
      default: strided<uint64_t>(a, stream, false); break;
    }
  }
  return cudaGetLastError();
}

cudaError_t crop_into_cuda_launch(const CropConcatArgs& a, cudaStream_t stream) {
  if (a.nhwc_vec) {
    const int64_t e = a.elem_size;
    const int vs = (int)(a.cs * e / 16), vo = (int)((a.cs + a.cu) * e / 16);
    const int64_t pixels = a.n * a.geom.h * a.geom.w;
    UF_LAUNCH((crop_into_nhwc_vec<uint4>), grid_for(pixels * vs), 256, stream, (const uint4*)a.skip,
              (uint4*)a.out, pixels, (int)a.geom.h, (int)a.geom.w, (int)a.hs, (int)a.ws,
              (int)a.geom.top, (int)a.geom.left, vs, vo);
  } else {  // the strided concat kernel over the lower slice only (every channel < cs: skip)
    switch (a.elem_size) {
      case 2: strided<uint16_t>(a, stream, false); break;
      case 4: strided<uint32_t>(a, stream, false); break;
      default: strided<uint64_t>(a, stream, false); break;
    }
  }
  return cudaGetLastError();
}

cudaError_t crop_concat_backward_cuda_launch(const CropConcatArgs& a, cudaStream_t stream) {
  if (a.nhwc_vec) {
    const int64_t e = a.elem_size;
    const int vs = (int)(a.cs * e / 16), vg = (int)((a.cs + a.cu) * e / 16);
    const int64_t pixels = a.n * a.hs * a.ws;
    UF_LAUNCH((crop_concat_backward_nhwc_vec<uint4>), grid_for(pixels * vs), 256, stream,
              (const uint4*)a.up, (uint4*)a.out, pixels, (int)a.geom.h, (int)a.geom.w, (int)a.hs,
              (int)a.ws, (int)a.geom.top, (int)a.geom.left, vs, vg);
  } else {
    switch (a.elem_size) {
      case 2: strided<uint16_t>(a, stream, true); break;
      case 4: strided<uint32_t>(a, stream, true); break;
      default: strided<uint64_t>(a, stream, true); break;
    }
  }
  return cudaGetLastError();
}

}  // namespace unet_fast
