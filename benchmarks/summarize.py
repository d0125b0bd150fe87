#!/usr/bin/env python3
"""Summarize a `pytest benchmarks/ --benchmark-json=results.json` run.

    python benchmarks/summarize.py RESULTS.json [--out DIR] [--stages stages.tsv] [--log log.txt]

Writes DIR/summary.md (markdown tables: ours against eager and torch.compile, per layer and whole
model, ratios from the same run, the measured ceilings, the targets of docs/design.md section 3)
and DIR/per_layer.png (per-layer times, matplotlib), and prints the whole-model table and the
targets.

Ratios are `baseline time / our time`: above 1 means ours is faster. "ours" is the faster of the
triton and cuda backends on that row; auto is reported on its own. The eager baseline of the
targets is eager channels_last (cuDNN), falling back to eager NCHW where it is missing.
Needs only the standard library (matplotlib for the chart).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

# the fused ops (harness.FUSED_OPS): sums over a step count the unfused ones they repeat
FUSED_OPS = ("conv3x3_relu_pool", "up_concat", "concat_conv3x3_relu", "conv3x3_relu_conv1x1")

PROVIDERS = ("eager", "eager_cl", "compile", "compile_max", "triton", "cuda", "auto", "auto_ckpt",
             "auto_up")
LABELS = {"eager": "eager NCHW", "eager_cl": "eager CL", "compile": "compile",
          "compile_max": "compile max-autotune", "triton": "triton", "cuda": "cuda", "auto": "auto",
          "auto_ckpt": "auto + ckpt", "auto_up": "auto + up recomputed"}
OURS = ("triton", "cuda")
NOISE = 0.05  # relative: differences below this are treated as run-to-run noise


# --------------------------------------------------------------------------- loading
def load(path: str):
    """(records, meta) from a pytest-benchmark JSON file or a results folder holding results.json."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        data = json.load(f)
    records = []
    for b in data.get("benchmarks", []):
        info = dict(b.get("extra_info") or {})
        if "median_ms" not in info and b.get("stats", {}).get("median") is not None:
            info["median_ms"] = b["stats"]["median"] * 1e3
            info.setdefault("timer", "pytest-benchmark")
        info.setdefault("name", b.get("name"))
        info["test"] = b.get("fullname")
        records.append(info)
    meta = dict(data.get("unet_fast") or {})
    meta.setdefault("machine_info", data.get("machine_info"))
    meta.setdefault("commit_info", data.get("commit_info"))
    meta.setdefault("datetime", data.get("datetime"))
    return records, meta


# --------------------------------------------------------------------------- formatting
def fmt_ms(v):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_us(v_ms):
    return "—" if v_ms is None else f"{v_ms * 1e3:.1f}"


def fmt_ratio(v):
    return "—" if v is None else f"{v:.2f}x"


def fmt_pct(v):
    return "—" if v is None else f"{100 * v:.0f}%"


def fmt_bytes(v):
    return "—" if v is None else f"{v / 2**30:.2f} GiB"


def md_table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def text_table(header, rows) -> str:
    cols = list(zip(*([header] + [[str(c) for c in r] for r in rows]))) if rows else [[h] for h in header]
    widths = [max(len(str(c)) for c in col) for col in cols]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def ratio(base, ours):
    return base / ours if base and ours else None


# --------------------------------------------------------------------------- grouping
def by_kind(records, kind):
    return [r for r in records if r.get("kind") == kind and r.get("median_ms") is not None]


def pivot(records, key_fields):
    """{key: {provider: record}} in first-appearance order."""
    out: dict = collections.OrderedDict()
    for r in records:
        key = tuple(r.get(k) for k in key_fields)
        out.setdefault(key, {})[r.get("provider")] = r
    return out


def best_ours(row: dict):
    cands = [(row[p]["median_ms"], p) for p in OURS if p in row]
    return min(cands) if cands else (None, None)


def eager_base(row: dict):
    for p in ("eager_cl", "eager"):
        if p in row:
            return row[p]["median_ms"], p
    return None, None


def t(row, p):
    return row[p]["median_ms"] if p in row else None


# --------------------------------------------------------------------------- sections
def _name_batch(config):
    """("valid572", 8) of a benchmark config "valid572-b8"; (config, None) for another name."""
    name, _, batch = config.rpartition("-b")
    return (name, int(batch)) if batch.isdigit() else (config, None)


def _mem_cell(mem_ours, mem_base, config, mode, provider):
    """The measured peak of ours over eager's, and the memory model's for the same backend."""
    name, batch = _name_batch(config)
    pred = memory_model_ratio(name, batch, provider, mode=mode) if batch else None
    measured = f"{mem_ours / mem_base:.2f}" if mem_ours and mem_base else "—"
    return measured + (f" (model {pred:.2f})" if pred else "")


def model_rows(records):
    rows = []
    for (cfg, mode, dtype), row in pivot(by_kind(records, "model"), ("config", "mode", "dtype")).items():
        ours_t, ours_p = best_ours(row)
        base_t, _ = eager_base(row)
        mem_ours = row[ours_p].get("peak_mem_bytes") if ours_p else None
        mem_base = (row.get("eager_cl") or row.get("eager") or {}).get("peak_mem_bytes")
        cells = []
        predicted = kernel_model_ms(cfg, mode) if dtype == "bf16" else None
        for p in PROVIDERS:
            if p in row:
                ips = row[p].get("images_per_s")
                ms = row[p]["median_ms"]
                # (the kernel model's step: forward and backward of a sum, no loss or optimizer)
                model = (f"model {fmt_ms(predicted)}{' fwd+bwd' if mode == 'train' else ''}"
                         if p == "triton" and predicted else "")
                cells.append(f"{ips:.0f} img/s ({fmt_ms(ms)} ms{'; ' + model if model else ''})"
                             if ips else fmt_ms(ms) + (f" ({model})" if model else ""))
            else:
                cells.append("—")
        frac = row[ours_p].get("frac_peak") if ours_p else None
        rows.append([cfg, mode, dtype] + cells + [
            f"{ours_p}: {fmt_ratio(ratio(base_t, ours_t))}" if ours_p else "—",
            fmt_ratio(ratio(t(row, "compile"), ours_t)), fmt_ratio(ratio(t(row, "compile_max"), ours_t)),
            fmt_ratio(ratio(base_t, t(row, "auto"))),
            fmt_pct(frac),
            _mem_cell(mem_ours, mem_base, cfg, mode, ours_p)])
    header = ["model", "step", "dtype"] + [LABELS[p] for p in PROVIDERS] + [
        "ours vs eager", "ours vs compile", "ours vs compile max", "auto vs eager", "ours % bf16 peak",
        "ours peak mem / eager"]
    return header, rows


LAYER_SECTIONS = [("valid572-b8", "fwd+bwd"), ("valid572-b8", "fwd"), ("valid572-b8", "bwd"),
                  ("same512-b16", "fwd+bwd"), ("same512-b16", "fwd"), ("same512-b16", "bwd"),
                  ("valid572-b1", "fwd+bwd"), ("valid572-b1", "fwd"), ("valid572-b1", "bwd")]


def layer_sections(records):
    """[(config, mode, {(layer, op, shape, uses): {provider: record}})] in a sensible order."""
    recs = by_kind(records, "layer")
    groups = collections.OrderedDict()
    for r in recs:
        groups.setdefault((r.get("config"), r.get("mode")), []).append(r)
    order = [k for k in LAYER_SECTIONS if k in groups] + [k for k in groups if k not in LAYER_SECTIONS]
    return [(cfg, mode, pivot(groups[(cfg, mode)], ("layer", "op", "shape", "uses"))) for cfg, mode in order]


def layer_table(rows_by_key):
    header = ["layer", "op", "shape"] + [LABELS[p] + " ms" for p in PROVIDERS] + [
        "ours vs eager", "ours vs compile", "auto vs eager", "ours % peak"]
    rows = []
    total = collections.defaultdict(float)
    counted = collections.defaultdict(int)
    for (layer, op, shape, uses), row in rows_by_key.items():
        ours_t, ours_p = best_ours(row)
        base_t, _ = eager_base(row)
        comp = min([x for x in (t(row, "compile"), t(row, "compile_max")) if x] or [None]) if row else None
        frac = row[ours_p].get("frac_peak") if ours_p else None
        kind = "copy" if (row.get(ours_p or "", {}) or {}).get("bound") == "memory" else "bf16"
        n_uses = len((uses or layer or "").split(",")) if op not in FUSED_OPS else 0
        for p in PROVIDERS:
            if p in row and n_uses:
                total[p] += n_uses * row[p]["median_ms"]
                counted[p] += 1
        rows.append([layer, op, shape] + [fmt_ms(t(row, p)) for p in PROVIDERS] + [
            f"{ours_p}: {fmt_ratio(ratio(base_t, ours_t))}" if ours_p else "—",
            fmt_ratio(ratio(comp, ours_t)), fmt_ratio(ratio(base_t, t(row, "auto"))),
            f"{fmt_pct(frac)} {kind}" if frac else "—"])
    n_layers = sum(1 for (l, op, s, u) in rows_by_key if op not in FUSED_OPS)
    tot_row = ["Σ unfused ops × uses", "", ""] + [
        (fmt_ms(total[p]) + ("" if counted[p] == n_layers else f" ({counted[p]}/{n_layers})")) if counted[p] else "—"
        for p in PROVIDERS] + ["", "", "", ""]
    rows.append(tot_row)
    return header, rows


MEMORY_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                            "memory_model.json")


KERNEL_MODEL = os.path.join(os.path.dirname(MEMORY_MODEL), "kernel_model.json")


def kernel_model_ms(config, mode, path=None):
    """tools/kernel_model.py's predicted time in ms of the Triton backend's bf16 step for a
    benchmark config ("valid572-b8"): its training step (forward and backward) or, with mode
    "infer", its inference forward; None where the model has no such config."""
    name, batch = _name_batch(config)
    try:
        with open(path or KERNEL_MODEL) as f:
            s = json.load(f)["summary"][name]
        if batch is None or s["config"]["batch"] != batch:
            return None
        return 1e3 * (s["inference"] if mode == "infer" else s)["predicted_s"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def memory_model_ratio(model, batch, provider, path=None, mode="train"):
    """tools/memory_model.py's predicted peak of `provider` over eager's in a training step (or
    with mode="infer" an inference step), for the measured one to be read beside it (None where
    the model has no such row: auto, which measures)."""
    try:
        with open(path or MEMORY_MODEL) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    for res in results:
        if res.get("model") == model and res.get("batch") == batch:
            for row in res.get("rows" if mode == "train" else "infer_rows", []):
                if row.get("provider") == provider:
                    return row.get("ratio_to_eager")
    return None


def targets(records, meta):
    """The targets of docs/design.md section 3, evaluated on this run: [(target, measured, status)]."""
    out = []
    models = pivot(by_kind(records, "model"), ("config", "mode", "dtype"))
    train = models.get(("valid572-b8", "train", "bf16"), {})
    infer = models.get(("valid572-b8", "infer", "bf16"), {})
    ot, op_ = best_ours(train)
    bt, bp = eager_base(train)

    def status(ok):
        return "no data" if ok is None else ("met" if ok else "NOT met")

    r = ratio(bt, ot)
    out.append(("training step ≥ 1.3x eager (paper U-Net, b8, bf16)",
                f"{fmt_ratio(r)} ({op_} vs {bp})" if r else "—", status(None if r is None else r >= 1.3)))
    r = ratio(t(train, "compile_max"), ot)
    out.append(("training step ≥ 1.15x torch.compile max-autotune", fmt_ratio(r),
                status(None if r is None else r >= 1.15)))
    ips = train[op_].get("images_per_s") if op_ else None
    gpu = (meta.get("env") or {}).get("gpu") or ""
    out.append((f"training step ≥ 350 images/s (H100; this GPU: {gpu or '?'})",
                f"{ips:.0f} img/s" if ips else "—", status(None if ips is None else ips >= 350)))
    it, ip = best_ours(infer)
    r = ratio(eager_base(infer)[0], it)
    out.append(("inference ≥ 1.5x eager", f"{fmt_ratio(r)} ({ip})" if r else "—",
                status(None if r is None else r >= 1.5)))
    # memory: of our configurations that meet the speed target, the leanest (the fastest's where
    # none does): a user can have both at once
    mb = train[bp].get("peak_mem_bytes") if bp else None
    fast = [p for p in ("triton", "cuda", "auto", "auto_up", "auto_ckpt") if p in train
            and train[p].get("peak_mem_bytes") and (ratio(bt, t(train, p)) or 0) >= 1.3]
    mp = min(fast, key=lambda p: train[p]["peak_mem_bytes"]) if fast else op_
    mo = train[mp].get("peak_mem_bytes") if mp else None
    r = mo / mb if mo and mb else None
    predicted = memory_model_ratio("valid572", 8, mp)   # (auto measures: no model row)
    out.append(("peak training memory ≤ 0.8x eager",
                (f"{r:.2f}x ({mp})" if r else "—")
                + (f" (model: {predicted:.2f}x, docs/memory_model.md)" if predicted else ""),
                status(None if r is None else r <= 0.8)))

    layers = [(cfg, mode, rows) for cfg, mode, rows in layer_sections(records)]
    conv_n = conv_ok = 0
    mem_n = mem_ok = 0
    auto_n = auto_bad = 0
    worst_mem = None
    for cfg, mode, rows in layers:
        for (layer, op, shape, uses), row in rows.items():
            ours_t, ours_p = best_ours(row)
            base_t, _ = eager_base(row)
            if op in ("conv3x3_relu", "conv3x3_relu_pool") and mode == "fwd" and ours_t and base_t:
                conv_n += 1
                conv_ok += ours_t <= base_t * (1 + NOISE)
            if op in ("max_pool2x2", "crop_concat") and mode == "fwd" and ours_p:
                f = row[ours_p].get("frac_peak")
                if f is not None:
                    mem_n += 1
                    mem_ok += f >= 0.85
                    worst_mem = f if worst_mem is None else min(worst_mem, f)
            a = t(row, "auto")
            eag = min([x for x in (t(row, "eager"), t(row, "eager_cl")) if x] or [None]) if row else None
            if a and eag:
                auto_n += 1
                auto_bad += a > eag * (1 + NOISE)
    out.append(("fused conv3x3+bias+ReLU no slower than cuDNN (eager conv+ReLU), every layer (fwd)",
                f"{conv_ok}/{conv_n} layers" if conv_n else "—", status(None if not conv_n else conv_ok == conv_n)))
    out.append(("max-pool and crop-concat ≥ 85% of copy bandwidth (fwd)",
                f"{mem_ok}/{mem_n} layers (worst {fmt_pct(worst_mem)})" if mem_n else "—",
                status(None if not mem_n else mem_ok == mem_n)))
    out.append((f"auto never slower than eager (beyond {NOISE:.0%})",
                f"{auto_n - auto_bad}/{auto_n} rows" if auto_n else "—",
                status(None if not auto_n else auto_bad == 0)))
    return out


def skipped_summary(meta, limit=12):
    reasons = collections.Counter()
    for s in meta.get("skipped") or []:
        reason = s.get("reason", "")
        # one line per kind of reason: cut the per-case details
        reasons[reason.split(" (needs ~")[0][:200]] += 1
    return reasons.most_common(limit)


def machine_lines(meta):
    env = meta.get("env") or {}
    ceil = meta.get("ceilings") or {}
    ci = meta.get("commit_info") or {}
    lines = []
    gpu = env.get("gpu")
    if gpu:
        lines.append(f"- GPU: **{gpu}** (sm_{str(env.get('gpu_capability', '')).replace('.', '')}, "
                     f"{env.get('gpu_sms')} SMs, {env.get('gpu_memory_gib')} GiB, L2 "
                     f"{(env.get('gpu_l2_bytes') or 0) / 2**20:.0f} MiB)")
    else:
        lines.append(f"- No GPU: CPU {env.get('cpu')} ({env.get('cpu_count')} cores)")
    lines.append(f"- torch {env.get('torch')}, Triton {env.get('triton')}, CUDA {env.get('cuda')}, "
                 f"cuDNN {env.get('cudnn')}, Python {env.get('python')}, unet_fast {env.get('unet_fast')}")
    if env.get("gpu"):
        lines.append(f"- TF32: cuDNN {env.get('cudnn_allow_tf32')}, matmul {env.get('matmul_allow_tf32')} "
                     "(PyTorch defaults; fp32 convolutions use TF32)")
    if env.get("backends"):
        lines.append("- backends: " + ", ".join(f"{k}: {'ok' if v is None else 'unavailable (' + str(v)[:120] + ')'}"
                                               for k, v in env["backends"].items()))
    if ci.get("id"):
        lines.append(f"- commit {ci.get('id', '')[:12]}{' (dirty)' if ci.get('dirty') else ''} "
                     f"{ci.get('branch') or ''}")
    if meta.get("datetime"):
        lines.append(f"- run at {meta['datetime']}")
    s = meta.get("settings") or {}
    if s:
        budget = f"{s['budget']:.0f} s" if s.get("budget") else "none"
        lines.append(f"- level {s.get('level')}, time budget {budget}, providers "
                     f"{','.join(s.get('providers') or [])}")
    if ceil:
        bw, tf = ceil.get("copy_gbps") or 0, ceil.get("matmul_tflops") or 0
        bw_s = f"{bw / 1e3:.2f} TB/s" if bw >= 1000 else f"{bw:.1f} GB/s"
        tf_s = f"{tf:.0f} TFLOP/s" if tf >= 10 else f"{tf:.3g} TFLOP/s"
        l2 = ceil.get("l2_gbps")
        l2_s = f", L2 -> SM read **{l2 / 1e3:.2f} TB/s** (the kernel model assumes 10)" if l2 else ""
        lines.append(f"- ceilings measured in this run ({ceil.get('device', '?')}): copy **{bw_s}** (bytes read + "
                     f"written), {ceil.get('matmul_dtype', 'bf16')} matmul {ceil.get('matmul_n', '')}^3 **{tf_s}**"
                     f"{l2_s}")
    return lines


def stages_lines(stages_path):
    if not stages_path or not os.path.exists(stages_path):
        return []
    rows = []
    with open(stages_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3 and parts[0] != "stage":
                rows.append(parts + [""] * (4 - len(parts)))
    if not rows:
        return []
    return ["## Suite stages", "", md_table(["stage", "status", "seconds", "detail"],
                                            [[c.replace("|", "/") for c in r[:4]] for r in rows]), ""]


def render_summary_md(records, meta, stages_path=None, title=None) -> str:
    env = meta.get("env") or {}
    out = [f"# {title or 'unet_fast benchmarks'}", ""]
    out += machine_lines(meta) + [""]
    out += stages_lines(stages_path)
    timer = ("CUDA-event timings after warm-up (random inputs, rotated through several sets where one "
             "set fits in L2)" if env.get("gpu") else "CPU timings (perf_counter) after warm-up")
    out += [f"Times are medians of {timer}. Ratios are baseline time / our time, from this run: above 1 "
            "means ours is faster. \"ours\" is the faster of triton and cuda on each row.", ""]
    header, rows = model_rows(records)
    if rows:
        out += ["## Whole model", "", "Cells: images/s (median ms per step). train = forward + backward + "
                "SGD step; infer = forward under no_grad; bf16/fp16 = autocast.", "", md_table(header, rows), ""]
    tg = targets(records, meta)
    if any(s != "no data" for _, _, s in tg):
        out += ["## Targets (docs/design.md, section 3)", "", md_table(["target", "measured", "status"], tg), ""]
    secs = layer_sections(records)
    if secs:
        out += ["## Per layer (bf16)", "",
                "Each distinct layer shape once (\"uses\" in results.json lists every layer with that "
                "shape). fwd under no_grad; bwd = the backward alone; fwd+bwd = both. \"% peak\" is "
                "TFLOP/s over the measured bf16 matmul rate, or GB/s over the measured copy bandwidth "
                "for the memory-bound ops. The Σ row adds the unfused ops over all layers of the model.", ""]
        for cfg, mode, rows_by_key in secs:
            h, r = layer_table(rows_by_key)
            out += [f"### {cfg} {mode}", "", md_table(h, r), ""]
    other = [r for r in records if r.get("kind") in ("dispatch", "cpu_kernel", "cpu_model")]
    if other:
        out += ["## CPU subset", "", "```", render_cpu(records), "```", ""]
    sk = skipped_summary(meta)
    if sk:
        out += ["## Not run", "", md_table(["count", "reason"], [(n, r.replace("|", "/")) for r, n in sk]), ""]
    fails = meta.get("failed") or []
    if fails:
        rows = [(f["test"], f["message"].replace("|", "/").replace("\n", " ")[:200]) for f in fails[:40]]
        out += ["## Failed", "", md_table(["test", "message"], rows), ""]
    if not env.get("gpu"):
        out += ["(No GPU in this run: the GPU tables are empty.)", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- CPU / terminal
def render_cpu(records) -> str:
    parts = []
    disp = pivot(by_kind(records, "dispatch"), ("op", "shape"))
    if disp:
        rows = []
        for (op, shape), row in disp.items():
            f = t(row, "F")
            rows.append([op, shape, fmt_us(f)] + [
                f"{fmt_us(t(row, p))} (+{fmt_us(t(row, p) - f)})" if t(row, p) and f else fmt_us(t(row, p))
                for p in ("torch", "auto", "cuda")])
        parts.append("dispatch overhead, forward on tiny fp32 tensors (µs; + = above calling F directly)\n"
                     + text_table(["op", "shape", "F direct", "ops torch", "ops auto", "ops cuda"], rows))
    kern = pivot(by_kind(records, "cpu_kernel"), ("config", "layer", "op", "mode"))
    if kern:
        rows = []
        for (cfg, layer, op, mode), row in kern.items():
            r, c = t(row, "reference"), t(row, "cuda")
            rate = row.get("cuda", {})
            perf = (f"{rate['gbps']:.1f} GB/s" if rate.get("gbps") else
                    f"{rate['tflops'] * 1e3:.3g} GFLOP/s" if rate.get("tflops") else "—")
            rows.append([cfg, layer, op, mode, fmt_ms(r), fmt_ms(c), fmt_ratio(ratio(r, c)), perf])
        parts.append("C++ CPU kernels (backend='cuda' on CPU tensors) vs reference, fp32 "
                     "(ms; ratio = reference / cuda)\n"
                     + text_table(["config", "layer", "op", "mode", "reference", "cuda", "ratio", "cuda rate"], rows))
    mod = pivot(by_kind(records, "cpu_model"), ("config",))
    if mod:
        rows = []
        for (cfg,), row in mod.items():
            ref = t(row, "reference")
            for p, rec in row.items():
                rows.append([cfg, p, fmt_ms(rec["median_ms"]), fmt_ratio(ratio(ref, rec["median_ms"])),
                             f"{rec['tflops'] * 1e3:.1f}" if rec.get("tflops") else "—",
                             "—" if rec.get("rel_err_vs_reference") is None
                             else f"{rec['rel_err_vs_reference']:.1e}"])
        parts.append("small whole-model forward (ms; ratio = reference / provider)\n"
                     + text_table(["config", "provider", "ms", "ratio", "GFLOP/s", "rel err"], rows))
    return "\n\n".join(parts)


def render_terminal(records, meta) -> str:
    parts = []
    ceil = meta.get("ceilings") or {}
    if ceil.get("copy_gbps"):
        parts.append(f"ceilings ({ceil.get('device')}): copy {ceil['copy_gbps']:.1f} GB/s (read+write), "
                     f"{ceil.get('matmul_dtype', 'bf16')} matmul {ceil.get('matmul_tflops', 0):.2f} TFLOP/s")
    cpu = render_cpu(records)
    if cpu:
        parts.append(cpu)
    header, rows = model_rows(records)
    if rows:
        keep = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
        parts.append("whole model\n" + text_table([header[i] for i in keep], [[r[i] for i in keep] for r in rows]))
    n_layers = len(by_kind(records, "layer"))
    if n_layers:
        parts.append(f"{n_layers} layer benchmarks (tables: benchmarks/summarize.py RESULTS.json)")
    sk = skipped_summary(meta, limit=8)
    if sk:
        parts.append("not run:\n" + "\n".join(f"  {n:5d} x {r}" for r, n in sk))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- chart
def plot_per_layer(records, path, max_panels=4) -> bool:
    secs = [s for s in layer_sections(records) if s[2]][:max_panels]
    if not secs:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    heights = [max(3.0, 0.28 * len(rows) + 1.5) for _, _, rows in secs]
    fig, axes = plt.subplots(len(secs), 1, figsize=(11, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    colors = dict(zip(PROVIDERS, ["#9e9e9e", "#424242", "#64b5f6", "#1565c0", "#e65100", "#2e7d32", "#ad1457", "#6a1b9a"]))
    for ax, (cfg, mode, rows) in zip(axes[:, 0], secs):
        keys = list(rows)
        provs = [p for p in PROVIDERS if any(p in rows[k] for k in keys)]
        h = 0.8 / max(1, len(provs))
        for j, p in enumerate(provs):
            ys, xs = [], []
            for i, k in enumerate(keys):
                if p in rows[k]:
                    ys.append(i + (j - (len(provs) - 1) / 2) * h)
                    xs.append(rows[k][p]["median_ms"])
            ax.barh(ys, xs, height=h, color=colors[p], label=LABELS[p])
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([f"{k[0]} {k[1]}" for k in keys], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("median ms (log)")
        ax.set_title(f"{cfg} {mode}, bf16")
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results.json from pytest --benchmark-json, or a folder holding it")
    ap.add_argument("--out", help="folder for summary.md and per_layer.png (default: the results' folder)")
    ap.add_argument("--stages", help="stages.tsv written by gpu_suite.sh")
    ap.add_argument("--title")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.exists(args.results):
        print(f"summarize.py: {args.results} does not exist", file=sys.stderr)
        return 2
    try:
        records, meta = load(args.results)
    except (json.JSONDecodeError, OSError) as e:
        print(f"summarize.py: cannot read {args.results}: {e}", file=sys.stderr)
        return 2
    out = args.out or (args.results if os.path.isdir(args.results) else os.path.dirname(os.path.abspath(args.results)))
    os.makedirs(out, exist_ok=True)
    md = render_summary_md(records, meta, args.stages, args.title)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(md + "\n")
    plotted = False
    if not args.no_plot:
        try:
            plotted = plot_per_layer(records, os.path.join(out, "per_layer.png"))
        except Exception as e:  # noqa: BLE001 - a chart must not lose the tables
            print(f"summarize.py: no chart ({type(e).__name__}: {e})", file=sys.stderr)
    print(render_terminal(records, meta))
    tg = targets(records, meta)
    if any(s != "no data" for _, _, s in tg):
        print("\nTargets (docs/design.md, section 3)\n" + text_table(["target", "measured", "status"], tg))
    chart = f" and {os.path.join(out, 'per_layer.png')}" if plotted else ""
    print(f"\nwrote {os.path.join(out, 'summary.md')}{chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
