// crop_concat on CUDA. Pure CUDA (no torch headers, so this unit compiles in seconds); the torch
// glue is in registration.cpp. A concat only moves bytes, so the kernels copy raw words of the
// element size and never look at the dtype.
//
// Fast path: NHWC (channels_last) tensors whose channel runs are 16-byte multiples: each output
// pixel is (Cs + Cu) * elem / 16 uint4 words, read and written coalesced. Otherwise a strided
// element-wise kernel in the output's order. Threads walk their items grid-stride without
// dividing (grid_walk.cuh).
#include <cuda_runtime.h>
#include <cstdint>

#include "grid_walk.cuh"
#include "launch.h"

namespace unet_fast {
namespace {

// The vector walks: digits x0 = the 16-byte word of the pixel, x1 = column, x2 = row, x3 = image.

// out = [cropped skip | up] per pixel: vs words of the skip, then vu words of up.
template <typename W>
__global__ void crop_concat_nhwc_vec(const W* __restrict__ skip, const W* __restrict__ up,
                                     W* __restrict__ out, int H, int Wd, int Hs, int Ws, int top,
                                     int left, int vs, int vu, int64_t total, GridWalk walk) {
  for (WalkPos p = walk.first(); p.i < total; walk.next(p)) {
    const int v = p.x0, w = p.x1, h = p.x2;
    const int64_t n = p.x3;
    out[p.i] = v < vs ? skip[((n * Hs + h + top) * Ws + w + left) * vs + v]
                      : up[((n * H + h) * Wd + w) * vu + (v - vs)];
  }
}

// The skip's gradient (walked in skip coordinates): the window at (top, left) from grad's first
// vs words per pixel (vg in all), zero elsewhere.
template <typename W>
__global__ void crop_concat_backward_nhwc_vec(const W* __restrict__ grad, W* __restrict__ gs, int H,
                                              int Wd, int top, int left, int vs, int vg, int64_t total,
                                              GridWalk walk) {
  for (WalkPos p = walk.first(); p.i < total; walk.next(p)) {
    const int v = p.x0, w = p.x1 - left, h = p.x2 - top;
    W val{};
    if (h >= 0 && h < H && w >= 0 && w < Wd) val = grad[((p.x3 * H + h) * Wd + w) * vg + v];
    gs[p.i] = val;
  }
}

// The cropped skip into the lower channels of a wider NHWC buffer (vo words per output pixel):
// the skip half of up_concat, whose upper channels the transposed conv writes itself.
template <typename W>
__global__ void crop_into_nhwc_vec(const W* __restrict__ skip, W* __restrict__ out, int H, int Wd,
                                   int Hs, int Ws, int top, int left, int vs, int vo, int64_t total,
                                   GridWalk walk) {
  for (WalkPos p = walk.first(); p.i < total; walk.next(p)) {
    const int v = p.x0, w = p.x1, h = p.x2;
    const int64_t n = p.x3;
    out[((n * H + h) * Wd + w) * vo + v] = skip[((n * Hs + h + top) * Ws + w + left) * vs + v];
  }
}

// Strided fallback, one element per item, walking the destination in its own memory order so
// writes are coalesced: digit k is dim order[3 - k] of Geometry4 (x0 the fastest). The strides
// come permuted into digit order, and the crop offsets folded into constant bases (host side).
struct Strided {
  int64_t o[4], s[4], u[4];  // per digit: strides of the destination, skip, up (or grad)
  int64_t skip_base;         // forward: skip offset of the crop window (top, left)
  int64_t up_base;           // forward: -cs channels of up; backward: -(top, left) of grad
  int cdig, hdig, wdig;      // the digits that are C, H and W
  int64_t cs, h, w, top, left, numel;
};

__device__ __forceinline__ int64_t dot(const WalkPos& p, const int64_t* st) {
  return p.x0 * st[0] + p.x1 * st[1] + p.x2 * st[2] + p.x3 * st[3];
}
// Digit k (a select chain: a dynamically indexed array would live in local memory).
__device__ __forceinline__ int64_t digit(const WalkPos& p, int k) {
  return k == 0 ? p.x0 : k == 1 ? p.x1 : k == 2 ? p.x2 : p.x3;
}

template <typename T>
__global__ void crop_concat_strided(const T* __restrict__ skip, const T* __restrict__ up,
                                    T* __restrict__ out, Strided g, GridWalk walk) {
  for (WalkPos p = walk.first(); p.i < g.numel; walk.next(p))
    out[dot(p, g.o)] = digit(p, g.cdig) < g.cs ? skip[dot(p, g.s) + g.skip_base] : up[dot(p, g.u) + g.up_base];
}

// gs (the skip's gradient) element-wise: the window at (top, left) comes from grad, the rest is 0.
template <typename T>
__global__ void crop_concat_backward_strided(const T* __restrict__ grad, T* __restrict__ gs, Strided g,
                                             GridWalk walk) {
  for (WalkPos p = walk.first(); p.i < g.numel; walk.next(p)) {
    const int64_t h = digit(p, g.hdig) - g.top, w = digit(p, g.wdig) - g.left;
    T val{};
    if (h >= 0 && h < g.h && w >= 0 && w < g.w) val = grad[dot(p, g.u) + g.up_base];
    gs[dot(p, g.o)] = val;
  }
}

Strided strided_geometry(const Geometry4& geo, bool backward) {
  Strided g{};
  for (int k = 0; k < 4; ++k) {
    const int d = geo.order[3 - k];
    g.o[k] = geo.o[d];
    g.s[k] = geo.s[d];
    g.u[k] = geo.u[d];
    if (d == 1) g.cdig = k;
    if (d == 2) g.hdig = k;
    if (d == 3) g.wdig = k;
  }
  g.skip_base = geo.top * geo.s[2] + geo.left * geo.s[3];
  g.up_base = backward ? -(geo.top * geo.u[2] + geo.left * geo.u[3]) : -geo.cs * geo.u[1];
  g.cs = geo.cs;
  g.h = geo.h;
  g.w = geo.w;
  g.top = geo.top;
  g.left = geo.left;
  g.numel = geo.numel;
  return g;
}

// The walk over the destination's memory order.
template <auto Kernel>
GridWalk strided_walk(const CropConcatArgs& a, int& blocks) {
  const Geometry4& geo = a.geom;
  blocks = walk_blocks<Kernel>(geo.numel, a.num_sms);
  return GridWalk::make((int)geo.size[geo.order[3]], (int)geo.size[geo.order[2]], (int)geo.size[geo.order[1]],
                        blocks);
}

template <typename T>
void strided(const CropConcatArgs& a, cudaStream_t st, bool backward) {
  const Strided g = strided_geometry(a.geom, backward);
  int blocks = 0;
  if (backward) {
    const GridWalk walk = strided_walk<crop_concat_backward_strided<T>>(a, blocks);
    UF_LAUNCH((crop_concat_backward_strided<T>), blocks, kWalkThreads, st, (const T*)a.up, (T*)a.out, g,
              walk);
  } else {
    const GridWalk walk = strided_walk<crop_concat_strided<T>>(a, blocks);
    UF_LAUNCH((crop_concat_strided<T>), blocks, kWalkThreads, st, (const T*)a.skip, (const T*)a.up,
              (T*)a.out, g, walk);
  }
}

void strided_any(const CropConcatArgs& a, cudaStream_t st, bool backward) {
  switch (a.elem_size) {
    case 2: return strided<uint16_t>(a, st, backward);
    case 4: return strided<uint32_t>(a, st, backward);
    default: return strided<uint64_t>(a, st, backward);
  }
}

}  // namespace

cudaError_t crop_concat_cuda_launch(const CropConcatArgs& a, cudaStream_t stream) {
  if (a.nhwc_vec) {
    const int vs = (int)(a.cs * a.elem_size / 16), vu = (int)(a.cu * a.elem_size / 16);
    const int H = (int)a.geom.h, Wd = (int)a.geom.w;
    const int64_t total = a.n * H * Wd * (vs + vu);
    const int blocks = walk_blocks<crop_concat_nhwc_vec<uint4>>(total, a.num_sms);
    UF_LAUNCH((crop_concat_nhwc_vec<uint4>), blocks, kWalkThreads, stream, (const uint4*)a.skip,
              (const uint4*)a.up, (uint4*)a.out, H, Wd, (int)a.hs, (int)a.ws, (int)a.geom.top,
              (int)a.geom.left, vs, vu, total, GridWalk::make(vs + vu, Wd, H, blocks));
  } else {
    strided_any(a, stream, false);
  }
  return cudaGetLastError();
}

cudaError_t crop_into_cuda_launch(const CropConcatArgs& a, cudaStream_t stream) {
  if (a.nhwc_vec) {
    const int vs = (int)(a.cs * a.elem_size / 16), vo = (int)((a.cs + a.cu) * a.elem_size / 16);
    const int H = (int)a.geom.h, Wd = (int)a.geom.w;
    const int64_t total = a.n * H * Wd * vs;
    const int blocks = walk_blocks<crop_into_nhwc_vec<uint4>>(total, a.num_sms);
    UF_LAUNCH((crop_into_nhwc_vec<uint4>), blocks, kWalkThreads, stream, (const uint4*)a.skip,
              (uint4*)a.out, H, Wd, (int)a.hs, (int)a.ws, (int)a.geom.top, (int)a.geom.left, vs, vo,
              total, GridWalk::make(vs, Wd, H, blocks));
  } else {  // the strided concat kernel over the lower slice only (every channel < cs: skip)
    strided_any(a, stream, false);
  }
  return cudaGetLastError();
}

cudaError_t crop_concat_backward_cuda_launch(const CropConcatArgs& a, cudaStream_t stream) {
  if (a.nhwc_vec) {
    const int vs = (int)(a.cs * a.elem_size / 16), vg = (int)((a.cs + a.cu) * a.elem_size / 16);
    const int Hs = (int)a.hs, Ws = (int)a.ws;
    const int64_t total = a.n * Hs * Ws * vs;
    const int blocks = walk_blocks<crop_concat_backward_nhwc_vec<uint4>>(total, a.num_sms);
    UF_LAUNCH((crop_concat_backward_nhwc_vec<uint4>), blocks, kWalkThreads, stream, (const uint4*)a.up,
              (uint4*)a.out, (int)a.geom.h, (int)a.geom.w, (int)a.geom.top, (int)a.geom.left, vs, vg,
              total, GridWalk::make(vs, Ws, Hs, blocks));
  } else {
    strided_any(a, stream, true);
  }
  return cudaGetLastError();
}

}  // namespace unet_fast
