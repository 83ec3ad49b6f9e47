"""Crop geometry, the model call with its embedding cache, and paste-back of predictions.

Everything here works on the model grid (canonical RAS+, 1.5 mm; :class:`seganypet.geometry.GridMap`)
with crops of ``S = model.config.image_size`` (128) voxels and low-res logits of ``M = S // 4`` (32).
A *window* is one crop position plus the prompts given in it and the last low-res logits it produced.
A window of ``scale`` 2 (the zoomed-out pass, :mod:`seganypet.inference.zoom`) covers ``2 S`` model
voxels (384 mm), the image averaged over 2x2x2 blocks (3 mm voxels) before it enters the model.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from seganypet.errors import InputError
from seganypet.geometry import GridMap, nearest_index

logger = logging.getLogger("seganypet.inference")

NORMALIZATIONS = ("model", "zscore_nonzero", "suv_clip", "none")


@dataclass(frozen=True)
class Window:
    """One crop of one object.

    Attributes:
        origin: model-grid index of crop voxel ``(0, 0, 0)`` (may be negative: padded crop).
        kind: ``"click"`` (holds user prompts), ``"extension"`` (prompts derived from the mask of
            its ``parent`` window, re-derived whenever the object changes), ``"zoom"`` (the
            zoomed-out pass of a click window) or ``"refine"`` (a full-resolution window prompted
            from the zoomed-out mask); the last two are re-derived like extensions.
        points: crop voxel coordinates ``(i, j, k)`` of the point prompts, in order (for a window of
            ``scale`` s, in its coarse voxels: model index ``m`` is ``(m - origin - (s - 1) / 2) / s``).
        labels: 1 positive, 0 negative, one per point.
        box: two opposite crop-voxel corners, or ``None``.
        logits: ``(M, M, M)`` float32 low-res logits of the last prediction (read-only).
        parent: index of the parent window (extension windows), else -1.
        mask_prompt: the ``(M, M, M)`` mask prompt this prediction was made with (extension windows:
            to know when a re-derivation changes nothing).
        scale: model voxels per crop voxel along each axis (1, or 2 for a zoomed-out window).
    """

    origin: tuple[int, int, int]
    kind: str
    points: tuple[tuple[float, float, float], ...]
    labels: tuple[int, ...]
    box: tuple[tuple[float, float, float], tuple[float, float, float]] | None
    logits: np.ndarray = field(repr=False)
    parent: int = -1
    mask_prompt: np.ndarray | None = field(default=None, repr=False, compare=False)
    scale: int = 1

    def contains(self, m: Sequence[int], size: int) -> bool:
        """Whether model voxel ``m`` lies in the window (``size``: the model's crop size S)."""
        return all(self.origin[a] <= m[a] < self.origin[a] + size * self.scale for a in range(3))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Validate a device string (``cpu``, ``cuda``, ``cuda:N``, ``mps``) and check it is available."""
    if isinstance(device, torch.device):
        device = str(device)
    device = (device or "cpu").strip().lower()
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        idx = device[5:] if device.startswith("cuda:") else "0"
        if not idx.isdigit():
            raise InputError(f"Device {device!r} is not valid; use cpu, cuda, cuda:N or mps.")
        if not torch.cuda.is_available():
            raise InputError(
                f"Device {device!r} was requested but CUDA is not available here; use --device cpu."
            )
        if int(idx) >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise InputError(f"Device {device!r} does not exist: this machine has {n} CUDA device(s).")
        return torch.device(f"cuda:{idx}")
    if device == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError(
                "Device 'mps' was requested but Apple MPS is not available here; use --device cpu."
            )
        return torch.device("mps")
    raise InputError(f"Device {device!r} is not valid; use cpu, cuda, cuda:N or mps.")


def normalize(crop: np.ndarray, method: str) -> torch.Tensor:
    """Model input from a crop (any shape): ``"zscore_nonzero"`` (published: z-score with mean and
    std over voxels > 0, applied to all voxels), ``"suv_clip"`` or ``"none"`` (identity, e.g. for an
    already normalised image such as the reference fixture)."""
    if method == "none":
        return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))
    from seganypet.modeling.normalization import normalize_crop

    return normalize_crop(np.ascontiguousarray(crop, dtype=np.float32), method)


def upsample_axis_coords(idx: np.ndarray, factor: int) -> np.ndarray:
    """Low-res continuous coordinate of high-res index ``idx`` for
    ``F.interpolate(scale_factor=factor, mode="trilinear", align_corners=False)``."""
    return np.maximum((np.asarray(idx, dtype=np.float64) + 0.5) / factor - 0.5, 0.0)


def logits_at(low: np.ndarray, idx: Sequence[np.ndarray], factor: int = 4) -> np.ndarray:
    """Values of the trilinearly upsampled logits at high-res crop indices ``idx[0] x idx[1] x idx[2]``.

    Equal (to float rounding) to ``F.interpolate(low, scale_factor=factor, mode="trilinear",
    align_corners=False)[np.ix_(*idx)]`` without building the full ``(S, S, S)`` array.
    """
    out = low
    n = low.shape[0]
    for a in range(3):
        x = upsample_axis_coords(idx[a], factor)
        i0 = np.floor(x).astype(np.int64)
        w = (x - i0).astype(np.float32)
        i1 = np.minimum(i0 + 1, n - 1)
        i0 = np.minimum(i0, n - 1)
        shape = [1, 1, 1]
        shape[a] = -1
        w = w.reshape(shape)
        out = np.take(out, i0, axis=a) * (1 - w) + np.take(out, i1, axis=a) * w
    return out


class Engine:
    """The model, the image on its model grid, and per-crop embeddings (LRU cache).

    Args:
        model: a ``Sam3D``-like module with ``config`` (``image_size``, ``normalization``),
            ``encode(crop (1,1,S,S,S)) -> embedding`` and ``predict(embedding, points (1,N,3),
            labels (1,N), boxes (1,2,3)|None, mask_input (1,1,M,M,M)) -> (logits, iou)``.
        device: torch device the model runs on.
        normalization: ``"model"`` (the model config's choice) or a method of :func:`normalize`.
        cache_size: embeddings kept (one per crop origin).
    """

    def __init__(
        self, model: Any, device: torch.device, normalization: str = "model", cache_size: int = 32
    ) -> None:
        if normalization not in NORMALIZATIONS:
            raise InputError(
                f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {normalization!r}."
            )
        self.model = model
        self.device = device
        self.size = int(model.config.image_size)
        self.low = self.size // 4
        self.normalization = (
            getattr(model.config, "normalization", "zscore_nonzero")
            if normalization == "model"
            else normalization
        )
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.grid: GridMap | None = None
        self.array: np.ndarray | None = None
        self.timings: dict[str, float] = {}

    # --- image ------------------------------------------------------------------------------
    def set_image(self, array: np.ndarray, affine: np.ndarray) -> None:
        self.array = np.ascontiguousarray(array, dtype=np.float32)
        self.grid = GridMap.build(array.shape, affine)
        self._cache.clear()

    # --- crops ------------------------------------------------------------------------------
    def centred_origin(self, m: Sequence[int], policy: str = "pad") -> tuple[int, int, int]:
        """Origin of the crop centred on model voxel ``m`` (``m`` lands at crop index ``S // 2``).

        ``policy="pad"`` keeps the click centred and pads outside the image with 0 (as the
        published training's CropOrPad); ``"shift"`` moves the crop inside the image where the image
        is at least ``S`` voxels long on that axis (else centres the image in the crop).
        """
        assert self.grid is not None
        s = self.size
        out = []
        for a in range(3):
            o = int(m[a]) - s // 2
            if policy == "shift":
                n = self.grid.shape[a]
                o = int(np.clip(o, 0, n - s)) if n >= s else -((s - n) // 2)
            out.append(o)
        return (out[0], out[1], out[2])

    def crop(self, origin: Sequence[int], scale: int = 1) -> np.ndarray:
        """``(S, S, S)`` float32 crop (0 outside the image): the model-grid voxels
        ``[origin, origin + S·scale)``, averaged over ``scale³`` blocks when ``scale > 1``."""
        assert self.grid is not None and self.array is not None
        s = self.size
        crop = self.grid.sample_crop(self.array, origin, s * scale)
        if scale > 1:
            crop = crop.reshape(s, scale, s, scale, s, scale).mean(axis=(1, 3, 5), dtype=np.float32)
        return crop

    def embedding(self, origin: tuple[int, int, int], scale: int = 1) -> torch.Tensor:
        """Image embedding of the crop at ``origin`` and ``scale`` (cached)."""
        key = (*(int(v) for v in origin), int(scale))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        t0 = time.perf_counter()
        x = normalize(self.crop(key[:3], scale), self.normalization)[None, None].to(self.device)
        t1 = time.perf_counter()
        with torch.inference_mode():
            emb = self.model.encode(x)
        self.timings["crop_normalize_s"] = t1 - t0
        self.timings["encoder_s"] = time.perf_counter() - t1
        self._cache[key] = emb
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return emb

    def decode(
        self,
        origin: tuple[int, int, int],
        points: Sequence[Sequence[float]],
        labels: Sequence[int],
        box: Any = None,
        mask_prompt: np.ndarray | None = None,
        scale: int = 1,
    ) -> np.ndarray:
        """Low-res logits ``(M, M, M)`` float32 for prompts in the crop at ``origin`` and ``scale``."""
        emb = self.embedding(origin, scale)
        t0 = time.perf_counter()
        dev = self.device
        pts = torch.tensor(np.asarray(points, dtype=np.float32).reshape(1, -1, 3), device=dev)
        lab = torch.tensor(np.asarray(labels, dtype=np.int64).reshape(1, -1), device=dev)
        boxes = None if box is None else torch.tensor(np.asarray(box, dtype=np.float32)[None], device=dev)
        m = self.low
        if mask_prompt is None:
            mask_prompt = np.zeros((m, m, m), np.float32)
        mp = torch.tensor(np.asarray(mask_prompt, dtype=np.float32), device=dev)[None, None]
        with torch.inference_mode():
            logits, _iou = self.model.predict(
                emb,
                pts if len(labels) else None,
                lab if len(labels) else None,
                boxes=boxes,
                mask_input=mp,
                multimask=False,
            )
        out = logits[0, 0].detach().to("cpu", torch.float32).numpy().copy()
        out.setflags(write=False)
        self.timings["decoder_s"] = time.perf_counter() - t0
        return out

    # --- paste-back ---------------------------------------------------------------------------
    def window_block(
        self, w: Window
    ) -> tuple[tuple[slice, slice, slice], np.ndarray, tuple[np.ndarray, ...]] | None:
        """The window's prediction on the input grid.

        Returns ``(region, block, model_idx)``: ``block`` bool in *input* axis order covering
        ``region`` (slices of the input array); ``model_idx[a]`` the model indices along model axis
        ``a`` of the region's voxels. ``None`` when the crop covers no input voxel.
        """
        assert self.grid is not None
        hit = self.grid.paste_indices(w.origin, self.size * w.scale)
        if hit is None:
            return None
        region, idx = hit
        block = logits_at(w.logits, idx, 4 * w.scale) > 0
        block = np.transpose(block, self.grid.inv_perm)
        model_idx = tuple(idx[a] + w.origin[a] for a in range(3))
        return region, block, model_idx

    def merge_windows(
        self, windows: Sequence[Window], base: tuple[tuple[slice, ...], np.ndarray] | None = None
    ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """An object's mask on the input grid from its windows (and an optional given base mask).

        Where windows overlap, a voxel takes the prediction of the window whose centre is nearest
        (Chebyshev distance in model voxels; ties: the earlier window); full-resolution windows take
        precedence over zoomed-out ones wherever they reach. Outside all windows the base
        mask (from :meth:`Session.set_mask`) applies. Returns ``(region, bool block)`` or ``None``.
        """
        assert self.grid is not None
        blocks = [b for b in (self.window_block(w) for w in windows)]
        parts = [(b[0], b[1]) for b in blocks if b is not None]
        if base is not None:
            parts.append((base[0], base[1]))  # type: ignore[arg-type]
        if not parts:
            return None
        lo = [min(p[0][q].start for p in parts) for q in range(3)]
        hi = [max(p[0][q].stop for p in parts) for q in range(3)]
        region = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        shape = tuple(hi[q] - lo[q] for q in range(3))
        out = np.zeros(shape, bool)

        def local(r: tuple[slice, ...]) -> tuple[slice, ...]:
            return tuple(slice(r[q].start - lo[q], r[q].stop - lo[q]) for q in range(3))

        if base is not None:
            out[local(base[0])] = base[1]
        live = [(w, b) for w, b in zip(windows, blocks) if b is not None]
        if len(live) == 1 and base is None:
            out[local(live[0][1][0])] = live[0][1][1]
            return region, out
        best = np.full(shape, np.inf, np.float32)
        inv = self.grid.inv_perm
        for w, (r, block, midx) in live:
            half = self.size * w.scale / 2 - 0.5
            coarse = 1e6 * (w.scale - 1)  # any full-resolution window is "nearer"
            d = [np.abs(midx[a] - (w.origin[a] + half)).astype(np.float32) + coarse for a in range(3)]
            # Chebyshev distance, broadcast in model axis order then moved to input order
            dist = np.maximum(np.maximum(d[0][:, None, None], d[1][None, :, None]), d[2][None, None, :])
            dist = np.transpose(dist, inv)
            sl = local(r)
            closer = dist < best[sl]
            out[sl] = np.where(closer, block, out[sl])
            best[sl] = np.where(closer, dist, best[sl])
        return region, out

    def downsampled_mask_prompt(
        self, origin: Sequence[int], raw: tuple[tuple[slice, ...], np.ndarray] | None, value: float = 4.0
    ) -> np.ndarray | None:
        """A low-res mask prompt ``(M, M, M)`` from an object mask on the input grid: the fraction
        of each 4x4x4 cell inside the mask, mapped to logits ``±value`` (``None`` if empty there)."""
        assert self.grid is not None
        if raw is None:
            return None
        region, block = raw
        s, m = self.size, self.low
        # nearest input voxel of every crop voxel (model axis order), then average 4^3 cells
        idx = []
        for a in range(3):
            q = int(self.grid.perm[a])
            mm = np.arange(origin[a], origin[a] + s, dtype=np.float64)
            n_in = nearest_index((mm - self.grid.offset[a]) / self.grid.scale[a])
            rel = n_in - region[q].start
            ok = (rel >= 0) & (rel < block.shape[q]) & (mm >= 0) & (mm < self.grid.shape[a])
            idx.append(np.where(ok, rel, -1))
        if any((i < 0).all() for i in idx):
            return None
        blk = np.transpose(block, self.grid.perm)
        padded = np.zeros(tuple(b + 1 for b in blk.shape), bool)
        padded[:-1, :-1, :-1] = blk
        # -1 indexes the padding (False) row
        crop = padded[np.ix_(*idx)]
        if not crop.any():
            return None
        frac = crop.reshape(m, 4, m, 4, m, 4).mean(axis=(1, 3, 5))
        return ((frac - 0.5) * 2 * value).astype(np.float32)
