"""Object management of the :class:`~seganypet.inference.session.Session` (a mixin): create, select,
rename and delete objects, and list them. Every change goes through ``Session._commit`` (undo/redo
and the journal)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from seganypet.errors import InputError, SessionStateError
from seganypet.inference.engine import Window

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class ObjectState:
    """Immutable state of one object (undo snapshots share these)."""

    label: int
    name: str
    windows: tuple[Window, ...] = ()
    base: tuple[Region, np.ndarray] | None = None  # a mask given with set_mask (input grid)
    n_prompts: int = 0


class ObjectsMixin:
    """The object methods of ``Session``; it relies on the session's ``_objects``, ``_active``,
    ``_next_label``, ``_journal``, ``_commit``, ``_require_image`` and ``label_map``."""

    _objects: dict[int, ObjectState]
    _active: int | None
    _next_label: int
    _journal: list[dict[str, Any]]

    if TYPE_CHECKING:  # provided by Session

        def _require_image(self) -> None: ...

        def _commit(
            self, objects: dict[int, ObjectState], active: int | None, event: dict[str, Any]
        ) -> None: ...

        @property
        def label_map(self) -> np.ndarray: ...

    def _resolve(self, label_or_name: int | str) -> int:
        if isinstance(label_or_name, str) and not label_or_name.isdigit():
            hits = [k for k, o in self._objects.items() if o.name == label_or_name]
            if not hits:
                raise InputError(f"There is no object named {label_or_name!r}.")
            return hits[0]
        try:
            label = int(label_or_name)
        except (TypeError, ValueError):
            raise InputError(f"{label_or_name!r} is not an object label or name.") from None
        if label not in self._objects:
            raise InputError(f"There is no object with label {label}.")
        return label

    def new_object(self, name: str | None = None) -> int:
        """Start a new object (it becomes the active one); returns its label (1, 2, ...)."""
        self._require_image()
        label = self._next_label
        if label > 65535:
            raise SessionStateError("Too many objects (labels are uint16).")
        name = f"object {label}" if name is None else str(name).strip()
        if not name:
            raise InputError("An object name must not be empty.")
        if any(o.name == name for o in self._objects.values()):
            raise InputError(f"An object named {name!r} exists already.")
        objects = dict(self._objects)
        objects[label] = ObjectState(label, name)
        self._commit(objects, label, {"op": "new_object", "label": label, "name": name})
        return label

    def select_object(self, label_or_name: int | str) -> int:
        """Make an object the active one (by label or name); returns its label."""
        label = self._resolve(label_or_name)
        self._active = label
        self._journal.append({"op": "select_object", "label": label})
        return label

    def delete_object(self, label: int | str) -> None:
        """Remove an object; the active object becomes the last remaining one (or none)."""
        label = self._resolve(label)
        objects = {k: v for k, v in self._objects.items() if k != label}
        active = self._active if self._active != label else (max(objects) if objects else None)
        self._commit(objects, active, {"op": "delete_object", "label": label})

    def rename_object(self, label: int | str, name: str) -> None:
        """Give an object a new (unique, non-empty) name."""
        label = self._resolve(label)
        name = str(name).strip()
        if not name:
            raise InputError("An object name must not be empty.")
        if any(o.name == name and k != label for k, o in self._objects.items()):
            raise InputError(f"An object named {name!r} exists already.")
        objects = dict(self._objects)
        objects[label] = replace(objects[label], name=name)
        self._commit(objects, self._active, {"op": "rename_object", "label": label, "name": name})

    @property
    def active_label(self) -> int | None:
        """Label of the object that clicks go to (``None`` before the first object)."""
        return self._active

    @property
    def names(self) -> dict[int, str]:
        """``{label: name}`` of all objects."""
        return {k: o.name for k, o in self._objects.items()}

    @property
    def objects(self) -> list[dict[str, Any]]:
        """One dict per object: ``label``, ``name``, ``voxels`` (in the label map), ``n_prompts``,
        ``windows`` (crops used)."""
        lm = self.label_map if self._objects else None
        out = []
        for k, o in self._objects.items():
            voxels = int(np.count_nonzero(lm == k)) if lm is not None else 0
            out.append(
                {
                    "label": k,
                    "name": o.name,
                    "voxels": voxels,
                    "n_prompts": o.n_prompts,
                    "windows": len(o.windows),
                }
            )
        return out
