"""Installs unet_fast; builds the extension unet_fast._C from csrc/ only when asked.

- Default (`pip install .`): no extension is compiled, the pure-Python package installs in seconds
  (the Triton backend and the reference ops need nothing compiled). The extension is then built
  against the installed torch on first use of backend="cuda" or by `unet-fast build-ext`
  (unet_fast/_build.py), from the sources this wheel ships (unet_fast/csrc).
- UNET_FAST_BUILD_EXT=1: build _C now (`pip install --no-build-isolation ...`, so that it is built
  against the installed torch): CUDA + C++ kernels when a CUDA toolkit and a CUDA build of torch
  are present, else the C++ CPU kernels only (said plainly, and recorded).
- UNET_FAST_FORCE_CUDA=1: build _C with its CUDA kernels; anything less is an error (implies
  UNET_FAST_BUILD_EXT=1). UNET_FAST_REQUIRE_EXTENSION=1: a failed build is an error.
- UNET_FAST_SKIP_EXTENSION=1: no extension, whatever else is set.
Sources, flags and decisions come from unet_fast/_build.py, which the first-use build uses too.
A built extension gets a record next to it (`_C.<tag>.build.json`: the torch it was built
against, CUDA kernels or not and why), and the wheel's metadata then pins that torch.
Respects MAX_JOBS and TORCH_CUDA_ARCH_LIST (default "8.0;9.0" when no GPU is visible).
CUTLASS sm_90a convolutions (csrc/cutlass_sm90/*.cu): compiled when the CUDA extension is built,
CUTLASS is found (CUTLASS_HOME, else the nvidia-cutlass wheel) and the arch list has 9.0; each
unit on its own nvcc command for sm_90a only (no torch headers, about 3.5 GB of memory each, so
parallel jobs are limited by memory as well as MAX_JOBS), then linked into _C.
UNET_FAST_SKIP_CUTLASS=1 leaves them out; UNET_FAST_REQUIRE_CUTLASS=1 makes their absence an error.
"""
import glob
import importlib.util
import os
import shutil
import sys
import time

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS = ["torch>=2.11", "numpy", "scipy", "pillow", "tqdm", "matplotlib"]


def _load_build_module():
    """unet_fast/_build.py by path: the package itself is not importable while it is built."""
    spec = importlib.util.spec_from_file_location("unet_fast_build_config",
                                                  os.path.join(ROOT, "unet_fast", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_build = _load_build_module()


def _say(msg):
    """To stderr, which pip shows with -v (and on failure) and a direct setup.py call always."""
    print(f"unet_fast: {msg}", file=sys.stderr, flush=True)


def _torch_info():
    try:
        import torch
        return torch, torch.__version__, torch.version.cuda
    except ImportError:
        return None, None, None


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


CUTLASS_DIR = os.path.join(ROOT, "csrc", "cutlass_sm90")
CUTLASS_SOURCES = sorted(glob.glob(os.path.join(CUTLASS_DIR, "*.cu")))
CUTLASS_DEPS = sorted(glob.glob(os.path.join(CUTLASS_DIR, "*.h"))
                      + glob.glob(os.path.join(CUTLASS_DIR, "*.cuh")))
CUTLASS_MEM_PER_JOB = 4 * 1024**3  # measured: about 3.5 GB peak per unit (nvcc + cicc + ptxas)
# The units' objects live in the source tree's build/ (git-ignored), not in setuptools' build_temp:
# pip's editable install builds in a fresh temporary folder each time, which recompiled all of
# them (minutes) after any change to the extension.
CUTLASS_OBJ_DIR = os.path.join(ROOT, "build", "cutlass_sm90")


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
    available memory / 4 GB) at a time; objects newer than their sources and headers, built by the
    same command, are kept. Returns the
    object paths; raises on a failed compile (with its log)."""
    import subprocess
    import time
    os.makedirs(build_dir, exist_ok=True)
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    flags = ["-std=c++17", "-O3", "--expt-relaxed-constexpr", "-gencode=arch=compute_90a,code=sm_90a",
             "-Xcompiler=-fPIC", "-I" + os.path.join(ROOT, "csrc", "cutlass_sm90")]
    flags += ["-I" + p for p in includes]
    if _build.flag("UNET_FAST_PTXAS_VERBOSE"):
        flags.append("-Xptxas=-v")
    # (CUTLASS's own headers count through its version header: a new wheel at the same path)
    versions = [os.path.join(p, "cutlass", "version.h") for p in includes]
    newest_dep = max([os.path.getmtime(p) for p in CUTLASS_DEPS + versions if os.path.isfile(p)]
                     + [0.0])
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



def extensions(env=None):
    """([Extension], cpp_extension module or None, Plan): what this install builds, from
    _build.install_plan and _build.extension_args."""
    env = os.environ if env is None else env
    torch, torch_version, torch_cuda = _torch_info()
    toolkit = _build.cuda_home(env) if torch is not None else None
    plan = _build.install_plan(env, torch_version, torch_cuda, toolkit)
    if plan.error:
        raise RuntimeError(f"unet_fast: {plan.error}")
    if not plan.build:
        _say(plan.why)
        return [], None, plan
    from torch.utils import cpp_extension

    csrc = os.path.join(ROOT, "csrc")
    args = _build.extension_args(csrc, plan.cuda, env)
    rel = [os.path.relpath(s, ROOT) for s in args["sources"]]
    if plan.cuda:
        os.environ["CUDA_HOME"] = plan.cuda_home  # torch's own guess from PATH can be a wrapper script
        cpp_extension.CUDA_HOME = plan.cuda_home
        arch = _build.arch_list(env, gpu_visible=torch.cuda.is_available())
        if arch:
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        cutlass_inc, cutlass_from = _cutlass()
        if _build.flag("UNET_FAST_SKIP_CUTLASS", env):
            cutlass_why = "UNET_FAST_SKIP_CUTLASS=1"
        elif not cutlass_inc:
            cutlass_why = cutlass_from
        elif not _arch_list_has_sm90():
            cutlass_why = f"the arch list ({os.environ.get('TORCH_CUDA_ARCH_LIST', 'visible GPUs')}) has no 9.0"
        else:
            cutlass_why = None
        cxx = list(args["cxx"])
        if cutlass_why is None:
            cxx.append("-DUNET_FAST_WITH_CUTLASS_SM90")
            cutlass_state = f"sm_90a convolutions, headers from {cutlass_from}"
        else:
            if _build.flag("UNET_FAST_REQUIRE_CUTLASS", env):
                raise RuntimeError("UNET_FAST_REQUIRE_CUTLASS=1 but the CUTLASS units cannot be "
                                   f"built: {cutlass_why}")
            _say(f"WARNING: building without the CUTLASS sm_90a convolutions ({cutlass_why}); "
                 "backend='cuda' runs the hand-written kernels on every GPU")
            cutlass_state = f"not built ({cutlass_why})"
        ext = cpp_extension.CUDAExtension(
            _build.EXT_NAME, rel, include_dirs=args["include_dirs"], py_limited_api=False,
            extra_compile_args={"cxx": cxx, "nvcc": args["nvcc"]})
        ext.cutlass = (plan.cuda_home, cutlass_inc) if cutlass_why is None else None
    else:
        ext = cpp_extension.CppExtension(_build.EXT_NAME, rel, include_dirs=args["include_dirs"],
                                         extra_compile_args={"cxx": args["cxx"]})
        cutlass_state = "-"
    ext._unet_fast = (plan, args)
    _put_ninja_on_path()
    print("unet_fast build configuration:")
    print(f"  extension      : {plan.why}")
    print(f"  torch          : {torch_version} (CUDA {torch_cuda})")
    print(f"  CUDA_HOME      : {plan.cuda_home if plan.cuda else '-'}")
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "(visible GPU)") if plan.cuda else "-"
    print(f"  arch list      : {arch}")
    print(f"  CUTLASS        : {cutlass_state}")
    print(f"  MAX_JOBS       : {os.environ.get('MAX_JOBS', '(all cores)')}")
    print(f"  sources        : {len(rel)}")
    sys.stdout.flush()
    _say(f"building the extension unet_fast._C: {plan.why}")
    return [ext], cpp_extension, plan


def _put_ninja_on_path():
    env = dict(os.environ)
    if _build.put_ninja_on_path(env):
        os.environ["PATH"] = env["PATH"]


class BuildPyWithSources(build_py):
    """Ships csrc/ inside the package (unet_fast/csrc) so that an installed wheel can build the
    extension on first use; an editable install reads csrc/ where it is."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = os.path.join(self.build_lib, "unet_fast", "csrc")
        src = os.path.join(ROOT, "csrc")
        for path in _build.source_files(src):
            target = os.path.join(dest, os.path.relpath(path, src))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            self.copy_file(path, target, preserve_mode=False)


def main():
    exts, cpp_extension, plan = extensions()
    cmdclass = {"build_py": BuildPyWithSources}
    pin = None
    if exts:
        base = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
        strict = (_build.flag(_build.ENV_FORCE_CUDA) or _build.flag("UNET_FAST_REQUIRE_EXTENSION")
                  or _build.flag("UNET_FAST_REQUIRE_CUTLASS"))

        class BuildExt(base):
            """Builds _C, then writes its record next to every copy it leaves (build folder and,
            in place or editable, the package folder)."""

            def run(self):
                t0 = time.time()
                try:
                    for ext in self.extensions:  # CUTLASS units first: their own nvcc commands
                        if getattr(ext, "cutlass", None):
                            self._cutlass_objects(ext)
                    super().run()
                except Exception as e:  # noqa: BLE001
                    if strict:
                        raise
                    _say(f"WARNING: building the extension failed ({e}); installing the "
                         "pure-Python package. backend='cuda' will say how to build it.")
                    return
                for ext in self.extensions:
                    plan_, args = ext._unet_fast
                    rec = _build.make_record(plan_.why, plan_.cuda, "install", args,
                                             os.path.join(ROOT, "csrc"),
                                             os.environ.get("TORCH_CUDA_ARCH_LIST") if plan_.cuda else None,
                                             seconds=time.time() - t0)
                    full = self.get_ext_fullpath(ext.name)
                    places = {os.path.abspath(os.path.join(self.build_lib,
                                                           self.get_ext_filename(ext.name))),
                              os.path.abspath(full)}
                    if self.inplace or getattr(self, "editable_mode", False):
                        pkg = self.get_finalized_command("build_py").get_package_dir("unet_fast")
                        places.add(os.path.abspath(os.path.join(pkg, os.path.basename(full))))
                    written = [_build.write_record(lib, rec) for lib in sorted(places)
                               if os.path.isfile(lib)]
                    _say(f"built {ext.name} in {time.time() - t0:.0f} s: {plan_.why} "
                         f"(record: {', '.join(written) or 'none: no library found'})")

            def _cutlass_objects(self, ext):
                cuda_home, inc = ext.cutlass
                try:
                    objs = _compile_cutlass(cuda_home, inc, CUTLASS_OBJ_DIR)
                except Exception as e:  # noqa: BLE001
                    if _build.flag("UNET_FAST_REQUIRE_CUTLASS"):
                        raise
                    _say(f"WARNING: the CUTLASS sm_90a units failed to build ({e}); building the "
                         "extension without them")
                    ext.extra_compile_args["cxx"].remove("-DUNET_FAST_WITH_CUTLASS_SM90")
                    return
                ext.extra_objects = [o for o in ext.extra_objects if o not in objs] + objs
                ext.depends = [d for d in ext.depends if d not in objs] + objs  # relink on change

        cmdclass["build_ext"] = BuildExt
        try:
            from importlib.metadata import version
            pin = version("torch")
        except Exception:  # noqa: BLE001
            pin = None
    setup(ext_modules=exts, cmdclass=cmdclass,
          install_requires=_build.requirements(REQUIREMENTS, pin))


if __name__ == "__main__":
    main()
