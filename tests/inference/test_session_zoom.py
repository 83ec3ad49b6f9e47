"""The zoomed-out pass for objects larger than one crop (``Session(large_objects="zoom")``), with
the fake network of known output (conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from seganypet.errors import InputError
from seganypet.image import PETImage
from seganypet.inference import Session


def _block_image() -> tuple[PETImage, np.ndarray]:
    """A 120 x 60 x 270 mm block of intensity 1 at 4 x 4 x 3 mm: longer than a crop (192 mm), shorter
    than the zoomed-out one (384 mm)."""
    aff = np.diag([4.0, 4.0, 3.0, 1.0])
    aff[:3, 3] = (-100.0, 50.0, 20.0)
    arr = np.zeros((60, 50, 160), np.float32)
    arr[15:45, 18:33, 40:130] = 1.0
    return PETImage(arr, aff), arr > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("strategy,min_dice", [("zoom", 0.99), ("zoom-coarse", 0.95)])
def test_zoom_finds_object_larger_than_crop(make_fake, strategy, min_dice):
    image, truth = _block_image()
    fake = make_fake("intensity")
    s = Session(fake, large_objects=strategy)
    s.set_image(image)
    mask = s.add_point((30, 25, 70))
    wins = s.windows()
    assert [(w["kind"], w["scale"]) for w in wins[:2]] == [("click", 1), ("zoom", 2)]
    refine = [w for w in wins if w["kind"] == "refine"]
    assert (len(refine) > 0) == (strategy == "zoom") and len(wins) <= 8
    assert _dice(mask, truth) > min_dice
    # one crop's worth without any strategy
    s0 = Session(make_fake("intensity"), large_objects="none")
    s0.set_image(image)
    assert s0.add_point((30, 25, 70)).sum() < 0.7 * truth.sum()


def test_zoom_window_maps_points_exactly(make_fake):
    """Half-space network (mask = crop voxels with index <= the click's along axis 0): the zoomed-out
    window must put the boundary on the same model voxel as the full-resolution one."""
    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    arr = np.ones((220, 40, 40), np.float32)
    s = Session(make_fake("halfspace", axis=0), large_objects="zoom-coarse")
    s.set_image(PETImage(arr, aff))
    mask = s.add_point((110, 20, 20))
    assert [w["kind"] for w in s.windows()] == ["click", "zoom"]
    expected = np.zeros_like(mask)
    expected[:111] = True
    np.testing.assert_array_equal(mask, expected)


def test_zoom_crop_is_the_block_average(make_fake):
    image, _ = _block_image()
    s = Session(make_fake("intensity"), large_objects="zoom")
    s.set_image(image)
    eng = s.engine
    fine = eng.grid.sample_crop(eng.array, (10, 20, 30), 256)
    coarse = eng.crop((10, 20, 30), scale=2)
    assert coarse.shape == (128, 128, 128)
    np.testing.assert_allclose(coarse, fine.reshape(128, 2, 128, 2, 128, 2).mean(axis=(1, 3, 5)), atol=1e-6)


def test_further_click_reuses_embeddings_and_clicks_stay_full_resolution(make_fake):
    image, truth = _block_image()
    fake = make_fake("intensity")
    s = Session(fake, large_objects="zoom")
    s.set_image(image)
    first = s.add_point((30, 25, 70))
    n_enc = fake.calls["encode"]
    again = s.add_point((30, 25, 71))  # inside the click window: decoders only
    assert fake.calls["encode"] == n_enc
    np.testing.assert_array_equal(again, first)
    # a click far along the block lies in the zoom window, but becomes a full-resolution window
    s.add_point((30, 25, 125))
    clicks = [w for w in s.windows() if w["kind"] == "click"]
    assert len(clicks) == 2 and all(w["scale"] == 1 for w in clicks)
    assert _dice(s.mask(), truth) > 0.99
    # undo brings the previous windows back; the journal replays to the same state
    s.undo()
    assert len([w for w in s.windows() if w["kind"] == "click"]) == 1
    s.redo()
    restored = Session.restore(image, s.journal(), make_fake("intensity"), large_objects="zoom")
    np.testing.assert_array_equal(restored.label_map, s.label_map)


def test_bad_strategy_is_an_input_error(make_fake):
    with pytest.raises(InputError, match="large_objects must be one of"):
        Session(make_fake(), large_objects="bigger")
    assert Session(make_fake(), extend=False, large_objects="zoom").large_objects == "none"
