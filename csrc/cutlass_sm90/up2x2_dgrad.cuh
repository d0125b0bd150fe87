// Input gradient of the decoder's 2x2 stride-2 transposed convolution, bf16 or fp16 NHWC, on
// Hopper: a strided 2x2 *forward* convolution of the output gradient g (CUTLASS's sm90 implicit-GEMM
// fprop mainloop: TMA im2col loads of g at stride 2, TMA loads of the weight, wgmma,
// warp-specialized) with the 3x3 dgrad's epilogue and kernel recipe (conv3x3_dgrad.cuh,
// MaskEpilogue, MaskedGradKernel):
//   dx[n, h, w, c] = sum over (i, j, k) of g[n, 2h + i, 2w + j, k] * W[c, k, i, j], times (mask > 0)
// The weight's (c, k, 2, 2) parameter, channels_last in memory, is (c, 2, 2, k): the KRSC filter
// of this convolution with c output and k input channels, read in place.
// GEMM: M = n*h*w pixels of x, N = c, K = 4*k (one tap's 64 channels per step).
// One instantiation per element type (up2x2_dgrad_{bf16,f16}.cu): 128x128 tiles (c >= 128 in the
// U-Net), a 2x1 cluster multicasting each weight tile, as the 3x3 units.
#pragma once
#include "conv3x3_dgrad.cuh"  // (common.cuh first), MaskEpilogue, EpilogueTile, kLoadStages

namespace unet_fast {
namespace sm90 {
namespace {

template <class Element_>
struct UpDgradUnit {
using Element = Element_;
static constexpr const char* kName = "up_dgrad";
static constexpr const char* kEpilogue = "epilogue acc * (mask > 0) with a TMA aux load, TMA store";
using Types = MaskedGradKernel<Element, Shape<_128, _128, Shape<_64>>, cutlass::conv::Operator::kFprop>;
using TileShape = typename Types::TileShape;
using ClusterShape = typename Types::ClusterShape;
using Epilogue = typename Types::Epilogue;
using Mainloop = typename Types::Mainloop;
using ProblemShape = typename Types::ProblemShape;
using Kernel = typename Types::Kernel;
using Conv = typename Types::Conv;

static int check(UpDgradArgs& a, bool launch, char* why, int len) {
  if (int r = detail::check_up_shape(a.n, a.h, a.w, a.c, a.k, why, len)) return r;
  if (int r = detail::check_nhwc(a.g, "grad", a.n, 2 * a.h, 2 * a.w, a.k, launch, why, len)) return r;
  if (int r = detail::check_nhwc(a.dx, "grad_x", a.n, a.h, a.w, a.c, launch, why, len)) return r;
  if (a.mask.ptr != nullptr || !launch) {
    if (int r = detail::check_nhwc(a.mask, "mask", a.n, a.h, a.w, a.c, false, why, len)) return r;
    if (!detail::uniform_pixels(a.mask, a.h, a.w))
      return detail::fail(why, len, kUnsupported,
                          "the mask must have one pixel stride (a dense NHWC tensor or a channel slice of one)");
  }
  if ((launch && a.weight == nullptr) || !detail::aligned16(a.weight))
    return detail::fail(why, len, kUnsupported, "the weight must be a 16-byte aligned (c, 2, 2, k) buffer");
  return kOk;
}

static typename Conv::Arguments arguments(const UpDgradArgs& a) {
  using StrideD = typename Kernel::StrideD;  // ((w, h, n), c, batch)
  StrideD dD{};
  get<0>(dD) = make_stride(a.dx.sw, a.dx.sh, a.dx.sn);
  typename Epilogue::FusionCallbacks::Arguments fusion_args = MaskEpilogue<Element>::arguments(a.mask);
  return typename Conv::Arguments{
      detail::up2x2_problem<cutlass::conv::Operator::kFprop>(a.n, a.h, a.w, a.c, a.k, a.g, a.dx),
      {static_cast<const Element*>(a.g.ptr), static_cast<const Element*>(a.weight)},
      {fusion_args, nullptr, {}, static_cast<Element*>(const_cast<void*>(a.dx.ptr)), dD}};
}

static int check_host(const UpDgradArgs& a, char* why, int len) {
  return detail::check_unit<UpDgradUnit>(a, why, len);
}
static int run(const UpDgradArgs& a, cudaStream_t stream, char* why, int len) {
  return detail::run_unit<UpDgradUnit>(a, stream, why, len);
}

};  // struct UpDgradUnit

}  // namespace
}  // namespace sm90
}  // namespace unet_fast
