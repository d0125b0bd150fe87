"""Training: `unet-fast train` and `torchrun --nproc_per_node N -m unet_fast train`.

Reproducible: the weights come from `seed`, and training tile `i` of epoch `e` from
(seed, e, i) alone, so a resumed run equals an uninterrupted one and N processes with a global
batch B see the same tiles as one process with batch B.

The loop, in reading order: `train` checks the options and reads the checkpoint to resume from;
`_setup` builds the data, model, optimizer and schedule (and `_restore`s a checkpoint);
`_train_epoch` runs one epoch of `_train_step`s; `_end_epoch` (rank 0) validates and writes the
checkpoint (`_save_checkpoint`), metrics and plots; `_finish` writes the summary.
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

from . import checkpoint as ckpt_mod
from . import distributed as dist_mod
from .data import (MEMBRANE, DataError, TileDataset, add_weight_maps, builtin_samples,
                   check_tile, load_folder)
from .losses import LOSSES, confusion, make_loss, metrics_from_confusion
from .predict import overlay, predict_logits
from .runtime import (ConfigError, amp_context, grad_scaler, optimizer_step, resolve_amp,
                      resolve_device)

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
    device: str = "auto"
    workers: int = 0
    threads: int = 0                  # CPU threads (0: auto, half the cores on a CPU run)
    out: Optional[str] = None
    resume: Optional[str] = None
    progress: bool = True
    val_batch: int = 8
    examples: int = 4                 # validation images in the examples PNG


# Keys that must match for --resume (the rest may change: epochs, out, device, backend, ...).
RESUME_KEYS = ("data", "val_data", "val_fraction", "train_images", "val_images", "image_size",
               "in_channels", "num_classes", "base_channels", "depth", "padding", "tile", "batch",
               "tiles_per_epoch", "optimizer", "lr", "momentum", "weight_decay", "schedule",
               "warmup_steps", "loss", "w0", "sigma", "border_class", "flips", "rotations",
               "elastic", "elastic_sigma", "seed", "amp", "channels_last")


def validate_config(cfg: TrainConfig) -> int:
    """Checks the options; returns the output size of the training tile."""
    if cfg.loss not in LOSSES:
        raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                          f"{cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    for name in ("epochs", "batch", "tiles_per_epoch", "base_channels", "depth", "num_classes",
                 "in_channels"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.data is None and (cfg.num_classes != 2 or cfg.in_channels != 1):
        raise ConfigError("the built-in data has 1 input channel and 2 classes (cell, membrane); "
                          "--num-classes/--in-channels other than 2/1 need --data")
    if not 0 <= cfg.border_class < cfg.num_classes:
        raise ConfigError(f"--border-class {cfg.border_class} is not a class index "
                          f"(0..{cfg.num_classes - 1})")
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
    n_val = min(len(samples) - 1, max(1, round(cfg.val_fraction * len(samples))))
    order = np.random.default_rng([cfg.seed, 99]).permutation(len(samples))
    val_idx = set(order[:n_val].tolist())
    return ([s for i, s in enumerate(samples) if i not in val_idx],
            [s for i, s in enumerate(samples) if i in val_idx])


def evaluate(model, samples, cfg: TrainConfig, amp: str) -> tuple[dict, list]:
    """Metrics over whole validation images (overlap-tile prediction) and the predicted masks."""
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
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.set_title("training loss"), a.grid(alpha=.3)
    b.plot(ep, [h["val_dice"] for h in history], "o-", label="Dice")
    b.plot(ep, [h["val_iou"] for h in history], "s-", label="IoU")
    b.plot(ep, [1 - h["val_pixel_error"] for h in history], "^-", label="pixel accuracy")
    b.set_xlabel("epoch"), b.set_title("validation"), b.grid(alpha=.3), b.legend()
    b.set_ylim(min(0.5, min([h["val_dice"] for h in history] + [1])), 1.0)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def _plot_examples(samples, preds, n: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(samples))
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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def _default_out() -> Path:
    return Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")


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

    # resume: read and check before anything is written
    resumed = None
    if cfg.resume:
        resumed = ckpt_mod.load(cfg.resume)
        ckpt_mod.check_config(resumed["config"], dataclasses.asdict(cfg), RESUME_KEYS,
                              resumed["path"])
    out = Path(cfg.out) if cfg.out else (Path(resumed["path"]).parent if resumed else _default_out())

    dist_mod.init(info, device)
    threads = torch.get_num_threads()
    try:
        run = _setup(cfg, info, device, amp, out_size, out, resumed)
        _announce(run, resumed, say)
        for epoch in range(run.start_epoch, cfg.epochs):
            t0 = time.time()
            train_loss, train_time = _train_epoch(run, epoch)
            if info.is_main:
                _end_epoch(run, epoch, train_loss, t0, train_time, say)
            dist_mod.barrier()
        return _finish(run, say, t_start)
    finally:
        torch.set_num_threads(threads)
        dist_mod.shutdown()


# ----------------------------------------------------------------------------- setup
@dataclass
class _Run:
    """What a training run holds from its setup to its end."""
    cfg: TrainConfig
    info: dist_mod.DistInfo
    device: torch.device
    amp: str
    out_size: int
    out: Path
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


def _set_threads(cfg: TrainConfig, info: dist_mod.DistInfo, device: torch.device) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    elif device.type == "cpu" and not info.enabled and "OMP_NUM_THREADS" not in os.environ:
        # Half the cores: on a shared machine a full set of OpenMP threads that spin-wait on
        # each other runs many times slower; on an idle one half costs little for these sizes.
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) // 2)))


def _setup(cfg, info, device, amp, out_size, out, resumed) -> _Run:
    """Data, loader, model, optimizer, schedule and loss; the resumed state when resuming."""
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
                 backend=cfg.backend).to(device)
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
    run = _Run(cfg=cfg, info=info, device=device, amp=amp, out_size=out_size, out=out,
               train_samples=train_samples, val_samples=val_samples, dataset=ds, sampler=sampler,
               loader=loader, local_batch=local_batch, steps_per_epoch=steps_per_epoch,
               model=model, net=model, opt=opt, sched=sched, scaler=grad_scaler(device, amp),
               loss_fn=make_loss(cfg.loss), history=[], start_epoch=0, best=-1.0)
    if resumed is not None:
        _restore(run, resumed)
    if info.enabled:
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return run


def _announce(run: _Run, resumed, say) -> None:
    """config.json, what is trained on what, and (from one forward of a tile) which kernels run."""
    cfg, model = run.cfg, run.model
    if run.info.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        with open(run.out / "config.json", "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=2)
    n_params = sum(p.numel() for p in model.parameters())
    n_train, n_val = len(run.train_samples), len(run.val_samples)
    data_desc = (f"built-in EM-like data ({n_train} train / {n_val} val "
                 f"images of {cfg.image_size}x{cfg.image_size})" if cfg.data is None else
                 f"{cfg.data} ({n_train} train / {n_val} val images)")
    say(f"unet-fast train: U-Net depth {cfg.depth}, base {cfg.base_channels} channels, "
        f"padding {cfg.padding!r}, {n_params:,} parameters; tile {cfg.tile} -> {run.out_size}")
    say(f"data: {data_desc}; loss {cfg.loss}, {cfg.optimizer} lr {cfg.lr:g} ({cfg.schedule}), "
        f"batch {cfg.batch}" + (f" ({run.info.world_size} processes x {run.local_batch})"
                                if run.info.enabled else "") + f", amp {run.amp}")
    if resumed is not None:
        say(f"resuming from {resumed['path']} after epoch {run.start_epoch}")

    # one forward of a tile to learn (and say) which kernels run this model here
    probe = run.dataset[0][0][None].to(run.device)
    if cfg.channels_last:
        probe = probe.contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad(), amp_context(run.device, run.amp):
        model(probe)
    say(_describe_backend(model, run.device))


# ----------------------------------------------------------------------------- one epoch
def _train_epoch(run: _Run, epoch: int) -> tuple[float, float]:
    """One pass over the epoch's tiles: (mean training loss over all ranks, seconds)."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    run.sampler.set_epoch(epoch)
    run.dataset.set_epoch(epoch)
    run.net.train()
    t0 = time.time()
    loss_sum, n_steps = torch.zeros((), dtype=torch.float64), 0
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
               disable=None if (run.info.is_main and cfg.progress) else True,  # None: off if no TTY
               leave=False, dynamic_ncols=True,
               file=sys.stderr)
    for x, y, w in run.loader:
        loss = _train_step(run.net, run.opt, run.scaler, run.loss_fn, x, y, w, run.device, run.amp,
                           cfg.channels_last)
        run.sched.step()
        loss_sum += loss.double().cpu()
        n_steps += 1
        if not bar.disable:
            dt = time.time() - t0
            bar.set_postfix(loss=f"{float(loss):.4f}",
                            img_s=f"{n_steps * cfg.batch / max(dt, 1e-9):.1f}", refresh=False)
            bar.update(1)
    bar.close()
    train_time = time.time() - t0
    return dist_mod.mean_across(float(loss_sum) / max(n_steps, 1), run.device), train_time


def _end_epoch(run: _Run, epoch: int, train_loss: float, t0: float, train_time: float,
               say) -> None:
    """Rank 0 after an epoch: validation, the epoch's record, checkpoints, metrics and plots."""
    cfg = run.cfg
    run.model.eval()
    metrics, preds = evaluate(run.model, run.val_samples, cfg, run.amp)
    record = {"epoch": epoch + 1, "step": (epoch + 1) * run.steps_per_epoch,
              "train_loss": train_loss, "lr": run.opt.param_groups[0]["lr"],
              "val_dice": metrics["dice"], "val_iou": metrics["iou"],
              "val_pixel_error": metrics["pixel_error"],
              "val_dice_per_class": metrics["dice_per_class"],
              "epoch_time_s": time.time() - t0,
              "train_images_per_s": run.steps_per_epoch * cfg.batch / max(train_time, 1e-9)}
    run.history.append(record)
    improved = record["val_dice"] > run.best
    run.best = max(run.best, record["val_dice"])
    _save_checkpoint(run, epoch + 1, improved)
    _write_metrics(run.history, run.out / "metrics.jsonl")
    _plot_curves(run.history, run.out / "curves.png")
    if epoch == run.start_epoch or (epoch + 1) % 5 == 0 or epoch + 1 == cfg.epochs:
        _plot_examples(run.val_samples, preds, cfg.examples, run.out / "val_examples.png")
    say(f"epoch {epoch + 1}/{cfg.epochs}  loss {train_loss:.4f}  val Dice "
        f"{record['val_dice']:.4f}  IoU {record['val_iou']:.4f}  pixel error "
        f"{record['val_pixel_error']:.4f}  ({record['epoch_time_s']:.1f} s, "
        f"{record['train_images_per_s']:.0f} img/s)")


# ----------------------------------------------------------------------------- checkpoints
def _save_checkpoint(run: _Run, epochs_done: int, improved: bool) -> None:
    """last.pt after every epoch (best.pt too when validation improved), written atomically: a
    run killed at any moment keeps its last complete checkpoint. It holds everything `_restore`
    needs for the resumed run to equal an uninterrupted one."""
    state = {"format": ckpt_mod.FORMAT, "version": ckpt_mod.VERSION,
             "model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
             "scheduler": run.sched.state_dict(),
             "scaler": run.scaler.state_dict() if run.scaler is not None else None,
             "epoch": epochs_done, "step": epochs_done * run.steps_per_epoch,
             "config": dataclasses.asdict(run.cfg), "rng": ckpt_mod.rng_state(),
             "history": run.history, "best_dice": run.best,
             "unet_fast_version": _version()}
    ckpt_mod.save_atomic(state, run.out / "last.pt")
    if improved:
        ckpt_mod.save_atomic(state, run.out / "best.pt")


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
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        for h in history:
            f.write(json.dumps(h) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the end
def _finish(run: _Run, say, t_start: float) -> dict:
    """Checks that the ranks agree, writes summary.json (rank 0) and returns the summary."""
    in_sync = dist_mod.ranks_in_sync(run.model)
    if not in_sync:
        raise RuntimeError("the processes' parameters differ after training (DDP desync)")
    history, best, out = run.history, run.best, run.out
    summary = {"out": str(out), "epochs": run.cfg.epochs, "world_size": run.info.world_size,
               "device": str(run.device), "amp": run.amp,
               "backend_report": run.model.backend_report(),
               "final": history[-1] if history else None, "best_dice": best,
               "ranks_in_sync": in_sync, "seconds": time.time() - t_start,
               "checkpoint": str(out / "last.pt")}
    if run.info.is_main:
        with open(out / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
        say(f"outputs in {out}/: last.pt, best.pt (checkpoints), metrics.jsonl, curves.png, "
            f"val_examples.png, config.json, summary.json "
            f"({summary['seconds']:.0f} s in all)")
        if history:
            say(f"final validation Dice {history[-1]['val_dice']:.4f} (best {best:.4f}); "
                f"predict with: unet-fast predict --checkpoint {out / 'best.pt'} IMAGE...")
    summary["model"] = run.model
    return summary


def _version() -> str:
    from .. import __version__
    return __version__
