"""Test setup shared by every test file.

Without a GPU, Triton kernels run under the Triton interpreter on CPU tensors. The interpreter must
be switched on before any module that defines @triton.jit kernels is imported, so it is set here,
first. First-use builds of the extension are switched off (UNET_FAST_JIT=0), and so is an explicit
backend's first-run check (UNET_FAST_CHECK=0) but where a test switches it on. Ahead-of-time compilation checks need a process without it and run in a subprocess.
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
# An explicit backend's first-run check (unet_fast/_dispatch.py; on a GPU) runs each new input's
# kernels once more beside the reference ops: off in the tests, whose parity checks are stricter
# and some of which count launches; tests/test_first_run_check.py switches it on.
os.environ.setdefault("UNET_FAST_CHECK", "0")

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


def _interpreter_reduces_whole_slices() -> None:
    """The interpreter runs a tl.reduce with a combine function of our own (the pool epilogue's
    NaN-propagating max) one element at a time, in Python: half the kernel time of a U-Net
    step (test_decoder_concat_is_never_copied_twice[triton]: 60 s, 39 s with this). This runs
    the same combine on whole slices of the reduced axis instead, in the same order for every
    output element (slice 0, then combine with 1, 2, ...), so each result is the one the
    element loop gives, bit for bit (tests/test_triton_backend.py checks it)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    reduce_ops = interpreter.ReduceOps
    element_loop = reduce_ops.generic_reduce

    def generic_reduce(self, input):
        original_axis = self.axis
        input, axis = self.unravel(input, self.axis)
        data = [arg.handle.data for arg in input]
        shape = data[0].shape
        if not shape or shape[axis] == 0 or any(d.shape != shape for d in data):
            return element_loop(self, input)   # (a tuple over axis=None: only the first flattened)
        out_shape = shape[:axis] + shape[axis + 1:]

        def as_tensors(values):   # the combine's results (tensors, or a constant it returned)
            values = values if isinstance(values, tuple) else (values,)
            return tuple(v if isinstance(v, tl.core.tensor)
                         else self.to_tensor(np.full(out_shape, v), arg.dtype)
                         for v, arg in zip(values, input))

        acc = as_tensors(tuple(self.to_tensor(np.take(d, 0, axis=axis), arg.dtype)
                               for d, arg in zip(data, input)))
        for k in range(1, shape[axis]):
            nxt = tuple(self.to_tensor(np.take(d, k, axis=axis), arg.dtype)
                        for d, arg in zip(data, input))
            acc = as_tensors(self.combine_fn.fn(*acc, *nxt))
        out = []
        for a, d, arg in zip(acc, data, input):
            r = np.asarray(a.handle.data).astype(d.dtype).reshape(out_shape)
            if self.keep_dims:
                r = (np.expand_dims(r, axis) if original_axis is not None
                     else r.reshape((1,) * len(shape)))
            elif original_axis is None:
                r = r.item()
            out.append(self.to_tensor(r, arg.dtype))
        return out

    generic_reduce.element_loop = element_loop   # the interpreter's own, for the test that compares
    reduce_ops.generic_reduce = generic_reduce


def _interpreter_skips_its_inert_overflow_checks() -> None:
    """The interpreter builds an overflow check for every int32 +, - and * (a cast to int64, the op
    again, two compares, an and: about a millisecond each through Triton's type-checking layer)
    and hands it to device_assert, which drops it: the interpreter's options have debug off, and
    nothing turns it on (the test above: 39 s, 18 s without building them). Debug off, this
    returns at once. UNET_FAST_INTERPRET_DEBUG=1 turns debug on (device asserts, and overflow
    checks that raise), the check then runs in numpy, and on an overflow the interpreter's own
    check raises its own error."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import dataclasses

    import numpy as np
    from triton.runtime import interpreter

    sem = interpreter.interpreter_semantic
    checked = sem.binary_op_sanitize_overflow_impl
    ops = {"add": np.add, "sub": np.subtract, "mul": np.multiply}
    if os.environ.get("UNET_FAST_INTERPRET_DEBUG") == "1":
        interpreter.interpreter_builder.options = dataclasses.replace(
            interpreter.interpreter_builder.options, debug=True)

    def sanitize(lhs, rhs, binary_op):
        if not sem.builder.options.debug:
            return
        sca = lhs.type.scalar
        op = ops.get(getattr(binary_op, "__name__", None))
        if op is not None and sca.is_int() and sca.int_bitwidth in (8, 16, 32):
            r = op(lhs.handle.data.astype(np.int64), rhs.handle.data.astype(np.int64))
            if ((r <= sca.get_int_max_value()) & (r >= sca.get_int_min_value())).all():
                return
        checked(lhs, rhs, binary_op)   # an overflow: the interpreter's own check raises

    sanitize.interpreters_own = checked   # for the test that compares
    sem.binary_op_sanitize_overflow_impl = sanitize


def _interpreter_patches_the_language_once_a_launch() -> None:
    """The interpreter swaps triton.language's builtins for its own at each launch, and again at
    every call of a @triton.jit helper inside it (a scan of the modules' members each time;
    the test above: 18 s, 16 s with this), though the helpers see the same modules, already
    swapped, and the second swap changes nothing (a swapped member is no builtin any more).
    This skips a helper's swap when its modules are those the running launch swapped already;
    the launch's own swap and its undoing at the end are the interpreter's."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

    launch, patch = interpreter.GridExecutor.__call__, interpreter._patch_lang
    swapped = set()   # the language modules the running launch swapped (ids)

    def patch_lang(fn):
        langs = {id(v) for v in fn.__globals__.values()
                 if inspect.ismodule(v) and v in (tl, tl.core)}
        if langs and langs <= swapped:
            return interpreter._LangPatchScope()
        scope = patch(fn)
        swapped.update(langs)
        return scope

    def run(self, *args, **kwargs):
        swapped.clear()
        try:
            return launch(self, *args, **kwargs)
        finally:
            swapped.clear()

    interpreter._patch_lang, interpreter.GridExecutor.__call__ = patch_lang, run


_interpreter_rounds_bf16_to_nearest()
_interpreter_reduces_whole_slices()
_interpreter_patches_the_language_once_a_launch()
_interpreter_skips_its_inert_overflow_checks()

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
