"""Installing and building the extension (unet_fast/_build.py, setup.py, the cuda backend's loader):
a default install compiles nothing; setup.py and the first-use build share one list of sources and
flags; the first-use cache is keyed by torch version and every source; a build for another torch
or one without CUDA kernels is said plainly by available(), `info` and the first use, with the
command that fixes it; only an explicit backend="cuda" starts a build. Nothing here compiles: the
builds themselves are faked (a real one takes minutes)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import types
import warnings
import zipfile

import pytest
import torch

import unet_fast as uf
from unet_fast import _build, _dispatch
from unet_fast.app import cli
from unet_fast.backends import cuda_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TV, TC = torch.__version__, torch.version.cuda


def _load_setup_py():
    spec = importlib.util.spec_from_file_location("unet_fast_setup_under_test",
                                                  os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # __name__ is not "__main__": setup() does not run
    return mod


# ------------------------------------------------------------------ what an install builds
def test_default_install_builds_nothing_and_the_switch_builds():
    plan = _build.install_plan({}, TV, TC, "/usr/local/cuda")
    assert not plan.build and plan.error is None and "UNET_FAST_BUILD_EXT" in plan.why
    on = {"UNET_FAST_BUILD_EXT": "1"}
    plan = _build.install_plan(on, TV, "13.0", "/usr/local/cuda")
    assert plan.build and plan.cuda and plan.error is None
    plan = _build.install_plan(on, TV, "13.0", None)          # no toolkit: C++ only, and why
    assert plan.build and not plan.cuda and "no CUDA toolkit" in plan.why
    plan = _build.install_plan(on, "2.14.1+cpu", None, "/usr/local/cuda")
    assert not plan.cuda and "CPU-only build" in plan.why
    # UNET_FAST_FORCE_CUDA keeps its meaning: CUDA kernels or an error (and implies the build)
    plan = _build.install_plan({"UNET_FAST_FORCE_CUDA": "1"}, TV, "13.0", "/usr/local/cuda")
    assert plan.build and plan.cuda and plan.error is None
    plan = _build.install_plan({"UNET_FAST_FORCE_CUDA": "1"}, TV, "13.0", None)
    assert plan.error and "no CUDA toolkit" in plan.error
    # asked for, but torch is not in the build environment (pip's build isolation): an error
    plan = _build.install_plan(on, None, None, None)
    assert plan.error and "--no-build-isolation" in plan.error
    assert not _build.install_plan({**on, "UNET_FAST_SKIP_EXTENSION": "1"}, TV, TC, None).build


def test_build_system_does_not_pull_torch():
    """pip's build isolation installs [build-system] requires: no torch there, ever."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        requires = tomllib.load(f)["build-system"]["requires"]
    assert not [r for r in requires if r.split("=")[0].split(">")[0].strip().lower() == "torch"]


def test_built_wheel_pins_the_torch_it_was_built_against():
    base = _load_setup_py().REQUIREMENTS
    assert _build.requirements(base, None) == base
    pinned = _build.requirements(base, "2.14.1")
    assert "torch==2.14.1" in pinned and "torch>=2.11" not in pinned
    assert [r for r in pinned if not r.startswith("torch")] == [r for r in base if not r.startswith("torch")]


def test_setup_py_and_first_use_build_share_sources_and_flags(monkeypatch, tmp_path):
    """setup.py's Extension and the first-use build's cpp_extension.load get the same sources,
    include folders and flags, from _build.extension_args."""
    from torch.utils import cpp_extension
    monkeypatch.setattr(os, "environ", dict(os.environ))  # setup.py sets CUDA_HOME, PATH, ...
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)
    setup_py = _load_setup_py()
    exts, _, plan = setup_py.extensions({"UNET_FAST_BUILD_EXT": "1"})
    (ext,) = exts
    csrc = os.path.join(ROOT, "csrc")
    args = _build.extension_args(csrc, plan.cuda)
    assert [os.path.join(ROOT, s) for s in ext.sources] == args["sources"]
    assert set(args["include_dirs"]) <= set(ext.include_dirs)
    flags = ext.extra_compile_args
    # one difference by design: an install-time build links the CUTLASS sm_90a units (compiled on
    # their own nvcc commands, which only setup.py runs) and says so to the C++ glue
    cutlass = ["-DUNET_FAST_WITH_CUTLASS_SM90"] if getattr(ext, "cutlass", None) else []
    assert flags["cxx"] == args["cxx"] + cutlass and flags.get("nvcc", []) == args["nvcc"]
    assert any(s.endswith("unet_fast.cpp") for s in args["sources"])
    assert any(s.endswith(".cu") for s in args["sources"]) == plan.cuda

    # the first-use build (its child process's body, run here with load() faked)
    seen = {}

    class Stop(Exception):
        pass

    def fake_load(**kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setattr(_build, "csrc_dir", lambda: csrc)
    os.environ.setdefault("CUDA_HOME", plan.cuda_home or "/nonexistent")
    with pytest.raises(Stop):
        _build._child(str(tmp_path), "cuda" if plan.cuda else "cpu", "test", plan.why)
    assert seen["sources"] == args["sources"] and seen["extra_cflags"] == args["cxx"]
    assert seen["extra_include_paths"] == args["include_dirs"]
    assert (seen["extra_cuda_cflags"] or []) == args["nvcc"] and seen["with_cuda"] == plan.cuda
    assert seen["name"] == "_C" and seen["build_directory"] == str(tmp_path)


def test_pure_python_wheel_in_seconds(tmp_path):
    """`pip wheel --no-deps --no-build-isolation .` without the switch: no compiled file, the
    sources inside (for a first-use build), metadata accepting any torch>=2.11, in seconds."""
    pytest.importorskip("pip")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.build.json", "*.pyc")
    shutil.copytree(os.path.join(ROOT, "csrc"), src / "csrc", ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "unet_fast"), src / "unet_fast", ignore=ignore)
    env = {k: v for k, v in os.environ.items()
           if k not in ("UNET_FAST_BUILD_EXT", "UNET_FAST_FORCE_CUDA")}
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    took = time.time() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    (whl,) = (tmp_path / "dist").glob("*.whl")
    assert whl.name.endswith("-py3-none-any.whl"), whl.name
    names = zipfile.ZipFile(whl).namelist()
    assert not [n for n in names if n.endswith((".so", ".pyd", ".build.json"))], names
    assert "unet_fast/csrc/unet_fast.cpp" in names and "unet_fast/_build.py" in names
    assert {os.path.relpath(p, os.path.join(ROOT, "csrc")).replace(os.sep, "/")
            for p in _build.source_files(os.path.join(ROOT, "csrc"))} == \
        {n[len("unet_fast/csrc/"):] for n in names if n.startswith("unet_fast/csrc/")}
    meta = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: torch>=2.11" in meta
    assert took < 120, f"a pure-Python wheel took {took:.0f} s"


# ------------------------------------------------------------------ the cache key
def _key(csrc, torch_version=TV, torch_cuda="13.0", cuda=True, arch=None):
    args = _build.extension_args(str(csrc), cuda, {})
    return _build.cache_key(torch_version, torch_cuda, cuda, _build.sources_hash(str(csrc)), args, arch)


def test_cache_key_changes_with_torch_and_every_source(tmp_path):
    csrc = tmp_path / "csrc"
    shutil.copytree(os.path.join(ROOT, "csrc"), csrc)
    k0 = _key(csrc)
    assert k0 == _key(csrc)                      # stable
    assert _key(csrc, torch_version="2.14.0+cu130") != k0
    assert _key(csrc, torch_cuda="12.8") != k0
    assert _key(csrc, cuda=False) != k0
    assert _key(csrc, arch="9.0") != k0
    assert TV in k0 or TV.replace("/", "_") in k0  # readable: the folder names its torch
    files = _build.source_files(str(csrc))
    assert len(files) >= 20 and any(f.endswith(".cuh") for f in files)
    for path in files:                           # every source and header counts
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "ab") as f:
            f.write(b"\n// changed\n")
        assert _key(csrc) != k0, path
        with open(path, "wb") as f:
            f.write(data)
    assert _key(csrc) == k0
    os.rename(files[0], files[0] + ".h")         # a renamed file too
    assert _key(csrc) != k0


def test_cache_root(monkeypatch, tmp_path):
    assert _build.cache_root({"UNET_FAST_EXT_DIR": str(tmp_path)}) == str(tmp_path)
    assert _build.cache_root({"UNET_FAST_CACHE_DIR": str(tmp_path)}) == str(tmp_path / "ext")
    assert _build.cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == str(tmp_path / "unet_fast" / "ext")


def test_find_cached_needs_a_complete_build_for_this_torch(tmp_path):
    env = {"UNET_FAST_EXT_DIR": str(tmp_path)}
    csrc = _build.csrc_dir()
    cuda = TC is not None
    args = _build.extension_args(csrc, cuda, env)
    key = _build.cache_key(TV, TC, cuda, _build.sources_hash(csrc), args, None)
    lib = tmp_path / key / "_C.so"
    lib.parent.mkdir()
    lib.write_bytes(b"\0" * 64)
    assert _build.find_cached(env=env) == []     # no record: a build under way or one that failed
    rec = _build.make_record("test", cuda, "first use", args, csrc, None)
    _build.write_record(str(lib), rec)
    ((found, frec),) = _build.find_cached(env=env)
    assert found == str(lib) and frec["torch"] == TV
    lib.write_bytes(b"\0" * 65)                  # the record belongs to another file now
    assert _build.find_cached(env=env) == []


# ------------------------------------------------------------------ the build lock
_HOLD = """
import os, sys, time
sys.path.insert(0, {root!r})
from unet_fast import _build
folder = {folder!r}
with _build.build_lock(folder, print, file_baton=True):
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "lock"), "w").close()     # torch's FileBaton, taken by this build
    open(folder + ".ready", "w").close()
    while not os.path.exists(folder + ".go"):
        time.sleep(0.05)
    os.remove(os.path.join(folder, "lock"))             # the build ends: torch releases its baton
"""


def _holder(tmp_path):
    folder = str(tmp_path / "key")
    proc = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=ROOT, folder=folder)])
    t0 = time.time()
    while not os.path.exists(folder + ".ready"):
        assert proc.poll() is None and time.time() - t0 < 60, "the holder did not start"
        time.sleep(0.05)
    return folder, proc


def test_a_build_killed_mid_way_blocks_no_later_build(tmp_path):
    """In torch 2.13 and older, cpp_extension's lock is a file (FileBaton): a build killed while it ran
    (SIGKILL, a scheduler's SIGTERM) left it, and every later build of that folder waited for it
    forever, saying nothing. The build lock is an OS lock, released with its dead holder, and
    under it the file left behind is known to be stale and is removed, saying so."""
    import signal
    folder, proc = _holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert os.path.exists(os.path.join(folder, "lock"))
    said = []
    with _build.build_lock(folder, said.append, file_baton=True):
        assert not os.path.exists(os.path.join(folder, "lock"))
    assert len(said) == 1 and "left by a build that was killed" in said[0], said
    # with an OS lock in torch (FileLock, 2.14) the file is torch's own and stays
    open(os.path.join(folder, "lock"), "w").close()
    with _build.build_lock(folder, said.append, file_baton=False):
        assert os.path.exists(os.path.join(folder, "lock"))
    assert len(said) == 1


def test_a_second_build_waits_for_the_running_one(tmp_path):
    """While a build runs, another of the same key waits (saying so) and leaves the running
    build's lock file alone; it goes on when that build ends."""
    import threading
    folder, proc = _holder(tmp_path)
    said, entered, saw = [], threading.Event(), []

    def second():
        with _build.build_lock(folder, said.append, file_baton=True):
            entered.set()
            saw.append(os.path.exists(os.path.join(folder, "lock")))

    t = threading.Thread(target=second)
    t.start()
    try:
        t0 = time.time()
        while not said and time.time() - t0 < 30:
            time.sleep(0.05)
        assert said and "another process is building" in said[0], said
        assert not entered.is_set() and os.path.exists(os.path.join(folder, "lock"))
    finally:
        open(folder + ".go", "w").close()
        t.join(timeout=30)
        proc.wait(timeout=30)
    assert entered.is_set() and saw == [False] and len(said) == 1, (said, saw)


def _assert_locked(folder):
    """Someone (this process) holds the folder's build lock: flock on <folder>.lock would block."""
    import fcntl
    fd = os.open(folder + ".lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_the_first_use_build_runs_under_the_build_lock(tmp_path, monkeypatch):
    """build() compiles (here: a stand-in) holding the folder's build lock, after clearing a
    stale FileBaton file; `clean` empties the folder under the lock too."""
    monkeypatch.setattr(_build, "_torch_uses_file_baton", lambda: True)
    seen = {}

    def fake_build_in(folder, cuda, plan, args, arch, env, echo, built_by):
        _assert_locked(folder)
        seen.update(folder=folder, files=sorted(os.listdir(folder)), jobs=env["MAX_JOBS"])
        return os.path.join(folder, "_C.so"), {}

    monkeypatch.setattr(_build, "_build_in", fake_build_in)
    said = []
    lib, _ = _build.build(root=str(tmp_path), echo=said.append, env=dict(os.environ, MAX_JOBS="3"))
    folder = seen["folder"]
    assert lib == os.path.join(folder, "_C.so") and seen["files"] == [] and seen["jobs"] == "3"
    for name in ("lock", "old.o"):
        open(os.path.join(folder, name), "w").close()
    _build.build(root=str(tmp_path), echo=said.append)
    assert seen["files"] == ["old.o"]                      # the stale baton removed
    assert any("left by a build that was killed" in s for s in said), said
    _build.build(root=str(tmp_path), echo=said.append, clean=True)
    assert seen["files"] == []


def test_the_emulator_builds_under_the_build_lock(tmp_path, monkeypatch):
    """tests/cuda_emu's torch-extension build holds the package's build lock on its folder, so a
    stale FileBaton file (torch <= 2.13, a killed CI run) is removed instead of waited on."""
    from torch.utils import cpp_extension
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        from cuda_emu import build as emu
    finally:
        sys.path.remove(os.path.join(ROOT, "tests"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = cpp_extension._get_build_directory("unet_fast_cuda_emu", False)
    open(os.path.join(folder, "lock"), "w").close()
    real = emu._build_module
    monkeypatch.setattr(emu, "_build_module", lambda: types.SimpleNamespace(
        build_lock=lambda f, echo: real().build_lock(f, echo, file_baton=True)))
    seen = {}

    def fake_load(name, **kw):
        _assert_locked(folder)
        seen.update(name=name, files=os.listdir(folder))
        return "module"

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    if emu.cuda_include_dir() is None:
        pytest.skip("needs the CUDA toolkit's headers")
    assert emu.load() == "module"
    assert seen == {"name": "unet_fast_cuda_emu", "files": []}   # the stale baton removed, locked


# ------------------------------------------------------------------ the record
def test_record_roundtrip_and_mismatch(tmp_path):
    lib = tmp_path / "_C.cpython-311-x86_64-linux-gnu.so"
    lib.write_bytes(b"x" * 10)
    csrc = _build.csrc_dir()
    rec = _build.make_record("why", False, "install", _build.extension_args(csrc, False), csrc, None)
    path = _build.write_record(str(lib), rec)
    assert path == str(tmp_path / "_C.cpython-311-x86_64-linux-gnu.build.json")
    back = _build.read_record(str(lib))
    assert back["torch"] == TV and back["torch_cuda"] == TC and back["cuda_kernels"] is False
    assert _build.mismatch(back, TV, TC) is None
    msg = _build.mismatch(back, "2.99.0+cu999", "99.9")
    assert TV in msg and "2.99.0+cu999" in msg
    (tmp_path / os.path.basename(path)).write_text("{not json")
    assert _build.read_record(str(lib)) is None


def test_ninja_steps_are_shortened():
    assert _build._step_name("/usr/local/cuda/bin/nvcc --x -c /a/b/csrc/cuda/conv3x3_relu_kernel.cu "
                             "-o conv3x3_relu_kernel.cuda.o") == "compiling cuda/conv3x3_relu_kernel.cu"
    assert _build._step_name("c++ -MMD -c /a/csrc/unet_fast.cpp -o unet_fast.o") == "compiling unet_fast.cpp"
    assert _build._step_name("c++ a.o b.o -shared -o _C.so") == "linking _C.so"


# ------------------------------------------------------------------ what the loader says
@pytest.fixture
def fresh_backend(monkeypatch, tmp_path):
    """The cuda backend's loader state, saved and restored; no cached builds; the real extension
    (if any) untouched."""
    monkeypatch.setattr(cuda_backend, "_EXT", {"path": None, "record": None, "origin": None,
                                               "rejected": [], "failures": []})
    monkeypatch.setattr(cuda_backend, "_LOAD_ERROR", None)
    monkeypatch.setattr(cuda_backend, "_kernels", {})
    monkeypatch.setattr(_build, "find_cached", lambda *a, **k: [])
    monkeypatch.setattr(cuda_backend, "_installed_library", lambda: None)
    monkeypatch.setenv("UNET_FAST_EXT_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(_dispatch, "_used", set())
    return tmp_path


def _fake_installed(monkeypatch, tmp_path, **record):
    lib = tmp_path / "_C.cpython-311-x86_64-linux-gnu.so"
    lib.write_bytes(b"not a library")
    csrc = _build.csrc_dir()
    cuda = record.pop("cuda_kernels", True)
    rec = _build.make_record(record.pop("why", "CUDA + C++ CPU kernels"), cuda, "install",
                             _build.extension_args(csrc, False), csrc, None)
    rec.update(record)
    _build.write_record(str(lib), rec)
    monkeypatch.setattr(cuda_backend, "_installed_library", lambda: str(lib))
    return str(lib)


def test_extension_for_another_torch_is_not_loaded_and_said_plainly(fresh_backend, monkeypatch, capsys):
    lib = _fake_installed(monkeypatch, fresh_backend, torch="2.11.0+cu128", torch_cuda="12.8")
    opened = []
    monkeypatch.setattr(cuda_backend, "_open", lambda *a: opened.append(a))
    cuda_backend._load()
    assert opened == []                           # never dlopen'ed
    reason = uf.backends.available()["cuda"]
    assert "2.11.0+cu128" in reason and TV in reason and lib in reason
    assert "unet-fast build-ext" in reason and "pip install --no-build-isolation" in reason
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cuda    unavailable:" in out and "cuda    available" not in out
    assert f"not loaded: {lib}: it was built against torch 2.11.0+cu128" in out
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["extension"]["rejected"][0]["path"] == lib and not info["extension"]["loaded"]
    # the first use with first-use builds off: the same reason, as an error
    monkeypatch.setenv("UNET_FAST_JIT", "0")
    with pytest.raises(uf.BackendUnavailable, match="2.11.0"):
        uf.ops.crop_concat(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 2, 2), backend="cuda")
    # "auto" on a CUDA device says it once
    with pytest.warns(RuntimeWarning, match="2.11.0"):
        cuda_backend._on_use(False)


def test_extension_that_fails_to_load_says_which_torch_it_needs(fresh_backend, monkeypatch):
    lib = _fake_installed(monkeypatch, fresh_backend, torch=TV, torch_cuda=TC)

    def fail(path, origin):
        raise ImportError("libc10_cuda.so: cannot open shared object file")

    monkeypatch.setattr(cuda_backend, "_open", fail)
    cuda_backend._load()
    reason = uf.backends.available()["cuda"]
    assert "libc10_cuda.so" in reason and lib in reason and f"built against torch {TV}" in reason
    assert "unet-fast build-ext" in reason


def test_cpp_only_build_is_said_plainly(fresh_backend, monkeypatch, capsys):
    why = "C++ CPU kernels only, no CUDA kernels: no CUDA toolkit was found (set CUDA_HOME ...)"
    lib = _fake_installed(monkeypatch, fresh_backend, torch=TV, torch_cuda=TC, cuda_kernels=False,
                          why=why)
    monkeypatch.setattr(cuda_backend, "_open", lambda *a: None)
    monkeypatch.setattr(cuda_backend, "_register_impls", lambda: None)
    cuda_backend._kernels.update({("crop_concat", "cuda"): False, ("crop_concat", "cpu"): True})
    cuda_backend._load()
    assert uf.backends.available()["cuda"] is None   # its CPU kernels work
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cuda    available for CPU tensors only" in out
    assert f"extension unet_fast._C: {lib}" in out and "kernels: C++ CPU only" in out
    assert f"built against: torch {TV}" in out and "no CUDA toolkit was found" in out
    assert "UNET_FAST_FORCE_CUDA=1 unet-fast build-ext" in out
    # the first use on a CUDA tensor
    t = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    msg = cuda_backend._supports("crop_concat")(t, t)
    assert "C++ CPU kernels only" in msg and "no CUDA toolkit" in msg and "unet-fast build-ext" in msg
    with pytest.warns(RuntimeWarning, match="C\\+\\+ CPU kernels only"):
        cuda_backend._on_use(False)


def test_an_older_build_without_record_still_loads(fresh_backend, monkeypatch, capsys):
    lib = fresh_backend / "_C.so"
    lib.write_bytes(b"x")
    monkeypatch.setattr(cuda_backend, "_installed_library", lambda: str(lib))
    monkeypatch.setattr(cuda_backend, "_open", lambda *a: None)
    monkeypatch.setattr(cuda_backend, "_register_impls", lambda: None)
    cuda_backend._kernels.update({("crop_concat", "cuda"): True})
    cuda_backend._load()
    assert uf.backends.available()["cuda"] is None
    assert cli.main(["info"]) == 0
    assert "built against: unknown (no build record)" in capsys.readouterr().out


def test_a_cached_cuda_build_wins_over_an_installed_cpp_only_one(fresh_backend, monkeypatch):
    inst = _fake_installed(monkeypatch, fresh_backend, torch=TV, torch_cuda=TC, cuda_kernels=False)
    cached = str(fresh_backend / "cache_C.so")
    monkeypatch.setattr(_build, "find_cached", lambda *a, **k: [(cached, {"cuda_kernels": True})])
    cands, rejected = cuda_backend._candidates()
    assert [c[0] for c in cands] == [cached, inst] and rejected == []


# ------------------------------------------------------------------ who starts a build
def test_only_an_explicit_request_starts_a_build(fresh_backend, monkeypatch, capsys):
    _fake_installed(monkeypatch, fresh_backend, torch="2.11.0+cu128", torch_cuda="12.8")
    monkeypatch.setattr(cuda_backend, "_open", lambda *a: None)
    monkeypatch.setattr(cuda_backend, "_register_impls", lambda: None)
    cuda_backend._load()
    builds = []

    def fake_build(**kw):
        builds.append(kw)
        return str(fresh_backend / "built.so"), {"torch": TV, "torch_cuda": TC, "cuda_kernels": False}

    monkeypatch.setattr(_build, "build", fake_build)
    monkeypatch.delenv("UNET_FAST_JIT", raising=False)
    uf.ops.crop_concat(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 2, 2))   # auto, CPU: no build
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cuda_backend._on_use(False)                                        # auto, CUDA: no build
    assert builds == []
    for _ in range(2):  # the fake build loads nothing new: whatever the op then does, it built once
        try:
            uf.ops.crop_concat(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 2, 2), backend="cuda")
        except uf.BackendUnavailable:
            pass
    assert len(builds) == 1
    err = capsys.readouterr().err
    assert "backend='cuda' was asked for" in err and "2.11.0+cu128" in err
    assert cuda_backend._EXT["origin"] == "cache" and cuda_backend._LOAD_ERROR is None


def test_first_use_build_can_be_turned_off(fresh_backend, monkeypatch):
    cuda_backend._load()
    assert "not built for" in uf.backends.available()["cuda"]
    monkeypatch.setattr(_build, "build", lambda **kw: pytest.fail("built with UNET_FAST_JIT=0"))
    monkeypatch.setenv("UNET_FAST_JIT", "0")
    with pytest.raises(uf.BackendUnavailable, match="UNET_FAST_JIT=0"):
        uf.ops.crop_concat(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 2, 2), backend="cuda")


def test_a_failed_first_use_build_is_the_reason(fresh_backend, monkeypatch):
    cuda_backend._load()

    def broken(**kw):
        raise _build.BuildError("nvcc fell over (full log: /x/build.log)")

    monkeypatch.setattr(_build, "build", broken)
    monkeypatch.delenv("UNET_FAST_JIT", raising=False)
    with pytest.raises(uf.BackendUnavailable, match="nvcc fell over"):
        uf.ops.crop_concat(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 2, 2), backend="cuda")
