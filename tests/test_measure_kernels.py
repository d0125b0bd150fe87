"""tools/measure_kernels.py, the kernel model against a GPU, checked without one: the L2 probe
under the Triton interpreter (it reads the blocks it says and counts their bytes), the pairing of
launches with device kernels and the join with the model's rows on made-up traces, and, on a real
(interpreted) step of a small U-Net, that the launches as the GPU run labels them are exactly the
launches the model records for the same step (the join's premise)."""
from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import measure_kernels as mk  # noqa: E402


def test_l2_probe_reads_the_blocks_it_counts():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the probe under the Triton interpreter")
    n_blocks, programs, iters = 3, 5, 4
    src = torch.randn(n_blocks * mk.L2_BLOCK, generator=torch.Generator().manual_seed(0))
    out = torch.empty(programs)
    nbytes = mk.l2_probe_launch(src, out, iters)
    assert nbytes == programs * iters * mk.L2_BLOCK * 4
    blocks = src.double().view(n_blocks, mk.L2_BLOCK).sum(1)
    want = torch.stack([sum(blocks[(p + i * programs) % n_blocks] for i in range(iters))
                        for p in range(programs)])
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="multiple of"):
        mk.l2_probe_launch(torch.empty(mk.L2_BLOCK + 1), out, 1)


def _l(kernel, layer="l", pass_="fwd"):
    return dict(kernel=kernel, layer=layer, phase="fwd", pass_=pass_, config="c")


def test_launches_pair_with_device_kernels_by_name_and_order():
    launches = [_l("igemm_fwd_kernel", "a"), _l("igemm_wgrad_kernel", "a", "wgrad"),
                _l("igemm_fwd_kernel", "b")]
    kernels = [("igemm_fwd_kernel", 0.0, 100.0), ("elementwise_kernel<...>", 1.0, 7.0),
               ("igemm_wgrad_kernel_0d1d", 2.0, 50.0), ("igemm_fwd_kernel", 3.0, 30.0)]
    out, other, mismatches = mk.pair(launches, kernels)
    assert [o["measured_ms"] for o in out] == [0.1, 0.05, 0.03]
    assert other == [("elementwise_kernel<...>", 0.007)] and not mismatches
    # counts that differ pair nothing of that kernel, and say so
    out, _, mismatches = mk.pair(launches, kernels[:3])
    assert [o["measured_ms"] for o in out] == [None, 0.05, None]
    assert mismatches == {"igemm_fwd_kernel": (2, 1)}


def test_join_takes_the_model_row_of_the_same_layer_pass_kernel_and_occurrence():
    rows = [dict(layer="a", **{"pass": "fwd"}, name="k", config="x", bound="L2", predicted_ms=1.002,
                 kernel_ms=1.0),
            dict(layer="a", **{"pass": "fwd"}, name="k", config="y", bound="tensor", predicted_ms=2.002,
                 kernel_ms=2.0),
            dict(layer="a", **{"pass": "dgrad"}, name="k", config="z", bound="L2", predicted_ms=4.002,
                 kernel_ms=4.0)]
    measured = [dict(_l("k", "a", "fwd"), measured_ms=1.5, config="x"),
                dict(_l("k", "a", "dgrad"), measured_ms=2.0, config="q"),
                dict(_l("k", "a", "fwd"), measured_ms=None, config="y"),
                dict(_l("k", "b", "fwd"), measured_ms=1.0, config="x")]
    j = mk.join(measured, rows, gap_ms=0.002)
    assert [r["predicted_ms"] for r in j] == [1.0, 4.0, 2.0, None]
    assert [r["ratio"] for r in j] == [1.5, 0.5, None, None]
    assert [r["same_config"] for r in j] == [True, False, True, None]
    s = mk.summarize(j, [("aten", 0.25)], rows, 0.002)
    assert (s["paired"], s["within_20pct"], s["within_2x"], s["same_config"]) == (2, 0, 2, 1)
    assert s["ratio_median"] == 1.0 and s["other_measured_ms"] == 0.25
    text = mk.report([dict(config=dict(name="toy", size=8, batch=1, padding="same"), rows=j,
                           other=[("aten", 0.25)],
                           summary=dict(s, step_ms=3.0, predicted_step_ms=2.0, mismatches={}))],
                     dict(l2_bytes_per_s=7e12, buffer_bytes=2**24, l2_cache_bytes=2**26,
                          programs=2112), dict(gpu="test"))
    assert "7.00 TB/s" in text and "| a | dgrad | k | z | q | 4.000 | 2.000 | 0.50 | L2 |" in text


@pytest.mark.parametrize("padding,size", [("valid", 44), ("same", 16)])
def test_a_run_labels_its_launches_as_the_model_records_them(monkeypatch, padding, size):
    """The same step run (interpreted, CPU) with the GPU run's labelling, and recorded by the
    model: the same Triton launches, in the same order, with the same (layer, pass) labels."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the Triton backend under the interpreter")
    import kernel_model as km
    from unet_fast.backends.triton_backend import utils
    cfg = km.ModelConfig("toy", 1, 2, size, padding, 1, base_channels=4, depth=2)
    recorded = [dict(kernel=l.kernel.split(".")[-1], layer=l.layer, phase=l.phase,
                     pass_=km.work(l, 0)["pass_"])
                for l in km.record_step(cfg) if not l.kernel.startswith("aten.")]
    monkeypatch.setattr(utils, "num_sms", lambda device: km.H200.sms)   # the model's split counts
    state = km._State()
    state.recording = True
    with km.labelled_launches(state, mk._Runner):
        km.make_step(cfg, "cpu")(state)
    ran = [{k: v for k, v in r.items() if k != "config"} for r in mk.labelled(state.launches)]
    assert ran == recorded
    assert {r["pass_"] for r in ran} >= {"fwd", "dgrad", "wgrad"}
    assert all(r["layer"] not in ("?", "input", "loss") for r in ran)


def test_device_kernels_are_the_profilers_device_events_in_start_order():
    from torch.autograd import DeviceType

    class Ev:
        def __init__(self, name, dev, start, end):
            self.name, self.device_type = name, dev
            self.time_range = type("R", (), dict(start=start, end=end))()

    class Prof:
        def events(self):
            return [Ev("b", DeviceType.CUDA, 5.0, 7.5), Ev("aten::add", DeviceType.CPU, 0.0, 9.0),
                    Ev("a", DeviceType.CUDA, 1.0, 2.0)]

    assert mk.device_kernels(Prof()) == [("a", 1.0, 1.0), ("b", 5.0, 2.5)]


def test_the_measurement_runs_end_to_end_with_made_up_kernel_times(monkeypatch):
    """measure_model as the GPU suite runs it (warm-up, timed steps, the profiled step, pairing,
    join, report, JSON), on the CPU under the interpreter, with the device kernels made up from
    the launches (20 us each) and the model's rows from record_step (10 us each): every Triton
    launch pairs with its row, at ratio 2, on the config the model picked."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the Triton backend under the interpreter")
    import json

    import kernel_model as km
    from unet_fast.backends.triton_backend import utils
    cfg = km.ModelConfig("toy", 1, 2, 44, "valid", 1, base_channels=4, depth=2)
    rows = []
    for l in km.record_step(cfg):
        name = l.kernel.split(".")[-1] if not l.kernel.startswith("aten.") else l.kernel
        triton = not l.kernel.startswith("aten.")
        kw, warps, stages, _, maxnreg = l.configs[0] if triton else ({}, 0, 0, 0, None)
        rows.append(dict(model="toy", name=name, layer=l.layer, config=(
            km._cfg_text(kw, warps, stages, maxnreg) if triton else "-"),
            bound="L2", predicted_ms=0.012, kernel_ms=0.010,
            **{"pass": km.work(l, 0)["pass_"] if triton else "aten " + l.kernel[5:]}))
    monkeypatch.setattr(utils, "num_sms", lambda device: km.H200.sms)

    def kernels(prof, launches):
        return [(l["kernel"], float(i), 20.0) for i, l in enumerate(launches)] + [
            ("void at::native::elementwise_kernel<...>", 1e6, 5.0)]
    res = mk.measure_model(cfg, rows, 0.002, device="cpu", warmup=1, timed=2, log=lambda *a: None,
                           kernels_fn=kernels)
    s = res["summary"]
    assert s["paired"] == s["launches"] == sum(r["name"] in km._WORK for r in rows) > 20
    assert {round(j["ratio"], 6) for j in res["rows"]} == {2.0}
    assert s["same_config"] == s["paired"] and not s["mismatches"]
    assert s["other_kernels"] == 1 and len(s["step_ms_all"]) == 2
    text = mk.report([res], None, dict(gpu="made up"))
    assert "| down.0.2 | fwd | igemm_fwd_kernel |" in text and "Step: measured" in text
    json.dumps(dict(results=[res]))   # what main writes


def test_cutlass_launches_take_their_layer_and_pass_from_the_op_that_launched_them():
    """backend="cuda": the forward op's unit is fprop; the backward op's are dgrad then wgrad
    (WgradUnit by name, else by order); aten kernels the ops launch are left out; the sequences of
    recorded calls and profiled ops must agree."""
    F, B = mk._SM90_OPS
    calls = [("down.0.2", F), ("down.1.0", F), ("down.1.0", B), ("down.0.2", B)]
    wg = "void cutlass::device_kernel<unet_fast::sm90::WgradUnit<cutlass::bfloat16_t, 64, 64>::Kernel>"
    conv = "void cutlass::device_kernel<cutlass::conv::kernel::ConvUniversal<...>>"
    op_kernels = [(F, [(conv, 0.3)]), (F, [(conv, 0.2)]),
                  (B, [("at::native::threshold", 0.01), (conv, 0.25), (wg, 0.4)]),
                  (B, [(conv, 0.35), (conv + " split", 0.5)])]
    got = mk.cutlass_passes(calls, op_kernels)
    assert [(g["layer"], g["pass_"], g["measured_ms"]) for g in got] == [
        ("down.0.2", "fprop", 0.3), ("down.1.0", "fprop", 0.2), ("down.1.0", "dgrad", 0.25),
        ("down.1.0", "wgrad", 0.4), ("down.0.2", "dgrad", 0.35), ("down.0.2", "wgrad", 0.5)]
    # the up-conv's dgrad op: its one unit launch is that layer's up_dgrad; its wgrad op's (a
    # WgradUnit kernel, then aten's split sum and bias reduction) up_wgrad; the forward op's four
    # launches (one a tap, after aten's copy of the skip) one up_fprop, their sum
    up = mk.cutlass_passes([("up.3.up", mk._SM90_UP_FPROP_OP), ("up.3.up", mk._SM90_UP_OP),
                            ("up.3.up", mk._SM90_UP_WGRAD_OP)],
                           [(mk._SM90_UP_FPROP_OP, [("at::native::copy", 0.05)] + [(conv, 0.25)] * 4),
                            (mk._SM90_UP_OP, [(conv, 0.12)]),
                            (mk._SM90_UP_WGRAD_OP, [(wg, 0.2), ("at::native::reduce", 0.01)])])
    assert [(g["layer"], g["pass_"], g["measured_ms"]) for g in up] == [
        ("up.3.up", "up_fprop", 1.0), ("up.3.up", "up_dgrad", 0.12), ("up.3.up", "up_wgrad", 0.2)]
    with pytest.raises(ValueError, match="differ"):
        mk.cutlass_passes(calls[:3], op_kernels)
    ext = [dict(layer="down.0.2", **{"pass": "fprop"}, config="256x64x64 c2x1", bound="L2",
                kernel_s=0.15e-3)]
    j = mk.join_cutlass(got, ext)
    assert j[0]["ratio"] == pytest.approx(2.0) and all(r["ratio"] is None for r in j[1:])
    res = dict(config=dict(name="valid572"), rows=j, summary=dict(
        step_ms=14.0, launches=6, paired=1, measured_ms=0.3, predicted_ms=0.15, ratio_median=2.0,
        predicted_step_ms=12.5))
    text = mk.report([], None, dict(gpu="test"), [res, dict(config=dict(name="same512"),
                                                            error="RuntimeError: boom")])
    assert "| down.0.2 | fprop | 256x64x64 c2x1 | 0.150 | 0.300 | 2.00 | L2 |" in text
    assert "14.000 ms (CUDA events, median of 3); predicted 12.500 ms (ratio 1.12)." in text
    assert "Not measured: RuntimeError: boom" in text


def test_a_cutlass_op_recorded_twice_counts_once_with_its_subtrees_kernels():
    """An op with an autograd formula appears twice in the profile, one event inside the other:
    the outermost counts, with the kernels of the events under it."""
    F, B = mk._SM90_OPS

    class K:
        def __init__(self, name, us):
            self.name, self.duration = name, us

    class E:
        def __init__(self, name, start, kernels=(), children=()):
            self.name, self.kernels, self.cpu_children = name, list(kernels), list(children)
            self.time_range = type("R", (), dict(start=start))()
            self.cpu_parent = None
            for c in children:
                c.cpu_parent = self

    inner = E("unet_fast::" + F, 1.0, [K("cutlass fprop", 300.0)])
    outer = E("unet_fast::" + F, 0.5, children=[inner])
    thr = E("aten::threshold_backward", 6.0, [K("threshold", 10.0)])
    bwd = E("unet_fast::" + B, 5.0, [K("cutlass dgrad", 250.0), K("cutlass WgradUnit", 400.0)], [thr])
    got = mk.op_kernels_of([bwd, inner, outer, thr])
    assert got == [(F, [("cutlass fprop", 0.3)]),
                   (B, [("cutlass dgrad", 0.25), ("cutlass WgradUnit", 0.4), ("threshold", 0.01)])]
