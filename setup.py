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
"""
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
        ext = cpp_extension.CUDAExtension(
            _build.EXT_NAME, rel, include_dirs=args["include_dirs"], py_limited_api=False,
            extra_compile_args={"cxx": args["cxx"], "nvcc": args["nvcc"]})
    else:
        ext = cpp_extension.CppExtension(_build.EXT_NAME, rel, include_dirs=args["include_dirs"],
                                         extra_compile_args={"cxx": args["cxx"]})
    ext._unet_fast = (plan, args)
    _put_ninja_on_path()
    print("unet_fast build configuration:")
    print(f"  extension      : {plan.why}")
    print(f"  torch          : {torch_version} (CUDA {torch_cuda})")
    print(f"  CUDA_HOME      : {plan.cuda_home if plan.cuda else '-'}")
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "(visible GPU)") if plan.cuda else "-"
    print(f"  arch list      : {arch}")
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
        strict = _build.flag(_build.ENV_FORCE_CUDA) or _build.flag("UNET_FAST_REQUIRE_EXTENSION")

        class BuildExt(base):
            """Builds _C, then writes its record next to every copy it leaves (build folder and,
            in place or editable, the package folder)."""

            def run(self):
                t0 = time.time()
                try:
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
