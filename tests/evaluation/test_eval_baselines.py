"""Threshold baselines: thresholds, seeds, negative clicks, PERCIST, and the Session-like engine."""

from __future__ import annotations

import numpy as np
import pytest

from seganypet.errors import InputError, PromptError, SessionStateError
from seganypet.evaluation.baselines import (
    ThresholdEngine,
    make_baseline_engine,
    percist_threshold,
    segment_at_click,
)

SP = (2.0, 2.0, 2.0)


def _image():
    """Background SUV 1; a lesion (SUVmax 10, rim 3) and a separate hot spot (SUV 6)."""
    suv = np.ones((40, 40, 40), dtype=np.float32)
    lesion = np.zeros_like(suv, dtype=bool)
    lesion[10:20, 10:20, 10:20] = True
    suv[lesion] = 3.0
    suv[13:17, 13:17, 13:17] = 10.0
    suv[30:34, 30:34, 30:34] = 6.0
    return suv, lesion


def test_suv25_component_at_click():
    suv, lesion = _image()
    mask = segment_at_click(suv, SP, [((11, 11, 11), True)], "suv2.5")
    assert np.array_equal(mask, lesion)  # the rim (3.0) and core (10) pass 2.5; the spot is apart
    both = segment_at_click(suv, SP, [((11, 11, 11), True), ((31, 31, 31), True)], "suv2.5")
    assert both.sum() == lesion.sum() + 64
    # a click on background within 20 mm of the lesion snaps to its hottest voxel
    near = segment_at_click(suv, SP, [((10, 10, 22), True)], "suv2.5")
    assert np.array_equal(near, lesion)
    # a click far from anything hot adds nothing
    assert not segment_at_click(suv, SP, [((2, 38, 2), True)], "suv2.5").any()


def test_41pct_uses_the_local_max():
    suv, lesion = _image()
    mask = segment_at_click(suv, SP, [((15, 15, 15), True)], "41pct")
    core = suv >= 4.1
    core[25:] = False
    assert np.array_equal(mask, core)  # 41 % of 10 = 4.1: the core only
    spot = segment_at_click(suv, SP, [((31, 31, 31), True)], "41pct")
    assert spot.sum() == 64  # local max 6 -> threshold 2.46, the spot only


def test_negative_clicks():
    suv, lesion = _image()
    # a negative click on a component: the voxels nearer to it than to the positive seed go
    mask = segment_at_click(
        suv, SP, [((11, 11, 11), True), ((30, 31, 31), True), ((33, 31, 31), False)], "suv2.5"
    )
    assert np.array_equal(mask[:25], lesion[:25])
    assert mask[30:32, 30:34, 30:34].all() and not mask[32:34].any()
    # in a component with a positive click, it removes the voxels nearer to it than to the positive seed
    split = segment_at_click(suv, SP, [((11, 15, 15), True), ((19, 15, 15), False)], "suv2.5")
    assert split[10:16, 10:20, 10:20].all() and not split[16:20].any()  # i = 15 is a tie: kept
    assert split.sum() == 600
    # order does not matter; a negative click outside the mask changes nothing
    same = segment_at_click(
        suv, SP, [((19, 15, 15), False), ((11, 15, 15), True), ((0, 0, 0), False)], "suv2.5"
    )
    assert np.array_equal(split, same)


def test_percist_needs_a_liver():
    suv, lesion = _image()
    liver = np.zeros_like(lesion)
    liver[25:35, 2:10, 2:10] = True
    suv[liver] = np.linspace(1.5, 2.5, liver.sum())
    values = suv[liver]
    assert percist_threshold(suv, liver) == pytest.approx(1.5 * values.mean() + 2 * values.std())
    mask = segment_at_click(suv, SP, [((15, 15, 15), True)], "percist", liver_mask=liver)
    assert np.array_equal(mask, suv == 10.0)  # threshold 2.0 + 2 x 0.29 = 3.58: above the rim (3.0)
    with pytest.raises(InputError, match="liver"):
        segment_at_click(suv, SP, [((15, 15, 15), True)], "percist")
    with pytest.raises(InputError, match="empty"):
        segment_at_click(suv, SP, [((15, 15, 15), True)], "percist", liver_mask=np.zeros_like(liver))


def test_bad_input():
    suv, _ = _image()
    with pytest.raises(InputError, match="unknown baseline"):
        segment_at_click(suv, SP, [], "otsu")
    with pytest.raises(PromptError, match="outside"):
        segment_at_click(suv, SP, [((40, 0, 0), True)], "suv2.5")


def test_threshold_engine_is_session_like():
    suv, lesion = _image()
    eng = make_baseline_engine("threshold-2.5")
    assert isinstance(eng, ThresholdEngine) and make_baseline_engine("default") is None
    with pytest.raises(SessionStateError):
        eng.add_point((1, 1, 1))
    eng.set_image(suv, np.diag([2.0, 2.0, 2.0, 1.0]))
    m1 = eng.add_point((11, 11, 11))  # creates object 1
    assert eng.active_label == 1 and np.array_equal(m1, lesion)
    label2 = eng.new_object("spot")
    m2 = eng.add_point((31, 31, 31), positive=True)
    assert label2 == 2 and m2.sum() == 64
    lm = eng.label_map
    assert lm.dtype == np.uint16 and (lm == 1).sum() == lesion.sum() and (lm == 2).sum() == 64
    assert eng.names == {1: "object 1", 2: "spot"}
    assert [o["n_prompts"] for o in eng.objects] == [1, 1]
    assert eng.add_point((33, 31, 31), positive=False).sum() == 48  # i = 30..32 stay (32: a tie)
    assert eng.undo().sum() == 64
    assert eng.redo().sum() == 48
    eng.select_object("object 1")
    assert not eng.reset().any()
    assert np.array_equal(eng.undo(), lesion)
    eng.delete_object(2)
    assert set(np.unique(eng.label_map)) == {0, 1}
    assert [e["op"] for e in eng.journal()][:3] == ["set_image", "new_object", "add_point"]


def test_negative_click_drops_cut_off_islands():
    # a U-shaped hot region opening towards -i: bottom bar j = 0..1, right arm i = 30..31, top bar j = 20..21
    suv = np.ones((34, 24, 4), dtype=np.float32)
    suv[0:32, 0:2, 1:3] = 5.0
    suv[30:32, 0:22, 1:3] = 5.0
    suv[0:32, 20:22, 1:3] = 5.0
    full = segment_at_click(suv, SP, [((0, 0, 1), True)], "suv2.5")
    assert np.array_equal(full, suv > 2.5)
    # the negative click at i = 20 on the bottom bar claims every voxel with i > 10 (bottom bar, arm,
    # and the top bar's right part); the top bar's left part (i < 10) is nearer the positive click
    # but no longer connected to it, so it goes too
    cut = segment_at_click(suv, SP, [((0, 0, 1), True), ((20, 0, 1), False)], "suv2.5")
    assert cut[0:11, 0:2, 1:3].all() and not cut[11:].any() and not cut[:, 2:].any()  # i = 10: a tie
