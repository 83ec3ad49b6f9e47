"""PET quantification: SUVmax, SUVmean, SUVpeak, MTV, TLG per object and per patient.

Everything is computed on the input's own voxel grid (never a resampled one). Definitions, with the
reasons behind them, are in docs/quantification.md; in short:

- ``voxels``: voxel count of the object; ``volume_ml = mtv_ml = voxels * |det(affine[:3, :3])| / 1000``.
- ``suv_max/min/mean/sd``: over the object's voxels (SD with ddof=0); intensities are in the image's
  own units (``stats["units"]``, e.g. SUVbw, SUVlbm or Bq/mL) although the keys say "suv".
- ``suv_max_ijk``: first voxel holding the maximum in C (raster) order of the (i, j, k) array.
- ``suv_peak``: highest mean intensity in a sphere of 1 cm^3 (radius 6.2035 mm) centred on any voxel
  centre *of the object*; the sphere samples the whole image (voxels outside the object included,
  IBSI "global intensity peak"), each voxel weighted by the fraction of its volume inside the sphere
  (supersampling, :func:`sphere_kernel`), on the true (anisotropic, even sheared) voxel geometry.
  Where the sphere leaves the image it is truncated and the weights renormalised
  (``suv_peak_coverage`` < 1). ``suv_peak_local``: the same sphere centred on the SUVmax voxel.
- ``tlg = suv_mean * mtv_ml``; centroid: unweighted mean of voxel centres; ``bbox``: inclusive
  (i, j, k) corners.
- Components (``components=True``): each label is split into 18-connected components (cc3d), one
  row per component (``component`` 1..n, largest first); whole-object rows have ``component`` 0.
- Reference regions (by name, see :func:`classify`): liver -> PERCIST 3 cm sphere at the point of
  the liver deepest inside it (maximum of the mm distance transform); blood pool / mediastinum /
  aorta -> a 1 cm x 2 cm cylinder along the local principal axis at its deepest point.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from seganypet.errors import InputError
from seganypet.image import PETImage
from seganypet.utils import atomic_path

logger = logging.getLogger("seganypet.quant")

PEAK_VOLUME_ML = 1.0
PEAK_RADIUS_MM = (3.0 * PEAK_VOLUME_ML * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # 6.2035 mm
LIVER_SPHERE_RADIUS_MM = 15.0  # PERCIST: 3 cm diameter sphere
BLOOD_POOL_RADIUS_MM = 5.0  # PERCIST: 1 cm diameter ...
BLOOD_POOL_HALF_LENGTH_MM = 10.0  # ... 2 cm long cylinder in the descending aorta
CONNECTIVITY = 18
CHUNK_VOXELS = 4_000_000  # largest region convolved in one FFT (memory bound)

#: Per-object keys fixed by the public contract (JSON keys and CSV columns).
CONTRACT_KEYS = (
    "label", "name", "voxels", "volume_ml", "suv_max", "suv_max_ijk", "suv_mean", "suv_peak", "mtv_ml", "tlg",
)  # fmt: skip
#: The per-object keys, in CSV column order (the contract keys first).
OBJECT_COLUMNS = [
    "label",
    "name",
    "voxels",
    "volume_ml",
    "suv_max",
    "suv_max_ijk",
    "suv_mean",
    "suv_peak",
    "mtv_ml",
    "tlg",
    "kind",
    "reference",
    "component",
    "n_components",
    "suv_min",
    "suv_sd",
    "suv_max_mm",
    "suv_peak_ijk",
    "suv_peak_mm",
    "suv_peak_coverage",
    "suv_peak_local",
    "centroid_ijk",
    "centroid_mm",
    "bbox_min_ijk",
    "bbox_max_ijk",
    "ratio_to_liver",
    "ratio_to_blood_pool",
]

_LESION_WORDS = ("lesion", "tumour", "tumor", "metasta", "node", "nodal", "gtv", "mass", "nodule", "cancer")
_REFERENCE_PATTERNS = {
    "liver": re.compile(r"^(liver|liver reference|liver roi|normal liver)$"),
    "blood_pool": re.compile(
        r"^(blood ?pool|mediastin\w*( blood ?pool)?|mediastinal blood ?pool|aorta|descending aorta|"
        r"aorta descending|thoracic aorta)$"
    ),
}
_ORGAN_WORDS = (
    "liver", "spleen", "kidney", "bladder", "brain", "heart", "lung", "aorta", "vena cava", "bowel",
    "colon", "stomach", "pancreas", "gallbladder", "duodenum", "esophagus", "oesophagus", "small bowel",
    "prostate", "vertebra", "spine", "rib", "femur", "hip", "sacrum", "muscle", "gluteus", "iliopsoas",
    "adrenal", "thyroid", "trachea", "skull", "sternum", "clavicula", "scapula", "humerus", "marrow",
    "myocardium", "salivary", "parotid", "mediastin", "blood pool", "background", "body", "urinary",
    "ureter", "portal", "iliac", "artery", "vein", "ventricle", "atrium", "spinal cord", "autochthon",
    "cartilage", "gland", "cava", "vessel", "bone", "skin", "fat",
)  # fmt: skip


def _norm_name(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", name.strip().lower()))


def classify(name: str | None, kind: str | None = None) -> tuple[str, str | None]:
    """Kind (``"lesion"`` or ``"organ"``) and reference role (``"liver"``, ``"blood_pool"``, None).

    ``kind`` given (e.g. a phantom's ``label_info`` or the ``kinds`` argument) wins for the kind.
    Otherwise a name containing a lesion word (lesion, tumour, metastasis, node, GTV, mass ...) is a
    lesion; a name containing a known organ word (liver, spleen, kidney, aorta ...) is an organ; any
    other name, and unnamed objects, are lesions. The reference role needs a name that *is* a
    reference organ ("liver"; "blood pool", "mediastinum", "mediastinal blood pool", "aorta" ...),
    so "liver lesion" is a lesion and no reference.
    """
    n = _norm_name(name or "")
    is_lesion_word = any(w in n for w in _LESION_WORDS)
    role = None
    if not is_lesion_word:
        for key, pattern in _REFERENCE_PATTERNS.items():
            if pattern.match(n):
                role = key
    if kind is not None:
        k = "lesion" if str(kind).lower() == "lesion" else "organ"
        return k, (role if k == "organ" else None)
    if is_lesion_word:
        return "lesion", None
    if role is not None or any(w in n for w in _ORGAN_WORDS):
        return "organ", role
    return "lesion", None


# ---------------------------------------------------------------------------------------------
# sphere kernels
# ---------------------------------------------------------------------------------------------


def sphere_kernel(
    linear: np.ndarray, radius_mm: float, sampling: str = "fractional", supersample: int = 12
) -> np.ndarray:
    """Weights of the voxels of a grid inside a sphere centred on a voxel centre.

    Args:
        linear: ``(3, 3)`` linear part of the voxel-to-mm affine (columns = voxel edge vectors in mm;
            anisotropic and sheared grids are handled exactly).
        radius_mm: sphere radius in mm.
        sampling: ``"fractional"``: each voxel weighted by the fraction of its volume inside the sphere
            (estimated on ``supersample**3`` sub-voxel points for voxels the sphere surface cuts; 1 for
            voxels wholly inside, 0 wholly outside); ``"centres"``: weight 1 for voxels whose centre lies
            within the sphere, else 0.
        supersample: sub-samples per axis for cut voxels.

    Returns:
        float64 array of odd shape ``(2hi+1, 2hj+1, 2hk+1)``, centre = the sphere's centre voxel,
        axes (i, j, k). Its sum times the voxel volume approximates the sphere volume.
    """
    m = np.asarray(linear, dtype=np.float64)
    inv = np.linalg.inv(m)
    half = [int(math.ceil(radius_mm * np.linalg.norm(inv[a]) + 0.5)) for a in range(3)]
    axes = [np.arange(-h, h + 1, dtype=np.float64) for h in half]
    offs = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (..., 3) voxel offsets
    centres = offs @ m.T  # mm
    dist = np.linalg.norm(centres, axis=-1)
    if sampling == "centres":
        return (dist <= radius_mm).astype(np.float64)
    if sampling != "fractional":
        raise ValueError(f"unknown sphere sampling {sampling!r} (use 'fractional' or 'centres')")
    corners = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)]) @ m.T
    half_diag = float(np.linalg.norm(corners, axis=1).max())
    far = np.linalg.norm(centres[..., None, :] + corners, axis=-1).max(axis=-1)
    weights = np.zeros(dist.shape)
    weights[far <= radius_mm] = 1.0
    cut = (far > radius_mm) & (dist < radius_mm + half_diag)
    s = (np.arange(supersample) + 0.5) / supersample - 0.5
    sub = np.stack(np.meshgrid(s, s, s, indexing="ij"), axis=-1).reshape(-1, 3) @ m.T  # (S, 3) mm
    for idx in zip(*np.nonzero(cut)):
        pts = centres[idx] + sub
        weights[idx] = np.count_nonzero(np.einsum("ij,ij->i", pts, pts) <= radius_mm**2) / len(sub)
    return weights


def _sphere_means(
    values: np.ndarray, finite: np.ndarray, kernel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sphere means and coverage of a float image region whose non-finite voxels count as missing.

    Regions above :data:`CHUNK_VOXELS` are done in slabs along the last axis (with a margin of the
    kernel's half-width, so the result is the same) to bound the FFT's memory.
    """
    n_k = values.shape[2]
    step = max(1, CHUNK_VOXELS // max(1, values.shape[0] * values.shape[1]))
    if step >= n_k:
        return _direct_means(values, finite, kernel)
    half = kernel.shape[2] // 2
    means = np.empty(values.shape, np.float64)
    coverage = np.empty(values.shape, np.float64)
    for k0 in range(0, n_k, step):
        lo, hi = max(0, k0 - half), min(n_k, k0 + step + half)
        m, c = _direct_means(values[:, :, lo:hi], finite[:, :, lo:hi], kernel)
        k1 = min(n_k, k0 + step)
        means[:, :, k0:k1] = m[:, :, k0 - lo : k1 - lo]
        coverage[:, :, k0:k1] = c[:, :, k0 - lo : k1 - lo]
    return means, coverage


def _direct_means(
    values: np.ndarray, finite: np.ndarray, kernel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    clean = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return _local_means(clean, finite.astype(np.float64), kernel)


def _local_means(values: np.ndarray, valid: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kernel-weighted local mean of ``values`` over ``valid`` voxels and the covered kernel fraction.

    ``values`` and ``valid`` (float, 0/1) share a shape; voxels beyond the array count as missing.
    """
    from scipy.signal import fftconvolve  # imported here: scipy.signal takes ~1-2 s to import

    num = fftconvolve(values * valid, kernel, mode="same")
    den = fftconvolve(valid, kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(den > 1e-9, num / np.maximum(den, 1e-12), np.nan)
    return mean, den / kernel.sum()


# ---------------------------------------------------------------------------------------------
# per-object statistics
# ---------------------------------------------------------------------------------------------


def _f(v: Any) -> float | None:
    """Python float, NaN -> None (JSON-safe)."""
    v = float(v)
    return None if not math.isfinite(v) else v


def _ijk(v: Any) -> list[int]:
    return [int(x) for x in v]


def _mm(image: PETImage, ijk: Any) -> list[float]:
    return [float(x) for x in image.ijk_to_mm(np.asarray(ijk, dtype=np.float64))]


def _expand(sl: tuple[slice, ...], half: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(sl, half, shape))


def _object_row(
    image: PETImage,
    finite: np.ndarray,
    mask: np.ndarray,
    box: tuple[slice, ...],
    kernel: np.ndarray,
    full_means: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Statistics of one object: ``mask`` is bool over the ``box`` region of the image.

    ``full_means``: the (sphere means, coverage) maps of the whole image when already computed.
    """
    half = tuple(s // 2 for s in kernel.shape)
    outer = _expand(box, half, image.shape) if full_means is None else tuple(slice(0, n) for n in image.shape)
    inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))
    arr = image.array
    vals = arr[box][mask].astype(np.float64)
    fin = finite[box][mask]
    voxels = int(mask.sum())
    if not fin.all():
        logger.warning("%d voxels of an object hold NaN/inf and are left out of its SUV values", (~fin).sum())
    vals_f = vals[fin]
    coords = np.argwhere(mask)  # C order == raster order of the (i, j, k) array
    offset = np.array([s.start for s in box])
    centroid = coords.mean(axis=0) + offset
    row: dict[str, Any] = {
        "voxels": voxels,
        "volume_ml": voxels * image.voxel_volume_ml,
        "mtv_ml": voxels * image.voxel_volume_ml,
        "centroid_ijk": [float(x) for x in centroid],
        "centroid_mm": _mm(image, centroid),
        "bbox_min_ijk": _ijk(coords.min(axis=0) + offset),
        "bbox_max_ijk": _ijk(coords.max(axis=0) + offset),
    }
    if vals_f.size == 0:
        row.update(
            suv_max=None, suv_max_ijk=None, suv_max_mm=None, suv_min=None, suv_mean=None, suv_sd=None,
            suv_peak=None, suv_peak_ijk=None, suv_peak_mm=None, suv_peak_coverage=None,
            suv_peak_local=None, tlg=None,
        )  # fmt: skip
        return row
    fcoords = coords[fin]
    imax = int(np.argmax(vals_f))
    max_ijk = fcoords[imax] + offset
    mean = float(vals_f.mean())
    means, coverage = full_means or _sphere_means(arr[outer], finite[outer], kernel)
    obj_means = means[inner][mask]
    obj_means = np.where(np.isfinite(obj_means), obj_means, -np.inf)
    ipeak = int(np.argmax(obj_means))
    peak_ijk = coords[ipeak] + offset
    local_ijk = tuple(int(v) for v in (max_ijk - np.array([o.start for o in outer])))
    row.update(
        suv_max=float(vals_f[imax]),
        suv_max_ijk=_ijk(max_ijk),
        suv_max_mm=_mm(image, max_ijk),
        suv_min=float(vals_f.min()),
        suv_mean=mean,
        suv_sd=float(vals_f.std()),
        suv_peak=_f(obj_means[ipeak]),
        suv_peak_ijk=_ijk(peak_ijk),
        suv_peak_mm=_mm(image, peak_ijk),
        suv_peak_coverage=_f(coverage[inner][mask][ipeak]),
        suv_peak_local=_f(means[local_ijk]),
        tlg=mean * voxels * image.voxel_volume_ml,
    )
    return row


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """18-connected components of a bool mask, numbered 1..n by decreasing size (ties: raster order)."""
    import cc3d

    cc = cc3d.connected_components(mask.astype(np.uint8), connectivity=CONNECTIVITY)
    n = int(cc.max())
    if n <= 1:
        return cc.astype(np.int32), n
    sizes = np.bincount(cc.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")  # cc3d numbers components in raster order
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[order + 1] = np.arange(1, n + 1)
    return remap[cc], n


# ---------------------------------------------------------------------------------------------
# reference regions
# ---------------------------------------------------------------------------------------------


def _deepest_point(image: PETImage, mask: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, float]:
    """Voxel of ``mask`` farthest (mm) from the background, ties -> nearest the centroid; its depth in mm.

    The image border counts as background (the organ may continue beyond it).
    """
    padded = np.pad(mask, 1)
    depth = ndimage.distance_transform_edt(padded, sampling=image.spacing)[1:-1, 1:-1, 1:-1]
    best = depth.max()
    cands = np.argwhere(depth >= best - 1e-6)
    if len(cands) > 1:
        centroid = np.argwhere(mask).mean(axis=0)
        d = np.linalg.norm(image.ijk_to_mm(cands + offset) - image.ijk_to_mm(centroid + offset), axis=1)
        cands = cands[[int(np.argmin(d))]]
    return cands[0] + offset, float(best)


def reference_region(image: PETImage, mask: np.ndarray, role: str) -> dict[str, Any]:
    """PERCIST-style reference value of a liver or blood-pool object.

    Args:
        image: the PET.
        mask: bool ``(I, J, K)`` of the whole reference object.
        role: ``"liver"``: voxels whose centres lie within a 3 cm diameter sphere centred at the object's
            deepest voxel (maximum of the mm distance transform), intersected with the object;
            ``"blood_pool"``: voxels within a cylinder of 1 cm diameter and 2 cm length centred at the
            deepest voxel, its axis the principal axis of the object's voxels within 3 cm.

    Returns:
        dict with ``region``, ``label``-free values ``mean``, ``sd`` (ddof=0), ``max``, ``voxels``,
        ``volume_ml``, ``centre_ijk``, ``centre_mm``, ``depth_mm`` (distance from the centre to the
        object's surface) and ``fits`` (whether the sphere/cylinder lies wholly inside the object).
    """
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    sub = mask[box]
    offset = np.array([s.start for s in box])
    centre, depth = _deepest_point(image, sub, offset)
    coords = np.argwhere(sub) + offset
    xyz = image.ijk_to_mm(coords) - image.ijk_to_mm(centre)
    if role == "liver":
        sel = np.linalg.norm(xyz, axis=1) <= LIVER_SPHERE_RADIUS_MM
        region = f"sphere {2 * LIVER_SPHERE_RADIUS_MM / 10:g} cm diameter"
        fits = depth >= LIVER_SPHERE_RADIUS_MM
    else:
        near = xyz[np.linalg.norm(xyz, axis=1) <= 30.0]
        axis = np.array([0.0, 0.0, 1.0])
        if len(near) >= 3:
            _, _, vt = np.linalg.svd(near - near.mean(axis=0), full_matrices=False)
            axis = vt[0]
        along = xyz @ axis
        radial = np.linalg.norm(xyz - along[:, None] * axis, axis=1)
        sel = (np.abs(along) <= BLOOD_POOL_HALF_LENGTH_MM) & (radial <= BLOOD_POOL_RADIUS_MM)
        region = "cylinder 1 cm diameter x 2 cm"
        fits = depth >= BLOOD_POOL_RADIUS_MM
    pts = coords[sel]
    vals = image.array[tuple(pts.T)].astype(np.float64)
    vals = vals[np.isfinite(vals)]
    return {
        "role": role,
        "region": region,
        "mean": _f(vals.mean()) if vals.size else None,
        "sd": _f(vals.std()) if vals.size else None,
        "max": _f(vals.max()) if vals.size else None,
        "voxels": int(vals.size),
        "volume_ml": int(vals.size) * image.voxel_volume_ml,
        "centre_ijk": _ijk(centre),
        "centre_mm": _mm(image, centre),
        "depth_mm": depth,
        "fits": bool(fits),
    }


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def _check_label_map(image: PETImage, label_map: np.ndarray) -> np.ndarray:
    lm = np.asarray(label_map)
    if lm.shape != image.shape:
        raise InputError(
            f"the label map has shape {lm.shape} but the PET image has shape {image.shape}; "
            "statistics need the label map on the PET's own grid"
        )
    if lm.dtype == bool:
        return lm.astype(np.int32)
    if not np.issubdtype(lm.dtype, np.integer):
        if not np.all(np.isfinite(lm)) or not np.array_equal(lm, np.round(lm)):
            raise InputError("the label map holds non-integer values; it must hold integer labels")
        lm = lm.astype(np.int64)
    if lm.size and lm.min() < 0:
        raise InputError("the label map holds negative values; labels must be 0 (background) or positive")
    return lm


def compute_stats(
    image: PETImage,
    label_map: np.ndarray,
    names: Mapping[int, str] | None = None,
    components: bool = False,
    *,
    kinds: Mapping[int, str] | None = None,
    peak_sampling: str = "fractional",
) -> dict[str, Any]:
    """Statistics of every object of ``label_map`` on ``image``'s own grid.

    Args:
        image: the PET; intensities in ``image.units`` (SUVbw, SUVlbm, Bq/mL ...).
        label_map: integer ``(I, J, K)`` array on the same grid as ``image.array`` (0 = background).
        names: label -> name; unnamed labels are called ``"object <label>"``.
        components: also split every label into 18-connected components: the ``objects`` list then
            holds one row per component (``component`` 1..n, largest first) instead of per label.
        kinds: label -> ``"lesion"`` or ``"organ"``; overrides the name rules of :func:`classify`.
        peak_sampling: ``"fractional"`` (default) or ``"centres"``, see :func:`sphere_kernel`.

    Returns:
        JSON-able dict: ``units``, ``image`` (path, shape, spacing_mm, voxel_volume_ml),
        ``definitions``, ``objects`` (list of dicts with the keys of :data:`OBJECT_COLUMNS`; volumes in
        mL, positions as (i, j, k) voxel indices or RAS mm), ``patient`` (lesion_count, total_mtv_ml,
        total_tlg, suv_max over lesions, reference regions, ratios) and ``reference``.

    Raises:
        InputError: the label map does not match the image's shape or holds non-integer/negative labels.
    """
    lm = _check_label_map(image, label_map)
    names = {int(k): str(v) for k, v in (names or {}).items()}
    kinds = {int(k): str(v) for k, v in (kinds or {}).items()}
    finite = np.isfinite(image.array)
    kernel = sphere_kernel(image.affine[:3, :3], PEAK_RADIUS_MM, sampling=peak_sampling)
    boxes = ndimage.find_objects(lm) if lm.size and lm.max() > 0 else []
    half = tuple(s // 2 for s in kernel.shape)
    outers = [_expand(b, half, lm.shape) for b in boxes if b is not None]
    work = sum(math.prod(s.stop - s.start for s in o) for o in outers)
    full_means = None
    if work > lm.size // 2:  # many or large objects: one convolution of the whole image is cheaper
        full_means = _sphere_means(image.array, finite, kernel)
    objects: list[dict[str, Any]] = []
    references: dict[str, dict[str, Any]] = {}
    for index, box in enumerate(boxes):
        if box is None:
            continue
        label = index + 1
        mask = lm[box] == label
        name = names.get(label, f"object {label}")
        kind, role = classify(names.get(label), kinds.get(label))
        cc, n_cc = _components(mask)
        head = {"label": label, "name": name, "kind": kind, "reference": role}
        if role is not None:
            full = np.zeros(lm.shape, dtype=bool)
            full[box] = mask
            ref = reference_region(image, full, role)
            prev = references.get(role)
            if prev is None or prev["object_voxels"] < int(mask.sum()):
                references[role] = {"label": label, "name": name, "object_voxels": int(mask.sum()), **ref}
        if components and n_cc > 1:
            offset = [s.start for s in box]
            for c, cbox in enumerate(ndimage.find_objects(cc)):
                gbox = tuple(slice(o + s.start, o + s.stop) for o, s in zip(offset, cbox))
                row = _object_row(image, finite, cc[cbox] == c + 1, gbox, kernel, full_means)
                objects.append({**head, "component": c + 1, "n_components": 1, **row})
        else:
            row = _object_row(image, finite, mask, box, kernel, full_means)
            objects.append({**head, "component": 1 if components else 0, "n_components": n_cc, **row})
    liver = references.get("liver")
    blood = references.get("blood_pool")
    liver_mean = liver["mean"] if liver else None
    blood_mean = blood["mean"] if blood else None
    for row in objects:
        sm = row.get("suv_max")
        row["ratio_to_liver"] = sm / liver_mean if sm is not None and liver_mean else None
        row["ratio_to_blood_pool"] = sm / blood_mean if sm is not None and blood_mean else None
    objects = [{key: row.get(key) for key in OBJECT_COLUMNS} for row in objects]  # fixed key order
    lesions = [r for r in objects if r["kind"] == "lesion"]
    hottest = max((r for r in lesions if r["suv_max"] is not None), key=lambda r: r["suv_max"], default=None)
    threshold = None
    if liver and liver["mean"] is not None:
        threshold = 1.5 * liver["mean"] + 2.0 * liver["sd"]
    elif blood and blood["mean"] is not None:
        threshold = 2.0 * blood["mean"] + 2.0 * blood["sd"]
    patient = {
        "lesion_count": len(lesions),
        "lesion_components": int(sum(r["n_components"] for r in lesions)),
        "total_mtv_ml": float(sum(r["mtv_ml"] for r in lesions)),
        "total_tlg": float(sum(r["tlg"] or 0.0 for r in lesions)),
        "suv_max": hottest["suv_max"] if hottest else None,
        "suv_max_label": hottest["label"] if hottest else None,
        "suv_max_name": hottest["name"] if hottest else None,
        "suv_peak_max": max((r["suv_peak"] for r in lesions if r["suv_peak"] is not None), default=None),
        "liver_mean": liver_mean,
        "liver_sd": liver["sd"] if liver else None,
        "blood_pool_mean": blood_mean,
        "blood_pool_sd": blood["sd"] if blood else None,
        "suv_max_to_liver": hottest["suv_max"] / liver_mean if hottest and liver_mean else None,
        "suv_max_to_blood_pool": hottest["suv_max"] / blood_mean if hottest and blood_mean else None,
        "percist_threshold": threshold,
    }
    return _jsonable(
        {
            "units": image.units,
            "image": {
                "path": None if image.path is None else str(image.path),
                "shape": list(image.shape),
                "spacing_mm": [float(s) for s in image.spacing],
                "voxel_volume_ml": image.voxel_volume_ml,
            },
            "definitions": {
                "suv_peak": f"max over object voxels of the mean in a {PEAK_VOLUME_ML:g} mL sphere "
                f"(radius {PEAK_RADIUS_MM:.4f} mm) centred on the voxel, {peak_sampling} voxel weights, "
                "image voxels outside the object included, sphere truncated at the image border",
                "connectivity": CONNECTIVITY,
                "sd_ddof": 0,
                "percist_threshold": "1.5 x liver mean + 2 x liver SD (else 2 x blood pool mean + 2 SD)",
            },
            "objects": objects,
            "patient": patient,
            "reference": references,
        }
    )  # plain Python types, NaN -> None: JSON-safe for the server


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _f(value)
    return value


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return json.dumps(_jsonable(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_stats(stats: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`compute_stats` output to ``path`` (atomically) and return the path.

    ``.json``: the whole dict (NaN written as null). ``.csv``: one row per object, columns ``units``
    then :data:`OBJECT_COLUMNS`; (i, j, k) and mm triples are JSON lists inside the cell, missing
    values are empty cells. The per-patient summary is only in the JSON.

    Raises:
        InputError: the suffix is neither .json nor .csv.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise InputError(f"cannot write statistics to {out}: the file name must end in .csv or .json")
    with atomic_path(out) as tmp:
        if suffix == ".json":
            tmp.write_text(json.dumps(_jsonable(dict(stats)), indent=2) + "\n", encoding="utf-8")
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["units", *OBJECT_COLUMNS])
                for row in stats["objects"]:
                    writer.writerow([stats["units"], *(_csv_cell(row.get(k)) for k in OBJECT_COLUMNS)])
    logger.info("wrote statistics of %d objects to %s", len(stats["objects"]), out)
    return out
