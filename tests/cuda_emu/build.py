"""Builds the CPU emulator of unet_fast's CUDA kernels (see cuda_emu.h) as a torch extension.

The kernels in csrc/cuda compile with the host compiler against the CUDA toolkit's headers (no
GPU, no CUDA runtime); wmma comes from include/mma.h. UBSan's alignment check is on and fatal: a
misaligned uint4 access (a "misaligned address" fault on a GPU) ends the process with "runtime
error: ... misaligned address" on stderr rather than passing silently on x86.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ["ext.cpp", "kernels_conv.cpp", "kernels_wgrad.cpp", "kernels_pointwise.cpp",
           "kernels_pool.cpp", "kernels_concat.cpp", "selftest.cpp"]


def _build_module():
    """unet_fast/_build.py by path (stdlib only): importing unet_fast would load the package and its
    extension into this process, the ASan one included."""
    spec = importlib.util.spec_from_file_location("unet_fast_build_config", HERE.parents[1] / "unet_fast" / "_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cuda_include_dir() -> str | None:
    """The CUDA toolkit's include directory (cuda_fp16.h and friends), or None."""
    from torch.utils import cpp_extension

    for home in (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_fp16.h").exists():
            return str(Path(home) / "include")
    return None


def load(verbose: bool = False, asan: bool = False):
    """The emulator module; `asan`: the AddressSanitizer build (out-of-bounds reads and writes of
    every tensor the kernels touch), which must run in a process with libasan preloaded
    (asan_check.py)."""
    from torch.utils import cpp_extension

    inc = cuda_include_dir()
    if inc is None:
        raise RuntimeError("the CUDA emulator needs the CUDA toolkit headers (set CUDA_HOME)")
    # Strict aliasing stays on: GCC then reorders accesses that pun one type through another,
    # which is how the emulator found such a pun in copy_run (csrc/igemm_base.h).
    sanitize = "-fsanitize=address,alignment" if asan else "-fsanitize=alignment"
    flags = ["-O1" if asan else "-O2", "-std=c++20", sanitize, "-fno-sanitize-recover=alignment",
             "-fno-omit-frame-pointer", "-Wno-attributes"]
    name = "unet_fast_cuda_emu_asan" if asan else "unet_fast_cuda_emu"
    # the package's build lock: on torch <= 2.13 a build killed mid-way (a CI timeout) leaves a
    # FileBaton `lock` file that would make every later load wait forever; under the lock it is
    # known to be stale and removed
    with _build_module().build_lock(cpp_extension._get_build_directory(name, verbose), print):
        return cpp_extension.load(
            name=name,
            sources=[str(HERE / s) for s in SOURCES],
            extra_include_paths=[str(HERE / "include"), inc],
            extra_cflags=flags,
            # -Bsymbolic: the emulator's cudaGetLastError, not a CUDA runtime torch may have loaded
            extra_ldflags=[sanitize, "-Wl,-Bsymbolic"],
            verbose=verbose,
        )


def libasan() -> str | None:
    """The AddressSanitizer runtime of the compiler that builds the extension, or None."""
    import shutil
    import subprocess

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return None
    out = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return out if out and os.path.isabs(out) and os.path.exists(out) else None
