// Weight gradient of a 3x3 convolution, bf16 or fp16 NHWC, on Hopper: CUTLASS's sm90
// implicit-GEMM wgrad mainloop (TMA loads of the output gradient g, TMA im2col loads of x, wgmma,
// warp-specialized) under a kernel of ours that splits the pixel sum over the grid's z dimension.
// GEMM: M = k output channels, N = 9*c (tap-major; an N tile is channels of one tap), K = n*p*q
// output pixels. Without a split the grid is M/128 x N/64 tiles (10 CTAs for the U-Net's
// 64-channel layers against 132 SMs), so every slice s of the pixels writes its own fp32
// partial[s]; the caller adds them in a fixed order (deterministic, no atomics).
// CUTLASS 4.2's sm90 conv kernels are non-persistent and have no split-K of their own.
// The up-conv's weight gradient (UpWgradArgs) is the same GEMM shape, a wgrad of a 2x2 stride-2
// convolution (activation g, output gradient x): the same kernels, another problem (check,
// arguments and the split bound are overloaded on the argument type).
// The unit as a template on its element type and tile, instantiated once per translation unit:
// conv3x3_wgrad_{bf16,f16}.cu (128x64), conv3x3_wgrad_{bf16,f16}_n128.cu (128x128, for
// c % 128 == 0) and conv3x3_wgrad_{bf16,f16}_m64.cu (64x64, for k = 64).
#pragma once
#include "common.cuh"  // first: CUTLASS's base headers before the collectives

#include "cute/tensor.hpp"
#include "cutlass/cluster_launch.hpp"
#include "cutlass/conv/collective/collective_builder.hpp"
#include "cutlass/conv/dispatch_policy.hpp"
#include "cutlass/conv/kernel/conv_universal.hpp"
#include "cutlass/device_kernel.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/pipeline/pipeline.hpp"

namespace unet_fast {
namespace sm90 {
namespace {

using namespace cute;

// At most this many splits (the device computes k_tiles * splits in 32 bits; k_tiles < 2^19 by
// check_shape's int32 limit on n*p*q*k).
constexpr int kWgradMaxSplits = 64;

// K tiles of 64 output pixels (the up-conv's: of its input x's pixels).
inline int64_t wgrad_k_tiles(const Conv3x3Shape& s) {
  return (int64_t(s.n) * s.p() * s.q() + 63) / 64;
}
inline int64_t wgrad_k_tiles(const UpWgradArgs& a) {
  return (int64_t(a.n) * a.h * a.w + 63) / 64;
}

// The split-K count of a wgrad GEMM of m x n_cols outputs in tile_m x tile_n tiles over k_tiles K
// steps (conv3x3_wgrad_splits gives the rule).
inline int wgrad_split_count(int64_t m, int64_t n_cols, int64_t tile_m, int64_t tile_n, int64_t k_tiles,
                             int num_sms) {
  constexpr int64_t kFlopPerDramByte = 200;  // H200 790 TFLOP/s / 4.3 TB/s, H100 989 / 3.35
  constexpr int64_t kStepPixels = 64;
  const int64_t sms = num_sms > 0 ? num_sms : 132;
  const int64_t m_tiles = (m + tile_m - 1) / tile_m;
  const int64_t n_tiles = ((n_cols + tile_n - 1) / tile_n + 1) / 2 * 2;  // (whole 1x2 clusters)
  const int64_t tiles = m_tiles * n_tiles;
  int64_t most = (8 * sms + tiles - 1) / tiles;
  if (most > kWgradMaxSplits) most = kWgradMaxSplits;
  if (most > k_tiles / 8) most = k_tiles / 8;
  int64_t best = 1, best_cost = -1;
  for (int64_t sp = 1; sp <= most; ++sp) {
    // the busiest SM's K steps
    const int64_t busiest = (tiles * sp + sms - 1) / sms * ((k_tiles + sp - 1) / sp + 1);
    const int64_t cost = busiest * kStepPixels * sms + (sp - 1) * tiles * 4 * kFlopPerDramByte;
    if (best_cost < 0 || cost < best_cost) {
      best = sp;
      best_cost = cost;
    }
  }
  return int(best);
}

template <class Element_, int kTileM, int kTileN>
struct WgradUnit {
using Element = Element_;
static constexpr const char* kName = "wgrad";
static constexpr const char* kEpilogue =
    "split-K over grid z into fp32 partial sums, register-direct epilogue";

// kTileM output channels x kTileN channels of one tap per tile, 64 pixels per K step (an N tile
// must not straddle two taps: the channel count is a multiple of kTileN). A 1x2 cluster
// multicasts each g tile to the two CTAs of neighbouring N tiles (half the g traffic).
using TileShape = Shape<Int<kTileM>, Shape<Int<kTileN>>, Shape<_64>>;
using ClusterShape = Shape<_1, _2, _1>;

// partial[s] as the GEMM's (M, N, L) = (k, (c, s, r), split) in a dense (split, k, 3, 3, c) buffer.
using StridePartial = Stride<int64_t, Stride<_1, int64_t, int64_t>, int64_t>;

// Register-direct epilogue (what CUTLASS's sm90 wgrad uses): D = acc in fp32, no C operand.
using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float,
    void, StridePartial, 4, float, StridePartial, 4,
    cutlass::epilogue::NoSmemWarpSpecialized>::CollectiveOp;

using Mainloop = typename cutlass::conv::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kWgrad,
    Element, cutlass::layout::TensorNHWC, 8, Element, cutlass::layout::TensorNHWC, 8, float,
    TileShape, ClusterShape,
    cutlass::conv::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;

using ProblemShape = cutlass::conv::ConvProblemShape<cutlass::conv::Operator::kWgrad, 2>;
// CUTLASS's kernel: its arguments, parameters (TMA descriptors), shared storage, host checks and
// grid; we replace only its device entry.
using Base = cutlass::conv::kernel::ConvUniversal<ProblemShape, Mainloop, Epilogue>;

static_assert(cute::is_same_v<typename Epilogue::LoadPipeline, cutlass::PipelineTransactionAsync<0>>,
              "the split kernel runs no epilogue loads: the epilogue must be register-direct");

// The device entry of Base with the K tiles of split blockIdx.z only: tiles
// [k_tiles * z / splits, k_tiles * (z + 1) / splits), never empty when splits <= k_tiles (the
// mainloop leaves the accumulators unset for an empty range), written to partial[z].
struct Kernel : Base {
  CUTLASS_DEVICE void operator()(typename Base::Params const& params, char* smem_buf) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap();  // wgmma and TMA need sm_90a; this unit is built for nothing else
#else
    using MainloopPipeline = typename Mainloop::MainloopPipeline;
    auto& shared = *reinterpret_cast<typename Base::SharedStorage*>(smem_buf);

    const int thread_idx = int(threadIdx.x);
    const int warp_idx = cutlass::canonical_warp_idx_sync();
    const int thread_in_group = thread_idx % cutlass::NumThreadsPerWarpGroup;
    const bool producer_group = cutlass::canonical_warp_group_idx() == 0;
    const bool load_warp = producer_group && warp_idx % cutlass::NumWarpsPerWarpGroup == 0;

    if (warp_idx == 0 && cute::elect_one_sync()) Mainloop::prefetch_tma_descriptors(params.mainloop);

    // One TMA producer warp, one consumer warp group (the mainloop's contract).
    typename MainloopPipeline::Params pipe_params;
    if (load_warp) pipe_params.role = MainloopPipeline::ThreadCategory::Producer;
    if (!producer_group) pipe_params.role = MainloopPipeline::ThreadCategory::Consumer;
    pipe_params.is_leader = thread_in_group == 0;
    pipe_params.num_consumers = cutlass::NumThreadsPerWarpGroup;
    pipe_params.transaction_bytes = params.mainloop.tma_transaction_bytes;
    MainloopPipeline pipeline(shared.pipelines.mainloop, pipe_params, ClusterShape{});
    // The register-direct epilogue's pipelines have no stages; they exist for its interface.
    typename Epilogue::LoadPipeline epi_load_pipeline(shared.pipelines.epi_load,
                                                      typename Epilogue::LoadPipeline::Params{});
    typename Epilogue::StorePipeline epi_store_pipeline{};

    // The pipeline's barriers must be initialized in every CTA of the cluster before any TMA
    // (multicast) arrives on them.
    if constexpr (size(ClusterShape{}) > 1) {
      cute::cluster_arrive_relaxed();
      cute::cluster_wait();
    } else {
      __syncthreads();
    }

    auto problem_mnkl = append<4>(params.problem_shape, Int<1>{});
    Mainloop mainloop;
    auto load_inputs = mainloop.load_init(problem_mnkl, params.mainloop);
    Tensor gA_mkl = get<0>(load_inputs);  // (BLK_M, BLK_K, m, k)
    Tensor gB_nkl = get<1>(load_inputs);  // (BLK_N, BLK_K, n, k)
    auto m_coord = idx2crd(int(blockIdx.x), shape<2>(gA_mkl));
    auto n_coord = idx2crd(int(blockIdx.y), shape<2>(gB_nkl));
    auto blk_coord = make_coord(m_coord, n_coord, _, Int<0>{});

    const int k_tiles = int(size<3>(gA_mkl));
    const int split = int(blockIdx.z), splits = int(gridDim.z);
    // (32-bit: k_tiles * splits < 2^31, checked on the host)
    const int k_begin = k_tiles * split / splits;
    const int k_count = k_tiles * (split + 1) / splits - k_begin;

    if (producer_group) {
      if (load_warp) {
        auto k_iter = cute::make_coord_iterator(idx2crd(k_begin, shape<3>(gA_mkl)), shape<3>(gA_mkl));
        auto state = cutlass::make_producer_start_state<MainloopPipeline>();
        mainloop.load(params.mainloop, pipeline, state, load_inputs, blk_coord, k_iter, k_count,
                      cutlass::canonical_lane_idx(), cute::block_rank_in_cluster(),
                      shared.tensors.mainloop);
        state.advance(k_count);
        mainloop.load_tail(pipeline, state);  // no CTA of the cluster leaves with TMA in flight
      }
    } else {
      typename Base::TiledMma tiled_mma;
      Tensor accum = partition_fragment_C(tiled_mma, take<0, 2>(typename Base::TileShape{}));
      typename Mainloop::PipelineState state;
      mainloop.mma(pipeline, state, accum, k_count, thread_in_group, shared.tensors.mainloop,
                   params.mainloop);
      mainloop.mma_tail(pipeline, state, k_count);

      // partial[split]: the epilogue's batch mode L is the split.
      Epilogue epilogue(params.epilogue, shared.tensors.epilogue);
      auto problem_split = make_shape(get<0>(problem_mnkl), get<1>(problem_mnkl), get<2>(problem_mnkl), splits);
      epilogue.store(epi_load_pipeline, typename Epilogue::LoadPipelineState{}, epi_store_pipeline,
                     typename Epilogue::StorePipelineState{}, problem_split, typename Base::TileShape{},
                     make_coord(m_coord, n_coord, _, split), accum, tiled_mma, thread_in_group,
                     shared.tensors.epilogue);
    }
#endif
  }
};

static int check(WgradArgs& a, bool launch, char* why, int len) {
  const Conv3x3Shape& s = a.s;
  if (int r = detail::check_shape(s, why, len)) return r;
  if (s.c % kTileN)  // an N tile holds channels of one tap only
    return detail::fail(why, len, kUnsupported, "the %dx%d wgrad tile needs channels c a multiple of %d, got %d",
                        kTileM, kTileN, kTileN, s.c);
  if (int r = detail::check_nhwc(a.g, "grad", s.n, s.p(), s.q(), s.k, launch, why, len)) return r;
  if (int r = detail::check_nhwc(a.x, "x", s.n, s.h, s.w, s.c, launch, why, len)) return r;
  if (!detail::packed(a.g, s.p(), s.q(), s.k))
    return detail::fail(why, len, kUnsupported, "grad must be a dense NHWC tensor (CUTLASS's sm90 wgrad)");
  return check_splits(a.splits, wgrad_k_tiles(s), a.partial, launch, why, len);
}

static int check_splits(int splits, int64_t k_tiles, float* partial, bool launch, char* why, int len) {
  if ((launch && partial == nullptr) || !detail::aligned16(partial))
    return detail::fail(why, len, kUnsupported, "the partial sums need a 16-byte aligned fp32 buffer");
  const int64_t most = k_tiles < kWgradMaxSplits ? k_tiles : kWgradMaxSplits;
  if (splits < 1 || splits > most)
    return detail::fail(why, len, kUnsupported, "splits must be in [1, %lld] (K tiles of 64 pixels), got %d",
                        static_cast<long long>(most), splits);
  return kOk;
}

static int check(UpWgradArgs& a, bool launch, char* why, int len) {
  if (int r = detail::check_up_sizes(a.n, a.h, a.w, a.c, a.k, why, len)) return r;
  if (a.c % detail::kChannelMultiple || a.k % kTileN)  // an N tile holds channels of one tap only
    return detail::fail(why, len, kUnsupported,
                        "the %dx%d up-conv wgrad tile needs input channels c a multiple of %d and "
                        "output channels k a multiple of %d (got c=%d, k=%d)",
                        kTileM, kTileN, detail::kChannelMultiple, kTileN, a.c, a.k);
  if (int r = detail::check_nhwc(a.g, "grad", a.n, 2 * a.h, 2 * a.w, a.k, launch, why, len)) return r;
  if (int r = detail::check_nhwc(a.x, "x", a.n, a.h, a.w, a.c, launch, why, len)) return r;
  if (!detail::packed(a.x, a.h, a.w, a.c))
    return detail::fail(why, len, kUnsupported, "x must be a dense NHWC tensor (CUTLASS's sm90 wgrad)");
  return check_splits(a.splits, wgrad_k_tiles(a), a.partial, launch, why, len);
}

// The up-conv's strided 2x2 convolution (detail::up2x2_problem) as a wgrad problem: activation
// g, output gradient x.
static typename Base::Arguments arguments(const UpWgradArgs& a) {
  const auto ps = detail::up2x2_problem<cutlass::conv::Operator::kWgrad>(a.n, a.h, a.w, a.c, a.k, a.g, a.x);
  // partial[s] as (M, N, L) = (c, (k, j, i), split) in a dense (split, c, 2, 2, k) buffer
  const int64_t k = a.k;
  StridePartial dD{};
  get<0>(dD) = 4 * k;
  get<1, 1>(dD) = k;
  get<1, 2>(dD) = 2 * k;
  get<2>(dD) = int64_t(a.c) * 4 * k;
  typename Epilogue::Arguments epi{};
  epi.ptr_D = a.partial;
  epi.dD = dD;
  return typename Base::Arguments{
      ps, {static_cast<const Element*>(a.x.ptr), static_cast<const Element*>(a.g.ptr)}, epi};
}

static typename Base::Arguments arguments(const WgradArgs& a) {
  const auto ps = detail::problem<cutlass::conv::Operator::kWgrad>(a.s, a.x, a.g);
  const int64_t c = a.s.c;
  StridePartial dD{};
  get<0>(dD) = 9 * c;
  get<1, 1>(dD) = c;
  get<1, 2>(dD) = 3 * c;
  get<2>(dD) = int64_t(a.s.k) * 9 * c;
  typename Epilogue::Arguments epi{};
  epi.ptr_D = a.partial;
  epi.dD = dD;
  return typename Base::Arguments{
      ps, {static_cast<const Element*>(a.g.ptr), static_cast<const Element*>(a.x.ptr)}, epi};
}

static int launch(const typename Base::Arguments& args, int splits, cudaStream_t stream, char* why, int len) {
  typename Base::Params params = Base::to_underlying_arguments(args, nullptr);
  dim3 grid = Base::get_grid_shape(params);
  grid.z = static_cast<unsigned>(splits);
  const dim3 block = Base::get_block_shape();
  const dim3 cluster(size<0>(ClusterShape{}), size<1>(ClusterShape{}), size<2>(ClusterShape{}));
  const int smem = Base::SharedStorageSize;
  const void* kernel = reinterpret_cast<const void*>(&cutlass::device_kernel<Kernel>);
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess)
    return detail::fail(why, len, kCudaError, "wgrad: cudaFuncSetAttribute: %s", cudaGetErrorString(e));
  void* kernel_params[] = {&params};
  const cutlass::Status st =
      cutlass::ClusterLauncher::launch(grid, cluster, block, smem, stream, kernel, kernel_params);
  e = cudaGetLastError();
  if (st != cutlass::Status::kSuccess || e != cudaSuccess)
    return detail::fail(why, len, kCudaError, "wgrad: the launch failed (%s; %s)",
                        cutlassGetStatusString(st), cudaGetErrorString(e));
  return detail::ok(why, len);
}

// Host-only: our rules, then CUTLASS's can_implement (Args: WgradArgs or UpWgradArgs).
template <class Args>
static int check_host(const Args& args, char* why, int len) {
  Args a = args;
  if (int r = check(a, false, why, len)) return r;
  if (Base::can_implement(arguments(a)) != true)
    return detail::fail(why, len, kUnsupported, "wgrad: CUTLASS's can_implement rejected the problem");
  return detail::ok(why, len);
}

template <class Args>
static int run(const Args& args, cudaStream_t stream, char* why, int len) {
  Args a = args;
  if (int r = check(a, true, why, len)) return r;
  const auto cargs = arguments(a);
  if (!Base::can_implement(cargs))
    return detail::fail(why, len, kUnsupported, "wgrad: CUTLASS's can_implement rejected the problem");
  return launch(cargs, a.splits, stream, why, len);
}

};  // struct WgradUnit

}  // namespace
}  // namespace sm90
}  // namespace unet_fast

// The up-conv wgrad's two functions of one instantiation (declared in conv3x3_sm90.h), in
// namespace unet_fast::sm90: the 3x3 wgrad unit `Unit` on an UpWgradArgs problem.
#define UNET_FAST_SM90_DEFINE_UP_WGRAD(tag, ...)                                                   \
  int up2x2_wgrad_##tag##_check(const UpWgradArgs& a, char* why, int len) {                        \
    return __VA_ARGS__::check_host(a, why, len);                                                   \
  }                                                                                                \
  int up2x2_wgrad_##tag##_run(const UpWgradArgs& a, cudaStream_t stream, char* why, int len) {     \
    return __VA_ARGS__::run(a, stream, why, len);                                                  \
  }
