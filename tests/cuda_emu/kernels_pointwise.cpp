// The 1x1 conv and 2x2 transposed conv kernels, on the emulator.
#include "cuda_emu.h"
#include "../../csrc/cuda/pointwise_conv_kernel.cu"
