"""The training store: cases resampled once to the model grid, compressed and memory-mappable.

Layout of a store folder::

    STORE/
      manifest.json              provenance, split and the object index of every finished case
      cases/<case_id>/image.b2nd float32 SUV, canonical RAS+, 1.5 mm, axes (i, j, k), blosc2 NDArray
      cases/<case_id>/labels.b2nd uint16 label map on the same grid (0 = background)
      cases/<case_id>/case.json  affine, shape, objects [{label, name, kind, voxels, bbox}], source, hashes

A case folder is written under a temporary name and renamed into place only when complete, so a
crash never leaves a half-written case; ``case.json`` inside a case folder is the completion mark.
The manifest is rewritten atomically after every case and can always be rebuilt from the case.json
files (:func:`rebuild_manifest`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.errors import InputError
from seganypet.utils import atomic_path

logger = logging.getLogger("seganypet.training.store")

STORE_FORMAT = "seganypet-store"
STORE_VERSION = 1
MODEL_SPACING_MM = 1.5
CHUNKS = (64, 64, 64)
BLOCKS = (16, 16, 16)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON atomically (temporary file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def save_b2nd(array: np.ndarray, path: Path) -> None:
    """Save a 3D array as a compressed blosc2 NDArray (ZSTD + shuffle, 64^3 chunks)."""
    import blosc2

    cparams = blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=5, filters=[blosc2.Filter.SHUFFLE])
    chunks = tuple(min(c, max(1, s)) for c, s in zip(CHUNKS, array.shape))
    blocks = tuple(min(b, c) for b, c in zip(BLOCKS, chunks))
    blosc2.asarray(
        np.ascontiguousarray(array),
        urlpath=str(path),
        mode="w",
        chunks=chunks,
        blocks=blocks,
        cparams=cparams,
    )


def open_b2nd(path: Path) -> Any:
    """Open a stored array read-only and memory-mapped; slicing it decompresses only the chunks hit."""
    import blosc2

    return blosc2.open(str(path), mode="r", mmap_mode="r")


def object_index(labels: np.ndarray, info: dict[int, dict[str, str]]) -> list[dict[str, Any]]:
    """Index the objects of a label map.

    Args:
        labels: integer label map ``(I, J, K)`` (0 = background).
        info: ``{label: {"name": str, "kind": "organ"|"lesion"}}``; labels absent from it get the
            name ``label_<n>`` and kind ``"organ"``.

    Returns:
        one dict per label present: ``label``, ``name``, ``kind``, ``voxels`` (count) and ``bbox``
        ``[[i0, j0, k0], [i1, j1, k1]]`` (inclusive voxel indices on the stored grid).
    """
    from scipy import ndimage

    counts = np.bincount(labels.ravel().astype(np.int64))
    slices = ndimage.find_objects(labels.astype(np.int32))
    out = []
    for lab, sl in enumerate(slices, start=1):
        if sl is None or lab >= len(counts) or counts[lab] == 0:
            continue
        meta = info.get(lab, {})
        out.append(
            {
                "label": lab,
                "name": str(meta.get("name", f"label_{lab}")),
                "kind": str(meta.get("kind", "organ")),
                "voxels": int(counts[lab]),
                "bbox": [[int(s.start) for s in sl], [int(s.stop) - 1 for s in sl]],
            }
        )
    return out


@dataclass
class StoredCase:
    """One finished case of a store (metadata only; arrays are opened lazily)."""

    case_id: str
    folder: Path
    meta: dict[str, Any]

    @property
    def objects(self) -> list[dict[str, Any]]:
        return self.meta["objects"]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["shape"])  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.meta["affine"], dtype=np.float64)

    def image(self) -> Any:
        """Memory-mapped float32 SUV array ``(I, J, K)`` (blosc2 NDArray; slice it to read)."""
        return open_b2nd(self.folder / "image.b2nd")

    def labels(self) -> Any:
        """Memory-mapped uint16 label map ``(I, J, K)``."""
        return open_b2nd(self.folder / "labels.b2nd")


class Store:
    """Read access to a prepared store folder (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise InputError(
                f"{self.root} is not a training store (no manifest.json); run `seganypet prepare`."
            )
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{path} is not valid JSON ({err}).") from err
        if self.manifest.get("format") != STORE_FORMAT:
            raise InputError(f"{path} is not a seganypet store manifest.")
        self.cases: dict[str, StoredCase] = {}
        for cid, meta in self.manifest.get("cases", {}).items():
            self.cases[cid] = StoredCase(cid, self.root / "cases" / cid, meta)

    def split(self, name: str) -> list[str]:
        """Case ids of a split (``"train"`` or ``"val"``), sorted."""
        return sorted(cid for cid, c in self.cases.items() if c.meta.get("split", "train") == name)

    def __len__(self) -> int:
        return len(self.cases)


def rebuild_manifest(root: Path, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """(Re)write ``root/manifest.json`` from the finished case folders; returns the manifest."""
    from seganypet import __version__

    path = root / "manifest.json"
    old: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
    cases: dict[str, Any] = {}
    cases_dir = root / "cases"
    if cases_dir.is_dir():
        for folder in sorted(cases_dir.iterdir()):
            meta_path = folder / "case.json"
            if folder.name.startswith(".") or not meta_path.is_file():
                continue
            cases[folder.name] = json.loads(meta_path.read_text())
    manifest = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "seganypet_version": __version__,
        "spacing_mm": MODEL_SPACING_MM,
        "orientation": "RAS+",
        "sources": sorted(set(old.get("sources", [])) | set((info or {}).get("sources", []))),
        "split": {
            "train": sorted(c for c, m in cases.items() if m.get("split") == "train"),
            "val": sorted(c for c, m in cases.items() if m.get("split") == "val"),
        },
        "cases": cases,
    }
    write_json(path, manifest)
    return manifest
