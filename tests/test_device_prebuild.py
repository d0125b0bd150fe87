"""tools/device_prebuild.py: the extension built here for the device tool's GPU machines is used
there only when it fits (Python, torch, sources, GPU) and loads; else it is removed and the suite
builds. Tested with made-up records, a library that cannot load, and (where this checkout has
one) the real extension; the suite's preflight and time plan with a carried folder."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(REPO, "benchmarks", "gpu_suite.sh")
_spec = importlib.util.spec_from_file_location("device_prebuild", os.path.join(REPO, "tools", "device_prebuild.py"))
dp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dp)
_build = dp._build

TV, TC = "2.11.0+cu130", "13.0"


def _record(**over):
    rec = {"torch": TV, "torch_cuda": TC, "python": _build.python_tag(), "cuda_kernels": True,
           "sources_hash": _build.sources_hash(os.path.join(REPO, "csrc")), "arch_list": "9.0",
           "built_at": "2026-12-07T03:00:00", "why": "CUDA + C++ CPU kernels", "cxx": ["-O3"]}
    rec.update(over)
    return rec


def _carried(tmp_path, rec=None, payload=b"not a library", manifest=None):
    """A folder laid out as `build` leaves it: unet_fast/<library for this Python> + its record."""
    folder = tmp_path / "device"
    (folder / "unet_fast").mkdir(parents=True)
    lib = folder / "unet_fast" / dp.library_name()
    lib.write_bytes(payload)
    if rec is not None:
        _build.write_record(str(lib), rec)
    if manifest is not None:
        (folder / dp.MANIFEST).write_text(json.dumps(manifest))
    return folder, lib


def _fits(folder, capability=(9, 0)):
    return dp.fits(str(folder), REPO, TV, TC, capability)


def test_a_fitting_library_fits(tmp_path):
    folder, lib = _carried(tmp_path, _record(), manifest={"commit": "abc1234"})
    status, line = _fits(folder)
    assert status == 0, line
    assert str(lib) in line and "torch 2.11.0+cu130" in line and "from abc1234" in line
    assert _fits(folder, capability=None)[0] == 0      # no GPU visible: the architecture unchecked


@pytest.mark.parametrize("over, capability, words", [
    ({"torch": "2.14.1+cu130"}, (9, 0), ["built against torch 2.14.1+cu130", "this is torch 2.11.0+cu130"]),
    ({"torch_cuda": "12.8"}, (9, 0), ["CUDA 12.8"]),
    ({"python": "cpython-399"}, (9, 0), ["for cpython-399"]),
    ({"cuda_kernels": False, "why": "no CUDA toolkit"}, (9, 0), ["no CUDA kernels", "no CUDA toolkit"]),
    ({"sources_hash": "0" * 64}, (9, 0), ["other sources", "from deadbee", "device_prebuild.py build"]),
    ({}, (8, 0), ["compute capability 9.0", "the GPU here is 8.0"]),
    ({"arch_list": "8.0;9.0"}, (10, 0), ["the GPU here is 10.0"]),
])
def test_a_library_that_does_not_fit_says_why(tmp_path, over, capability, words):
    folder, _ = _carried(tmp_path, _record(**over), manifest={"commit": "deadbee"})
    status, line = _fits(folder, capability)
    assert status == dp.NOT_FIT, line
    for w in words:
        assert w in line, line


def test_arch_lists_are_read_as_setup_py_writes_them():
    assert dp._arch_has("9.0", (9, 0)) and dp._arch_has("8.0;9.0", (9, 0)) and dp._arch_has("9.0a", (9, 0))
    assert dp._arch_has("8.0 9.0+PTX", (9, 0)) and dp._arch_has("90", (9, 0))
    assert not dp._arch_has("8.0", (9, 0)) and not dp._arch_has(None, (9, 0)) and not dp._arch_has("9.0", (10, 0))


def test_nothing_for_this_python_or_no_record(tmp_path):
    folder = tmp_path / "device"
    (folder / "unet_fast").mkdir(parents=True)
    (folder / "unet_fast" / "_C.cpython-399-x86_64-linux-gnu.so").write_bytes(b"x")
    status, line = _fits(folder)
    assert status == dp.NONE_HERE and "cpython-399" in line and _build.python_tag() in line, line
    folder2, lib = _carried(tmp_path / "b")
    status, line = _fits(folder2)
    assert status == dp.NOT_FIT and "no readable build record" in line, line


def test_check_and_use_of_a_missing_folder(tmp_path, capsys):
    assert dp.main(["check", "--dir", str(tmp_path / "nope")]) == dp.NONE_HERE
    assert "is not a folder" in capsys.readouterr().out
    assert dp.main(["use", "--dir", str(tmp_path / "nope")]) == dp.NONE_HERE


def _root(tmp_path):
    """A checkout to install into: the package without any library, and csrc/."""
    root = tmp_path / "root"
    shutil.copytree(os.path.join(REPO, "unet_fast"), root / "unet_fast",
                    ignore=shutil.ignore_patterns("_C.*", "__pycache__"))
    os.symlink(os.path.join(REPO, "csrc"), root / "csrc")
    return root


def test_use_removes_a_library_that_does_not_load(tmp_path, monkeypatch):
    folder, lib = _carried(tmp_path, _record(torch=torch.__version__, torch_cuda=torch.version.cuda))
    root = _root(tmp_path)
    monkeypatch.setattr(dp, "fits", lambda f, r: (0, f"{lib} fits"))   # this torch's GPU aside
    said = []
    assert dp.use(str(folder), str(root), echo=said.append) == dp.NOT_FIT
    assert "does not load here" in said[-1] and "build instead" in said[-1], said
    assert "invalid ELF header" in said[-1] or "ImportError" in said[-1], said
    assert not list((root / "unet_fast").glob("_C.*")), "the unloadable copy and its record are removed"
    assert lib.exists(), "the carried library is left as it was"
    # a library already there (built on a warm machine) is put back as it was
    before = root / "unet_fast" / dp.library_name()
    before.write_bytes(b"built here before")
    _build.write_record(str(before), {"built_by": "install"})
    assert dp.use(str(folder), str(root), echo=said.append) == dp.NOT_FIT
    assert before.read_bytes() == b"built here before"
    assert _build.read_record(str(before))["built_by"] == "install"
    assert sorted(p.name for p in (root / "unet_fast").glob("_C.*")) == sorted(
        [before.name, os.path.basename(_build.record_path(str(before)))])


def test_use_refuses_what_does_not_fit_without_copying(tmp_path):
    folder, _ = _carried(tmp_path, _record(torch="2.0.0"))
    root = _root(tmp_path)
    said = []
    assert dp.use(str(folder), str(root), echo=said.append) == dp.NOT_FIT
    assert "does not fit" in said[-1]
    assert not list((root / "unet_fast").glob("_C.*"))


def _real_library():
    """This checkout's own extension with CUDA kernels (built by `make setup` / CI), or skip."""
    lib = os.path.join(REPO, "unet_fast", dp.library_name())
    rec = _build.read_record(lib) if os.path.isfile(lib) else None
    if rec is None or not rec.get("cuda_kernels") or \
            _build.mismatch(rec, torch.__version__, torch.version.cuda) is not None or \
            rec.get("sources_hash") != _build.sources_hash(os.path.join(REPO, "csrc")):
        pytest.skip("needs this checkout's extension built with CUDA kernels from these sources "
                    "(make setup with UNET_FAST_FORCE_CUDA=1)")
    return lib, rec


def _carry_real(tmp_path):
    """The real library and its record, laid out as `build` leaves them."""
    lib, rec = _real_library()
    folder = tmp_path / "device"
    (folder / "unet_fast").mkdir(parents=True)
    shutil.copy(lib, folder / "unet_fast")
    shutil.copy(_build.record_path(lib), folder / "unet_fast")
    return lib, rec, folder


def test_use_installs_a_library_that_fits_and_loads(tmp_path):
    lib, rec, folder = _carry_real(tmp_path)
    root = _root(tmp_path)
    dest = root / "unet_fast" / dp.library_name()
    dest.write_bytes(b"an older build")                  # replaced, and no copy of it left
    said = []
    assert dp.use(str(folder), str(root), echo=said.append) == 0, said
    assert sorted(p.name for p in (root / "unet_fast").glob("_C.*")) == sorted(
        [dest.name, os.path.basename(_build.record_path(str(dest)))])
    assert "using" in said[-1] and str(dest) in said[-1], said
    assert "CUTLASS" not in said[-1]      # no manifest: the CUTLASS units not asked for
    assert dest.read_bytes() == open(lib, "rb").read()
    assert _build.read_record(str(dest)) == rec
    # and what the probe saw is that very file, with its CUDA kernels
    seen = dp.probe(sys.executable, str(root))
    assert dp.loads_as_built(seen, str(dest), False) is None, seen


def test_the_probe_tells_another_library_from_the_one_installed(tmp_path):
    seen = {"loaded": True, "path": "/elsewhere/_C.so", "kernels": "CUDA + C++ CPU", "cutlass": True}
    assert "instead" in dp.loads_as_built(seen, str(tmp_path / "_C.so"), True)
    seen["path"] = str(tmp_path / "_C.so")
    assert dp.loads_as_built(seen, seen["path"], True) is None
    assert "C++ CPU only" in dp.loads_as_built(dict(seen, kernels="C++ CPU only"), seen["path"], True)
    assert "CUTLASS" in dp.loads_as_built(dict(seen, cutlass=False), seen["path"], True)
    assert dp.loads_as_built(dict(seen, cutlass=False), seen["path"], False) is None
    failed = {"loaded": False, "failed": [{"path": "/x/_C.so", "error": "OSError: GLIBC_2.38 not found"}]}
    assert "GLIBC_2.38 not found" in dp.loads_as_built(failed, "/x/_C.so", True)


def test_build_asks_for_the_device_python_by_name(tmp_path):
    with pytest.raises(SystemExit, match=r"--python: no Python 3\.99 found .*Python 3\.\d+\).*pass --python"):
        dp.find_python("3.99", sys.executable)
    assert dp.find_python("%d.%d" % sys.version_info[:2], sys.executable) == sys.executable
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "device_prebuild.py"), "build", "--jobs", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--jobs must be at least 1" in r.stderr


def test_symbol_needs_reads_the_newest_versions():
    ls = shutil.which("ls")
    if ls is None or shutil.which("objdump") is None:
        pytest.skip("needs ls and objdump")
    needs = dp.symbol_needs(ls)
    assert "GLIBC" in needs and all(p.isdigit() for p in needs["GLIBC"].split(".")), needs
    assert dp.symbol_needs(os.path.join(REPO, "setup.py")) == {}


def _suite_env():
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    return env


def test_the_suite_plans_with_a_fitting_prebuilt_library(tmp_path):
    lib, rec, folder = _carry_real(tmp_path)
    r = subprocess.run(["bash", SUITE, "--schedule", "--prebuilt", str(folder)], cwd=REPO,
                       env=_suite_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "prebuilt extension     ok       " in r.stdout and "fits (" in r.stdout, r.stdout
    assert "tools/device_prebuild.py use --dir " + str(folder) in r.stdout
    assert "worst case after a 30 s build" in r.stdout
    # a stale one: the plan builds, and says why
    rec2 = dict(rec, sources_hash="0" * 64)
    _build.write_record(str(folder / "unet_fast" / dp.library_name()), rec2)
    r = subprocess.run(["bash", SUITE, "--schedule", "--prebuilt", str(folder)], cwd=REPO,
                       env=_suite_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "prebuilt extension     MISSING" in r.stdout and "other sources" in r.stdout, r.stdout
    assert "device_prebuild.py use" not in r.stdout and "worst case after a 180 s build" in r.stdout
    # --no-prebuilt and --skip-build leave it alone
    for flag in ("--no-prebuilt", "--skip-build"):
        r = subprocess.run(["bash", SUITE, "--schedule", "--prebuilt", str(folder), flag], cwd=REPO,
                           env=_suite_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "prebuilt extension" not in r.stdout, r.stdout + r.stderr
