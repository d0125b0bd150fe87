// The weight-gradient kernels (split-K, fp32 atomics, dbias), on the emulator.
#include "cuda_emu.h"
#include "../../csrc/cuda/conv3x3_relu_wgrad_kernel.cu"
#include "../../csrc/cuda/pointwise_conv_wgrad_kernel.cu"
