// What the three CUTLASS sm_90a convolution units share: the argument rules we check before
// CUTLASS sees a problem (its host code asserts instead of returning on some of them), the
// translation to CUTLASS's ConvProblemShape, messages and the launch bookkeeping.
// Included only by csrc/cutlass_sm90/*.cu (CUTLASS headers, no torch).
#pragma once
// Device code without assert(): an assert's call to __assertfail inside the consumer warp group's
// wgmma region makes ptxas serialize every wgmma (C7510 "wgmma pipeline crossing function
// boundary"). Host asserts stay: CUTLASS's host code asserts where it cannot return an error
// (a TMA descriptor the driver refuses), and an abort is better than launching with it. This
// header comes first in every unit, before anything includes <assert.h>.
#if defined(__CUDA_ARCH__) && !defined(NDEBUG)
#define NDEBUG
#endif
#include <cuda_runtime_api.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/kernel_hardware_info.hpp"
#include "cutlass/conv/convnd_problem_shape.hpp"
#include "cutlass/conv/convolution.h"

#include "conv3x3_sm90.h"

namespace unet_fast {
namespace sm90 {
namespace detail {

inline int fail(char* why, int len, int status, const char* fmt, ...) {
  if (why && len > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, static_cast<size_t>(len), fmt, ap);
    va_end(ap);
  }
  return status;
}

inline int ok(char* why, int len) {
  if (why && len > 0) why[0] = '\0';
  return kOk;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Channel multiple of every tile here: the K-tile (64 channels of one filter tap) and the N-tile
// of wgrad (64 channels of one tap; 128 in the instantiation that runs only where c is a multiple
// of 128) never straddle two taps, and no tile is partly out of range
// along the channels. The U-Net's channel counts (64..1024) all are; its first layer (1 channel)
// stays on the hand-written kernels.
constexpr int kChannelMultiple = 64;
constexpr int64_t kInt32Max = 2147483647;

inline int check_shape(const Conv3x3Shape& s, char* why, int len) {
  if (s.n <= 0 || s.h <= 0 || s.w <= 0 || s.c <= 0 || s.k <= 0)
    return fail(why, len, kUnsupported, "sizes must be positive (n=%d h=%d w=%d c=%d k=%d)", s.n,
                s.h, s.w, s.c, s.k);
  if (s.pad != 0 && s.pad != 1) return fail(why, len, kUnsupported, "padding must be 0 or 1, got %d", s.pad);
  if (s.p() < 1 || s.q() < 1)
    return fail(why, len, kUnsupported, "a %dx%d input with padding %d has no 3x3 output", s.h, s.w, s.pad);
  if (s.c % kChannelMultiple || s.k % kChannelMultiple)
    return fail(why, len, kUnsupported,
                "input and output channels must be multiples of %d (got c=%d, k=%d)", kChannelMultiple,
                s.c, s.k);
  // GEMM extents and element offsets of dense tensors within int32 (CUTLASS's conv indexing)
  const int64_t in = int64_t(s.n) * s.h * s.w, out = int64_t(s.n) * s.p() * s.q();
  if (in * s.c > kInt32Max || out * s.k > kInt32Max || int64_t(s.k) * 9 * s.c > kInt32Max)
    return fail(why, len, kUnsupported,
                "the problem is too large for 32-bit indices (n*h*w*c = %lld); split the batch",
                static_cast<long long>(in * s.c));
  return kOk;
}

// An NHWC tensor of (n, h, w, c): channel stride 1, pixel strides 16-byte multiples that do not
// overlap (CUTLASS requires each stride at least the packed one). Strides of size-1 dimensions
// are meaningless in torch; they are replaced by the packed value in `t`.
inline int check_nhwc(Nhwc& t, const char* name, int n, int h, int w, int c, bool need_ptr,
                      char* why, int len) {
  if (w == 1) t.sw = c;
  if (h == 1) t.sh = int64_t(w) * t.sw;
  if (n == 1) t.sn = int64_t(h) * t.sh;
  if (need_ptr && t.ptr == nullptr) return fail(why, len, kUnsupported, "%s is null", name);
  if (!aligned16(t.ptr)) return fail(why, len, kUnsupported, "%s is not 16-byte aligned", name);
  if (t.sw < c || t.sh < int64_t(w) * t.sw || t.sn < int64_t(h) * t.sh)
    return fail(why, len, kUnsupported,
                "%s (%d, %d, %d, %d) has overlapping or non-NHWC strides (n %lld, h %lld, w %lld)",
                name, n, h, w, c, static_cast<long long>(t.sn), static_cast<long long>(t.sh),
                static_cast<long long>(t.sw));
  if (t.sw % 8 || t.sh % 8 || t.sn % 8)
    return fail(why, len, kUnsupported, "%s's pixel strides must be multiples of 8 elements (16 bytes)", name);
  return kOk;
}

// A dense (n, h, w, c) NHWC tensor (after check_nhwc's normalization).
inline bool packed(const Nhwc& t, int h, int w, int c) {
  return t.sw == c && t.sh == int64_t(w) * c && t.sn == int64_t(h) * w * c;
}

// One pixel stride for the whole tensor (a flat pixel index times sw): what the epilogue's aux
// load addresses.
inline bool uniform_pixels(const Nhwc& t, int h, int w) {
  return t.sh == int64_t(w) * t.sw && t.sn == int64_t(h) * t.sh;
}

// CUTLASS's problem description. act: the forward input x (fprop: A, dgrad: the output dx = C,
// wgrad: B); xformed: the forward output y (fprop: C, dgrad: A = g, wgrad: A = g). The filter is
// dense KRSC. Call only after the checks above (the constructor asserts on bad strides).
template <cutlass::conv::Operator Op>
cutlass::conv::ConvProblemShape<Op, 2> problem(const Conv3x3Shape& s, const Nhwc& act, const Nhwc& xformed) {
  using PS = cutlass::conv::ConvProblemShape<Op, 2>;
  typename PS::TensorExtent shape_act{}, shape_flt{};
  typename PS::TensorStride stride_act{}, stride_flt{}, stride_xf{};
  shape_act[0] = s.n; shape_act[1] = s.h; shape_act[2] = s.w; shape_act[3] = s.c;
  stride_act[0] = act.sn; stride_act[1] = act.sh; stride_act[2] = act.sw; stride_act[3] = 1;
  shape_flt[0] = s.k; shape_flt[1] = 3; shape_flt[2] = 3; shape_flt[3] = s.c;
  stride_flt[0] = 9 * int64_t(s.c); stride_flt[1] = 3 * int64_t(s.c); stride_flt[2] = s.c; stride_flt[3] = 1;
  stride_xf[0] = xformed.sn; stride_xf[1] = xformed.sh; stride_xf[2] = xformed.sw; stride_xf[3] = 1;
  typename PS::ShapePadding pad{};
  pad[0] = pad[1] = s.pad;
  typename PS::TraversalStride one{};
  one[0] = one[1] = 1;
  return PS(cutlass::conv::Mode::kCrossCorrelation, shape_act, stride_act, shape_flt, stride_flt,
            stride_xf, pad, pad, one, one, 1);
}

// The decoder's up-conv x (n, h, w, c) -> (n, 2h, 2w, k) as the strided 2x2 convolution whose
// passes give its gradients: activation g (n, 2h, 2w, k), filter (c, 2, 2, k) dense (the weight's
// channels_last order), output (n, h, w, c) (dgrad's dx / wgrad's x, strides `out`), no padding,
// stride 2.
inline int check_up_sizes(int n, int h, int w, int c, int k, char* why, int len) {
  if (n <= 0 || h <= 0 || w <= 0 || c <= 0 || k <= 0)
    return fail(why, len, kUnsupported, "sizes must be positive (n=%d h=%d w=%d c=%d k=%d)", n, h, w, c, k);
  // GEMM extents and element offsets of dense tensors within int32 (CUTLASS's conv indexing)
  const int64_t px = int64_t(n) * h * w;
  if (4 * px * k > kInt32Max || px * c > kInt32Max)
    return fail(why, len, kUnsupported,
                "the problem is too large for 32-bit indices (n*2h*2w*k = %lld); split the batch",
                static_cast<long long>(4 * px * k));
  return kOk;
}

// ... and both channel counts multiples of the 64-channel K step (up_fprop's K = c and N = k,
// up_dgrad's N = c and K = 4k; up_wgrad has its own tile rule).
inline int check_up_shape(int n, int h, int w, int c, int k, char* why, int len) {
  if (int r = check_up_sizes(n, h, w, c, k, why, len)) return r;
  if (c % kChannelMultiple || k % kChannelMultiple)
    return fail(why, len, kUnsupported, "input and output channels must be multiples of %d (got c=%d, k=%d)",
                kChannelMultiple, c, k);
  return kOk;
}

template <cutlass::conv::Operator Op>
cutlass::conv::ConvProblemShape<Op, 2> up2x2_problem(int n, int h, int w, int c, int k, const Nhwc& g,
                                                      const Nhwc& out) {
  using PS = cutlass::conv::ConvProblemShape<Op, 2>;
  typename PS::TensorExtent shape_act{}, shape_flt{};
  typename PS::TensorStride stride_act{}, stride_flt{}, stride_out{};
  shape_act[0] = n; shape_act[1] = 2 * h; shape_act[2] = 2 * w; shape_act[3] = k;
  stride_act[0] = g.sn; stride_act[1] = g.sh; stride_act[2] = g.sw; stride_act[3] = 1;
  shape_flt[0] = c; shape_flt[1] = 2; shape_flt[2] = 2; shape_flt[3] = k;
  stride_flt[0] = 4 * int64_t(k); stride_flt[1] = 2 * int64_t(k); stride_flt[2] = k; stride_flt[3] = 1;
  stride_out[0] = out.sn; stride_out[1] = out.sh; stride_out[2] = out.sw; stride_out[3] = 1;
  typename PS::ShapePadding pad{};
  typename PS::TraversalStride stride{}, dilation{};
  stride[0] = stride[1] = 2;
  dilation[0] = dilation[1] = 1;
  return PS(cutlass::conv::Mode::kCrossCorrelation, shape_act, stride_act, shape_flt, stride_flt, stride_out,
            pad, pad, stride, dilation, 1);
}

// Runs a ConvUniversalAdapter-style operator: can_implement, initialize (TMA descriptors), run.
template <class Op>
int run_adapter(const typename Op::Arguments& args, cudaStream_t stream, const char* what, char* why,
                int len) {
  if (Op::can_implement(args) != cutlass::Status::kSuccess)
    return fail(why, len, kUnsupported, "%s: CUTLASS's can_implement rejected the problem", what);
  if (Op::get_workspace_size(args) != 0)
    return fail(why, len, kCutlassError, "%s: unexpected workspace requirement", what);
  Op op;
  cutlass::Status st = op.initialize(args, nullptr, stream);
  if (st != cutlass::Status::kSuccess)
    return fail(why, len, kCutlassError, "%s: initialize failed (%s)", what, cutlassGetStatusString(st));
  st = op.run(stream);
  if (st != cutlass::Status::kSuccess)  // (the adapter has already read and cleared the CUDA error)
    return fail(why, len, kCudaError, "%s: the launch failed (%s)", what, cutlassGetStatusString(st));
  return ok(why, len);
}

// A unit built as a class template on its tile (fprop, dgrad): with members check(args, launch,
// why, len), arguments(args), the names kName and kEpilogue and the types Conv, Kernel, Mainloop,
// TileShape, ClusterShape. Host-only check: our rules, then CUTLASS's can_implement.
template <class Unit, class Args>
int check_unit(const Args& args, char* why, int len) {
  const char* what = Unit::kName;
  Args a = args;
  if (int r = Unit::check(a, false, why, len)) return r;
  if (Unit::Conv::can_implement(Unit::arguments(a)) != cutlass::Status::kSuccess)
    return fail(why, len, kUnsupported, "%s: CUTLASS's can_implement rejected the problem", what);
  return ok(why, len);
}

template <class Unit, class Args>
int run_unit(const Args& args, cudaStream_t stream, char* why, int len) {
  const char* what = Unit::kName;
  Args a = args;
  if (int r = Unit::check(a, true, why, len)) return r;
  return run_adapter<typename Unit::Conv>(Unit::arguments(a), stream, what, why, len);
}

// The element types the units are built for, by the names the configs and the Python side use.
template <class E> struct ElemName;
template <> struct ElemName<cutlass::bfloat16_t> { static constexpr const char* value = "bf16"; };
template <> struct ElemName<cutlass::half_t> { static constexpr const char* value = "f16"; };

// "<name> <bf16|f16>: tile MxNxK, cluster ..., <epilogue>": what an instantiation was built as.
template <class Unit>
const char* config() {
  using cute::size;
  static char text[256];
  snprintf(text, sizeof text,
           "%s %s: tile %dx%dx%d, cluster %dx%dx%d, %d stages, %d threads, %d B shared memory, %s",
           Unit::kName, ElemName<typename Unit::Element>::value, int(size<0>(typename Unit::TileShape{})), int(size<1>(typename Unit::TileShape{})),
           int(size<2>(typename Unit::TileShape{})), int(size<0>(typename Unit::ClusterShape{})),
           int(size<1>(typename Unit::ClusterShape{})), int(size<2>(typename Unit::ClusterShape{})),
           int(Unit::Mainloop::DispatchPolicy::Stages), int(Unit::Kernel::MaxThreadsPerBlock),
           int(Unit::Kernel::SharedStorageSize), Unit::kEpilogue);
  return text;
}

}  // namespace detail
}  // namespace sm90
}  // namespace unet_fast

// The three functions of one instantiation (declared in conv3x3_sm90.h): its host check, its
// launch and its config, `name`_`tag`_check/_run/_config from the unit's check_host / run. (The
// unit's type is the variadic tail: its template arguments have commas.)
#define UNET_FAST_SM90_DEFINE(name, Args, tag, ...)                                               \
  int name##_##tag##_check(const Args& a, char* why, int len) {                                  \
    return __VA_ARGS__::check_host(a, why, len);                                                  \
  }                                                                                               \
  int name##_##tag##_run(const Args& a, cudaStream_t stream, char* why, int len) {               \
    return __VA_ARGS__::run(a, stream, why, len);                                                 \
  }                                                                                               \
  const char* name##_##tag##_config() { return detail::config<__VA_ARGS__>(); }
// ... of a 3x3 pass (declared by UNET_FAST_SM90_UNIT): conv3x3_`pass`_`tag`_*
#define UNET_FAST_SM90_DEFINE_UNIT(pass, Args, tag, ...) \
  UNET_FAST_SM90_DEFINE(conv3x3_##pass, Args, tag, __VA_ARGS__)
