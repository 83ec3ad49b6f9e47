"""The session journal: JSON-able events, run-length-coded masks, and replay.

Events (one dict each, in order; every field JSON-able):

- ``{"op": "new_object", "label": L, "name": str}``
- ``{"op": "select_object", "label": L}``
- ``{"op": "add_point", "label": L, "ijk": [i, j, k], "positive": bool}``
- ``{"op": "add_box", "label": L, "corner_a": [i, j, k], "corner_b": [i, j, k]}``
- ``{"op": "set_mask", "label": L, "shape": [I, J, K], "rle": [run, run, ...]}`` (runs of False, True,
  False, ... over the C-order flattened mask, starting with False)
- ``{"op": "reset", "label": L}``, ``{"op": "delete_object", "label": L}``,
  ``{"op": "rename_object", "label": L, "name": str}``, ``{"op": "undo"}``, ``{"op": "redo"}``

Replaying the events on the same image with the same model rebuilds the exact state, undo/redo stacks
included (the network is deterministic on a given device).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from seganypet.errors import InputError


def rle_encode(mask: np.ndarray) -> list[int]:
    """Run lengths of a flattened (C order) bool array, starting with a run of False."""
    flat = np.asarray(mask, bool).ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return [int(r) for r in runs]


def rle_decode(runs: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    vals = np.zeros(len(runs), bool)
    vals[1::2] = True
    flat = np.repeat(vals, np.asarray(runs, dtype=np.int64))
    if flat.size != int(np.prod(shape)):
        raise InputError("A journal mask does not match the image shape.")
    return flat.reshape(tuple(shape))


def apply_events(session: Any, events: Iterable[dict[str, Any]]) -> None:
    """Apply journal ``events`` to ``session`` (which should be freshly cleared)."""
    for e in events:
        if not isinstance(e, dict):
            raise InputError(f"Journal event {e!r} is not an object.")
        op = e.get("op")
        try:
            if op == "new_object":
                session._next_label = int(e["label"])
                session.new_object(e.get("name"))
            elif op == "select_object":
                session.select_object(int(e["label"]))
            elif op in ("add_point", "add_box", "set_mask", "reset"):
                if session._active != int(e["label"]):
                    session._active = session._resolve(int(e["label"]))
                if op == "add_point":
                    session.add_point(e["ijk"], bool(e["positive"]))
                elif op == "add_box":
                    session.add_box(e["corner_a"], e["corner_b"])
                elif op == "set_mask":
                    session.set_mask(rle_decode(e["rle"], e["shape"]))
                else:
                    session.reset()
            elif op == "delete_object":
                session.delete_object(int(e["label"]))
            elif op == "rename_object":
                session.rename_object(int(e["label"]), e["name"])
            elif op == "undo":
                session.undo()
            elif op == "redo":
                session.redo()
            else:
                raise InputError(f"Unknown journal operation {op!r}.")
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"Journal event {e!r} is malformed ({type(err).__name__}: {err}).") from None
