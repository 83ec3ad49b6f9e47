"""Metrics against hand-computed values, and the documented edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seganypet.evaluation import metrics as m


def _empty(shape=(10, 10, 12)):
    return np.zeros(shape, dtype=bool)


def test_dice_hand_values_and_edge_cases():
    a, b = _empty(), _empty()
    a[2:4, 2:4, 2:4] = True  # 8 voxels
    b[3:5, 2:4, 2:4] = True  # 8 voxels, 4 shared
    assert m.dice(a, b) == pytest.approx(2 * 4 / 16)
    assert m.dice(_empty(), _empty()) == 1.0
    assert m.dice(a, _empty()) == 0.0
    assert m.dice(_empty(), a) == 0.0


def test_surface_distances_use_spacing():
    ref, pred = _empty(), _empty()
    ref[3, 3, 3] = True
    pred[3, 3, 3] = True
    pred[3, 3, 7] = True  # 4 voxels along k at 2 mm = 8 mm away
    spacing = (3.0, 1.0, 2.0)
    # directed distances pred->ref = [0, 8], ref->pred = [0]; p95 of [0, 8] = 7.6 (linear)
    assert m.hd95(pred, ref, spacing) == pytest.approx(7.6, abs=1e-4)
    # NSD: surface voxels within tolerance: pred 1 of 2, ref 1 of 1 -> 2/3 at 5 mm, 1 at 9 mm
    assert m.nsd(pred, ref, spacing, 5.0) == pytest.approx(2 / 3, abs=1e-5)
    assert m.nsd(pred, ref, spacing, 9.0) == pytest.approx(1.0)
    other = _empty()
    other[2, 4, 4] = True  # offset (-1, 1, 1) voxels = (-3, 1, 2) mm from (3,3,3)
    assert m.hd95(other, ref, spacing) == pytest.approx(math.sqrt(9 + 1 + 4), abs=1e-4)
    # a mask touching the image border keeps a closed surface (one-voxel slab shift = 1 mm)
    a, b = np.zeros((5, 5, 5), bool), np.zeros((5, 5, 5), bool)
    a[:3] = True
    b[:4] = True
    assert m.hd95(b, a, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert m.hd95(b, a, (2.0, 1.0, 1.0)) == pytest.approx(2.0)


def test_surface_edge_cases():
    a = _empty()
    a[2:5, 2:5, 2:5] = True
    spacing = (2.0, 2.0, 3.0)
    diag = m.image_diagonal_mm(a.shape, spacing)
    assert diag == pytest.approx(math.sqrt(20**2 + 20**2 + 36**2))
    assert m.hd95(_empty(), _empty(), spacing) == 0.0
    assert m.nsd(_empty(), _empty(), spacing) == 1.0
    assert m.hd95(a, _empty(), spacing) == pytest.approx(diag)
    assert m.hd95(_empty(), a, spacing) == pytest.approx(diag)
    assert m.nsd(a, _empty(), spacing) == 0.0
    assert m.hd95(a, a, spacing) == 0.0
    assert m.nsd(a, a, spacing, 0.5) == pytest.approx(1.0)


def test_object_metrics_volumes():
    ref, pred = _empty(), _empty()
    ref[0:2, 0:2, 0:2] = True  # 8 voxels
    pred[0:2, 0:2, 0:3] = True  # 12 voxels
    out = m.object_metrics(pred, ref, (2.0, 2.0, 2.5))  # 10 mm^3 per voxel
    assert out["vol_ref_ml"] == pytest.approx(0.08)
    assert out["vol_pred_ml"] == pytest.approx(0.12)
    assert out["vol_err_ml"] == pytest.approx(0.04)
    assert out["vol_err_rel"] == pytest.approx(0.5)
    assert out["dice"] == pytest.approx(16 / 20)
    empty_ref = m.object_metrics(pred, _empty(), (1, 1, 1))
    assert math.isnan(empty_ref["vol_err_rel"])
    assert m.object_metrics(_empty(), ref, (1, 1, 1))["vol_err_rel"] == pytest.approx(-1.0)


def test_lesion_measures_autopet_definitions():
    shape = (20, 20, 20)
    ref, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    ref[2:4, 2:4, 2:4] = True  # lesion A, 8 voxels, hit
    ref[10:13, 10:13, 10:13] = True  # lesion B, 27 voxels, missed
    pred[3:5, 2:4, 2:4] = True  # overlaps A (component of 8 voxels, half outside A: not FP)
    pred[16:18, 16:18, 16:18] = True  # FP component, 8 voxels
    # two voxels touching only by a corner: separate components in 18-connectivity
    pred[0, 19, 0] = True
    pred[1, 18, 1] = True
    out = m.lesion_measures(pred, ref, (2.0, 2.0, 2.0))  # 8 mm^3 = 0.008 mL per voxel
    assert out["fnv_ml"] == pytest.approx(27 * 0.008)
    assert out["fpv_ml"] == pytest.approx(10 * 0.008)
    assert (out["tp"], out["fn"], out["fp"]) == (1, 1, 3)
    assert (out["n_ref"], out["n_pred"]) == (2, 4)
    assert out["dice"] == pytest.approx(2 * 4 / (35 + 18))
    both_empty = m.lesion_measures(np.zeros(shape, bool), np.zeros(shape, bool), (1, 1, 1))
    assert both_empty["dice"] == 1.0 and both_empty["fpv_ml"] == 0 and both_empty["fnv_ml"] == 0
    no_pred = m.lesion_measures(np.zeros(shape, bool), ref, (1, 1, 1))
    assert no_pred["fnv_ml"] == pytest.approx(35 / 1000) and no_pred["fn"] == 2


def test_trapezoid_auc_and_bootstrap():
    assert m.trapezoid_auc([0, 1, 1]) == pytest.approx(1.5)
    assert m.trapezoid_auc([0.5] * 11) == pytest.approx(5.0)
    assert m.trapezoid_auc([0.7]) == 0.0
    lo, hi = m.bootstrap_ci([0.2, 0.4, 0.6, 0.8], seed=1)
    assert 0.2 <= lo < 0.5 < hi <= 0.8
    assert m.bootstrap_ci([0.2, 0.4, 0.6, 0.8], seed=1) == (lo, hi)  # deterministic
    assert m.bootstrap_ci([0.3, float("nan")]) == (0.3, 0.3)
    assert all(math.isnan(v) for v in m.bootstrap_ci([]))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs"):
        m.dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_surface_metrics_equal_monai_compute_functions():
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    from scipy import ndimage

    rng = np.random.default_rng(0)
    spacing = (1.5, 2.0, 3.3)
    for _ in range(3):
        a = ndimage.gaussian_filter(rng.random((30, 28, 26)), 3) > 0.5
        b = ndimage.gaussian_filter(rng.random((30, 28, 26)), 3) > 0.5
        hd, ns = m.surface_metrics(a, b, spacing, 4.0)
        pa, pb = (torch.from_numpy(np.pad(x, 1))[None, None] for x in (a, b))
        ref_hd = compute_hausdorff_distance(
            pa, pb, include_background=True, percentile=95, spacing=list(spacing)
        )
        ref_ns = compute_surface_dice(pa, pb, [4.0], include_background=True, spacing=list(spacing))
        assert hd == pytest.approx(float(ref_hd), abs=1e-4)
        assert ns == pytest.approx(float(ref_ns), abs=1e-5)
