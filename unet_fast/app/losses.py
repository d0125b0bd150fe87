"""Losses and metrics.

Every loss is a mean over samples (and pixels) of per-sample terms, so with equal local batches
the average over DistributedDataParallel ranks equals the loss of the whole global batch.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

LOSSES = ("ce", "weighted-ce", "dice")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                  weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pixel-wise cross-entropy, mean over all pixels; with `weight` (N, H, W) the paper's
    weighted cross-entropy E = mean_x w(x) * -log p_{l(x)}(x)."""
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    if weight is not None:
        ce = ce * weight
    return ce.mean()


def soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the softmax probabilities, per sample and class, averaged over both."""
    p = torch.softmax(logits.float(), dim=1)
    g = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    inter = (p * g).sum(dim=(2, 3))
    denom = p.sum(dim=(2, 3)) + g.sum(dim=(2, 3))
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def make_loss(name: str) -> Callable:
    """loss(logits, target, weight) for "ce", "weighted-ce" (the paper's border weight map) or
    "dice"."""
    if name == "ce":
        return lambda logits, target, weight=None: cross_entropy(logits, target)
    if name == "weighted-ce":
        def wce(logits, target, weight=None):
            if weight is None:
                raise ValueError("the weighted-ce loss needs a weight map")
            return cross_entropy(logits, target, weight)
        return wce
    if name == "dice":
        return lambda logits, target, weight=None: soft_dice(logits, target)
    raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {name!r}")


# ------------------------------------------------------------------------------ metrics
def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts: rows true class, columns predicted class."""
    idx = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def metrics_from_confusion(cm: torch.Tensor, positive: Optional[int] = None) -> dict:
    """Dice, IoU (of the `positive` class, default: mean over classes 1..C-1) and pixel error."""
    cm = cm.double()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    dice = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), torch.ones_like(tp))
    iou = torch.where(tp + fp + fn > 0, tp / (tp + fp + fn), torch.ones_like(tp))
    c = cm.shape[0]
    classes = [positive] if positive is not None else (list(range(1, c)) if c > 1 else [0])
    total = cm.sum()
    return {
        "dice": float(dice[classes].mean()),
        "iou": float(iou[classes].mean()),
        "pixel_error": float(1 - tp.sum() / total) if total > 0 else 0.0,
        "dice_per_class": [float(v) for v in dice],
    }
