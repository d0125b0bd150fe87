#!/usr/bin/env python
"""Build unet_fast._C here for the device tool's GPU machines, and use it there.

The GPU suite's first stage builds the extension on the lent machine: 20 CUTLASS sm_90a units of
30-60 s each (one core apiece) and the torch glue, about two of a lease's fifteen minutes
(benchmarks/README.md). The machines run Python 3.12 and torch 2.11.0+cu130 (../shared/ENV.md, the
device tool's KINDS.md), which this machine can build against: `build` makes that library here,
in a throwaway Python 3.12 venv with that torch, for sm_90 only, reusing the CUTLASS objects of
the project's own build (build/cutlass_sm90/, compiled by the same nvcc command), and writes it to
build/device/ (git-ignored), which a device call carries. There, `use` (the suite's build stage)
takes it only when its build record fits that machine's Python and torch, csrc/ is the one it was
built from, it has the visible GPU's architecture, and it loads in a fresh process with its CUDA
kernels and CUTLASS units registered; otherwise it removes it and the suite builds as before. (A
library built on another image can fail to load for its system libraries: the device tool's
H200.md says to try it and fall back to building there, which is what this does.)

    python tools/device_prebuild.py build [--python PY] [--torch 2.11.0] [--out build/device]
    python tools/device_prebuild.py check [--dir build/device]   # exit 0: it fits this machine
    python tools/device_prebuild.py use   [--dir build/device]   # check, install into unet_fast/, load

`build` runs with the project's venv Python (`make setup` first): its nvidia-* packages (which
torch needs to import) and its nvidia-cutlass headers are lent to the build venv. It needs the
torch wheel for Python 3.12 from pip's index (about 530 MB, once). Exit status: 0 done or fits;
1 does not fit, does not load or the build failed; 2 bad arguments; 3 nothing prebuilt for this
Python in the folder.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(ROOT, "build", "device")
DEFAULT_VENV = os.path.join(ROOT, "build", "device_venv")
DEVICE_PYTHON = "3.12"          # the device machines' python3 (KINDS.md: 3.12.3)
DEVICE_TORCH = "2.11.0"         # and their torch (2.11.0+cu130)
DEVICE_ARCH = "9.0"             # H100 and H200
MANIFEST = "prebuild.json"
# what setup.py imports to build (torch itself is installed without its nvidia-* and triton needs)
BUILD_PACKAGES = ["numpy", "setuptools", "wheel", "pybind11", "ninja", "packaging", "typing_extensions",
                  "sympy", "networkx", "jinja2", "fsspec", "filelock"]
NOT_FIT, NONE_HERE = 1, 3


def _load_build_module():
    """unet_fast/_build.py by path (stdlib only): importing unet_fast would load an extension."""
    spec = importlib.util.spec_from_file_location("unet_fast_build_config",
                                                  os.path.join(ROOT, "unet_fast", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_build = _load_build_module()


def library_name(ext_suffix: str | None = None) -> str:
    """`_C.cpython-312-x86_64-linux-gnu.so` for the running Python (or the given EXT_SUFFIX)."""
    return "_C" + (ext_suffix or sysconfig.get_config_var("EXT_SUFFIX"))


def find_library(folder: str) -> tuple[str | None, list]:
    """(the library for this Python in folder/unet_fast/, or None; every _C library there)."""
    pkg = os.path.join(folder, "unet_fast")
    libs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(pkg, "_C.*.so")))
    mine = os.path.join(pkg, library_name())
    return (mine if os.path.isfile(mine) else None), libs


def _arch_has(arch_list: str | None, cc: tuple[int, int]) -> bool:
    want = f"{cc[0]}.{cc[1]}"
    for a in re.split(r"[;, ]+", arch_list or ""):
        if a and a.split("+")[0].rstrip("a") in (want, f"{cc[0]}{cc[1]}"):
            return True
    return False


def fits(folder: str, root: str = ROOT, torch_version=None, torch_cuda=None, capability=None):
    """(status, sentence): 0 when folder holds a library for this Python whose record fits the
    running torch, the sources in root/csrc, and the visible GPU's capability (None: no GPU, not
    checked); NOT_FIT or NONE_HERE with why not."""
    if torch_version is None:
        import torch
        torch_version, torch_cuda = torch.__version__, torch.version.cuda
        if capability is None and torch.cuda.is_available():
            capability = torch.cuda.get_device_capability(0)
    lib, libs = find_library(folder)
    if lib is None:
        return NONE_HERE, (f"no prebuilt {library_name()} for {_build.python_tag()} in "
                           f"{os.path.join(folder, 'unet_fast')} (it holds: {', '.join(libs) or 'none'})")
    rec = _build.read_record(lib)
    if rec is None:
        return NOT_FIT, f"{lib} has no readable build record ({os.path.basename(_build.record_path(lib))})"
    why = _build.mismatch(rec, torch_version, torch_cuda)
    if why is not None:
        return NOT_FIT, f"{lib} does not fit: {why}"
    if not rec.get("cuda_kernels"):
        return NOT_FIT, f"{lib} has no CUDA kernels ({rec.get('why')})"
    csrc = os.path.join(root, "csrc")
    if rec.get("sources_hash") != _build.sources_hash(csrc):
        made = _manifest(folder).get("commit")
        return NOT_FIT, (f"{lib} was built from other sources than {csrc}"
                         + (f" (from {made})" if made else "") + "; "
                         "run `python tools/device_prebuild.py build` again")
    if capability is not None and not _arch_has(rec.get("arch_list"), capability):
        return NOT_FIT, (f"{lib} was built for compute capability {rec.get('arch_list')}, and the "
                         f"GPU here is {capability[0]}.{capability[1]}")
    man = _manifest(folder)
    made = f"built {rec.get('built_at', '?')}" + (f" from {man['commit']}" if man.get("commit") else "")
    return 0, f"{lib} fits ({_build.describe_torch(torch_version, torch_cuda)}, {_build.python_tag()}; {made})"


def _manifest(folder: str) -> dict:
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# The load check, in a fresh interpreter: the installed copy must be the one unet_fast loads, with
# its CUDA kernels, and (where `build` saw them, its manifest says) its CUTLASS units.
_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
out = {}
try:
    import unet_fast.backends.cuda_backend as cb
    from unet_fast.backends import cutlass_sm90
    info = cb.extension_info()
    out = {"loaded": info["loaded"], "path": info["path"], "kernels": info["kernels"],
           "failed": info["failed"], "problem": info["problem"],
           "cutlass": cutlass_sm90.built() and cutlass_sm90.built_up()}
except Exception as e:
    out = {"loaded": False, "error": f"{type(e).__name__}: {e}"}
print("PROBE " + json.dumps(out))
"""


def probe(python: str, root: str, env=None) -> dict:
    """What `python` loads as unet_fast._C from root/unet_fast (a fresh process)."""
    r = subprocess.run([python, "-c", _PROBE, root], capture_output=True, text=True, env=env,
                       cwd=tempfile.gettempdir())
    for line in r.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    return {"loaded": False, "error": f"exit {r.returncode}: {(r.stderr or r.stdout)[-2000:]}"}


def loads_as_built(result: dict, lib: str, cutlass: bool) -> str | None:
    """None when the probe loaded `lib` itself with its CUDA kernels (and CUTLASS units when
    asked); else why not."""
    if not result.get("loaded"):
        failed = "; ".join(f"{f['path']}: {f['error']}" for f in result.get("failed") or [])
        return result.get("error") or failed or result.get("problem") or "it did not load"
    if os.path.realpath(result.get("path") or "") != os.path.realpath(lib):
        return f"unet_fast loaded {result.get('path')} instead"
    if result.get("kernels") != "CUDA + C++ CPU":
        return f"it has {result.get('kernels')} kernels, not CUDA + C++ CPU"
    if cutlass and not result.get("cutlass"):
        return "its CUTLASS sm_90a units are not registered"
    return None


def use(folder: str, root: str = ROOT, python: str = sys.executable, echo=print) -> int:
    status, line = fits(folder, root)
    if status:
        echo(f"prebuilt: {line}")
        return status
    lib = find_library(folder)[0]
    dest = os.path.join(root, "unet_fast", os.path.basename(lib))
    pairs = ((lib, dest), (_build.record_path(lib), _build.record_path(dest)))
    for _, dst in pairs:   # a library built here before (a warm machine) is put back on failure
        if os.path.exists(dst):
            os.replace(dst, dst + ".before-prebuilt")
    for src, dst in pairs:
        shutil.copyfile(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
    os.chmod(dest, 0o755)
    cutlass = bool(_manifest(folder).get("cutlass"))   # `build` saw its CUTLASS units registered
    why = loads_as_built(probe(python, root), dest, cutlass)
    for _, dst in pairs:
        backup = dst + ".before-prebuilt"
        if why is None:
            if os.path.exists(backup):
                os.remove(backup)
        else:
            os.remove(dst)
            if os.path.exists(backup):
                os.replace(backup, dst)
    if why is not None:
        echo(f"prebuilt: {lib} fits but does not load here ({why}); removed it: build instead")
        return NOT_FIT
    echo(f"prebuilt: using {line.replace(' fits (', ' (', 1)}; loaded from {dest}"
         + (" with its CUTLASS units" if cutlass else ""))
    return 0


# ------------------------------------------------------------------------------------ build (here)
def find_python(wanted: str, given: str | None) -> str:
    """A Python `wanted` (3.12): --python, else python3.12 on PATH, else pyenv's."""
    cands = [given] if given else (
        [shutil.which(f"python{wanted}")]
        + sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{wanted}.*/bin/python{wanted}")),
                 reverse=True))
    tried = []
    for c in cands:
        if not c:
            continue
        try:
            v = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            tried.append(f"{c} ({e})")
            continue
        if v == wanted:
            return c
        tried.append(f"{c} (Python {v or '?'})")
    raise SystemExit(f"device_prebuild: --python: no Python {wanted} found"
                     + (f" (tried {', '.join(tried)})" if tried else "")
                     + f"; the device machines run Python {wanted}: pass --python /path/to/python{wanted}")


def _site_packages(python: str) -> str:
    return subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _lent_nvidia() -> str:
    """This interpreter's nvidia-* packages (torch's CUDA libraries), lent to the build venv."""
    spec = importlib.util.find_spec("nvidia")
    paths = list(spec.submodule_search_locations or []) if spec else []
    if not paths:
        raise SystemExit("device_prebuild: run `build` with the project's venv Python (`make setup`, "
                         "then .venv/bin/python tools/device_prebuild.py build): torch needs the "
                         "nvidia-* packages it has to import")
    return paths[0]


def _cutlass_home() -> str:
    home = os.environ.get("CUTLASS_HOME")
    if home:
        return home
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.origin:
        raise SystemExit("device_prebuild: no CUTLASS: set CUTLASS_HOME or run with the project's "
                         "venv Python, which has nvidia-cutlass (requirements-dev.txt)")
    return os.path.join(os.path.dirname(spec.origin), "source")


def _run(cmd, echo, **kw):
    echo("+ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def prepare_venv(venv: str, python: str, torch_version: str, echo) -> str:
    """The build venv's python, with torch==torch_version (no nvidia-*, no triton) and what
    setup.py needs; reused when it already has that torch."""
    vpy = os.path.join(venv, "bin", "python")
    have = None
    if os.path.exists(vpy):
        have = subprocess.run([vpy, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                              capture_output=True, text=True).stdout.strip()
    if have != torch_version:
        if os.path.exists(venv):
            shutil.rmtree(venv)
        _run([python, "-m", "venv", venv], echo)
        _run([vpy, "-m", "pip", "install", "-q", "--no-deps", f"torch=={torch_version}"], echo)
        _run([vpy, "-m", "pip", "install", "-q"] + BUILD_PACKAGES, echo)
    site = _site_packages(vpy)
    if not os.path.isdir(os.path.join(site, "nvidia")):
        # Lent through a .pth (torch preloads its CUDA libraries from sys.path when its RPATH
        # finds none), never a link inside site-packages: a pip install into this venv would then
        # write torch 2.11's nvidia-* files into the project venv's, breaking its torch.
        lent = os.path.join(venv, "lent")
        os.makedirs(lent, exist_ok=True)
        if not os.path.lexists(os.path.join(lent, "nvidia")):
            os.symlink(_lent_nvidia(), os.path.join(lent, "nvidia"))
        with open(os.path.join(site, "zz_unet_fast_lent_nvidia.pth"), "w") as f:
            f.write(os.path.abspath(lent) + "\n")
    return vpy


def symbol_needs(lib: str) -> dict:
    """The newest GLIBC / GLIBCXX / CXXABI symbol versions the library needs (objdump -T), which
    the device image's system libraries must have."""
    try:
        out = subprocess.run(["objdump", "-T", lib], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    need: dict = {}
    for name, ver in re.findall(r"\b(GLIBC|GLIBCXX|CXXABI)_([0-9.]+)\b", out):
        key = tuple(int(x) for x in ver.split("."))
        if name not in need or key > need[name][0]:
            need[name] = (key, ver)
    return {k: v[1] for k, v in sorted(need.items())}


def build(args, echo=print) -> int:
    t0 = time.time()
    python = find_python(args.python_version, args.python)
    cutlass = _cutlass_home()
    vpy = prepare_venv(args.venv, python, args.torch, echo)
    out = os.path.abspath(args.out)
    if os.path.exists(out):
        shutil.rmtree(out)
    tmp = out + "_tmp"   # kept: ninja recompiles only what changed next time
    env = dict(os.environ, UNET_FAST_BUILD_EXT="1", UNET_FAST_FORCE_CUDA="1",
               UNET_FAST_REQUIRE_CUTLASS="1", TORCH_CUDA_ARCH_LIST=args.arch, CUTLASS_HOME=cutlass,
               MAX_JOBS=str(args.jobs), PATH=os.path.join(args.venv, "bin") + os.pathsep + os.environ["PATH"])
    _run([vpy, "setup.py", "build_ext", "--build-lib", out, "--build-temp", tmp], echo, cwd=ROOT, env=env)
    lib = os.path.join(out, "unet_fast", library_name(subprocess.run(
        [vpy, "-c", "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))"],
        capture_output=True, text=True, check=True).stdout.strip()))
    if not os.path.isfile(lib):
        raise SystemExit(f"device_prebuild: the build left no {lib}")
    # the load check, as `use` does it there: a copy of the package with the library beside it
    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(os.path.join(ROOT, "unet_fast"), os.path.join(d, "unet_fast"),
                        ignore=shutil.ignore_patterns("_C.*", "__pycache__"))
        for p in (lib, _build.record_path(lib)):
            shutil.copy(p, os.path.join(d, "unet_fast"))
        why = loads_as_built(probe(vpy, d), os.path.join(d, "unet_fast", os.path.basename(lib)), True)
    if why is not None:
        echo(f"device_prebuild: the library does not load in the build venv: {why}")
        return NOT_FIT
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "csrc"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    man = {"commit": commit + ("+uncommitted csrc/ changes" if dirty else ""),
           "library": os.path.relpath(lib, out), "record": _build.read_record(lib),
           "needs": symbol_needs(lib), "cutlass": True, "size_bytes": os.path.getsize(lib),
           "built_with": f"{python} (venv {args.venv})", "seconds": round(time.time() - t0)}
    with open(os.path.join(out, MANIFEST), "w") as f:
        json.dump(man, f, indent=1, sort_keys=True)
    echo(f"device_prebuild: {lib} ({man['size_bytes'] / 2**20:.1f} MiB, {man['commit']}; needs "
         + ", ".join(f"{k} {v}" for k, v in man["needs"].items())
         + f") in {man['seconds']} s; it loads in the build venv. Carry "
         f"{os.path.relpath(out, ROOT)} (and .whl, for a build there if it does not fit or load)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the device machines' library here")
    b.add_argument("--python", help=f"a Python {DEVICE_PYTHON} (default: python{DEVICE_PYTHON} or pyenv's)")
    b.add_argument("--python-version", default=DEVICE_PYTHON, help=argparse.SUPPRESS)
    b.add_argument("--torch", default=DEVICE_TORCH, help="the device machines' torch (default %(default)s)")
    b.add_argument("--arch", default=DEVICE_ARCH, help="TORCH_CUDA_ARCH_LIST (default %(default)s)")
    b.add_argument("--out", default=DEFAULT_DIR, help="where the library goes (default build/device)")
    b.add_argument("--venv", default=DEFAULT_VENV, help="the build venv (default build/device_venv)")
    b.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="MAX_JOBS (default: cores)")
    for name in ("check", "use"):
        p = sub.add_parser(name, help={"check": "whether the prebuilt library fits this machine",
                                       "use": "check it, install it into unet_fast/, load it"}[name])
        p.add_argument("--dir", default=DEFAULT_DIR, help="the carried folder (default build/device)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        if args.jobs < 1:
            ap.error(f"--jobs must be at least 1, got {args.jobs}")
        return build(args)
    if not os.path.isdir(args.dir):
        print(f"prebuilt: --dir {args.dir} is not a folder (carry build/device after "
              "`python tools/device_prebuild.py build`)")
        return NONE_HERE
    if args.cmd == "check":
        status, line = fits(args.dir)
        print(f"prebuilt: {line}")
        return status
    return use(args.dir)


if __name__ == "__main__":
    sys.exit(main())
