"""Training: `unet-fast train` and `torchrun --nproc_per_node N -m unet_fast train`.

Reproducible: the weights come from `seed`, and training tile `i` of epoch `e` from
(seed, e, i) alone, so a resumed run equals an uninterrupted one and N processes with a global
batch B see the same tiles as one process with batch B.

The loop, in reading order: `train` checks the options and reads the checkpoint to resume (or,
`--init-from`, to fine-tune) from; `_setup` builds the data, model, optimizer and schedule (and
`_restore`s a checkpoint); `_claim_out` takes the run folder (unique, locked, stale temporary files
removed); `_train_epoch` runs one epoch of `_train_step`s and stops the run at a non-finite loss;
`_end_epoch` (rank 0) validates and writes the checkpoints (`_save_checkpoint`), metrics, plots and
TensorBoard scalars; `_finish` writes the summary.

What a run promises about its files: every checkpoint it names exists (best.pt is written before
last.pt, so a last.pt that records a best always has its best.pt), a non-finite model is never
saved, two runs never write one folder, and a full disk ends the run with one message that says
which checkpoints are intact.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import sizes
from . import checkpoint as ckpt_mod
from . import distributed as dist_mod
from . import rundir
from .checkpoint import CheckpointError
from .data import (MEMBRANE, DataError, TileDataset, add_weight_maps, builtin_samples,
                   check_tile, load_folder)
from .losses import LOSSES, confusion, make_loss, metrics_from_confusion
from .predict import overlay, predict_logits
from .runtime import (AMP_DTYPES, DISK_FULL, ConfigError, RunError, amp_context, check_number,
                      grad_scaler, optimizer_step, resolve_amp, resolve_device)

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")   # per step, after a linear warmup


@dataclass
class TrainConfig:
    # data
    data: Optional[str] = None        # folder with imgs/ and masks/; None: the built-in data
    val_data: Optional[str] = None    # a separate validation folder; else val_fraction of data
    val_fraction: float = 0.2
    train_images: int = 24            # built-in data: number and size of images
    val_images: int = 6
    image_size: int = 128
    # model
    in_channels: int = 1
    num_classes: int = 2
    base_channels: int = 16
    depth: int = 2
    padding: str = "valid"
    tile: int = 92                    # training input tile (legal size); output 52 for depth 2
    # optimization
    epochs: int = 12
    batch: int = 8                    # global batch (split over the processes under torchrun)
    tiles_per_epoch: int = 512
    optimizer: str = "adam"           # one of OPTIMIZERS
    lr: float = 3e-3
    momentum: float = 0.99            # SGD (the paper's)
    weight_decay: float = 0.0
    schedule: str = "cosine"          # one of SCHEDULES
    warmup_steps: int = 20
    loss: str = "ce"                  # one of losses.LOSSES
    class_weights: Optional[list] = None   # one loss weight per class (None: all 1)
    w0: float = 10.0
    sigma: float = 5.0
    border_class: int = MEMBRANE
    flips: bool = True
    rotations: bool = True
    elastic: bool = False
    elastic_sigma: float = 10.0
    seed: int = 0
    # execution
    amp: str = "auto"                 # one of runtime.AMP_MODES: auto (bf16 on CUDA, off on CPU)
    channels_last: bool = False
    backend: str = "auto"
    recompute: str = "none"           # one of RECOMPUTE: activation checkpointing
    device: str = "auto"
    workers: int = 0
    threads: int = 0                  # CPU threads (0: auto, half the cores on a CPU run)
    out: Optional[str] = None
    resume: Optional[str] = None
    init_from: Optional[str] = None   # a checkpoint whose weights start this new run (fine-tuning)
    tensorboard: bool = False         # TensorBoard scalars in the run folder, next to metrics.jsonl
    progress: bool = True
    val_batch: int = 8
    examples: int = 4                 # validation images in the examples PNG


# Keys that must match for --resume (the rest may change: epochs, out, device, backend, ...).
RESUME_KEYS = ("data", "val_data", "val_fraction", "train_images", "val_images", "image_size",
               "in_channels", "num_classes", "base_channels", "depth", "padding", "tile", "batch",
               "tiles_per_epoch", "optimizer", "lr", "momentum", "weight_decay", "schedule",
               "warmup_steps", "loss", "class_weights", "w0", "sigma", "border_class", "flips",
               "rotations", "elastic", "elastic_sigma", "seed", "amp", "channels_last")
# --recompute -> UNet(checkpointing=...): what the backward makes again instead of keeping
RECOMPUTE = {"none": False, "up": "up", "all": True}
# Keys on which --init-from's checkpoint and the new run must agree (its network); num_classes may
# differ (the head is then initialized anew) and everything else is the new run's.
INIT_KEYS = ("in_channels", "base_channels", "depth", "padding")
# Consecutive non-finite losses tolerated under fp16 loss scaling (the GradScaler skips those
# steps and lowers its scale); without scaling the first one stops the run.
MAX_SKIPPED_STEPS = 10


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate_config(cfg: TrainConfig) -> int:
    """Checks every option (a ConfigError naming the flag); returns the output size of the
    training tile."""
    if cfg.loss not in LOSSES:
        raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                          f"{cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.recompute not in RECOMPUTE:
        raise ConfigError(f"--recompute must be one of {', '.join(RECOMPUTE)}, got "
                          f"{cfg.recompute!r}")
    for name in ("epochs", "batch", "tiles_per_epoch", "base_channels", "depth", "num_classes",
                 "in_channels", "train_images", "val_batch"):
        setattr(cfg, name, check_number(getattr(cfg, name), _flag(name), integer=True, minimum=1))
    for name in ("val_images", "warmup_steps", "workers", "threads", "examples"):
        setattr(cfg, name, check_number(getattr(cfg, name), _flag(name), integer=True, minimum=0))
    cfg.seed = check_number(cfg.seed, "--seed", integer=True, minimum=0, below=2**63)
    cfg.image_size = check_number(cfg.image_size, "--image-size", integer=True, minimum=16)
    cfg.tile = check_number(cfg.tile, "--tile", integer=True, minimum=1)
    cfg.lr = check_number(cfg.lr, "--lr", above=0)
    cfg.momentum = check_number(cfg.momentum, "--momentum", minimum=0, below=1)
    cfg.weight_decay = check_number(cfg.weight_decay, "--weight-decay", minimum=0)
    cfg.val_fraction = check_number(cfg.val_fraction, "--val-fraction", minimum=0, below=1)
    cfg.w0 = check_number(cfg.w0, "--w0", minimum=0)
    cfg.sigma = check_number(cfg.sigma, "--sigma", above=0)
    cfg.elastic_sigma = check_number(cfg.elastic_sigma, "--elastic-sigma", minimum=0)
    if cfg.data is None and (cfg.num_classes != 2 or cfg.in_channels != 1):
        raise ConfigError("the built-in data has 1 input channel and 2 classes (cell, membrane); "
                          "--num-classes/--in-channels other than 2/1 need --data")
    if not 0 <= cfg.border_class < cfg.num_classes:
        raise ConfigError(f"--border-class {cfg.border_class} is not a class index "
                          f"(0..{cfg.num_classes - 1})")
    if cfg.class_weights is not None:
        cw = list(cfg.class_weights)
        if len(cw) != cfg.num_classes:
            raise ConfigError(f"--class-weights has {len(cw)} value(s) but there are "
                              f"{cfg.num_classes} classes: give one weight per class")
        cfg.class_weights = [check_number(w, "--class-weights", minimum=0) for w in cw]
        if sum(cfg.class_weights) <= 0:
            raise ConfigError("--class-weights are all 0: at least one class must count")
    if cfg.resume and cfg.init_from:
        raise ConfigError("--resume continues a run and --init-from starts a new one from a "
                          "checkpoint's weights: pass one of them")
    try:
        sizes.check_network_fits(cfg.in_channels, cfg.num_classes, cfg.base_channels, cfg.depth)
    except ValueError as e:
        raise ConfigError(f"--depth {cfg.depth} / --base-channels {cfg.base_channels}: {e}") \
            from None
    out = check_tile(cfg.tile, cfg.depth, cfg.padding, "--tile")
    if cfg.tiles_per_epoch < cfg.batch:
        raise ConfigError(f"--tiles-per-epoch {cfg.tiles_per_epoch} is smaller than --batch "
                          f"{cfg.batch}: an epoch would have no step")
    return out


def _lr_lambda(cfg: TrainConfig, total_steps: int):
    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        t = min(1.0, step / max(1, total_steps))
        if cfg.schedule == "cosine":
            decay = 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))
        elif cfg.schedule == "step":
            decay = 0.1 ** int(t * 3 - 1e-9) if t < 1 else 0.01
        else:
            decay = 1.0
        return warm * decay
    return f


def _load_data(cfg: TrainConfig):
    if cfg.data is None:
        train = builtin_samples(cfg.train_images, (cfg.image_size, cfg.image_size), cfg.seed, 0)
        val = builtin_samples(cfg.val_images, (cfg.image_size, cfg.image_size), cfg.seed,
                              1_000_000)
        return train, val
    samples = load_folder(cfg.data, cfg.num_classes, cfg.in_channels)
    if cfg.val_data is not None:
        return samples, load_folder(cfg.val_data, cfg.num_classes, cfg.in_channels)
    if len(samples) < 2:
        raise DataError(f"data folder {cfg.data} has {len(samples)} image; a validation split "
                        "needs at least 2 (or pass --val-data DIR)")
    n_val = (0 if cfg.val_fraction == 0 else
             min(len(samples) - 1, max(1, round(cfg.val_fraction * len(samples)))))
    order = np.random.default_rng([cfg.seed, 99]).permutation(len(samples))
    val_idx = set(order[:n_val].tolist())
    return ([s for i, s in enumerate(samples) if i not in val_idx],
            [s for i, s in enumerate(samples) if i in val_idx])


def evaluate(model, samples, cfg: TrainConfig, amp: str) -> tuple[Optional[dict], list]:
    """Metrics over whole validation images (overlap-tile prediction) and the predicted masks;
    (None, []) without validation images: no score is made up."""
    if not samples:
        return None, []
    cm = torch.zeros(cfg.num_classes, cfg.num_classes, dtype=torch.int64)
    preds = []
    for s in samples:
        logits = predict_logits(model, s.image, cfg.tile, cfg.val_batch, amp=amp,
                                channels_last=cfg.channels_last)
        pred = logits.argmax(0)
        cm += confusion(pred, torch.from_numpy(s.mask), cfg.num_classes)
        preds.append(pred.numpy())
    positive = cfg.border_class if cfg.num_classes == 2 and cfg.data is None else None
    return metrics_from_confusion(cm, positive), preds


def _plot_curves(history: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    val = [h for h in history if h.get("val_dice") is not None]
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(10 if val else 5, 3.8), squeeze=False)
    a = axes[0, 0]
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.set_title("training loss"), a.grid(alpha=.3)
    if val:
        b, vep = axes[0, 1], [h["epoch"] for h in val]
        b.plot(vep, [h["val_dice"] for h in val], "o-", label="Dice")
        b.plot(vep, [h["val_iou"] for h in val], "s-", label="IoU")
        b.plot(vep, [1 - h["val_pixel_error"] for h in val], "^-", label="pixel accuracy")
        b.set_xlabel("epoch"), b.set_title("validation"), b.grid(alpha=.3), b.legend()
        b.set_ylim(min(0.5, min([h["val_dice"] for h in val] + [1])), 1.0)
    fig.tight_layout()
    _save_figure(fig, path, dpi=90)


def _save_figure(fig, path: Path, dpi: int) -> None:
    """The figure as a PNG, replaced atomically through a temporary file of its own."""
    import matplotlib.pyplot as plt

    try:
        ckpt_mod.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def _plot_examples(samples, preds, n: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(samples), len(preds))
    if n == 0:
        return
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for r in range(n):
        s, p = samples[r], preds[r]
        img = s.image[0] if s.image.shape[0] == 1 else np.moveaxis(s.image[:3], 0, -1)
        axes[r, 0].imshow(img, cmap="gray")
        axes[r, 1].imshow(overlay(s.image, s.mask))
        axes[r, 2].imshow(overlay(s.image, p))
        for c, t in enumerate(("image", "true mask", "predicted mask")):
            axes[r, c].set_title(f"{s.name}: {t}" if c == 0 else t, fontsize=9)
            axes[r, c].axis("off")
    fig.tight_layout()
    _save_figure(fig, path, dpi=80)


def _write_json(obj, path: Path) -> None:
    ckpt_mod.atomic_write(path, lambda f: json.dump(obj, f, indent=2), mode="w")


def _train_step(model, opt, scaler, loss_fn, x, y, w, device, amp, channels_last):
    opt.zero_grad(set_to_none=True)
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    w = w.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with amp_context(device, amp):
        logits = model(x)
    loss = loss_fn(logits.float(), y, w)
    optimizer_step(loss, opt, scaler)
    return loss.detach()


def _describe_backend(model, device) -> str:
    used = sorted(set(v for v in model.backend_report().values() if v))
    used_s = "+".join(used) if used else "?"
    if device.type == "cuda":
        kind = ("unet_fast's fast kernels" if any(u != "torch" for u in used)
                else "the reference ops (cuDNN)")
        return f"backend {model.backend} -> {used_s} on {torch.cuda.get_device_name(device)}: {kind}"
    n = torch.get_num_threads()
    return (f"backend {model.backend} -> {used_s} on the CPU ({n} thread{'s' if n > 1 else ''}): "
            "the reference PyTorch ops (the fast Triton/CUDA kernels run on CUDA GPUs)")


def train(cfg: TrainConfig, log=print) -> dict:
    """Runs the training; returns a summary (also written to <out>/summary.json on rank 0)."""
    t_start = time.time()
    info = dist_mod.from_env()
    device = resolve_device(cfg.device, info.local_rank)
    amp = resolve_amp(cfg.amp, device)
    out_size = validate_config(cfg)
    if cfg.batch % info.world_size:
        raise ConfigError(f"--batch {cfg.batch} (the global batch) must be a multiple of the "
                          f"number of processes ({info.world_size})")
    say = log if info.is_main else (lambda *a, **k: None)
    writer_cls = _tensorboard_writer_class() if cfg.tensorboard and info.is_main else None

    # read and check the checkpoints before anything is written
    init = _load_init(cfg) if cfg.init_from else None
    resumed = None
    if cfg.resume:
        resumed = ckpt_mod.load(cfg.resume)
        ckpt_mod.check_config(resumed["config"], dataclasses.asdict(cfg), RESUME_KEYS,
                              resumed["path"])
    out = Path(cfg.out) if cfg.out else (Path(resumed["path"]).parent if resumed else None)

    dist_mod.init(info, device)
    threads = torch.get_num_threads()
    lock = writer = run = None
    try:
        run = _setup(cfg, info, device, amp, out_size, resumed, init)
        if info.is_main:
            out, lock = _claim_out(run, out, resumed, say)
        run.out = Path(dist_mod.broadcast_object(str(out) if out is not None else None))
        _announce(run, resumed, init, say)
        if writer_cls is not None:
            writer = run.writer = writer_cls(
                log_dir=str(run.out),
                purge_step=run.start_epoch * run.steps_per_epoch + 1 if resumed else None)
        for epoch in range(run.start_epoch, cfg.epochs):
            t0 = time.time()
            train_loss, train_time = _train_epoch(run, epoch)
            if info.is_main:
                _end_epoch(run, epoch, train_loss, t0, train_time, say)
            dist_mod.barrier()
        summary = _finish(run, say, t_start)
        # every rank leaves together: a rank tearing gloo down while rank 0 still writes its
        # files aborted once in CI ("terminate called without an active exception")
        dist_mod.barrier()
        return summary
    except OSError as e:
        if e.errno in DISK_FULL:
            raise RunError(_disk_full_message(e, run)) from None
        raise
    finally:
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass
        if lock is not None:
            lock.release()
        torch.set_num_threads(threads)
        if run is not None:
            run.net = None          # the DDP wrapper (and its reducer) goes before its group
        dist_mod.shutdown()


def _tensorboard_writer_class():
    """torch.utils.tensorboard.SummaryWriter; ConfigError saying what to install if missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(f"--tensorboard needs the tensorboard package ({e}); install it "
                          "(pip install tensorboard) or train without --tensorboard (the same "
                          "numbers are in metrics.jsonl)") from None
    return SummaryWriter


def _load_init(cfg: TrainConfig) -> dict:
    """The checkpoint of --init-from, whose network must be this run's (INIT_KEYS)."""
    ck = ckpt_mod.load(cfg.init_from)
    saved, current = ck["config"], dataclasses.asdict(cfg)
    diffs = [(k, saved.get(k), current.get(k)) for k in INIT_KEYS if saved.get(k) != current.get(k)]
    if diffs:
        lines = "\n".join(f"  {k}: checkpoint has {a!r}, this run has {b!r}" for k, a, b in diffs)
        flags = " ".join(f"{_flag(k)} {a}" for k, a, _ in diffs)
        raise CheckpointError(
            f"cannot start from the weights of {ck['path']}: its network is another one:\n"
            f"{lines}\nPass the checkpoint's settings ({flags}); on the command line they are "
            "taken from the checkpoint when not given.")
    return ck


# ----------------------------------------------------------------------------- setup
@dataclass
class _Run:
    """What a training run holds from its setup to its end."""
    cfg: TrainConfig
    info: dist_mod.DistInfo
    device: torch.device
    amp: str
    out_size: int
    out: Optional[Path]        # the run folder (set by _claim_out, on every rank)
    train_samples: list
    val_samples: list
    dataset: TileDataset
    sampler: object            # DistributedSampler: one epoch's share of the tiles per rank
    loader: object             # DataLoader
    local_batch: int
    steps_per_epoch: int
    model: torch.nn.Module     # the UNet (saved, evaluated)
    net: torch.nn.Module       # what trains: the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    sched: object              # LambdaLR, stepped once per optimizer step
    scaler: Optional[torch.amp.GradScaler]
    loss_fn: object
    history: list              # one record per finished epoch (metrics.jsonl)
    start_epoch: int
    best: float                # best validation Dice so far (-1: none yet)
    writer: object = None      # TensorBoard SummaryWriter (rank 0, --tensorboard)
    head_reset: bool = False   # --init-from with another num_classes: the head starts anew


def _set_threads(cfg: TrainConfig, info: dist_mod.DistInfo, device: torch.device) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    elif device.type == "cpu" and not info.enabled and "OMP_NUM_THREADS" not in os.environ:
        # Half the cores: on a shared machine a full set of OpenMP threads that spin-wait on
        # each other runs many times slower; on an idle one half costs little for these sizes.
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) // 2)))


def _setup(cfg, info, device, amp, out_size, resumed, init) -> _Run:
    """Data, loader, model, optimizer, schedule and loss; the resumed state when resuming, the
    weights of --init-from when fine-tuning. Reads only: nothing is written yet."""
    from torch.utils.data import DataLoader, DistributedSampler

    from .. import UNet

    _set_threads(cfg, info, device)
    train_samples, val_samples = _load_data(cfg)
    if cfg.loss == "weighted-ce":
        add_weight_maps(train_samples, cfg.num_classes, cfg.w0, cfg.sigma, cfg.border_class)
    ds = TileDataset(train_samples, cfg.tile, out_size, cfg.tiles_per_epoch, cfg.seed,
                     cfg.flips, cfg.rotations, cfg.elastic, cfg.elastic_sigma)
    sampler = DistributedSampler(ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    local_batch = cfg.batch // info.world_size
    loader = DataLoader(ds, batch_size=local_batch, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.workers > 0)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ConfigError("an epoch has no step: raise --tiles-per-epoch or lower --batch")

    torch.manual_seed(cfg.seed)
    model = UNet(cfg.in_channels, cfg.num_classes, cfg.base_channels, cfg.depth, cfg.padding,
                 backend=cfg.backend, checkpointing=RECOMPUTE[cfg.recompute])
    head_reset = False
    if init is not None:
        head_reset = _load_init_weights(model, init, cfg)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = model.parameters()
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total_steps))
    run = _Run(cfg=cfg, info=info, device=device, amp=amp, out_size=out_size, out=None,
               train_samples=train_samples, val_samples=val_samples, dataset=ds, sampler=sampler,
               loader=loader, local_batch=local_batch, steps_per_epoch=steps_per_epoch,
               model=model, net=model, opt=opt, sched=sched, scaler=grad_scaler(device, amp),
               loss_fn=make_loss(cfg.loss, cfg.class_weights), history=[], start_epoch=0,
               best=-1.0, head_reset=head_reset)
    if resumed is not None:
        _restore(run, resumed)
    if info.enabled:
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return run


def _load_init_weights(model, init: dict, cfg: TrainConfig) -> bool:
    """The weights of --init-from's checkpoint; with another num_classes all but the 1x1 head
    (which keeps its fresh initialization). Returns whether the head was left new."""
    state = init["model"]
    if init["config"].get("num_classes") == cfg.num_classes:
        model.load_state_dict(state)
        return False
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"head.weight", "head.bias"}:
        raise CheckpointError(f"the weights of {init['path']} do not fit this network (missing "
                              f"{sorted(missing)}, unexpected {sorted(unexpected)})")
    return True


def _claim_out(run: _Run, out: Optional[Path], resumed, say):
    """Rank 0 takes the run folder: a new unique one by default; locked against a second writer;
    refused when it holds another run (or a newer checkpoint than the one resumed); the temporary
    files of a killed writer removed. Returns (folder, lock)."""
    if out is None:
        out = rundir.claim_default_dir()
    lock = rundir.RunLock(out)
    try:
        last, best = out / "last.pt", out / "best.pt"
        if resumed is None:
            held = [p.name for p in (last, best) if p.exists()]
            if held:
                raise ConfigError(
                    f"--out {out} already holds a run ({', '.join(held)}); continue it with "
                    f"--resume {out}, fine-tune from it with --init-from {out / held[0]} and "
                    "another --out, or pass another --out")
        else:
            src = Path(resumed["path"])
            if last.exists() and not _same_file(last, src):
                try:
                    current = int(ckpt_mod.load(last)["epoch"])
                except CheckpointError:
                    current = None
                if current is None or current > int(resumed["epoch"]):
                    now = "cannot be read" if current is None else f"is at epoch {current}"
                    raise ConfigError(
                        f"resuming from {src} (epoch {resumed['epoch']}) would overwrite {last}, "
                        f"which {now}. Resume from it (--resume {out}), start a new run from "
                        f"{src.name}'s weights (--init-from {src} --out NEW), or resume into "
                        "another --out")
            if run.best > -1 and not best.exists():
                say(f"warning: {best} is missing; the next validated epoch writes it")
                run.best = -1.0
        removed = rundir.clean_stale_tmp(out)
        if removed:
            say(f"removed {len(removed)} temporary file(s) a stopped run left in {out}: "
                f"{', '.join(removed)}")
    except BaseException:
        lock.release()
        raise
    return out, lock


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _announce(run: _Run, resumed, init, say) -> None:
    """config.json, what is trained on what, and (from one forward of a tile) which kernels run."""
    cfg, model = run.cfg, run.model
    if run.info.is_main:
        _write_json(dataclasses.asdict(cfg), run.out / "config.json")
    n_params = sum(p.numel() for p in model.parameters())
    n_train, n_val = len(run.train_samples), len(run.val_samples)
    data_desc = (f"built-in EM-like data ({n_train} train / {n_val} val "
                 f"images of {cfg.image_size}x{cfg.image_size})" if cfg.data is None else
                 f"{cfg.data} ({n_train} train / {n_val} val images)")
    say(f"unet-fast train: U-Net depth {cfg.depth}, base {cfg.base_channels} channels, "
        f"padding {cfg.padding!r}, {n_params:,} parameters; tile {cfg.tile} -> {run.out_size}")
    cw = (f", class weights {', '.join(f'{w:g}' for w in cfg.class_weights)}"
          if cfg.class_weights is not None else "")
    say(f"data: {data_desc}; loss {cfg.loss}{cw}, {cfg.optimizer} lr {cfg.lr:g} ({cfg.schedule}), "
        f"batch {cfg.batch}" + (f" ({run.info.world_size} processes x {run.local_batch})"
                                if run.info.enabled else "") + f", amp {run.amp}")
    if n_val == 0:
        say("no validation images: no validation score, and no best.pt (last.pt is the model)")
    if resumed is not None:
        say(f"resuming from {resumed['path']} after epoch {run.start_epoch}")
    if init is not None:
        say(f"fine-tuning: starting from the weights of {init['path']} (epoch {init['epoch']})"
            + (f"; the 1x1 head is new ({init['config'].get('num_classes')} -> "
               f"{cfg.num_classes} classes)" if run.head_reset else ""))
    say(f"run folder: {run.out}" + (" (TensorBoard: tensorboard --logdir "
                                     f"{run.out.parent})" if cfg.tensorboard else ""))

    _precompile(run, say)
    # one forward of a tile to learn (and say) which kernels run this model here
    probe = run.dataset[0][0][None].to(run.device)
    if cfg.channels_last:
        probe = probe.contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad(), amp_context(run.device, run.amp):
        model(probe)
    say(_describe_backend(model, run.device))


def _precompile(run: _Run, say) -> None:
    """On a GPU, compile the Triton kernels of the training step, of validation and of the probe
    below before any runs, side by side (UNet.precompile), instead of shape by shape as the first
    step and the first validation meet them."""
    cfg = run.cfg
    if run.device.type != "cuda":
        return
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def example(batch):
        return torch.empty(batch, cfg.in_channels, cfg.tile, cfg.tile,
                           device=run.device).contiguous(memory_format=fmt)
    evaluate = [example(1)] + ([example(cfg.val_batch)] if run.val_samples else [])
    res = run.model.precompile(train=example(run.local_batch), evaluate=evaluate,
                               autocast=AMP_DTYPES.get(run.amp))
    if res["skipped"] is None:
        say(f"compiled {res['kernels']} Triton kernels before the first step in "
            f"{res['seconds']:.1f} s" + (f" ({res['failed']} failed: they fall back at first use)"
                                         if res["failed"] else ""))


# ----------------------------------------------------------------------------- one epoch
def _train_epoch(run: _Run, epoch: int) -> tuple[float, float]:
    """One pass over the epoch's tiles: (mean training loss over all ranks, seconds). A non-finite
    loss stops the run (RunError) before anything of the epoch is saved."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    run.sampler.set_epoch(epoch)
    run.dataset.set_epoch(epoch)
    run.net.train()
    t0 = time.time()
    loss_sum, n_steps, n_finite, skipped = torch.zeros((), dtype=torch.float64), 0, 0, 0
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
               disable=None if (run.info.is_main and cfg.progress) else True,  # None: off if no TTY
               leave=False, dynamic_ncols=True,
               file=sys.stderr)
    for x, y, w in run.loader:
        lr = run.opt.param_groups[0]["lr"]
        loss = _train_step(run.net, run.opt, run.scaler, run.loss_fn, x, y, w, run.device, run.amp,
                           cfg.channels_last)
        run.sched.step()
        n_steps += 1
        value = loss.double().cpu()
        if not torch.isfinite(value):
            skipped += 1
            if run.scaler is None or skipped > MAX_SKIPPED_STEPS:
                bar.close()
                raise RunError(_diverged_message(run, epoch, n_steps, float(value), lr, skipped))
        else:
            skipped = 0
            loss_sum += value
            n_finite += 1
        if run.writer is not None:
            run.writer.add_scalar("loss/train_step", float(value),
                                  epoch * run.steps_per_epoch + n_steps)
        if not bar.disable:
            dt = time.time() - t0
            bar.set_postfix(loss=f"{float(loss):.4f}",
                            img_s=f"{n_steps * cfg.batch / max(dt, 1e-9):.1f}", refresh=False)
            bar.update(1)
    bar.close()
    train_time = time.time() - t0
    return dist_mod.mean_across(float(loss_sum) / max(n_finite, 1), run.device), train_time


def _diverged_message(run: _Run, epoch: int, step: int, value: float, lr: float,
                      skipped: int) -> str:
    cfg = run.cfg
    streak = f" ({skipped} steps in a row under fp16 loss scaling)" if skipped > 1 else ""
    last = run.out / "last.pt"
    again = (f"Start again with a lower --lr, or fine-tune the last good weights with one: "
             f"--init-from {last} --lr {cfg.lr / 10:g} --out NEW" if last.exists() else
             f"Start again with a lower --lr (say {cfg.lr / 10:g})")
    return (f"the training loss is {value} at epoch {epoch + 1}, step {step}{streak}: training "
            f"diverged (learning rate {lr:g}; --lr {cfg.lr:g}). Nothing of this epoch was saved; "
            f"{_intact(run)}. {again}")


def _end_epoch(run: _Run, epoch: int, train_loss: float, t0: float, train_time: float,
               say) -> None:
    """Rank 0 after an epoch: validation, the epoch's record, checkpoints, metrics and plots."""
    cfg = run.cfg
    run.model.eval()
    metrics, preds = evaluate(run.model, run.val_samples, cfg, run.amp)
    m = metrics or {}
    record = {"epoch": epoch + 1, "step": (epoch + 1) * run.steps_per_epoch,
              "train_loss": train_loss, "lr": run.opt.param_groups[0]["lr"],
              "val_dice": m.get("dice"), "val_iou": m.get("iou"),
              "val_pixel_error": m.get("pixel_error"),
              "val_dice_per_class": m.get("dice_per_class"),
              "epoch_time_s": time.time() - t0,
              "train_images_per_s": run.steps_per_epoch * cfg.batch / max(train_time, 1e-9)}
    run.history.append(record)
    improved = metrics is not None and record["val_dice"] > run.best
    if improved:
        run.best = record["val_dice"]
    _save_checkpoint(run, epoch + 1, improved)
    _write_metrics(run.history, run.out / "metrics.jsonl")
    _plot_curves(run.history, run.out / "curves.png")
    if preds and (epoch == run.start_epoch or (epoch + 1) % 5 == 0 or epoch + 1 == cfg.epochs):
        _plot_examples(run.val_samples, preds, cfg.examples, run.out / "val_examples.png")
    if run.writer is not None:
        _log_tensorboard(run.writer, record)
    val = (f"val Dice {record['val_dice']:.4f}  IoU {record['val_iou']:.4f}  pixel error "
           f"{record['val_pixel_error']:.4f}" if metrics is not None else "val: none")
    say(f"epoch {epoch + 1}/{cfg.epochs}  loss {train_loss:.4f}  {val}  "
        f"({record['epoch_time_s']:.1f} s, {record['train_images_per_s']:.0f} img/s)")


def _log_tensorboard(writer, record: dict) -> None:
    """The epoch's record as TensorBoard scalars at its global step (what metrics.jsonl has)."""
    step = record["step"]
    writer.add_scalar("loss/train", record["train_loss"], step)
    writer.add_scalar("lr", record["lr"], step)
    writer.add_scalar("speed/train_images_per_s", record["train_images_per_s"], step)
    if record["val_dice"] is not None:
        writer.add_scalar("val/dice", record["val_dice"], step)
        writer.add_scalar("val/iou", record["val_iou"], step)
        writer.add_scalar("val/pixel_error", record["val_pixel_error"], step)
        for c, d in enumerate(record["val_dice_per_class"]):
            writer.add_scalar(f"val/dice_class_{c}", d, step)
    writer.flush()


# ----------------------------------------------------------------------------- checkpoints
def _save_checkpoint(run: _Run, epochs_done: int, improved: bool) -> None:
    """best.pt (when validation improved), then last.pt, after every epoch, each written
    atomically: a run killed at any moment keeps its last complete checkpoints, and a last.pt that
    records a best always has its best.pt. It holds everything `_restore` needs for the resumed
    run to equal an uninterrupted one, and a checksum. Non-finite weights are never saved."""
    bad = [n for n, p in run.model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise RunError(f"the weights are not finite after epoch {epochs_done} ({bad[0]}, ...): "
                       f"training diverged; nothing was saved, {_intact(run)}. Lower --lr "
                       f"(now {run.cfg.lr:g}) and start again")
    state = {"format": ckpt_mod.FORMAT, "version": ckpt_mod.VERSION,
             "model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
             "scheduler": run.sched.state_dict(),
             "scaler": run.scaler.state_dict() if run.scaler is not None else None,
             "epoch": epochs_done, "step": epochs_done * run.steps_per_epoch,
             "config": dataclasses.asdict(run.cfg), "rng": ckpt_mod.rng_state(),
             "history": run.history, "best_dice": run.best,
             "unet_fast_version": _version()}
    state = ckpt_mod.with_checksum(state)
    if improved:
        ckpt_mod.save_atomic(state, run.out / "best.pt")
    ckpt_mod.save_atomic(state, run.out / "last.pt")


def _restore(run: _Run, resumed: dict) -> None:
    """The state `_save_checkpoint` wrote: weights, optimizer, schedule, scaler, RNGs, history."""
    run.model.load_state_dict(resumed["model"])
    run.opt.load_state_dict(resumed["optimizer"])
    run.sched.load_state_dict(resumed["scheduler"])
    if run.scaler is not None and resumed.get("scaler"):
        run.scaler.load_state_dict(resumed["scaler"])
    ckpt_mod.set_rng_state(resumed.get("rng"))
    run.history = list(resumed.get("history", []))
    run.start_epoch = int(resumed["epoch"])
    run.best = float(resumed.get("best_dice", -1.0))


def _write_metrics(history: list, path: Path) -> None:
    """metrics.jsonl from the history (rewritten whole, so it matches the checkpoint)."""
    ckpt_mod.atomic_write(path, lambda f: f.writelines(json.dumps(h) + "\n" for h in history),
                          mode="w")


def _checkpoint_epoch(path: Path) -> Optional[int]:
    try:
        return int(ckpt_mod.load(path)["epoch"])
    except (CheckpointError, KeyError, ValueError, TypeError):
        return None


def _intact(run: Optional[_Run]) -> str:
    """Which checkpoints of the run are complete (loaded and checksummed), in words."""
    out = run.out if run is not None else None
    if out is None:
        return "no checkpoint was written"
    found = []
    for name in ("last.pt", "best.pt"):
        epoch = _checkpoint_epoch(out / name) if (out / name).exists() else None
        if epoch is not None:
            found.append(f"{out / name} (epoch {epoch})")
    return ("the run's checkpoints are intact: " + ", ".join(found) if found else
            f"no checkpoint of the run was written yet in {out}")


def _disk_full_message(e: OSError, run: Optional[_Run]) -> str:
    out = run.out if run is not None else None
    where = f" while writing {e.filename}" if e.filename else ""
    again = (f" Free some space, then continue with: unet-fast train --resume {out}"
             if out is not None and (out / "last.pt").exists() else
             " Free some space and start again.")
    return f"no space left on the device{where} ({e.strerror}); {_intact(run)}.{again}"


# ----------------------------------------------------------------------------- the end
def _finish(run: _Run, say, t_start: float) -> dict:
    """Checks that the ranks agree, writes summary.json (rank 0) and returns the summary."""
    in_sync = dist_mod.ranks_in_sync(run.model)
    if not in_sync:
        raise RuntimeError("the processes' parameters differ after training (DDP desync)")
    history, best, out = run.history, run.best, run.out
    has_best = (out / "best.pt").exists()
    summary = {"out": str(out), "epochs": run.cfg.epochs, "world_size": run.info.world_size,
               "device": str(run.device), "amp": run.amp,
               "backend_report": run.model.backend_report(),
               "final": history[-1] if history else None,
               "best_dice": best if best > -1 else None,
               "ranks_in_sync": in_sync, "seconds": time.time() - t_start,
               "checkpoint": str(out / "last.pt"),
               "best_checkpoint": str(out / "best.pt") if has_best else None}
    if run.info.is_main:
        _write_json(summary, out / "summary.json")
        files = [f for f in ("last.pt", "best.pt") if (out / f).exists()]
        files = ([", ".join(files) + " (checkpoints)"] if files else []) + [
            f for f in ("metrics.jsonl", "curves.png", "val_examples.png", "config.json",
                        "summary.json") if (out / f).exists()]
        if run.writer is not None:
            files.append("TensorBoard events")
        say(f"outputs in {out}/: {', '.join(files)} ({summary['seconds']:.0f} s in all)")
        final = history[-1] if history else None
        predict_from = out / ("best.pt" if has_best else "last.pt")
        if final is not None and (out / predict_from.name).exists():
            score = (f"final validation Dice {final['val_dice']:.4f} (best {best:.4f}); "
                     if final.get("val_dice") is not None else "no validation; ")
            say(f"{score}predict with: unet-fast predict --checkpoint {predict_from} IMAGE...")
    summary["model"] = run.model
    return summary


def _version() -> str:
    from .. import __version__
    return __version__
