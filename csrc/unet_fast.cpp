// The op schemas of unet_fast, defined once. Each device file registers its own kernels
// (csrc/cpu: TORCH_LIBRARY_IMPL(unet_fast, CPU), csrc/cuda: TORCH_LIBRARY_IMPL(unet_fast, CUDA));
// Python adds fake kernels and autograd (unet_fast/backends/cuda_ops.py).
#include <Python.h>
#include <torch/library.h>

// Importing unet_fast._C runs the static registrations below; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(unet_fast, m) {
  // cat([center_crop(skip, up.shape[-2:]), up], 1); output in up's memory format.
  m.def("crop_concat(Tensor skip, Tensor up) -> Tensor");
  // Gradient of the skip: the first skip_channels channels of grad, zero-padded back to the
  // skip's size (the up gradient is a view, taken in Python).
  m.def("_crop_concat_backward(Tensor grad, int skip_channels, int skip_h, int skip_w) -> Tensor");
}
