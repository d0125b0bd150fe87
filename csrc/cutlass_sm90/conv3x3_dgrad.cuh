// Input gradient of a 3x3 convolution, bf16 or fp16 NHWC, on Hopper: CUTLASS's sm90
// implicit-GEMM dgrad mainloop (TMA im2col loads of the output gradient g, TMA loads of the KRSC
// weight read channel-major, wgmma, warp-specialized) with our epilogue as a visitor tree:
//   dx = acc * (mask > 0)
// where mask is this layer's input x when x is the previous layer's ReLU output: the gradient the
// previous layer needs comes out already masked (design.md: the ReLU mask once, where the gradient
// is formed), read by a TMA aux load. A null mask reads as 1 (plain dx).
// GEMM: M = n*h*w input pixels, N = c input channels, K = 9*k (64 output channels per step).
// The unit as a template on its element type and output tile, instantiated once per translation
// unit: conv3x3_dgrad_{bf16,f16}.cu (128x128) and conv3x3_dgrad_{bf16,f16}_n64.cu (256x64, for
// c = 64).
#pragma once
#include "common.cuh"  // first: CUTLASS's base headers before the collectives

#include "cute/tensor.hpp"
#include "cutlass/conv/collective/collective_builder.hpp"
#include "cutlass/conv/device/conv_universal_adapter.hpp"
#include "cutlass/conv/dispatch_policy.hpp"
#include "cutlass/conv/kernel/conv_universal.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp"

namespace unet_fast {
namespace sm90 {
namespace {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;
namespace epi_detail = cutlass::epilogue::collective::detail;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

// The epilogue works on 64x32 subtiles (what the builder picks for this tile on its own; fixed
// here because the mask load is declared with it).
using EpilogueTile = Shape<_64, _32>;
// Epilogue load stages: the builder gives min(subtiles, 4) = 4 to a 128x128 or 256x64 tile
// without a C operand; the mask load must cycle through the same number of buffers (checked
// below, per instantiation).
constexpr int kLoadStages = 4;

// threshold_backward's rule: the gradient is kept where mask > 0 or mask is NaN, else zero.
template <class T>
struct ReluGradMask {
  CUTLASS_HOST_DEVICE T operator()(T const& g, T const& mask) const { return mask <= T(0) ? T(0) : g; }
};
template <class T, int N>
struct ReluGradMask<cutlass::Array<T, N>> {
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& g,
                                                       cutlass::Array<T, N> const& mask) const {
    cutlass::Array<T, N> out;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) out[i] = mask[i] <= T(0) ? T(0) : g[i];
    return out;
  }
};

// The epilogue of an input gradient, dx = acc * (mask > 0), as a visitor tree over the
// accumulator and a TMA aux load of the mask (shared by the 3x3 dgrad and the up-conv's dgrad,
// up2x2_dgrad.cuh).
template <class Element>
struct MaskEpilogue {
// The mask as an (n*h*w, c) matrix with one pixel stride, loaded by TMA like a C operand.
using MaskStride = Stride<int64_t, _1, _0>;
using AuxLoad = fusion::Sm90AuxLoad<
    kLoadStages, EpilogueTile, Element, MaskStride,
    decltype(epi_detail::sm90_get_epilogue_smem_swizzle_layout_atom<MaskStride, Element, EpilogueTile>()),
    decltype(epi_detail::sm90_get_smem_load_op_for_source<MaskStride, Element, EpilogueTile>()),
    8, /*EnableNullptr=*/true>;

// Sm90AuxLoad builds its TMA descriptor from the problem shape the epilogue is given, which for a
// dgrad is the convolution's: M = (w, h, n) and a batch mode L = the traversal strides (v, u)
// (for the up-conv's dgrad, an fprop: M = (q, p, n), no batch).
// The mask is addressed as a flat (pixels, channels, 1) matrix, as the kernel's own epilogue
// coordinates are: flatten both before building the descriptor. A null mask (no masking) gets a
// placeholder address for the descriptor it never uses.
struct MaskLoad : AuxLoad {
  using AuxLoad::AuxLoad;
  template <class ProblemShape>
  static constexpr typename AuxLoad::Params to_underlying_arguments(ProblemShape const& problem_shape,
                                                                    typename AuxLoad::Arguments const& args,
                                                                    void* workspace) {
    auto [M, N, K, L] = append<4>(problem_shape, 1);
    const auto flat = make_shape(int(size(M)), int(N), K, int(cute::product(L)));
    typename AuxLoad::Arguments a = args;
    if (a.ptr_aux == nullptr) a.ptr_aux = reinterpret_cast<Element const*>(uintptr_t(1) << 12);
    typename AuxLoad::Params params = AuxLoad::to_underlying_arguments(flat, a, workspace);
    params.use_default = args.ptr_aux == nullptr;
    return params;
  }
};
using MaskedGrad = fusion::Sm90EVT<fusion::Sm90Compute<ReluGradMask, Element, float, kRound>,
                                   fusion::Sm90AccFetch, MaskLoad>;

// The fusion arguments: the mask (null: 1) with its pixel stride.
static typename MaskedGrad::Arguments arguments(const Nhwc& mask) {
  MaskStride dMask{};
  get<0>(dMask) = mask.sw;
  return {{},                                                            // acc
          {static_cast<const Element*>(mask.ptr), Element(1.0f), dMask},  // mask (null: 1)
          {}};                                                           // acc * (mask > 0)
}
};

// The kernel of an input gradient with that epilogue on the mainloop of conv operator `Op`
// (kDgrad: the 3x3 dgrad; kFprop: the up-conv's, a strided forward convolution, up2x2_dgrad.cuh):
// 64-channel K steps, a 2x1 cluster (weight tiles multicast), dx stored by TMA.
template <class Element, class TileShape_, cutlass::conv::Operator Op>
struct MaskedGradKernel {
using TileShape = TileShape_;
using ClusterShape = Shape<_2, _1, _1>;
using MaskedGrad = typename MaskEpilogue<Element>::MaskedGrad;

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape, EpilogueTile,
    float, float,
    void, cutlass::layout::TensorNHWC, 8,     // no C operand
    Element, cutlass::layout::TensorNHWC, 8,  // dx
    cutlass::epilogue::TmaWarpSpecialized, MaskedGrad>::CollectiveOp;
static_assert(Epilogue::DispatchPolicy::StagesC == kLoadStages, "the mask load must use the epilogue's load stages");

using Mainloop = typename cutlass::conv::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Op,
    Element, cutlass::layout::TensorNHWC, 8, Element, cutlass::layout::TensorNHWC, 8, float,
    TileShape, ClusterShape,
    cutlass::conv::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;

using ProblemShape = cutlass::conv::ConvProblemShape<Op, 2>;
using Kernel = cutlass::conv::kernel::ConvUniversal<ProblemShape, Mainloop, Epilogue>;
using Conv = cutlass::conv::device::ConvUniversalAdapter<Kernel>;
};

template <class Element_, int kTileM, int kTileN>
struct DgradUnit {
using Element = Element_;
static constexpr const char* kName = "dgrad";
static constexpr const char* kEpilogue = "epilogue acc * (mask > 0) with a TMA aux load, TMA store";
// As the forward: kTileM x kTileN tiles, 64-channel K steps, 2x1 cluster (weight tiles multicast).
using Types = MaskedGradKernel<Element, Shape<Int<kTileM>, Int<kTileN>, Shape<_64>>,
                               cutlass::conv::Operator::kDgrad>;
using TileShape = typename Types::TileShape;
using ClusterShape = typename Types::ClusterShape;
using Epilogue = typename Types::Epilogue;
using Mainloop = typename Types::Mainloop;
using Kernel = typename Types::Kernel;
using Conv = typename Types::Conv;

static int check(DgradArgs& a, bool launch, char* why, int len) {
  const Conv3x3Shape& s = a.s;
  if (int r = detail::check_shape(s, why, len)) return r;
  if (int r = detail::check_nhwc(a.g, "grad", s.n, s.p(), s.q(), s.k, launch, why, len)) return r;
  if (int r = detail::check_nhwc(a.dx, "grad_x", s.n, s.h, s.w, s.c, launch, why, len)) return r;
  if (a.mask.ptr != nullptr || !launch) {
    if (int r = detail::check_nhwc(a.mask, "mask", s.n, s.h, s.w, s.c, false, why, len)) return r;
    if (!detail::uniform_pixels(a.mask, s.h, s.w))
      return detail::fail(why, len, kUnsupported,
                          "the mask must have one pixel stride (a dense NHWC tensor or a channel slice of one)");
  }
  if ((launch && a.w == nullptr) || !detail::aligned16(a.w))
    return detail::fail(why, len, kUnsupported, "the weight must be a 16-byte aligned (k, 3, 3, c) buffer");
  return kOk;
}

static typename Conv::Arguments arguments(const DgradArgs& a) {
  const auto ps = detail::problem<cutlass::conv::Operator::kDgrad>(a.s, a.dx, a.g);
  using StrideD = typename Kernel::StrideD;  // ((w, h, n), c, batch)
  StrideD dD{};
  get<0>(dD) = make_stride(a.dx.sw, a.dx.sh, a.dx.sn);
  typename Epilogue::FusionCallbacks::Arguments fusion_args = MaskEpilogue<Element>::arguments(a.mask);
  return typename Conv::Arguments{
      ps,
      {static_cast<const Element*>(a.g.ptr), static_cast<const Element*>(a.w)},
      {fusion_args, nullptr, {}, static_cast<Element*>(const_cast<void*>(a.dx.ptr)), dD}};
}

static int check_host(const DgradArgs& a, char* why, int len) {
  return detail::check_unit<DgradUnit>(a, why, len);
}
static int run(const DgradArgs& a, cudaStream_t stream, char* why, int len) {
  return detail::run_unit<DgradUnit>(a, stream, why, len);
}

};  // struct DgradUnit

}  // namespace
}  // namespace sm90
}  // namespace unet_fast
