// A CPU emulator of the CUDA execution model, just large enough to run unet_fast's CUDA kernels
// (csrc/cuda) unchanged on a machine without a GPU. It is a test instrument, not a backend.
//
// Each CTA's threads run as fibers (ucontext) on the calling thread, one CTA after another; a
// thread runs until __syncthreads() or its end, then the next one runs. What a GPU would only show
// at run time becomes a test failure here:
//   - races: the order in which threads run between barriers (and CTAs run) is a parameter
//     (forward, reverse, seeded random), so a read that depends on who ran first changes results;
//   - cp.async: a copy's bytes land only at the cp.async.wait_group that covers it; until then its
//     destination holds NaN bytes (0xFF), so reading a tile before waiting poisons the result;
//   - alignment: cp.async (16 B), wmma loads/stores (32 B pointers, 16 B leading dimensions), and
//     every uint4 access (UBSan -fsanitize=alignment in the build, tests/cuda_emu/build.py);
//   - barrier divergence (some threads exit while others wait), a thread ending with copies in
//     flight, wmma calls that differ between the lanes of a warp.
// Violations are collected during a launch and raised as one std::runtime_error after it.
// Not modelled: shared memory keeps its bytes from one CTA to the next (a GPU's starts undefined),
// so a read of a shared-memory element that no thread of the CTA wrote goes unnoticed unless the
// stale value breaks the result; out-of-bounds accesses are the ASan build's job (asan_check.py).
//
// The kernels and their glue compile unchanged; production code has exactly three hooks for the
// emulator (each marked there with a pointer back to this list):
//   1. UF_LAUNCH (csrc/cuda/launch.h): every kernel launch; with UF_CUDA_EMULATOR it calls
//      uf_emu::launch instead of <<<grid, block, 0, stream>>>.
//   2. The cp.async seam (csrc/cuda/igemm.cuh: copy_run_tile, cp_async_commit, cp_async_wait):
//      with UF_CUDA_EMULATOR the uf_emu::cp_async* below instead of the PTX.
//   3. The Dev policy of the torch glue (csrc/cuda/glue.h, CudaGlue<Dev>): device check, guard,
//      stream, SM count, launch check; csrc/cuda/registration.cpp instantiates it for CUDA,
//      ext.cpp here for CPU tensors.
// Everything else is CUDA's own vocabulary (threadIdx, __syncthreads, atomicAdd, nvcuda::wmma in
// include/mma.h), defined below for the host compiler, and the two runtime calls of the launchers
// (cudaGetLastError, the occupancy query of the pool and crop kernels), which ext.cpp defines.
//
// The first include of every emulator translation unit (kernels_*.cpp, ext.cpp).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <ucontext.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// ---------------------------------------------------------------- CUDA's device-side vocabulary
#define UF_CUDA_EMULATOR 1
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900  // the kernels' sm_80+ paths (cp.async, tensor cores)
#endif
#undef __shared__
#define __shared__ static  // one copy per kernel instantiation, shared by the CTA's fibers
#define __launch_bounds__(...)

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

using std::isnan;
inline long long min(long long a, long long b) { return a < b ? a : b; }

namespace uf_emu {

enum Schedule { kForward = 0, kReverse = 1, kRandom = 2 };

struct Options {
  int schedule = kForward;
  unsigned seed = 0;
};
inline Options options;

struct Copy {
  unsigned char* dst;
  unsigned char bytes[16];
  long group;  // the commit group it belongs to (its thread's commit count at issue)
};

struct Thread {
  ucontext_t ctx;
  enum State { kRunnable, kAtBarrier, kDone } state = kRunnable;
  uint3 idx;
  std::vector<Copy> inflight;
  long commits = 0;
  uint64_t wmma_trace = 1469598103934665603ull;  // FNV-1a over this lane's wmma calls
  long wmma_calls = 0;
};

struct Runtime {
  ucontext_t scheduler;
  const void* sched_stack = nullptr;  // (AddressSanitizer's view of the scheduler's stack)
  size_t sched_stack_size = 0;
  std::vector<Thread> threads;
  std::vector<std::vector<char>> stacks;
  Thread* current = nullptr;
  std::function<void()> body;
  std::vector<std::string> errors;
  std::mt19937 rng;
  long launches = 0;
};
inline Runtime rt;

inline void fail(const std::string& what) {
  if (rt.errors.size() < 20) {
    std::ostringstream s;
    s << what << " (block " << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z << " thread "
      << threadIdx.x << "," << threadIdx.y << "," << threadIdx.z << ")";
    rt.errors.push_back(s.str());
  }
}

// Stack switches, announced to AddressSanitizer when it is on (the ASan build of build.py) so it
// tracks which stack is live.
inline void to_fiber(ucontext_t* from, ucontext_t* to, const std::vector<char>& stack) {
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, stack.data(), stack.size());
  swapcontext(from, to);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)stack;
  swapcontext(from, to);
#endif
}
inline void fiber_started() {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &rt.sched_stack, &rt.sched_stack_size);
#endif
}
inline void to_scheduler(ucontext_t* from, bool ending) {
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(ending ? nullptr : &fake, rt.sched_stack, rt.sched_stack_size);
  swapcontext(from, &rt.scheduler);
  __sanitizer_finish_switch_fiber(fake, &rt.sched_stack, &rt.sched_stack_size);
#else
  (void)ending;
  swapcontext(from, &rt.scheduler);
#endif
}

inline void check_align(const void* p, size_t a, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % a != 0) {
    std::ostringstream s;
    s << what << ": address " << p << " is not " << a << "-byte aligned";
    fail(s.str());
  }
}

// ------------------------------------------------------------------------------- cp.async
inline void cp_async16(void* dst, const void* src) {
  check_align(dst, 16, "cp.async destination");
  check_align(src, 16, "cp.async source");
  Copy c;
  c.dst = static_cast<unsigned char*>(dst);
  std::memcpy(c.bytes, src, 16);
  c.group = rt.current->commits;
  std::memset(dst, 0xFF, 16);  // NaN in every float type until the copy lands
  rt.current->inflight.push_back(c);
}
inline void cp_async_commit() { ++rt.current->commits; }
// Completes every committed group but the newest n.
inline void cp_async_wait(int n) {
  Thread& t = *rt.current;
  const long keep_from = t.commits - n;  // groups >= keep_from may stay in flight
  std::vector<Copy> rest;
  for (const Copy& c : t.inflight) {
    if (c.group < keep_from) std::memcpy(c.dst, c.bytes, 16);
    else rest.push_back(c);
  }
  t.inflight.swap(rest);
}

// --------------------------------------------------------------------------- barrier, atomics
inline void syncthreads() {
  Thread* t = rt.current;
  t->state = Thread::kAtBarrier;
  to_scheduler(&t->ctx, false);
}

inline void wmma_trace(uint64_t v) {
  Thread& t = *rt.current;
  for (int i = 0; i < 8; ++i) t.wmma_trace = (t.wmma_trace ^ ((v >> (8 * i)) & 0xFF)) * 1099511628211ull;
  ++t.wmma_calls;
}

inline void fiber_entry() {
  fiber_started();
  try {
    rt.body();
  } catch (const std::exception& e) {
    fail(std::string("exception in a kernel thread: ") + e.what());
  }
  Thread* t = rt.current;
  if (!t->inflight.empty()) fail("thread ended with cp.async copies in flight (missing cp.async.wait_group)");
  t->state = Thread::kDone;
  to_scheduler(&t->ctx, true);
}

// Runs one CTA to completion: threads in the schedule's order until each is at the barrier or
// done, then the barrier opens.
inline void run_block(int nthreads, const dim3& block) {
  constexpr size_t kStack = 256 * 1024;
  if ((int)rt.stacks.size() < nthreads) rt.stacks.resize(nthreads);
  rt.threads.assign(nthreads, Thread());
  for (int i = 0; i < nthreads; ++i) {
    Thread& t = rt.threads[i];
    t.idx = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
    if (rt.stacks[i].size() < kStack) rt.stacks[i].resize(kStack);
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = rt.stacks[i].data();
    t.ctx.uc_stack.ss_size = kStack;
    t.ctx.uc_link = nullptr;
    makecontext(&t.ctx, fiber_entry, 0);
  }
  std::vector<int> order(nthreads);
  for (;;) {
    for (int i = 0; i < nthreads; ++i) order[i] = options.schedule == kReverse ? nthreads - 1 - i : i;
    if (options.schedule == kRandom) std::shuffle(order.begin(), order.end(), rt.rng);
    for (int i : order) {
      Thread& t = rt.threads[i];
      if (t.state != Thread::kRunnable) continue;
      rt.current = &t;
      threadIdx = t.idx;
      to_fiber(&rt.scheduler, &t.ctx, rt.stacks[i]);
    }
    int waiting = 0, done = 0;
    for (const Thread& t : rt.threads) (t.state == Thread::kDone ? done : waiting) += 1;
    if (waiting == 0) break;
    if (done > 0) {
      fail("barrier divergence: some threads of the CTA ended while others wait at __syncthreads()");
      break;  // (the waiting fibers are abandoned; their stacks are reused)
    }
    for (Thread& t : rt.threads) t.state = Thread::kRunnable;
  }
  // wmma is warp-collective: every lane of a warp must make the same calls.
  for (int w = 0; w * 32 < nthreads; ++w) {
    const Thread& lead = rt.threads[w * 32];
    for (int l = w * 32 + 1; l < std::min(nthreads, w * 32 + 32); ++l) {
      if (rt.threads[l].wmma_trace != lead.wmma_trace || rt.threads[l].wmma_calls != lead.wmma_calls) {
        threadIdx = rt.threads[l].idx;
        fail("wmma calls differ between the lanes of a warp (they are warp-collective)");
        break;
      }
    }
  }
  rt.current = nullptr;
}

inline void run_grid(const dim3& grid, const dim3& block, std::function<void()> body) {
  rt.errors.clear();
  rt.rng.seed(options.seed + 7919u * (unsigned)rt.launches++);
  rt.body = std::move(body);
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0)
    throw std::runtime_error("CUDA emulator: launch with an empty grid or block (invalid configuration)");
  if (grid.y > 65535 || grid.z > 65535)
    throw std::runtime_error("CUDA emulator: grid.y and grid.z are limited to 65535");
  const long nthreads = (long)block.x * block.y * block.z;
  if (nthreads > 1024) throw std::runtime_error("CUDA emulator: more than 1024 threads per block");
  gridDim = grid;
  blockDim = block;
  std::vector<uint3> blocks;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) blocks.push_back(make_uint3(x, y, z));
  if (options.schedule == kReverse) std::reverse(blocks.begin(), blocks.end());
  if (options.schedule == kRandom) std::shuffle(blocks.begin(), blocks.end(), rt.rng);
  for (const uint3& b : blocks) {
    blockIdx = b;
    run_block((int)nthreads, block);
  }
  rt.body = nullptr;
  if (!rt.errors.empty()) {
    std::ostringstream s;
    s << "CUDA emulator found " << rt.errors.size() << (rt.errors.size() >= 20 ? "+" : "")
      << " violation(s):";
    for (const auto& e : rt.errors) s << "\n  " << e;
    throw std::runtime_error(s.str());
  }
}

// The <<<grid, block>>> launch: every thread calls the kernel with its own copy of the arguments.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, A&&... args) {
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  run_grid(grid, block, [&] { std::apply(kernel, params); });
}

}  // namespace uf_emu

inline void __syncthreads() { uf_emu::syncthreads(); }
inline float atomicAdd(float* p, float v) {  // one OS thread runs every fiber: a plain add is atomic
  const float old = *p;
  *p = old + v;
  return old;
}
[[noreturn]] inline void __trap() { throw std::runtime_error("CUDA emulator: __trap()"); }
