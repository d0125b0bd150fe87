"""Size arithmetic (unet_fast/sizes.py): the paper's 572 -> 388, the legal input sizes of "valid"
and "same" padding, and errors that name the nearest legal sizes, from the functions and the models."""
import pytest
import torch

import unet_fast as uf
from unet_fast import sizes


def test_paper_sizes():
    assert sizes.output_size((572, 572)) == (388, 388)
    assert uf.UNet(1, 2).output_size((572, 572)) == (388, 388)
    assert uf.reference.UNet(1, 2).output_size((572, 572)) == (388, 388)


@pytest.mark.parametrize("b", [4, 5, 10, 27])
def test_valid_depth4_rule(b):
    # legal inputs 16*b + 124 give outputs 16*b - 60
    assert sizes.output_size((16 * b + 124, 16 * b + 124)) == (16 * b - 60, 16 * b - 60)
    for off in (1, 2, 8, 15):
        with pytest.raises(ValueError, match="nearest legal sizes"):
            sizes.output_size((16 * b + 124 + off, 16 * b + 124))


def test_legal_sizes_are_exactly_the_rule():
    legal = [s for s in range(1, 700) if sizes._axis_output(s, 4, "valid") is not None]
    assert legal == [16 * b + 124 for b in range(4, 36)]
    assert sizes.min_input_size() == 188


def test_illegal_size_message_names_neighbours():
    with pytest.raises(ValueError) as e:
        uf.UNet(1, 2).output_size((570, 572))
    assert "556" in str(e.value) and "572" in str(e.value) and "height" in str(e.value)
    assert uf.UNet(1, 2).legal_input_sizes(570) == (556, 572)
    assert uf.UNet(1, 2).legal_input_sizes(572) == (572,)


def test_same_sizes():
    m = uf.UNet(3, 2, padding="same")
    assert m.output_size((512, 256)) == (512, 256)
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth = 16"):
        m.output_size((520, 512))
    assert sizes.nearest_legal_sizes(520, 4, "same") == (512, 528)


def test_input_too_small_for_depth():
    with pytest.raises(ValueError, match="nearest legal sizes: 188"):
        sizes.output_size((100, 188))
    with pytest.raises(ValueError, match="nearest legal sizes: 16"):
        sizes.output_size((8, 16), padding="same")


def test_input_size_for_output():
    assert sizes.input_size_for_output(388) == 572
    for b in range(4, 20):
        assert sizes.output_size(sizes.input_size_for_output(16 * b - 60)) == (16 * b - 60,) * 2
    with pytest.raises(ValueError, match="nearest reachable outputs: 372, 388"):
        sizes.input_size_for_output(380)


def test_illegal_spatial_size_in_model():
    m = uf.UNet(1, 2, base_channels=2)
    with pytest.raises(ValueError, match="nearest legal sizes: 556, 572"):
        m(torch.randn(1, 1, 570, 572))
    ms = uf.UNet(1, 2, base_channels=2, padding="same")
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth = 16"):
        ms(torch.randn(1, 1, 40, 48))
    with pytest.raises(ValueError, match="not legal"):
        m(torch.randn(1, 1, 60, 60))  # too small for depth 4
