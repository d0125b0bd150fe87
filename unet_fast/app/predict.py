"""Overlap-tile inference (Ronneberger et al., Fig. 2) for images of any size.

"valid": each tile's output is the center of its input; the image is extended by mirroring so the
border pixels get context, and tiles step by a multiple of 2**depth, so the result equals a
prediction of the whole (mirror-extended) image whenever that is possible. "same": tiles overlap by
`overlap` pixels and only their centers are kept (an image that fits one tile is one prediction).
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import sizes
from .data import check_tile, mirror_indices
from .runtime import amp_context

PALETTE = np.array([[0, 0, 0], [255, 40, 40], [40, 200, 255], [255, 220, 0], [40, 255, 80],
                    [255, 60, 255], [255, 140, 0], [140, 90, 255]], dtype=np.float32)


def _axis_plan(n: int, tile: int, out: int, depth: int, padding: str, overlap: int):
    """(pad_before, pad_after, stride, context, n_tiles, tile) for one image axis of length n."""
    m = (tile - out) // 2
    if padding == "valid":
        c = 0
        step = 2**depth
        s = (out // step) * step or out
    elif n <= tile:  # one tile: the smallest legal size that holds the axis (n itself if legal)
        tile = max(sizes.nearest_legal_sizes(n, depth, padding))
        c, s = 0, tile
    else:
        c = max(0, min(overlap // 2, (out - 1) // 2))
        s = out - 2 * c
    k = max(1, math.ceil(n / s))
    before = m + c
    after = (k - 1) * s + tile - n - before
    return before, after, s, c, k, tile


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


def covering_tile(h: int, w: int, depth: int, padding: str) -> int:
    """The smallest legal tile whose output covers an (h, w) image in one piece: a larger tile only
    adds mirrored border to compute ("same" mode shrinks per axis in `_axis_plan`)."""
    n = max(h, w)
    if padding == "valid":
        s = sizes.min_input_size(depth, padding)
        n += s - sizes.output_size(s, depth, padding)[0]
    return max(sizes.nearest_legal_sizes(n, depth, padding))


@torch.no_grad()
def predict_logits(model, image, tile: Optional[int] = None, batch: int = 4, overlap: int = 32,
                   amp: str = "off", channels_last: bool = False) -> torch.Tensor:
    """Class logits (num_classes, H, W) float32 of a (C, H, W) image of any size, by tiles of the
    legal input size `tile` (default: the image itself, mirrored in "valid" mode, when that is
    legal, else the nearest legal size above min(H, W, 572)); a tile larger than the image needs
    is lowered to the one that covers it. Every output pixel is computed (checked)."""
    depth, padding = model.depth, model.padding
    batch = _check_count(batch, "batch", 1)
    overlap = _check_count(overlap, "overlap", 0)
    p = next(model.parameters())
    device = p.device
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[0] != model.in_channels:
        raise ValueError(f"image must be (C={model.in_channels}, H, W), got {tuple(x.shape)}")
    x = x.float()
    c_in, h, w = x.shape
    if h == 0 or w == 0:
        raise ValueError(f"image is empty ({h}x{w})")
    if tile is None:
        tile = _default_tile(h, w, depth, padding)
    check_tile(tile, depth, padding, "tile")
    tile = min(tile, covering_tile(h, w, depth, padding))
    out = check_tile(tile, depth, padding, "tile")
    ph = _axis_plan(h, tile, out, depth, padding, overlap)
    pw = _axis_plan(w, tile, out, depth, padding, overlap)
    rows = torch.from_numpy(mirror_indices(h, ph[0], ph[1]))
    cols = torch.from_numpy(mirror_indices(w, pw[0], pw[1]))
    padded = x[:, rows[:, None], cols[None]]
    result = torch.full((model.num_classes, h, w), float("nan"), dtype=torch.float32)
    computed = torch.zeros((h, w), dtype=torch.bool)
    coords = [(i, j) for i in range(ph[4]) for j in range(pw[4])]
    was_training = model.training
    model.eval()
    try:
        for b0 in range(0, len(coords), batch):
            chunk = coords[b0:b0 + batch]
            xb = torch.stack([padded[:, i * ph[2]: i * ph[2] + ph[5], j * pw[2]: j * pw[2] + pw[5]]
                              for i, j in chunk]).to(device, p.dtype)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with amp_context(device, amp):
                yb = model(xb)
            yb = yb.float().cpu()
            for (i, j), y in zip(chunk, yb):
                y0, x0 = i * ph[2], j * pw[2]
                hh, ww = min(ph[2], h - y0), min(pw[2], w - x0)
                result[:, y0:y0 + hh, x0:x0 + ww] = y[:, ph[3]:ph[3] + hh, pw[3]:pw[3] + ww]
                computed[y0:y0 + hh, x0:x0 + ww] = True
    finally:
        model.train(was_training)
    if not bool(computed.all()):   # the tiling's invariant: nothing uncomputed is handed out
        raise RuntimeError(f"overlap-tile prediction left {int((~computed).sum())} of {h * w} "
                           f"pixels uncomputed (tile {tile}, batch {batch}); please report this")
    return result


def _default_tile(h: int, w: int, depth: int, padding: str) -> int:
    target = min(max(h, w), 572)
    if padding == "valid":  # input = output + 2 * margin
        margin = (sizes.min_input_size(depth, padding) - sizes.output_size(
            sizes.min_input_size(depth, padding), depth, padding)[0]) // 2
        target = target + 2 * margin
    return max(sizes.nearest_legal_sizes(target, depth, padding))


def whole_image_logits(model, image) -> torch.Tensor:
    """The whole image in one forward (mirror-extended by the margin in "valid" mode); raises the
    model's ValueError naming legal sizes if that size is illegal."""
    x = torch.as_tensor(image).float()
    if x.dim() == 2:
        x = x[None]
    h, w = x.shape[-2:]
    if model.padding == "valid":
        s = sizes.min_input_size(model.depth, "valid")
        m = (s - sizes.output_size(s, model.depth, "valid")[0]) // 2
        x = x[:, torch.from_numpy(mirror_indices(h, m, m))[:, None],
              torch.from_numpy(mirror_indices(w, m, m))[None]]
    p = next(model.parameters())
    with torch.no_grad():
        return model(x[None].to(p.device, p.dtype))[0].float().cpu()


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8: the image in gray with every class but 0 tinted."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else img[:3].mean(0)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    rgb = np.repeat(img[..., None] * 255, 3, axis=-1)
    colors = PALETTE[np.asarray(mask) % len(PALETTE)]
    tint = (np.asarray(mask) > 0)[..., None]
    rgb = np.where(tint, (1 - alpha) * rgb + alpha * colors, rgb)
    return rgb.clip(0, 255).astype(np.uint8)


def predict_files(model, paths, out_dir, tile=None, batch=4, overlap=32, amp="off",
                  channels_last=False, log=print) -> list[Path]:
    """Predict image files; writes <name>_mask.png (class indices) and <name>_overlay.png."""
    from PIL import Image

    from .data import DataError, _read, _to_float_image

    out_dir = Path(out_dir)
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix.lower() in
                            (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"))
        elif p.exists():
            files.append(p)
        else:
            raise DataError(f"input {p} does not exist; pass image files or folders of images")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, paths))} (PNG, TIFF, JPEG, BMP)")
    names = output_names(files)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        img = _to_float_image(_read(f, "image"), model.in_channels, f)
        logits = predict_logits(model, img, tile, batch, overlap, amp, channels_last)
        mask = logits.argmax(0).numpy().astype(np.uint8)
        mp, op = out_dir / f"{names[f]}_mask.png", out_dir / f"{names[f]}_overlay.png"
        Image.fromarray(mask).save(mp)
        Image.fromarray(overlay(img, mask)).save(op)
        written += [mp, op]
        log(f"{f} -> {mp}, {op}")
    return written


def output_names(files) -> dict:
    """The output name of each input file: its stem (`a.png` -> `a_mask.png`); inputs that share
    a stem (`a.png`, `a.tif`) keep their suffix in it (`a_png_mask.png`, `a_tif_mask.png`), so no
    output overwrites another. Two inputs of the same file name (from two folders) are a
    DataError, raised before anything is written; a file given twice is predicted once."""
    from .data import DataError

    once: dict = {}
    for f in files:
        once.setdefault(f.resolve(), f)
    files[:] = list(once.values())
    by_stem: dict = {}
    for f in files:
        by_stem.setdefault(f.stem, []).append(f)
    names = {}
    for stem, group in by_stem.items():
        for f in group:
            names[f] = stem if len(group) == 1 else f"{stem}_{f.suffix.lstrip('.').lower()}"
    seen: dict = {}
    for f, n in names.items():
        if n in seen:
            raise DataError(f"{seen[n]} and {f} have the same file name: their masks would "
                            "overwrite each other; predict them into separate --out folders, or "
                            "rename one")
        seen[n] = f
    return names
