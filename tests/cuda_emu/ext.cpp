// The CUDA kernels' torch glue (csrc/cuda/glue.h) over CPU tensors, with the kernels running on
// the CPU emulator of the CUDA execution model: a Python module for tests/test_cuda_emulated.py.
#include <torch/extension.h>  // (before the emulator, which makes the kernels see __CUDA_ARCH__)

#include "cuda_emu.h"

#include "../../csrc/cuda/glue.h"
#include "../../csrc/cuda/thin.cuh"

// The kernels' runtime calls. Launch errors are raised by the emulator itself.
extern "C" cudaError_t CUDARTAPI cudaGetLastError(void) { return cudaSuccess; }
// The pool and crop kernels size their grids to one wave: as on a GPU for a kernel of at most 32
// registers, 2048 threads per SM (configure's num_sms sets the SM count).
extern "C" cudaError_t CUDARTAPI cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    int* num_blocks, const void*, int block_size, size_t, unsigned int) {
  *num_blocks = 2048 / block_size;
  return cudaSuccess;
}

std::vector<float> run_selftest(const std::string& name);  // selftest.cpp

namespace {

int g_num_sms = 132;  // an H100 SXM

struct EmuDevice {
  static void check(const at::Tensor& t, const char* name) {
    unet_fast::check_device_type(t, name, at::kCPU, "a CPU tensor for the CUDA emulator");
  }
  struct Guard {
    explicit Guard(c10::Device) {}
  };
  static cudaStream_t stream() { return nullptr; }
  static int num_sms() { return g_num_sms; }
  static void check_launch(cudaError_t err) { TORCH_CHECK(err == cudaSuccess, "launch error ", (int)err); }
};

using G = unet_fast::CudaGlue<EmuDevice>;

void configure(int schedule, unsigned seed, int num_sms) {
  TORCH_CHECK(schedule >= 0 && schedule <= 2, "schedule must be 0 (forward), 1 (reverse) or 2 (random)");
  uf_emu::options.schedule = schedule;
  uf_emu::options.seed = seed;
  g_num_sms = num_sms;
}

// csrc/cuda/thin.cuh's pixel decode: (n / d, n % d) by ThinDiv's multiply and shift, for each n
// (an int64 tensor of values in [0, 2^31)).
at::Tensor thin_divmod(const at::Tensor& n, int64_t d) {
  TORCH_CHECK(n.scalar_type() == at::kLong && n.dim() == 1, "n: a 1-D int64 tensor");
  TORCH_CHECK(d >= 1 && d < (int64_t(1) << 31), "d: 1 <= d < 2^31");
  const unet_fast::ThinDiv div((int)d);
  at::Tensor out = at::empty({n.size(0), 2}, n.options());
  auto ni = n.accessor<int64_t, 1>();
  auto o = out.accessor<int64_t, 2>();
  for (int64_t i = 0; i < n.size(0); ++i) {
    const uint32_t q = div.div((uint32_t)ni[i]);
    o[i][0] = q;
    o[i][1] = ni[i] - (int64_t)q * d;
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("configure", &configure, "thread/CTA order between barriers, its seed, and the SM count",
        py::arg("schedule") = 0, py::arg("seed") = 0, py::arg("num_sms") = 132);
  m.def("selftest", &run_selftest, "runs one deliberately broken (or correct) kernel of selftest.cpp");
  m.def("thin_divmod", &thin_divmod, "thin.cuh's ThinDiv over an int64 tensor of dividends");
  m.def("crop_concat", &G::crop_concat);
  m.def("crop_concat_backward", &G::crop_concat_backward);
  m.def("conv3x3_relu", &G::conv3x3_relu);
  m.def("conv3x3_relu_pool", &G::conv3x3_relu_pool);
  m.def("conv3x3_relu_backward", &G::conv3x3_relu_backward, py::arg("grad"), py::arg("y"),
        py::arg("x"), py::arg("weight"), py::arg("padding"), py::arg("output_mask"),
        py::arg("relu_input") = false);
  m.def("max_pool2x2", &G::max_pool2x2);
  m.def("max_pool2x2_backward", &G::max_pool2x2_backward, py::arg("grad"), py::arg("x"),
        py::arg("grad_skip"), py::arg("relu_mask") = false);
  m.def("max_pool2x2_backward_sum", &G::max_pool2x2_backward_sum, py::arg("grad"), py::arg("x"),
        py::arg("grad_skip"), py::arg("relu_mask") = false);
  m.def("conv_transpose2x2", &G::conv_transpose2x2);
  m.def("conv_transpose2x2_backward", &G::conv_transpose2x2_backward, py::arg("grad"), py::arg("x"),
        py::arg("weight"), py::arg("output_mask"), py::arg("relu_input") = false);
  m.def("up_concat", &G::up_concat);
  m.def("conv1x1", &G::conv1x1);
  m.def("conv1x1_backward", &G::conv1x1_backward, py::arg("grad"), py::arg("x"), py::arg("weight"),
        py::arg("output_mask"), py::arg("relu_input") = false);
}
