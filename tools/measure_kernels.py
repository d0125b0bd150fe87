#!/usr/bin/env python
"""The kernel model against a GPU: how far off each prediction is.

`tools/kernel_model.py` predicts, without a GPU, every kernel one bf16-autocast training step of
the paper U-Net (and of the "same" U-Net) launches on `backend="triton"`; its predictions are
committed in docs/kernel_model.json. This tool runs that same step on a GPU and puts a measurement
next to every prediction:

- the step (the model config the JSON names: size, batch, channels, padding) runs a few times
  first, so every shape is autotuned and compiled;
- then one step runs under torch.profiler, with every Triton launch of the backend labelled the
  way the model labels it (layer, pass, kernel) and with the config the autotuner ran; each
  launch is paired with its device kernel (CUPTI's duration) by kernel name and order (one
  stream: launch order is execution order);
- each measured launch is joined with the model's row for the same (layer, pass, kernel, n-th
  such launch): predicted and measured milliseconds side by side, and whether the autotuner ran
  the config the model picked;
- the L2 -> SM read bandwidth, the model's one unmeasured machine figure (it assumes 10 TB/s), is
  measured too (`measure_l2_bandwidth`);
- then the same step on backend="cuda": each CUTLASS sm_90a unit launch (fprop, dgrad, wgrad)
  with its device time, by layer and pass, next to the model's extension rows (the units' SASS
  read from the built `_C`), where the JSON has them, and the step's time next to the model's
  whole-step prediction for backend="cuda" (`measure_cutlass`; `--no-cutlass` skips).

    python tools/measure_kernels.py --out DIR     # -> DIR/model_vs_measured.md and .json

The GPU suite (benchmarks/gpu_suite.sh) runs it after the benchmarks. Without a CUDA GPU it says so
and exits with status 2. The pairing, joining and report are tested on the CPU
(tests/test_measure_kernels.py), the L2 probe under the Triton interpreter.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "tools")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import kernel_model as km  # noqa: E402

MODEL_JSON = os.path.join(ROOT, "docs", "kernel_model.json")


# ============================================================================ the L2 probe
@triton.jit
def l2_read_kernel(src, out, n_blocks, iters, BLOCK: tl.constexpr):
    """Program p reads blocks (p + i * programs) mod n_blocks of src, i < iters, through the L2 only
    (.cg: L1 bypassed, as the convolutions' cp.async.cg operand loads are), and writes their sum to
    out[p] (so no load is dead). With src a fraction of the L2's size, warmed, every read is an
    L2 hit: bytes read / time is the L2 -> SM bandwidth."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), tl.float32)
    for i in range(iters):
        blk = (pid + i * nprog) % n_blocks
        acc += tl.load(src + blk * BLOCK + offs, cache_modifier=".cg")
    tl.store(out + pid, tl.sum(acc, axis=0))


L2_BLOCK = 2048        # fp32 per program and iteration: 16 a thread (4 warps), four 16-byte loads
L2_WARPS = 4


def l2_probe_launch(src, out, iters: int):
    """One launch of the probe over `src` (fp32, a multiple of L2_BLOCK elements) with one program
    per element of `out`: returns the bytes it reads."""
    n_blocks = src.numel() // L2_BLOCK
    if n_blocks * L2_BLOCK != src.numel():
        raise ValueError(f"src must hold a multiple of {L2_BLOCK} elements, got {src.numel()}")
    l2_read_kernel[(out.numel(),)](src, out, n_blocks, iters, BLOCK=L2_BLOCK, num_warps=L2_WARPS)
    return out.numel() * iters * L2_BLOCK * src.element_size()


def l2_probe(device="cuda"):
    """(run, info): run() launches the probe once over a buffer of a quarter of the L2 (both
    halves of a split L2 serve it), 16 programs of 128 threads per SM (the most that fit: enough
    loads in flight), about 2 GB a launch; info: its bytes per launch and sizes. Run once here
    (compile, and the buffer into the L2)."""
    import torch
    props = torch.cuda.get_device_properties(device)
    l2 = int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
    n = max(L2_BLOCK, (l2 // 4) // 4 // L2_BLOCK * L2_BLOCK)
    src = torch.randn(n, device=device)
    programs = props.multi_processor_count * 16
    out = torch.empty(programs, device=device)
    iters = max(1, (2 << 30) // (programs * L2_BLOCK * 4))
    nbytes = l2_probe_launch(src, out, iters)

    def run():
        l2_probe_launch(src, out, iters)
    return run, dict(bytes_per_launch=nbytes, buffer_bytes=n * 4, l2_cache_bytes=l2,
                     programs=programs)


def measure_l2_bandwidth(device="cuda", reps: int = 20) -> dict:
    """The L2 -> SM read bandwidth in bytes per second (l2_probe; median of `reps` launches timed
    with CUDA events)."""
    run, info = l2_probe(device)
    t = statistics.median(event_ms(run, reps)) / 1e3
    return dict(info, l2_bytes_per_s=info["bytes_per_launch"] / t, median_s=t)


def event_ms(fn, reps: int, device="cuda") -> list:
    """fn()'s device time in ms, `reps` times, each between two CUDA events (synchronized); off
    CUDA (the tool's CPU test) the wall time."""
    import torch
    times = []
    if torch.device(device).type != "cuda":
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return times


# ============================================================================ running the step
class _Runner:
    """Stands in for a Triton kernel of the backend: runs it, and while `state.recording` records
    the launch (kernel_model.describe_launch) with the one config that ran (an autotuned kernel's
    best_config, set by the launch)."""

    def __init__(self, path, kernel, state):
        self.path, self.kernel, self.state = path, kernel, state

    def __getitem__(self, grid):
        return functools.partial(self._launch, grid)

    def _launch(self, grid, *args, **kwargs):
        from triton.runtime.autotuner import Autotuner
        ret = self.kernel[grid](*args, **kwargs)
        if getattr(self.state, "recording", False):
            cfg = self.kernel.best_config if isinstance(self.kernel, Autotuner) else None
            self.state.launches.append(km.describe_launch(self.path, self.kernel, self.state,
                                                          grid, args, kwargs, [cfg]))
        return ret


def labelled(launches) -> list:
    """Each recorded launch as the model names it: dict(kernel, layer, phase, pass, config)."""
    out = []
    for l in launches:
        w = km.work(l, 0)
        kw, warps, stages, _, maxnreg = l.configs[0]
        out.append(dict(kernel=l.kernel.split(".")[-1], layer=l.layer, phase=l.phase,
                        pass_=w["pass_"], config=km._cfg_text(kw, warps, stages, maxnreg)))
    return out


def device_kernels(prof) -> list:
    """(name, start_us, duration_us) of every device kernel a torch.profiler run saw, in start
    order (memcpy and memset activities included: they are device work of the step too)."""
    from torch.autograd import DeviceType
    evs = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    return sorted(((e.name, e.time_range.start, e.time_range.end - e.time_range.start)
                   for e in evs), key=lambda k: k[1])


def _owner(name: str, ours) -> str | None:
    """Which of our kernel names a device kernel's name is (Triton names a kernel by its
    function; a suffix some versions add is allowed), else None."""
    if name in ours:
        return name
    best = [o for o in ours if name.startswith(o + "_")]
    return max(best, key=len) if best else None


def pair(launches: list, kernels: list) -> tuple:
    """Each labelled launch with its device kernel's duration (ms), by kernel name and order.
    A kernel name whose launch and device counts differ is not paired at all (its launches get
    measured_ms None and the name is reported): a wrong pairing would be worse than none.
    Returns (launches with measured_ms, the other device kernels' [(name, ms)], mismatches)."""
    ours = {l["kernel"] for l in launches}
    dev = collections.defaultdict(list)
    other = []
    for name, _, dur in kernels:
        o = _owner(name, ours)
        if o is None:
            other.append((name, dur / 1e3))
        else:
            dev[o].append(dur / 1e3)
    host = collections.defaultdict(list)
    for l in launches:
        host[l["kernel"]].append(l)
    mismatches = {}
    out = [dict(l, measured_ms=None) for l in launches]
    by_id = {id(l): o for l, o in zip(launches, out)}
    for name, ls in host.items():
        if len(ls) != len(dev.get(name, [])):
            mismatches[name] = (len(ls), len(dev.get(name, [])))
            continue
        for l, ms in zip(ls, dev[name]):
            by_id[id(l)]["measured_ms"] = ms
    return out, other, mismatches


def join(measured: list, model_rows: list, gap_ms: float) -> list:
    """Each measured launch with the model's row for the same (layer, pass, kernel) and
    occurrence: the model's kernel time (its predicted_ms less the inter-launch gap it adds), its
    config and bound. Launches the model has no row for keep predicted_ms None."""
    rows = collections.defaultdict(list)
    for r in model_rows:
        rows[(r["layer"], r["pass"], r["name"])].append(r)
    seen = collections.Counter()
    out = []
    for m in measured:
        key = (m["layer"], m["pass_"], m["kernel"])
        i = seen[key]
        seen[key] += 1
        r = rows[key][i] if i < len(rows.get(key, ())) else None
        pred = None if r is None else r.get("kernel_ms", r["predicted_ms"] - gap_ms)
        ratio = (m["measured_ms"] / pred if r is not None and m["measured_ms"] is not None
                 and pred > 0 else None)
        out.append(dict(m, predicted_ms=pred, model_config=None if r is None else r["config"],
                        bound=None if r is None else r["bound"], ratio=ratio,
                        same_config=None if r is None else r["config"] == m["config"]))
    return out


def _spread(joined: list) -> dict:
    """Sums over the launches with both a measurement and a prediction, and the spread of
    measured / predicted (the Triton and the CUTLASS comparisons alike)."""
    paired = [j for j in joined if j["ratio"] is not None]
    ratios = sorted(j["ratio"] for j in paired)
    return dict(
        launches=len(joined), paired=len(paired),
        measured_ms=sum(j["measured_ms"] for j in paired),
        predicted_ms=sum(j["predicted_ms"] for j in paired),
        ratio_median=statistics.median(ratios) if ratios else None,
        ratio_min=ratios[0] if ratios else None, ratio_max=ratios[-1] if ratios else None,
        within_20pct=sum(1 for r in ratios if 1 / 1.2 <= r <= 1.2),
        within_2x=sum(1 for r in ratios if 0.5 <= r <= 2.0))


def summarize(joined: list, other: list, model_rows: list, gap_ms: float) -> dict:
    """The comparison in a few figures: _spread, how often the autotuner ran the model's pick,
    the aten and other kernels' totals against the model's aten rows."""
    aten_pred = sum(r["predicted_ms"] - gap_ms for r in model_rows if r["name"].startswith("aten."))
    return dict(
        _spread(joined),
        same_config=sum(1 for j in joined if j["ratio"] is not None and j["same_config"]),
        other_kernels=len(other), other_measured_ms=sum(ms for _, ms in other),
        aten_predicted_ms=aten_pred)


def measure_model(cfg: km.ModelConfig, model_rows: list, gap_ms: float, device="cuda",
                  warmup: int = 3, timed: int = 5, log=print, kernels_fn=None) -> dict:
    """Run `cfg`'s step on `device`: warm-up, the step timed with CUDA events (median of
    `timed`), one profiled step with every Triton launch labelled; paired and joined with
    `model_rows` (this config's rows of docs/kernel_model.json). `kernels_fn(prof, launches)`
    gives the device kernels (default: the profiler's; the CPU test makes them up)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.device(device).type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()
    state = km._State()
    state.recording = False
    with km.labelled_launches(state, _Runner):
        step = km.make_step(cfg, device)
        t0 = time.time()
        for _ in range(warmup):
            step(state)
        sync()
        log(f"[{cfg.name} b{cfg.batch}] {warmup} warm-up steps (autotuning, compiles) in "
            f"{time.time() - t0:.0f} s")
        times = event_ms(lambda: step(state), timed, device)
        state.launches.clear()
        state.recording = True
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            step(state)
            sync()
        state.recording = False
    launches = labelled(state.launches)
    kernels = (kernels_fn or (lambda p, _: device_kernels(p)))(prof, launches)
    measured, other, mismatches = pair(launches, kernels)
    joined = join(measured, model_rows, gap_ms)
    s = summarize(joined, other, model_rows, gap_ms)
    predicted_step = sum(r["predicted_ms"] for r in model_rows)
    s.update(step_ms=statistics.median(times), step_ms_all=times, predicted_step_ms=predicted_step,
             mismatches={k: list(v) for k, v in mismatches.items()})
    log(f"[{cfg.name} b{cfg.batch}] step {s['step_ms']:.3f} ms measured, {predicted_step:.3f} "
        f"ms predicted; {s['paired']} of {s['launches']} Triton launches paired")
    return dict(config=dataclasses.asdict(cfg), rows=joined, other=other, summary=s)


# ============================================================================ the CUTLASS units
# backend="cuda" runs every bf16 3x3 convolution but the first layer's on the CUTLASS sm_90a units
# (docs/cutlass_sm90.md): one op for the forward (fprop), one for the backward (dgrad, then wgrad),
# each launching its units from C++, where no Python wrapper sees them. The profiler links each
# device kernel to the op that launched it; a wrapper around the two ops records which layer
# each call belongs to, in call order (which is the profiler's op order).
_SM90_OPS = ("_conv3x3_relu_sm90", "_conv3x3_relu_sm90_backward")
# ... and the up-conv's input gradient and weight gradient (conv_transpose2x2 / up_concat's
# backward on that path; the weight gradient's unit is the 3x3 wgrad's kernel)
_SM90_UP_OP = "_conv_transpose2x2_dgrad_sm90"
_SM90_UP_WGRAD_OP = "_conv_transpose2x2_wgrad_sm90"
# ... and the up-conv itself (four launches, one a tap: one measurement, as the model's one row)
_SM90_UP_FPROP_OP = "_up_concat_sm90"
_SM90_ALL = _SM90_OPS + (_SM90_UP_OP, _SM90_UP_WGRAD_OP, _SM90_UP_FPROP_OP)


def cutlass_passes(calls: list, op_kernels: list) -> list:
    """Each CUTLASS launch with its layer and pass: `calls` are the recorded (layer, op) of the
    ops in call order, `op_kernels` the profiler's (op, [(kernel name, ms), ...]) in the same
    order. The forward op's kernel is fprop; the backward op's are dgrad then wgrad (the glue's
    order), told apart by name where the name says (our wgrad's device entry is WgradUnit). A
    mismatch of the two sequences raises: no guessed pairing."""
    if [op for _, op in calls] != [op for op, _ in op_kernels]:
        raise ValueError(f"the recorded calls ({len(calls)}) and the profiler's ops "
                         f"({len(op_kernels)}) differ")
    out = []
    for (layer, op), (_, kernels) in zip(calls, op_kernels):
        units = [(n, ms) for n, ms in kernels if "cutlass" in n]
        if op == _SM90_OPS[0]:
            names = ["fprop"] * len(units)
        elif op == _SM90_UP_OP:
            names = ["up_dgrad"] * len(units)
        elif op == _SM90_UP_WGRAD_OP:
            names = ["up_wgrad"] * len(units)
        elif op == _SM90_UP_FPROP_OP:   # its taps' launches summed
            units = [(units[0][0], sum(ms for _, ms in units))] if units else []
            names = ["up_fprop"] * len(units)
        else:
            wgrad = [i for i, (n, _) in enumerate(units) if "WgradUnit" in n]
            names = ["wgrad" if (i in wgrad if wgrad else i == len(units) - 1) else "dgrad"
                     for i in range(len(units))]
        out += [dict(layer=layer, pass_=p, kernel=n, measured_ms=ms)
                for p, (n, ms) in zip(names, units)]
    return out


def op_kernels_of(events) -> list:
    """(op, [(kernel name, ms), ...]) of each call of the CUTLASS ops, in start order, from
    the profiler's events: an op with an autograd formula is recorded twice, one event inside the
    other (the autograd layer and the kernel below it), so only the outermost counts, with the
    device kernels linked to it or to any event under it."""
    names = {"unet_fast::" + n: n for n in _SM90_ALL}

    def outermost(e):
        p = e.cpu_parent
        while p is not None:
            if p.name == e.name:
                return False
            p = p.cpu_parent
        return True

    def kernels(e):
        return [(k.name, k.duration / 1e3) for k in e.kernels] + [
            k for c in e.cpu_children for k in kernels(c)]
    return [(names[e.name], kernels(e))
            for e in sorted(events, key=lambda e: e.time_range.start)
            if e.name in names and outermost(e)]


def join_cutlass(measured: list, ext_rows: list) -> list:
    """Each measured unit launch with the model's extension row of its (layer, pass)."""
    rows = {(r["layer"], r["pass"]): r for r in ext_rows}
    out = []
    for m in measured:
        r = rows.get((m["layer"], m["pass_"]))
        pred = None if r is None else r["kernel_s"] * 1e3
        out.append(dict(m, predicted_ms=pred, model_config=None if r is None else r["config"],
                        bound=None if r is None else r["bound"],
                        ratio=m["measured_ms"] / pred if pred else None))
    return out


def measure_cutlass(cfg: km.ModelConfig, ext_rows: list, device="cuda", warmup: int = 2,
                    log=print, predicted_step_ms: float | None = None) -> dict:
    """backend="cuda" on `cfg`'s step: every CUTLASS unit launch of one profiled step with its
    device time, by layer and pass, next to the model's extension rows for that config; the
    step's time next to the model's prediction of the whole step (`predicted_step_ms`)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    ns = torch.ops.unet_fast
    state = km._State()
    calls = []
    saved = {name: getattr(ns, name) for name in _SM90_ALL if hasattr(ns, name)}

    def wrap(name):
        def call(*args, **kwargs):
            calls.append((state.layer, name))
            return saved[name](*args, **kwargs)
        return call
    try:
        for name in saved:
            setattr(ns, name, wrap(name))
        with km.labelled_launches(state, _Runner):
            step = km.make_step(cfg, device, backend="cuda")
            for _ in range(warmup):   # (and the units' first-run checks)
                step(state)
            torch.cuda.synchronize()
            times = event_ms(lambda: step(state), 3, device)
            calls.clear()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step(state)
                torch.cuda.synchronize()
    finally:
        for name, op in saved.items():
            setattr(ns, name, op)
    rows = join_cutlass(cutlass_passes(calls, op_kernels_of(prof.events())), ext_rows)
    s = dict(_spread(rows), step_ms=statistics.median(times), predicted_step_ms=predicted_step_ms)
    log(f"[{cfg.name} b{cfg.batch}] cuda backend: step {s['step_ms']:.3f} ms "
        f"(predicted {_f(predicted_step_ms)}); {s['launches']} CUTLASS unit launches, "
        f"{s['paired']} with a model row")
    return dict(config=dataclasses.asdict(cfg), rows=rows, summary=s)


# ============================================================================ the report
def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def report(results: list, l2: dict | None, meta: dict, cutlass: list = ()) -> str:
    lines = [
        "# Kernel model vs measurement",
        "",
        f"GPU: {meta.get('gpu', '?')}; torch {meta.get('torch', '?')}, Triton "
        f"{meta.get('triton', '?')}; {meta.get('date', '')}. Model: {meta.get('model_json')} "
        f"(predictions of a static model, compiled with Triton {meta.get('model_triton', '?')}).",
        "Measured: one bf16-autocast training step per model config on backend=\"triton\" after "
        "warm-up steps; each Triton launch's device time from torch.profiler (CUPTI), paired with "
        "its launch by kernel name and order; the step from CUDA events (median). Predicted: the "
        "model's kernel time (its per-launch figure less the 2 us gap it adds between launches). "
        "ratio = measured / predicted.",
        "",
    ]
    if l2:
        lines += [f"- L2 -> SM read bandwidth, measured: **{l2['l2_bytes_per_s'] / 1e12:.2f} TB/s** "
                  f"(the model assumes {meta.get('model_l2_bw', 10e12) / 1e12:.1f}; probe over "
                  f"{l2['buffer_bytes'] / 2**20:.0f} MiB of a {l2['l2_cache_bytes'] / 2**20:.0f} MiB "
                  f"L2, {l2['programs']} programs)", ""]
    for res in results:
        c, s = res["config"], res["summary"]
        lines += [f"## {c['name']}: {c['size']}x{c['size']}, batch {c['batch']}, padding {c['padding']}",
                  "",
                  f"- Step: measured **{s['step_ms']:.3f} ms**, predicted {s['predicted_step_ms']:.3f} ms "
                  f"(ratio {s['step_ms'] / s['predicted_step_ms']:.2f}).",
                  f"- Triton launches paired with a device kernel: {s['paired']} of {s['launches']}; "
                  f"their measured sum {s['measured_ms']:.3f} ms, predicted {s['predicted_ms']:.3f} ms.",
                  f"- measured / predicted per launch: median {_f(s['ratio_median'], '{:.2f}')}, "
                  f"range {_f(s['ratio_min'], '{:.2f}')} to {_f(s['ratio_max'], '{:.2f}')}; within 20%: "
                  f"{s['within_20pct']}, within 2x: {s['within_2x']} of {s['paired']}.",
                  f"- The autotuner ran the model's pick in {s['same_config']} of {s['paired']} launches.",
                  f"- Other device kernels (aten, copies): {s['other_kernels']}, {s['other_measured_ms']:.3f} ms "
                  f"measured; the model's aten rows: {s['aten_predicted_ms']:.3f} ms.",
                  ]
        if s["mismatches"]:
            lines.append("- Not paired (launches vs device kernels differ): " + ", ".join(
                f"{k} ({a} vs {b})" for k, (a, b) in s["mismatches"].items()))
        lines += ["", "| layer | pass | kernel | model config | ran config | predicted ms | measured ms "
                  "| ratio | model bound |", "|---|---|---|---|---|---|---|---|---|"]
        for j in res["rows"]:
            ran = j["config"] if not j["same_config"] else "same"
            lines.append(f"| {j['layer']} | {j['pass_']} | {j['kernel']} | {j['model_config'] or '-'} "
                         f"| {ran} | {_f(j['predicted_ms'])} | {_f(j['measured_ms'])} "
                         f"| {_f(j['ratio'], '{:.2f}')} | {j['bound'] or '-'} |")
        top = collections.Counter()
        for name, ms in res["other"]:
            top[name[:80]] += ms
        if top:
            lines += ["", "Other device kernels, by total time:", ""]
            lines += [f"- {ms:.3f} ms: `{name}`" for name, ms in top.most_common(12)]
        lines.append("")
    for res in cutlass:
        c, s = res["config"], res.get("summary")
        lines += [f"## {c['name']}: CUTLASS sm_90a units (backend=\"cuda\"), per layer and pass", ""]
        if res.get("error"):
            lines += [f"Not measured: {res['error']}", ""]
            continue
        ps = s.get("predicted_step_ms")
        lines += [f"- Step on backend=\"cuda\": {s['step_ms']:.3f} ms (CUDA events, median of 3); "
                  f"predicted {_f(ps)} ms" + (f" (ratio {s['step_ms'] / ps:.2f})." if ps else "."),
                  f"- Unit launches: {s['launches']}, with a model row {s['paired']}; measured "
                  f"{s['measured_ms']:.3f} ms, predicted {s['predicted_ms']:.3f} ms; measured / "
                  f"predicted median {_f(s['ratio_median'], '{:.2f}')}.", "",
                  "| layer | pass | model config | predicted ms | measured ms | ratio | model bound |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            lines.append(f"| {r['layer']} | {r['pass_']} | {r['model_config'] or '-'} | "
                         f"{_f(r['predicted_ms'])} | {_f(r['measured_ms'])} | "
                         f"{_f(r['ratio'], '{:.2f}')} | {r['bound'] or '-'} |")
        lines.append("")
    return "\n".join(lines)


def load_model(path: str) -> dict:
    with open(path) as f:
        d = json.load(f)
    if "config" not in next(iter(d["summary"].values()), {}):
        raise SystemExit(f"{path} has no model configs (summary.<name>.config): regenerate it with "
                         "python tools/kernel_model.py")
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-json", default=MODEL_JSON,
                    help="the model's predictions (default: the committed docs/kernel_model.json)")
    ap.add_argument("--models", default=None,
                    help="comma-separated model names of the JSON (default: all of them)")
    ap.add_argument("--out", required=True, help="folder for model_vs_measured.md and .json")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-l2", action="store_true", help="skip the L2 bandwidth probe")
    ap.add_argument("--no-cutlass", action="store_true",
                    help="skip the CUTLASS units' measurement (backend=\"cuda\")")
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("measure_kernels.py: needs a CUDA GPU (torch.cuda.is_available() is False); the "
              "model alone runs anywhere: python tools/kernel_model.py", file=sys.stderr)
        return 2
    model = load_model(args.model_json)
    names = args.models.split(",") if args.models else list(model["summary"])
    unknown = [n for n in names if n not in model["summary"]]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; {args.model_json} has {list(model['summary'])}")
    gap_ms = model["machine"]["launch_gap_s"] * 1e3
    os.makedirs(args.out, exist_ok=True)
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=time.strftime("%Y-%m-%d %H:%M"), model_json=os.path.relpath(args.model_json, ROOT),
                model_triton=model.get("triton", "?"), model_l2_bw=model["machine"]["l2_bw"])
    l2 = None
    if not args.no_l2:
        l2 = measure_l2_bandwidth()
        print(f"L2 -> SM read bandwidth: {l2['l2_bytes_per_s'] / 1e12:.2f} TB/s measured "
              f"(the model assumes {model['machine']['l2_bw'] / 1e12:.1f})")
    results, cutlass = [], []
    for name in names:
        cfg = km.ModelConfig(**model["summary"][name]["config"])
        rows = [r for r in model["kernels"] if r["model"] == name]
        results.append(measure_model(cfg, rows, gap_ms, warmup=args.warmup))
        s = results[-1]["summary"]
        # one line the GPU suite puts in its stage table
        print(f"MODEL {name}: step {s['step_ms']:.2f} ms measured vs {s['predicted_step_ms']:.2f} "
              f"predicted; per launch measured/predicted median {_f(s['ratio_median'], '{:.2f}')}")
        _write(args.out, results, l2, meta, cutlass)
    # the CUTLASS units next to their model: after the Triton part, which a failure here keeps
    ext_rows = (model.get("extension") or {}).get("rows") or []
    steps = {st["model"]: st["predicted_s"] * 1e3
             for st in (model.get("extension") or {}).get("steps") or []}
    for name in ([] if args.no_cutlass or not ext_rows else names):
        cfg = km.ModelConfig(**model["summary"][name]["config"])
        try:
            cutlass.append(measure_cutlass(cfg, [r for r in ext_rows if r["model"] == name],
                                           predicted_step_ms=steps.get(name)))
        except Exception as e:  # noqa: BLE001 - said in the report, not lost
            cutlass.append(dict(config=dataclasses.asdict(cfg), error=f"{type(e).__name__}: {e}"))
            print(f"CUTLASS {name}: not measured ({type(e).__name__}: {e})", file=sys.stderr)
        _write(args.out, results, l2, meta, cutlass)
    print(f"wrote {os.path.join(args.out, 'model_vs_measured.md')}")
    return 0


def _write(out, results, l2, meta, cutlass):
    """The report and its JSON as they stand (written after each measurement: a stage cut by its
    time limit keeps what was measured)."""
    with open(os.path.join(out, "model_vs_measured.md"), "w") as f:
        f.write(report(results, l2, meta, cutlass))
    with open(os.path.join(out, "model_vs_measured.json"), "w") as f:
        json.dump(dict(meta=meta, l2=l2, results=results, cutlass=cutlass), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
