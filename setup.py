"""Builds the extension unet_fast._C from csrc/.

- CUDA extension (CPU + CUDA kernels) when a CUDA toolkit and a CUDA build of torch are present,
  or when UNET_FAST_FORCE_CUDA=1 (then a failure to build it is an error).
- C++-only extension (CPU kernels) when only a compiler is present.
- No extension, with a warning, when UNET_FAST_SKIP_EXTENSION=1 or nothing can build it: the
  pure-Python package still works (backend="cuda" then says how to build).
Respects MAX_JOBS and TORCH_CUDA_ARCH_LIST (default "8.0;9.0" when no GPU is visible).

CUTLASS sm_90a convolutions (csrc/cutlass_sm90/*.cu): compiled when the CUDA extension is built,
CUTLASS is found (CUTLASS_HOME, else the nvidia-cutlass wheel) and the arch list has 9.0; each
unit on its own nvcc command for sm_90a only (no torch headers, about 3.5 GB of memory each, so
parallel jobs are limited by memory as well as MAX_JOBS), then linked into _C.
UNET_FAST_SKIP_CUTLASS=1 leaves them out; UNET_FAST_REQUIRE_CUTLASS=1 makes their absence an error.
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
    torch's nvidia-* wheels (some toolkits lack them)."""
    inc = []
    try:
        import nvidia
        for base in nvidia.__path__:
            inc += sorted(glob.glob(os.path.join(base, "cu*", "include")))
    except ImportError:
        pass
    return inc


def _cutlass():
    """(include folders, where from) of CUTLASS 3.x/4.x headers: $CUTLASS_HOME (a CUTLASS checkout
    or install), else the nvidia-cutlass wheel; ([], why not) when neither is there."""
    home = os.environ.get("CUTLASS_HOME")
    if home:
        inc = [p for p in (os.path.join(home, "include"), os.path.join(home, "tools", "util", "include"))
               if os.path.isdir(p)]
        if os.path.isfile(os.path.join(home, "include", "cutlass", "cutlass.h")):
            return inc, f"CUTLASS_HOME={home}"
        return [], f"CUTLASS_HOME={home} has no include/cutlass/cutlass.h"
    try:
        import cutlass_library
    except ImportError:
        return [], "neither CUTLASS_HOME nor the nvidia-cutlass package (pip install nvidia-cutlass)"
    src = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
    inc = [p for p in (os.path.join(src, "include"), os.path.join(src, "tools", "util", "include"))
           if os.path.isdir(p)]
    if not os.path.isfile(os.path.join(src, "include", "cutlass", "cutlass.h")):
        return [], f"the nvidia-cutlass package at {src} has no C++ headers"
    try:
        from importlib.metadata import version
        ver = version("nvidia-cutlass")
    except Exception:  # noqa: BLE001
        ver = "?"
    return inc, f"nvidia-cutlass {ver} ({src})"


def _arch_list_has_sm90() -> bool:
    """Whether the CUDA targets include compute capability 9.0 (TORCH_CUDA_ARCH_LIST, else the
    visible GPUs, as torch decides)."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs:
        return any(a.strip().split("+")[0].rstrip("a") in ("9.0", "90")
                   for a in archs.replace(",", ";").replace(" ", ";").split(";") if a.strip())
    try:
        import torch
        return any(torch.cuda.get_device_capability(i) == (9, 0) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001
        return False


CUTLASS_SOURCES = sorted(glob.glob(os.path.join("csrc", "cutlass_sm90", "*.cu")))
CUTLASS_DEPS = sorted(glob.glob(os.path.join("csrc", "cutlass_sm90", "*.h"))
                      + glob.glob(os.path.join("csrc", "cutlass_sm90", "*.cuh")))
CUTLASS_MEM_PER_JOB = 4 * 1024**3  # measured: about 3.5 GB peak per unit (nvcc + cicc + ptxas)


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _compile_cutlass(cuda_home, includes, build_dir):
    """nvcc each unit of CUTLASS_SOURCES to an object for sm_90a only, at most min(MAX_JOBS,
    available memory / 4 GB) at a time; objects newer than their sources are kept. Returns the
    object paths; raises on a failed compile (with its log)."""
    import subprocess
    import time
    os.makedirs(build_dir, exist_ok=True)
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    flags = ["-std=c++17", "-O3", "--expt-relaxed-constexpr", "-gencode=arch=compute_90a,code=sm_90a",
             "-Xcompiler=-fPIC", "-I" + os.path.join(ROOT, "csrc", "cutlass_sm90")]
    flags += ["-I" + p for p in includes]
    if _flag("UNET_FAST_PTXAS_VERBOSE"):
        flags.append("-Xptxas=-v")
    newest_dep = max([os.path.getmtime(p) for p in CUTLASS_DEPS] + [0.0])
    objects, todo = [], []
    for src in CUTLASS_SOURCES:
        obj = os.path.join(build_dir, os.path.splitext(os.path.basename(src))[0] + ".o")
        objects.append(obj)
        cmd = " ".join([nvcc] + flags + ["-c", src])
        try:
            with open(obj + ".cmd") as f:
                same_cmd = f.read() == cmd
        except OSError:
            same_cmd = False
        if not (same_cmd and os.path.exists(obj)
                and os.path.getmtime(obj) > max(newest_dep, os.path.getmtime(src))):
            todo.append((src, obj))
    jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)
    mem = _mem_available()
    if mem is not None:
        jobs = min(jobs, max(1, mem // CUTLASS_MEM_PER_JOB))
    print(f"unet_fast: compiling {len(todo)} of {len(CUTLASS_SOURCES)} CUTLASS units for sm_90a, "
          f"{jobs} at a time")
    running = []
    while todo or running:
        while todo and len(running) < jobs:
            src, obj = todo.pop(0)
            log = obj + ".log"
            cmd = [nvcc] + flags + ["-c", src, "-o", obj + ".tmp"]
            running.append((src, obj, log, time.time(), subprocess.Popen(
                cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)))
        time.sleep(1)
        for item in list(running):
            src, obj, log, t0, proc = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                for _, _, _, _, other in running:
                    other.kill()
                with open(log) as f:
                    raise RuntimeError(f"nvcc failed on {src} (log {log}):\n{f.read()[-6000:]}")
            os.replace(obj + ".tmp", obj)
            with open(obj + ".cmd", "w") as f:  # rebuilt when the flags change
                f.write(" ".join([nvcc] + flags + ["-c", src]))
            print(f"unet_fast:   {src}: {time.time() - t0:.0f} s")
    return objects


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
        cutlass_inc, cutlass_from = _cutlass()
        if _flag("UNET_FAST_SKIP_CUTLASS"):
            cutlass_why = "UNET_FAST_SKIP_CUTLASS=1"
        elif not cutlass_inc:
            cutlass_why = cutlass_from
        elif not _arch_list_has_sm90():
            cutlass_why = f"the arch list ({os.environ.get('TORCH_CUDA_ARCH_LIST', 'visible GPUs')}) has no 9.0"
        else:
            cutlass_why = None
        cxx_defs = ["-DUNET_FAST_WITH_CUDA"]
        if cutlass_why is None:
            cxx_defs.append("-DUNET_FAST_WITH_CUTLASS_SM90")
            cutlass_state = f"sm_90a convolutions, headers from {cutlass_from}"
        else:
            if _flag("UNET_FAST_REQUIRE_CUTLASS"):
                raise RuntimeError(f"UNET_FAST_REQUIRE_CUTLASS=1 but the CUTLASS units cannot be built: {cutlass_why}")
            warnings.warn(f"unet_fast: building without the CUTLASS sm_90a convolutions ({cutlass_why}); "
                          "backend='cuda' runs the hand-written kernels on every GPU")
            cutlass_state = f"not built ({cutlass_why})"
        ext = cpp_extension.CUDAExtension(
            "unet_fast._C", sources, include_dirs=includes, py_limited_api=False,
            extra_compile_args={"cxx": cxx_flags + cxx_defs, "nvcc": nvcc_flags})
        ext.cutlass = (cuda_home, cutlass_inc) if cutlass_why is None else None
        kind = ("CUDA + C++ CPU kernels (hand-written implicit GEMMs on nvcuda::wmma: HMMA for "
                "fp16/bf16/TF32" + ("; CUTLASS sm_90a for bf16 3x3 convolutions)" if cutlass_why is None else ")"))
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
    print(f"  CUTLASS        : {cutlass_state if use_cuda else '-'}")
    print(f"  MAX_JOBS       : {os.environ.get('MAX_JOBS', '(all cores)')}")
    print(f"  sources        : {len(ext.sources)}")
    return [ext], cpp_extension


def main():
    exts, cpp_extension = extensions()
    cmdclass = {}
    if exts:
        base = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None
                                                         or _has_ninja_module())
        strict = (_flag("UNET_FAST_FORCE_CUDA") or _flag("UNET_FAST_REQUIRE_EXTENSION")
                  or _flag("UNET_FAST_REQUIRE_CUTLASS"))

        class BuildExt(base):
            def run(self):
                try:
                    for ext in self.extensions:  # CUTLASS units first: their own nvcc flags
                        if getattr(ext, "cutlass", None):
                            self._cutlass_objects(ext)
                    super().run()
                except Exception as e:  # noqa: BLE001
                    if strict:
                        raise
                    warnings.warn(f"unet_fast: building the extension failed ({e}); installing the "
                                  "pure-Python package. backend='cuda' will say how to build it.")

            def _cutlass_objects(self, ext):
                cuda_home, inc = ext.cutlass
                try:
                    objs = _compile_cutlass(cuda_home, inc, os.path.join(self.build_temp, "cutlass_sm90"))
                except Exception as e:  # noqa: BLE001
                    if _flag("UNET_FAST_REQUIRE_CUTLASS"):
                        raise
                    warnings.warn(f"unet_fast: the CUTLASS sm_90a units failed to build ({e}); building "
                                  "the extension without them")
                    ext.extra_compile_args["cxx"].remove("-DUNET_FAST_WITH_CUTLASS_SM90")
                    return
                ext.extra_objects = [o for o in ext.extra_objects if o not in objs] + objs
                ext.depends = [d for d in ext.depends if d not in objs] + objs  # relink when they change

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
