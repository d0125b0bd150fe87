"""pytest setup of the unet_fast benchmarks (`pytest benchmarks/`).

With a CUDA GPU: the GPU benchmarks (ceilings, every layer shape, whole models). Without one: a
CPU subset (dispatch overhead, the C++ CPU kernels of backend="cuda", a small model), and the GPU
benchmarks are skipped saying why. Options (all also readable from the environment):

  --bench-level quick|default|full   how much to measure (UNET_FAST_BENCH_LEVEL; default "default")
  --bench-suite auto|gpu|cpu|all     which subset (auto: gpu with a GPU, else cpu)
  --bench-budget SECONDS             start no benchmark that would end after this many seconds
                                     (UNET_FAST_BENCH_BUDGET); the tail of the priority order is
                                     skipped, saying so
  --bench-providers a,b,...          only these providers (eager, eager_cl, compile, compile_max,
                                     triton, cuda, auto)
  --bench-simulate                   run the GPU benchmark code on the CPU at toy sizes (tests the
                                     harness; the numbers mean nothing)
  --bench-plan                       collect the GPU cases even without a GPU (with --collect-only:
                                     the plan of a GPU run)
  --bench-cpu-threads N              torch threads for the CPU timings (default 1)
"""
import os
import sys
import time

import pytest

# The benchmarks measure kernels, whatever their numbers: each row records its own error against
# the reference, and the GPU suite's tests stage checks the numbers. An explicit backend's
# first-run check (on a GPU) would skip a row on a false alarm and lose a rare GPU's measurement.
os.environ.setdefault("UNET_FAST_CHECK", "0")

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
try:
    import unet_fast  # noqa: F401
except ImportError:  # a checkout that is not installed: use the source tree
    sys.path.insert(0, os.path.dirname(_HERE))

import torch  # noqa: E402

import harness  # noqa: E402
from harness import Settings  # noqa: E402

_SKIPS: list = []
_FAILS: list = []
_T0 = time.time()
_PARTIAL = {"path": None, "last": 0.0}


def pytest_addoption(parser):
    g = parser.getgroup("unet_fast benchmarks")
    g.addoption("--bench-level", choices=harness.LEVELS,
                default=os.environ.get("UNET_FAST_BENCH_LEVEL", "default"))
    g.addoption("--bench-suite", choices=("auto", "gpu", "cpu", "all"),
                default=os.environ.get("UNET_FAST_BENCH_SUITE", "auto"))
    g.addoption("--bench-budget", type=float, default=float(os.environ.get("UNET_FAST_BENCH_BUDGET", 0) or 0),
                help="seconds; 0 = no limit")
    g.addoption("--bench-providers", default=os.environ.get("UNET_FAST_BENCH_PROVIDERS", ""))
    g.addoption("--bench-simulate", action="store_true", default=False)
    g.addoption("--bench-simulate-compile", action="store_true", default=False)
    g.addoption("--bench-plan", action="store_true", default=False)
    g.addoption("--bench-partial", default=os.environ.get("UNET_FAST_BENCH_PARTIAL", ""),
                help="also write the results so far to this JSON file every few seconds (kept if the run "
                     "is killed; benchmarks/summarize.py reads it)")
    g.addoption("--bench-cpu-threads", type=int, default=int(os.environ.get("UNET_FAST_BENCH_CPU_THREADS", 1)),
                help="torch threads for CPU timings (default 1: stable numbers on a shared machine)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # "auto" must mean auto: a default backend from the environment would change what it measures.
    if os.environ.pop("UNET_FAST_BACKEND", None):
        print("benchmarks: ignoring UNET_FAST_BACKEND (each provider names its backend)", file=sys.stderr)
    config.addinivalue_line("markers", "bench_tier(n): run order of a benchmark (lower first)")
    Settings.level = config.getoption("--bench-level")
    Settings.simulate = config.getoption("--bench-simulate")
    Settings.simulate_compile = config.getoption("--bench-simulate-compile")
    Settings.plan = config.getoption("--bench-plan")
    suite = config.getoption("--bench-suite")
    if suite == "auto":
        suite = "gpu" if (torch.cuda.is_available() or Settings.simulate) else "cpu"
    Settings.suite = suite
    if suite == "cpu" or Settings.simulate:
        torch.set_num_threads(max(1, config.getoption("--bench-cpu-threads")))
    budget = config.getoption("--bench-budget")
    Settings.budget = budget or None
    Settings.deadline = _T0 + budget if budget else None
    provs = [p.strip() for p in config.getoption("--bench-providers").split(",") if p.strip()]
    bad = [p for p in provs if p not in harness.PROVIDERS]
    if bad:
        raise pytest.UsageError(f"--bench-providers: unknown {bad}; choose from {', '.join(harness.PROVIDERS)}")
    Settings.providers = tuple(provs) if provs else harness.PROVIDERS
    _PARTIAL["path"] = config.getoption("--bench-partial") or None
    # A compact default table (pytest-benchmark's own, wall-clock per round, synchronized).
    from pytest_benchmark.utils import parse_columns
    try:
        from pytest_benchmark.utils import DEFAULT_COLUMNS
    except ImportError:
        DEFAULT_COLUMNS = None
    cols = getattr(config.option, "benchmark_columns", None)
    if cols is None or (DEFAULT_COLUMNS is not None and list(cols) == list(DEFAULT_COLUMNS)):
        config.option.benchmark_columns = parse_columns("median,iqr,min,rounds")


def _tier(item) -> float:
    case = getattr(item, "callspec", None) and item.callspec.params.get("case")
    if isinstance(case, harness.Case):
        return case.tier
    m = item.get_closest_marker("bench_tier")
    return m.args[0] if m else 50


def pytest_collection_modifyitems(config, items):
    """Run in priority order (ceilings, whole-model bf16 steps, the paper's layers, ...), so a time
    budget cuts the least important benchmarks."""
    order = {id(it): i for i, it in enumerate(items)}
    items.sort(key=lambda it: (_tier(it), order[id(it)]))


def pytest_collection_finish(session):
    """With --bench-plan: print the plan of a GPU run (what --collect-only selected, in run order)."""
    if not Settings.plan:
        return
    cases = [it.callspec.params["case"] for it in session.items
             if getattr(it, "callspec", None) and isinstance(it.callspec.params.get("case"), harness.Case)]
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    write = tr.write_line if tr else print
    write(f"benchmark plan (level {Settings.level}, in run order; est = rough seconds, the budget cuts the tail):")
    for line in harness.plan_table(cases):
        write(line)


def pytest_runtest_setup(item):
    case = getattr(item, "callspec", None) and item.callspec.params.get("case")
    why = harness.budget_skip_reason(case, time.time())
    if why:
        pytest.skip(why)


def _meta() -> dict:
    return {"env": harness.environment(), "ceilings": dict(harness.CEILINGS), "settings": Settings.as_dict(),
            "skipped": list(_SKIPS), "failed": list(_FAILS), "wall_s": time.time() - _T0}


def _write_partial(force=False):
    path = _PARTIAL["path"]
    if not path or (not force and time.time() - _PARTIAL["last"] < 5):
        return
    _PARTIAL["last"] = time.time()
    import json
    data = {"benchmarks": [{"name": r.get("name"), "fullname": r.get("test"), "extra_info": r}
                           for r in harness.RECORDS],
            "unet_fast": dict(_meta(), partial=True), "datetime": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, default=str)
    os.replace(tmp, path)


def pytest_runtest_makereport(item, call):
    case = getattr(item, "callspec", None) and item.callspec.params.get("case")
    if call.when == "call" and isinstance(case, harness.Case):
        harness.observe(case, call.duration)


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        _write_partial()
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPS.append({"test": report.nodeid, "reason": str(reason).removeprefix("Skipped: ")})
    elif report.failed:
        msg = getattr(report.longrepr, "reprcrash", None)
        _FAILS.append({"test": report.nodeid, "when": report.when,
                       "message": (msg.message if msg else str(report.longrepr))[:500]})


@pytest.fixture(scope="session")
def ceilings():
    """The machine's measured ceilings (measured by test_bench_ceilings.py, which runs first; measured
    here if that was deselected)."""
    if not harness.CEILINGS:
        if Settings.suite in ("gpu", "all") and torch.cuda.is_available() and not Settings.simulate:
            harness.CEILINGS.update(harness.measure_copy_bandwidth(reps=10))
            harness.CEILINGS.update(harness.measure_matmul_peak(reps=10))
            harness.CEILINGS["device"] = "cuda"
        else:
            harness.CEILINGS.update(harness.measure_cpu_ceilings())
            harness.CEILINGS["device"] = "cpu"
    return harness.CEILINGS


@pytest.fixture(autouse=True)
def _free_memory(request):
    """Give memory back after whole-model and compiled cases (CUDA graph pools, compiled graphs);
    a layer case's tensors die with its frame."""
    yield
    case = getattr(request.node, "callspec", None) and request.node.callspec.params.get("case")
    if isinstance(case, harness.Case) and (case.kind == "model" or case.provider in harness.COMPILE):
        if case.provider in harness.COMPILE:
            torch.compiler.reset()
        harness.release("cuda" if torch.cuda.is_available() else "cpu")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["unet_fast"] = _meta()


def pytest_sessionfinish(session, exitstatus):
    _write_partial(force=True)


def pytest_terminal_summary(terminalreporter):
    if not harness.RECORDS and not _SKIPS:
        return
    import summarize
    meta = _meta()
    terminalreporter.write_sep("=", "unet_fast benchmarks (medians)")
    terminalreporter.write_line(summarize.render_terminal(harness.RECORDS, meta))
