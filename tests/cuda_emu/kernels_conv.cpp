// The conv3x3 forward (plain and pool epilogue) and input-gradient kernels, on the emulator.
#include "cuda_emu.h"
#include "../../csrc/cuda/conv3x3_relu_kernel.cu"
#include "../../csrc/cuda/conv3x3_relu_dgrad_kernel.cu"
