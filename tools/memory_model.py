#!/usr/bin/env python
"""Peak memory of a training or inference step, eager against ours: a model, not a measurement.

No GPU is needed. DESIGN.md's target "peak training memory <= 0.8x eager" is measured by the GPU
benchmarks (`benchmarks/test_bench_models.py`: `torch.cuda.max_memory_allocated()` over one step,
after warm-up); until a GPU runs them, this tool predicts it. The benchmarks' step is run here on
CPU tensors, as on the GPU: SGD with momentum (its buffers made by a first step), gradients set
to None, the forward under bf16 autocast, cross-entropy against random classes, backward,
optimizer step; and their inference step (eval mode, no gradients: the forward alone, which keeps
only what its later layers read). A dispatch mode counts the bytes of every storage from the op
that allocates it until it is freed (its StorageImpl dies), and keeps the largest total and what
was alive then.

Nothing heavy is computed: the convolutions, the pools and the CUDA extension's ops run their
meta kernels and return zero-filled tensors of those shapes, in the layout the devices' kernels
give (an in-place op: its argument back); the Triton kernels are not launched (their outputs are
their wrappers' own `torch.empty`s); every other op (casts, elementwise, sums, views) runs. The
CUTLASS sm_90 path is taken as on an H100 (its first-run checks passed); the CPU-only checks
for non-finite weights, which a GPU never runs, are off.
So the figures are the step's own allocations, exactly, at the allocator's granularity of a
tensor. Not modelled: the caching allocator's rounding (512 B) and fragmentation, and memory a
library allocates inside a kernel call: cuDNN's and cuBLAS's workspaces in eager (through the
caching allocator, so counted by max_memory_allocated on a GPU), the C++ glue's own temporaries
inside an extension op. Autocast is the CPU's (its lower-precision list has the convolutions and
the transposed convolutions, like CUDA's); the model's `backend="auto"` cannot be modelled here
(it measures on the GPU), so ours is shown per backend.

    python tools/memory_model.py                      # both models -> docs/memory_model.md + .json
    python tools/memory_model.py --models valid572:1 --no-write
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import weakref

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):          # the package, and the sibling tools (kernel_model)
    if _p not in sys.path:
        sys.path.insert(0, _p)

GiB = 2 ** 30
SHOWN = 16     # the report's rows of what is alive at a peak

# the step's configurations: the eager baseline of the benchmarks, and ours per backend
PROVIDERS = {
    "eager": "eager (reference U-Net, channels_last, cuDNN ops)",
    "triton": 'ours: backend="triton"',
    "cuda": 'ours: backend="cuda" (CUTLASS sm_90 path)',
    "triton_up": 'ours: backend="triton", checkpointing="up"',
    "cuda_up": 'ours: backend="cuda", checkpointing="up"',
    "triton_ckpt": 'ours: backend="triton", checkpointing=True',
}
TARGET = 0.8   # DESIGN.md: peak training memory <= 0.8x eager


# ============================================================================ the counter
class LiveBytes:
    """Bytes alive: every storage counted once, from `add` until its StorageImpl is freed (the
    storage's Python object outlives Python's references while C++ holds it: autograd's saved
    tensors, views), labelled by who allocated it."""

    def __init__(self, where=lambda: ""):
        self.where = where                             # () -> where the step is now
        self.peak_where = ""
        self.alive: dict[int, tuple[int, str]] = {}   # id(storage) -> (bytes, label)
        self.live = 0
        self.peak = 0
        self.at_peak: dict[int, tuple[int, str]] = {}

    def add(self, t, label: str):
        import torch
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        s = t.untyped_storage()
        key = id(s)
        if key in self.alive or s.nbytes() == 0:
            return
        self.alive[key] = (s.nbytes(), f"{label} {tuple(t.shape)} {str(t.dtype)[6:]}")
        weakref.finalize(s, self._free, key)
        self.live += s.nbytes()
        if self.live > self.peak:
            self.peak = self.live
            self.at_peak = dict(self.alive)
            self.peak_where = self.where()

    def _free(self, key):
        n, _ = self.alive.pop(key)
        self.live -= n

    def reset_peak(self):
        self.peak = self.live
        self.at_peak = dict(self.alive)
        self.peak_where = self.where()


def _is_view_or_inplace(func):
    """(view: a return aliases an argument without writing it; in-place: returns that are
    written arguments, by their alias sets)"""
    rets = func._schema.returns
    if any(r.alias_info is not None and not r.alias_info.is_write for r in rets):
        return "view"
    if rets and all(r.alias_info is not None and r.alias_info.is_write for r in rets):
        return "inplace"
    return None


def _written_args(func, args, kwargs):
    """The arguments an in-place / out= op returns, in the order of its returns."""
    schema = func._schema
    bound = {}
    for i, a in enumerate(schema.arguments):
        if i < len(args):
            bound[a.name] = args[i]
        elif a.name in kwargs:
            bound[a.name] = kwargs[a.name]
    out = []
    for r in schema.returns:
        for a in schema.arguments:
            if a.alias_info is not None and a.alias_info.is_write and \
                    a.alias_info.before_set == r.alias_info.before_set:
                out.append(bound.get(a.name))
                break
    return out[0] if len(out) == 1 else tuple(out)


# The aten ops that do a step's arithmetic (the rest are cheap and run: elementwise, casts, sums)
HEAVY_ATEN = ("convolution", "convolution_backward", "max_pool2d_with_indices",
              "max_pool2d_with_indices_backward")


def _device_layout(func, args, meta):
    """The meta kernel's outputs, in the memory format the CPU and CUDA kernels give: the meta
    convolution's is always contiguous, cuDNN's and oneDNN's channels_last when the input or the
    weight is (its gradients: each like its tensor)."""
    import torch
    cl = torch.channels_last

    def like(m, *ts):
        if isinstance(m, torch.Tensor) and m.dim() == 4 and any(
                t is not None and t.dim() == 4 and t.is_contiguous(memory_format=cl)
                and not t.is_contiguous() for t in ts):
            return torch.empty(m.shape, dtype=m.dtype, device="meta", memory_format=cl)
        return m

    name = func.overloadpacket.__name__
    if name == "convolution":
        return like(meta, args[0], args[1])
    if name == "convolution_backward":    # (grad_output, input, weight, ...)
        gi, gw, gb = meta
        return (like(gi, args[1], args[2]), like(gw, args[2]), gb)
    return meta


def counting_mode(counter: LiveBytes, label, stub_heavy: bool = True):
    """A dispatch mode that runs the step without its heavy arithmetic (see the module's
    docstring; `stub_heavy=False`: with it, to check that the stubs allocate what the ops do) and
    counts every storage an op returns in `counter`, labelled `label()`."""
    import torch
    from torch._library.custom_ops import _maybe_get_opdef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves, tree_map

    def on_meta(x):
        if isinstance(x, torch.Tensor):
            return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
        return x

    def stub(func, args, kwargs):
        """func's outputs, zero-filled (so nothing downstream sees a NaN it would branch on),
        shaped and strided as its meta kernel says; a written argument is returned as is."""
        if _is_view_or_inplace(func) == "inplace":
            return _written_args(func, args, kwargs)
        meta = func(*tree_map(on_meta, args), **tree_map(on_meta, kwargs))
        meta = _device_layout(func, args, meta)
        device = next(t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
        return tree_map(lambda m: torch.empty_strided(m.shape, m.stride(), dtype=m.dtype,
                                                      device=device).zero_()
                        if isinstance(m, torch.Tensor) else m, meta)

    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.namespace == "aten":
                heavy = stub_heavy and func.overloadpacket.__name__ in HEAVY_ATEN
                out = stub(func, args, kwargs) if heavy else func(*args, **kwargs)
            else:
                opdef = _maybe_get_opdef(func)
                if opdef is not None:     # a Python custom op (Triton's): its body, counted
                    with self:
                        out = opdef._init_fn(*args, **kwargs)
                elif any(isinstance(t, torch.Tensor) for t in tree_leaves((args, kwargs))):
                    out = stub(func, args, kwargs)   # the CUDA extension's: its fake kernel's
                else:                                # (a query: no tensors)
                    out = func(*args, **kwargs)
            if _is_view_or_inplace(func) is None:
                name = func.overloadpacket.__name__
                for t in tree_leaves(out):
                    counter.add(t, f"{label()} {name}")
            return out

    return Counting()


# ============================================================================ the step
class _Where:
    """Where the step is: its phase and layer (ours: the dispatch layer's names in the forward,
    and in the backward the layer whose backward runs, kernel_model.labelled_launches; eager: the
    module's, the same way through hooks)."""

    def __init__(self):
        self.phase, self.layer = "setup", ""

    def __call__(self):
        return f"{self.phase} {self.layer}".rstrip()


class _Skip:
    """Stands in for a Triton kernel: `kernel[grid](...)` launches nothing."""

    def __init__(self, path, kernel, state):
        pass

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def _ours_as_on_gpu(backend: str, where: _Where):
    """Within: `backend` takes CPU tensors as it would an H100's (triton: kernel_model.triton_as_on,
    its kernels not launched; cuda: kernel_model.cuda_as_on_sm90, its CUTLASS path, whose ops run
    their fake kernels here), and `where.layer` follows the layers. (A Triton kernel writes into
    what its host wrapper allocated: not launching it changes no allocation. Checking that by
    launching them under the interpreter does not work: the interpreter copies every argument.)"""
    import kernel_model as km
    with contextlib.ExitStack() as stack:
        if backend == "triton":
            stack.enter_context(km.triton_as_on())
        else:
            stack.enter_context(km.cuda_as_on_sm90())

        class State(km._State):
            def __setattr__(self, name, value):
                super().__setattr__(name, value)
                if name == "layer":
                    where.layer = value or ""

        stack.enter_context(km.labelled_launches(State(), _Skip))
        yield


def _follow_modules(model, where: _Where) -> list:
    """Hooks that set `where.layer` to each leaf module's name as its forward, and later its
    backward, runs."""
    hooks = []
    for name, mod in model.named_modules():
        if not name or any(True for _ in mod.children()):
            continue

        def pre(mod, inputs, name=name):
            where.layer = name

        def post(mod, inputs, out, name=name):
            if getattr(out, "grad_fn", None) is not None:
                out.grad_fn.register_prehook(lambda grads, name=name: setattr(where, "layer", name))

        hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return hooks


def step_peak(cfg, provider: str, stub_heavy: bool = True, mode: str = "train") -> dict:
    """The peak bytes of the benchmarks' training step of `cfg` for `provider`, and the
    allocations alive at that peak (`stub_heavy=False`: the heavy aten ops computed, to check
    the stubs on a small eager step); `mode="infer"`: of their inference step instead (eval
    mode, no gradients, bf16 autocast: the forward alone)."""
    import torch
    import torch.nn.functional as F

    import unet_fast as uf
    from unet_fast import reference

    where = _Where()
    counter = LiveBytes(where)
    torch.manual_seed(0)
    hooks = []
    if provider == "eager":
        model = reference.UNet(cfg.in_channels, cfg.num_classes, cfg.base_channels, cfg.depth,
                               cfg.padding)
        hooks = _follow_modules(model, where)
        ctx = contextlib.nullcontext()
    else:
        backend, _, recompute = provider.partition("_")
        model = uf.UNet(cfg.in_channels, cfg.num_classes, cfg.base_channels, cfg.depth,
                        cfg.padding, backend=backend,
                        checkpointing={"": False, "ckpt": True, "up": "up"}[recompute])
        ctx = _ours_as_on_gpu(backend, where)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(cfg.batch, cfg.in_channels, cfg.size, cfg.size).contiguous(
        memory_format=torch.channels_last)
    out_hw = tuple(model.output_size((cfg.size, cfg.size)))
    y = torch.randint(0, cfg.num_classes, (cfg.batch,) + out_hw)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.99)
    for p in model.parameters():
        counter.add(p, "parameters")
    counter.add(x, "input")
    counter.add(y, "target")

    def infer():
        where.phase = "fwd"
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        where.phase, where.layer = "output", ""
        del out

    def step():
        where.phase, where.layer = "setup", ""
        opt.zero_grad(set_to_none=True)
        where.phase = "fwd"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        where.phase, where.layer = "loss", ""
        loss = F.cross_entropy(out.float(), y)
        del out
        where.phase = "bwd"
        loss.backward()
        where.phase, where.layer = "optimizer", ""
        opt.step()

    if mode == "infer":
        model.eval()
    run = {"train": step, "infer": infer}[mode]
    try:
        with ctx, counting_mode(counter, where, stub_heavy):
            run()                        # a warm-up, as the benchmarks' (the momentum buffers)
            base = counter.live
            counter.reset_peak()
            run()
    finally:
        for h in hooks:
            h.remove()
    groups: dict[str, list] = {}
    for n, label in counter.at_peak.values():
        g = groups.setdefault(label, [0, 0])
        g[0] += n
        g[1] += 1
    top = sorted(groups.items(), key=lambda kv: -kv[1][0])
    report = model.backend_report() if hasattr(model, "backend_report") else {}
    return dict(provider=provider, mode=mode, model=cfg.name, batch=cfg.batch,
                peak_bytes=counter.peak,
                before_step_bytes=base, peak_where=counter.peak_where,
                at_peak=[dict(label=k, bytes=v[0], tensors=v[1]) for k, v in top],
                backends=sorted(set(report.values())) if report else [])


# ============================================================================ report
def _gib(n):
    return f"{n / GiB:.2f}"


def model_memory(cfgs, providers=tuple(PROVIDERS)) -> list:
    """Per model: `rows`, the training step of each provider; `infer_rows`, the inference step
    of each provider that runs one of its own (recomputation is a training choice)."""
    from unet_fast import _dispatch
    _dispatch.ensure_backends()
    out = []
    for cfg in cfgs:
        res = dict(model=cfg.name, batch=cfg.batch, size=cfg.size, padding=cfg.padding)
        for key, mode, names in (("rows", "train", providers),
                                 ("infer_rows", "infer", [p for p in providers if "_" not in p])):
            rows = {}
            for p in names:
                why = _unavailable(p)
                rows[p] = dict(provider=p, mode=mode, model=cfg.name, batch=cfg.batch,
                               skipped=why) if why else step_peak(cfg, p, mode=mode)
            eager = rows.get("eager", {}).get("peak_bytes")
            for r in rows.values():
                if eager and r.get("peak_bytes"):
                    r["ratio_to_eager"] = r["peak_bytes"] / eager
            res[key] = list(rows.values())
        out.append(res)
    return out


def _unavailable(provider):
    """None if `provider`'s step can be modelled here, else why not."""
    import importlib.util
    if provider.startswith("triton") and importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if provider.startswith("cuda"):
        from unet_fast import _dispatch
        from unet_fast.backends import cutlass_sm90
        why = _dispatch.backend_reason("cuda")
        if why:
            return why
        if not cutlass_sm90.built():
            return "the extension was built without the CUTLASS sm_90 units"
    return None


def write_report(results, path_md, path_json):
    lines = ["# Memory model: model, not measurement", "",
             "Generated by `python tools/memory_model.py` (no GPU): the peak of the bytes alive "
             "during one training step, the benchmarks' step (`benchmarks/test_bench_models.py`: "
             "SGD with momentum, gradients set to None, bf16 autocast, cross-entropy), and "
             "during their inference step (eval mode, no gradients: each model's second "
             "table), every storage counted from the op that allocates it until it is freed. Nothing large is "
             "computed (meta kernels, Triton kernels not launched). Not modelled: the caching "
             "allocator's rounding and fragmentation, and workspaces a library allocates inside "
             "a call (cuDNN's, cuBLAS's: on a GPU they count in eager's max_memory_allocated; "
             "the extension's C++ glue). Autocast is the CPU's. The GPU benchmarks measure; "
             f"DESIGN.md's target: ours at most {TARGET}x eager.", ""]
    for res in results:
        lines += [f"## {res['model']}: {res['size']}x{res['size']}, batch {res['batch']}, "
                  f"padding {res['padding']}", "",
                  "| provider | peak GiB | before the step GiB | vs eager | target | peak in |",
                  "|---|---|---|---|---|---|"]
        for r in res["rows"]:
            if r.get("skipped"):
                lines.append(f"| {PROVIDERS[r['provider']]} | skipped: {r['skipped']} | | | | |")
                continue
            ratio = r.get("ratio_to_eager")
            verdict = "" if r["provider"] == "eager" or ratio is None else \
                ("met" if ratio <= TARGET else "NOT met")
            lines.append(f"| {PROVIDERS[r['provider']]} | {_gib(r['peak_bytes'])} | "
                         f"{_gib(r['before_step_bytes'])} | "
                         f"{'' if ratio is None else f'{ratio:.2f}x'} | {verdict} | "
                         f"{r['peak_where']} |")
        infer = [r for r in res.get("infer_rows", []) if not r.get("skipped")]
        if infer:
            lines += ["", "Inference, the benchmarks' (eval mode, no gradients, bf16 autocast: "
                          "the forward alone):", "",
                      "| provider | peak GiB | before the step GiB | vs eager | peak in |",
                      "|---|---|---|---|---|"]
            for r in infer:
                ratio = r.get("ratio_to_eager")
                lines.append(f"| {PROVIDERS[r['provider']]} | {_gib(r['peak_bytes'])} | "
                             f"{_gib(r['before_step_bytes'])} | "
                             f"{'' if ratio is None else f'{ratio:.2f}x'} | {r['peak_where']} |")
        for r in res["rows"]:
            if r.get("skipped"):
                continue
            lines += ["", f"Alive at the peak, {PROVIDERS[r['provider']]}: the largest, by the "
                          "phase, layer and op that allocated them, and their shape and dtype:", "",
                      "| allocated by | GiB | tensors |", "|---|---|---|"]
            shown = r["at_peak"][:SHOWN]
            for g in shown:
                lines.append(f"| {g['label']} | {_gib(g['bytes'])} | {g['tensors']} |")
            rest = r["at_peak"][SHOWN:]
            if rest:
                lines.append(f"| ({len(rest)} other groups) | "
                             f"{_gib(sum(g['bytes'] for g in rest))} | "
                             f"{sum(g['tensors'] for g in rest)} |")
        lines.append("")
    with open(path_md, "w") as f:
        f.write("\n".join(lines))
    with open(path_json, "w") as f:
        json.dump(results, f, indent=1)


def main(argv=None) -> int:
    import kernel_model as km
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="valid572,same512",
                    help="comma-separated model configs, each NAME or NAME:BATCH "
                         f"(names: {', '.join(km.MODELS)})")
    ap.add_argument("--providers", default=",".join(PROVIDERS),
                    help=f"comma-separated, of: {', '.join(PROVIDERS)}")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "memory_model.md"))
    ap.add_argument("--no-write", action="store_true", help="print the summary only")
    args = ap.parse_args(argv)
    cfgs = []
    for spec in args.models.split(","):
        name, _, batch = spec.partition(":")
        if name not in km.MODELS:
            ap.error(f"unknown model {name!r}; expected one of {', '.join(km.MODELS)}")
        cfg = km.MODELS[name]
        cfgs.append(dataclasses.replace(cfg, batch=int(batch)) if batch else cfg)
    providers = args.providers.split(",")
    for p in providers:
        if p not in PROVIDERS:
            ap.error(f"--providers: unknown {p!r}; expected some of {', '.join(PROVIDERS)}")
    results = model_memory(cfgs, providers)
    for res in results:
        for r in res["rows"] + res["infer_rows"]:
            what = f"{res['model']} b{res['batch']} {r['mode']} {r['provider']}"
            if r.get("skipped"):
                print(f"{what}: skipped: {r['skipped']}")
            else:
                ratio = r.get("ratio_to_eager")
                print(f"{what}: peak {_gib(r['peak_bytes'])} GiB"
                      + ("" if ratio is None else f" ({ratio:.2f}x eager)"))
    if not args.no_write:
        write_report(results, args.out, os.path.splitext(args.out)[0] + ".json")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
