"""Segmentation metrics: overlap, surface distance, volume, and the autoPET lesion measures.

All masks are boolean (or 0/1) numpy arrays of shape ``(I, J, K)`` on one voxel grid; ``spacing`` is
the voxel size ``(si, sj, sk)`` in millimetres along ``i, j, k``. Volumes are in millilitres, distances
in millimetres.

Edge cases (``pred`` = prediction, ``ref`` = reference), chosen so that every value is finite and a
failure is never rewarded:

============================  ======  ======  ===========================  ===========================
case                          Dice    NSD     HD95                         relative volume error
============================  ======  ======  ===========================  ===========================
both empty                    1.0     1.0     0.0                          NaN (no reference volume)
ref empty, pred not           0.0     0.0     image diagonal (worst case)  NaN
pred empty, ref not           0.0     0.0     image diagonal (worst case)  -1.0
============================  ======  ======  ===========================  ===========================

Surface distances (HD95, NSD) come from MONAI (``monai.metrics.utils.get_edge_surface_distance``,
the function behind ``compute_hausdorff_distance`` and ``compute_surface_dice``) with the voxel
spacing passed through, computed once for both metrics on the bounding box of both masks padded
by one voxel (so that a mask touching the image border still has a closed surface). Surface voxels
are the mask voxels removed by one binary erosion. HD95 is ``max(p95(d(pred->ref)),
p95(d(ref->pred)))`` with linearly interpolated percentiles; NSD at tolerance ``tau`` mm is the
fraction of both surfaces' voxels lying within ``tau`` of the other surface (Nikolov et al. 2021,
voxel-counted rather than area-weighted). Both equal MONAI's ``compute_*`` results (tested).

The autoPET measures (``lesion_measures``) follow the challenge's evaluation script
(lab-midas/autoPETCTIV, ``evaluation_metrics.py``): connected components with 18-connectivity;
false-positive volume = total volume of predicted components that overlap no reference voxel;
false-negative volume = total volume of reference components that no predicted voxel overlaps.
Lesion-wise detection: a reference component is a true positive when at least one predicted voxel
overlaps it, otherwise a false negative; a predicted component overlapping no reference voxel is a
false positive.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger("seganypet.evaluation.metrics")

LESION_CONNECTIVITY = 18  # autoPET evaluation
Spacing = Sequence[float]


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D mask (I, J, K), got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _as_bool(pred, "pred")
    r = _as_bool(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    return p, r


def _voxel_ml(spacing: Spacing) -> float:
    return float(np.prod([float(s) for s in spacing])) / 1000.0


def image_diagonal_mm(shape: Sequence[int], spacing: Spacing) -> float:
    """Length in mm of the diagonal of an image of ``shape`` voxels (the largest possible distance)."""
    return float(math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing))))


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2|P∩R| / (|P|+|R|)``; 1.0 when both masks are empty."""
    p, r = _check_pair(pred, ref)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def _crop_pair(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union, padded by one empty voxel on each side."""
    union = p | r
    idx = [np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    sl = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    return np.pad(p[sl], 1), np.pad(r[sl], 1)


def _monai_inputs(p: np.ndarray, r: np.ndarray) -> tuple[Any, Any]:
    import torch

    return (
        torch.from_numpy(np.ascontiguousarray(p))[None, None],
        torch.from_numpy(np.ascontiguousarray(r))[None, None],
    )


def _surface_distances(p: np.ndarray, r: np.ndarray, spacing: Spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``p`` to the surface of ``r`` and vice versa
    (MONAI ``get_edge_surface_distance``; both masks non-empty)."""
    from monai.metrics.utils import get_edge_surface_distance

    pc, rc = _crop_pair(p, r)
    tp, tr = _monai_inputs(pc, rc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, (d_pr, d_rp), _ = get_edge_surface_distance(
            tp[0, 0], tr[0, 0], spacing=[float(s) for s in spacing], symmetric=True
        )
    return d_pr.cpu().numpy().astype(np.float64), d_rp.cpu().numpy().astype(np.float64)


def surface_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Spacing, tolerance_mm: float = 2.0
) -> tuple[float, float]:
    """``(hd95_mm, nsd)`` from one surface-distance computation (edge cases: module docstring).

    HD95 = ``max(p95(d(pred->ref)), p95(d(ref->pred)))`` (linear percentiles, as MONAI's
    ``compute_hausdorff_distance(percentile=95)``); NSD = fraction of both surfaces' voxels within
    ``tolerance_mm`` of the other surface (as MONAI's ``compute_surface_dice``).
    """
    p, r = _check_pair(pred, ref)
    pe, re_ = bool(p.any()), bool(r.any())
    if not pe and not re_:
        return 0.0, 1.0
    if not pe or not re_:
        return image_diagonal_mm(p.shape, spacing), 0.0
    d_pr, d_rp = _surface_distances(p, r, spacing)
    hd = max(float(np.percentile(d_pr, 95)), float(np.percentile(d_rp, 95)))
    tol = float(tolerance_mm)
    nsd_value = (np.count_nonzero(d_pr <= tol) + np.count_nonzero(d_rp <= tol)) / (d_pr.size + d_rp.size)
    return hd, float(nsd_value)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Spacing) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (see the module docstring for edge cases)."""
    return surface_metrics(pred, ref, spacing)[0]


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Spacing, tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (0..1; see the module docstring for edge cases)."""
    return surface_metrics(pred, ref, spacing, tolerance_mm)[1]


def volume_ml(mask: np.ndarray, spacing: Spacing) -> float:
    """Volume of ``mask`` in mL."""
    return float(np.count_nonzero(mask)) * _voxel_ml(spacing)


def object_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Spacing, tolerance_mm: float = 2.0
) -> dict[str, float]:
    """All per-object metrics of one prediction against one reference.

    Returns ``dice``, ``nsd`` (at ``tolerance_mm``), ``hd95_mm``, ``vol_ref_ml``, ``vol_pred_ml``,
    ``vol_err_ml`` (pred - ref) and ``vol_err_rel`` ((pred - ref) / ref, NaN for an empty reference).
    """
    p, r = _check_pair(pred, ref)
    v_ref = volume_ml(r, spacing)
    v_pred = volume_ml(p, spacing)
    hd, nsd_value = surface_metrics(p, r, spacing, tolerance_mm)
    return {
        "dice": dice(p, r),
        "nsd": nsd_value,
        "hd95_mm": hd,
        "vol_ref_ml": v_ref,
        "vol_pred_ml": v_pred,
        "vol_err_ml": v_pred - v_ref,
        "vol_err_rel": (v_pred - v_ref) / v_ref if v_ref > 0 else float("nan"),
    }


def components(mask: np.ndarray, connectivity: int = LESION_CONNECTIVITY) -> tuple[np.ndarray, int]:
    """Connected components of ``mask`` (cc3d): ``(labels uint32 (I,J,K), count)``."""
    import cc3d

    labels, n = cc3d.connected_components(
        np.ascontiguousarray(_as_bool(mask, "mask"), dtype=np.uint8),
        connectivity=connectivity,
        return_N=True,
    )
    return labels, int(n)


def lesion_measures(
    pred: np.ndarray, ref: np.ndarray, spacing: Spacing, connectivity: int = LESION_CONNECTIVITY
) -> dict[str, float]:
    """autoPET case-level measures of a lesion prediction (binary, all lesions together).

    Returns ``dice`` (1.0 when both are empty; the challenge script gives NaN there),
    ``fpv_ml``, ``fnv_ml``, and the lesion-wise detection counts ``tp``, ``fn`` (reference
    components hit / missed), ``fp`` (predicted components touching no reference voxel),
    ``n_ref`` and ``n_pred`` (component counts). Definitions in the module docstring.
    """
    p, r = _check_pair(pred, ref)
    vml = _voxel_ml(spacing)
    pred_cc, n_pred = components(p, connectivity)
    ref_cc, n_ref = components(r, connectivity)
    # predicted components that touch the reference, and reference components that are touched
    hit_pred = np.unique(pred_cc[r & (pred_cc > 0)])
    hit_ref = np.unique(ref_cc[p & (ref_cc > 0)])
    pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
    ref_sizes = np.bincount(ref_cc.ravel(), minlength=n_ref + 1)
    fp_mask = np.ones(n_pred + 1, dtype=bool)
    fp_mask[0] = False
    fp_mask[hit_pred] = False
    fn_mask = np.ones(n_ref + 1, dtype=bool)
    fn_mask[0] = False
    fn_mask[hit_ref] = False
    return {
        "dice": dice(p, r),
        "fpv_ml": float(pred_sizes[fp_mask].sum()) * vml,
        "fnv_ml": float(ref_sizes[fn_mask].sum()) * vml,
        "tp": int(len(hit_ref)),
        "fn": int(fn_mask.sum()),
        "fp": int(fp_mask.sum()),
        "n_ref": n_ref,
        "n_pred": n_pred,
    }


def trapezoid_auc(values: Sequence[float]) -> float:
    """Area under a curve sampled at x = 0, 1, ..., n-1 by the trapezoid rule (autoPET IV AUC)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return 0.0
    return float(np.sum((v[1:] + v[:-1]) / 2.0))


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (NaNs dropped; ``(nan, nan)`` if empty).

    ``n_boot`` resamples with replacement, generator ``numpy.random.default_rng(seed)``.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)
