"""Losses and metrics.

Every loss is a mean over samples (and pixels) of per-sample terms, so with equal local batches
the average over DistributedDataParallel ranks equals the loss of the whole global batch. That is
why per-class weights (`class_weights`, --class-weights) scale each pixel's cross-entropy by the
weight of its true class and the mean stays over pixels (torch's `cross_entropy(weight=)` divides
by the batch's sum of weights instead, which is not a mean of per-sample terms), and weight each
class's soft Dice in a weighted mean over classes.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

LOSSES = ("ce", "weighted-ce", "dice")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                  weight: Optional[torch.Tensor] = None,
                  class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pixel-wise cross-entropy, mean over all pixels; with `weight` (N, H, W) the paper's
    weighted cross-entropy E = mean_x w(x) * -log p_{l(x)}(x); with `class_weights` (C,) each
    pixel's term is also multiplied by the weight of its true class."""
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    if weight is not None:
        ce = ce * weight
    if class_weights is not None:
        ce = ce * class_weights.to(ce.device, ce.dtype)[target]
    return ce.mean()


def soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0,
              class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1 - soft Dice of the softmax probabilities, per sample and class, averaged over both (over
    classes weighted by `class_weights` when given)."""
    p = torch.softmax(logits.float(), dim=1)
    g = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    inter = (p * g).sum(dim=(2, 3))
    denom = p.sum(dim=(2, 3)) + g.sum(dim=(2, 3))
    dice = (2 * inter + eps) / (denom + eps)                  # (N, C)
    if class_weights is None:
        return 1.0 - dice.mean()
    cw = class_weights.to(dice.device, dice.dtype)
    return 1.0 - ((dice * cw).sum(1) / cw.sum()).mean()


def make_loss(name: str, class_weights=None) -> Callable:
    """loss(logits, target, weight) for "ce", "weighted-ce" (the paper's border weight map) or
    "dice"; `class_weights`: one non-negative weight per class, or None."""
    cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    if name == "ce":
        return lambda logits, target, weight=None: cross_entropy(logits, target,
                                                                 class_weights=cw)
    if name == "weighted-ce":
        def wce(logits, target, weight=None):
            if weight is None:
                raise ValueError("the weighted-ce loss needs a weight map")
            return cross_entropy(logits, target, weight, class_weights=cw)
        return wce
    if name == "dice":
        return lambda logits, target, weight=None: soft_dice(logits, target, class_weights=cw)
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
