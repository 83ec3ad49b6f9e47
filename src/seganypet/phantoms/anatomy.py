"""Phantom anatomy: the shared CT + TotalSegmentator label map, merged organs, per-subject deformation.

The anatomy is read at run time from a folder holding ``organs.nii.gz`` (TotalSegmentator v2 labels,
see ``organs_labels.json``) and ``ct.nii.gz`` (HU) on the same grid (lower thorax to proximal femur).
It is never copied into the repository. The folder is the ``anatomy`` argument, else
``$SEGANYPET_ANATOMY`` (each used alone when given), else the first that exists of
``$SEGANYPET_SHARED/data/anatomy``, ``../shared/data/anatomy`` beside the source checkout and
``../shared/data/anatomy`` relative to the working directory. Without any of them, the built-in
parametric torso of :mod:`seganypet.phantoms.builtin_anatomy` is used (``anatomy="builtin"`` asks for
it explicitly).

Two label spaces are used:

- **organs** (output, :data:`ORGANS`): a fixed, clinically meaningful set with stable ids (the 117
  TotalSegmentator classes merged by :data:`SOURCE_TO_ORGAN`);
- **tissues** (internal, :data:`TISSUES`): what drives tracer uptake (fat, marrow, renal pelvis,
  myocardium, grey matter ...). Every organ has a default tissue; some are split further.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from seganypet.errors import InputError

logger = logging.getLogger("seganypet.phantoms")


class AnatomyError(InputError):
    """The phantom anatomy folder is missing or unreadable."""


# Output organ labels (stable ids; lesions get ids from LESION_BASE upwards).
ORGANS: dict[str, int] = {
    "liver": 1,
    "spleen": 2,
    "kidney_left": 3,
    "kidney_right": 4,
    "bladder": 5,
    "lung_left": 6,
    "lung_right": 7,
    "heart": 8,
    "brain": 9,
    "aorta": 10,
    "vena_cava": 11,
    "spine": 12,
    "pelvis": 13,
    "femurs": 14,
    "ribs": 15,
    "muscles": 16,
    "stomach": 17,
    "bowel": 18,
    "pancreas": 19,
    "gallbladder": 20,
    "prostate": 21,
    "iliac_vessels": 22,
    "portal_vein": 23,
    "spinal_cord": 24,
    "adrenal_glands": 25,
    "salivary_glands": 26,
    "skull": 27,
}
ORGAN_NAMES: dict[int, str] = {v: k for k, v in ORGANS.items()}
LESION_BASE = 101
OUTSIDE_CODE = 255  # warped-code value for "outside the patient"

# TotalSegmentator v2 id -> organ name (ids not listed become unlabelled tissue, classified by CT).
SOURCE_TO_ORGAN: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    8: "adrenal_glands",
    9: "adrenal_glands",
    10: "lung_left",
    11: "lung_left",
    12: "lung_right",
    13: "lung_right",
    14: "lung_right",
    18: "bowel",
    19: "bowel",
    20: "bowel",
    21: "bladder",
    22: "prostate",
    23: "kidney_left",
    24: "kidney_right",
    25: "pelvis",
    **{i: "spine" for i in range(26, 51)},
    51: "heart",
    52: "aorta",
    61: "heart",
    62: "vena_cava",
    63: "vena_cava",
    64: "portal_vein",
    65: "iliac_vessels",
    66: "iliac_vessels",
    67: "iliac_vessels",
    68: "iliac_vessels",
    75: "femurs",
    76: "femurs",
    77: "pelvis",
    78: "pelvis",
    79: "spinal_cord",
    **{i: "muscles" for i in range(80, 90)},
    90: "brain",
    91: "skull",
    **{i: "ribs" for i in range(92, 117)},
}

# Internal tissue classes (index = value in the tissue map).
TISSUES: list[str] = [
    "outside",
    "fat",
    "soft_tissue",
    "bone",
    "air",
    "liver",
    "spleen",
    "kidney",
    "renal_pelvis",
    "bladder",
    "lung",
    "myocardium",
    "blood",
    "brain_gm",
    "brain_wm",
    "marrow",
    "femur",
    "muscle",
    "stomach",
    "bowel",
    "pancreas",
    "gallbladder",
    "prostate",
    "spinal_cord",
    "adrenal",
    "salivary",
    "skull",
    "ribs",
    "csf",
]
TID: dict[str, int] = {name: i for i, name in enumerate(TISSUES)}

# Default tissue of each organ.
ORGAN_TISSUE: dict[str, str] = {
    "liver": "liver",
    "spleen": "spleen",
    "kidney_left": "kidney",
    "kidney_right": "kidney",
    "bladder": "bladder",
    "lung_left": "lung",
    "lung_right": "lung",
    "heart": "myocardium",
    "brain": "brain_gm",
    "aorta": "blood",
    "vena_cava": "blood",
    "spine": "marrow",
    "pelvis": "marrow",
    "femurs": "femur",
    "ribs": "ribs",
    "muscles": "muscle",
    "stomach": "stomach",
    "bowel": "bowel",
    "pancreas": "pancreas",
    "gallbladder": "gallbladder",
    "prostate": "prostate",
    "iliac_vessels": "blood",
    "portal_vein": "blood",
    "spinal_cord": "spinal_cord",
    "adrenal_glands": "adrenal",
    "salivary_glands": "salivary",
    "skull": "skull",
}

# Typical CT numbers (HU) of tissues drawn from parametric shapes.
TISSUE_HU: dict[str, float] = {
    "outside": -1000.0,
    "fat": -100.0,
    "soft_tissue": 40.0,
    "bone": 700.0,
    "air": -900.0,
    "lung": -850.0,
    "myocardium": 45.0,
    "blood": 40.0,
    "brain_gm": 38.0,
    "brain_wm": 30.0,
    "marrow": 350.0,
    "muscle": 50.0,
    "spinal_cord": 35.0,
    "salivary": 30.0,
    "skull": 1100.0,
    "csf": 8.0,
}


def find_anatomy(anatomy: str | os.PathLike[str] | None = None) -> Path:
    """Locate the anatomy folder (see module docstring); raise :class:`AnatomyError` when absent."""
    candidates: list[Path] = []
    if anatomy is not None:
        candidates = [Path(anatomy)]
    elif os.environ.get("SEGANYPET_ANATOMY"):  # an explicit setting is used alone
        candidates = [Path(os.environ["SEGANYPET_ANATOMY"])]
    else:
        if os.environ.get("SEGANYPET_SHARED"):
            candidates.append(Path(os.environ["SEGANYPET_SHARED"]) / "data" / "anatomy")
        candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / "data" / "anatomy")
        candidates.append(Path.cwd().parent / "shared" / "data" / "anatomy")
    for path in candidates:
        if (path / "organs.nii.gz").is_file() and (path / "ct.nii.gz").is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise AnatomyError(
        f"phantom anatomy not found (need organs.nii.gz and ct.nii.gz in a folder; tried {tried}); "
        "give the folder with --anatomy or the SEGANYPET_ANATOMY environment variable"
    )


@dataclass(frozen=True, eq=False)
class SourceAnatomy:
    """The shared anatomy as read: ``labels`` uint8 (I,J,K) TotalSegmentator ids, ``ct`` int16 HU,
    ``affine`` (4,4) RAS mm, ``names`` id -> TotalSegmentator name."""

    labels: np.ndarray
    ct: np.ndarray
    affine: np.ndarray
    names: dict[int, str]
    path: Path


@functools.lru_cache(maxsize=2)
def _load_cached(path_str: str) -> SourceAnatomy:
    import nibabel as nib

    path = Path(path_str)
    try:
        lab_img = nib.load(str(path / "organs.nii.gz"))
        ct_img = nib.load(str(path / "ct.nii.gz"))
        labels = np.asarray(lab_img.dataobj).astype(np.uint8)
        ct = np.clip(np.asarray(ct_img.dataobj), -1024, 3071).astype(np.int16)
    except Exception as err:  # nibabel raises many types on corrupt files
        raise AnatomyError(f"cannot read the phantom anatomy in {path}: {err}") from err
    if labels.shape != ct.shape or labels.ndim != 3:
        raise AnatomyError(f"{path}: organs.nii.gz {labels.shape} and ct.nii.gz {ct.shape} differ")
    if not np.allclose(lab_img.affine, ct_img.affine, atol=1e-3):
        raise AnatomyError(f"{path}: organs.nii.gz and ct.nii.gz are on different grids")
    names: dict[int, str] = {}
    if (path / "organs_labels.json").is_file():
        names = {int(k): v for k, v in json.loads((path / "organs_labels.json").read_text()).items()}
    labels.setflags(write=False)
    ct.setflags(write=False)
    return SourceAnatomy(labels, ct, np.asarray(lab_img.affine, dtype=np.float64), names, path)


def load_anatomy(anatomy: str | os.PathLike[str] | None = None) -> SourceAnatomy:
    """Read (and cache) the anatomy folder found by :func:`find_anatomy`.

    ``anatomy="builtin"`` gives the built-in parametric torso
    (:mod:`seganypet.phantoms.builtin_anatomy`). So does ``None`` when no folder is found and
    ``$SEGANYPET_ANATOMY`` is not set (with a warning), so phantoms and ``seganypet demo`` work on any
    machine; a folder that is named but missing is an :class:`AnatomyError`.
    """
    from seganypet.phantoms.builtin_anatomy import BUILTIN, builtin_anatomy

    if anatomy is not None and str(anatomy) == BUILTIN:
        return builtin_anatomy()
    try:
        path = find_anatomy(anatomy)
    except AnatomyError:
        if anatomy is not None or os.environ.get("SEGANYPET_ANATOMY"):
            raise
        logger.warning(
            "the shared CT organ map (data/anatomy) was not found; using the built-in parametric "
            "torso anatomy (idealised organ shapes). Give the folder with --anatomy or SEGANYPET_ANATOMY."
        )
        return builtin_anatomy()
    return _load_cached(str(path.resolve()))


def source_lookup_tables() -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables over TotalSegmentator ids 0..255: -> organ id (0 = none), -> tissue id."""
    to_organ = np.zeros(256, dtype=np.uint8)
    to_tissue = np.zeros(256, dtype=np.uint8)
    for src, organ in SOURCE_TO_ORGAN.items():
        to_organ[src] = ORGANS[organ]
        to_tissue[src] = TID[ORGAN_TISSUE[organ]]
    return to_organ, to_tissue


def body_mask_from_ct(ct: np.ndarray) -> np.ndarray:
    """The patient's body (bool, same shape) from CT HU: the largest connected component above
    -400 HU after an opening that removes the thin scanner table; holes filled slice by slice."""
    mask = ndimage.binary_opening(ct > -400, structure=np.ones((3, 3, 1), bool), iterations=2)
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    mask = lab == int(np.argmax(sizes))
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return mask


@dataclass
class Subject:
    """Per-subject body geometry: scale factors along x, y, z, smooth displacement amplitude (mm)."""

    scale: tuple[float, float, float]
    warp_mm: float
    weight_kg: float
    height_m: float
    sex: str


def draw_subject(rng: np.random.Generator, anatomy_sex: str = "M") -> Subject:
    """Random body size: common scale ~ N(1, 0.06) in x/y with separate width/depth, z ~ N(1, 0.04)."""
    s = float(np.clip(rng.normal(1.0, 0.06), 0.88, 1.12))
    sx = float(np.clip(s * rng.normal(1.0, 0.025), 0.85, 1.15))
    sy = float(np.clip(s * rng.normal(1.0, 0.04), 0.85, 1.18))
    sz = float(np.clip(rng.normal(1.0, 0.04), 0.92, 1.08))
    height = 1.76 * sz
    weight = float(np.clip(75.0 * sx * sy * sz * rng.normal(1.0, 0.05), 40.0, 140.0))
    return Subject(
        (sx, sy, sz), float(rng.uniform(3.0, 7.0)), round(weight, 1), round(height, 2), anatomy_sex
    )


def smooth_displacement(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: float,
    amp_mm: float,
    corr_mm: float = 45.0,
) -> np.ndarray:
    """A random smooth displacement field, shape ``(3, I, J, K)`` in mm (x, y, z components).

    Gaussian noise on a coarse grid (node spacing ``corr_mm``), cubic-spline upsampled, scaled so that
    the per-component standard deviation is about ``amp_mm``.
    """
    coarse = tuple(max(2, int(np.ceil(n * spacing / corr_mm)) + 1) for n in shape)
    mid = tuple(max(2, int(np.ceil(n / 3))) for n in shape)  # cubic to 1/3 resolution, then linear
    field = np.empty((3, *shape), dtype=np.float32)
    for c in range(3):
        nodes = rng.normal(0.0, amp_mm, size=coarse)
        up = ndimage.zoom(
            nodes, [n / m for n, m in zip(mid, coarse)], order=3, mode="nearest", grid_mode=True
        )
        up = ndimage.zoom(
            up.astype(np.float32),
            [n / m for n, m in zip(shape, up.shape)],
            order=1,
            mode="nearest",
            grid_mode=True,
        )
        field[c] = up[: shape[0], : shape[1], : shape[2]]
    return field


def warp_source(
    src: SourceAnatomy,
    out_affine: np.ndarray,
    out_shape: tuple[int, int, int],
    subject: Subject,
    centre_mm: np.ndarray,
    displacement: np.ndarray,
    codes: np.ndarray | None = None,
    clamp_z: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample the source anatomy onto the output grid through scaling about ``centre_mm`` and the
    displacement field.

    Output point ``p`` (mm) takes the source at ``centre + (p - centre) / scale + d(p)``.
    ``codes`` (uint8, source shape) replaces the source labels when given (e.g. labels plus a body flag);
    points outside the source take code :data:`OUTSIDE_CODE`. ``clamp_z`` repeats the first/last source
    slice beyond the source's axial range instead.
    Returns ``codes`` uint8 (nearest), ``ct`` float32 HU (linear, -1000 outside in x/y)
    and ``valid`` bool (the source covers the point axially), all of shape ``out_shape``.
    """
    ii, jj, kk = (np.arange(n, dtype=np.float32) for n in out_shape)
    sp = np.asarray(np.linalg.norm(out_affine[:3, :3], axis=0), dtype=np.float32)
    org = out_affine[:3, 3].astype(np.float32)
    scale = np.asarray(subject.scale, dtype=np.float32)
    c = centre_mm.astype(np.float32)
    inv = np.linalg.inv(src.affine).astype(np.float32)
    # axis-aligned affines on both sides (asserted by the caller): separable source index per axis
    coords = []
    for axis, grid in enumerate((ii, jj, kk)):
        p = org[axis] + sp[axis] * grid
        q = c[axis] + (p - c[axis]) / scale[axis]
        shape = [1, 1, 1]
        shape[axis] = len(grid)
        q = q.reshape(shape) + displacement[axis]
        coords.append(inv[axis, axis] * q + inv[axis, 3])
    coords_arr = np.stack(coords)
    valid = (coords_arr[2] >= -0.5) & (coords_arr[2] <= src.labels.shape[2] - 0.5)
    if clamp_z:
        np.clip(coords_arr[2], 0.0, src.labels.shape[2] - 1.0, out=coords_arr[2])
        valid[...] = True
    source = src.labels if codes is None else codes
    labels = ndimage.map_coordinates(source, coords_arr, order=0, mode="constant", cval=OUTSIDE_CODE)
    ct = ndimage.map_coordinates(
        src.ct.astype(np.float32), coords_arr, order=1, mode="nearest", prefilter=False
    )
    # outside the source in x/y: air
    inside_xy = np.ones(out_shape, bool)
    for axis in (0, 1):
        inside_xy &= (coords_arr[axis] >= -0.5) & (coords_arr[axis] <= src.labels.shape[axis] - 0.5)
    ct[~inside_xy] = -1000.0
    return labels.astype(np.uint8), ct.astype(np.float32), valid
