"""Engines: one interface over a network :class:`seganypet.inference.Session` and the baselines.

An :class:`Engine` wraps any Session-like object (``set_image``, ``new_object``, ``select_object``,
``delete_object``, ``objects``, ``add_point``) so that the protocols drive models and baselines
through the same calls with the same clicks. Objects are addressed by a string ``key`` chosen by the
protocol (a reference object, or an autoPET lesion component); the engine maps keys to the
session's labels.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.errors import ModelError
from seganypet.evaluation.baselines import ENGINE_NAMES, ThresholdEngine
from seganypet.image import PETImage
from seganypet.utils import sha256_file

logger = logging.getLogger("seganypet.evaluation.engines")


class Engine:
    """A named Session-like object plus the key -> label bookkeeping of one image.

    Args:
        name: the method's name in tables and plots.
        session: a Session-like object (see the module docstring).
        fingerprint: identifies the weights (cache invalidation), e.g. a checkpoint's sha256.
    """

    def __init__(self, name: str, session: Any, fingerprint: str = "") -> None:
        self.name = name
        self.session = session
        self.fingerprint = fingerprint
        self._labels: dict[str, int] = {}
        self._masks: dict[str, np.ndarray] = {}
        self._shape: tuple[int, int, int] | None = None
        self.seconds = 0.0  # time spent inside the session (set_image + clicks)

    def set_image(self, image: PETImage, liver_mask: np.ndarray | None = None) -> None:
        """Give the engine a new image (and the liver mask the PERCIST baseline needs)."""
        if hasattr(self.session, "set_liver_mask"):
            self.session.set_liver_mask(liver_mask)
        t0 = time.perf_counter()
        self.session.set_image(image)
        self.seconds += time.perf_counter() - t0
        self._shape = image.shape
        self._labels, self._masks = {}, {}

    def clear(self) -> None:
        """Delete every object, keeping the image (and whatever the session caches for it)."""
        for obj in list(self.session.objects):
            self.session.delete_object(int(obj["label"]))
        self._labels, self._masks = {}, {}

    def click(self, key: str, ijk: tuple[int, int, int], positive: bool) -> np.ndarray:
        """Add a click to object ``key`` (created on first use); returns its bool mask ``(I, J, K)``."""
        if key not in self._labels:
            self._labels[key] = int(self.session.new_object(str(key)))
        self.session.select_object(self._labels[key])
        t0 = time.perf_counter()
        mask = self.session.add_point(tuple(int(v) for v in ijk), positive=bool(positive))
        self.seconds += time.perf_counter() - t0
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self._shape:
            raise RuntimeError(f"{self.name}: add_point returned shape {mask.shape}, expected {self._shape}")
        self._masks[key] = mask
        return mask

    def mask(self, key: str) -> np.ndarray:
        """Current mask of ``key`` (empty when it has no clicks yet)."""
        if key in self._masks:
            return self._masks[key]
        return np.zeros(self._shape or (0, 0, 0), dtype=bool)

    def keys(self) -> list[str]:
        return list(self._masks)

    def union(self) -> np.ndarray:
        """All objects' masks together, bool ``(I, J, K)``."""
        out = np.zeros(self._shape or (0, 0, 0), dtype=bool)
        for m in self._masks.values():
            out |= m
        return out


def default_weights_path() -> Path:
    """Where ``load_model("default")`` finds the shipped weights (``seganypet.build.DEFAULT_WEIGHTS``)."""
    from seganypet.build import DEFAULT_WEIGHTS

    return Path(DEFAULT_WEIGHTS)


def model_fingerprint(spec: str) -> str:
    """sha256 of the checkpoint behind a model name/path (``name:<spec>`` when it is not a file)."""
    path = default_weights_path() if spec == "default" else Path(spec)
    if path.is_file():
        return sha256_file(path)
    return f"name:{spec}"


def method_name(spec: str) -> str:
    """Display name of a ``--model`` value: baseline names as is, a file path by its stem."""
    if spec in ENGINE_NAMES or spec == "default" or not Path(spec).suffix:
        return spec
    return Path(spec).stem


def module_fingerprint(module: Any) -> str:
    """sha256 over a torch module's state dict (names, shapes and values)."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def make_engine(
    spec: Any, device: str = "cpu", radius_mm: float | None = None, large_objects: str = "extend"
) -> Engine:
    """An :class:`Engine` for a ``--model`` value: a baseline name (``threshold-2.5``,
    ``threshold-41``, ``percist``), ``default``, a preset/registered model name, a checkpoint path,
    or (Python API) a loaded model module (named by its ``name`` attribute or class name).

    ``large_objects`` is the session's strategy for objects larger than one crop
    (:class:`seganypet.Session`); other than ``"extend"`` it is appended to the name (``default+zoom``).
    """
    tag = "" if large_objects == "extend" else f"+{large_objects}"
    if not isinstance(spec, str):
        from seganypet.inference import Session

        name = str(getattr(spec, "name", "") or type(spec).__name__) + tag
        session = Session(model=spec, device=device, large_objects=large_objects)
        return Engine(name, session, fingerprint=module_fingerprint(spec) + tag)
    if spec in ENGINE_NAMES:
        kwargs = {} if radius_mm is None else {"radius_mm": radius_mm}
        code = sha256_file(Path(__file__).with_name("baselines.py"))[:16]
        return Engine(
            spec, ThresholdEngine(spec, **kwargs), fingerprint=f"baseline:{spec}:{radius_mm}:{code}"
        )
    try:
        from seganypet.inference import Session
    except ImportError as err:  # the session module is part of the package; a broken install
        raise ModelError(
            f"cannot evaluate model {spec!r}: seganypet.inference is unavailable ({err})"
        ) from err
    if spec != "default" and Path(spec).suffix and not Path(spec).is_file():
        raise ModelError(f"model file {spec} does not exist.")
    session = Session(model=spec, device=device, large_objects=large_objects)
    return Engine(method_name(spec) + tag, session, fingerprint=model_fingerprint(spec) + tag)
