"""Classical click-driven PET segmentation baselines and a Session-like engine around them.

:func:`segment_at_click` keeps the connected component(s) of a thresholded SUV image that the user's
positive clicks point at, and drops the components the negative clicks point at. Thresholds:

- ``"suv2.5"``: fixed SUV >= 2.5.
- ``"41pct"``: SUV >= 41 % of the *local* SUVmax, the maximum SUV inside a sphere of radius
  ``radius_mm`` (default 20 mm) around each positive click (EANM guideline's 41 % isocontour, with a
  local maximum so that a click on a faint lesion next to the bladder is not thresholded at the
  bladder's SUVmax). Each positive click uses its own threshold.
- ``"percist"``: PERCIST's threshold ``1.5 x liver SUVmean + 2 x liver SUV SD``, mean and standard
  deviation over the voxels of ``liver_mask`` (PERCIST asks for a 3 cm sphere in the right lobe; we
  use the whole given liver mask). Without a liver mask it raises :class:`InputError`.

Seed of a positive click: the clicked voxel when it passes the threshold, otherwise the hottest voxel
within ``radius_mm`` of the click when *that* passes (a user who clicks a voxel beside a lesion means
the lesion), otherwise the click adds nothing. The component containing the seed is added to the
mask (18-connectivity, the connectivity of the autoPET evaluation, so that a baseline's component is
one component for the lesion measures too).

Negative clicks remove the connected component of the mask that contains them, except the part
that positive clicks claim: inside a component holding both kinds of click, every voxel goes to its
nearest click (Euclidean distance in mm; positive clicks are represented by their seeds) and the
voxels nearest to a negative click are removed; islands this cuts off from every positive seed are
removed too. A component without a positive seed in it (possible only through merging) is removed
whole; a negative click outside the mask changes nothing. The result does not depend on the order
of the clicks.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from seganypet.errors import InputError, PromptError, SessionStateError
from seganypet.image import PETImage

logger = logging.getLogger("seganypet.evaluation.baselines")

METHODS = ("suv2.5", "41pct", "percist")
#: CLI/model names of the baselines -> ``segment_at_click`` method
ENGINE_NAMES = {"threshold-2.5": "suv2.5", "threshold-41": "41pct", "percist": "percist"}
DEFAULT_RADIUS_MM = 20.0
CONNECTIVITY = 18

Click = tuple[Sequence[int], bool]


def percist_threshold(suv: np.ndarray, liver_mask: np.ndarray | None) -> float:
    """PERCIST threshold ``1.5 * mean + 2 * SD`` of the SUV over ``liver_mask`` (bool (I,J,K))."""
    if liver_mask is None:
        raise InputError("the PERCIST baseline needs a liver mask, and none was given for this image")
    liver = np.asarray(liver_mask, dtype=bool)
    if liver.shape != suv.shape:
        raise InputError(f"the liver mask's shape {liver.shape} differs from the image's {suv.shape}")
    values = suv[liver]
    if values.size < 2:
        raise InputError("the liver mask given for the PERCIST baseline is empty")
    return float(1.5 * values.mean() + 2.0 * values.std())


def _sphere_slices(
    shape: Sequence[int], ijk: Sequence[int], spacing: Sequence[float], radius_mm: float
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Bounding box slices of a sphere (radius mm) around ``ijk`` and the sphere mask in that box."""
    sl, grids = [], []
    for c, n, s in zip(ijk, shape, spacing):
        r = int(np.floor(radius_mm / float(s)))
        lo, hi = max(0, int(c) - r), min(int(n), int(c) + r + 1)
        sl.append(slice(lo, hi))
        grids.append((np.arange(lo, hi) - int(c)) * float(s))
    gi, gj, gk = np.meshgrid(*grids, indexing="ij")
    return tuple(sl), (gi**2 + gj**2 + gk**2) <= radius_mm**2


def _local_peak(
    suv: np.ndarray, ijk: Sequence[int], spacing: Sequence[float], radius_mm: float
) -> tuple[float, tuple[int, int, int]]:
    """(max SUV, its voxel) within ``radius_mm`` of ``ijk``."""
    sl, ball = _sphere_slices(suv.shape, ijk, spacing, radius_mm)
    box = np.where(ball, suv[sl], -np.inf)
    flat = int(np.argmax(box))
    local = np.unravel_index(flat, box.shape)
    peak = tuple(int(s.start + o) for s, o in zip(sl, local))
    return float(box[local]), peak  # type: ignore[return-value]


def _check_ijk(ijk: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        t = tuple(int(round(float(v))) for v in ijk)
    except (TypeError, ValueError) as err:
        raise PromptError(f"click {ijk!r} is not three voxel indices (i, j, k)") from err
    if len(t) != 3 or any(not 0 <= v < n for v, n in zip(t, shape)):
        raise PromptError(f"click {tuple(ijk)} lies outside the image of shape {tuple(shape)}")
    return t  # type: ignore[return-value]


def _component_at(binary: np.ndarray, seed: tuple[int, int, int]) -> np.ndarray:
    import cc3d

    labels = cc3d.connected_components(binary.astype(np.uint8), connectivity=CONNECTIVITY)
    lab = labels[seed]
    if lab == 0:
        return np.zeros(binary.shape, dtype=bool)
    return labels == lab


def segment_at_click(
    suv: np.ndarray,
    spacing: Sequence[float],
    clicks: Sequence[Click],
    method: str = "suv2.5",
    liver_mask: np.ndarray | None = None,
    radius_mm: float = DEFAULT_RADIUS_MM,
) -> np.ndarray:
    """Threshold-and-component segmentation driven by clicks.

    Args:
        suv: SUV image, float array ``(I, J, K)``.
        spacing: voxel size in mm along ``i, j, k``.
        clicks: ``[((i, j, k), positive), ...]`` in voxel indices of ``suv``, applied in order.
        method: ``"suv2.5"``, ``"41pct"`` or ``"percist"`` (see the module docstring).
        liver_mask: bool ``(I, J, K)``, required by ``"percist"``.
        radius_mm: radius of the neighbourhood for the local SUVmax and the seed search.

    Returns:
        bool mask ``(I, J, K)``.
    """
    suv = np.asarray(suv, dtype=np.float32)
    if suv.ndim != 3:
        raise InputError(f"the SUV image must be 3D (I, J, K), got shape {suv.shape}")
    if method not in METHODS:
        raise InputError(f"unknown baseline method {method!r}; choose one of {', '.join(METHODS)}")
    fixed = None
    if method == "suv2.5":
        fixed = 2.5
    elif method == "percist":
        fixed = percist_threshold(suv, liver_mask)
    mask = np.zeros(suv.shape, dtype=bool)
    seeds: list[tuple[int, int, int]] = []
    negatives: list[tuple[int, int, int]] = []
    for ijk, positive in clicks:
        c = _check_ijk(ijk, suv.shape)
        if not positive:
            negatives.append(c)
            continue
        peak_val, peak = _local_peak(suv, c, spacing, radius_mm)
        thr = fixed if fixed is not None else 0.41 * peak_val
        if suv[c] >= thr:
            seed = c
        elif peak_val >= thr:
            seed = peak
        else:
            logger.debug("positive click %s: nothing above %.3g within %g mm", c, thr, radius_mm)
            continue
        seeds.append(seed)
        mask |= _component_at(suv >= thr, seed)
    negatives = [c for c in negatives if mask[c]]
    if negatives:
        mask = _apply_negatives(mask, seeds, negatives, spacing)
    return mask


def _apply_negatives(
    mask: np.ndarray,
    seeds: list[tuple[int, int, int]],
    negatives: list[tuple[int, int, int]],
    spacing: Sequence[float],
) -> np.ndarray:
    """Remove, in each component holding a negative click, the voxels nearest to a negative click."""
    import cc3d

    labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=CONNECTIVITY)
    out = mask.copy()
    sp = np.asarray(spacing, dtype=np.float64)
    for lab in sorted({int(labels[c]) for c in negatives}):
        comp = labels == lab
        pos = [s for s in seeds if labels[s] == lab]
        if not pos:
            out &= ~comp
            continue
        neg = [c for c in negatives if labels[c] == lab]
        vox = np.argwhere(comp).astype(np.float64) * sp
        d_pos = np.min([np.linalg.norm(vox - np.asarray(p) * sp, axis=1) for p in pos], axis=0)
        d_neg = np.min([np.linalg.norm(vox - np.asarray(n) * sp, axis=1) for n in neg], axis=0)
        drop = np.argwhere(comp)[d_neg < d_pos]
        out[tuple(drop.T)] = False
    # islands cut off by the removal are dropped: keep the components holding a positive seed
    labels = cc3d.connected_components(out.astype(np.uint8), connectivity=CONNECTIVITY)
    keep = {int(labels[s]) for s in seeds} - {0}
    return np.isin(labels, sorted(keep)) if keep else np.zeros_like(out)


class ThresholdEngine:
    """A Session-like object running a baseline (the subset of ``seganypet.inference.Session`` that
    interactive use needs): ``set_image``, ``new_object``, ``select_object``, ``delete_object``,
    ``rename_object``, ``objects``, ``active_label``, ``add_point``, ``undo``, ``redo``, ``reset``,
    ``mask``, ``label_map``, ``names``, ``image``, ``journal``.

    Masks are on the input grid ``(I, J, K)``. In ``label_map`` an earlier object keeps voxels that a
    later object also claims (overlap ``"keep"``). ``add_box``/``set_mask`` are not supported.

    Args:
        method: ``"suv2.5"``, ``"41pct"``, ``"percist"`` or an engine name from ``ENGINE_NAMES``
            (``"threshold-2.5"``, ``"threshold-41"``, ``"percist"``).
        radius_mm: see :func:`segment_at_click`.
        liver_mask: bool ``(I, J, K)`` for ``"percist"`` (or call :meth:`set_liver_mask`).
    """

    def __init__(
        self,
        method: str = "41pct",
        *,
        radius_mm: float = DEFAULT_RADIUS_MM,
        liver_mask: np.ndarray | None = None,
    ) -> None:
        method = ENGINE_NAMES.get(method, method)
        if method not in METHODS:
            raise InputError(
                f"unknown baseline {method!r}; choose one of {', '.join([*ENGINE_NAMES, *METHODS])}"
            )
        self.method = method
        self.radius_mm = float(radius_mm)
        self.liver_mask = None if liver_mask is None else np.asarray(liver_mask, dtype=bool)
        self._image: PETImage | None = None
        self._objects: dict[int, dict[str, Any]] = {}
        self._active: int | None = None
        self._events: list[dict[str, Any]] = []

    # -- image ---------------------------------------------------------------------------------
    def set_image(self, image: PETImage | np.ndarray, affine: np.ndarray | None = None) -> None:
        """Set the SUV image (a PETImage, or an array ``(I,J,K)`` with a 4x4 ``affine``, default 1 mm)."""
        if not isinstance(image, PETImage):
            image = PETImage(np.asarray(image), np.eye(4) if affine is None else affine, units="SUVbw")
        self._image = image
        self._objects = {}
        self._active = None
        self._events = [{"op": "set_image", "shape": list(image.shape)}]

    def set_liver_mask(self, liver_mask: np.ndarray | None) -> None:
        """Liver mask bool ``(I, J, K)`` for the PERCIST threshold."""
        self.liver_mask = None if liver_mask is None else np.asarray(liver_mask, dtype=bool)

    @property
    def image(self) -> PETImage:
        if self._image is None:
            raise SessionStateError("no image is set; call set_image first")
        return self._image

    # -- objects -------------------------------------------------------------------------------
    def new_object(self, name: str | None = None) -> int:
        self.image  # noqa: B018  (raises without an image)
        label = max(self._objects, default=0) + 1
        self._objects[label] = {
            "name": name or f"object {label}",
            "clicks": [],
            "undo": [],
            "redo": [],
            "mask": np.zeros(self.image.shape, dtype=bool),
        }
        self._active = label
        self._events.append({"op": "new_object", "label": label, "name": self._objects[label]["name"]})
        return label

    def _label(self, label: int | str | None) -> int:
        if label is None:
            if self._active is None:
                raise SessionStateError("no object is selected")
            return self._active
        if isinstance(label, str) and not label.isdigit():
            for lab, obj in self._objects.items():
                if obj["name"] == label:
                    return lab
            raise SessionStateError(f"there is no object named {label!r}")
        lab = int(label)
        if lab not in self._objects:
            raise SessionStateError(f"there is no object with label {lab}")
        return lab

    def select_object(self, label: int | str) -> None:
        self._active = self._label(label)

    def delete_object(self, label: int) -> None:
        lab = self._label(label)
        del self._objects[lab]
        if self._active == lab:
            self._active = max(self._objects, default=None)
        self._events.append({"op": "delete_object", "label": lab})

    def rename_object(self, label: int, name: str) -> None:
        self._objects[self._label(label)]["name"] = str(name)

    @property
    def active_label(self) -> int | None:
        return self._active

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [
            {"label": lab, "name": o["name"], "voxels": int(o["mask"].sum()), "n_prompts": len(o["clicks"])}
            for lab, o in sorted(self._objects.items())
        ]

    @property
    def names(self) -> dict[int, str]:
        return {lab: o["name"] for lab, o in sorted(self._objects.items())}

    # -- prompts -------------------------------------------------------------------------------
    def _recompute(self, obj: dict[str, Any]) -> np.ndarray:
        img = self.image
        obj["mask"] = segment_at_click(
            img.array, img.spacing, obj["clicks"], self.method, self.liver_mask, self.radius_mm
        )
        return obj["mask"].copy()

    def add_point(self, ijk: Sequence[int], positive: bool = True) -> np.ndarray:
        """Add a click to the active object (creates object 1 if none); bool mask ``(I,J,K)``."""
        c = _check_ijk(ijk, self.image.shape)
        if self._active is None:
            self.new_object()
        obj = self._objects[self._label(None)]
        obj["undo"].append(list(obj["clicks"]))
        obj["redo"].clear()
        obj["clicks"].append((c, bool(positive)))
        self._events.append({"op": "add_point", "label": self._active, "ijk": list(c), "positive": positive})
        return self._recompute(obj)

    def undo(self) -> np.ndarray:
        obj = self._objects[self._label(None)]
        if not obj["undo"]:
            raise SessionStateError("nothing to undo")
        obj["redo"].append(list(obj["clicks"]))
        obj["clicks"] = obj["undo"].pop()
        self._events.append({"op": "undo", "label": self._active})
        return self._recompute(obj)

    def redo(self) -> np.ndarray:
        obj = self._objects[self._label(None)]
        if not obj["redo"]:
            raise SessionStateError("nothing to redo")
        obj["undo"].append(list(obj["clicks"]))
        obj["clicks"] = obj["redo"].pop()
        self._events.append({"op": "redo", "label": self._active})
        return self._recompute(obj)

    def reset(self) -> np.ndarray:
        obj = self._objects[self._label(None)]
        obj["undo"].append(list(obj["clicks"]))
        obj["redo"].clear()
        obj["clicks"] = []
        self._events.append({"op": "reset", "label": self._active})
        return self._recompute(obj)

    def mask(self, label: int | None = None) -> np.ndarray:
        return self._objects[self._label(label)]["mask"].copy()

    @property
    def label_map(self) -> np.ndarray:
        out = np.zeros(self.image.shape, dtype=np.uint16)
        for lab, obj in sorted(self._objects.items()):
            out[obj["mask"] & (out == 0)] = lab
        return out

    def journal(self) -> list[dict[str, Any]]:
        """JSON-able list of the events so far."""
        return copy.deepcopy(self._events)


def make_baseline_engine(name: str, **kwargs: Any) -> ThresholdEngine | None:
    """A :class:`ThresholdEngine` for a baseline model name (``threshold-2.5``, ``threshold-41``,
    ``percist``), or ``None`` when ``name`` names no baseline (then it is a network model)."""
    if name in ENGINE_NAMES:
        return ThresholdEngine(ENGINE_NAMES[name], **kwargs)
    return None
