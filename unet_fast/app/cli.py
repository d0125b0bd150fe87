"""The command line: `unet-fast train | predict | bench | info | build-ext` (also
`python -m unet_fast`)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import BackendUnavailable, UNet, __version__, reference, sizes
from .._dispatch import CHOICES as BACKEND_CHOICES
from . import checkpoint
from .checkpoint import CheckpointError
from .data import DataError
from .losses import LOSSES
from .predict import predict_files
from .runtime import (AMP_MODES, DISK_FULL, ConfigError, RunError, amp_context, check_number,
                      grad_scaler, optimizer_step, resolve_amp, resolve_device)
from .train import INIT_KEYS, OPTIMIZERS, RECOMPUTE, SCHEDULES, TrainConfig, train

_BOOL = argparse.BooleanOptionalAction


class _HELP(argparse.ArgumentDefaultsHelpFormatter):
    """Every subcommand's --help shows each option's default next to its help text (an option
    without one, None, says in its help what happens when it is not given)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)

# --init-from: these model options default to the checkpoint's when not given (INIT_KEYS must
# match it; num_classes may differ, and the tile goes with the network)
_FROM_CHECKPOINT = INIT_KEYS + ("num_classes", "tile")


def _add_model_args(p, defaults, with_tile=True):
    g = p.add_argument_group("model")
    g.add_argument("--base-channels", type=int, default=defaults.base_channels,
                   help="channels of the first level, doubled at each level (paper: 64)")
    g.add_argument("--depth", type=int, default=defaults.depth,
                   help="number of poolings (paper: 4)")
    g.add_argument("--padding", choices=sizes.PADDINGS, default=defaults.padding,
                   help="'valid': unpadded convolutions, output smaller than the input (paper); "
                        "'same': padded, output size = input size")
    g.add_argument("--in-channels", type=int, default=defaults.in_channels,
                   help="image channels (1 gray, 3 RGB)")
    g.add_argument("--num-classes", type=int, default=defaults.num_classes,
                   help="classes of the masks (values 0 .. num_classes-1), background included")
    if with_tile:
        g.add_argument("--tile", type=int, default=defaults.tile,
                       help="training input tile, a legal input size (see `unet-fast info "
                            "--sizes`); its output is the center in 'valid' mode")
    g.add_argument("--backend", choices=BACKEND_CHOICES, default=defaults.backend,
                   help="kernels: auto (fastest available; reference ops on CPU), torch, triton, "
                        "cuda")


def _train_parser(sub):
    d = TrainConfig()
    p = sub.add_parser("train", help="train a U-Net (built-in EM-like data by default)",
                       formatter_class=_HELP,
                       description="Train a U-Net. With no options: the built-in EM-like data, "
                                   "a small 'valid' U-Net, a few minutes on a CPU. Under torchrun "
                                   "it trains with DistributedDataParallel. Fine-tuning: "
                                   "--init-from CKPT starts a new run from a checkpoint's weights "
                                   "with any data, epochs and learning rate.")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="folder with imgs/ and masks/ (same file names; PNG or TIFF; "
                                  "masks hold class indices); default: built-in data")
    g.add_argument("--val-data", help="separate validation folder (default: --val-fraction of "
                                      "--data)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of --data images kept for validation (0: no validation)")
    g.add_argument("--train-images", type=int, default=d.train_images,
                   help="built-in data: training images")
    g.add_argument("--val-images", type=int, default=d.val_images,
                   help="built-in data: validation images (0: no validation)")
    g.add_argument("--image-size", type=int, default=d.image_size,
                   help="built-in data: image size (at least 16)")
    g.add_argument("--flips", action=_BOOL, default=d.flips, help="random flips")
    g.add_argument("--rotations", action=_BOOL, default=d.rotations, help="random 90° rotations")
    g.add_argument("--elastic", action=_BOOL, default=d.elastic,
                   help="the paper's elastic deformation (3x3 grid, --elastic-sigma px)")
    g.add_argument("--elastic-sigma", type=float, default=d.elastic_sigma,
                   help="elastic deformation: standard deviation of the grid displacements (px)")
    _add_model_args(p, d)
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=d.epochs, help="epochs to train (in all, with "
                                                                "--resume)")
    g.add_argument("--batch", type=int, default=d.batch,
                   help="global batch (split over the processes under torchrun)")
    g.add_argument("--tiles-per-epoch", type=int, default=d.tiles_per_epoch,
                   help="training tiles drawn per epoch")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimizer")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=d.momentum,
                   help="SGD momentum, in [0, 1) (paper 0.99)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="weight decay")
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                   help="learning-rate schedule per step, after the warmup")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="steps of linear learning-rate warmup")
    g.add_argument("--loss", choices=LOSSES, default=d.loss,
                   help="ce, the paper's weighted-ce (border weight map) or dice")
    g.add_argument("--class-weights", type=float, nargs="+", default=d.class_weights,
                   metavar="W", help="one loss weight per class (e.g. 1 3: class 1 counts three "
                                     "times); default: all 1")
    g.add_argument("--w0", type=float, default=d.w0, help="weighted-ce: border weight w0")
    g.add_argument("--sigma", type=float, default=d.sigma, help="weighted-ce: border sigma (px)")
    g.add_argument("--border-class", type=int, default=d.border_class,
                   help="weighted-ce: the class between objects (membrane)")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the weights and of every training tile")
    g = p.add_argument_group("execution")
    g.add_argument("--amp", choices=AMP_MODES, default=d.amp,
                   help="autocast: auto = bf16 on CUDA, off on CPU")
    g.add_argument("--channels-last", action=_BOOL, default=d.channels_last,
                   help="channels_last (NHWC) tensors")
    g.add_argument("--recompute", choices=RECOMPUTE, default=d.recompute,
                   help="activation checkpointing, less memory for more time: up = the "
                        "decoder's up-sampled maps made again in the backward (the same "
                        "gradients; a few %% of a step), all = every level (a second forward)")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    g.add_argument("--workers", type=int, default=d.workers, help="data loader processes")
    g.add_argument("--threads", type=int, default=d.threads,
                   help="CPU threads for torch (0: half the cores, or OMP_NUM_THREADS)")
    g.add_argument("--out", help="output folder (default: a new runs/train-<date>-<time>; with "
                                 "--resume the checkpoint's folder)")
    g.add_argument("--resume", help="continue a run from a checkpoint (last.pt) or a run folder, "
                                    "with the same settings")
    g.add_argument("--init-from", metavar="CKPT",
                   help="fine-tune: start a new run from this checkpoint's weights, with any "
                        "data, epochs, lr, ...; the model options (" +
                        ", ".join(_flag(k) for k in _FROM_CHECKPOINT) +
                        ") default to the checkpoint's; another --num-classes gets a new head")
    g.add_argument("--tensorboard", action=_BOOL, default=d.tensorboard,
                   help="also log the metrics for TensorBoard, in the run folder (tensorboard "
                        "--logdir runs)")
    g.add_argument("--progress", action=_BOOL, default=d.progress, help="progress bar")
    return p


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cmd_train(args) -> int:
    if args.init_from and not args.resume:
        # the model options not given on the command line are the checkpoint's
        saved = checkpoint.load(args.init_from)["config"]
        for k in _FROM_CHECKPOINT:
            if k not in args.explicit and k in saved:
                setattr(args, k, saved[k])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    train(cfg)
    return 0


def _explicit_options(parser, argv) -> set:
    """The dests of the options the command line gives (not defaulted)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    saved = []
    for p in sub.choices.values():
        for a in p._actions:
            saved.append((a, a.default))
            a.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv))) - {"command"}
    finally:
        for a, d in saved:
            a.default = d


# ----------------------------------------------------------------------------- predict
def _predict_parser(sub):
    p = sub.add_parser("predict", help="overlap-tile prediction of images of any size",
                       formatter_class=_HELP,
                       description="Predict masks with a trained checkpoint. Writes "
                                   "<name>_mask.png (class indices) and <name>_overlay.png.")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--checkpoint", required=True, help="a run's best.pt / last.pt, or its folder")
    p.add_argument("--out", default="predictions", help="output folder")
    p.add_argument("--tile", type=int, help="input tile size (legal for the model; default: "
                                            "fitted to the image, at most about 572)")
    p.add_argument("--overlap", type=int, default=32, help="'same' mode: overlap of tiles (px)")
    p.add_argument("--batch", type=int, default=4, help="tiles per forward")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help="kernels: auto, torch, triton, cuda")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=AMP_MODES, default="off",
                   help="autocast (off: float32, exact)")
    p.add_argument("--channels-last", action=_BOOL, default=False,
                   help="channels_last (NHWC) tensors")
    return p


def _cmd_predict(args) -> int:
    # every number is checked before a checkpoint is read or a pixel written
    check_number(args.batch, "--batch", integer=True, minimum=1)
    check_number(args.overlap, "--overlap", integer=True, minimum=0)
    if args.tile is not None:
        check_number(args.tile, "--tile", integer=True, minimum=1)
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    ck = checkpoint.load(args.checkpoint)
    cfg = ck["config"]
    if args.tile is not None:
        from .data import check_tile
        check_tile(args.tile, cfg["depth"], cfg["padding"], "--tile")
    model = checkpoint.model_from_checkpoint(ck, args.backend, device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    print(f"model from {ck['path']} (epoch {ck['epoch']}); device {device}, backend "
          f"{args.backend}")
    written = predict_files(model, args.inputs, args.out, args.tile, args.batch, args.overlap,
                            amp, args.channels_last)
    print(f"{len(written) // 2} image(s) predicted; outputs in {Path(args.out).resolve()}/ "
          f"(backend used: {sorted(set(model.backend_report().values()))})")
    return 0


# ----------------------------------------------------------------------------- bench
def _bench_parser(sub):
    p = sub.add_parser("bench", help="model-only throughput: chosen backend vs reference",
                       formatter_class=_HELP,
                       description="Time inference and training steps of the fast UNet (chosen "
                                   "--backend) and of the reference model on the current device: "
                                   "--steps timed repeats of each, reported as median and range. "
                                   "A speed-up is quoted only when the two run different "
                                   "implementations.")
    p.add_argument("--size", type=int, help="input size (legal; default 572 on GPU, 188 on CPU)")
    p.add_argument("--batch", type=int, help="batch (default 8 on GPU, 2 on CPU)")
    p.add_argument("--base-channels", type=int, help="default 64 on GPU, 16 on CPU")
    p.add_argument("--depth", type=int, default=4, help="number of poolings")
    p.add_argument("--padding", choices=sizes.PADDINGS, default="valid", help="valid or same")
    p.add_argument("--in-channels", type=int, default=1, help="image channels")
    p.add_argument("--num-classes", type=int, default=2, help="classes")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help="kernels of the fast UNet: auto, torch, triton, cuda")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="autocast: auto = bf16 on CUDA, off on CPU")
    p.add_argument("--channels-last", action=_BOOL, default=None,
                   help="default: on for CUDA, off on CPU")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--steps", type=int, default=10, help="timed repeats of each measurement")
    p.add_argument("--no-reference", action="store_true", help="skip the reference model")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p


def _timed(fn, n: int, sync) -> list:
    """Seconds of each of `n` calls of `fn` (synchronized)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def _spread(times: list, prefix: str) -> dict:
    ms = sorted(t * 1e3 for t in times)
    n = len(ms)
    median = ms[n // 2] if n % 2 else (ms[n // 2 - 1] + ms[n // 2]) / 2
    return {f"{prefix}_ms": median, f"{prefix}_ms_min": ms[0], f"{prefix}_ms_max": ms[-1]}


def _bench_one(model, x, y, device, amp, warmup, steps):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    res = {"repeats": steps}
    model.eval()

    def infer():
        with torch.no_grad(), amp_context(device, amp):
            model(x)

    for _ in range(warmup):
        infer()
    sync()
    res.update(_spread(_timed(infer, steps, sync), "inference"))
    res["inference_images_per_s"] = x.shape[0] / (res["inference_ms"] / 1e3)
    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    scaler = grad_scaler(device, amp)

    def step():
        opt.zero_grad(set_to_none=True)
        with amp_context(device, amp):
            out = model(x)
        optimizer_step(F.cross_entropy(out.float(), y), opt, scaler)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    res.update(_spread(_timed(step, steps, sync), "train_step"))
    res["train_images_per_s"] = x.shape[0] / (res["train_step_ms"] / 1e3)
    res["peak_memory_mb"] = (torch.cuda.max_memory_allocated(device) / 2**20
                             if device.type == "cuda" else None)
    return res


def _ratio(a: dict, b: dict, key: str) -> dict:
    """b's time over a's (a's speed-up), of the medians, with the range the repeats allow."""
    return {"median": b[f"{key}_ms"] / a[f"{key}_ms"],
            "min": b[f"{key}_ms_min"] / a[f"{key}_ms_max"],
            "max": b[f"{key}_ms_max"] / a[f"{key}_ms_min"]}


def _cmd_bench(args) -> int:
    for flag, v, lo in (("--depth", args.depth, 1), ("--in-channels", args.in_channels, 1),
                        ("--num-classes", args.num_classes, 1), ("--warmup", args.warmup, 0),
                        ("--steps", args.steps, 1), ("--size", args.size, 1),
                        ("--batch", args.batch, 1), ("--base-channels", args.base_channels, 1)):
        if v is not None:
            check_number(v, flag, integer=True, minimum=lo)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    size = args.size or (572 if gpu else 188)
    batch = args.batch or (8 if gpu else 2)
    base = args.base_channels or (64 if gpu else 16)
    cl = args.channels_last if args.channels_last is not None else gpu
    amp = resolve_amp(args.amp, device)
    try:
        sizes.check_network_fits(args.in_channels, args.num_classes, base, args.depth)
    except ValueError as e:
        raise ConfigError(f"--depth {args.depth} / --base-channels {base}: {e}") from None
    try:
        out_hw = sizes.output_size((size, size), args.depth, args.padding)
    except ValueError as e:
        raise SystemExit(f"unet-fast bench: --size: {e}")
    torch.manual_seed(0)
    fast = UNet(args.in_channels, args.num_classes, base, args.depth, args.padding,
                backend=args.backend).to(device)
    ref = reference.UNet(args.in_channels, args.num_classes, base, args.depth, args.padding)
    ref.load_state_dict(fast.state_dict())
    ref = ref.to(device)
    fmt = torch.channels_last if cl else torch.contiguous_format
    fast, ref = fast.to(memory_format=fmt), ref.to(memory_format=fmt)
    x = torch.randn(batch, args.in_channels, size, size, device=device).contiguous(
        memory_format=fmt)
    y = torch.randint(0, args.num_classes, (batch,) + tuple(out_hw), device=device)
    dev_name = torch.cuda.get_device_name(device) if gpu else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"unet-fast bench on {dev_name}: input {batch}x{args.in_channels}x{size}x{size} -> "
          f"{out_hw[0]}x{out_hw[1]}, base {base}, depth {args.depth}, padding {args.padding!r}, "
          f"amp {amp}, channels_last {cl}; {args.steps} timed repeats after {args.warmup} warmup")
    results = {"device": dev_name, "size": size, "batch": batch, "base_channels": base,
               "depth": args.depth, "padding": args.padding, "amp": amp, "channels_last": cl,
               "backend": args.backend, "repeats": args.steps, "models": {}}
    runs = [(f"unet_fast ({args.backend})", fast)]
    if not args.no_reference:
        runs.append(("reference", ref))
    for name, m in runs:
        if gpu:
            torch.cuda.empty_cache()
        results["models"][name] = r = _bench_one(m, x, y, device, amp, args.warmup, args.steps)
        if m is fast:
            r["backends_used"] = sorted(set(v for v in fast.backend_report().values() if v))
    hdr = (f"{'model':<24}{'infer img/s':>12}{'infer ms (min-max)':>22}{'train img/s':>12}"
           f"{'step ms (min-max)':>22}{'peak MiB':>10}")
    print(hdr)
    for name, r in results["models"].items():
        pm = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "n/a"
        inf = f"{r['inference_ms']:.1f} ({r['inference_ms_min']:.1f}-{r['inference_ms_max']:.1f})"
        st = (f"{r['train_step_ms']:.1f} ({r['train_step_ms_min']:.1f}-"
              f"{r['train_step_ms_max']:.1f})")
        print(f"{name:<24}{r['inference_images_per_s']:>12.1f}{inf:>22}"
              f"{r['train_images_per_s']:>12.1f}{st:>22}{pm:>10}")
    used = results["models"][runs[0][0]]["backends_used"]
    if len(results["models"]) == 2:
        a, b = results["models"].values()
        # the torch backend runs PyTorch's own ops, as the reference does: no speed-up to quote
        same = set(used) <= {"torch"}
        results["same_implementation"] = same
        if same:
            results["speedup_train"] = results["speedup_inference"] = None
            print("speed-up vs reference: none to quote: both sides ran the same implementation "
                  "(PyTorch's own ops; unet_fast's backend here is torch), so their difference is "
                  "run-to-run noise, as the ranges show. The fast kernels run on CUDA GPUs.")
        else:
            results["speedup_train"] = tr = _ratio(a, b, "train_step")
            results["speedup_inference"] = inf = _ratio(a, b, "inference")
            overlap = [k for k, r in (("training", tr), ("inference", inf))
                       if r["min"] <= 1 <= r["max"]]
            print(f"speed-up vs reference (median of {args.steps}; range from the fastest and "
                  f"slowest repeats): training x{tr['median']:.2f} ({tr['min']:.2f}-"
                  f"{tr['max']:.2f}), inference x{inf['median']:.2f} ({inf['min']:.2f}-"
                  f"{inf['max']:.2f})" + (f"; within run-to-run spread for "
                                          f"{' and '.join(overlap)}" if overlap else ""))
        if not gpu:
            print("(peak memory is measured on CUDA only)")
    print(f"backends used by unet_fast: {used}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"results written to {args.json}")
    return 0


# ----------------------------------------------------------------------------- info
def _info_parser(sub):
    p = sub.add_parser("info", help="versions, GPU, backends and why not, extension location",
                       formatter_class=_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--sizes", type=int, nargs="?", const=4, metavar="DEPTH",
                   help="also list legal input sizes for this depth (default 4)")
    return p


def collect_info() -> dict:
    import numpy

    import unet_fast
    from ..backends import available, cuda_backend

    try:
        import triton
        triton_v = triton.__version__
    except Exception as e:  # noqa: BLE001
        triton_v = f"not importable ({type(e).__name__}: {e})"
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            pr = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": pr.name, "capability": f"{pr.major}.{pr.minor}",
                         "memory_gib": round(pr.total_memory / 2**30, 1),
                         "multiprocessors": pr.multi_processor_count})
    return {
        "unet_fast": unet_fast.__version__,
        "unet_fast_path": os.path.dirname(unet_fast.__file__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": triton_v,
        "numpy": numpy.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpus": gpus,
        "cpu_threads": torch.get_num_threads(),
        "backends": available(),
        "extension_path": cuda_backend.extension_path(),
        "extension": cuda_backend.extension_info(),
        # every setting of ours a run depends on (UNET_FAST_CHECK=0, UNET_FAST_TRITON_TMA=1, ...)
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith("UNET_FAST_") or k in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")},
    }


def _cmd_info(args) -> int:
    if args.sizes is not None:
        check_number(args.sizes, "--sizes", integer=True, minimum=1)
    info = collect_info()
    if args.sizes:
        info["legal_sizes"] = {pad: sizes.legal_input_sizes(args.sizes, pad, 24)
                               for pad in sizes.PADDINGS}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"unet_fast {info['unet_fast']} ({info['unet_fast_path']})")
    print(f"python {info['python']} on {info['platform']}")
    print(f"torch {info['torch']} (CUDA {info['torch_cuda']}, cuDNN {info['cudnn']}), "
          f"triton {info['triton']}, numpy {info['numpy']}")
    if info["gpus"]:
        for g in info["gpus"]:
            print(f"GPU {g['index']}: {g['name']} (sm_{g['capability'].replace('.', '')}, "
                  f"{g['memory_gib']} GiB, {g['multiprocessors']} SMs)")
    else:
        print(f"GPU: none visible (CPU with {info['cpu_threads']} threads; 'auto' runs the "
              "reference ops)")
    ext = info["extension"]
    print("backends:")
    for name, why in info["backends"].items():
        if why is None and name == "cuda" and ext["kernels"] == "C++ CPU only":
            state = "available for CPU tensors only (the extension has no CUDA kernels; see below)"
        else:
            state = "available" if why is None else "unavailable: " + why
        print(f"  {name:<7} {state}")
    for line in _extension_lines(ext):
        print(line)
    for k, v in info["env"].items():
        print(f"env {k}={v}")
    if "legal_sizes" in info:
        for pad, ss in info["legal_sizes"].items():
            print(f"legal input sizes, depth {args.sizes}, {pad}: {', '.join(map(str, ss))} ...")
    return 0


def _extension_lines(ext: dict) -> list:
    """The extension's part of `info`: where it is, which kernels, which torch it was built
    against, what was passed over and why, what fixes a problem."""
    if ext["loaded"]:
        lines = [f"extension unet_fast._C: {ext['path']} ({ext['origin']})",
                 f"  kernels: {ext['kernels']}",
                 f"  built against: {ext['built_against']}"
                 + (" = the running torch" if ext["build_record"] else "")]
        rec = ext["build_record"] or {}
        if rec.get("cuda_kernels") and rec.get("arch_list"):
            lines.append(f"  GPU targets: {rec['arch_list']}")
        if rec.get("why") and not rec.get("cuda_kernels"):
            lines.append(f"  built without CUDA kernels: {rec['why'].split('no CUDA kernels: ', 1)[-1]}")
    else:
        lines = ["extension unet_fast._C: not loaded"]
    for r in ext["rejected"]:
        lines.append(f"  not loaded: {r['path']}: {r['why']}")
    for f in ext["failed"]:
        lines.append(f"  failed to load: {f['path']}: {f['error']}")
    if ext["fix"]:
        lines.append(f"  fix: {ext['fix']}")
    lines.append(f"  first-use build cache: {ext['cache']}"
                 + ("" if ext["first_use_build"] else " (first-use builds off)"))
    return lines


# ----------------------------------------------------------------------------- build-ext
def _build_ext_parser(sub):
    p = sub.add_parser("build-ext", help="build the extension unet_fast._C for the installed torch "
                                         "(into the cache; the next run loads it)",
                       formatter_class=_HELP)
    p.add_argument("--cuda", action="store_true",
                   help="require the CUDA kernels (as UNET_FAST_FORCE_CUDA=1): an error without "
                        "a CUDA toolkit or a CUDA build of torch")
    p.add_argument("--force", action="store_true",
                   help="build again even when the cache holds a build for this torch and sources")
    return p


def _cmd_build_ext(args) -> int:
    from .. import _build
    want_cuda = (args.cuda or _build.flag(_build.ENV_FORCE_CUDA)
                 or (torch.version.cuda is not None and _build.cuda_home() is not None))
    if not args.force:
        for lib, rec in _build.find_cached():
            if rec.get("cuda_kernels") or not want_cuda:
                kernels = "CUDA + C++ CPU" if rec.get("cuda_kernels") else "C++ CPU only"
                print(f"unet_fast._C for {_build.describe_torch(rec['torch'], rec['torch_cuda'])} "
                      f"is already built: {lib} ({kernels} kernels); --force builds it again")
                return 0
    try:
        lib, rec = _build.build(force_cuda=args.cuda, built_by="unet-fast build-ext", clean=args.force)
    except _build.BuildError as e:
        print(f"unet-fast build-ext: error: {e}", file=sys.stderr)
        return 1
    print(f"built {lib}: {rec['why']}; a new process loads it (`unet-fast info` shows it)")
    return 0


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unet-fast", description="U-Net (Ronneberger et al., 2015) on fused Triton/CUDA "
                                      "kernels: train, predict, bench, info, build-ext.")
    p.add_argument("--version", action="version", version=f"unet_fast {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{train,predict,bench,info,build-ext}")
    for fn in (_train_parser, _predict_parser, _bench_parser, _info_parser, _build_ext_parser):
        fn(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "train":
        args.explicit = _explicit_options(build_parser(), argv)
    cmd = {"train": _cmd_train, "predict": _cmd_predict, "bench": _cmd_bench,
           "info": _cmd_info, "build-ext": _cmd_build_ext}[args.command]
    try:
        return cmd(args)
    except (DataError, CheckpointError, ConfigError, BackendUnavailable) as e:
        print(f"unet-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"unet-fast {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"unet-fast {args.command}: error: no space left on the device{where} "
              f"({e.strerror}); free some space and run it again", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"unet-fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
