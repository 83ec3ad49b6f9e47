"""``seganypet prepare``: turn datasets into a training store (see :mod:`seganypet.training.store`).

Recognised layouts (``layout="auto"`` detects them):

- ``nnunet``: ``dataset.json`` + ``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz``;
  label names from dataset.json, kind ``lesion`` when the name mentions lesion/tumo(u)r/metasta,
  else ``organ``.
- ``autopet``: any folder below the root holding ``SUV.nii.gz`` and ``SEG.nii.gz``; the binary
  lesion mask is split into connected components (26-connectivity), one lesion object each.
- ``pairs``: ``images/<name>`` and ``labels/<name>`` with identical file names.
- ``phantoms``: folders with ``pet.nii.gz``, ``labels.nii.gz`` and ``labels.json`` (``seganypet phantom``).
- ``ibsi-sts``: ``nifti/STS_xxx/PET_image.nii.gz`` + ``PET_mask.nii.gz`` (one lesion per case).

Every case is resampled once to 1.5 mm canonical RAS+ (:func:`seganypet.geometry.to_model_grid`,
linear for the image, nearest for labels) and written atomically.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.errors import InputError
from seganypet.geometry import to_model_grid
from seganypet.io.nifti import read_volume
from seganypet.training.store import MODEL_SPACING_MM, object_index, rebuild_manifest, save_b2nd, write_json
from seganypet.utils import progress, sha256_file

logger = logging.getLogger("seganypet.training.prepare")

LAYOUTS = ("auto", "nnunet", "autopet", "pairs", "phantoms", "ibsi-sts")
_NII = (".nii.gz", ".nii", ".mha", ".nrrd")
_LESION_WORDS = re.compile(r"lesion|tumou?r|metasta|gtv|cancer|nodule", re.IGNORECASE)


@dataclass
class SourceCase:
    """A case to prepare: image + label files and what the labels mean."""

    case_id: str
    image: Path
    label: Path
    info: dict[int, dict[str, str]] = field(default_factory=dict)
    split_components: bool = False  # binary lesion masks: one object per connected component
    default_kind: str = "organ"


def _strip_ext(name: str) -> str:
    for ext in _NII:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def detect_layout(root: Path) -> str:
    """Name the layout of a dataset folder (one of :data:`LAYOUTS` minus ``auto``)."""
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "nnunet"
    if (root / "nifti").is_dir() and any((root / "nifti").glob("*/PET_image.nii.gz")):
        return "ibsi-sts"
    if any(root.glob("*/PET_image.nii.gz")):
        return "ibsi-sts"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "pairs"
    if (root / "pet.nii.gz").is_file() or any(root.glob("*/pet.nii.gz")):
        return "phantoms"
    if next(root.rglob("SUV.nii.gz"), None) is not None:
        return "autopet"
    raise InputError(
        f"{root}: cannot recognise the dataset layout (expected nnU-Net raw, autoPET, images/+labels/, "
        "phantoms or ibsi-sts); name it with --layout."
    )


def _nnunet_cases(root: Path, prefix: str) -> Iterator[SourceCase]:
    meta = json.loads((root / "dataset.json").read_text())
    labels = meta.get("labels", {})
    info: dict[int, dict[str, str]] = {}
    for a, b in labels.items():  # v2: {name: int}; v1: {"int": name}
        name, value = (a, b) if isinstance(b, int) else (b, a)
        value = int(value)
        if value == 0:
            continue
        info[value] = {"name": str(name), "kind": "lesion" if _LESION_WORDS.search(str(name)) else "organ"}
    for lab in sorted((root / "labelsTr").iterdir()):
        if lab.name.startswith("."):
            continue
        stem = _strip_ext(lab.name)
        images = sorted((root / "imagesTr").glob(f"{stem}_0000.*"))
        if not images:
            raise InputError(f"{lab}: no image {stem}_0000.* in {root / 'imagesTr'}.")
        yield SourceCase(prefix + stem, images[0], lab, info)


def _autopet_cases(root: Path, prefix: str) -> Iterator[SourceCase]:
    for suv in sorted(root.rglob("SUV.nii.gz")):
        seg = suv.parent / "SEG.nii.gz"
        if not seg.is_file():
            raise InputError(f"{suv.parent}: SUV.nii.gz without SEG.nii.gz.")
        rel = suv.parent.relative_to(root)
        cid = "_".join(rel.parts) if rel.parts else root.name
        yield SourceCase(prefix + cid, suv, seg, {}, split_components=True, default_kind="lesion")


def _pairs_cases(root: Path, prefix: str, kind: str) -> Iterator[SourceCase]:
    for img in sorted((root / "images").iterdir()):
        if img.name.startswith("."):
            continue
        lab = root / "labels" / img.name
        if not lab.is_file():
            raise InputError(f"{img}: no label file {lab}.")
        yield SourceCase(prefix + _strip_ext(img.name), img, lab, {}, default_kind=kind)


def _read_label_json(path: Path) -> dict[int, dict[str, str]]:
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "labels" in data:
        data = data["labels"]
    out: dict[int, dict[str, str]] = {}
    items = data.items() if isinstance(data, dict) else ((d.get("label"), d) for d in data)
    for key, val in items:
        if isinstance(val, str):
            val = {"name": val}
        name = str(val.get("name", f"label_{key}"))
        kind = str(val.get("kind", "lesion" if _LESION_WORDS.search(name) else "organ"))
        out[int(key)] = {"name": name, "kind": kind}
    return out


def _phantom_cases(root: Path, prefix: str) -> Iterator[SourceCase]:
    folders = (
        [root] if (root / "pet.nii.gz").is_file() else sorted(p.parent for p in root.glob("*/pet.nii.gz"))
    )
    for folder in folders:
        lab = folder / "labels.nii.gz"
        js = folder / "labels.json"
        if not lab.is_file() or not js.is_file():
            raise InputError(f"{folder}: a phantom folder needs pet.nii.gz, labels.nii.gz and labels.json.")
        yield SourceCase(prefix + folder.name, folder / "pet.nii.gz", lab, _read_label_json(js))


def _sts_cases(root: Path, prefix: str) -> Iterator[SourceCase]:
    base = root / "nifti" if (root / "nifti").is_dir() else root
    for img in sorted(base.glob("*/PET_image.nii.gz")):
        mask = img.parent / "PET_mask.nii.gz"
        if not mask.is_file():
            raise InputError(f"{img.parent}: PET_image.nii.gz without PET_mask.nii.gz.")
        yield SourceCase(prefix + img.parent.name, img, mask, {1: {"name": "tumour", "kind": "lesion"}})


def discover(root: Path, layout: str = "auto", prefix: str = "", kind: str = "organ") -> list[SourceCase]:
    """List the cases of one dataset folder.

    Args:
        root: the dataset folder.
        layout: one of :data:`LAYOUTS`.
        prefix: prepended to every case id (to keep ids unique when several datasets share a store).
        kind: object kind for layouts that do not say (``pairs``).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder.")
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}.")
    if layout == "auto":
        layout = detect_layout(root)
    gen = {
        "nnunet": lambda: _nnunet_cases(root, prefix),
        "autopet": lambda: _autopet_cases(root, prefix),
        "pairs": lambda: _pairs_cases(root, prefix, kind),
        "phantoms": lambda: _phantom_cases(root, prefix),
        "ibsi-sts": lambda: _sts_cases(root, prefix),
    }[layout]
    cases = list(gen())
    if not cases:
        raise InputError(f"{root}: no cases found for layout {layout!r}.")
    bad = [c.case_id for c in cases if not re.fullmatch(r"[A-Za-z0-9._+-]+", c.case_id)]
    if bad:
        raise InputError(f"case id {bad[0]!r} has characters other than letters, digits and ._+-.")
    return cases


def stable_fraction(case_id: str) -> float:
    """A number in [0, 1) fixed by the case id (crc32), for reproducible random splits."""
    return (zlib.crc32(case_id.encode()) & 0xFFFFFFFF) / 2**32


def assign_split(case_id: str, val_patterns: Sequence[str], val_fraction: float) -> str:
    """``"val"`` if the id matches one of ``val_patterns`` (fnmatch) or falls in ``val_fraction``."""
    if any(fnmatch.fnmatchcase(case_id, p) for p in val_patterns):
        return "val"
    if not val_patterns and stable_fraction(case_id) < val_fraction:
        return "val"
    return "train"


def prepare_case(case: SourceCase, store: Path, split: str) -> dict[str, Any]:
    """Resample one case and write it atomically into ``store/cases/<case_id>``; returns its case.json."""
    from seganypet import __version__

    t0 = time.perf_counter()
    img, aff = read_volume(case.image)
    lab, laff = read_volume(case.label)
    if img.shape != lab.shape or not np.allclose(aff, laff, atol=1e-3):
        raise InputError(f"{case.label}: label grid differs from the image grid of {case.image}.")
    if not np.all(np.isfinite(img)):
        raise InputError(f"{case.image}: the image contains NaN or infinite values.")
    lab = np.rint(lab).astype(np.int64)
    if lab.min() < 0 or lab.max() > 65535:
        raise InputError(f"{case.label}: labels must be integers in 0..65535.")
    info = dict(case.info)
    if case.split_components:
        import cc3d

        lab = cc3d.connected_components(lab > 0, connectivity=26).astype(np.int64)
        info = {i: {"name": f"lesion_{i}", "kind": "lesion"} for i in range(1, int(lab.max()) + 1)}
    for v in np.unique(lab):
        if v > 0 and int(v) not in info:
            info[int(v)] = {"name": f"label_{int(v)}", "kind": case.default_kind}
    img_m, aff_m = to_model_grid(img.astype(np.float32), aff, spacing=MODEL_SPACING_MM, order=1)
    lab_m, _ = to_model_grid(lab.astype(np.uint16), aff, spacing=MODEL_SPACING_MM, order=0)
    lab_m = np.asarray(lab_m).astype(np.uint16)
    objects = object_index(lab_m, info)
    meta = {
        "case_id": case.case_id,
        "split": split,
        "shape": [int(s) for s in img_m.shape],
        "affine": np.asarray(aff_m).tolist(),
        "spacing_mm": MODEL_SPACING_MM,
        "objects": objects,
        "suv_max": float(img_m.max()),
        "source": {
            "image": str(case.image.resolve()),
            "label": str(case.label.resolve()),
            "image_sha256": sha256_file(case.image),
            "label_sha256": sha256_file(case.label),
            "original_shape": [int(s) for s in img.shape],
            "original_affine": np.asarray(aff).tolist(),
        },
        "seganypet_version": __version__,
        "prepared": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    final = store / "cases" / case.case_id
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case.case_id}.", suffix=".tmp", dir=final.parent))
    try:
        save_b2nd(img_m.astype(np.float32), tmp / "image.b2nd")
        save_b2nd(lab_m, tmp / "labels.b2nd")
        (tmp / "case.json").write_text(json.dumps(meta, indent=1) + "\n")  # completion mark, last
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "prepared %s: %s voxels, %d objects (%.1f s)",
        case.case_id,
        img_m.shape,
        len(objects),
        time.perf_counter() - t0,
    )
    return meta


def _is_done(case: SourceCase, store: Path) -> bool:
    meta_path = store / "cases" / case.case_id / "case.json"
    if not meta_path.is_file():
        return False
    try:
        src = json.loads(meta_path.read_text())["source"]
    except (json.JSONDecodeError, KeyError):
        return False
    return src.get("image_sha256") == sha256_file(case.image) and src.get("label_sha256") == sha256_file(
        case.label
    )


def prepare(
    sources: Sequence[str | os.PathLike[str]],
    store: str | os.PathLike[str],
    *,
    layout: str = "auto",
    prefix: str = "",
    kind: str = "organ",
    val: Sequence[str] = (),
    val_fraction: float = 0.0,
) -> dict[str, Any]:
    """Prepare datasets into ``store``; finished cases (same source hashes) are skipped.

    Args:
        sources: dataset folders (layouts as in the module docstring).
        store: output store folder (created if needed; existing cases are kept).
        layout, prefix, kind: see :func:`discover`.
        val: fnmatch patterns of case ids for the validation split (e.g. ``"STS_01[6-9]"``).
        val_fraction: when no pattern is given, this fraction of cases (by a hash of the id) is val.

    Returns:
        dict with ``prepared``, ``skipped`` (case id lists) and ``manifest``.
    """
    store = Path(store)
    if store.exists() and not store.is_dir():
        raise InputError(f"{store} exists and is not a folder.")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}.")
    store.mkdir(parents=True, exist_ok=True)
    cases: list[SourceCase] = []
    for src in sources:
        cases.extend(discover(Path(src), layout, prefix, kind))
    ids = [c.case_id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise InputError(f"duplicate case ids {sorted(dup)[:3]}; use --prefix to keep datasets apart.")
    done, skipped = [], []
    for case in progress(cases, desc="prepare", unit="case"):
        split = assign_split(case.case_id, val, val_fraction)
        if _is_done(case, store):
            meta_path = store / "cases" / case.case_id / "case.json"
            meta = json.loads(meta_path.read_text())
            if meta.get("split") != split:  # split changed: update the mark only
                meta["split"] = split
                write_json(meta_path, meta)
            skipped.append(case.case_id)
            continue
        prepare_case(case, store, split)
        done.append(case.case_id)
        rebuild_manifest(store, {"sources": [str(Path(s).resolve()) for s in sources]})
    manifest = rebuild_manifest(store, {"sources": [str(Path(s).resolve()) for s in sources]})
    return {"prepared": done, "skipped": skipped, "manifest": manifest}
