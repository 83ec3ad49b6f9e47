"""Simulated users: clicks land where the protocol says, and are reproducible by seed."""

from __future__ import annotations

import numpy as np
import pytest

from seganypet.evaluation import clicks as clk


def _ref():
    ref = np.zeros((20, 20, 20), dtype=bool)
    ref[4:12, 4:12, 4:12] = True
    return ref


def test_first_click_inside_object_and_deterministic():
    ref = _ref()
    a = [clk.first_click(ref, clk.rng_for(7, "case", "1")) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    ijk, positive = a[0]
    assert positive and ref[ijk]
    others = {clk.first_click(ref, clk.rng_for(s, "case", "1"))[0] for s in range(20)}
    assert len(others) > 5  # the seed matters
    with pytest.raises(ValueError):
        clk.first_click(np.zeros((3, 3, 3), bool), clk.rng_for(0))


@pytest.mark.parametrize("mode", ["random", "center"])
def test_next_click_in_error_region(mode):
    ref = _ref()
    under = np.zeros_like(ref)
    under[4:12, 4:12, 4:7] = True  # large false negative region, no false positive
    ijk, positive = clk.next_click(under, ref, clk.rng_for(1), mode, (2.0, 2.0, 2.0))
    assert positive and ref[ijk] and not under[ijk]
    over = ref.copy()
    over[12:19, 4:12, 4:12] = True  # false positives only
    ijk, positive = clk.next_click(over, ref, clk.rng_for(1), mode, (2.0, 2.0, 2.0))
    assert not positive and over[ijk] and not ref[ijk]
    assert clk.next_click(ref, ref, clk.rng_for(1), mode) is None


def test_center_click_is_the_deepest_voxel_of_the_largest_error():
    ref = np.zeros((30, 30, 30), dtype=bool)
    ref[5:26, 5:26, 5:26] = True
    pred = ref.copy()
    pred[5:26, 5:26, 5:16] = False  # FN slab k = 5..15 (11 thick): centre at k = 10
    pred[26:28, 10:12, 10:12] = True  # small FP blob
    ijk, positive = clk.next_click(pred, ref, clk.rng_for(0), "center", (1.0, 1.0, 1.0))
    assert positive
    # depth 6 voxels on the plateau i, j in 10..20, k = 10; ties go to the first in C order
    assert ijk == (10, 10, 10)
    # anisotropic spacing changes which voxel is deepest: the FN slab is thin in mm along k
    ijk2, _ = clk.next_click(pred, ref, clk.rng_for(0), "center", (1.0, 1.0, 0.25))
    assert pred[ijk2] == 0 and ref[ijk2]


def test_random_clicks_are_reproducible_and_seed_dependent():
    ref = _ref()
    pred = np.zeros_like(ref)
    pred[4:12, 4:12, 4:6] = True
    pred[14:18, 14:18, 14:18] = True

    def seq(seed):
        rng = clk.rng_for(seed, "c", "o")
        return [clk.next_click(pred, ref, rng, "random") for _ in range(5)]

    assert seq(3) == seq(3)
    assert seq(3) != seq(4)
    with pytest.raises(ValueError, match="click mode"):
        clk.next_click(pred, ref, clk.rng_for(0), "nonsense")


def test_autopet_clicks_follow_the_challenge_rules():
    shape = (40, 40, 40)
    ref = np.zeros(shape, dtype=bool)
    ref[5:12, 5:12, 5:12] = True  # component 1: centre (8, 8, 8)
    ref[25:30, 25:30, 25:30] = True  # component 2: centre (27, 27, 27)
    rng = np.random.default_rng(0)
    suv = rng.normal(1.0, 0.05, shape).astype(np.float32)
    suv[ref] = 8.0
    suv[30:34, 2:6, 30:34] = 6.0  # hot non-tumour spot (64 voxels > 99.75th percentile)
    out = clk.autopet_clicks(ref, suv, clk.rng_for(42, "case", "autopet"))
    assert len(out["tumor"]) == 10 and len(out["tumor_component"]) == 10
    assert {tuple(c) for c in out["tumor"][:2]} == {(8, 8, 8), (27, 27, 27)}
    assert all(ref[c] for c in out["tumor"])
    # boundary clicks: one voxel deep in their component
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(ref)
    assert all(depth[c] == 1.0 for c in out["tumor"][2:])
    assert len(out["background"]) == 10
    assert all(not ref[c] for c in out["background"])
    hot = suv > np.percentile(suv[~ref], 99.75)
    assert all(hot[c] for c in out["background"])
    again = clk.autopet_clicks(ref, suv, clk.rng_for(42, "case", "autopet"))
    assert again == out
    suv[ref] = 1.0
    empty = clk.autopet_clicks(np.zeros(shape, bool), suv, clk.rng_for(0))
    assert empty["tumor"] == [] and len(empty["background"]) == 10
