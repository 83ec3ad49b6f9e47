"""The interactive segmentation session: clicks in, 3D masks on the input grid out.

See docs/session.md for the geometry, the crop policy, auto-extension, the overlap policy and the
journal format. Coordinates in this API are voxel indices ``(i, j, k)`` of the *input* image; every
mask returned is a ``bool`` array of the input's shape ``(I, J, K)``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from seganypet.errors import ImageContentError, InputError, PromptError, SessionStateError
from seganypet.geometry import nearest_index
from seganypet.image import PETImage
from seganypet.inference.engine import Engine, Window, resolve_device
from seganypet.inference.extension import negative_points, rebuild_extensions
from seganypet.inference.journal import rle_encode
from seganypet.inference.objects import ObjectsMixin, ObjectState
from seganypet.inference.zoom import rebuild_zoom

logger = logging.getLogger("seganypet.inference")

Region = tuple[slice, slice, slice]
LARGE_OBJECTS = ("extend", "zoom", "zoom-coarse", "none")


def _holds(raw: tuple[Region, np.ndarray] | None, vox: np.ndarray) -> bool:
    """Whether an object mask ``(region, block)`` contains input voxel ``vox``."""
    if raw is None:
        return False
    region, block = raw
    rel = [int(vox[q]) - region[q].start for q in range(3)]
    return all(0 <= rel[q] < block.shape[q] for q in range(3)) and bool(block[tuple(rel)])


class Session(ObjectsMixin):
    """Interactive promptable segmentation of one PET image.

    Args:
        model: ``"default"``, a model name or checkpoint path (``seganypet.build.load_model``) or a
            loaded ``Sam3D``-like module.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        overlap: ``"keep"`` (a voxel belongs to the earliest-created object whose mask holds it) or
            ``"replace"`` (the most recently created object takes it over).
        normalization: ``"model"`` (what ``model.config.normalization`` says), ``"zscore_nonzero"``,
            ``"suv_clip"`` or ``"none"`` (identity: for images already normalised).
        crop_policy: ``"pad"`` (crop centred on the first click, zero-padded beyond the image, as in
            training) or ``"shift"`` (moved inside the image).
        extend: handle objects larger than one crop (``False`` is ``large_objects="none"``).
        large_objects: what happens when a mask touches a crop face: ``"extend"`` (default: further
            full-resolution windows along the touched faces), ``"zoom"`` (a zoomed-out 3 mm pass, then
            full-resolution refine windows over its mask), ``"zoom-coarse"`` (the zoomed-out pass
            only) or ``"none"``. See docs/session.md for the comparison that chose the default.
        max_windows: bound on windows per object (extension stops there).
        extension_overlap: voxels (1.5 mm) an extension window shares with its parent.
        others_negative: give the other objects' masks in a crop to the model as negative points.
        undo_depth: operations kept for undo.
    """

    def __init__(
        self,
        model: Any = "default",
        device: str | torch.device = "cpu",
        *,
        overlap: str = "keep",
        normalization: str = "model",
        crop_policy: str = "pad",
        extend: bool = True,
        large_objects: str = "extend",
        max_windows: int = 8,
        extension_overlap: int = 32,
        others_negative: bool = False,
        undo_depth: int = 100,
    ) -> None:
        if overlap not in ("keep", "replace"):
            raise InputError(f"overlap must be 'keep' or 'replace', not {overlap!r}.")
        if crop_policy not in ("pad", "shift"):
            raise InputError(f"crop_policy must be 'pad' or 'shift', not {crop_policy!r}.")
        self.device = resolve_device(device)
        if isinstance(model, (str, os.PathLike)):
            from seganypet.build import load_model

            model = load_model(str(model), device=str(self.device))
        model = model.to(self.device).eval()
        self.model = model
        self.overlap = overlap
        self.crop_policy = crop_policy
        if large_objects not in LARGE_OBJECTS:
            raise InputError(
                f"large_objects must be one of {', '.join(LARGE_OBJECTS)}, not {large_objects!r}."
            )
        self.large_objects = large_objects if extend else "none"
        self.max_windows = int(max_windows)
        self.extension_overlap = int(extension_overlap)
        self.others_negative = others_negative
        self.undo_depth = int(undo_depth)
        self.engine = Engine(model, self.device, normalization)
        self._image: PETImage | None = None
        self._clear()
        #: seconds spent in the phases of the last operation (``total_s``, ``encoder_s``, ...)
        self.last_timing: dict[str, float] = {}

    # --- state --------------------------------------------------------------------------------
    def _clear(self) -> None:
        self._objects: dict[int, ObjectState] = {}
        self._active: int | None = None
        self._next_label = 1
        self._undo: list[tuple[dict[int, ObjectState], int | None, int]] = []
        self._redo: list[tuple[dict[int, ObjectState], int | None, int]] = []
        self._journal: list[dict[str, Any]] = []
        self._raw_cache: dict[int, tuple[ObjectState, tuple[Region, np.ndarray] | None]] = {}
        self._labelmap_cache: tuple[tuple[Any, ...], np.ndarray] | None = None

    def _snapshot(self) -> tuple[dict[int, ObjectState], int | None, int]:
        return dict(self._objects), self._active, self._next_label

    def _commit(self, objects: dict[int, ObjectState], active: int | None, event: dict[str, Any]) -> None:
        self._undo.append(self._snapshot())
        del self._undo[: max(0, len(self._undo) - self.undo_depth)]
        self._redo.clear()
        self._objects, self._active = objects, active
        self._next_label = max([self._next_label, *[k + 1 for k in objects]])
        self._journal.append(event)

    def _require_image(self) -> None:
        if self._image is None:
            raise SessionStateError("No image is loaded: call set_image first.")

    def _require_active(self) -> ObjectState:
        self._require_image()
        if self._active is None:
            raise SessionStateError("There is no object: add a point or call new_object first.")
        return self._objects[self._active]

    # --- image --------------------------------------------------------------------------------
    def set_image(self, image: PETImage | np.ndarray, affine: np.ndarray | None = None) -> None:
        """Load an image (clears all objects and the journal).

        Args:
            image: a :class:`PETImage`, or a float array ``(I, J, K)`` with ``affine``.
            affine: ``(4, 4)`` voxel-to-RAS-mm for an array (default identity: 1 mm voxels).

        The canonical RAS+ 1.5 mm model grid is set up once here; crops are resampled from the
        input on demand (identical to resampling the whole image, far less memory).
        """
        t0 = time.perf_counter()
        if not isinstance(image, PETImage):
            arr = np.asarray(image)
            if arr.ndim != 3:
                raise ImageContentError(f"The image must be 3D, got an array of shape {arr.shape}.")
            image = PETImage(arr, np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64))
        if image.array.ndim != 3 or min(image.shape) < 1:
            raise ImageContentError(f"The image must be a non-empty 3D volume, got shape {image.shape}.")
        bad = int(np.size(image.array) - np.count_nonzero(np.isfinite(image.array)))
        if bad:
            raise ImageContentError(f"The image has {bad} NaN/Inf voxel(s); replace them before segmenting.")
        try:
            self.engine.set_image(image.array, image.affine)
        except ValueError as err:
            raise ImageContentError(f"The image geometry is unusable: {err}.") from err
        if self.engine.normalization == "suv_clip" and not image.is_suv:
            logger.warning(
                "the model expects SUV (suv_clip normalisation) but the image is in %s", image.units
            )
        self._image = image
        self._clear()
        self.last_timing = {"total_s": time.perf_counter() - t0}

    @property
    def image(self) -> PETImage:
        """The loaded :class:`PETImage`."""
        self._require_image()
        assert self._image is not None
        return self._image

    @property
    def model_grid(self) -> tuple[tuple[int, int, int], np.ndarray]:
        """``(shape, affine)`` of the canonical 1.5 mm grid the model sees."""
        self._require_image()
        assert self.engine.grid is not None
        return self.engine.grid.shape, self.engine.grid.affine

    # --- prompts ------------------------------------------------------------------------------
    def _parse_point(self, ijk: Any, what: str = "Point") -> tuple[np.ndarray, np.ndarray]:
        """-> (input voxel index (3,) int, model voxel index (3,) int)."""
        self._require_image()
        assert self.engine.grid is not None
        try:
            p = np.asarray(ijk, dtype=np.float64)
        except (TypeError, ValueError):
            raise PromptError(f"{what} {ijk!r} is not three numbers (i, j, k).") from None
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise PromptError(f"{what} {ijk!r} is not three finite voxel indices (i, j, k).")
        shape = np.asarray(self.image.shape)
        if np.any(p < -0.5) or np.any(p >= shape - 0.5):
            txt = ", ".join(f"{v:g}" for v in p)
            raise PromptError(
                f"{what} (i, j, k) = ({txt}) lies outside the image of shape {'x'.join(map(str, shape))}."
            )
        vox = np.floor(p + 0.5).astype(np.int64)
        m = nearest_index(self.engine.grid.input_to_model(vox))
        m = np.clip(m, 0, np.asarray(self.engine.grid.shape) - 1)
        return vox, m

    def _owner(self, obj: ObjectState, m: Sequence[int]) -> int | None:
        s = self.engine.size
        best, best_d = None, None
        for i, w in enumerate(obj.windows):
            if w.scale != 1 or not w.contains(m, s):
                continue
            d = max(abs(m[a] - (w.origin[a] + s / 2 - 0.5)) for a in range(3))
            if best_d is None or d < best_d:
                best, best_d = i, d
        return best

    def _finish(
        self, obj: ObjectState, windows: list[Window], event: dict[str, Any], t0: float
    ) -> np.ndarray:
        t1 = time.perf_counter()
        if self.large_objects == "extend":
            new = rebuild_extensions(
                self.engine, windows, max_windows=self.max_windows, overlap=self.extension_overlap
            )
        elif self.large_objects in ("zoom", "zoom-coarse"):
            new = rebuild_zoom(
                self.engine,
                windows,
                max_windows=self.max_windows,
                overlap=self.extension_overlap,
                refine=self.large_objects == "zoom",
            )
        else:
            new = tuple(windows)
        t2 = time.perf_counter()
        objects = dict(self._objects)
        objects[obj.label] = replace(obj, windows=new, n_prompts=obj.n_prompts + 1)
        self._commit(objects, obj.label, event)
        mask = self.mask()
        t3 = time.perf_counter()
        self.last_timing = {
            "total_s": t3 - t0,
            "extension_s": t2 - t1,
            "paste_s": t3 - t2,
            "windows": float(len(new)),
            **{k: v for k, v in self.engine.timings.items()},
        }
        return mask

    def _negatives(self, obj: ObjectState, origin: Sequence[int]) -> list[tuple[tuple[float, ...], int]]:
        """One negative point per other object present in the crop (``others_negative``)."""
        if not self.others_negative:
            return []
        raws = [self._raw(k) for k in self._objects if k != obj.label]
        return negative_points(self.engine, [r for r in raws if r is not None], origin)

    def _predict_in(
        self,
        obj: ObjectState,
        m: np.ndarray,
        point: tuple[tuple[float, ...], int] | None,
        box: Any = None,
    ) -> list[Window]:
        """Update (or create) the window of ``obj`` owning model voxel ``m`` with a point and/or box."""
        windows = list(obj.windows)
        idx = self._owner(obj, m)
        s = self.engine.size
        if idx is not None and box is not None:
            w = windows[idx]
            if not (w.contains(box[0], s) and w.contains(box[1], s)):
                idx = None  # the box does not fit the existing window: a new one centred on the box
        if idx is None:
            origin = self.engine.centred_origin(m, self.crop_policy)
            prior = self.engine.downsampled_mask_prompt(origin, self._raw_of(obj))
            w = Window(origin, "click", (), (), None, np.zeros((1, 1, 1), np.float32))
            windows.append(w)
            idx = len(windows) - 1
            mask_prompt = prior
        else:
            w = windows[idx]
            mask_prompt = w.logits
        points, labels = list(w.points), list(w.labels)
        if point is not None:
            crop_pt = tuple(float(v) for v in (np.asarray(point[0]) - np.asarray(w.origin)))
            points.append(crop_pt)  # type: ignore[arg-type]
            labels.append(point[1])
        new_box = w.box
        if box is not None:
            lo = np.asarray(box[0]) - np.asarray(w.origin)
            hi = np.asarray(box[1]) - np.asarray(w.origin)
            if np.any(lo < 0) or np.any(hi > s - 1):
                raise PromptError(
                    f"The box does not fit in one {s}-voxel crop of the model grid "
                    f"({s * 1.5:g} mm); draw a smaller box or use points."
                )
            new_box = (tuple(map(float, lo)), tuple(map(float, hi)))
        extra = self._negatives(obj, w.origin)
        logits = self.engine.decode(
            w.origin,
            points + [p for p, _ in extra],
            labels + [lab for _, lab in extra],
            new_box,
            mask_prompt,
        )
        windows[idx] = Window(w.origin, "click", tuple(points), tuple(labels), new_box, logits)  # type: ignore[arg-type]
        return windows

    def add_point(self, ijk: Sequence[float], positive: bool = True) -> np.ndarray:
        """Add a click to the active object (creating object 1 when there is none).

        Args:
            ijk: voxel indices ``(i, j, k)`` of the input image (the voxel containing the point).
            positive: ``True`` inside the object, ``False`` for a correction outside it.

        Returns:
            ``bool (I, J, K)``: the active object's mask on the input grid.

        Raises:
            PromptError: the point is malformed or outside the image; the first click is negative.
        """
        t0 = time.perf_counter()
        vox, m = self._parse_point(ijk)
        if self._active is None:
            if not positive:
                raise PromptError("The first click of an object must be positive.")
            self.new_object()
        obj = self._objects[self._active]  # type: ignore[index]
        event = {
            "op": "add_point",
            "label": obj.label,
            "ijk": [float(v) for v in ijk],
            "positive": bool(positive),
        }
        self.engine.timings = {}
        if self._owner(obj, m) is None and not positive:
            if not obj.windows and obj.base is None:
                raise PromptError("The first click of an object must be positive.")
        raw = self._raw_of(obj) if not positive else None
        if self._owner(obj, m) is None and not positive and not _holds(raw, vox):
            # a negative click away from the object's windows and mask cannot remove anything: recorded
            objects = dict(self._objects)
            objects[obj.label] = replace(obj, n_prompts=obj.n_prompts + 1)
            self._commit(objects, obj.label, event)
            return self.mask()
        windows = self._predict_in(obj, m, (tuple(float(v) for v in m), 1 if positive else 0))
        return self._finish(obj, windows, event, t0)

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float]) -> np.ndarray:
        """Add a box (two opposite corner voxels, inclusive) to the active object.

        Raises:
            PromptError: the model was not trained with boxes, a corner is outside the image, or the
                box is larger than one crop (192 mm).
        """
        t0 = time.perf_counter()
        if not bool(getattr(self.model, "supports_boxes", False)):
            raise PromptError("This model was not trained with boxes; use points instead.")
        _, ma = self._parse_point(corner_a, "Box corner")
        _, mb = self._parse_point(corner_b, "Box corner")
        lo, hi = np.minimum(ma, mb), np.maximum(ma, mb)
        if self._active is None:
            self.new_object()
        obj = self._objects[self._active]  # type: ignore[index]
        centre = (lo + hi) // 2
        event = {
            "op": "add_box",
            "label": obj.label,
            "corner_a": [float(v) for v in corner_a],
            "corner_b": [float(v) for v in corner_b],
        }
        self.engine.timings = {}
        windows = self._predict_in(obj, centre, None, box=(lo, hi))
        return self._finish(obj, windows, event, t0)

    def set_mask(self, mask: np.ndarray) -> np.ndarray:
        """Give the active object an initial segmentation (``bool (I, J, K)`` on the input grid);
        later clicks refine it (their crops start from it as the mask prompt)."""
        self._require_image()
        mask = np.asarray(mask)
        if mask.shape != self.image.shape:
            raise InputError(f"The mask has shape {mask.shape}, the image {self.image.shape}.")
        mask = mask.astype(bool)
        if self._active is None:
            self.new_object()
        obj = self._objects[self._active]  # type: ignore[index]
        nz = np.argwhere(mask)
        base = None
        if len(nz):
            lo, hi = nz.min(0), nz.max(0) + 1
            region = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
            block = mask[region].copy()
            block.setflags(write=False)
            base = (region, block)
        objects = dict(self._objects)
        objects[obj.label] = replace(obj, windows=(), base=base, n_prompts=obj.n_prompts + 1)
        event = {"op": "set_mask", "label": obj.label, "shape": list(mask.shape), "rle": rle_encode(mask)}
        self._commit(objects, obj.label, event)
        return self.mask()

    def reset(self) -> np.ndarray:
        """Remove all prompts and the mask of the active object (the object stays)."""
        obj = self._require_active()
        objects = dict(self._objects)
        objects[obj.label] = ObjectState(obj.label, obj.name)
        self._commit(objects, obj.label, {"op": "reset", "label": obj.label})
        return self.mask()

    def undo(self) -> np.ndarray:
        """Revert the last operation; returns the (then) active object's mask."""
        self._require_image()
        if not self._undo:
            raise SessionStateError("Nothing to undo.")
        self._redo.append(self._snapshot())
        self._objects, self._active, self._next_label = self._undo.pop()
        self._journal.append({"op": "undo"})
        return self.mask()

    def redo(self) -> np.ndarray:
        """Re-apply the last undone operation; returns the active object's mask."""
        self._require_image()
        if not self._redo:
            raise SessionStateError("Nothing to redo.")
        self._undo.append(self._snapshot())
        self._objects, self._active, self._next_label = self._redo.pop()
        self._journal.append({"op": "redo"})
        return self.mask()

    # --- results ------------------------------------------------------------------------------
    def _raw_of(self, obj: ObjectState) -> tuple[Region, np.ndarray] | None:
        hit = self._raw_cache.get(obj.label)
        if hit is not None and hit[0] is obj:
            return hit[1]
        raw = self.engine.merge_windows(obj.windows, obj.base)
        self._raw_cache[obj.label] = (obj, raw)
        return raw

    def _raw(self, label: int) -> tuple[Region, np.ndarray] | None:
        return self._raw_of(self._objects[label])

    def _priority(self) -> list[int]:
        """Labels, highest priority first."""
        labels = list(self._objects)
        return labels if self.overlap == "keep" else labels[::-1]

    def mask(self, label: int | str | None = None) -> np.ndarray:
        """``bool (I, J, K)`` mask of an object (default: the active one) as it is in the label map
        (voxels claimed by an object of higher priority excluded)."""
        self._require_image()
        out = np.zeros(self.image.shape, bool)
        if label is None:
            if self._active is None:
                return out
            label = self._active
        label = self._resolve(label)
        raw = self._raw(label)
        if raw is None:
            return out
        region, block = raw
        block = block.copy()
        for k in self._priority():
            if k == label:
                break
            other = self._raw(k)
            if other is None:
                continue
            r2, b2 = other
            lo = [max(region[q].start, r2[q].start) for q in range(3)]
            hi = [min(region[q].stop, r2[q].stop) for q in range(3)]
            if any(hi[q] <= lo[q] for q in range(3)):
                continue
            a = tuple(slice(lo[q] - region[q].start, hi[q] - region[q].start) for q in range(3))
            b = tuple(slice(lo[q] - r2[q].start, hi[q] - r2[q].start) for q in range(3))
            block[a] &= ~b2[b]
        out[region] = block
        return out

    @property
    def label_map(self) -> np.ndarray:
        """``uint16 (I, J, K)`` label map of all objects on the input grid (0 background)."""
        self._require_image()
        key = (self.overlap, *self._objects.values())
        hit = self._labelmap_cache
        if hit is not None and len(hit[0]) == len(key) and all(a is b for a, b in zip(hit[0], key)):
            return hit[1].copy()
        out = np.zeros(self.image.shape, np.uint16)
        for k in reversed(self._priority()):  # lowest priority first, higher ones paint over
            raw = self._raw(k)
            if raw is None:
                continue
            region, block = raw
            out[region][block] = k
        self._labelmap_cache = (key, out)
        return out.copy()

    def low_res_logits(self, label: int | str | None = None, window: int = 0) -> np.ndarray:
        """``(M, M, M)`` low-res logits of one window of an object (default: active object, its
        first window), in the crop's model axis order."""
        self._require_image()
        label = self._active if label is None else self._resolve(label)
        if label is None or not self._objects[label].windows:
            raise SessionStateError("That object has no prediction yet.")
        return self._objects[label].windows[window].logits.copy()

    def windows(self, label: int | str | None = None) -> list[dict[str, Any]]:
        """The crops of an object: ``origin`` (model grid index), ``kind``, ``points``, ``labels``,
        ``box``, ``scale`` (model voxels per crop voxel)."""
        self._require_image()
        label = self._active if label is None else self._resolve(label)
        if label is None:
            return []
        return [
            {
                "origin": list(w.origin),
                "kind": w.kind,
                "points": [list(p) for p in w.points],
                "labels": list(w.labels),
                "box": None if w.box is None else [list(c) for c in w.box],
                "scale": w.scale,
            }
            for w in self._objects[label].windows
        ]

    # --- journal ------------------------------------------------------------------------------
    def journal(self) -> list[dict[str, Any]]:
        """JSON-able list of every operation since :meth:`set_image`, in order (undo/redo included)."""
        return [dict(e) for e in self._journal]

    def replay(self, events: Iterable[dict[str, Any]]) -> None:
        """Rebuild the state from a :meth:`journal` (on the same image and model): clears the
        objects, then applies every event in order (see :mod:`seganypet.inference.journal`)."""
        from seganypet.inference.journal import apply_events

        self._require_image()
        self._clear()
        apply_events(self, events)

    @classmethod
    def restore(
        cls, image: PETImage, events: Iterable[dict[str, Any]], model: Any = "default", **options: Any
    ) -> Session:
        """A new session on ``image`` with the state a :meth:`journal` describes."""
        session = cls(model, **options)
        session.set_image(image)
        session.replay(events)
        return session
