"""Builds the extension unet_fast._C from csrc/.

- CUDA extension (CPU + CUDA kernels) when a CUDA toolkit and a CUDA build of torch are present,
  or when UNET_FAST_FORCE_CUDA=1 (then a failure to build it is an error).
- C++-only extension (CPU kernels) when only a compiler is present.
- No extension, with a warning, when UNET_FAST_SKIP_EXTENSION=1 or nothing can build it: the
  pure-Python package still works (backend="cuda" then says how to build).
Respects MAX_JOBS and TORCH_CUDA_ARCH_LIST (default "8.0;9.0" when no GPU is visible).
"""
import glob
import os
import shutil
import sys
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_home():
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and os.path.exists(os.path.join(cand, "bin", "nvcc")):
            return cand
    nvcc = shutil.which("nvcc")
    if nvcc:  # a real toolkit's nvcc sits in <root>/bin next to <root>/lib64/libcudart.so
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if glob.glob(os.path.join(root, "lib*", "libcudart.so*")):
            return root
    return None


def _extra_cuda_includes():
    """Headers the CUDA build needs beyond the toolkit: the cuSPARSE/cuBLAS headers that ship in
    torch's nvidia-* wheels (some toolkits lack them), and CUTLASS if its wheel is installed."""
    inc = []
    try:
        import nvidia
        for base in nvidia.__path__:
            inc += sorted(glob.glob(os.path.join(base, "cu*", "include")))
    except ImportError:
        pass
    try:
        import cutlass_library
        src = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
        inc += [p for p in (os.path.join(src, "include"), os.path.join(src, "tools", "util", "include"))
                if os.path.isdir(p)]
    except ImportError:
        pass
    return inc


def extensions():
    if _flag("UNET_FAST_SKIP_EXTENSION"):
        print("unet_fast: UNET_FAST_SKIP_EXTENSION=1, building no extension (pure Python)")
        return [], None
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        warnings.warn("unet_fast: torch is not importable at build time; building no extension. "
                      "Install torch first and use `pip install --no-build-isolation`.")
        return [], None

    force_cuda = _flag("UNET_FAST_FORCE_CUDA")
    cuda_home = _cuda_home()
    torch_has_cuda = torch.version.cuda is not None
    use_cuda = force_cuda or (cuda_home is not None and torch_has_cuda)
    if force_cuda and (cuda_home is None or not torch_has_cuda):
        raise RuntimeError(
            "UNET_FAST_FORCE_CUDA=1 but "
            + ("no CUDA toolkit was found (set CUDA_HOME to the folder with bin/nvcc)"
               if cuda_home is None else f"torch {torch.__version__} is a CPU-only build; install a CUDA build"))

    cpp_sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx_flags = ["-O3"]  # the C++ standard is torch's choice (C++20 from torch 2.13 on)
    if use_cuda:
        os.environ["CUDA_HOME"] = cuda_home  # torch's own guess from PATH can be a wrapper script
        cpp_extension.CUDA_HOME = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            gpu = torch.cuda.is_available()
            if not gpu:
                os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        sources = cpp_sources + sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        includes = [os.path.join(ROOT, "csrc")] + _extra_cuda_includes()
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        if _flag("UNET_FAST_PTXAS_VERBOSE"):  # registers / shared memory / spills per kernel
            nvcc_flags.append("-Xptxas=-v")
        ext = cpp_extension.CUDAExtension(
            "unet_fast._C", sources, include_dirs=includes, py_limited_api=False,
            extra_compile_args={"cxx": cxx_flags + ["-DUNET_FAST_WITH_CUDA"], "nvcc": nvcc_flags})
        kind = ("CUDA + C++ CPU kernels (hand-written implicit GEMMs on nvcuda::wmma: HMMA for "
                "fp16/bf16/TF32; CUTLASS not needed)")
    else:
        ext = cpp_extension.CppExtension("unet_fast._C", cpp_sources,
                                         include_dirs=[os.path.join(ROOT, "csrc")],
                                         extra_compile_args={"cxx": cxx_flags})
        kind = "C++ CPU kernels only" + ("" if torch_has_cuda else " (torch is a CPU-only build)") + \
               ("" if cuda_home else " (no CUDA toolkit found)")
    print("unet_fast build configuration:")
    print(f"  extension      : {kind}")
    print(f"  torch          : {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"  CUDA_HOME      : {cuda_home if use_cuda else '-'}")
    print(f"  arch list      : {os.environ.get('TORCH_CUDA_ARCH_LIST', '(visible GPU)') if use_cuda else '-'}")
    print(f"  MAX_JOBS       : {os.environ.get('MAX_JOBS', '(all cores)')}")
    print(f"  sources        : {len(ext.sources)}")
    return [ext], cpp_extension


def main():
    exts, cpp_extension = extensions()
    cmdclass = {}
    if exts:
        base = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None
                                                         or _has_ninja_module())
        strict = _flag("UNET_FAST_FORCE_CUDA") or _flag("UNET_FAST_REQUIRE_EXTENSION")

        class BuildExt(base):
            def run(self):
                try:
                    super().run()
                except Exception as e:  # noqa: BLE001
                    if strict:
                        raise
                    warnings.warn(f"unet_fast: building the extension failed ({e}); installing the "
                                  "pure-Python package. backend='cuda' will say how to build it.")

        cmdclass["build_ext"] = BuildExt
    setup(ext_modules=exts, cmdclass=cmdclass)


def _has_ninja_module():
    try:
        import ninja  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__" or "setuptools" in sys.modules:
    main()
