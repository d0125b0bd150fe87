#!/usr/bin/env python3
"""Compare two benchmark result folders (or results.json files): which benchmarks got faster or
slower.

    python benchmarks/compare.py OLD NEW [--threshold 0.05] [--kind layer|model|...]
                                 [--provider triton] [--out compare.md] [--fail-on-slower]

Benchmarks are matched by name (config, layer, op, mode, dtype, provider). A change counts when
the medians differ by more than --threshold (relative) AND by more than the two runs' spread
(half the sum of their interquartile ranges); smaller ones are listed as noise. The machines'
ceilings and versions are printed side by side: a different GPU or driver is a different
experiment. Exit status: 0, or 1 with --fail-on-slower when something got slower; 2 on bad input.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import fmt_ms, load, md_table  # noqa: E402


def _key(r):
    return r.get("name")


def compare(old_recs, new_recs, threshold=0.05, kind=None, provider=None):
    """{'faster': [...], 'slower': [...], 'noise': [...], 'only_old': [...], 'only_new': [...]}; each
    changed entry is (name, old record, new record, new/old)."""
    def keep(r):
        return (r.get("median_ms") is not None and (kind is None or r.get("kind") == kind)
                and (provider is None or r.get("provider") == provider))
    old = {_key(r): r for r in old_recs if keep(r)}
    new = {_key(r): r for r in new_recs if keep(r)}
    out = {"faster": [], "slower": [], "noise": [], "only_old": sorted(set(old) - set(new)),
           "only_new": sorted(set(new) - set(old))}
    for name in [n for n in new if n in old]:
        o, n = old[name], new[name]
        r = n["median_ms"] / o["median_ms"] if o["median_ms"] else float("inf")
        spread = 0.5 * ((o.get("iqr_ms") or 0) + (n.get("iqr_ms") or 0))
        diff = n["median_ms"] - o["median_ms"]
        if abs(r - 1) <= threshold or abs(diff) <= spread:
            out["noise"].append((name, o, n, r))
        elif r < 1:
            out["faster"].append((name, o, n, r))
        else:
            out["slower"].append((name, o, n, r))
    out["faster"].sort(key=lambda e: e[3])
    out["slower"].sort(key=lambda e: -e[3])
    return out


def machine_row(meta):
    env, c = meta.get("env") or {}, meta.get("ceilings") or {}
    return [env.get("gpu") or "CPU", env.get("torch"), env.get("triton"), env.get("cuda"),
            f"{(c.get('copy_gbps') or 0):.0f} GB/s", f"{(c.get('matmul_tflops') or 0):.1f} TFLOP/s",
            (meta.get("commit_info") or {}).get("id", "")[:12], meta.get("datetime") or ""]


def render(old_path, new_path, old_meta, new_meta, res, threshold) -> str:
    lines = ["# Benchmark comparison", "", f"old: `{old_path}`  ", f"new: `{new_path}`", ""]
    lines.append(md_table(["run", "GPU", "torch", "Triton", "CUDA", "copy", "bf16 matmul", "commit", "date"],
                          [["old"] + machine_row(old_meta), ["new"] + machine_row(new_meta)]))
    og, ng = (old_meta.get("env") or {}).get("gpu"), (new_meta.get("env") or {}).get("gpu")
    if og != ng:
        lines += ["", f"**Different machines ({og} vs {ng}): the ratios compare machines, not code.**"]
    n_common = len(res["faster"]) + len(res["slower"]) + len(res["noise"])
    lines += ["", f"{n_common} benchmarks in both runs: {len(res['faster'])} faster, {len(res['slower'])} "
              f"slower (by more than {threshold:.0%} and the runs' spread), {len(res['noise'])} unchanged; "
              f"{len(res['only_old'])} only in old, {len(res['only_new'])} only in new.", ""]
    for title, key in (("Slower", "slower"), ("Faster", "faster")):
        if res[key]:
            rows = [[n.get("kind", ""), name, fmt_ms(o["median_ms"]), fmt_ms(n["median_ms"]), f"{r:.2f}x",
                     f"{o['median_ms'] / n['median_ms']:.2f}x"] for name, o, n, r in res[key]]
            lines += [f"## {title}", "", md_table(["kind", "benchmark", "old ms", "new ms", "new/old time",
                                                   "speedup"], rows), ""]
    for title, key in (("Only in old", "only_old"), ("Only in new", "only_new")):
        if res[key]:
            shown = res[key][:50]
            lines += [f"## {title}", "", ", ".join(f"`{k}`" for k in shown)
                      + (f" … and {len(res[key]) - 50} more" if len(res[key]) > 50 else ""), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--threshold", type=float, default=0.05, help="relative change that counts (default 0.05)")
    ap.add_argument("--kind", help="only this kind: layer, model, ceiling, dispatch, cpu_kernel, cpu_model")
    ap.add_argument("--provider", help="only this provider")
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--fail-on-slower", action="store_true")
    args = ap.parse_args(argv)
    if args.threshold < 0:
        print("compare.py: --threshold must be >= 0", file=sys.stderr)
        return 2
    loaded = []
    for p in (args.old, args.new):
        f = os.path.join(p, "results.json") if os.path.isdir(p) else p
        if not os.path.isfile(f):
            print(f"compare.py: no results at {p} (expected a results.json file or a folder holding one)",
                  file=sys.stderr)
            return 2
        try:
            loaded.append(load(f))
        except ValueError as e:
            print(f"compare.py: cannot read {f}: {e}", file=sys.stderr)
            return 2
    (old_recs, old_meta), (new_recs, new_meta) = loaded
    res = compare(old_recs, new_recs, args.threshold, args.kind, args.provider)
    text = render(args.old, args.new, old_meta, new_meta, res, args.threshold)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if (args.fail_on_slower and res["slower"]) else 0


if __name__ == "__main__":
    sys.exit(main())
