// The decoder's 2x2 stride-2 transposed convolution, bf16 or fp16 NHWC, on Hopper: per tap (i, j)
// a 1x1 forward convolution (CUTLASS's sm90 implicit-GEMM fprop mainloop, as conv3x3_fprop.cuh)
// of x with that tap's (k, 1, 1, c) filter, whose epilogue adds the bias and stores by TMA into
// the pixels (2h + i, 2w + j) of y: D is y with its pixel strides doubled and its base at the
// tap. Four launches, no scatter kernel; y may be the concat buffer's upper channel slice.
//   y[n, 2h + i, 2w + j, k] = sum over c of x[n, h, w, c] * W[c, k, i, j] + bias[k]
// GEMM per tap: M = n*h*w pixels of x, N = k, K = c (64 channels a step).
// Two instantiations per element type, as the 3x3 fprop's (a 2x1 cluster multicasting each weight
// tile): 128x128 tiles (up2x2_fprop_{bf16,f16}.cu), and 256x64 tiles for k = 64
// (up2x2_fprop_{bf16,f16}_n64.cu: the U-Net's last up-conv, whose 128-wide N tile would be half
// empty with only 2 K steps a tile to pay its fill and epilogue).
#pragma once
#include "conv3x3_fprop.cuh"  // (common.cuh first), FpropKernel, BiasAddOf

namespace unet_fast {
namespace sm90 {
namespace {

template <class Element_, int kTileM, int kTileN>
struct UpFpropUnit {
using Element = Element_;
static constexpr const char* kName = "up_fprop";
static constexpr const char* kEpilogue =
    "epilogue acc + bias, TMA store into every other pixel (one launch per tap)";
using TileShape = Shape<Int<kTileM>, Int<kTileN>, Shape<_64>>;
// acc + bias[n] (no activation: the up-conv has none), the 3x3 fprop's kernel otherwise.
using Types = FpropKernel<Element, TileShape, BiasAddOf<Element, TileShape, Element>>;
using ClusterShape = typename Types::ClusterShape;
using Epilogue = typename Types::Epilogue;
using Mainloop = typename Types::Mainloop;
using ProblemShape = typename Types::ProblemShape;
using Kernel = typename Types::Kernel;
using Conv = typename Types::Conv;

static int check(UpFpropArgs& a, bool launch, char* why, int len) {
  if (int r = detail::check_up_shape(a.n, a.h, a.w, a.c, a.k, why, len)) return r;
  if (int r = detail::check_nhwc(a.x, "x", a.n, a.h, a.w, a.c, launch, why, len)) return r;
  if (int r = detail::check_nhwc(a.y, "y", a.n, 2 * a.h, 2 * a.w, a.k, launch, why, len)) return r;
  if ((launch && a.weight == nullptr) || !detail::aligned16(a.weight))
    return detail::fail(why, len, kUnsupported, "the weight must be a 16-byte aligned (2, 2, k, c) buffer");
  if (!detail::aligned16(a.bias)) return detail::fail(why, len, kUnsupported, "bias is not 16-byte aligned");
  return kOk;
}

// Element offsets as addresses (a host check passes null tensors: no pointer arithmetic on null).
static const Element* at(const void* base, int64_t elements) {
  return reinterpret_cast<const Element*>(reinterpret_cast<uintptr_t>(base) + elements * sizeof(Element));
}

// Tap t = 2i + j: x (n, h, w, c) by the filter (k, 1, 1, c) at weight + t*k*c, into y's pixels
// (2p + i, 2q + j): the output (n, h, w, k) at y + i*sh + j*sw with strides (sn, 2 sh, 2 sw).
static typename Conv::Arguments arguments(const UpFpropArgs& a, int tap) {
  const int i = tap / 2, j = tap % 2;
  Nhwc out = a.y;
  out.sh = 2 * a.y.sh;
  out.sw = 2 * a.y.sw;
  typename ProblemShape::TensorExtent shape_act{}, shape_flt{};
  typename ProblemShape::TensorStride stride_act{}, stride_flt{}, stride_out{};
  shape_act[0] = a.n; shape_act[1] = a.h; shape_act[2] = a.w; shape_act[3] = a.c;
  stride_act[0] = a.x.sn; stride_act[1] = a.x.sh; stride_act[2] = a.x.sw; stride_act[3] = 1;
  shape_flt[0] = a.k; shape_flt[1] = 1; shape_flt[2] = 1; shape_flt[3] = a.c;
  stride_flt[0] = a.c; stride_flt[1] = a.c; stride_flt[2] = a.c; stride_flt[3] = 1;
  stride_out[0] = out.sn; stride_out[1] = out.sh; stride_out[2] = out.sw; stride_out[3] = 1;
  typename ProblemShape::ShapePadding pad{};
  typename ProblemShape::TraversalStride one{};
  one[0] = one[1] = 1;
  const ProblemShape ps(cutlass::conv::Mode::kCrossCorrelation, shape_act, stride_act, shape_flt, stride_flt,
                        stride_out, pad, pad, one, one, 1);
  using StrideD = typename Kernel::StrideD;  // ((q, p, n), k, batch)
  StrideD dD{};
  get<0>(dD) = make_stride(out.sw, out.sh, out.sn);
  typename Epilogue::FusionCallbacks::Arguments fusion_args{
      {}, {static_cast<const Element*>(a.bias), Element(0), {}}, {}};  // acc + bias
  Element* y = const_cast<Element*>(at(a.y.ptr, i * a.y.sh + j * a.y.sw));
  return typename Conv::Arguments{
      ps, {static_cast<const Element*>(a.x.ptr), at(a.weight, int64_t(tap) * a.k * a.c)},
      {fusion_args, nullptr, {}, y, dD}};
}

static int check_host(const UpFpropArgs& args, char* why, int len) {
  UpFpropArgs a = args;
  if (int r = check(a, false, why, len)) return r;
  for (int tap = 0; tap < 4; ++tap)
    if (Conv::can_implement(arguments(a, tap)) != cutlass::Status::kSuccess)
      return detail::fail(why, len, kUnsupported, "%s: CUTLASS's can_implement rejected tap %d", kName, tap);
  return detail::ok(why, len);
}

static int run(const UpFpropArgs& args, cudaStream_t stream, char* why, int len) {
  UpFpropArgs a = args;
  if (int r = check(a, true, why, len)) return r;
  for (int tap = 0; tap < 4; ++tap)
    if (int r = detail::run_adapter<Conv>(arguments(a, tap), stream, kName, why, len)) return r;
  return kOk;
}

};  // struct UpFpropUnit

}  // namespace
}  // namespace sm90
}  // namespace unet_fast
