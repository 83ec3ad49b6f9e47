"""Simulated users: the click protocols of the evaluation.

A click is ``((i, j, k), positive)`` in voxel indices of the evaluated image. The simulated user
knows the reference (that is what makes it a simulation) and sees the current prediction; it never
sees anything else of a method (no logits, no scores).

SAM-Med3D protocol (:func:`first_click`, :func:`next_click`), one object at a time:
    click 1 is drawn uniformly among the object's reference voxels; every later click goes into the
    current error region, positive in a false-negative voxel, negative in a false-positive voxel.
    ``mode="random"`` (SAM-Med3D's default validation click, ``get_next_click3D_torch_2``): uniform
    over all error voxels. ``mode="center"`` (RITM style): the voxel farthest (Euclidean, in mm) from
    the boundary of the largest error component (FN and FP components taken separately,
    26-connectivity, ties to the first voxel in C order).

autoPET IV protocol (:func:`autopet_clicks`), after the challenge's ``simulate_clicks.py``
(lab-midas/autoPETCTIV): up to 10 tumour clicks at the distance-transform maxima (voxel units, as in
the challenge code) of up to 10 randomly chosen reference lesion components (26-connectivity); when
there are fewer than 10 components, further tumour clicks go to random boundary voxels (distance 1
voxel) of the chosen components in turn. Background clicks: the voxels hotter than the 99.75th
percentile of the non-lesion voxels form components; up to 10 of them are chosen at random and
clicked at their distance-transform maxima, then (as the challenge code effectively does) at random
voxels of the chosen components in turn. Step ``s`` (0..10) uses the first ``s`` tumour and the first
``s`` background clicks. The clicks do not depend on the prediction.

Random streams: :func:`rng_for` derives a ``numpy.random.Generator`` from ``(seed, case id, object
key)`` with a stable hash, so that every method gets the same stream (and therefore the same first
click) and a re-run gives the same clicks.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

Click = tuple[tuple[int, int, int], bool]

CLICK_MODES = ("random", "center")
AUTOPET_BUDGET = 10
AUTOPET_PERCENTILE = 99.75


def rng_for(seed: int, *keys: Any) -> np.random.Generator:
    """A generator seeded by ``seed`` and any string/int keys (stable across runs and platforms)."""
    words = [int(seed) & 0xFFFFFFFF]
    for key in keys:
        words.append(zlib.crc32(str(key).encode("utf-8")) & 0xFFFFFFFF)
    return np.random.default_rng(words)


def _voxel(flat_index: int, shape: Sequence[int]) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.unravel_index(int(flat_index), tuple(shape)))  # type: ignore[return-value]


def _random_voxel(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    flat = np.flatnonzero(mask)
    return _voxel(flat[rng.integers(flat.size)], mask.shape)


def first_click(ref: np.ndarray, rng: np.random.Generator) -> Click:
    """Click 1 of the SAM-Med3D protocol: a uniformly random reference voxel, positive.

    ``ref``: bool ``(I, J, K)``, must not be empty.
    """
    ref = np.asarray(ref, dtype=bool)
    if not ref.any():
        raise ValueError("cannot click into an empty reference object")
    return _random_voxel(ref, rng), True


def _deepest_voxel(component: np.ndarray, spacing: Sequence[float] | None) -> tuple[int, int, int]:
    """Voxel of ``component`` farthest from its boundary (image border counts as boundary)."""
    padded = np.pad(component, 1)
    dist = ndimage.distance_transform_edt(padded, sampling=spacing)
    idx = _voxel(int(np.argmax(dist)), padded.shape)
    return tuple(v - 1 for v in idx)  # type: ignore[return-value]


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    import cc3d

    labels, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=26, return_N=True)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool), 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    best = int(np.argmax(sizes))
    return labels == best, int(sizes[best])


def next_click(
    pred: np.ndarray,
    ref: np.ndarray,
    rng: np.random.Generator,
    mode: str = "random",
    spacing: Sequence[float] | None = None,
) -> Click | None:
    """The next corrective click of the SAM-Med3D protocol, or ``None`` when there is no error.

    Args:
        pred, ref: bool ``(I, J, K)``.
        rng: the object's random stream (used by ``mode="random"``; ``"center"`` is deterministic).
        mode: ``"random"`` or ``"center"`` (see the module docstring).
        spacing: voxel size in mm for the distance transform of ``"center"``.

    Returns:
        ``((i, j, k), positive)``: positive when the voxel is a false negative.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    fn = ref & ~pred
    fp = pred & ~ref
    if not fn.any() and not fp.any():
        return None
    if mode == "random":
        ijk = _random_voxel(fn | fp, rng)
        return ijk, bool(fn[ijk])
    if mode != "center":
        raise ValueError(f"unknown click mode {mode!r}; choose one of {', '.join(CLICK_MODES)}")
    fn_comp, fn_size = _largest_component(fn)
    fp_comp, fp_size = _largest_component(fp)
    positive = fn_size >= fp_size
    comp = fn_comp if positive else fp_comp
    return _deepest_voxel(comp, spacing), positive


def autopet_clicks(
    ref: np.ndarray,
    suv: np.ndarray,
    rng: np.random.Generator,
    budget: int = AUTOPET_BUDGET,
    percentile: float = AUTOPET_PERCENTILE,
) -> dict[str, list]:
    """Pre-simulated clicks of the autoPET IV interactive protocol.

    Args:
        ref: bool ``(I, J, K)``, all reference lesions together.
        suv: SUV image ``(I, J, K)``.
        rng: random stream (component choice, boundary clicks).
        budget: clicks per kind (10 in the challenge).
        percentile: hot-background percentile of the non-lesion SUV (99.75).

    Returns:
        ``{"tumor": [(i,j,k), ...], "tumor_component": [int, ...], "background": [(i,j,k), ...]}``;
        ``tumor_component[n]`` is the id (1-based, 26-connectivity) of the reference component that
        tumour click ``n`` lies in, so that a per-object method can route it to "its" lesion.
    """
    import cc3d

    ref = np.asarray(ref, dtype=bool)
    suv = np.asarray(suv, dtype=np.float32)
    out: dict[str, list] = {"tumor": [], "tumor_component": [], "background": []}
    if ref.any():
        labels, n = cc3d.connected_components(ref.astype(np.uint8), connectivity=26, return_N=True)
        chosen = rng.choice(np.arange(1, n + 1), size=min(budget, n), replace=False)
        dts = {}
        for lab in chosen:
            comp = labels == lab
            dts[int(lab)] = ndimage.distance_transform_edt(comp)
            out["tumor"].append(_voxel(int(np.argmax(dts[int(lab)])), ref.shape))
            out["tumor_component"].append(int(lab))
        while len(out["tumor"]) < budget:
            for lab in chosen:
                dt = dts[int(lab)]
                boundary = (dt > 0) & (dt == dt[dt > 0].min())
                out["tumor"].append(_random_voxel(boundary, rng))
                out["tumor_component"].append(int(lab))
                if len(out["tumor"]) == budget:
                    break
    background = suv[~ref]
    if background.size:
        thr = float(np.percentile(background, percentile))
        hot = (suv > thr) & ~ref
        labels, n = cc3d.connected_components(hot.astype(np.uint8), connectivity=26, return_N=True)
        if n:
            chosen = rng.choice(np.arange(1, n + 1), size=min(budget, n), replace=False)
            for lab in chosen:
                dt = ndimage.distance_transform_edt(labels == lab)
                out["background"].append(_voxel(int(np.argmax(dt)), ref.shape))
            while len(out["background"]) < budget:
                for lab in chosen:
                    out["background"].append(_random_voxel(labels == lab, rng))
                    if len(out["background"]) == budget:
                        break
    return out
