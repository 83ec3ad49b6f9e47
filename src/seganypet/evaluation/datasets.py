"""Evaluation cases: discovery (the layouts of ``seganypet prepare``, or a manifest) and loading.

Dataset folders use :func:`seganypet.training.prepare.discover` (nnU-Net raw, autoPET
``SUV.nii.gz``/``SEG.nii.gz``, ``images/`` + ``labels/`` pairs, our phantoms ``pet.nii.gz`` +
``labels.nii.gz`` + ``labels.json``, ibsi-sts ``PET_image.nii.gz``/``PET_mask.nii.gz``).

A manifest is a ``.json`` file (a list of ``{"case": id, "image": path, "labels": path,
"label_info": {"1": {"name": ..., "kind": "organ"|"lesion"}}}``, ``label_info`` optional) or a
``.csv`` file with columns ``case,image,labels`` (optionally ``kind``, the kind of every label);
relative paths are relative to the manifest. Images must be in SUV: thresholds and the baselines
read the intensities as SUV.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.errors import InputError
from seganypet.image import PETImage
from seganypet.io.nifti import read_volume

logger = logging.getLogger("seganypet.evaluation.datasets")

_LESION_WORDS = re.compile(r"lesion|tumou?r|metasta|gtv|cancer|nodule", re.IGNORECASE)
LIVER_WORDS = re.compile(r"^liver$|^liver[_ ]", re.IGNORECASE)


@dataclass
class CaseSpec:
    """Where a case's files are and what its labels mean (not yet loaded)."""

    case_id: str
    image: Path
    label: Path
    info: dict[int, dict[str, str]] = field(default_factory=dict)
    split_components: bool = False
    default_kind: str = "organ"


@dataclass
class EvalObject:
    """One reference object: ``key`` (str, unique in the case), ``label`` (value in the label map),
    ``name``, ``kind`` (``organ``/``lesion``) and ``mask`` bool ``(I, J, K)``."""

    key: str
    label: int
    name: str
    kind: str
    mask: np.ndarray


@dataclass
class EvalCase:
    """A loaded case: the SUV image, its label map ``(I, J, K)`` and the reference objects."""

    case_id: str
    image: PETImage
    labels: np.ndarray
    objects: list[EvalObject]
    liver_mask: np.ndarray | None = None

    def lesion_reference(self) -> np.ndarray:
        """All lesion objects together, bool ``(I, J, K)``."""
        out = np.zeros(self.image.shape, dtype=bool)
        for obj in self.objects:
            if obj.kind == "lesion":
                out |= obj.mask
        return out


def _manifest_cases(path: Path) -> list[CaseSpec]:
    base = path.parent
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
            if isinstance(rows, dict):
                rows = rows.get("cases", [])
        elif path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            raise InputError(f"{path}: a manifest must be a .json or .csv file.")
    except (OSError, json.JSONDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read the manifest ({err}).") from err
    cases = []
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or not row.get("image") or not row.get("labels"):
            raise InputError(f"{path}: entry {n + 1} needs 'image' and 'labels'.")
        info = {}
        for k, v in (row.get("label_info") or {}).items():
            v = {"name": v} if isinstance(v, str) else dict(v)
            name = str(v.get("name", f"label_{k}"))
            info[int(k)] = {"name": name, "kind": str(v.get("kind", _guess_kind(name)))}
        cases.append(
            CaseSpec(
                str(row.get("case") or Path(str(row["image"])).name.split(".")[0]),
                (base / str(row["image"])).resolve(),
                (base / str(row["labels"])).resolve(),
                info,
                default_kind=str(row.get("kind") or "organ"),
            )
        )
    if not cases:
        raise InputError(f"{path}: the manifest lists no cases.")
    return cases


def _guess_kind(name: str) -> str:
    return "lesion" if _LESION_WORDS.search(name) else "organ"


def find_cases(data: Sequence[str | Path], patterns: Sequence[str] | None = None) -> list[CaseSpec]:
    """Cases of one or more dataset folders / manifests, filtered by ``patterns`` (fnmatch on ids)."""
    from seganypet.training.prepare import discover

    cases: list[CaseSpec] = []
    for item in data:
        path = Path(item)
        if path.is_file():
            cases.extend(_manifest_cases(path))
        elif path.is_dir():
            for c in discover(path):
                cases.append(
                    CaseSpec(
                        c.case_id,
                        Path(c.image),
                        Path(c.label),
                        dict(c.info),
                        c.split_components,
                        c.default_kind,
                    )
                )
        else:
            raise InputError(f"{path} is neither a dataset folder nor a manifest file.")
    if patterns:
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.case_id, p) for p in patterns)]
        if not cases:
            raise InputError(f"no case matches --cases {' '.join(patterns)}.")
    ids = [c.case_id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise InputError(f"case id {sorted(dup)[0]!r} occurs twice; give the datasets distinct folders.")
    return cases


def parse_label_filter(spec: str) -> tuple[str, set[int] | None]:
    """``all`` | ``organs`` | ``lesions`` | comma-separated label ids -> ``(kind filter, ids)``."""
    spec = (spec or "all").strip().lower()
    if spec in ("all", "organs", "lesions"):
        return spec, None
    try:
        return "ids", {int(x) for x in spec.split(",") if x.strip()}
    except ValueError as err:
        raise InputError(
            f"--labels must be all, organs, lesions or label ids like 1,3; got {spec!r}."
        ) from err


def load_case(spec: CaseSpec, labels: str = "all", min_voxels: int = 1) -> EvalCase:
    """Read a case and build its reference objects.

    Labels missing from the case's label info get ``label_<n>`` and the layout's default kind. Lesion
    labels of binary layouts (autoPET) are split into 26-connected components, one object each.
    ``labels`` selects the objects (:func:`parse_label_filter`); a liver object, when present, is kept
    aside as ``liver_mask`` for the PERCIST baseline whatever the selection.
    """
    arr, affine = read_volume(spec.image)
    lab, lab_affine = read_volume(spec.label)
    if lab.shape != arr.shape:
        raise InputError(f"{spec.label}: label map shape {lab.shape} differs from the image's {arr.shape}.")
    if not np.allclose(lab_affine, affine, atol=1e-3):
        logger.warning("%s: the label map's affine differs from the image's; using the image's", spec.label)
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"{spec.image}: the image contains NaN or infinite values.")
    image = PETImage(arr, affine, units="SUVbw", metadata={"case": spec.case_id}, path=str(spec.image))
    lab = np.rint(lab).astype(np.int32)
    which, ids = parse_label_filter(labels)
    objects: list[EvalObject] = []
    liver = None
    for value in (int(v) for v in np.unique(lab) if v > 0):
        info = spec.info.get(value, {"name": f"label_{value}", "kind": spec.default_kind})
        name, kind = str(info.get("name", f"label_{value}")), str(info.get("kind", spec.default_kind))
        mask = lab == value
        if LIVER_WORDS.search(name):
            liver = mask
        if which == "organs" and kind == "lesion" or which == "lesions" and kind != "lesion":
            continue
        if ids is not None and value not in ids:
            continue
        if spec.split_components and kind == "lesion":
            import cc3d

            comps, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=26, return_N=True)
            for c in range(1, n + 1):
                m = comps == c
                if m.sum() >= min_voxels:
                    objects.append(EvalObject(f"{value}.{c}", value, f"{name}_{c}", kind, m))
        elif mask.sum() >= min_voxels:
            objects.append(EvalObject(str(value), value, name, kind, mask))
    return EvalCase(spec.case_id, image, lab, objects, liver)


def case_summary(case: EvalCase) -> dict[str, Any]:
    """JSON-able facts about a loaded case (recorded in the cache)."""
    return {
        "case": case.case_id,
        "shape": list(case.image.shape),
        "spacing_mm": [round(s, 5) for s in case.image.spacing],
        "objects": [
            {"key": o.key, "name": o.name, "kind": o.kind, "voxels": int(o.mask.sum())} for o in case.objects
        ],
    }
