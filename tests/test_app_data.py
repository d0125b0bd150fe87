"""Built-in data, folder dataset (and every bad input of it), augmentation, training tiles."""
import numpy as np
import pytest
import torch
from PIL import Image

from unet_fast.app import data
from unet_fast.app.data import DataError


def test_generator_deterministic_for_a_seed():
    a_img, a_mask = data.synthetic_em(3, (64, 80), seed=5)
    b_img, b_mask = data.synthetic_em(3, (64, 80), seed=5)
    c_img, _ = data.synthetic_em(3, (64, 80), seed=6)
    for x, y in zip(a_img + a_mask, b_img + b_mask):
        assert np.array_equal(x, y)
    assert not np.array_equal(a_img[0], c_img[0])
    # image i does not depend on how many are generated
    one_img, one_mask = data.synthetic_em(1, (64, 80), seed=5, start=2)
    assert np.array_equal(one_img[0], a_img[2]) and np.array_equal(one_mask[0], a_mask[2])


def test_generator_looks_like_em():
    img, mask = data.synthetic_em_image((96, 96), seed=0, index=0)
    assert img.shape == (96, 96) and img.dtype == np.float32 and mask.dtype == np.uint8
    assert 0 <= img.min() and img.max() <= 1
    assert set(np.unique(mask)) == {data.CELL, data.MEMBRANE}
    frac = mask.mean()
    assert 0.05 < frac < 0.4, frac                       # membranes are thin
    assert img[mask == 1].mean() < img[mask == 0].mean() - 0.15   # and dark


def test_weight_map_matches_formula():
    # two cells separated by a 2-px membrane column; the map peaks on the membrane
    mask = np.zeros((8, 10), np.int64)
    mask[:, 4:6] = 1
    w = data.weight_map(mask, 2, w0=10, sigma=5)
    n, n1 = mask.size, mask.sum()
    wc = np.where(mask == 1, n / (2 * n1), n / (2 * (n - n1)))
    # pixel (0, 4): distance 1 to the left cell, 2 to the right one
    assert w[0, 4] == pytest.approx(wc[0, 4] + 10 * np.exp(-(1 + 2) ** 2 / 50), rel=1e-6)
    # inside the left cell at (0, 0): d1 = 0, d2 = 6
    assert w[0, 0] == pytest.approx(wc[0, 0] + 10 * np.exp(-(0 + 6) ** 2 / 50), rel=1e-6)
    # one object only: class balance alone
    assert np.allclose(data.weight_map(np.zeros((4, 4), np.int64), 2), 1.0)


def test_mirror_indices_any_amount():
    idx = data.mirror_indices(3, 5, 6)
    assert idx.tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0]
    a = np.arange(12.0).reshape(3, 4)
    assert np.array_equal(data.mirror_pad(a, 2, 1, 3, 2), np.pad(a, ((2, 1), (3, 2)), "reflect"))


def test_augment_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    img = rng.random((1, 32, 32)).astype(np.float32)
    mask = (img[0] > 0.5).astype(np.int64)
    for seed in range(6):
        a, m, w = data.augment(np.random.default_rng(seed), img, mask, img[0].copy(), elastic=False)
        assert np.array_equal(m, (a[0] > 0.5).astype(np.int64)) and np.array_equal(w, a[0])
    a, m, w = data.augment(np.random.default_rng(1), img, mask, None, elastic=True)
    assert a.shape == img.shape and m.shape == mask.shape and w is None
    assert set(np.unique(m)) <= {0, 1}                     # nearest for labels
    assert not np.allclose(a, img)                         # it deformed


def test_tile_dataset_is_mirrored_crop_and_reproducible():
    samples = data.builtin_samples(2, (40, 40), seed=0)
    ds = data.TileDataset(samples, tile=60, out=20, length=8, seed=3, flips=False,
                          rotations=False)
    x, y, w = ds[0]
    assert x.shape == (1, 60, 60) and y.shape == (20, 20) and w.shape == (20, 20)
    assert torch.equal(ds[5][0], ds[5][0])
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], x)                 # another epoch, other tiles
    # the mask tile is the center of the input tile's (mirrored) image
    s = samples[0]
    full = data.mirror_pad(s.image, 20, 60, 20, 60)
    fullm = data.mirror_pad(s.mask, 20, 60, 20, 60)
    ds.set_epoch(0)
    x, y, _ = ds[0]
    hits = [(i, j) for i in range(0, 41) for j in range(0, 41)
            if np.array_equal(full[:, i:i + 60, j:j + 60], x.numpy())]
    assert hits
    i, j = hits[0]
    assert np.array_equal(fullm[i + 20:i + 40, j + 20:j + 40], y.numpy())


def test_check_tile_names_legal_sizes():
    assert data.check_tile(124, 3, "valid") == 36
    with pytest.raises(DataError, match=r"--tile 125 .*nearest legal sizes: 124, 132"):
        data.check_tile(125, 3, "valid")
    with pytest.raises(DataError, match=r"nearest legal sizes: 64, 72"):
        data.check_tile(70, 3, "same")


# ----------------------------------------------------------------- folder dataset
def _write(folder, name, arr):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(folder / name)


def _dataset(tmp_path, n=3, size=(24, 20)):
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for i in range(n):
        _write(root / "imgs", f"im{i}.png", rng.integers(0, 255, size, dtype=np.uint8))
        _write(root / "masks", f"im{i}.png", rng.integers(0, 2, size, dtype=np.uint8))
    return root


def test_folder_dataset_png_and_tiff(tmp_path):
    root = _dataset(tmp_path)
    img16 = (np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 100)
    _write(root / "imgs", "t.tif", img16)
    _write(root / "masks", "t.tiff", np.ones((24, 20), np.uint8))
    s = data.load_folder(root, num_classes=2)
    assert [x.name for x in s] == ["im0", "im1", "im2", "t"]
    assert s[0].image.shape == (1, 24, 20) and s[0].image.dtype == np.float32
    assert s[0].mask.dtype == np.int64
    assert s[3].image.max() == pytest.approx(img16.max() / 65535)
    rgb = data.load_folder(root, num_classes=2, in_channels=3)
    assert rgb[0].image.shape == (3, 24, 20)


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*--data"):
        data.load_folder(tmp_path / "nope")


def test_empty_data_folder(tmp_path):
    (tmp_path / "e" / "imgs").mkdir(parents=True)
    (tmp_path / "e" / "masks").mkdir()
    with pytest.raises(DataError, match="is empty"):
        data.load_folder(tmp_path / "e")
    (tmp_path / "f").mkdir()
    with pytest.raises(DataError, match="no imgs/ subfolder"):
        data.load_folder(tmp_path / "f")


def test_image_without_mask_names_the_file(tmp_path):
    root = _dataset(tmp_path)
    (root / "masks" / "im1.png").unlink()
    with pytest.raises(DataError, match=r"image .*im1\.png has no mask.*masks/im1\.png"):
        data.load_folder(root)


def test_mask_without_image_names_the_file(tmp_path):
    root = _dataset(tmp_path)
    (root / "imgs" / "im2.png").unlink()
    with pytest.raises(DataError, match=r"mask .*im2\.png has no image"):
        data.load_folder(root)


def test_size_mismatch(tmp_path):
    root = _dataset(tmp_path)
    _write(root / "masks", "im0.png", np.zeros((24, 21), np.uint8))
    with pytest.raises(DataError, match=r"im0\.png is 20x24.*its mask .*im0\.png is 21x24"):
        data.load_folder(root)


def test_mask_values_out_of_range(tmp_path):
    root = _dataset(tmp_path)
    _write(root / "masks", "im1.png", np.full((24, 20), 255, np.uint8))
    with pytest.raises(DataError, match=r"masks/im1\.png has values 255\.\.255 but num_classes=2"
                                        r".*divide it by 255"):
        data.load_folder(root, num_classes=2)


def test_corrupt_image(tmp_path):
    root = _dataset(tmp_path)
    (root / "imgs" / "im0.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataError, match=r"cannot read image .*im0\.png.*corrupt"):
        data.load_folder(root)


def test_color_mask_rejected(tmp_path):
    root = _dataset(tmp_path)
    _write(root / "masks", "im0.png", np.zeros((24, 20, 3), np.uint8))
    with pytest.raises(DataError, match=r"mask .*im0\.png has mode RGB"):
        data.load_folder(root)


def test_int32_tiff_is_not_scaled_to_black(tmp_path):
    """A 32-bit integer TIFF (PIL mode "I") of 12-bit data was divided by 2**31 - 1: all ~0. It is
    read on the smallest full scale that holds it (here 16-bit), as its uint16 twin is."""
    root = _dataset(tmp_path)
    data12 = (np.arange(24 * 20).reshape(24, 20) * 8).astype(np.int32)      # 0 .. 3832
    Image.fromarray(data12).save(root / "imgs" / "w.tif")
    assert Image.open(root / "imgs" / "w.tif").mode == "I"
    _write(root / "masks", "w.png", np.ones((24, 20), np.uint8))
    _write(root / "imgs", "w16.tif", data12.astype(np.uint16))
    _write(root / "masks", "w16.png", np.ones((24, 20), np.uint8))
    by_name = {s.name: s for s in data.load_folder(root)}
    assert by_name["w"].image.max() == pytest.approx(3832 / 65535)
    np.testing.assert_array_equal(by_name["w"].image, by_name["w16"].image)
    small = np.full((4, 4), 200, np.int32)                                 # fits 8 bits
    assert data._to_float_image(small, 1, "x").max() == pytest.approx(200 / 255)


def test_rgba_image_channels_and_hint(tmp_path):
    """RGBA lost its alpha even for a 4-channel model, whose error then said "pass
    --in-channels 3"; the hint lists what the image can be read as."""
    rgba = np.random.default_rng(0).integers(0, 255, (8, 6, 4), dtype=np.uint8)
    assert data._to_float_image(rgba, 4, "a.png").shape == (4, 8, 6)
    np.testing.assert_array_equal(data._to_float_image(rgba, 4, "a.png")[3],
                                  rgba[..., 3].astype(np.float32) / np.float32(255))
    assert data._to_float_image(rgba, 3, "a.png").shape == (3, 8, 6)
    assert data._to_float_image(rgba, 1, "a.png").shape == (1, 8, 6)
    with pytest.raises(DataError, match=r"a\.png has 4 channels \(RGBA\) but the model has "
                                        r"in_channels=2; it can be read with --in-channels 1, 3 "
                                        r"or 4"):
        data._to_float_image(rgba, 2, "a.png")
    la = rgba[..., :2]
    assert data._to_float_image(la, 1, "b.png").shape == (1, 8, 6)       # gray + alpha -> gray
    with pytest.raises(DataError, match=r"2 channels \(gray \+ alpha\).*--in-channels 1, 2 or 3"):
        data._to_float_image(la, 4, "b.png")
