"""Losses and metrics against direct formulas."""
import math

import pytest
import torch

from unet_fast.app import losses


def _direct_ce(logits, target, weight=None):
    n, c, h, w = logits.shape
    total = 0.0
    for b in range(n):
        for i in range(h):
            for j in range(w):
                z = logits[b, :, i, j].double()
                lse = math.log(sum(math.exp(v) for v in z.tolist()))
                e = lse - float(z[target[b, i, j]])
                total += e * (float(weight[b, i, j]) if weight is not None else 1.0)
    return total / (n * h * w)


def test_cross_entropy_and_weighted_ce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    weight = torch.rand(2, 4, 5, generator=g) * 10
    assert float(losses.cross_entropy(logits, target)) == pytest.approx(_direct_ce(logits, target),
                                                                        rel=1e-5)
    got = losses.make_loss("weighted-ce")(logits, target, weight)
    assert float(got) == pytest.approx(_direct_ce(logits, target, weight), rel=1e-5)
    with pytest.raises(ValueError, match="weight map"):
        losses.make_loss("weighted-ce")(logits, target, None)


def test_soft_dice():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 3, 3, generator=g)
    target = torch.randint(0, 2, (2, 3, 3), generator=g)
    p = torch.softmax(logits.double(), 1)
    vals = []
    for b in range(2):
        for c in range(2):
            gt = (target[b] == c).double()
            vals.append((2 * (p[b, c] * gt).sum() + 1) / (p[b, c].sum() + gt.sum() + 1))
    expect = 1 - sum(vals) / len(vals)
    assert float(losses.make_loss("dice")(logits, target)) == pytest.approx(float(expect), rel=1e-5)
    # perfect prediction -> ~0
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 100
    assert float(losses.soft_dice(perfect, target)) < 1e-6


def test_loss_is_mean_of_per_sample_losses():
    """What makes DDP with equal local batches equal to one process with the global batch."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 2, 5, 5, generator=g)
    target = torch.randint(0, 2, (4, 5, 5), generator=g)
    weight = torch.rand(4, 5, 5, generator=g)
    for name in losses.LOSSES:
        f = losses.make_loss(name)
        whole = f(logits, target, weight)
        halves = (f(logits[:2], target[:2], weight[:2]) + f(logits[2:], target[2:], weight[2:])) / 2
        assert float(whole) == pytest.approx(float(halves), rel=1e-6)


def test_unknown_loss():
    with pytest.raises(ValueError, match="--loss must be one of ce, weighted-ce, dice"):
        losses.make_loss("focal")


def test_metrics_against_counts():
    target = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 0]])
    cm = losses.confusion(pred, target, 2)
    assert cm.tolist() == [[3, 1], [1, 3]]
    m = losses.metrics_from_confusion(cm)
    tp, fp, fn = 3, 1, 1
    assert m["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert m["pixel_error"] == pytest.approx(2 / 8)
    m3 = losses.metrics_from_confusion(losses.confusion(pred, target, 3))
    assert m3["dice"] == pytest.approx((0.75 + 1.0) / 2)   # absent class 2 counts as perfect


def test_class_weights():
    """--class-weights: each pixel's cross-entropy times its true class's weight (mean over
    pixels), and each class's Dice in a weighted mean over classes."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    weight = torch.rand(2, 4, 5, generator=g)
    cw = [0.5, 2.0, 0.0]
    per_pixel = torch.tensor(cw)[target]
    assert float(losses.make_loss("ce", cw)(logits, target)) == pytest.approx(
        _direct_ce(logits, target, per_pixel), rel=1e-5)
    assert float(losses.make_loss("weighted-ce", cw)(logits, target, weight)) == pytest.approx(
        _direct_ce(logits, target, per_pixel * weight), rel=1e-5)
    p = torch.softmax(logits.double(), 1)
    per_sample = []
    for b in range(2):
        d = [(2 * (p[b, c] * (target[b] == c)).sum() + 1) / (p[b, c].sum() + (target[b] == c).sum()
                                                             + 1) for c in range(3)]
        per_sample.append(sum(w * x for w, x in zip(cw, d)) / sum(cw))
    assert float(losses.make_loss("dice", cw)(logits, target)) == pytest.approx(
        float(1 - sum(per_sample) / 2), rel=1e-5)
    # equal weights change nothing; the DDP rule (mean of per-sample terms) still holds
    for name in losses.LOSSES:
        assert float(losses.make_loss(name, [1, 1, 1])(logits, target, weight)) == pytest.approx(
            float(losses.make_loss(name)(logits, target, weight)), rel=1e-6)
        f = losses.make_loss(name, cw)
        halves = (f(logits[:1], target[:1], weight[:1]) + f(logits[1:], target[1:], weight[1:])) / 2
        assert float(f(logits, target, weight)) == pytest.approx(float(halves), rel=1e-6)
