"""UNet.precompile: a dry step compiles a model's Triton kernels before its first step.

The compiles are real (no interpreter: a process of its own, on tools/first_step_compiles.py's
stand-in sm_90 driver, which cannot launch anything); the rest runs in this process."""
import json
import os
import subprocess
import sys

import pytest
import torch

import unet_fast as uf
from unet_fast import _dispatch, _precompile
from unet_fast.backends.triton_backend import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DRY = r"""
import json, sys, threading
import torch
import torch.nn.functional as F
import first_step_compiles as fsc
import kernel_model as km
import unet_fast as uf
from unet_fast import _precompile
from unet_fast.backends.triton_backend import max_pool, utils
from triton.backends.nvidia.compiler import CUDABackend
from triton.runtime import driver

_precompile._ON_CPU = True
out, compiled_on = {}, []
make_cubin = CUDABackend.make_cubin
def counted(self, *a, **k):
    compiled_on.append(threading.current_thread().name)
    return make_cubin(self, *a, **k)
CUDABackend.make_cubin = counted

with km.triton_as_on(km.H200):
    driver.set_active(fsc.StandInDriver(90))   # (a launch on it would fail)
    # a launch from a thread of its own, as a GPU's autograd engine runs the backward
    x = torch.randn(2, 64, 32, 32).contiguous(memory_format=torch.channels_last)
    errors = []
    def launch():
        try:
            max_pool.max_pool2x2_forward(x)
        except Exception as e:
            errors.append(repr(e))
    with utils.compile_only(2) as stats:
        t = threading.Thread(target=launch, name="device-thread")
        t.start()
        t.join()
    out["thread"] = dict(stats, errors=errors, compiled_on=sorted(set(compiled_on)))
    compiled_on.clear()

    torch.manual_seed(0)
    model = uf.UNet(3, 2, base_channels=16, depth=2, backend="auto")
    first = next(model.parameters())
    first.grad = torch.ones_like(first)
    grads = [p.grad for p in model.parameters()]
    model._report["before"] = "kept"
    x = torch.randn(2, 3, 44, 44).contiguous(memory_format=torch.channels_last)
    out["pre"] = model.precompile(train=x, evaluate=[x], autocast=torch.bfloat16, threads=2)
    out["grads_kept"] = all(a is b for a, b in zip(grads, [p.grad for p in model.parameters()]))
    out["report_kept"] = model.backend_report() == {"before": "kept"}
    out["compiled_on"] = sorted(set(compiled_on))

    # the steps themselves on the triton backend ("auto" on a CPU runs the reference ops), a
    # loss's gradient and all, through Triton's launch path: nothing left to compile
    same = uf.UNet(3, 2, base_channels=16, depth=2, backend="triton")
    same.load_state_dict(model.state_dict())
    with fsc.compile_only(90) as counts:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = same(x)
        F.cross_entropy(logits.float(), torch.randint(0, 2, (2,) + logits.shape[2:])).backward()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            same(x)
    out["steps"] = counts
    out["again"] = model.precompile(train=x, autocast=torch.bfloat16)
print(json.dumps(out))
"""


def test_precompile_compiles_what_the_first_steps_compile(tmp_path):
    """A tiny U-Net (backend "auto") precompiled for a bf16 training step and an evaluation: its
    compiles run on the precompile threads; a training step (cross-entropy loss) and an evaluation
    of the same model on the triton backend then compile nothing more; the parameters' gradients
    and the backend report are as they were; a second precompile starts no compile. A launch from
    a thread of its own inside a compile_only block (on a GPU the backward runs on the autograd
    engine's device thread) is compiled on the precompile threads too, and not launched (on the
    stand-in driver a launch would raise)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), UNET_FAST_COMPILE_THREADS="2",
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tools"), ROOT]))
    res = subprocess.run([sys.executable, "-c", _DRY], capture_output=True, text=True, env=env,
                         timeout=900, cwd=ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    thread = out["thread"]
    assert thread["errors"] == [] and thread["failed"] == 0, thread
    assert thread["kernels"] >= 2, thread     # every config the pool's autotuner would time
    assert thread["compiled_on"] and all(n.startswith("unet_fast-precompile")
                                         for n in thread["compiled_on"]), thread
    pre = out["pre"]
    assert pre["skipped"] is None and "error" not in pre and pre["failed"] == 0, pre
    assert pre["kernels"] >= 20 and pre["seconds"] > 0, pre
    assert out["compiled_on"] and all(n.startswith("unet_fast-precompile")
                                      for n in out["compiled_on"]), out["compiled_on"]
    assert out["grads_kept"] and out["report_kept"], out
    assert out["steps"]["cubins"] == 0, out["steps"]
    assert out["again"]["kernels"] == 0 and out["again"]["skipped"] is None, out["again"]


def _model(backend="auto"):
    return uf.UNet(1, 2, base_channels=4, depth=1, backend=backend)


@pytest.mark.parametrize("kwargs, words", [
    (dict(), "nothing to precompile"),
    (dict(train=(2, 1, 60)), "train must be an input shape"),
    (dict(evaluate=[(2, 1, 60, 60), "x"]), "evaluate must be an input shape"),
    (dict(train=(2, 1, 60, 0)), "positive ints"),
    (dict(train=(2, 1, 60, 60), autocast=torch.float64), "autocast must be None"),
    (dict(train=(2, 1, 60, 60), threads=0), "threads must be a positive int"),
])
def test_bad_arguments_name_the_argument(kwargs, words):
    with pytest.raises(ValueError, match=words):
        _model().precompile(**kwargs)


def test_nothing_to_compile_says_why_and_runs_nothing(monkeypatch):
    """Backends without Triton kernels, the interpreter, a model on the CPU, one compile thread:
    no dry step (nothing runs, nothing is compiled), and the result says why."""
    def no_step(*args):
        raise AssertionError("no dry step expected")
    monkeypatch.setattr(_precompile, "_dry_step", no_step)
    for backend in ("torch", "cuda"):
        res = _model(backend).precompile(train=(2, 1, 60, 60))
        assert res["kernels"] == 0 and f"backend={backend!r}" in res["skipped"], res
    res = _model().precompile(evaluate=(2, 1, 60, 60))
    assert res["kernels"] == 0 and res["skipped"], res
    if utils.INTERPRET:
        assert "interpreter" in res["skipped"], res
    monkeypatch.setattr(utils, "INTERPRET", False)
    monkeypatch.setattr(_dispatch, "backend_reason", lambda name: None)
    res = _model().precompile(train=(2, 1, 60, 60), threads=2)
    assert "the inputs are on cpu" in res["skipped"], res
    res = _model().precompile(train=(2, 1, 60, 60), threads=1)
    assert "one compile thread" in res["skipped"], res


def test_a_dry_step_that_fails_warns_and_keeps_the_model_as_it_was(monkeypatch):
    """An error inside the dry step is a warning and the result's "error", never the caller's
    exception (the step itself meets it, where "auto" falls back); the dispatch is left as it was."""
    monkeypatch.setattr(_precompile, "_ON_CPU", True)
    monkeypatch.setattr(utils, "INTERPRET", False)
    monkeypatch.setattr(_dispatch, "backend_reason", lambda name: None)

    def fails(*args):
        assert _dispatch._compiling_for == "triton"
        raise RuntimeError("no such kernel")
    monkeypatch.setattr(_precompile, "_dry_step", fails)
    monkeypatch.setattr(utils, "compile_only", _no_compiles)
    model = _model()
    model._report["down.0.0"] = "torch"
    with pytest.warns(RuntimeWarning, match="precompile stopped .*no such kernel"):
        res = model.precompile(train=(2, 1, 60, 60), threads=2)
    assert res["error"] == "RuntimeError: no such kernel" and res["kernels"] == 0, res
    assert model.backend_report() == {"down.0.0": "torch"}
    assert _dispatch._compiling_for is None


class _no_compiles:
    def __init__(self, threads):
        pass

    def __enter__(self):
        return {"kernels": 0, "failed": 0}

    def __exit__(self, *exc):
        return False


def test_auto_runs_the_precompiled_backend_and_measures_nothing(monkeypatch):
    """Under `compiling_for(name)`, "auto" runs `name` where it can run the input, the reference
    where it cannot, and times no candidate (a dry step's kernels run nothing: their timings would
    be no timings); an explicit backend is untouched. Blocks do not nest."""
    from unet_fast import _autotune
    x = torch.randn(1, 4, 6, 6, device="cuda" if torch.cuda.is_available() else "cpu")
    if _dispatch.why_not("max_pool2x2", "triton", (x,)) is not None:
        pytest.skip("the triton backend cannot run here")

    def no_timing(*args, **kwargs):
        raise AssertionError("a candidate was timed")
    monkeypatch.setattr(_autotune, "choose", no_timing)
    monkeypatch.setattr(_dispatch, "_MEASURE_ON_CPU", True)
    monkeypatch.setattr(_dispatch, "auto_order", lambda device: ("triton", "torch"))
    monkeypatch.setattr(_dispatch, "_proven", set())
    with pytest.raises(AssertionError, match="timed"):   # (outside the block "auto" times them)
        uf.ops.max_pool2x2(x)
    with _dispatch.compiling_for("triton"):
        uf.ops.max_pool2x2(x)
        assert _dispatch.last_used("max_pool2x2") == "triton"
        uf.ops.max_pool2x2(x.double())            # float64: not the triton backend's
        assert _dispatch.last_used("max_pool2x2") == "torch"
        uf.ops.max_pool2x2(x, backend="torch")
        assert _dispatch.last_used("max_pool2x2") == "torch"
        with pytest.raises(RuntimeError, match="do not nest"):
            _dispatch.compiling_for("triton").__enter__()
    assert _dispatch._compiling_for is None


def test_compile_only_blocks_do_not_nest():
    with utils.compile_only(1):
        with pytest.raises(RuntimeError, match="do not nest"):
            with utils.compile_only(1):
                pass
