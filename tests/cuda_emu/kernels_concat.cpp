// The crop-concat kernels, on the emulator.
#include "cuda_emu.h"
#include "../../csrc/cuda/crop_concat_kernel.cu"
