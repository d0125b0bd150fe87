"""How the extension unet_fast._C is built, in one place.

Two ways build it, and both take their sources, flags and decisions from here, so they cannot
drift apart:
- at install time, when asked (`UNET_FAST_BUILD_EXT=1`, or `UNET_FAST_FORCE_CUDA=1`): setup.py;
- on first use of `backend="cuda"` (or `unet-fast build-ext`), when no extension built for the
  running torch is there: `build()`, which compiles with `torch.utils.cpp_extension.load` in a
  child process into a cache folder keyed by torch version, CUDA version, Python, flags and a hash
  of csrc/ (`cache_root()`/`cache_key()`), showing ninja's progress.

Every build leaves a record next to the library it made (`<library>.build.json`: the torch it was
built against, CUDA kernels or not and why, flags, sources hash); the cuda backend reads it before
loading the library, so a build for another torch is reported (with the command that fixes it)
instead of being loaded or silently dropped.

This file imports only the standard library at module level: setup.py loads it by path before the
package can be imported, and the first-use build runs it as a script (`python _build.py child ...`).
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Callable, NamedTuple, Optional

PKG_DIR = os.path.dirname(os.path.abspath(__file__))
EXT_NAME = "unet_fast._C"
RECORD_FORMAT = 1

# Environment switches (README, "Environment variables").
ENV_BUILD = "UNET_FAST_BUILD_EXT"        # 1: setup.py builds _C at install time
ENV_FORCE_CUDA = "UNET_FAST_FORCE_CUDA"  # 1: the CUDA kernels must build (an error if impossible)
ENV_SKIP = "UNET_FAST_SKIP_EXTENSION"    # 1: never build at install time (wins over the others)
ENV_JIT = "UNET_FAST_JIT"                # 0: never build on first use of backend="cuda"
ENV_EXT_DIR = "UNET_FAST_EXT_DIR"        # the cache of first-use builds

SOURCE_SUFFIXES = (".cpp", ".cu", ".h", ".cuh", ".hpp")
# How long a build takes, measured on this project's 2-core build machine (README, docs/design.md).
DURATION = {True: "about 10-15 minutes on 2 cores, a few minutes on 16",
            False: "about 2-4 minutes on 2 cores"}

REBUILD_CMD = "unet-fast build-ext"
INSTALL_CMD = "UNET_FAST_BUILD_EXT=1 pip install --no-build-isolation ."


def flag(name: str, env=None) -> bool:
    env = os.environ if env is None else env
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def flag_off(name: str, env=None) -> bool:
    env = os.environ if env is None else env
    return env.get(name, "").strip().lower() in ("0", "false", "no", "off")


# ------------------------------------------------------------------ where things are
def csrc_dir() -> Optional[str]:
    """The C++/CUDA sources: shipped inside the package by a wheel (`unet_fast/csrc`), or next to
    it in a source tree or an editable install (`csrc/`)."""
    for cand in (os.path.join(PKG_DIR, "csrc"), os.path.join(os.path.dirname(PKG_DIR), "csrc")):
        if os.path.isfile(os.path.join(cand, "unet_fast.cpp")):
            return cand
    return None


def cuda_home(env=None) -> Optional[str]:
    """A real CUDA toolkit root (bin/nvcc): CUDA_HOME, CUDA_PATH, /usr/local/cuda, or the folder
    above a resolved `nvcc` that has lib*/libcudart.so. torch's own guess from the PATH can be a
    wrapper script's folder, where linking fails on -lcudart."""
    env = os.environ if env is None else env
    for cand in (env.get("CUDA_HOME"), env.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and os.path.exists(os.path.join(cand, "bin", "nvcc")):
            return cand
    nvcc = shutil.which("nvcc", path=env.get("PATH"))
    if nvcc:
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if glob.glob(os.path.join(root, "lib*", "libcudart.so*")):
            return root
    return None


def extra_cuda_includes() -> list:
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


def ninja_dirs() -> list:
    """Folders holding a `ninja` executable that may not be on the PATH: the pip package's (in
    the venv's bin, which is not on the PATH when .venv/bin/python is called directly)."""
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja
        dirs.insert(0, getattr(ninja, "BIN_DIR", ""))
    except ImportError:
        pass
    return [d for d in dirs if d and os.path.isfile(os.path.join(d, "ninja"))]


def put_ninja_on_path(env: dict) -> bool:
    """Make `ninja` findable through env["PATH"]; False when there is none."""
    if shutil.which("ninja", path=env.get("PATH")):
        return True
    dirs = ninja_dirs()
    if dirs:
        env["PATH"] = os.pathsep.join(dirs + [env.get("PATH", "")])
        return True
    return False


# ------------------------------------------------------------------ what to build
class Plan(NamedTuple):
    build: bool            # build an extension at all
    cuda: bool             # with its CUDA kernels (else the C++ CPU kernels only)
    why: str               # one sentence: what is built and why
    error: Optional[str]   # set when the request cannot be met (a forced build that cannot be)
    cuda_home: Optional[str]


def kernel_plan(torch_version: Optional[str], torch_cuda: Optional[str], toolkit: Optional[str],
                force_cuda: bool) -> Plan:
    """CUDA + C++ kernels when a CUDA toolkit and a CUDA build of torch are there, else the C++
    CPU kernels only (saying why); with force_cuda, anything but CUDA kernels is an error."""
    if torch_version is None:
        return Plan(False, False, "torch is not importable", "torch is not importable: install "
                    "torch first (and build with `pip install --no-build-isolation`)", toolkit)
    missing = []
    if toolkit is None:
        missing.append("no CUDA toolkit was found (set CUDA_HOME to the folder with bin/nvcc)")
    if torch_cuda is None:
        missing.append(f"torch {torch_version} is a CPU-only build (install a CUDA build of torch)")
    if not missing:
        return Plan(True, True, f"CUDA + C++ CPU kernels (CUDA toolkit {toolkit}, torch "
                    f"{torch_version} with CUDA {torch_cuda})", None, toolkit)
    why = "C++ CPU kernels only, no CUDA kernels: " + "; ".join(missing)
    if force_cuda:
        return Plan(True, True, why, f"{ENV_FORCE_CUDA}=1 but " + "; ".join(missing), toolkit)
    return Plan(True, False, why, None, toolkit)


def install_plan(env=None, torch_version: Optional[str] = None, torch_cuda: Optional[str] = None,
                 toolkit: Optional[str] = None) -> Plan:
    """What `pip install .` / setup.py builds: nothing unless asked (UNET_FAST_BUILD_EXT=1, or
    UNET_FAST_FORCE_CUDA=1 which asks for the CUDA kernels); UNET_FAST_SKIP_EXTENSION=1 wins."""
    env = os.environ if env is None else env
    if flag(ENV_SKIP, env):
        return Plan(False, False, f"{ENV_SKIP}=1: no extension (pure Python)", None, None)
    if not (flag(ENV_BUILD, env) or flag(ENV_FORCE_CUDA, env)):
        return Plan(False, False, f"no extension compiled ({ENV_BUILD} is not set): the "
                    "pure-Python package; the extension is built against the installed torch on "
                    f"first use of backend='cuda', by `{REBUILD_CMD}`, or at install time with "
                    f"{ENV_BUILD}=1", None, None)
    p = kernel_plan(torch_version, torch_cuda, toolkit, flag(ENV_FORCE_CUDA, env))
    if torch_version is None:
        return p._replace(error=f"{ENV_BUILD}=1 but torch is not importable in the build "
                                "environment: install torch first, then build with `pip install "
                                "--no-build-isolation` (build isolation would build against a "
                                "second, downloaded torch)")
    return p


def extension_args(csrc: str, cuda: bool, env=None, includes: bool = True) -> dict:
    """Sources, include folders and compiler flags of _C: the one list setup.py and the
    first-use build both use. includes=False leaves out the folders outside csrc/ (which
    take imports to find, and do not enter the cache key)."""
    env = os.environ if env is None else env
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp"))) + \
        sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    cxx = ["-O3"]  # the C++ standard is torch's choice (C++20 from torch 2.13 on)
    nvcc = []
    include_dirs = [csrc]
    if cuda:
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cpp"))) + \
            sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        cxx += ["-DUNET_FAST_WITH_CUDA"]
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        if flag("UNET_FAST_PTXAS_VERBOSE", env):  # registers / shared memory / spills per kernel
            nvcc.append("-Xptxas=-v")
        if includes:
            include_dirs += extra_cuda_includes()
    return {"sources": sources, "include_dirs": include_dirs, "cxx": cxx, "nvcc": nvcc}


def arch_list(env=None, gpu_visible: bool = False) -> Optional[str]:
    """TORCH_CUDA_ARCH_LIST to build with: the caller's, else 8.0;9.0 when no GPU is visible,
    else None (torch then builds for the visible GPUs)."""
    env = os.environ if env is None else env
    if env.get("TORCH_CUDA_ARCH_LIST"):
        return env["TORCH_CUDA_ARCH_LIST"]
    return None if gpu_visible else "8.0;9.0"


def requirements(base: list, pin_torch: Optional[str]) -> list:
    """The package's dependencies; a wheel that carries a compiled _C needs the torch it was
    built against, so its metadata pins that one (pip then warns when another torch replaces it)."""
    if not pin_torch:
        return list(base)
    return [f"torch=={pin_torch}" if re.match(r"torch\b(?![-_.\w])", r) else r for r in base]


# ------------------------------------------------------------------ sources hash and cache
def source_files(csrc: str) -> list:
    out = []
    for dirpath, dirnames, filenames in os.walk(csrc):
        dirnames.sort()
        for f in sorted(filenames):
            if f.endswith(SOURCE_SUFFIXES):
                out.append(os.path.join(dirpath, f))
    return out


def sources_hash(csrc: str) -> str:
    """SHA-256 of every source and header under csrc/ (names and contents)."""
    h = hashlib.sha256()
    for path in source_files(csrc):
        h.update(os.path.relpath(path, csrc).replace(os.sep, "/").encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    return h.hexdigest()


def cache_root(env=None) -> str:
    """UNET_FAST_EXT_DIR, else <UNET_FAST_CACHE_DIR or $XDG_CACHE_HOME/unet_fast or
    ~/.cache/unet_fast>/ext."""
    env = os.environ if env is None else env
    d = env.get(ENV_EXT_DIR)
    if d:
        return os.path.abspath(os.path.expanduser(d))
    base = env.get("UNET_FAST_CACHE_DIR")
    if not base:
        xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "unet_fast")
    return os.path.join(os.path.abspath(os.path.expanduser(base)), "ext")


def python_tag() -> str:
    return sys.implementation.cache_tag or f"py{sys.version_info[0]}{sys.version_info[1]}"


def cache_key(torch_version: str, torch_cuda: Optional[str], cuda: bool, src_hash: str,
              args: dict, arch: Optional[str]) -> str:
    """A folder name naming what a build depends on: torch version, its CUDA version, Python,
    CUDA kernels or not, the target GPUs, the flags and the sources (hashed)."""
    ident = json.dumps({"format": RECORD_FORMAT, "torch": torch_version, "torch_cuda": torch_cuda,
                        "python": python_tag(), "cuda_kernels": cuda, "arch": arch or "",
                        "cxx": args["cxx"], "nvcc": args["nvcc"], "sources": src_hash},
                       sort_keys=True)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9.+_-]", "_", torch_version)
    return f"torch{safe}-{python_tag()}-{'cuda' if cuda else 'cpu'}-{digest}"


# ------------------------------------------------------------------ the build record
def record_path(lib_path: str) -> str:
    """`_C.cpython-311-x86_64-linux-gnu.so` -> `_C.cpython-311-x86_64-linux-gnu.build.json`."""
    base, ext = os.path.splitext(lib_path)
    return base + ".build.json"


def torch_identity() -> dict:
    import torch
    try:
        from importlib.metadata import version
        dist = version("torch")
    except Exception:  # noqa: BLE001
        dist = None
    return {"torch": torch.__version__, "torch_dist": dist, "torch_cuda": torch.version.cuda}


def make_record(plan_why: str, cuda: bool, built_by: str, args: dict, csrc: str,
                arch: Optional[str], seconds: Optional[float] = None, ident: Optional[dict] = None) -> dict:
    rec = {"format": RECORD_FORMAT, **(ident or torch_identity()), "python": python_tag(),
           "cuda_kernels": cuda, "why": plan_why, "built_by": built_by,
           "arch_list": arch if cuda else None, "cxx": args["cxx"], "nvcc": args["nvcc"],
           "sources_hash": sources_hash(csrc), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "seconds": None if seconds is None else round(seconds, 1)}
    return rec


def write_record(lib_path: str, rec: dict) -> str:
    """Next to the library, atomically; `size` ties the record to that file."""
    rec = dict(rec, size=os.path.getsize(lib_path))
    path = record_path(lib_path)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_record(lib_path: str) -> Optional[dict]:
    """The record of this library, or None (none, unreadable, or written for another file)."""
    try:
        with open(record_path(lib_path)) as f:
            rec = json.load(f)
        if not isinstance(rec, dict) or rec.get("size") != os.path.getsize(lib_path):
            return None
        return rec
    except (OSError, ValueError):
        return None


def describe_torch(version: Optional[str], cuda: Optional[str]) -> str:
    return f"torch {version} ({'CUDA ' + cuda if cuda else 'CPU-only'})"


def mismatch(rec: dict, torch_version: str, torch_cuda: Optional[str]) -> Optional[str]:
    """None when a build record fits the running torch, else a sentence naming both."""
    if rec.get("torch") == torch_version and rec.get("torch_cuda") == torch_cuda and \
            rec.get("python", python_tag()) == python_tag():
        return None
    return (f"it was built against {describe_torch(rec.get('torch'), rec.get('torch_cuda'))}"
            + (f" for {rec.get('python')}" if rec.get("python") != python_tag() else "")
            + f", and this is {describe_torch(torch_version, torch_cuda)}")


def fix_text(force_cuda: bool, cuda_kernels: bool, first_use: Optional[bool]) -> str:
    """The commands that build an extension for the running torch (`cuda_kernels`: whether that
    build gets CUDA kernels, for its duration; `first_use`: whether backend='cuda' would build it
    on first use, None to leave that out)."""
    force = f"{ENV_FORCE_CUDA}=1 " if force_cuda else ""
    text = (f"build it for this torch with `{force}{REBUILD_CMD}` ({DURATION[cuda_kernels]}, once; "
            f"cached in {cache_root()}), or reinstall from the source tree with "
            f"`{force}{INSTALL_CMD}`")
    if first_use is not None:
        text += ("; backend='cuda' also builds it on first use" if first_use
                 else f"; first-use builds are off ({ENV_JIT}=0)")
    return text


# ------------------------------------------------------------------ the first-use build
class BuildError(RuntimeError):
    pass


_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]\s+(.*)$")


def _step_name(cmd: str) -> str:
    """`[3/17] /usr/local/cuda/bin/nvcc ... -c /x/csrc/cuda/a.cu -o a.cuda.o` -> `compiling cuda/a.cu`."""
    m = re.search(r"\s-c\s+(\S+)", cmd)
    if m:
        src = m.group(1).strip("'\"")
        parts = src.replace(os.sep, "/").split("/")
        keep = 2 if len(parts) > 1 and parts[-2] in ("cpu", "cuda") else 1
        return "compiling " + "/".join(parts[-keep:])
    m = re.search(r"\s-o\s+(\S+\.so)\b", cmd)
    if m:
        return "linking " + os.path.basename(m.group(1))
    return cmd[:100]


def _torch_uses_file_baton() -> bool:
    """Whether torch.utils.cpp_extension locks a build folder with FileBaton (torch 2.13 and
    older, 2.11 and 2.13 checked: the file `lock` exists while a build runs, and one a killed build
    leaves makes every later build wait for it forever) rather than an OS lock that dies with its
    holder (2.14: FileLock)."""
    from torch.utils import cpp_extension
    return "FileBaton" in vars(cpp_extension)


@contextlib.contextmanager
def file_lock(path: str, on_wait: Optional[Callable[[], None]] = None):
    """An exclusive lock on `path`.lock between processes (flock: the kernel releases it when its
    holder dies); `on_wait()` is called once if another process holds it. Where locking is
    impossible (no fcntl, a read-only directory) it degrades to no lock."""
    try:
        import fcntl
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def build_lock(folder: str, echo: Callable[[str], None], file_baton: Optional[bool] = None):
    """Holds `folder`'s build lock (`file_lock` on `<folder>.lock` beside it), so builds of one key
    run one after another and a killed one blocks nothing. Under it no other build of ours runs,
    so a FileBaton `lock` file found in the folder was left by a killed build: it is removed
    (torch would wait on it forever)."""
    folder = os.path.abspath(folder)
    with file_lock(folder, lambda: echo(f"unet_fast: another process is building the extension "
                                        f"in {folder}; waiting for it to finish")):
        stale = os.path.join(folder, "lock")
        if os.path.exists(stale) and (_torch_uses_file_baton() if file_baton is None else file_baton):
            os.remove(stale)
            echo(f"unet_fast: removed {stale}, left by a build that was killed (no build holds it: "
                 "torch would have waited for it forever)")
        yield


def build(force_cuda: bool = False, root: Optional[str] = None, built_by: str = "first use",
          echo: Optional[Callable[[str], None]] = None, env=None, clean: bool = False) -> tuple:
    """Compile _C for the running torch into the cache (once; a later call finds it there) and
    return (library path, record). CUDA kernels when a toolkit and a CUDA torch are there
    (force_cuda or UNET_FAST_FORCE_CUDA=1: an error otherwise), else C++ CPU kernels. Says what,
    where and how long up front, then shows ninja's steps. The compiler runs in a child process;
    concurrent builds of one key wait on its folder's build lock (`build_lock`), and the later
    ones find the first one's result up to date. clean: build from scratch."""
    import torch
    env = dict(os.environ if env is None else env)
    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    csrc = csrc_dir()
    if csrc is None:
        raise BuildError(f"the C++/CUDA sources (csrc/) are not in this installation ({PKG_DIR})")
    toolkit = cuda_home(env)
    plan = kernel_plan(torch.__version__, torch.version.cuda, toolkit,
                       force_cuda or flag(ENV_FORCE_CUDA, env))
    if plan.error:
        raise BuildError(plan.error)
    cuda = plan.cuda
    if not put_ninja_on_path(env):
        raise BuildError("building the extension needs ninja: `pip install ninja`")
    args = extension_args(csrc, cuda, env)
    arch = arch_list(env, gpu_visible=torch.cuda.is_available()) if cuda else None
    key = cache_key(torch.__version__, torch.version.cuda, cuda, sources_hash(csrc), args,
                    env.get("TORCH_CUDA_ARCH_LIST") if cuda else None)
    folder = os.path.join(root or cache_root(env), key)
    if cuda:
        env["CUDA_HOME"] = toolkit
        if arch:
            env["TORCH_CUDA_ARCH_LIST"] = arch
    env["MAX_JOBS"] = env.get("MAX_JOBS") or str(os.cpu_count() or 1)
    with build_lock(folder, echo):
        if clean:  # a process that loaded the old library keeps its mapping
            shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)
        return _build_in(folder, cuda, plan, args, arch, env, echo, built_by)


def _build_in(folder, cuda, plan, args, arch, env, echo, built_by) -> tuple:
    """build()'s compile and link in `folder`, under its build lock."""
    import torch
    jobs = env["MAX_JOBS"]
    echo(f"unet_fast: building the extension unet_fast._C for "
         f"{describe_torch(torch.__version__, torch.version.cuda)}: "
         f"{plan.why}; {len(args['sources'])} sources, {jobs} parallel jobs (MAX_JOBS)"
         + (f", GPU targets {arch}" if arch else (", GPU targets: the visible GPUs" if cuda else "")) + ".")
    echo(f"unet_fast: this takes {DURATION[cuda]}, once: the result is kept in {folder} and later "
         f"runs load it from there ({ENV_JIT}=0 turns first-use builds off). Log: "
         f"{os.path.join(folder, 'build.log')}")
    t0 = time.time()
    cmd = [sys.executable, os.path.abspath(__file__), "child", folder, "cuda" if cuda else "cpu",
           built_by, plan.why]
    log_path = os.path.join(folder, f"build.{os.getpid()}.log")
    tail = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, errors="replace", bufsize=1)
        for line in proc.stdout:
            log.write(line)
            log.flush()
            line = line.rstrip("\n")
            tail = (tail + [line])[-60:]
            m = _NINJA_STEP.match(line)
            if m:
                echo(f"unet_fast: [{m.group(1)}/{m.group(2)}] {_step_name(m.group(3))} "
                     f"({time.time() - t0:.0f} s)")
            elif line.startswith("unet_fast:") or re.search(r"\b(error|warning)\b", line, re.I):
                echo(line)
        rc = proc.wait()
    os.replace(log_path, os.path.join(folder, "build.log"))
    if rc != 0:
        raise BuildError(f"building the extension failed (exit {rc}; full log: "
                         f"{os.path.join(folder, 'build.log')}):\n" + "\n".join(tail[-40:]))
    lib = os.path.join(folder, "_C.so")
    rec = read_record(lib)
    if rec is None:
        raise BuildError(f"the build in {folder} left no record")
    echo(f"unet_fast: built unet_fast._C in {time.time() - t0:.0f} s: {lib}")
    return lib, rec


def _child(folder: str, kind: str, built_by: str, why: str) -> int:
    """Runs in the build's own process: compile and link with cpp_extension.load (ninja, its
    progress on stdout), import the result once, write its record."""
    import torch
    from torch.utils import cpp_extension
    cuda = kind == "cuda"
    if cuda:
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    csrc = csrc_dir()
    args = extension_args(csrc, cuda)
    t0 = time.time()
    cpp_extension.load(name="_C", sources=args["sources"], extra_cflags=args["cxx"],
                       extra_cuda_cflags=args["nvcc"] if cuda else None,
                       extra_include_paths=args["include_dirs"], build_directory=folder,
                       verbose=True, with_cuda=cuda, is_python_module=True)
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("unet_fast::crop_concat", "CUDA")
    if has_cuda != cuda:
        print(f"unet_fast: error: the library has{'' if has_cuda else ' no'} CUDA kernels")
        return 1
    lib = os.path.join(folder, "_C.so")
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST") if cuda else None
    rec = make_record(why, cuda, built_by, args, csrc, arch, seconds=time.time() - t0)
    write_record(lib, rec)
    return 0


def find_cached(root: Optional[str] = None, env=None) -> list:
    """Cached first-use builds for the running torch and these sources: [(library, record)], the
    one with CUDA kernels first."""
    import torch
    env = os.environ if env is None else env
    csrc = csrc_dir()
    if csrc is None:
        return []
    src = sources_hash(csrc)
    found = []
    for cuda in (True, False):
        args = extension_args(csrc, cuda, env, includes=False)
        key = cache_key(torch.__version__, torch.version.cuda, cuda, src, args,
                        env.get("TORCH_CUDA_ARCH_LIST") if cuda else None)
        lib = os.path.join(root or cache_root(env), key, "_C.so")
        rec = read_record(lib) if os.path.isfile(lib) else None
        if rec is not None and mismatch(rec, torch.__version__, torch.version.cuda) is None:
            found.append((lib, rec))
    return found


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "child":
    sys.exit(_child(*sys.argv[2:6]))
