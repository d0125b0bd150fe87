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

// Memory formats: every output keeps its input's (channels_last in, channels_last out).
// Backward ops take output_mask = which of (input, weight, bias) gradients to compute; the ones
// not asked for come back as empty (0-element) tensors.
TORCH_LIBRARY(unet_fast, m) {
  // relu(conv2d(x, weight, bias, padding)) with a (C_out, C_in, 3, 3) weight; padding 0 or 1.
  m.def("conv3x3_relu(Tensor x, Tensor weight, Tensor? bias, int padding) -> Tensor");
  // (y, max_pool2d(y, 2, 2)) with y = conv3x3_relu(...): the pooled map comes from the conv's
  // epilogue (no pool indices are kept).
  m.def("conv3x3_relu_pool(Tensor x, Tensor weight, Tensor? bias, int padding) -> (Tensor, Tensor)");
  // (grad_x, grad_weight, grad_bias) of conv3x3_relu from grad (of y) and y (the ReLU mask y > 0 is
  // applied while grad is read; y None: grad is dy * (y > 0) already, read as it is).
  // relu_input: x is a ReLU output and grad_x comes back multiplied by (x > 0) (as _conv1x1_backward).
  m.def("_conv3x3_relu_backward(Tensor grad, Tensor? y, Tensor x, Tensor weight, int padding, "
        "bool[3] output_mask, bool relu_input=False) -> (Tensor, Tensor, Tensor)");
  // max_pool2d(x, 2, 2) (floor: an odd last row/column is dropped).
  m.def("max_pool2x2(Tensor x) -> Tensor");
  // Gradient of x: grad routed to each window's argmax (recomputed from x) plus grad_skip, the
  // gradient x already has from elsewhere (the decoder's use of the skip; smaller than x, the
  // gradient of x's center crop, added where the crop lies), in one pass.
  m.def("_max_pool2x2_backward(Tensor grad, Tensor x, Tensor? grad_skip, bool relu_mask=False) -> Tensor");
  // ... and grad_x summed over (n, h, w) in fp32 (in x's dtype): with relu_mask, the bias gradient of
  // the conv whose ReLU output x is, formed in the same pass (no reduction pass of its own over
  // grad_x: the CUTLASS path's pooled convs, cuda_ops._ConvSkipAndPool).
  m.def("_max_pool2x2_backward_sum(Tensor grad, Tensor x, Tensor? grad_skip, bool relu_mask=False) "
        "-> (Tensor, Tensor)");
  // conv_transpose2d(x, weight, bias, stride=2) with a (C_in, C_out, 2, 2) weight.
  m.def("conv_transpose2x2(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("_conv_transpose2x2_backward(Tensor grad, Tensor x, Tensor weight, bool[3] output_mask, "
        "bool relu_input=False) -> (Tensor, Tensor, Tensor)");
  // crop_concat(skip, conv_transpose2x2(x, weight, bias)) in one buffer: the transposed conv writes
  // its output straight into the upper channels. Backward: _crop_concat_backward for the skip and
  // _conv_transpose2x2_backward on the upper channels' view.
  m.def("up_concat(Tensor skip, Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // conv2d(x, weight, bias) with a (C_out, C_in, 1, 1) weight.
  m.def("conv1x1(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("_conv1x1_backward(Tensor grad, Tensor x, Tensor weight, bool[3] output_mask, "
        "bool relu_input=False) "
        "-> (Tensor, Tensor, Tensor)");
  // cat([center_crop(skip, up.shape[-2:]), up], 1); output in up's memory format.
  m.def("crop_concat(Tensor skip, Tensor up) -> Tensor");
  // Gradient of the skip: the first skip_channels channels of grad, zero-padded back to the
  // skip's size (the up gradient is a view, taken in Python).
  m.def("_crop_concat_backward(Tensor grad, int skip_channels, int skip_h, int skip_w) -> Tensor");
}
