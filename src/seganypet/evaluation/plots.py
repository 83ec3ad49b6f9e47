"""PNG figures of an evaluation (matplotlib, Agg backend; written atomically)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.evaluation.metrics import bootstrap_ci
from seganypet.utils import atomic_path

logger = logging.getLogger("seganypet.evaluation.plots")

COLORS = ["#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path


def dice_vs_clicks(
    rows: Sequence[dict[str, Any]], methods: Sequence[str], path: Path, xlabel: str, title: str
) -> Path:
    """Mean Dice (with 95 % bootstrap CI band) against the click number ``n``, one line per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for idx, method in enumerate(methods):
        sel = [r for r in rows if r["method"] == method]
        ns = sorted({int(r["n"]) for r in sel})
        if not ns:
            continue
        means, lo, hi = [], [], []
        for n in ns:
            v = [float(r["dice"]) for r in sel if int(r["n"]) == n]
            means.append(float(np.mean(v)))
            a, b = bootstrap_ci(v)
            lo.append(a)
            hi.append(b)
        color = COLORS[idx % len(COLORS)]
        ax.plot(ns, means, marker="o", color=color, label=method)
        ax.fill_between(ns, lo, hi, color=color, alpha=0.15)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Dice (mean, 95 % bootstrap CI)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def box_by_kind(rows: Sequence[dict[str, Any]], methods: Sequence[str], path: Path, title: str) -> Path:
    """Box plots of Dice per object kind (groups) and method (boxes); ``rows`` need ``kind``."""
    plt = _plt()
    kinds = sorted({str(r.get("kind", "all")) for r in rows}) or ["all"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(kinds) * max(1, len(methods)) / 2), 4))
    width = 0.8 / max(1, len(methods))
    handles = []
    for m_idx, method in enumerate(methods):
        data, pos = [], []
        for k_idx, kind in enumerate(kinds):
            v = [
                float(r["dice"]) for r in rows if r["method"] == method and str(r.get("kind", "all")) == kind
            ]
            data.append(v if v else [np.nan])
            pos.append(k_idx + (m_idx - (len(methods) - 1) / 2) * width)
        color = COLORS[m_idx % len(COLORS)]
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True)
        for patch in bp["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
        handles.append(bp["boxes"][0])
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels(kinds)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title)
    ax.legend(handles, list(methods), fontsize=8)
    return _save(fig, path)


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient ``array`` to RAS+ axis order (nibabel); returns (array, voxel spacing)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(array, ornt)
    aff = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)
    return out, np.linalg.norm(aff[:3, :3], axis=0)


def overlay(
    suv: np.ndarray,
    affine: np.ndarray,
    reference: np.ndarray,
    predictions: dict[str, np.ndarray],
    path: Path,
    title: str,
) -> Path:
    """Coronal and sagittal maximum-intensity projections of the PET with the outline of the
    reference (green) and of each method's final prediction (one panel row per method).

    ``suv``, ``reference`` and the predictions are ``(I, J, K)`` arrays on the grid of ``affine``.
    """
    plt = _plt()
    pet, sp = _canonical(np.asarray(suv, dtype=np.float32), affine)
    ref, _ = _canonical(np.asarray(reference, dtype=np.uint8), affine)
    methods = list(predictions)
    fig, axes = plt.subplots(max(1, len(methods)), 2, figsize=(7, 3.6 * max(1, len(methods))), squeeze=False)
    vmax = float(max(np.percentile(pet.max(axis=1), 99.5), np.percentile(pet.max(axis=0), 99.5))) or 1.0
    for row, method in enumerate(methods or [""]):
        pred = _canonical(np.asarray(predictions[method], dtype=np.uint8), affine)[0] if method else None
        for col, (axis, aspect) in enumerate(((1, sp[2] / sp[0]), (0, sp[2] / sp[1]))):
            ax = axes[row][col]
            ax.imshow(pet.max(axis=axis).T, cmap="gray_r", origin="lower", vmin=0, vmax=vmax, aspect=aspect)
            if ref.any():
                ax.contour(ref.max(axis=axis).T, levels=[0.5], colors="#2ca02c", linewidths=1.2)
            if pred is not None and pred.any():
                ax.contour(pred.max(axis=axis).T, levels=[0.5], colors="#d62728", linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{method} ({'coronal' if axis == 1 else 'sagittal'} MIP)", fontsize=9)
    fig.suptitle(f"{title}\ngreen: reference, red: prediction", fontsize=10)
    return _save(fig, path)
