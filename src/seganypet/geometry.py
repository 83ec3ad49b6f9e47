"""Geometry: canonical RAS+ reorientation, resampling to the model's 1.5 mm grid and exactly back.

Conventions (see docs/session.md, "Geometry"):

- An affine maps voxel indices ``(i, j, k, 1)`` to RAS millimetres; integer indices are voxel
  *centres* (NIfTI / ITK convention). A voxel ``n`` covers the continuous indices ``[n - 0.5, n + 0.5)``.
- **Canonical orientation** is what ``nibabel.as_closest_canonical`` (and torchio ``ToCanonical``)
  gives: the axes are permuted and flipped (never interpolated) so that the affine is as close as
  possible to a diagonal with positive entries (RAS+). An oblique input stays oblique.
- **The model grid** is what torchio ``Resample(1.5)`` (the published preprocessing) builds from the
  canonical image: same direction cosines, spacing 1.5 mm, ``size = floor(old_size * old_spacing /
  1.5)`` per axis (a tolerance of 1e-6 voxel guards against ``127.9999999``), placed so that the
  centre of the field of view (midpoint between the centres of the first and the last voxel) is
  kept. The new grid therefore never extends beyond the old one.
- Intensities (``order=1``) are trilinear, separable, with the image extended by its edge value up
  to half a voxel beyond the outermost centres and 0 further out (SimpleITK's linear interpolator
  with default value 0, as torchio uses it). Labels (``order=0``) take the voxel whose centre is
  nearest (``floor(x + 0.5 + 1e-6)``: ties go up, as ITK's ``RoundHalfIntegerUp``, robust to rounding noise).

Because both grids share their direction cosines up to a permutation and flips of axes, the mapping
between an input index and a model index is *separable*: each model axis depends on exactly one input
axis through ``m = scale * n + offset``. :class:`GridMap` precomputes these 1D maps once per image,
so that a crop can be sampled on demand and a prediction pasted back by pure indexing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import inv_ornt_aff, io_orientation

logger = logging.getLogger("seganypet.geometry")

MODEL_SPACING = 1.5
_SIZE_TOL = 1e-6
_SEP_TOL = 1e-6

__all__ = [
    "MODEL_SPACING",
    "GridMap",
    "canonical_affine",
    "from_model_grid",
    "model_grid",
    "nearest_index",
    "to_model_grid",
]


def _as_affine(affine: np.ndarray) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"an affine must be a finite 4x4 matrix, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError("the affine is singular (zero voxel size or degenerate axes)")
    return a


def _spacing3(spacing: float | Sequence[float]) -> np.ndarray:
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if not np.all(sp > 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    return sp


def canonical_affine(shape: Sequence[int], affine: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the closest canonical (RAS+) orientation of a grid.

    Args:
        shape: ``(I, J, K)`` voxels.
        affine: ``(4, 4)`` voxel-to-RAS-mm.

    Returns:
        ``(shape_canonical, affine_canonical)``: the grid after the axis permutation and flips of
        ``nibabel.as_closest_canonical`` (data are not touched: only the geometry is computed).
    """
    affine = _as_affine(affine)
    ornt = io_orientation(affine)
    shape = tuple(int(s) for s in shape)
    new_affine = affine @ inv_ornt_aff(ornt, shape)
    new_shape = [0, 0, 0]
    for in_axis, (out_axis, _flip) in enumerate(ornt):
        new_shape[int(out_axis)] = shape[in_axis]
    return (new_shape[0], new_shape[1], new_shape[2]), new_affine


def model_grid(
    shape: Sequence[int], affine: np.ndarray, spacing: float | Sequence[float] = MODEL_SPACING
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The canonical resampled grid (torchio ``ToCanonical`` + ``Resample(spacing)``).

    Args:
        shape: input ``(I, J, K)``.
        affine: input ``(4, 4)`` voxel-to-RAS-mm.
        spacing: target voxel size in mm (scalar or per canonical axis).

    Returns:
        ``(shape, affine)`` of the model grid: direction cosines of the canonical input, voxel size
        ``spacing``, ``floor(n * s / spacing)`` voxels per axis, centre of the field of view kept.
    """
    can_shape, can_affine = canonical_affine(shape, affine)
    old_sp = np.linalg.norm(can_affine[:3, :3], axis=0)
    new_sp = _spacing3(spacing)
    old_size = np.asarray(can_shape, dtype=np.float64)
    new_size = np.floor(old_size * old_sp / new_sp + _SIZE_TOL)
    new_size[old_size == 1] = 1
    new_size = np.maximum(new_size, 1)
    direction = can_affine[:3, :3] / old_sp
    centre = can_affine[:3, :3] @ ((old_size - 1) / 2) + can_affine[:3, 3]
    origin = centre - direction @ ((new_size - 1) / 2 * new_sp)
    out = np.eye(4)
    out[:3, :3] = direction * new_sp
    out[:3, 3] = origin
    size = tuple(int(s) for s in new_size)
    return (size[0], size[1], size[2]), out


def _separable(src_to_dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """If ``src_to_dst`` (4x4, source index -> destination index; rows are destination axes) maps
    each destination axis from exactly one source axis, return ``(perm, scale, offset)`` with
    ``dst[a] = scale[a] * src[perm[a]] + offset[a]``; else ``None``."""
    m = src_to_dst[:3, :3]
    perm = np.argmax(np.abs(m), axis=1)
    if sorted(perm.tolist()) != [0, 1, 2]:
        return None
    scale = m[np.arange(3), perm]
    rest = m.copy()
    rest[np.arange(3), perm] = 0.0
    if np.max(np.abs(rest)) > _SEP_TOL * max(1.0, float(np.max(np.abs(scale)))):
        return None
    return perm, scale, src_to_dst[:3, 3].copy()


def _linear_1d(arr: np.ndarray, axis: int, x: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``arr`` along ``axis`` at continuous indices ``x`` (edge-clamped)."""
    n = arr.shape[axis]
    i0 = np.floor(x).astype(np.int64)
    w = (x - i0).astype(arr.dtype if arr.dtype.kind == "f" else np.float32)
    i1 = np.clip(i0 + 1, 0, n - 1)
    i0 = np.clip(i0, 0, n - 1)
    shape = [1] * arr.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    out = np.take(arr, i0, axis=axis)
    diff = np.take(arr, i1, axis=axis)
    diff -= out
    diff *= w
    out += diff
    return out


_TIE_EPS = 1e-6


def nearest_index(x: np.ndarray) -> np.ndarray:
    """Nearest integer, ties up. Centre-preserving grids put many voxel centres exactly half-way
    between two others (4 mm -> 1.5 mm: every third); the 1e-6 voxel nudge makes the tie-break immune to
    floating-point noise, so every code path (full resampling, crops, paste maps) agrees."""
    return np.floor(x + (0.5 + _TIE_EPS)).astype(np.int64)


def _resample_separable(
    src: np.ndarray, coords: Sequence[np.ndarray], order: int, fill: float = 0.0
) -> np.ndarray:
    """Sample ``src`` (already transposed so that output axis ``a`` reads source axis ``a``) at the
    per-axis continuous indices ``coords[a]``; 0 (``fill``) where a coordinate lies more than half a
    voxel beyond the outermost centres."""
    inside = [(c >= -0.5) & (c <= n - 0.5) for c, n in zip(coords, src.shape)]
    if order == 0:
        idx = [np.clip(nearest_index(c), 0, n - 1) for c, n in zip(coords, src.shape)]
        out = src[np.ix_(*idx)]
    elif order == 1:
        # restrict to the needed source range first (crops of a large image stay cheap)
        sl = []
        local = []
        for c, n in zip(coords, src.shape):
            cc = np.clip(c, -0.5, n - 0.5)
            lo = int(max(0, math.floor(cc.min()))) if c.size else 0
            hi = int(min(n, math.floor(cc.max()) + 2)) if c.size else 0
            sl.append(slice(lo, max(hi, lo + 1)))
            local.append(c - lo)
        sub = src[tuple(sl)]
        if sub.dtype.kind != "f":
            sub = sub.astype(np.float32)
        # interpolate the axis with the biggest reduction first
        order_axes = sorted(range(3), key=lambda a: coords[a].size / max(sub.shape[a], 1))
        out = sub
        for a in order_axes:
            c = np.clip(local[a], 0, sub.shape[a] - 1)
            out = _linear_1d(out, a, c)
    else:
        raise ValueError("order must be 0 (nearest) or 1 (linear)")
    mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    if not mask.all():
        out = np.where(mask, out, np.asarray(fill, dtype=out.dtype))
    return out


def _resample_general(
    src: np.ndarray, dst_to_src: np.ndarray, out_shape: Sequence[int], order: int
) -> np.ndarray:
    """Any affine relation: ``scipy.ndimage`` with the same edge and rounding rules (slow path)."""
    from scipy import ndimage

    out = np.zeros(tuple(out_shape), dtype=src.dtype if order == 0 else np.float32)
    n = np.asarray(src.shape, dtype=np.float64)
    grid_jk = np.stack(np.meshgrid(np.arange(out_shape[1]), np.arange(out_shape[2]), indexing="ij"), -1)
    grid_jk = grid_jk.reshape(-1, 2).astype(np.float64)
    for i in range(out_shape[0]):  # slab by slab keeps the coordinate arrays small
        pts = np.column_stack([np.full(len(grid_jk), i, dtype=np.float64), grid_jk])
        c = pts @ dst_to_src[:3, :3].T + dst_to_src[:3, 3]
        inside = np.all((c >= -0.5) & (c <= n - 0.5), axis=1)
        if order == 0:
            idx = np.clip(nearest_index(c), 0, (n - 1).astype(np.int64))
            vals = src[idx[:, 0], idx[:, 1], idx[:, 2]]
        else:
            cc = np.clip(c, 0, n - 1)
            vals = ndimage.map_coordinates(src.astype(np.float32), cc.T, order=1, mode="nearest")
        vals = np.where(inside, vals, 0)
        out[i] = vals.reshape(out_shape[1], out_shape[2])
    return out


def resample(
    array: np.ndarray,
    affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """Resample ``array`` (on ``affine``) onto the grid ``(target_shape, target_affine)``.

    Args:
        array: ``(I, J, K)`` source voxels.
        affine: ``(4, 4)`` source voxel-to-RAS-mm.
        target_shape: output ``(I', J', K')``.
        target_affine: ``(4, 4)`` output voxel-to-RAS-mm.
        order: 0 nearest (labels; dtype kept), 1 trilinear (float32).

    Returns:
        ``(I', J', K')`` array; voxels whose centre lies more than half a voxel outside the source are 0.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"resampling needs a 3D array, got shape {array.shape}")
    src_affine, dst_affine = _as_affine(affine), _as_affine(target_affine)
    target_shape = tuple(int(s) for s in target_shape)
    # dst axis a reads src axis perm[a]: dst = scale * src + offset
    sep = _separable(np.linalg.inv(dst_affine) @ src_affine)
    if sep is None:
        logger.debug("non-separable grid relation: general resampling")
        return _resample_general(array, np.linalg.inv(src_affine) @ dst_affine, target_shape, order)
    perm, scale, offset = sep
    src = np.transpose(array, perm)
    coords = [(np.arange(target_shape[a], dtype=np.float64) - offset[a]) / scale[a] for a in range(3)]
    out = _resample_separable(src, coords, order)
    if order == 1:
        out = out.astype(np.float32, copy=False)
    return out


def to_model_grid(
    array: np.ndarray,
    affine: np.ndarray,
    spacing: float | Sequence[float] = MODEL_SPACING,
    order: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Reorient to canonical RAS+ and resample to ``spacing`` mm (the published preprocessing).

    Args:
        array: ``(I, J, K)`` input voxels (SUV or labels).
        affine: ``(4, 4)`` input voxel-to-RAS-mm.
        spacing: target voxel size in mm.
        order: 1 trilinear for intensities (float32 out), 0 nearest for label maps (dtype kept).

    Returns:
        ``(array_model (I', J', K'), affine_model (4, 4))``; see :func:`model_grid` for the grid.
    """
    shape, m_affine = model_grid(np.shape(array), affine, spacing)
    return resample(array, affine, shape, m_affine, order=order), m_affine


def from_model_grid(
    array: np.ndarray,
    model_affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    order: int = 0,
) -> np.ndarray:
    """Map an array on the model grid back onto the input grid (same shape and affine as the input).

    Args:
        array: ``(I', J', K')`` on the model grid.
        model_affine: its ``(4, 4)`` affine.
        target_shape: the input's ``(I, J, K)``.
        target_affine: the input's ``(4, 4)`` affine.
        order: 0 nearest (labels, default), 1 trilinear.

    Returns:
        ``(I, J, K)`` array; every input voxel takes the model voxel whose centre is nearest to its own.
    """
    return resample(array, model_affine, target_shape, target_affine, order=order)


@dataclass
class GridMap:
    """Precomputed separable maps between an input grid and its model grid.

    Attributes:
        in_shape, in_affine: the input grid ``(I, J, K)`` and affine.
        shape, affine: the model grid (canonical RAS+, ``spacing`` mm).
        perm: model axis ``a`` reads input axis ``perm[a]``.
        scale, offset: ``m_a = scale[a] * n_{perm[a]} + offset[a]`` (continuous model index).
        nearest: per model axis, the nearest model index of every input index along ``perm[a]``
            (``int64``, length ``in_shape[perm[a]]``): the paste-back index map.
    """

    in_shape: tuple[int, int, int]
    in_affine: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray
    perm: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    nearest: tuple[np.ndarray, np.ndarray, np.ndarray]

    @classmethod
    def build(
        cls, in_shape: Sequence[int], in_affine: np.ndarray, spacing: float | Sequence[float] = MODEL_SPACING
    ) -> GridMap:
        in_shape = tuple(int(s) for s in in_shape)
        in_affine = _as_affine(in_affine)
        shape, affine = model_grid(in_shape, in_affine, spacing)
        sep = _separable(np.linalg.inv(affine) @ in_affine)
        if sep is None:  # cannot happen: reorientation only permutes and flips axes
            raise ValueError("internal error: the model grid is not axis-aligned with the input grid")
        perm, scale, offset = sep
        nearest = tuple(
            nearest_index(scale[a] * np.arange(in_shape[perm[a]], dtype=np.float64) + offset[a])
            for a in range(3)
        )
        return cls(in_shape, in_affine, shape, affine, perm, scale, offset, nearest)  # type: ignore[arg-type]

    @property
    def inv_perm(self) -> np.ndarray:
        """Input axis ``q`` is model axis ``inv_perm[q]``."""
        return np.argsort(self.perm)

    def input_to_model(self, ijk: np.ndarray) -> np.ndarray:
        """Input voxel indices ``(..., 3)`` -> continuous model indices ``(..., 3)``."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk[..., self.perm] * self.scale + self.offset

    def model_to_input(self, m: np.ndarray) -> np.ndarray:
        """Continuous model indices ``(..., 3)`` -> continuous input indices ``(..., 3)``."""
        m = np.asarray(m, dtype=np.float64)
        out = np.empty_like(m)
        out[..., self.perm] = (m - self.offset) / self.scale
        return out

    def sample_crop(self, array: np.ndarray, origin: Sequence[int], size: int | Sequence[int]) -> np.ndarray:
        """Voxels ``[origin, origin + size)`` of the model-grid image, computed from the input array.

        Identical to resampling the whole image with :func:`to_model_grid` (``order=1``) and then
        cropping, with 0 outside the model grid (the padding value of the published training).

        Args:
            array: ``(I, J, K)`` float input voxels.
            origin: model index of the crop's first voxel (may be negative).
            size: crop edge(s) in model voxels.

        Returns:
            float32 ``(S0, S1, S2)`` in model axis order.
        """
        size3 = np.broadcast_to(np.asarray(size, dtype=np.int64), (3,))
        src = np.transpose(array, self.perm)
        coords = []
        for a in range(3):
            m = np.arange(origin[a], origin[a] + size3[a], dtype=np.float64)
            c = (m - self.offset[a]) / self.scale[a]
            c[(m < 0) | (m >= self.shape[a])] = -1e9  # outside the model grid -> 0
            coords.append(c)
        return _resample_separable(src, coords, order=1).astype(np.float32, copy=False)

    def paste_indices(
        self, origin: Sequence[int], size: int | Sequence[int]
    ) -> tuple[tuple[slice, slice, slice], tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
        """Where a model-grid crop lands on the input grid.

        Args:
            origin, size: the crop ``[origin, origin + size)`` in model indices.

        Returns:
            ``(region, crop_idx)``: ``region`` are slices of the input array (input axis order) whose
            voxels' nearest model voxel lies in the crop; ``crop_idx[a]`` (model axis order) gives, for
            each input index of the region along input axis ``perm[a]``, the crop index along model
            axis ``a``. ``None`` if no input voxel maps into the crop.
            A crop-space array ``P (S0, S1, S2)`` pastes as
            ``out[region] = P[np.ix_(*crop_idx)].transpose(inv_perm)``.
        """
        size3 = np.broadcast_to(np.asarray(size, dtype=np.int64), (3,))
        region: list[slice] = [slice(0, 0)] * 3
        idx: list[np.ndarray] = []
        for a in range(3):
            near = self.nearest[a]
            hit = np.flatnonzero((near >= origin[a]) & (near < origin[a] + size3[a]))
            if hit.size == 0:
                return None
            lo, hi = int(hit[0]), int(hit[-1]) + 1
            region[int(self.perm[a])] = slice(lo, hi)
            idx.append(near[lo:hi] - origin[a])
        return (region[0], region[1], region[2]), (idx[0], idx[1], idx[2])
