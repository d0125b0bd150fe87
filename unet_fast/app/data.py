"""Data: a built-in EM-like generator, a folder dataset for users' own images, augmentation and
the training tiles of the paper's overlap-tile strategy.

Labels are class indices. The built-in data follow the ISBI 2012 task the paper won: class 0 is
cell interior, class 1 is membrane (``MEMBRANE``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

CELL, MEMBRANE = 0, 1
IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")  # lossless only: a JPEG mask is not class indices


class DataError(ValueError):
    """Bad input data; the message names the file or argument and the fix."""


# --------------------------------------------------------------------------------------------
# Built-in data
# --------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return f / (f.std() + 1e-12)


def synthetic_em_image(size=(128, 128), seed: int = 0, index: int = 0, *,
                       cell_size: float = 22.0, return_cells: bool = False):
    """One EM-like image and its label, deterministic for (seed, index).

    Cells are (power-weighted, warped) Voronoi regions with their own brightness, texture and a few
    dark organelles (which are *not* membrane); membranes are the dark borders between cells, of
    varying thickness and contrast; the whole is blurred and noisy. Returns (image float32 in [0, 1]
    of shape (H, W), mask uint8 with CELL=0 / MEMBRANE=1[, cell ids int32]).
    """
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([int(seed), int(index), 2012])
    n_target = max(2, int(rng.poisson(h * w / cell_size**2)))
    pts = []                                   # seeds at least 0.55 cell sizes apart
    for cand in rng.uniform([-4, -4], [h + 4, w + 4], size=(30 * n_target, 2)):
        if not pts or np.min(np.sum((np.asarray(pts) - cand) ** 2, axis=1)) > (0.55 * cell_size) ** 2:
            pts.append(cand)
            if len(pts) == n_target:
                break
    pts = np.asarray(pts)
    n = len(pts)
    radius = rng.uniform(0, 0.15 * cell_size, size=n)            # power distances: size variety
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    warp = 0.08 * cell_size
    yy = yy + warp * _smooth_noise(rng, (h, w), cell_size / 2)
    xx = xx + warp * _smooth_noise(rng, (h, w), cell_size / 2)
    d = np.sqrt((yy[None] - pts[:, 0, None, None]) ** 2 + (xx[None] - pts[:, 1, None, None]) ** 2)
    d -= radius[:, None, None]
    two = np.partition(d, 1, axis=0)[:2]
    cells = np.argmin(d, axis=0).astype(np.int32)
    thickness = 1.6 + 0.9 * (1 + np.tanh(_smooth_noise(rng, (h, w), 6.0)))   # ~1.6 .. 3.4 px
    membrane = (two[1] - two[0]) < thickness
    # intensities
    cell_val = rng.uniform(0.55, 0.85, size=n)
    img = cell_val[cells]
    img = img + 0.06 * _smooth_noise(rng, (h, w), 2.0) + 0.04 * _smooth_noise(rng, (h, w), 0.7)
    # organelles: dark round blobs inside cells (distractors)
    n_org = int(rng.poisson(h * w / 900))
    for _ in range(n_org):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(1.5, 4.5, size=2)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        blob &= ~ndimage.binary_dilation(membrane, iterations=2)
        img = np.where(blob, img - rng.uniform(0.15, 0.3), img)
    contrast = np.clip(0.75 + 0.25 * _smooth_noise(rng, (h, w), 5.0), 0.35, 1.0)
    mem_val = 0.18 + 0.05 * _smooth_noise(rng, (h, w), 1.5)
    img = np.where(membrane, contrast * mem_val + (1 - contrast) * img, img)
    img = ndimage.gaussian_filter(img, rng.uniform(0.7, 1.1))
    img = img + rng.uniform(0.03, 0.06) * rng.standard_normal((h, w))
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    mask = membrane.astype(np.uint8)
    if return_cells:
        return img, mask, cells
    return img, mask


def synthetic_em(n: int, size=(128, 128), seed: int = 0, start: int = 0):
    """`n` images (index start .. start+n-1): (list of (H, W) float32, list of (H, W) uint8)."""
    pairs = [synthetic_em_image(size, seed, start + i) for i in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# --------------------------------------------------------------------------------------------
# The paper's weight map
# --------------------------------------------------------------------------------------------
def weight_map(mask: np.ndarray, num_classes: int, w0: float = 10.0, sigma: float = 5.0,
               border_class: int = MEMBRANE) -> np.ndarray:
    """w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)) (Ronneberger et al., eq. 2).

    w_c balances the class frequencies of this mask (mean weight 1 over the pixels); d1 and d2 are
    the distances to the nearest and second nearest object, the objects being the connected
    components of the pixels whose class is not `border_class` (the cells, for membrane labels).
    """
    mask = np.asarray(mask)
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    wc_per_class = np.zeros(num_classes)
    wc_per_class[present] = mask.size / (present.sum() * counts[present])
    w = wc_per_class[mask]
    labels, n_obj = ndimage.label(mask != border_class)
    if n_obj >= 2 and w0 > 0:
        big = np.float64(1e9)
        d1 = np.full(mask.shape, big)
        d2 = np.full(mask.shape, big)
        for obj in range(1, n_obj + 1):
            d = ndimage.distance_transform_edt(labels != obj)
            smaller = d < d1
            d2 = np.where(smaller, d1, np.minimum(d2, d))
            d1 = np.where(smaller, d, d1)
        w = w + w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return w.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Folder dataset
# --------------------------------------------------------------------------------------------
def _read(path: Path, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if what == "mask":
                if im.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F"):
                    raise DataError(f"mask {path} has mode {im.mode}: a mask must be a "
                                    "single-channel image of class indices (0, 1, ...), not color")
                arr = np.array(im)
            else:
                arr = np.array(im)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read {what} {path}: {e}. Is the file corrupt or not an image? "
                        "Replace or remove it.") from None
    return arr


# Full scales of integer images. 8- and 16-bit images are scaled by their type's (255, 65535);
# wider integers (PIL's 32-bit mode "I", which TIFFs of 16-bit data often become) carry no full
# scale of their own, so they are scaled by the first of these that holds their values: an int32
# TIFF of 0..4095 is read as 16-bit data, not divided by 2**31 - 1 into near black.
_WIDE_INT_SCALES = (255.0, 65535.0, 2.0**32 - 1)
# What an image with C channels can be read as, by in_channels: gray -> RGB by repetition,
# RGB -> gray by luminance, and an alpha channel (LA, RGBA) dropped unless the model takes it.
_CHANNEL_NAMES = {1: "gray", 2: "gray + alpha", 3: "RGB", 4: "RGBA"}


def _readable_channels(c: int) -> list[int]:
    return {1: [1, 3], 2: [1, 2, 3], 3: [1, 3], 4: [1, 3, 4]}.get(c, [c])


def _to_float_image(arr: np.ndarray, in_channels: int, path: Path) -> np.ndarray:
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.dtype.itemsize <= 2:
            scale = float(np.iinfo(arr.dtype).max)
        else:
            peak = float(np.abs(arr).max()) if arr.size else 0.0
            scale = next((s for s in _WIDE_INT_SCALES if peak <= s), peak)
        arr = arr.astype(np.float32) / scale
    else:
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = np.moveaxis(arr, -1, 0)
    else:
        raise DataError(f"image {path} has shape {arr.shape}; expected (H, W) or (H, W, C)")
    c = arr.shape[0]
    if c == in_channels:
        return np.ascontiguousarray(arr)
    if c in (2, 4) and in_channels in _readable_channels(c):   # drop alpha
        arr = arr[:c - 1]
        c -= 1
        if c == in_channels:
            return np.ascontiguousarray(arr)
    if in_channels == 1 and c == 3:
        return (0.299 * arr[0] + 0.587 * arr[1] + 0.114 * arr[2])[None].astype(np.float32)
    if in_channels == 3 and c == 1:
        return np.repeat(arr, 3, axis=0)
    c0 = arr.shape[0]
    ok = _readable_channels(c0)
    what = f" ({_CHANNEL_NAMES[c0]})" if c0 in _CHANNEL_NAMES else ""
    choices = ", ".join(map(str, ok[:-1])) + (" or " if len(ok) > 1 else "") + str(ok[-1])
    raise DataError(f"image {path} has {c0} channels{what} but the model has "
                    f"in_channels={in_channels}; it can be read with --in-channels {choices}")


def _index_files(folder: Path, exts, what: str, root: Path) -> dict:
    if not folder.is_dir():
        raise DataError(f"data folder {root} has no {folder.name}/ subfolder; a dataset folder "
                        f"needs imgs/ (images) and masks/ (class-index masks) matched by file name")
    files = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() not in exts:
            continue
        if p.stem in files:
            raise DataError(f"two {what}s named {p.stem!r} in {folder}: {files[p.stem].name} and "
                            f"{p.name}; keep one")
        files[p.stem] = p
    return files


@dataclass
class Sample:
    name: str
    image: np.ndarray            # (C, H, W) float32
    mask: np.ndarray             # (H, W) int64 class indices
    weight: Optional[np.ndarray] = field(default=None, repr=False)   # (H, W) float32


def load_folder(root, num_classes: int = 2, in_channels: int = 1) -> list[Sample]:
    """Read `root/imgs/*` and `root/masks/*` (PNG or TIFF; masks hold class indices), matched by
    file name without extension. Every problem is a DataError naming the file and the fix."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass --data DIR with imgs/ and "
                        "masks/ subfolders, or leave --data out to train on the built-in data")
    if not root.is_dir():
        raise DataError(f"--data {root} is a file, not a folder with imgs/ and masks/ subfolders")
    imgs = _index_files(root / "imgs", IMAGE_EXTS, "image", root)
    masks = _index_files(root / "masks", MASK_EXTS, "mask", root)
    if not imgs and not masks:
        raise DataError(f"data folder {root} is empty: put images in {root / 'imgs'} and their "
                        f"masks (same file names, {'/'.join(MASK_EXTS)}) in {root / 'masks'}")
    for stem, p in imgs.items():
        if stem not in masks:
            raise DataError(f"image {p} has no mask: expected {root / 'masks' / (stem + '.png')} "
                            "(or .tif/.tiff) with the same name")
    for stem, p in masks.items():
        if stem not in imgs:
            raise DataError(f"mask {p} has no image: expected {root / 'imgs' / (stem + '.png')} "
                            "(or .tif/.tiff) with the same name")
    out = []
    for stem in sorted(imgs):
        ip, mp = imgs[stem], masks[stem]
        img = _to_float_image(_read(ip, "image"), in_channels, ip)
        m = _read(mp, "mask")
        if m.ndim != 2:
            raise DataError(f"mask {mp} has shape {m.shape}: a mask must be a single-channel image "
                            "of class indices")
        if np.issubdtype(m.dtype, np.floating):
            if not np.all(np.isfinite(m)) or np.any(m != np.round(m)):
                raise DataError(f"mask {mp} holds non-integer values; masks must hold class "
                                "indices 0 .. num_classes-1")
        if m.shape != img.shape[1:]:
            raise DataError(f"image {ip} is {img.shape[2]}x{img.shape[1]} (WxH) but its mask {mp} "
                            f"is {m.shape[1]}x{m.shape[0]}; an image and its mask must have the "
                            "same size")
        m = m.astype(np.int64)
        if m.min() < 0 or m.max() >= num_classes:
            hint = (" (a 0/255 binary mask: divide it by 255)" if m.max() == 255 else "")
            raise DataError(f"mask {mp} has values {int(m.min())}..{int(m.max())} but "
                            f"num_classes={num_classes}: masks must hold class indices "
                            f"0..{num_classes - 1}{hint}, or pass --num-classes {int(m.max()) + 1}")
        out.append(Sample(stem, img, m))
    return out


def builtin_samples(n: int, size=(128, 128), seed: int = 0, start: int = 0) -> list[Sample]:
    imgs, masks = synthetic_em(n, size, seed, start)
    return [Sample(f"synthetic_{start + i:04d}", im[None], m.astype(np.int64))
            for i, (im, m) in enumerate(zip(imgs, masks))]


def add_weight_maps(samples: Sequence[Sample], num_classes: int, w0: float = 10.0,
                    sigma: float = 5.0, border_class: int = MEMBRANE) -> None:
    for s in samples:
        s.weight = weight_map(s.mask, num_classes, w0, sigma, border_class)


# --------------------------------------------------------------------------------------------
# Geometry: mirroring, augmentation
# --------------------------------------------------------------------------------------------
def mirror_indices(n: int, before: int, after: int) -> np.ndarray:
    """Indices into an axis of length n that mirror it (without repeating the edge pixel, like
    np.pad(mode="reflect")) by `before` and `after` pixels; any amount, also more than n."""
    idx = np.arange(-before, n + after)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def mirror_pad(arr: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Mirror the last two axes of `arr` outward."""
    h, w = arr.shape[-2:]
    return arr[..., mirror_indices(h, top, bottom)[:, None], mirror_indices(w, left, right)[None]]


def elastic_field(rng: np.random.Generator, shape, sigma: float = 10.0, grid: int = 3):
    """The paper's elastic deformation: random displacements on a coarse grid x grid mesh, drawn
    from a Gaussian with `sigma` pixels standard deviation, interpolated bicubically per pixel.
    Returns the sampling coordinates (2, H, W)."""
    h, w = shape
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    gy = np.linspace(0, grid - 1, h)
    gx = np.linspace(0, grid - 1, w)
    cy, cx = np.meshgrid(gy, gx, indexing="ij")
    disp = np.stack([ndimage.map_coordinates(coarse[i], [cy, cx], order=3, mode="nearest")
                     for i in range(2)])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([yy + disp[0], xx + disp[1]])


def _warp(arr: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    if arr.ndim == 2:
        return ndimage.map_coordinates(arr, coords, order=order, mode="mirror")
    return np.stack([ndimage.map_coordinates(a, coords, order=order, mode="mirror") for a in arr])


def augment(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray,
            weight: Optional[np.ndarray] = None, *, flips: bool = True, rotations: bool = True,
            elastic: bool = False, elastic_sigma: float = 10.0, elastic_grid: int = 3):
    """Random flips, 90-degree rotations and elastic deformation applied alike to the image
    (C, H, W), the mask (H, W) and the weight map (H, W). Square tiles keep their size."""
    arrs = [image, mask] + ([weight] if weight is not None else [])
    if flips:
        if rng.random() < 0.5:
            arrs = [a[..., :, ::-1] for a in arrs]
        if rng.random() < 0.5:
            arrs = [a[..., ::-1, :] for a in arrs]
    if rotations and image.shape[-1] == image.shape[-2]:
        k = int(rng.integers(4))
        if k:
            arrs = [np.rot90(a, k, axes=(-2, -1)) for a in arrs]
    if elastic:
        coords = elastic_field(rng, image.shape[-2:], elastic_sigma, elastic_grid)
        arrs = [_warp(np.ascontiguousarray(arrs[0]), coords, 1),
                _warp(np.ascontiguousarray(arrs[1]), coords, 0)] + \
               ([_warp(np.ascontiguousarray(arrs[2]), coords, 1)] if weight is not None else [])
    arrs = [np.ascontiguousarray(a) for a in arrs]
    return arrs[0], arrs[1], (arrs[2] if weight is not None else None)


# --------------------------------------------------------------------------------------------
# Training tiles
# --------------------------------------------------------------------------------------------
class TileDataset(torch.utils.data.Dataset):
    """Random training tiles, the paper's way: an input tile of a legal size `tile` whose output
    (`out`, smaller in "valid" mode) lands anywhere in the image; the part of the input outside the
    image is mirrored. Item `idx` of epoch `e` depends only on (seed, e, idx), so a run is
    reproducible, resumable and the same however the items are split among processes.
    """

    def __init__(self, samples: Sequence[Sample], tile: int, out: int, length: int, seed: int = 0,
                 flips: bool = True, rotations: bool = True, elastic: bool = False,
                 elastic_sigma: float = 10.0):
        if not samples:
            raise DataError("no training images")
        self.samples, self.tile, self.out, self.length = list(samples), tile, out, int(length)
        self.seed, self.epoch = int(seed), 0
        self.aug = dict(flips=flips, rotations=rotations, elastic=elastic,
                        elastic_sigma=elastic_sigma)
        self.margin = (tile - out) // 2

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int):
        rng = np.random.default_rng([self.seed, self.epoch, int(idx), 7])
        s = self.samples[int(idx) % len(self.samples)]
        h, w = s.mask.shape
        y0 = int(rng.integers(0, max(h - self.out, 0) + 1))
        x0 = int(rng.integers(0, max(w - self.out, 0) + 1))
        m = self.margin
        # input tile rows y0-m .. y0-m+tile, mirrored where they leave the image
        # (index 0 of the mirrored axis is image row -m)
        ri = mirror_indices(h, m, self.tile + self.out)[y0: y0 + self.tile]
        ci = mirror_indices(w, m, self.tile + self.out)[x0: x0 + self.tile]
        sel = (ri[:, None], ci[None])
        img = s.image[:, sel[0], sel[1]]
        mask = s.mask[sel]
        weight = s.weight[sel] if s.weight is not None else None
        img, mask, weight = augment(rng, img, mask, weight, **self.aug)
        c = slice(m, m + self.out)
        mask = mask[c, c]
        weight = weight[c, c] if weight is not None else np.ones(mask.shape, np.float32)
        return (torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
                torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)))


def check_tile(tile: int, depth: int, padding: str, what: str = "--tile") -> int:
    """The output size of a square tile; DataError naming the nearest legal sizes if illegal."""
    from .. import sizes

    try:
        return sizes.output_size((tile, tile), depth, padding)[0]
    except ValueError:
        near = sizes.nearest_legal_sizes(tile, depth, padding)
        raise DataError(f"{what} {tile} is not a legal input size for a depth-{depth} U-Net with "
                        f"padding={padding!r}; nearest legal sizes: "
                        f"{', '.join(map(str, near))} (smallest "
                        f"{sizes.min_input_size(depth, padding)}). Pass one of them.") from None

