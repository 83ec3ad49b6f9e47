"""The zoomed-out pass: the alternative to auto-extension for objects larger than one crop.

Chosen with ``Session(large_objects="zoom")`` (or ``"zoom-coarse"``); the default stays
``"extend"`` (:mod:`seganypet.inference.extension`) because it scored better on the phantoms
(docs/session.md, "Large objects"). After every prediction, each click window whose mask touches an
open face (:func:`~seganypet.inference.extension.touched_faces`) gets:

1. a *zoom* window: a crop of ``2 S`` model voxels (384 mm) centred where the click window is
   centred, the image averaged over 2x2x2 blocks (3 mm voxels) before it enters the model; prompted
   with the click window's points (moved to its coarse voxels) and no mask prompt. The model sees
   the whole organ at half the resolution it was trained at;
2. (``"zoom"`` only, not ``"zoom-coarse"``) *refine* windows: the zoomed-out mask's bounding box on
   the model grid is tiled with full-resolution windows (neighbours sharing ``overlap`` voxels), except
   where a click window already is (within ``S/4``). Each gets the zoomed-out logits resampled onto
   its low-res grid as the mask prompt and one positive point at its most confident cell.

Full-resolution windows take precedence over the zoom window where they reach
(:meth:`Engine.merge_windows`). The number of windows per object is bounded by ``max_windows``.
Derived windows are rebuilt whenever the click windows change; one whose prompts come out identical
is reused (cached embedding, no decoder run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from seganypet.inference.engine import Engine, Window
from seganypet.inference.extension import shift_lowres, touched_faces

ZOOM = 2  #: model voxels per crop voxel of the zoomed-out pass


def _zoom_window(engine: Engine, click: Window, old: dict) -> Window:
    """The zoomed-out window of a click window (reused from ``old`` when its prompts are unchanged)."""
    s = engine.size
    origin = tuple(int(click.origin[a] - s // 2) for a in range(3))
    shift = (ZOOM - 1) / 2
    points = tuple(
        tuple(float((p[a] + click.origin[a] - origin[a] - shift) / ZOOM) for a in range(3))
        for p in click.points
    )
    prev = old.get(("zoom", origin))
    if prev is not None and prev.points == points and prev.labels == click.labels:
        return prev
    logits = engine.decode(origin, points, click.labels, None, None, scale=ZOOM)  # type: ignore[arg-type]
    return Window(origin, "zoom", points, click.labels, None, logits, scale=ZOOM)  # type: ignore[arg-type]


def _tile_origins(engine: Engine, zoom: Window, overlap: int) -> list[tuple[int, int, int]]:
    """Origins of full-resolution windows covering the zoomed-out mask's bounding box."""
    assert engine.grid is not None
    s, cell = engine.size, 4 * ZOOM
    on = np.argwhere(zoom.logits > 0)
    if not len(on):
        return []
    per_axis = []
    for a in range(3):
        n = engine.grid.shape[a]
        lo = max(zoom.origin[a] + cell * int(on[:, a].min()), 0)
        hi = min(zoom.origin[a] + cell * (int(on[:, a].max()) + 1), n)
        if hi - lo <= s:
            starts = [(lo + hi) // 2 - s // 2]
        else:
            k = math.ceil((hi - lo - overlap) / (s - overlap))
            starts = [int(round(v)) for v in np.linspace(lo, hi - s, k)]
        if n >= s:
            starts = [int(np.clip(o, 0, n - s)) for o in starts]
        per_axis.append(sorted(set(starts)))
    centre = np.asarray(zoom.origin) + s * ZOOM / 2
    origins = [(i, j, k) for i in per_axis[0] for j in per_axis[1] for k in per_axis[2]]
    return sorted(origins, key=lambda o: float(np.abs(np.asarray(o) + s / 2 - centre).max()))


def rebuild_zoom(
    engine: Engine,
    windows: Sequence[Window],
    *,
    max_windows: int = 8,
    overlap: int = 32,
    refine: bool = True,
    min_touch: int = 8,
) -> tuple[Window, ...]:
    """Click windows unchanged, followed by freshly derived zoom (and refine) windows (module doc).

    Args:
        engine: the engine holding the image and the model.
        windows: the object's current windows (derived ones are reused when unchanged).
        max_windows: bound on the total number of windows of the object.
        overlap: voxels shared by neighbouring refine windows.
        refine: add the full-resolution refine windows (``"zoom"``) or not (``"zoom-coarse"``).
        min_touch: mask voxels in the outer two layers of a face that count as touching it.
    """
    s = engine.size
    clicks = [w for w in windows if w.kind == "click"]
    old = {(w.kind, w.origin): w for w in windows if w.kind in ("zoom", "refine")}
    out: list[Window] = list(clicks)
    for click in clicks:
        if len(out) >= max_windows or not touched_faces(engine, click, min_touch):
            continue
        zoom = _zoom_window(engine, click, old)
        out.append(zoom)
        parent = len(out) - 1
        if not refine:
            continue
        for origin in _tile_origins(engine, zoom, overlap):
            if len(out) >= max_windows:
                break
            if any(
                w.scale == 1 and max(abs(origin[b] - w.origin[b]) for b in range(3)) < s // 4 for w in out
            ):
                continue
            # cell c of the tile is centred at model index origin + 4c + 1.5, i.e. at zoom cell
            # (origin - zoom.origin + 4c + 1.5 - 3.5) / 8
            delta = [(origin[b] - zoom.origin[b] - 2.0) / (4 * ZOOM) for b in range(3)]
            prompt = shift_lowres(zoom.logits, delta, ratio=1 / ZOOM)
            best = int(np.argmax(prompt))
            if prompt.flat[best] <= 0:
                continue
            point = tuple(float(4 * c + 1.5) for c in np.unravel_index(best, prompt.shape))
            prev = old.get(("refine", origin))
            if (
                prev is not None
                and prev.points == (point,)
                and prev.mask_prompt is not None
                and np.array_equal(prev.mask_prompt, prompt)
            ):
                out.append(prev)
                continue
            logits = engine.decode(origin, [point], [1], None, prompt)
            out.append(Window(origin, "refine", (point,), (1,), None, logits, parent, prompt))
    return tuple(out)
