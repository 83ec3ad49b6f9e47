"""Auto-extension of objects larger than one crop.

After every prediction the windows of an object are checked: where a window's mask touches one of its
six faces (at least ``min_touch`` voxels in the outer two voxel layers) and the image continues beyond
that face, a new window is placed one *stride* (``S - overlap`` voxels, 96 for S = 128 and the default
overlap of 32) further along that axis, centred on the touching voxels in the two other axes and
shifted to stay inside the image. It is prompted from the current mask, the way the published model
is refined:

- one positive point: the most confident voxel (highest upsampled logit) of the parent's mask in the
  part of the overlap next to the touched face (falling back to the whole overlap);
- the mask prompt: the parent's low-res logits resampled onto the new window's low-res grid
  (0, i.e. "undecided", where the parent does not reach).

New windows are checked in turn (breadth first) until no window touches an open face or the object
has ``max_windows`` windows. A window within ``S/4`` voxels of an existing one is not added (this also
stops a child from re-extending back into its parent). Extension windows are re-derived from scratch
whenever the object's clicked windows change; a window landing within ``S/4`` voxels of one of the
previous derivation takes that one's position, so its cached embedding is reused and a refinement
click costs decoder runs only (none when the derived prompts are unchanged).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

import numpy as np

from seganypet.geometry import nearest_index
from seganypet.inference.engine import Engine, Window, logits_at

logger = logging.getLogger("seganypet.inference")


def shift_lowres(logits: np.ndarray, delta: Sequence[float], ratio: float = 1.0) -> np.ndarray:
    """Resample low-res logits ``(M, M, M)`` of a crop onto the low-res grid of another crop whose
    cell ``c`` sits at source cell coordinate ``ratio · c + delta`` (trilinear; 0 where the source
    does not reach). Same scale: ``delta`` = displacement in voxels / 4 and ``ratio`` 1; a
    full-resolution crop inside a zoomed-out (scale 2) one: ``ratio`` 0.5."""
    m = logits.shape[0]
    out = logits.astype(np.float32)
    inside = []
    for a in range(3):
        x = ratio * np.arange(m, dtype=np.float64) + float(delta[a])
        inside.append((x >= -0.5) & (x <= m - 0.5))
        xc = np.clip(x, 0, m - 1)
        i0 = np.floor(xc).astype(np.int64)
        w = (xc - i0).astype(np.float32)
        i1 = np.minimum(i0 + 1, m - 1)
        shape = [1, 1, 1]
        shape[a] = -1
        w = w.reshape(shape)
        out = np.take(out, i0, axis=a) * (1 - w) + np.take(out, i1, axis=a) * w
    mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return np.where(mask, out, 0.0).astype(np.float32)


def touched_faces(engine: Engine, w: Window, min_touch: int = 8) -> list[tuple[int, int, np.ndarray]]:
    """Faces ``(axis, side, centroid (3,) model index)`` of window ``w`` that its mask touches and
    beyond which the image continues."""
    assert engine.grid is not None
    s = engine.size
    shape = engine.grid.shape
    faces = []
    full = [np.arange(s) for _ in range(3)]
    valid = [(np.arange(s) + w.origin[a] >= 0) & (np.arange(s) + w.origin[a] < shape[a]) for a in range(3)]
    for a in range(3):
        for side in (-1, 1):
            if side < 0 and w.origin[a] <= 0:
                continue
            if side > 0 and w.origin[a] + s >= shape[a]:
                continue
            idx = list(full)
            idx[a] = np.arange(0, 2) if side < 0 else np.arange(s - 2, s)
            vals = logits_at(w.logits, idx) > 0
            ok = [valid[b][idx[b]] for b in range(3)]
            vals &= ok[0][:, None, None] & ok[1][None, :, None] & ok[2][None, None, :]
            n = int(vals.sum())
            if n < min_touch:
                continue
            where = np.nonzero(vals)
            centroid = np.array([idx[b][where[b]].mean() + w.origin[b] for b in range(3)])
            faces.append((a, side, centroid))
    return faces


def _place(engine: Engine, parent: Window, axis: int, side: int, centroid: np.ndarray, stride: int):
    assert engine.grid is not None
    s = engine.size
    origin = []
    for b in range(3):
        n = engine.grid.shape[b]
        o = parent.origin[b] + side * stride if b == axis else int(round(centroid[b])) - s // 2
        if n >= s:
            o = int(np.clip(o, 0, n - s))
        elif b != axis:
            o = parent.origin[b]
        origin.append(int(o))
    if abs(origin[axis] - parent.origin[axis]) < s // 8:
        return None
    return (origin[0], origin[1], origin[2])


def _derive_prompts(engine: Engine, parent: Window, origin: Sequence[int], axis: int, side: int):
    """One positive point (crop coords of the new window) and the mask prompt, or None."""
    assert engine.grid is not None
    s = engine.size
    lo = [max(parent.origin[b], origin[b], 0) for b in range(3)]
    hi = [min(parent.origin[b], origin[b]) + s for b in range(3)]
    hi = [min(hi[b], engine.grid.shape[b]) for b in range(3)]
    if any(hi[b] <= lo[b] for b in range(3)):
        return None
    # the part of the overlap next to the touched face, inside the parent
    near_lo, near_hi = list(lo), list(hi)
    if side > 0:
        near_lo[axis] = max(lo[axis], parent.origin[axis] + s - s // 4)
        near_hi[axis] = min(hi[axis], parent.origin[axis] + s - s // 16)
    else:
        near_lo[axis] = max(lo[axis], parent.origin[axis] + s // 16)
        near_hi[axis] = min(hi[axis], parent.origin[axis] + s // 4)
    point = None
    for box_lo, box_hi in ((near_lo, near_hi), (lo, hi)):
        if any(box_hi[b] <= box_lo[b] for b in range(3)):
            continue
        idx = [np.arange(box_lo[b], box_hi[b]) - parent.origin[b] for b in range(3)]
        vals = logits_at(parent.logits, idx)
        flat = int(np.argmax(vals))
        if vals.flat[flat] <= 0:
            continue
        at = np.unravel_index(flat, vals.shape)
        point = tuple(float(idx[b][at[b]] + parent.origin[b] - origin[b]) for b in range(3))
        break
    if point is None:
        return None
    delta = [(origin[b] - parent.origin[b]) / 4.0 for b in range(3)]
    return point, shift_lowres(parent.logits, delta)


def rebuild_extensions(
    engine: Engine,
    windows: Sequence[Window],
    *,
    max_windows: int = 8,
    overlap: int = 32,
    min_touch: int = 8,
) -> tuple[Window, ...]:
    """Click windows unchanged, followed by freshly derived extension windows (see module doc).

    Args:
        engine: the engine holding the image and the model.
        windows: the object's current windows (extension windows among them are reused when their
            derived prompts come out identical).
        max_windows: bound on the total number of windows of the object.
        overlap: voxels shared by a window and its extension along the extension axis.
        min_touch: mask voxels in the outer two layers of a face that count as touching it.
    """
    s = engine.size
    stride = max(s - overlap, s // 4)
    clicks = [w for w in windows if w.kind == "click"]
    old = {(w.origin, w.parent): w for w in windows if w.kind == "extension"}
    out: list[Window] = list(clicks)
    queue = deque(range(len(out)))
    while queue and len(out) < max_windows:
        i = queue.popleft()
        parent = out[i]
        for axis, side, centroid in touched_faces(engine, parent, min_touch):
            if len(out) >= max_windows:
                logger.info("object reached max_windows=%d; not extending further", max_windows)
                break
            origin = _place(engine, parent, axis, side, centroid, stride)
            if origin is None:
                continue
            # keep a previous extension window's position when it is close (its embedding is cached)
            near = [
                w.origin for w in old.values() if max(abs(origin[b] - w.origin[b]) for b in range(3)) < s // 4
            ]
            if near:
                origin = min(near, key=lambda o: max(abs(origin[b] - o[b]) for b in range(3)))
            if any(max(abs(origin[b] - w.origin[b]) for b in range(3)) < s // 4 for w in out):
                continue
            derived = _derive_prompts(engine, parent, origin, axis, side)
            if derived is None:
                continue
            point, mask_prompt = derived
            prev = old.get((origin, i))
            if (
                prev is not None
                and prev.points == (point,)
                and prev.mask_prompt is not None
                and np.array_equal(prev.mask_prompt, mask_prompt)
            ):
                child = prev
            else:
                logits = engine.decode(origin, [point], [1], None, mask_prompt)
                child = Window(origin, "extension", (point,), (1,), None, logits, i, mask_prompt)
            out.append(child)
            queue.append(len(out) - 1)
    return tuple(out)


def negative_points(
    engine: Engine, raws: Sequence[tuple[tuple[slice, ...], np.ndarray]], origin: Sequence[int]
) -> list[tuple[tuple[float, ...], int]]:
    """Negative evidence from other objects: for each mask (``(region, bool block)`` on the input
    grid) present in the crop at ``origin``, one negative point (crop coordinates, label 0) at its
    voxel nearest to its centroid within the crop."""
    assert engine.grid is not None
    s = engine.size
    out = []
    for region, block in raws:
        idx = np.argwhere(block) + np.array([r.start for r in region])
        if not len(idx):
            continue
        m = nearest_index(engine.grid.input_to_model(idx)) - np.asarray(origin)
        m = m[np.all((m >= 0) & (m < s), axis=1)]
        if not len(m):
            continue
        pick = m[np.argmin(np.linalg.norm(m - m.mean(0), axis=1))]
        out.append((tuple(float(v) for v in pick), 0))
    return out
