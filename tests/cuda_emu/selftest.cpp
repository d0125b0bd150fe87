// Deliberately broken kernels: each shows that the emulator turns one kind of GPU-only bug into a
// failure (tests/test_cuda_emulated.py::test_emulator_catches_*), next to a correct twin.
#include "cuda_emu.h"

#include <mma.h>

#include "../../csrc/cuda/launch.h"

#include <string>
#include <vector>

namespace {

constexpr int kN = 64;

// Reads the value the next thread wrote (salted per launch: shared memory is not reset between
// launches, so a stale value from an earlier launch must not look right).
__global__ void neighbour(float* out, bool barrier, float salt) {
  __shared__ float s[kN];
  s[threadIdx.x] = (float)threadIdx.x + 1.f + salt;
  if (barrier) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % kN] - salt;
}

__global__ void async_copy(const float* in, float* out, bool wait) {
  __shared__ __align__(16) float s[4 * kN];
  uf_emu::cp_async16(s + 4 * threadIdx.x, in + 4 * threadIdx.x);
  uf_emu::cp_async_commit();
  if (wait) uf_emu::cp_async_wait(0);
  __syncthreads();
  out[threadIdx.x] = s[4 * ((threadIdx.x + 1) % kN)];
  uf_emu::cp_async_wait(0);
}

__global__ void wmma_tile(const __half* a, float* out, int offset) {  // offset 0: aligned
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.f);
  wmma::load_matrix_sync(fa, a + offset, 16);
  wmma::load_matrix_sync(fb, a + offset, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(out, acc, 16, wmma::mem_row_major);
}

__global__ void vec_copy(const uint4* in, uint4* out) { out[threadIdx.x] = in[threadIdx.x]; }

__global__ void shifted_read(const float* in, float* out) { out[threadIdx.x] = in[threadIdx.x + 1]; }

__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void unfinished_copy(const float* in) {
  __shared__ __align__(16) float s[4 * kN];
  uf_emu::cp_async16(s + 4 * threadIdx.x, in + 4 * threadIdx.x);
  uf_emu::cp_async_commit();
}

}  // namespace

// Runs one case; returns its output (or raises what the emulator found).
std::vector<float> run_selftest(const std::string& name) {
  alignas(64) static float in[4 * kN];
  alignas(64) static __half h[16 * 16 + 16];
  for (int i = 0; i < 4 * kN; ++i) in[i] = (float)i;
  for (int i = 0; i < 16 * 16 + 16; ++i) h[i] = __float2half_rn((float)(i % 7) - 3.f);
  alignas(64) static float res[16 * 16];
  std::fill(res, res + 16 * 16, 0.f);
  if (name == "race" || name == "barrier") {
    static float salt = 0.f;
    salt += 1000.f;
    UF_LAUNCH(neighbour, 1, kN, 0, res, name == "barrier", salt);
  } else if (name == "early_read" || name == "waited_read") {
    UF_LAUNCH(async_copy, 1, kN, 0, in, res, name == "waited_read");
  } else if (name == "wmma_aligned" || name == "wmma_misaligned") {
    UF_LAUNCH(wmma_tile, 1, 32, 0, h, res, name == "wmma_aligned" ? 0 : 8);
  } else if (name == "uint4_aligned" || name == "uint4_misaligned") {  // UBSan reports the latter
    const char* src = reinterpret_cast<const char*>(in) + (name == "uint4_aligned" ? 0 : 4);
    UF_LAUNCH(vec_copy, 1, 16, 0, reinterpret_cast<const uint4*>(src), reinterpret_cast<uint4*>(res));
  } else if (name == "heap_overflow") {  // the last thread reads one past a heap buffer (ASan)
    std::vector<float> heap(kN, 1.f);
    UF_LAUNCH(shifted_read, 1, kN, 0, heap.data(), res);
  } else if (name == "divergent_barrier") {
    UF_LAUNCH(divergent_barrier, 1, kN, 0, res);
  } else if (name == "unfinished_copy") {
    UF_LAUNCH(unfinished_copy, 1, kN, 0, in);
  } else {
    throw std::invalid_argument("unknown selftest " + name);
  }
  return std::vector<float>(res, res + 16 * 16);
}
