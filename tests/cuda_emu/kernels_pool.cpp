// The max-pool kernels, on the emulator.
#include "cuda_emu.h"
#include "../../csrc/cuda/max_pool2x2_kernel.cu"
