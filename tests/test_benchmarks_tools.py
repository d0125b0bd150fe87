"""The benchmark tooling, tested without a GPU: the GPU suite's dry mode and argument checks, the
layer-shape derivation and plan, the summary and comparison scripts on synthetic results, and a
smoke run of `pytest benchmarks/` with the GPU benchmark code simulated on the CPU."""
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")
SUITE = os.path.join(BENCH, "gpu_suite.sh")


def _load(name):
    """A module of benchmarks/ (harness, summarize, compare)."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    mod = importlib.import_module(name)
    assert os.path.dirname(os.path.abspath(mod.__file__)) == BENCH, mod.__file__
    return mod


def _env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)   # benchmarks never time the interpreter
    env.pop("UNET_FAST_BACKEND", None)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHON"] = sys.executable
    env.pop("OUT", None)
    return env


def _suite(*args, timeout=120):
    return subprocess.run(["bash", SUITE, *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


class _Background:
    """The three slow subprocesses of this file, started together (they overlap on a small machine)."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.dry_out = tmp / "dry_res"
        self.sim_res = tmp / "sim_res"
        expr = ("ceiling or (test_layer and down.3.2-conv3x3_relu-fwd-bf16) or "
                "(test_layer and up.0.cat-crop_concat-fwd-) or (test_model and infer and eager_cl) or "
                "(test_dispatch_overhead and crop_concat and not cuda)")
        self.procs = {
            "dry": ["bash", SUITE, "--dry-run", "--quick", "--out", str(self.dry_out)],
            "sim": ["bash", SUITE, "--simulate", "--quick", "--skip-build", "--skip-tests", "--skip-sanitizer",
                    "--out", str(self.sim_res), "--bench-args",
                    f"--bench-suite=all --bench-providers=eager,eager_cl,triton,auto -k '{expr}'"],
        }
        if not torch.cuda.is_available():
            self.procs["nogpu"] = [sys.executable, "-m", "pytest", "benchmarks/test_bench_layers.py",
                                   "benchmarks/test_bench_models.py", "benchmarks/test_bench_ceilings.py",
                                   "-q", "-rs", "-p", "no:cacheprovider"]
        self.running = {k: subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
                        for k, cmd in self.procs.items()}
        self.done = {}

    def result(self, key, timeout=170):
        if key not in self.done:
            p = self.running[key]
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            self.done[key] = subprocess.CompletedProcess(self.procs[key], p.returncode, out, err)
        return self.done[key]

    def close(self):
        for p in self.running.values():
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.fixture(scope="module")
def background(tmp_path_factory):
    bg = _Background(tmp_path_factory.mktemp("bench_tools"))
    yield bg
    bg.close()


# --------------------------------------------------------------------------- gpu_suite.sh
def test_gpu_suite_dry_run_prints_the_plan(background):
    out = background.dry_out
    r = background.result("dry")
    assert r.returncode == 0, r.stdout + r.stderr
    text = r.stdout
    for stage in ("1. build", "2. tests", "3. sanitizer", "4. bench", "5. model", "6. summary"):
        assert stage in text
    assert "pip install --no-build-isolation --no-deps" in text and "MAX_JOBS=" in text
    # the tests stage in pytest-xdist workers (pinned in requirements-dev.txt; in the GPU image)
    assert re.search(r"pytest-xdist +ok +[\d.]+: the tests stage runs 4 workers", text), text
    tests_line = text.split("2. tests")[1].split("\n")[0]
    assert "-n 4 --dist load --maxschedchunk 16" in tests_line
    # what a GPU makes moot, and the host-side tooling's tests (CI runs them), are left out there
    for f in ("test_cuda_emulated", "test_triton_aot", "test_benchmarks_tools", "test_build", "test_device_prebuild"):
        assert f"--ignore=tests/{f}.py" in tests_line, tests_line
    assert "--ignore=tests/test_cuda_backend.py" not in tests_line
    assert "--benchmark-json=" + str(out) + "/results.json" in text
    assert "tools/measure_kernels.py --out " + str(out) in text      # the model next to the GPU
    assert "tier  1  model valid572-b8  train bf16" in text          # the plan, in run order
    assert "GPU benchmark cases" in text and "collects 0 " not in text
    assert "dry run: arguments, paths and scripts are fine" in text
    assert not out.exists(), "a dry run writes nothing"
    if not torch.cuda.is_available():
        assert "CUDA GPU               MISSING" in text
    # the CUTLASS headers the sm_90a units need (pinned in requirements-dev.txt here; carried as a
    # wheel in .whl/ to the GPU machines, which the build stage unpacks)
    import importlib.util
    if importlib.util.find_spec("cutlass_library") is not None and not os.environ.get("CUTLASS_HOME"):
        assert "CUTLASS                ok       nvidia-cutlass 4.2.0.0" in text, text


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument: --bogus"),
    (["--budget", "ten"], "--budget must be a whole number"),
    (["--budget", "30"], "at least 120 s"),
    (["--level", "fast"], "--level must be quick, default or full"),
    (["--jobs", "0"], "--jobs must be a positive number"),
    (["--out"], "--out needs a folder"),
    (["--out", "--quick"], "--out needs a folder"),
    (["--model-timeout", "5"], "--model-timeout must be >= 30 s"),
    (["--tests-workers", "0"], "--tests-workers must be a positive number"),
    (["--assume-build", "soon"], "--assume-build must be a whole number"),
    (["--prebuilt"], "--prebuilt needs a folder"),
])
def test_gpu_suite_rejects_bad_arguments(args, message):
    r = _suite("--dry-run", *args, timeout=30)
    assert r.returncode == 2
    assert message in r.stderr


def test_gpu_suite_help():
    r = _suite("--help", timeout=30)
    assert r.returncode == 0 and "--dry-run" in r.stdout and "--quick" in r.stdout


def test_gpu_suite_checks_the_results_path(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    r = _suite("--dry-run", "--out", str(f), "--skip-bench", timeout=30)
    assert r.returncode == 2, r.stdout
    assert "exists and is not a folder" in r.stderr
    r = _suite("--dry-run", "--out", str(f / "below_a_file"), timeout=30)
    assert r.returncode == 2 and "is not a writable folder" in r.stderr


def _schedule(*args, sanitizer=True):
    """The suite's worst-case time plan (--schedule): {stage: timeout s or None (skipped)} and the
    time by which the run ends."""
    env = _env()
    if sanitizer:   # a stand-in, so that the plan has the sanitizer stage on any machine
        env["COMPUTE_SANITIZER"] = "/bin/true"
    r = subprocess.run(["bash", SUITE, "--schedule", *args, *([] if sanitizer else ["--skip-sanitizer"])],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    line = re.search(r"^  time +(.*)$", r.stdout, re.M).group(1)
    stages = {}
    for name, lim in re.findall(r"(tests|sanitizer|bench|model-tma|model) (\d+ s|skipped)", line):
        stages[name] = None if lim == "skipped" else int(lim.split()[0])
    return stages, int(re.search(r"ends by (\d+) s", line).group(1)), line


@pytest.mark.parametrize("budget, build, sanitizer", [
    (570, 180, True), (570, 0, True), (570, 400, True), (570, 480, True), (300, 120, False),
    (900, 180, True),
])
def test_gpu_suite_time_budget_is_a_ceiling(budget, build, sanitizer):
    """The device tool runs a command for at most 10 minutes and lends 15 in all: the suite's
    budget must hold even when every stage runs to its limit (plus timeout's 15 s of grace), the
    parity tests first, no stage given less than its floor (60 s) instead of being skipped."""
    stages, end, line = _schedule("--budget", str(budget), "--assume-build", str(build),
                                  sanitizer=sanitizer)
    assert end <= budget, line
    # the later stages' floors plus grace and the summary's 40 s
    assert sum(lim + 15 for lim in stages.values() if lim) + build + 40 == end, line
    assert all(lim is None or lim >= 60 for lim in stages.values()), line
    assert stages["tests"] is None or stages["tests"] <= 240, line
    assert ("sanitizer" in stages) == sanitizer
    ran = [lim is not None for lim in stages.values()]
    assert ran == sorted(ran, reverse=True), line   # priority order: nothing runs after a skip
    if (budget, build) == (570, 180):   # the first lease's one command (benchmarks/README.md)
        assert stages == {"tests": 185, "sanitizer": 60, "bench": 60, "model": None,
                          "model-tma": None}, line
    if (budget, build) == (570, 480):   # 90 s left: under the tests' floor and the summary's 40
        assert not any(stages.values()) and end == 480 + 40, line


def test_gpu_suite_without_a_budget_runs_each_stage_to_its_timeout():
    r = subprocess.run(["bash", SUITE, "--schedule", "--budget", "0"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "no time budget (--budget 0)" in r.stdout, r.stdout


# --------------------------------------------------------------------------- fit_return.py
def _fill(root, files):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fit_return_packs_what_the_device_would_not_bring_back(tmp_path):
    """More than 8 files, one too deep, one with a space in its name, one too big: the 7 first by
    priority stay, the rest is in more.tar.gz, byte for byte."""
    import tarfile
    fit_return = _load("fit_return")
    root = tmp_path / "out"
    files = {n: n.encode() * 3 for n in ("log.txt", "stages.tsv", "summary.md", "results.json",
                                         "per_layer.png", "model_vs_measured.md",
                                         "model_vs_measured.json", "tma/model_vs_measured.md",
                                         "tma/model_vs_measured.json")}
    files.update({"a/b/c/deep.txt": b"deep", "odd name.txt": b"odd", "big.bin": b"x" * 5000})
    _fill(root, files)
    lines = []
    left = fit_return.fit(str(root), max_bytes=4096, log=lines.append)
    after = _tree(root)
    assert sorted(after) == sorted(left) and len(after) == 8
    assert set(after) == {"summary.md", "stages.tsv", "log.txt", "results.json",
                          "model_vs_measured.json", "model_vs_measured.md", "per_layer.png",
                          "more.tar.gz"}
    assert all(after[k] == files[k] for k in after if k != "more.tar.gz")
    assert not (root / "tma").exists() and not (root / "a").exists()   # emptied folders go too
    with tarfile.open(root / "more.tar.gz") as tar:
        packed = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert packed == {k: v for k, v in files.items() if k not in after}
    assert any("a/b/c/deep.txt" in x and "3 folders down" in x for x in lines), lines
    assert any("odd name.txt" in x and "characters other than" in x for x in lines), lines
    assert any("big.bin" in x and "5000 bytes" in x for x in lines), lines
    # a second run finds the folder within the limits
    assert fit_return.fit(str(root), max_bytes=4096, log=lines.append) == sorted(left)
    assert "nothing packed" in lines[-1]


def test_fit_return_leaves_a_folder_within_the_limits_alone(tmp_path):
    fit_return = _load("fit_return")
    files = {"summary.md": b"s", "log.txt": b"l", "tma/model_vs_measured.md": b"t"}
    _fill(tmp_path, files)
    assert sorted(fit_return.fit(str(tmp_path), log=lambda _: None)) == sorted(files)
    assert _tree(tmp_path) == files
    with pytest.raises(SystemExit) as e:
        fit_return.main([str(tmp_path / "nowhere")])
    assert e.value.code == 2
    with pytest.raises(ValueError, match="max_files must be at least 2"):
        fit_return.fit(str(tmp_path), max_files=1)


def test_gpu_suite_fits_its_results_to_what_the_device_brings_back(tmp_path):
    """A run into $OUT ends with fit_return: here $OUT already holds 7 files of an earlier
    command, so with the suite's log, stage table and summary it would send back 10."""
    out = tmp_path / "OUT"
    earlier = {f"earlier_{i}.txt": str(i).encode() for i in range(7)}
    _fill(out, earlier)
    env = dict(_env(), OUT=str(out))
    r = subprocess.run(["bash", SUITE, "--simulate", "--skip-build", "--skip-tests", "--skip-sanitizer",
                        "--skip-bench", "--skip-model"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    after = sorted(os.listdir(out))
    assert len(after) == 8 and {"summary.md", "stages.tsv", "log.txt", "more.tar.gz"} <= set(after), after
    assert "packed into more.tar.gz" in r.stdout


# --------------------------------------------------------------------------- harness
def test_layer_shapes_are_derived_from_the_model():
    h = _load("harness")
    specs = h.derive_layers(h.PAPER, 8)
    uses = {}
    for s in specs:
        uses[s.op] = uses.get(s.op, 0) + len(s.uses)
    # docs/design.md, section 1: 23 convolutions (18 3x3, 4 transposed 2x2, one 1x1), 4 pools, 4 concats
    assert uses == {"conv3x3_relu": 18, "conv3x3_relu_pool": 4, "max_pool2x2": 4, "crop_concat": 4,
                    "up_concat": 4, "concat_conv3x3_relu": 4, "conv_transpose2x2": 4, "conv1x1": 1,
                    "conv3x3_relu_conv1x1": 1}
    head = next(s for s in specs if s.op == "conv3x3_relu_conv1x1")
    assert head.layer == "up.3.conv.2+head" and head.shape("x") == (8, 64, 390, 390)
    assert head.shape("head_weight") == (2, 64, 1, 1) and head.padding == 0
    fused = next(s for s in specs if s.op == "concat_conv3x3_relu" and s.layer == "up.3.cat+conv.0")
    assert fused.shape("skip") == fused.shape("up") == (8, 64, 392, 392)
    assert fused.shape("weight") == (64, 128, 3, 3) and fused.padding == 0
    first = specs[0]
    assert first.op == "conv3x3_relu" and first.shape("x") == (8, 1, 572, 572) and not first.input_grad
    cat = next(s for s in specs if s.op == "crop_concat" and s.layer == "up.3.cat")
    assert cat.shape("skip") == (8, 64, 568, 568) and cat.shape("up") == (8, 64, 392, 392)
    # "same" at 512: the two 64->64 convs at full size share one shape
    same = h.derive_layers(h.SAME, 16)
    shared = next(s for s in same if s.layer == "down.0.2" and s.op == "conv3x3_relu")
    assert shared.uses == ("down.0.2", "up.3.conv.2") and shared.padding == 1
    # the unfused ops' FLOPs add up to the model's (both counted by torch.utils.flop_counter)
    toy = h.derive_layers(h.TOY_VALID, 2)
    unfused = [s for s in toy if s.op not in h.FUSED_OPS]
    for mode, mmode in (("fwd", "infer"), ("fwd+bwd", "train")):
        total = sum(len(s.uses) * h.layer_flops(s, mode) for s in unfused)
        assert total == h.model_flops(h.TOY_VALID, 2, mmode)


def test_plan_levels_and_budget():
    h = _load("harness")
    quick = h.plan_models("quick") + h.plan_layers("quick")
    default = h.plan_models("default") + h.plan_layers("default")
    assert {c.provider for c in quick} >= {"eager_cl", "triton", "cuda", "auto", "compile"}
    assert any(c.provider == "compile_max" and c.kind == "model" and c.mode == "train" for c in default)
    assert len(quick) < len(default) < len(h.plan_models("full") + h.plan_layers("full"))
    assert min(c.tier for c in default if c.kind == "model" and c.mode == "train" and c.dtype == "bf16") == 1
    ids = [c.id for c in default]
    assert len(ids) == len(set(ids))
    case = default[0]
    old = (h.Settings.deadline, h.Settings.budget)
    try:
        h.Settings.deadline, h.Settings.budget = 1000.0, 570
        assert h.budget_skip_reason(case, 1000.0 - case.est_s - 1) is None
        assert "time budget: not started" in h.budget_skip_reason(case, 1000.0 - case.est_s + 0.01)
        h.Settings.deadline = None
        assert h.budget_skip_reason(case, 1e12) is None
    finally:
        h.Settings.deadline, h.Settings.budget = old


# --------------------------------------------------------------------------- summarize / compare
def _bench(kind, name, median_ms, **info):
    info = dict(kind=kind, name=name, median_ms=median_ms, iqr_ms=median_ms * 0.01, **info)
    return {"name": f"test_{kind}[{name}]", "fullname": f"benchmarks/x.py::test_{kind}[{name}]",
            "group": name, "stats": {"median": median_ms / 1e3}, "extra_info": info}


def _synthetic(scale=None):
    scale = scale or {}
    b = []
    train = {"eager": 40, "eager_cl": 30, "compile": 28, "compile_max": 26, "triton": 20, "cuda": 22, "auto": 21}
    mem = {"eager_cl": 40 * 2**30, "triton": 30 * 2**30}
    for p, ms in train.items():
        ms *= scale.get(("train", p), 1.0)
        b.append(_bench("model", f"valid572-b8-train-bf16-{p}", ms, config="valid572-b8", mode="train", dtype="bf16",
                        provider=p, images_per_s=8 / (ms / 1e3), frac_peak=0.4, peak_mem_bytes=mem.get(p)))
    for p, ms in {"eager_cl": 10, "triton": 6}.items():
        b.append(_bench("model", f"valid572-b8-infer-bf16-{p}", ms, config="valid572-b8", mode="infer",
                        dtype="bf16", provider=p, images_per_s=8 / (ms / 1e3)))
    layers = [("down.0.2", "conv3x3_relu", {"eager_cl": 1.0, "triton": 0.9, "auto": 1.0}, None),
              ("down.0.pool", "max_pool2x2", {"eager_cl": 0.2, "cuda": 0.16}, 0.9),
              ("up.3.cat", "crop_concat", {"eager_cl": 0.3, "cuda": 0.25}, 0.8)]
    for layer, op, times, frac in layers:
        for p, ms in times.items():
            ms *= scale.get((layer, p), 1.0)
            b.append(_bench("layer", f"valid572-b8-{layer}-{op}-fwd-bf16-{p}", ms, config="valid572-b8",
                            layer=layer, uses=layer, op=op, shape="x=8x64x570x570", mode="fwd", dtype="bf16",
                            provider=p, bound="memory" if frac else "compute",
                            frac_peak=frac if frac and p != "eager_cl" else 0.5))
    b.append(_bench("ceiling", "copy", 0.7, provider="torch", gbps=3000.0))
    return {"machine_info": {"node": "gpu-box"}, "commit_info": {"id": "0123456789abcdef", "dirty": False},
            "datetime": "2026-11-24T12:00:00", "version": "5.3.1", "benchmarks": b,
            "unet_fast": {"env": {"gpu": "NVIDIA H100 80GB HBM3", "gpu_capability": "9.0", "gpu_sms": 132,
                                  "gpu_memory_gib": 79.2, "gpu_l2_bytes": 52428800, "torch": "2.11.0+cu130",
                                  "triton": "3.6.0", "cuda": "13.0", "cudnn": 91300, "python": "3.12.3"},
                          "ceilings": {"copy_gbps": 3000.0, "matmul_tflops": 790.0, "matmul_n": 8192,
                                       "matmul_dtype": "bfloat16", "device": "cuda"},
                          "settings": {"level": "default", "budget": 530, "providers": ["eager", "triton"]},
                          "skipped": [{"test": "a", "reason": "time budget: not started (needs ~150 s, 20 s of "
                                                             "the 530 s budget left)"}],
                          "failed": []}}


def test_summarize_writes_tables_chart_and_targets(tmp_path):
    summarize = _load("summarize")
    res = tmp_path / "run"
    res.mkdir()
    (res / "results.json").write_text(json.dumps(_synthetic()))
    (res / "stages.tsv").write_text("stage\tstatus\tseconds\tdetail\nbuild\tok\t80\tbuilt\ntests\tok\t100\t"
                                    "120 passed\n")
    assert summarize.main([str(res / "results.json"), "--stages", str(res / "stages.tsv")]) == 0
    md = (res / "summary.md").read_text()
    assert "NVIDIA H100 80GB HBM3" in md and "3.00 TB/s" in md and "790 TFLOP/s" in md
    assert "| build | ok | 80 | built |" in md
    assert "triton: 1.50x" in md                      # eager CL 30 ms / triton 20 ms, same run
    assert "| valid572-b8 | train | bf16 |" in md
    row = next(line for line in md.splitlines() if line.startswith("| valid572-b8 | train"))
    # beside the Triton step, the kernel model's prediction for it (docs/kernel_model.json)
    predicted = summarize.fmt_ms(summarize.kernel_model_ms("valid572-b8", "train"))
    assert f"400 img/s (20.0 ms; model {predicted} fwd+bwd)" in row
    assert "1.40x" in row and "1.30x" in row and "0.75" in row   # vs compile, vs max-autotune, memory
    # and beside the measured memory ratio the memory model's, of the same backend and step
    assert f"0.75 (model {summarize.memory_model_ratio('valid572', 8, 'triton'):.2f})" in row
    targets = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if " | met |" in line
               or "NOT met" in line or "no data" in line}
    assert "met" in targets["training step ≥ 1.3x eager (paper U-Net, b8, bf16)"]
    assert "NOT met" in targets["max-pool and crop-concat ≥ 85% of copy bandwidth (fwd)"]
    assert "1/2 layers" in targets["max-pool and crop-concat ≥ 85% of copy bandwidth (fwd)"]
    # the measured peak (30 / 40 GiB) beside the memory model's prediction for the same backend
    predicted = summarize.memory_model_ratio("valid572", 8, "triton")
    assert predicted is not None and 0 < predicted < 2
    assert f"0.75x (triton) (model: {predicted:.2f}x" in targets["peak training memory ≤ 0.8x eager"]
    assert "### valid572-b8 fwd" in md and "| down.0.2 | conv3x3_relu |" in md
    assert "time budget: not started" in md
    png = (res / "per_layer.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_memory_target_takes_the_leanest_of_ours_that_meet_the_speed_target(tmp_path):
    """auto_up (the up-convs recomputed) keeps less than triton; it is judged while it still meets
    the 1.3x training target, else the fastest's memory is."""
    summarize = _load("summarize")

    def memory_row(auto_up_ms):
        data = _synthetic()
        data["benchmarks"].append(_bench(
            "model", "valid572-b8-train-bf16-auto_up", auto_up_ms, config="valid572-b8",
            mode="train", dtype="bf16", provider="auto_up", images_per_s=8 / (auto_up_ms / 1e3),
            peak_mem_bytes=22 * 2**30))
        (tmp_path / "results.json").write_text(json.dumps(data))
        recs, meta = summarize.load(str(tmp_path))
        return dict((name, (value, st)) for name, value, st in summarize.targets(recs, meta))[
            "peak training memory ≤ 0.8x eager"]

    value, status = memory_row(21)            # 30 / 21 ms: 1.43x eager, 22 / 40 GiB
    assert value.startswith("0.55x (auto_up)") and status == "met"
    value, status = memory_row(25)            # 1.2x eager: the fastest (triton) is judged
    assert value.startswith("0.75x (triton)") and status == "met"


def test_memory_model_ratio_reads_the_step_asked_for(tmp_path):
    """The memory model's predictions by model, batch, provider and step (train or infer)."""
    summarize = _load("summarize")
    path = tmp_path / "memory_model.json"
    path.write_text(json.dumps([dict(
        model="valid572", batch=8,
        rows=[dict(provider="triton", ratio_to_eager=0.77)],
        infer_rows=[dict(provider="triton", ratio_to_eager=0.5)])]))
    assert summarize.memory_model_ratio("valid572", 8, "triton", path) == 0.77
    assert summarize.memory_model_ratio("valid572", 8, "triton", path, mode="infer") == 0.5
    assert summarize.memory_model_ratio("valid572", 8, "auto", path, mode="infer") is None
    assert summarize.memory_model_ratio("valid572", 1, "triton", path) is None
    assert summarize._mem_cell(3, 4, "valid572-b8", "train", "triton").startswith("0.75 (model ")
    assert summarize._mem_cell(None, 4, "cpu-toy", "infer", "triton") == "—"


def test_kernel_model_ms_reads_the_step_asked_for(tmp_path):
    """The kernel model's predicted Triton step by config and step (train or infer)."""
    summarize = _load("summarize")
    path = tmp_path / "kernel_model.json"
    path.write_text(json.dumps(dict(summary=dict(valid572=dict(
        predicted_s=0.0114, config=dict(batch=8), inference=dict(predicted_s=0.0035))))))
    assert summarize.kernel_model_ms("valid572-b8", "train", path) == pytest.approx(11.4)
    assert summarize.kernel_model_ms("valid572-b8", "infer", path) == pytest.approx(3.5)
    assert summarize.kernel_model_ms("valid572-b1", "train", path) is None   # another batch
    assert summarize.kernel_model_ms("same512-b16", "train", path) is None
    assert summarize.kernel_model_ms("cpu-toy", "train", path) is None
    assert summarize.kernel_model_ms("valid572-b8", "train", tmp_path / "none.json") is None
    # and the committed model has both steps of both configs
    for cfg in ("valid572-b8", "same512-b16"):
        for mode in ("train", "infer"):
            assert summarize.kernel_model_ms(cfg, mode) > 0, (cfg, mode)


def test_summarize_bad_input(tmp_path):
    summarize = _load("summarize")
    assert summarize.main([str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert summarize.main([str(tmp_path / "bad.json")]) == 2


def test_compare_reports_faster_and_slower(tmp_path, capsys):
    compare = _load("compare")
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "results.json").write_text(json.dumps(_synthetic()))
    newdata = _synthetic({("train", "triton"): 0.75, ("down.0.pool", "cuda"): 1.25, ("down.0.2", "triton"): 1.01})
    newdata["benchmarks"].append(_bench("layer", "valid572-b8-head-conv1x1-fwd-bf16-triton", 0.1, provider="triton"))
    (new / "results.json").write_text(json.dumps(newdata))
    assert compare.main([str(old), str(new), "--out", str(tmp_path / "cmp.md")]) == 0
    text = capsys.readouterr().out
    assert "1 faster, 1 slower" in text and "1 only in new" in text
    slower = text.split("## Slower")[1].split("## Faster")[0]
    assert "valid572-b8-down.0.pool-max_pool2x2-fwd-bf16-cuda" in slower and "1.25x" in slower
    faster = text.split("## Faster")[1]
    assert "valid572-b8-train-bf16-triton" in faster and "1.33x" in faster
    assert (tmp_path / "cmp.md").exists()
    assert compare.main([str(old), str(new), "--fail-on-slower"]) == 1
    assert compare.main([str(old), str(new), "--kind", "model", "--fail-on-slower"]) == 0
    assert compare.main([str(old), str(tmp_path / "nowhere")]) == 2


# --------------------------------------------------------------------------- pytest benchmarks/
def test_gpu_suite_simulated_end_to_end(background):
    """The suite's own stages without a GPU: the GPU benchmark code (layers, models, ceilings) run
    on the CPU at toy sizes with a slice of the CPU subset, then the summary. Every record carries
    the promised fields; the results folder holds the promised files."""
    res = background.sim_res
    r = background.result("sim")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert sorted(os.listdir(res)) == ["log.txt", "per_layer.png", "results.json", "stages.tsv", "summary.md"]
    stages = (res / "stages.tsv").read_text()
    assert "\nbench\tok\t" in stages and "\ntests\tskipped\t" in stages
    assert "\nmodel\tskipped\t0\t--simulate (it needs a GPU)" in stages
    data = json.loads((res / "results.json").read_text())
    recs = [b["extra_info"] for b in data["benchmarks"]]
    kinds = {x["kind"] for x in recs}
    assert {"ceiling", "layer", "model", "dispatch"} <= kinds, kinds
    for x in recs:
        assert x["median_ms"] > 0 and x["torch"] == torch.__version__ and "gpu" in x
    conv = [x for x in recs if x["kind"] == "layer" and x["op"] == "conv3x3_relu"]
    assert conv and all(x["flops"] > 0 and x["tflops"] > 0 and x["frac_peak"] > 0 for x in conv)
    assert all(x["rel_err_vs_fp32"] < 0.05 for x in conv)          # bf16 against fp32
    cat = [x for x in recs if x["kind"] == "layer" and x["op"] == "crop_concat"]
    assert cat and all(x["bytes"] > 0 and x["gbps"] > 0 for x in cat)
    model = [x for x in recs if x["kind"] == "model"]
    assert model and all(x["images_per_s"] > 0 and x["flops"] > 0 for x in model)
    assert data["unet_fast"]["ceilings"]["copy_gbps"] > 0
    assert any("triton" in s["test"] for s in data["unet_fast"]["skipped"])   # skipped, saying why
    md = (res / "summary.md").read_text()
    assert "SIMULATED" in md and "## Per layer" in md and "## Whole model" in md and "## Suite stages" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a GPU")
def test_pytest_benchmarks_without_gpu_skips_saying_why(background):
    r = background.result("nogpu")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "5 skipped" in r.stdout and "needs a CUDA GPU" in r.stdout


def test_gpu_only_tests_run_first_on_a_gpu():
    """On a GPU (conftest's collection hook), the GPU suite's tests stage runs the GPU-only tests
    -- requires_cuda, test_cutlass's requires_sm90, a module's pytestmark -- before the others,
    each group in its collection order: under the stage's time limit the GPU parity is what must
    not be cut off."""
    from conftest import gpu_first, requires_cuda
    from test_cutlass import requires_sm90

    class Item:
        def __init__(self, name, *marks):
            self.name, self.marks = name, [m.mark for m in marks]

        def iter_markers(self, name=None):
            return (m for m in self.marks if name is None or m.name == name)

    other = pytest.mark.skipif(False, reason="needs two GPUs")
    items = [Item("cpu1"), Item("gpu1", requires_cuda), Item("cpu2", other),
             Item("sm90", requires_sm90), Item("cpu3", pytest.mark.usefixtures("no_tf32")),
             Item("gpu2", other, requires_cuda)]
    gpu_first(items)
    assert [i.name for i in items] == ["gpu1", "sm90", "gpu2", "cpu1", "cpu2", "cpu3"]


def test_tally_line_takes_the_collection_line_anywhere(tmp_path):
    """Under pytest-xdist the collection's line can follow other workers' first outcomes."""
    tally = tmp_path / "tally.tsv"
    tally.write_text("other\tpassed\tt.py::a\ncollected\tgpu\t2\tother\t3\n"
                     "gpu\tpassed\tt.py::g\nother\tfailed\tt.py::b\n")
    read = subprocess.run(["bash", "-c", f'source <(sed -n "/^tally_line() {{/,/^}}/p" {SUITE}); '
                           f'tally_line {tally}'], capture_output=True, text=True, timeout=30)
    assert read.stdout == ("GPU-only tests: 1 of 2 ran: 1 passed; "
                           "others: 2 of 3 ran: 1 passed, 1 failed"), read


@pytest.mark.parametrize("workers", [[], ["-n", "2", "--dist", "load"]], ids=["one-process", "xdist"])
def test_a_terminated_test_run_still_reports_what_ran(tmp_path, workers):
    """timeout(1) ends the GPU suite's tests stage with TERM: with conftest's handler pytest stops
    as on Ctrl-C and prints the counts and the failures so far (killed outright it printed
    nothing, and the stage's record had no result to quote); so does a run in pytest-xdist
    workers, whose controller takes the TERM. conftest's tally (UNET_FAST_TEST_TALLY) has a line
    for each test that ended, and the suite's tally_line reads it: how many of the GPU-only tests
    and of the others ran, and how they ended."""
    started = tmp_path / "started"
    tally = tmp_path / "tally.tsv"
    # the long test starts its sleep once the first two have run (in another worker, under xdist)
    (tmp_path / "test_stage.py").write_text(
        "import pathlib, time\n"
        "from conftest import requires_cuda\n"
        f"HERE = pathlib.Path({str(tmp_path)!r})\n"
        "@requires_cuda\n"
        "def test_gpu_only(): pass\n"
        "def test_passes(): (HERE / 'passed').touch()\n"
        "def test_fails(): (HERE / 'failed').touch(); assert 1 == 2\n"
        "def test_runs_past_the_limit():\n"
        "    t0 = time.time()\n"
        "    while not ((HERE / 'passed').exists() and (HERE / 'failed').exists()):\n"
        "        assert time.time() - t0 < 60, 'the first two tests did not run'\n"
        "        time.sleep(0.1)\n"
        "    (HERE / 'started').touch(); time.sleep(120)\n"
        "def test_never_reached(): (HERE / 'reached').touch()\n")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]),
               UNET_FAST_TEST_TALLY=str(tally))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "conftest",
                             "-p", "no:cacheprovider", *workers, str(tmp_path / "test_stage.py")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not started.exists() and proc.poll() is None and time.time() - t0 < 100:
        time.sleep(0.2)

    def reported():   # the first three tests' reports reached the (xdist) controller's tally
        text = tally.read_text() if tally.exists() else ""
        return all(f"::test_{t}" in text for t in ("gpu_only", "passes", "fails"))

    t0 = time.time()
    while not reported() and proc.poll() is None and time.time() - t0 < 60:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    # (under xdist the last test may have run in the other worker meanwhile)
    reached = (tmp_path / "reached").exists()
    assert "KeyboardInterrupt" in out and f"1 failed, {1 + reached} passed" in out, out[-2000:]
    assert "assert 1 == 2" in out, out[-2000:]
    lines = tally.read_text().splitlines()
    # the collection's line once (first, but under xdist the first worker writes it when it has
    # collected, and another worker's outcomes may come before: the reader takes it anywhere)
    collected = [ln for ln in lines if ln.startswith("collected")]
    assert collected == ["collected\tgpu\t1\tother\t4"], lines
    assert workers or lines[0] == collected[0], lines
    gpu = "passed" if torch.cuda.is_available() else "skipped"
    assert sorted(ln for ln in lines if ln not in collected) == [
                                 f"gpu\t{gpu}\ttest_stage.py::test_gpu_only",
                                 "other\tfailed\ttest_stage.py::test_fails",
                                 *(["other\tpassed\ttest_stage.py::test_never_reached"] * reached),
                                 "other\tpassed\ttest_stage.py::test_passes"], lines
    read = subprocess.run(["bash", "-c", f'source <(sed -n "/^tally_line() {{/,/^}}/p" {SUITE}); '
                           f'tally_line {tally}'], capture_output=True, text=True, timeout=30)
    assert read.stdout == (f"GPU-only tests: 1 of 1 ran: 1 {gpu}; "
                           f"others: {2 + reached} of 4 ran: {1 + reached} passed, 1 failed"), read
