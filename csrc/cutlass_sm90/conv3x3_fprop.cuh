// 3x3 convolution + bias + ReLU, bf16 or fp16 NHWC, on Hopper: CUTLASS's sm90 implicit-GEMM
// mainloop (TMA im2col loads of x, TMA loads of the KRSC weight, wgmma from shared memory,
// warp-specialized) with our epilogue as a visitor tree: y = relu(acc + bias[k]), stored by TMA.
// GEMM: M = n*p*q output pixels, N = k output channels, K = 9*c (tap-major, 64 channels per step).
// The unit as a template on its element type and output tile, instantiated once per translation
// unit: conv3x3_fprop_{bf16,f16}.cu (128x128) and conv3x3_fprop_{bf16,f16}_n64.cu (256x64, for
// k = 64).
#pragma once
#include "common.cuh"  // first: CUTLASS's base headers before the collectives

#include "cute/tensor.hpp"
#include "cutlass/conv/collective/collective_builder.hpp"
#include "cutlass/conv/device/conv_universal_adapter.hpp"
#include "cutlass/conv/dispatch_policy.hpp"
#include "cutlass/conv/kernel/conv_universal.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp"
#include "cutlass/epilogue/thread/activation.h"

namespace unet_fast {
namespace sm90 {
namespace {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

// The forward kernel with the epilogue visitor tree `Fusion` (the 3x3 fprop's bias + ReLU; the
// up-conv's bias alone, up2x2_fprop.cuh): 64-channel K steps (one tap per step), a 2x1 cluster
// sharing each weight tile between the two CTAs of neighbouring pixel tiles (TMA multicast: half
// the weight traffic), y stored by TMA.
template <class Element, class TileShape_, class Fusion>
struct FpropKernel {
using TileShape = TileShape_;
using ClusterShape = Shape<_2, _1, _1>;

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float,
    void, cutlass::layout::TensorNHWC, 8,     // no C operand
    Element, cutlass::layout::TensorNHWC, 8,  // y
    cutlass::epilogue::TmaWarpSpecialized, Fusion>::CollectiveOp;

using Mainloop = typename cutlass::conv::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kFprop,
    Element, cutlass::layout::TensorNHWC, 8, Element, cutlass::layout::TensorNHWC, 8, float,
    TileShape, ClusterShape,
    cutlass::conv::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;

using ProblemShape = cutlass::conv::ConvProblemShape<cutlass::conv::Operator::kFprop, 2>;
using Kernel = cutlass::conv::kernel::ConvUniversal<ProblemShape, Mainloop, Epilogue>;
using Conv = cutlass::conv::device::ConvUniversalAdapter<Kernel>;
};

// acc + bias[n] computed in float, as `Out`; a null bias reads as zeros.
template <class Element, class TileShape, class Out>
using BiasAddOf = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::plus, Out, float, kRound>, fusion::Sm90AccFetch,
                                  fusion::Sm90RowBroadcast<0, TileShape, Element, float, Stride<_0, _1, _0>>>;

template <class Element_, int kTileM, int kTileN>
struct FpropUnit {
using Element = Element_;
static constexpr const char* kName = "fprop";
static constexpr const char* kEpilogue = "epilogue relu(acc + bias) TMA store";
using TileShape = Shape<Int<kTileM>, Int<kTileN>, Shape<_64>>;

// relu(acc + bias[n]). NaN propagates through the ReLU like torch's.
using BiasRelu = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::epilogue::thread::ReLu, Element, float, kRound>,
                                 BiasAddOf<Element, TileShape, float>>;
using Types = FpropKernel<Element, TileShape, BiasRelu>;
using ClusterShape = typename Types::ClusterShape;
using Epilogue = typename Types::Epilogue;
using Mainloop = typename Types::Mainloop;
using Kernel = typename Types::Kernel;
using Conv = typename Types::Conv;

static int check(FpropArgs& a, bool launch, char* why, int len) {
  const Conv3x3Shape& s = a.s;
  if (int r = detail::check_shape(s, why, len)) return r;
  if (int r = detail::check_nhwc(a.x, "x", s.n, s.h, s.w, s.c, launch, why, len)) return r;
  if (int r = detail::check_nhwc(a.y, "y", s.n, s.p(), s.q(), s.k, launch, why, len)) return r;
  if ((launch && a.w == nullptr) || !detail::aligned16(a.w))
    return detail::fail(why, len, kUnsupported, "the weight must be a 16-byte aligned (k, 3, 3, c) buffer");
  if (!detail::aligned16(a.bias)) return detail::fail(why, len, kUnsupported, "bias is not 16-byte aligned");
  return kOk;
}

static typename Conv::Arguments arguments(const FpropArgs& a) {
  const auto ps = detail::problem<cutlass::conv::Operator::kFprop>(a.s, a.x, a.y);
  using StrideD = typename Kernel::StrideD;  // ((q, p, n), k, batch)
  StrideD dD{};
  get<0>(dD) = make_stride(a.y.sw, a.y.sh, a.y.sn);
  typename Epilogue::FusionCallbacks::Arguments fusion_args{
      {{}, {static_cast<const Element*>(a.bias), Element(0), {}}, {}},  // acc + bias
      {}};                                                                // relu
  return typename Conv::Arguments{
      ps,
      {static_cast<const Element*>(a.x.ptr), static_cast<const Element*>(a.w)},
      {fusion_args, nullptr, {}, static_cast<Element*>(const_cast<void*>(a.y.ptr)), dD}};
}

static int check_host(const FpropArgs& a, char* why, int len) {
  return detail::check_unit<FpropUnit>(a, why, len);
}
static int run(const FpropArgs& a, cudaStream_t stream, char* why, int len) {
  return detail::run_unit<FpropUnit>(a, stream, why, len);
}

};  // struct FpropUnit

}  // namespace
}  // namespace sm90
}  // namespace unet_fast
