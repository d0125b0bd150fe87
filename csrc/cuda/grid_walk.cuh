// Grid-stride loops without a division per item, for the memory-bound kernels (max-pool,
// crop-concat; no torch headers).
//
// An item's index is a mixed-radix number (x3, x2, x1, x0), x0 fastest: for a 16-byte vector
// path (image, row, column, word of the pixel's channels). Each thread decodes its first item
// once (32-bit divisions: the index is below the grid size), then advances by the grid stride,
// whose digits the host computed for the launch: an add and a compare-and-subtract per digit
// (every digit of the stride is below its radix, so a digit wraps at most once per step). A
// 64-bit division is a subroutine of dozens of instructions on the GPU; these kernels used to
// run three per 16-byte word. The grid is one full wave, so the threads of a large tensor walk
// several items each and share their one decode among them.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace unet_fast {

constexpr int kWalkThreads = 256;  // per CTA

// CTAs for `items` items of Kernel: one per kWalkThreads items, at most one full wave (as many
// CTAs as fit on all SMs at once, given the kernel's registers). Every CTA of a walk does the
// same work, so a grid of, say, 1.3 waves would take two rounds, the second one a third full.
template <auto Kernel>
int walk_blocks(int64_t items, int num_sms) {
  static const int per_sm = [] {  // (sm_80 and sm_90 have the same limits: computed once)
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, Kernel, kWalkThreads, 0) != cudaSuccess || n < 1) {
      (void)cudaGetLastError();  // (not an error of the launch that follows)
      n = 2048 / kWalkThreads;
    }
    return n;
  }();
  const int64_t need = (items + kWalkThreads - 1) / kWalkThreads;
  const int64_t wave = (int64_t)per_sm * (num_sms > 0 ? num_sms : 1);
  return (int)(need < 1 ? 1 : need < wave ? need : wave);
}

// One thread's position: the digits and the linear index i.
struct WalkPos {
  int x0, x1, x2;
  int64_t x3, i;
};

// The walk over items r3 x r2 x r1 x r0 (r3 implied by the item count) with `blocks` CTAs.
struct GridWalk {
  int r0, r1, r2;      // radices of the three fast digits
  int d0, d1, d2;      // the grid stride in those digits ...
  int64_t d3, stride;  // ... the rest of it, and the stride itself

  static GridWalk make(int r0, int r1, int r2, int blocks) {
    GridWalk g{r0, r1, r2, 0, 0, 0, 0, (int64_t)blocks * kWalkThreads};
    int64_t s = g.stride;
    g.d0 = (int)(s % r0);
    s /= r0;
    g.d1 = (int)(s % r1);
    s /= r1;
    g.d2 = (int)(s % r2);
    g.d3 = s / r2;
    return g;
  }

  __device__ __forceinline__ WalkPos first() const {
    int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    WalkPos p;
    p.i = i;
    p.x0 = i % r0;
    i /= r0;
    p.x1 = i % r1;
    i /= r1;
    p.x2 = i % r2;
    p.x3 = i / r2;
    return p;
  }

  __device__ __forceinline__ void next(WalkPos& p) const {
    p.i += stride;
    p.x0 += d0;
    int carry = p.x0 >= r0;
    if (carry) p.x0 -= r0;
    p.x1 += d1 + carry;
    carry = p.x1 >= r1;
    if (carry) p.x1 -= r1;
    p.x2 += d2 + carry;
    carry = p.x2 >= r2;
    if (carry) p.x2 -= r2;
    p.x3 += d3 + carry;
  }
};

// The CTA's column sums of per-thread run sums: thread tid holds acc[v] for element v of run
// tid % R (R runs of V columns a row, kWalkThreads a multiple of R); column c = r * V + v is summed
// over the CTA's threads of run r in thread order (fixed: the same sum on every run) through `red`
// (V * kWalkThreads floats of shared memory), then handed to done(c, sum) for c < cols. Every
// thread of the CTA calls it (barriers).
template <int V, class Done>
__device__ __forceinline__ void cta_run_sums(const float (&acc)[V], int R, int cols, float* red, Done&& done) {
  const int tid = threadIdx.x, per_pass = kWalkThreads / R;
#pragma unroll
  for (int v = 0; v < V; ++v) red[v * kWalkThreads + tid] = acc[v];
  __syncthreads();
  for (int c = tid; c < cols; c += kWalkThreads) {
    const int rc = c / V, v = c - rc * V;
    float s = 0.f;
    for (int q = 0; q < per_pass; ++q) s += red[v * kWalkThreads + q * R + rc];
    done(c, s);
  }
  __syncthreads();  // (red is written again by the next call)
}

}  // namespace unet_fast
