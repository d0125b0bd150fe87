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


def _layer_by_layer(size, depth):
    """One axis through the "valid" network layer by layer (None where a map would be illegal)."""
    s = size
    for _ in range(depth):
        s -= 4
        if s < 2 or s % 2:
            return None
        s //= 2
    s -= 4
    if s < 1:
        return None
    for _ in range(depth):
        s = 2 * s - 4
        if s < 1:
            return None
    return s


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_closed_form_equals_the_layers(depth):
    legal = [s for s in range(1, 2500) if _layer_by_layer(s, depth) is not None]
    assert [sizes._axis_output(s, depth, "valid") for s in range(1, 2500)] == \
        [_layer_by_layer(s, depth) for s in range(1, 2500)]
    assert sizes.min_input_size(depth) == legal[0]
    assert sizes.legal_input_sizes(depth, "valid", 5) == legal[:5]
    for s in (1, legal[0] - 1, legal[0] + 1, legal[3] - 1, legal[3], 2000):
        near = sizes.nearest_legal_sizes(s, depth)
        below = [x for x in legal if x < s][-1:]
        above = [x for x in legal if x > s][:1]
        assert near == ((s,) if s in legal else tuple(below + above)), (s, near)
    for out in (_layer_by_layer(legal[0], depth), _layer_by_layer(legal[4], depth)):
        assert _layer_by_layer(sizes.input_size_for_output(out, depth), depth) == out


def test_sizes_must_be_ints_not_searched_for():
    """`legal_input_sizes(1.5)` searched for ever; a size or depth that is not an int is a
    TypeError, at once."""
    m = uf.UNet(1, 2, base_channels=2)
    for bad in (1.5, "572", True, None):
        with pytest.raises(TypeError, match="size must be an int"):
            m.legal_input_sizes(bad)
    with pytest.raises(TypeError, match="depth must be an int"):
        sizes.nearest_legal_sizes(572, 4.0)
    with pytest.raises(TypeError, match="out must be an int"):
        sizes.input_size_for_output(388.5)
    import numpy as np
    assert m.legal_input_sizes(np.int64(570)) == (556, 572)


def test_deep_networks_answer_at_once():
    """Depth 30 or 40 (`train --depth 30`, `info --sizes 40`) hung in a search over sizes."""
    import time
    t = time.perf_counter()
    assert sizes.min_input_size(30) == 12 * 2**30 - 4
    assert sizes.nearest_legal_sizes(92, 30) == (12 * 2**30 - 4,)
    assert sizes.nearest_legal_sizes(2**45 + 7, 40, "same") == (2**45, 2**45 + 2**40)
    with pytest.raises(ValueError, match=f"nearest legal sizes: {12 * 2**30 - 4}"):
        sizes.output_size(92, 30)
    assert sizes.legal_input_sizes(40, "same", 2) == [2**40, 2**41]
    assert time.perf_counter() - t < 1.0


def test_parameter_count_without_building():
    assert sizes.parameter_count(1, 2, 64, 4) == 31_030_658
    for cfg in [(1, 2, 4, 1), (3, 5, 2, 3), (2, 1, 3, 2)]:
        assert sizes.parameter_count(*cfg) == sum(
            p.numel() for p in uf.reference.UNet(*cfg).parameters())


def test_a_network_that_cannot_fit_is_refused_with_its_size():
    """`UNet(depth=10)` tried to allocate 475 GiB; it is a ValueError that says the size."""
    for cls in (uf.UNet, uf.reference.UNet):
        with pytest.raises(ValueError, match=r"depth=10 has 127,417,737,602 parameters "
                                             r"\(474\.7 GiB for the weights alone"):
            cls(1, 2, 64, 10)
    with pytest.raises(ValueError, match="lower depth or base_channels"):
        uf.UNet(1, 2, 4096, 4)
    # within the bound: counted, not allocated
    assert sizes.check_network_fits(1, 2, 64, 6) == 497_668_482
