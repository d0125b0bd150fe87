"""Overlap-tile prediction equals whole-image prediction where both are possible."""
import numpy as np
import pytest
import torch
from PIL import Image

import unet_fast as uf
from unet_fast.app import predict
from unet_fast.app.data import DataError


def _model(depth, padding, base=4, dtype=torch.float64):
    torch.manual_seed(0)
    return uf.UNet(1, 2, base, depth, padding, backend="torch").to(dtype).eval()


@pytest.mark.parametrize("h,w,tile", [(45, 61, 52), (36, 36, 44), (30, 17, 60), (8, 9, 44)])
def test_valid_tiles_equal_whole_image(h, w, tile):
    # depth 2 "valid": margin 12, whole image legal when h + 24 is legal (any h with h % 4 == 0)
    m = _model(2, "valid")
    img = torch.rand(1, h, w, dtype=torch.float64)
    tiled = predict.predict_logits(m, img, tile=tile, batch=3)
    assert tiled.shape == (2, h, w)
    if (h + 24) % 4 == 0 and (w + 24) % 4 == 0:
        whole = predict.whole_image_logits(m, img)
        torch.testing.assert_close(tiled, whole.float(), rtol=1e-5, atol=1e-5)


def test_valid_tiles_many_tiles_depth3():
    m = _model(3, "valid")
    img = torch.rand(1, 64, 72, dtype=torch.float64)    # 64 + 88 = 152 is not legal for depth 3
    with pytest.raises(ValueError, match="nearest legal sizes"):
        predict.whole_image_logits(m, img)
    img = torch.rand(1, 60, 76, dtype=torch.float64)    # 148 and 164: legal
    whole = predict.whole_image_logits(m, img)
    for tile in (108, 124):                             # outputs 20, 36: several tiles
        tiled = predict.predict_logits(m, img, tile=tile, batch=2)
        torch.testing.assert_close(tiled, whole.float(), rtol=1e-5, atol=1e-5)


def test_float32_tiles_match_whole_image():
    m = _model(2, "valid", base=8, dtype=torch.float32)
    img = torch.rand(1, 52, 40)
    torch.testing.assert_close(predict.predict_logits(m, img, tile=48, batch=4),
                               predict.whole_image_logits(m, img), rtol=1e-4, atol=1e-5)


def test_same_mode_single_tile_equals_whole_and_tiles_cover():
    m = _model(2, "same")
    img = torch.rand(1, 32, 48, dtype=torch.float64)
    whole = predict.whole_image_logits(m, img)
    torch.testing.assert_close(predict.predict_logits(m, img, tile=48), whole.float(),
                               rtol=1e-5, atol=1e-5)
    tiled = predict.predict_logits(m, torch.rand(1, 70, 53, dtype=torch.float64), tile=32,
                                   overlap=8)
    assert tiled.shape == (2, 70, 53) and torch.isfinite(tiled).all()


def test_illegal_tile_names_legal_sizes():
    m = _model(2, "valid")
    with pytest.raises(DataError, match=r"tile 50 .*nearest legal sizes: 48, 52"):
        predict.predict_logits(m, torch.rand(1, 30, 30, dtype=torch.float64), tile=50)


def test_predict_files_writes_mask_and_overlay(tmp_path):
    m = _model(2, "valid", dtype=torch.float32)
    Image.fromarray((np.random.default_rng(0).random((37, 50)) * 255).astype(np.uint8)).save(
        tmp_path / "a.png")
    out = predict.predict_files(m, [tmp_path / "a.png"], tmp_path / "pred", tile=60,
                                log=lambda *a: None)
    mask = np.array(Image.open(tmp_path / "pred" / "a_mask.png"))
    ov = np.array(Image.open(tmp_path / "pred" / "a_overlay.png"))
    assert mask.shape == (37, 50) and set(np.unique(mask)) <= {0, 1}
    assert ov.shape == (37, 50, 3)
    assert len(out) == 2
    with pytest.raises(DataError, match="does not exist"):
        predict.predict_files(m, [tmp_path / "missing.png"], tmp_path / "pred")


@pytest.mark.parametrize("kw,match", [({"batch": -1}, "batch"), ({"batch": 0}, "batch"),
                                      ({"batch": 1.5}, "batch"), ({"overlap": -4}, "overlap")])
def test_bad_numbers_are_refused_not_written(kw, match):
    """batch=-1 returned an uninitialized buffer (no tile ran); batch=0 was a traceback."""
    m = _model(2, "valid")
    with pytest.raises(ValueError, match=match):
        predict.predict_logits(m, torch.rand(1, 30, 30, dtype=torch.float64), tile=60, **kw)


def test_every_output_pixel_is_computed(monkeypatch):
    """A tiling that misses pixels is an error, never uninitialized memory in the result."""
    m = _model(2, "valid")
    real = predict._axis_plan

    def one_tile_short(*a):
        plan = list(real(*a))
        plan[4] = max(1, plan[4] - 1)
        return tuple(plan)

    monkeypatch.setattr(predict, "_axis_plan", one_tile_short)
    with pytest.raises(RuntimeError, match="uncomputed"):
        predict.predict_logits(m, torch.rand(1, 45, 61, dtype=torch.float64), tile=52)


def test_tile_larger_than_the_image_is_lowered_to_cover_it():
    """tile=100000 allocated the mirrored image at 100000x100000 (40 GB); a tile larger than the
    image needs gives the result of the one that covers it."""
    m = _model(2, "valid")
    img = torch.rand(1, 37, 50, dtype=torch.float64)
    cover = predict.covering_tile(37, 50, 2, "valid")
    assert cover == 92                                      # output 52 >= 50
    expect = predict.predict_logits(m, img, tile=cover)
    torch.testing.assert_close(predict.predict_logits(m, img, tile=100_000), expect)
    ms = _model(2, "same")
    torch.testing.assert_close(predict.predict_logits(ms, img, tile=100_000),
                               predict.predict_logits(ms, img, tile=52))


def test_same_stem_inputs_do_not_overwrite_each_other(tmp_path):
    """a.png and a.tif were both written to a_mask.png."""
    m = _model(2, "valid", dtype=torch.float32)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((20, 24)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "a.tif")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "b.png")
    out = predict.predict_files(m, [tmp_path, tmp_path / "b.png"], tmp_path / "pred", tile=60,
                                log=lambda *a: None)
    assert sorted(p.name for p in out) == ["a_png_mask.png", "a_png_overlay.png",
                                           "a_tif_mask.png", "a_tif_overlay.png", "b_mask.png",
                                           "b_overlay.png"]
    a = np.asarray(Image.open(tmp_path / "a.png"), np.float32)[None] / 255
    expect = predict.predict_logits(m, a, tile=60).argmax(0).numpy()
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "pred" / "a_png_mask.png")),
                                  expect)
    (tmp_path / "other").mkdir()
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "other" / "b.png")
    with pytest.raises(DataError, match=r"b\.png and .*other/b\.png have the same file name: "
                                        r"their masks would overwrite each other"):
        predict.predict_files(m, [tmp_path / "b.png", tmp_path / "other"], tmp_path / "pred2",
                              tile=60, log=lambda *a: None)
    assert not (tmp_path / "pred2").exists()                # refused before anything is written
