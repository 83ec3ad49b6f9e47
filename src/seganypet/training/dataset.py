"""Training samples: a random object of a random case, a 128^3 crop around it, augmentation.

All arrays are on the store grid (canonical RAS+, 1.5 mm, axes (i, j, k)). A sample is

- ``image``: float32 ``(1, S, S, S)`` (S = model image size, 128), normalised as the Session does
  (default: the published z-score, ``(x - mean) / std`` with mean/std over voxels > 0, applied to all);
- ``target``: float32 ``(1, S, S, S)`` in {0, 1}, the chosen object inside the crop.

Every object is eligible, however small (the published code drops objects under 500 voxels; small
lesions are exactly what PET users need).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from seganypet.errors import InputError
from seganypet.training.store import Store

logger = logging.getLogger("seganypet.training.dataset")


def normalize(crop: np.ndarray, method: str = "zscore_nonzero") -> np.ndarray:
    """Normalise a crop ``(S, S, S)`` of SUV as the Session does (``ModelConfig.normalization``)."""
    from seganypet.modeling.normalization import normalize_crop

    return normalize_crop(crop, method).numpy()


def read_crop(array: Any, start: np.ndarray, size: int) -> np.ndarray:
    """Read ``array[start:start+size]`` on each axis from a (memory-mapped) 3D array, zero-padded outside.

    Args:
        array: anything sliceable with a ``shape`` (blosc2 NDArray, numpy).
        start: ``(3,)`` int voxel index of the crop's first voxel (may be negative).
        size: crop edge in voxels.
    """
    shape = np.asarray(array.shape)
    lo = np.clip(start, 0, shape)
    hi = np.clip(start + size, 0, shape)
    out = np.zeros((size, size, size), dtype=array.dtype)
    if np.all(hi > lo):
        block = array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        o = lo - start
        out[o[0] : o[0] + block.shape[0], o[1] : o[1] + block.shape[1], o[2] : o[2] + block.shape[2]] = block
    return out


def crop_start(
    bbox: np.ndarray, shape: np.ndarray, size: int, rng: np.random.Generator | None, max_shift: float = 0.25
) -> np.ndarray:
    """First voxel of a ``size``^3 crop around an object's bbox ``[[lo], [hi]]`` (inclusive).

    Centred on the bbox centre, shifted by a random offset (uniform, at most ``max_shift * size`` per
    axis and at most what keeps an object that fits inside the crop), never when ``rng`` is None.
    """
    lo, hi = np.asarray(bbox[0]), np.asarray(bbox[1])
    centre = (lo + hi) / 2.0
    start = np.floor(centre - size / 2.0).astype(np.int64)
    if rng is not None:
        ext = hi - lo + 1
        slack = np.maximum((size - ext) // 2, 0)
        lim = np.minimum(slack, int(max_shift * size))
        # objects larger than the crop: any offset that keeps the crop inside the object's bbox
        lim = np.where(ext >= size, np.minimum((ext - size) // 2 + 1, int(max_shift * size)), lim)
        start = start + np.array([rng.integers(-m, m + 1) for m in lim])
    return start


@dataclass
class SamplerState:
    """The sampler's position: its numpy bit-generator state and how many samples it produced."""

    rng_state: dict[str, Any]
    count: int


class ObjectSampler:
    """Random object of a random case from a store split, with crop, flips and intensity augmentation.

    Args:
        store: a :class:`Store`.
        case_ids: the cases this sampler draws from (e.g. one rank's shard of the train split).
        size: crop edge (model image size, 128).
        seed: seed of the sampler's own ``numpy.random.Generator`` (its state is checkpointed).
        augment: flips on each axis (p=0.5) and intensity changes (scale/shift, Gaussian noise) after
            normalisation.
        kind_weights: optional ``{"organ": w, "lesion": w}``: probability weights of object kinds
            within a case (default: uniform over objects).
    """

    def __init__(
        self,
        store: Store,
        case_ids: list[str],
        size: int = 128,
        seed: int = 0,
        augment: bool = True,
        kind_weights: dict[str, float] | None = None,
        normalization: str = "zscore_nonzero",
    ) -> None:
        self.store = store
        self.normalization = normalization
        self.case_ids = [c for c in case_ids if store.cases[c].objects]
        if not self.case_ids:
            raise InputError("no case with labelled objects to sample from (check the store's split).")
        self.size = size
        self.augment = augment
        self.kind_weights = kind_weights
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self._open: dict[str, tuple[Any, Any]] = {}

    def state(self) -> SamplerState:
        return SamplerState(self.rng.bit_generator.state, self.count)

    def set_state(self, state: SamplerState | dict[str, Any]) -> None:
        if isinstance(state, dict):
            state = SamplerState(**state)
        self.rng.bit_generator.state = state.rng_state
        self.count = int(state.count)

    def _arrays(self, cid: str) -> tuple[Any, Any]:
        if cid not in self._open:
            if len(self._open) > 64:
                self._open.clear()
            case = self.store.cases[cid]
            self._open[cid] = (case.image(), case.labels())
        return self._open[cid]

    def _pick(self) -> tuple[str, dict[str, Any]]:
        cid = self.case_ids[int(self.rng.integers(len(self.case_ids)))]
        objs = self.store.cases[cid].objects
        if self.kind_weights:
            w = np.array([self.kind_weights.get(o["kind"], 1.0) for o in objs], dtype=np.float64)
            w = w / w.sum() if w.sum() > 0 else None
            obj = objs[int(self.rng.choice(len(objs), p=w))]
        else:
            obj = objs[int(self.rng.integers(len(objs)))]
        return cid, obj

    def sample(self) -> dict[str, Any]:
        """One sample: ``image``, ``target`` (float32 ``(1, S, S, S)``), ``case_id``, ``label``, ``kind``."""
        cid, obj = self._pick()
        return self.make(cid, obj, self.rng if self.augment else None)

    def make(self, cid: str, obj: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """The sample of object ``obj`` of case ``cid``; centred and unaugmented when ``rng`` is None."""
        image, labels = self._arrays(cid)
        start = crop_start(np.asarray(obj["bbox"]), np.asarray(image.shape), self.size, rng)
        img = read_crop(image, start, self.size).astype(np.float32)
        tgt = (read_crop(labels, start, self.size) == obj["label"]).astype(np.float32)
        img = normalize(img, self.normalization)
        if rng is not None:
            for ax in range(3):
                if rng.random() < 0.5:
                    img = np.flip(img, ax)
                    tgt = np.flip(tgt, ax)
            img = img * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-0.1, 0.1))
            if rng.random() < 0.3:
                img = img + rng.normal(0.0, rng.uniform(0.0, 0.1), img.shape).astype(np.float32)
        self.count += 1
        return {
            "image": np.ascontiguousarray(img)[None],
            "target": np.ascontiguousarray(tgt)[None],
            "case_id": cid,
            "label": int(obj["label"]),
            "kind": obj["kind"],
        }

    def batch(self, n: int) -> dict[str, Any]:
        """``n`` samples stacked: ``image``/``target`` float32 ``(n, 1, S, S, S)``, lists of ids/kinds."""
        items = [self.sample() for _ in range(n)]
        return {
            "image": np.stack([s["image"] for s in items]),
            "target": np.stack([s["target"] for s in items]),
            "case_id": [s["case_id"] for s in items],
            "kind": [s["kind"] for s in items],
        }


def validation_items(
    store: Store, case_ids: list[str], max_objects: int | None = None, seed: int = 0
) -> list[tuple[str, dict[str, Any]]]:
    """A fixed list of ``(case_id, object)`` pairs of the validation cases (every object, or a fixed
    random subset of ``max_objects`` chosen with ``seed``), for reproducible validation."""
    items = [(cid, obj) for cid in case_ids for obj in store.cases[cid].objects]
    if max_objects is not None and len(items) > max_objects:
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(len(items), size=max_objects, replace=False))
        items = [items[i] for i in keep]
    return items
