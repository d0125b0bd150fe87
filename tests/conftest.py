"""Test setup shared by every test file.

Without a GPU, Triton kernels run under the Triton interpreter on CPU tensors. The interpreter must
be switched on before any module that defines @triton.jit kernels is imported, so it is set here,
first. First-use builds of the extension are switched off (UNET_FAST_JIT=0). Ahead-of-time compilation checks need a process without it and run in a subprocess.
"""
import os
import signal

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# TERM (timeout(1) ending the GPU suite's tests stage) stops pytest as Ctrl-C would, so that it
# still prints what ran: the counts and the failures (killed outright, it printed nothing).
signal.signal(signal.SIGTERM, _interrupt)

# An explicit backend="cuda" builds a missing extension on first use (minutes): never in the tests,
# whose explicit requests expect BackendUnavailable when the extension is not built.
os.environ.setdefault("UNET_FAST_JIT", "0")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()

# Under pytest-xdist (`make test` runs one worker a core) each worker keeps to its share of the
# cores: torch's default of one thread a core in every worker oversubscribes them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def _interpreter_rounds_bf16_to_nearest() -> None:
    """Triton's interpreter converts float32 to bf16 by dropping the low 16 bits (its "RTNE" path
    adds the cut-off bit without carrying into the exponent), where a GPU (cvt.rn.bf16.f32) and
    PyTorch round to nearest even (docs/design.md, section 5). Its fp32 -> bf16 conversions
    (casts and stores) then round as a GPU's do, by PyTorch's own conversion, so the bf16 tests
    hold the kernels to the GPU's arithmetic instead of an ulp of truncation. Every other
    conversion, and a cast that asks for round-toward-zero, is the interpreter's own."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    convert = interpreter._convert_float
    rtz = interpreter._ir.ROUNDING_MODE.RTZ

    def convert_float(input, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16 and rounding_mode != rtz:
            f32 = torch.from_numpy(np.array(input, dtype=np.float32))
            return f32.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return convert(input, input_dtype, output_dtype, rounding_mode)

    interpreter._convert_float = convert_float


_interpreter_rounds_bf16_to_nearest()
# float32 parity is checked at float32 precision (1e-5 relative); a test that wants TF32 (3e-4)
# switches it on itself. cuDNN's own default is TF32 on, which our kernels follow.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
# every GPU-only test's skipif reason ends so (requires_cuda here, test_cutlass's requires_sm90)
GPU_ONLY = "(runs in benchmarks/gpu_suite.sh)"
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason=f"needs a CUDA GPU {GPU_ONLY}")


def extension_archs() -> list:
    """The SASS architectures the loaded extension was built for: those of its build record's
    TORCH_CUDA_ARCH_LIST (CI: 8.0;9.0), else, for a build for the visible GPUs (the GPU suite's),
    theirs, else CI's two. A check of "every arch" reads these: an H100 machine's build has no
    sm_80 code, and that is not a defect."""
    import re
    from unet_fast.backends import cuda_backend
    arch = (cuda_backend.extension_info().get("build_record") or {}).get("arch_list")
    if arch:
        return sorted({"sm_" + a.split("+")[0].rstrip("a").replace(".", "")
                       for a in re.split(r"[;, ]+", arch) if a})
    if HAS_CUDA:
        return sorted({"sm_%d%d" % torch.cuda.get_device_capability(i)
                       for i in range(torch.cuda.device_count())})
    return ["sm_80", "sm_90"]


def gpu_only(item) -> bool:
    return any(GPU_ONLY in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))


def gpu_first(items) -> None:
    """Sorts the GPU-only tests before the others, each group in its collection order: the GPU
    suite's tests stage runs under a time limit, and what it must not miss is the parity on the
    GPU (the rest runs on the CPU in CI anyway)."""
    items.sort(key=lambda item: not gpu_only(item))


# UNET_FAST_TEST_TALLY=FILE: one line per test outcome, "gpu|other<TAB>outcome<TAB>nodeid", and one
# "collected<TAB>gpu<TAB>N<TAB>other<TAB>M" (the first line, except under pytest-xdist, where the
# first worker writes it once collected, maybe after other workers' first outcomes: the suite's
# tally_line takes it anywhere), each line written as it comes: the GPU suite's tests
# stage runs under a time limit, and when it is cut the file still says whether every GPU-only test
# ran and passed (pytest's own summary then counts only what finished, without telling which).
TALLY = os.environ.get("UNET_FAST_TEST_TALLY")


_WORKER = None   # this process's pytest-xdist worker id ("gw0", ...), or "" in the controller or alone


def pytest_configure(config):
    global _WORKER
    # (from pytest's own config: an xdist worker's environment variable is inherited by a pytest
    # that a test runs in a subprocess, which is no worker)
    _WORKER = getattr(config, "workerinput", {}).get("workerid", "")


def _tally(line: str, worker: str = "") -> None:
    # the controller writes the outcomes (workers report theirs to it); the collection, which under
    # pytest-xdist only the workers see (each the same items), comes from the first worker
    if TALLY and _WORKER == worker:
        with open(TALLY, "a") as f:
            f.write(line + "\n")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        gpu_first(items)
    for item in items:
        item.user_properties.append(("gpu_only", gpu_only(item)))


def pytest_collection_finish(session):
    gpu = sum(dict(item.user_properties)["gpu_only"] for item in session.items)
    _tally(f"collected\tgpu\t{gpu}\tother\t{len(session.items) - gpu}", "gw0" if _WORKER else "")


def pytest_runtest_logreport(report):
    # one line a test: its call's outcome, or its setup's / teardown's where that failed or skipped
    if report.when == "call" or report.outcome != "passed":
        kind = "gpu" if dict(report.user_properties).get("gpu_only") else "other"
        _tally(f"{kind}\t{report.outcome}\t{report.nodeid}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)



@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: compiled frames of earlier tests would otherwise count
    towards dynamo's recompile limit, which fails fullgraph=True tests depending on test order."""
    yield
    import sys
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()


@pytest.fixture
def no_tf32():
    """IEEE float32 for the length of a test (float32 tolerances are fp32's), whatever an earlier
    test left; a test that wants TF32 asks for it (parity.check(..., tf32=True))."""
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


@pytest.fixture
def fp32_precision_restored():
    """PyTorch's fp32_precision settings (legacy allow_tf32 flags included) as they were."""
    b = torch.backends
    saved = (b.fp32_precision, b.cudnn.fp32_precision, b.cudnn.conv.fp32_precision,
             b.cudnn.rnn.fp32_precision, b.cuda.matmul.fp32_precision)
    yield
    (b.fp32_precision, b.cudnn.fp32_precision, b.cudnn.conv.fp32_precision,
     b.cudnn.rnn.fp32_precision, b.cuda.matmul.fp32_precision) = saved
