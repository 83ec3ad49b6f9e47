"""The phantom generator: :func:`make_phantom` and :func:`save_phantom`.

A phantom is drawn in this order, each step from its own random stream spawned from the seed (so one
option changing, e.g. the count level, leaves the anatomy and lesions of a seed unchanged):
subject size -> smooth deformation of the shared anatomy -> (whole body: parametric thorax, neck,
head and thighs) -> tissue map -> tracer uptake -> lesions -> scanner (projection, counts, OSEM).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from seganypet.errors import InputError
from seganypet.image import PETImage
from seganypet.phantoms import lesions as lesion_mod
from seganypet.phantoms import parametric, scanner, tracers
from seganypet.phantoms.anatomy import (
    LESION_BASE,
    ORGAN_NAMES,
    ORGANS,
    OUTSIDE_CODE,
    TID,
    SourceAnatomy,
    body_mask_from_ct,
    draw_subject,
    load_anatomy,
    smooth_displacement,
    source_lookup_tables,
    warp_source,
)
from seganypet.utils import atomic_path

logger = logging.getLogger("seganypet.phantoms")

KINDS = ("torso", "wholebody")
DEFAULT_COUNTS = 2e5  # median true coincidences per mm of axial length (varied per subject by default)
FOV_XY_MM = (440.0, 372.0)  # transaxial field of view of the output grid
HALF_LIFE_S = {"fdg": 6586.2, "psma": 4062.6}  # F-18, Ga-68
DOSE_MBQ_PER_KG = {"fdg": 3.7, "psma": 2.0}
RADIOPHARMACEUTICAL = {"fdg": "Fluorodeoxyglucose F^18^", "psma": "Ga-68 PSMA-11"}
RADIONUCLIDE = {"fdg": "^18^Fluorine", "psma": "^68^Gallium"}


@dataclass
class Phantom:
    """A synthetic PET study with its ground truth.

    Attributes:
        pet: reconstructed image, :class:`PETImage` in SUVbw, float32 (I, J, K), RAS affine (mm).
        labels: int16 (I, J, K) label map on the same grid: organ ids (see ``ORGANS``) and lesion ids
            from 101 upwards; 0 = no label.
        label_info: ``{label: {"name": str, "kind": "organ" | "lesion"}}`` for every label present.
        truth: float32 (I, J, K) noiseless true activity in SUV (before system blur and noise).
        ct: float32 (I, J, K) CT numbers (HU) used for the attenuation map.
        lesions: one dict per lesion (label, name, site, shape, diameter_mm, contrast, suv ...).
        info: generation parameters and measured facts (seed, kind, tracer, counts, times ...).
    """

    pet: PETImage
    labels: np.ndarray
    label_info: dict[int, dict[str, str]]
    truth: np.ndarray
    ct: np.ndarray
    lesions: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> dict[int, str]:
        """Label id -> name."""
        return {k: v["name"] for k, v in self.label_info.items()}


@functools.lru_cache(maxsize=2)
def _source_codes(src: SourceAnatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source code map (labels; 0 = body without label; OUTSIDE_CODE = outside the body), body centre
    (mm) and the source's axial range (z_lo, z_hi mm)."""
    body = body_mask_from_ct(np.asarray(src.ct)) | (src.labels > 0)
    codes = np.where(body, src.labels, OUTSIDE_CODE).astype(np.uint8)
    ii, jj, _ = np.nonzero(body)
    n = np.array(src.labels.shape)
    centre_vox = np.array([(ii.min() + ii.max()) / 2.0, (jj.min() + jj.max()) / 2.0, (n[2] - 1) / 2.0])
    centre = src.affine[:3, :3] @ centre_vox + src.affine[:3, 3]
    z = sorted([float((src.affine @ [0, 0, k, 1])[2]) for k in (0, n[2] - 1)])
    codes.setflags(write=False)
    return codes, centre, np.array(z)


def _check_args(kind: str, tracer: str, spacing: float) -> None:
    if kind not in KINDS:
        raise InputError(f"unknown phantom kind {kind!r}; choose one of {', '.join(KINDS)}")
    if tracer not in tracers.TRACERS:
        raise InputError(f"unknown tracer {tracer!r}; choose one of {', '.join(tracers.TRACERS)}")
    if not (1.0 <= float(spacing) <= 12.0):
        raise InputError(f"phantom spacing must be between 1 and 12 mm, got {spacing}")


def make_phantom(
    seed: int,
    kind: str = "torso",
    tracer: str = "fdg",
    spacing: float = 3.0,
    *,
    anatomy: str | os.PathLike[str] | None = None,
    counts: float | None = None,
    n_lesions: int | None = None,
    iterations: int = 3,
    subsets: int = 24,
    post_fwhm_mm: float = 5.0,
) -> Phantom:
    """Generate one synthetic PET study, deterministic by ``seed``.

    Args:
        seed: random seed (same seed + options -> identical phantom).
        kind: ``"torso"`` (the anatomy's field of view, lower thorax to hips, ~336 mm axially) or
            ``"wholebody"`` (mid-thigh to vertex, ~1 m).
        tracer: ``"fdg"`` or ``"psma"``.
        spacing: isotropic voxel size of the output grid in mm.
        anatomy: folder with ``organs.nii.gz`` and ``ct.nii.gz`` (default: see
            :func:`seganypet.phantoms.anatomy.find_anatomy`).
        counts: true coincidences per mm of axial length (lower = noisier); default: 2e5 times a
            per-subject log-normal factor (sigma 0.3), so the noise level varies between phantoms.
        n_lesions: number of lesions (default: drawn, 1-15).
        iterations, subsets: OSEM settings; post_fwhm_mm: Gaussian post-filter FWHM (mm).

    Returns:
        :class:`Phantom` (PET in SUVbw on a RAS grid, labels, label_info, truth, CT, lesions, info).

    Raises:
        InputError: bad kind / tracer / spacing; AnatomyError (an InputError) when the anatomy is missing.
    """
    _check_args(kind, tracer, spacing)
    if n_lesions is not None and not (0 <= int(n_lesions) <= 150):
        raise InputError(f"n_lesions must be between 0 and 150, got {n_lesions}")
    if counts is not None and not (float(counts) > 0):
        raise InputError(f"counts must be positive, got {counts}")
    t0 = time.perf_counter()
    sp = float(spacing)
    rng_subject, rng_warp, rng_shapes, rng_tracer, rng_lesion, rng_scan = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(6)
    )
    src = load_anatomy(anatomy)
    if np.count_nonzero(src.affine[:3, :3] - np.diag(np.diag(src.affine[:3, :3]))) > 0:
        raise InputError(f"the phantom anatomy in {src.path} must be axis-aligned (no oblique affine)")
    codes_src, centre, (z_lo, z_hi) = _source_codes(src)
    subject = draw_subject(rng_subject)
    sx, sy, sz = subject.scale

    # output grid
    nx, ny = (int(round(f / sp)) for f in FOV_XY_MM)
    length = (z_hi - z_lo) * sz
    z_anat_lo = centre[2] - (centre[2] - z_lo) * sz
    if kind == "torso":
        z0, total = z_anat_lo, length
    else:
        below = 200.0 * sz
        above = 380.0 * sz + 125.0
        z0, total = z_anat_lo - below, below + length + above
    nz = int(round(total / sp))
    affine = np.diag([sp, sp, sp, 1.0])
    affine[:3, 3] = [centre[0] - (nx - 1) / 2.0 * sp, centre[1] - (ny - 1) / 2.0 * sp, z0 + sp / 2.0]
    shape = (nx, ny, nz)

    # anatomy: scale + smooth deformation
    disp = smooth_displacement(rng_warp, shape, sp, subject.warp_mm)
    codes, ct, valid = warp_source(
        src, affine, shape, subject, centre, disp, codes_src, clamp_z=kind == "torso"
    )
    del disp
    to_organ, to_tissue = source_lookup_tables()
    organ = to_organ[codes]
    tissue = to_tissue[codes]
    unl = codes == 0  # body without an organ label: tissue from CT
    tissue[unl] = TID["soft_tissue"]
    tissue[unl & (ct < -20.0)] = TID["fat"]
    tissue[unl & (ct < -400.0)] = TID["air"]
    tissue[unl & (ct > 200.0)] = TID["bone"]
    tissue[codes == OUTSIDE_CODE] = TID["outside"]
    t_anat = time.perf_counter()

    if kind == "wholebody":
        full = valid.all(axis=(0, 1))
        ks = np.nonzero(full)[0]
        k_bot, k_top = int(ks.min()), int(ks.max())
        for sl in (np.s_[:, :, k_top + 1 :], np.s_[:, :, :k_bot]):
            organ[sl] = 0
            tissue[sl] = TID["outside"]
            ct[sl] = -1000.0
        X = (affine[0, 3] + sp * np.arange(nx, dtype=np.float32)).reshape(-1, 1, 1)
        Y = (affine[1, 3] + sp * np.arange(ny, dtype=np.float32)).reshape(1, -1, 1)
        Z = (affine[2, 3] + sp * np.arange(nz, dtype=np.float32)).reshape(1, 1, -1)
        cv = parametric.Canvas(organ, tissue, ct, X, Y, Z)
        parametric.extend_up(cv, k_top, subject.scale, rng_shapes)
        parametric.extend_down(cv, k_bot, subject.scale)
    _add_bladder_if_missing(organ, tissue, ct, affine, sp)
    _split_kidneys(organ, tissue, sp)

    uptake = tracers.draw_uptake(tracer, rng_tracer)
    truth = tracers.activity_map(tissue, uptake, rng_tracer, sp)
    labels = organ.astype(np.int16)
    lesions = lesion_mod.add_lesions(organ, tissue, truth, labels, sp, affine, rng_lesion, tracer, n_lesions)
    t_truth = time.perf_counter()

    fwhm_xy = float(rng_scan.uniform(4.5, 5.5))
    fwhm_z = float(rng_scan.uniform(4.5, 6.0))
    # count level: as given, else the default varied per subject (dose, scan time, body habitus)
    count_level = (
        float(counts) if counts is not None else DEFAULT_COUNTS * float(rng_scan.lognormal(0.0, 0.3))
    )
    params = scanner.ScanParams(
        counts=count_level,
        psf_fwhm_mm=(fwhm_xy, fwhm_z),
        iterations=int(iterations),
        subsets=int(subsets),
        post_fwhm_mm=float(post_fwhm_mm),
        scatter_fraction=float(rng_scan.uniform(0.3, 0.42)),
        randoms_fraction=float(rng_scan.uniform(0.15, 0.45)),
    )
    mu = scanner.hu_to_mu(ct)
    result = scanner.scan(truth, mu, (sp, sp, sp), params, rng_scan)
    t_scan = time.perf_counter()

    present = np.unique(labels)
    label_info: dict[int, dict[str, str]] = {}
    for lab in present.tolist():
        if lab == 0:
            continue
        if lab >= LESION_BASE:
            label_info[lab] = {"name": f"lesion_{lab - LESION_BASE + 1:02d}", "kind": "lesion"}
        else:
            label_info[lab] = {"name": ORGAN_NAMES[lab], "kind": "organ"}
    lesion_dicts = [asdict(les) for les in lesions if les.label in label_info]
    dose = DOSE_MBQ_PER_KG[tracer] * subject.weight_kg * 1e6 * float(rng_subject.uniform(0.9, 1.1))
    uptake_min = float(
        rng_subject.uniform(55.0, 75.0) if tracer == "fdg" else rng_subject.uniform(50.0, 70.0)
    )
    info: dict[str, Any] = {
        "seed": int(seed),
        "kind": kind,
        "tracer": tracer,
        "anatomy_source": "builtin" if str(src.path) == "builtin" else "ct-organ-map",
        "spacing_mm": sp,
        "shape": list(shape),
        "scale": [round(v, 4) for v in subject.scale],
        "warp_mm": round(subject.warp_mm, 2),
        "uptake_suv": {k: round(v, 3) for k, v in uptake.items()},
        "scanner": {
            "counts_per_mm": round(params.counts),
            "trues": round(result.trues),
            "scatter": round(result.scatter),
            "randoms": round(result.randoms),
            "scatter_fraction": round(params.scatter_fraction, 3),
            "randoms_fraction": round(params.randoms_fraction, 3),
            "psf_fwhm_mm": [round(fwhm_xy, 2), round(fwhm_z, 2)],
            "recon": f"OSEM 2D {params.iterations}i{params.subsets}s, PSF {params.recon_psf_fwhm_mm} mm, "
            f"post-filter {params.post_fwhm_mm} mm",
            "angles": result.n_angles,
            "bins": result.n_bins,
        },
        "times_s": {
            "anatomy": round(t_anat - t0, 2),
            "truth": round(t_truth - t_anat, 2),
            "scan": round(t_scan - t_truth, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
    }
    metadata = {
        "patient_weight_kg": subject.weight_kg,
        "patient_height_m": subject.height_m,
        "patient_sex": subject.sex,
        "tracer": tracer,
        "radiopharmaceutical": RADIOPHARMACEUTICAL[tracer],
        "injected_dose_bq": round(dose),
        "half_life_s": HALF_LIFE_S[tracer],
        "uptake_time_s": round(uptake_min * 60.0),
        "phantom_seed": int(seed),
        "phantom_kind": kind,
        "synthetic": True,
    }
    pet = PETImage(result.image, affine, units="SUVbw", metadata=metadata)
    logger.info(
        "phantom seed %d (%s, %s): %s, %d lesions, %.1f s",
        seed,
        kind,
        tracer,
        pet.summary(),
        len(lesion_dicts),
        info["times_s"]["total"],
    )
    return Phantom(pet, labels, label_info, truth, ct.astype(np.float32), lesion_dicts, info)


def _add_bladder_if_missing(
    organ: np.ndarray, tissue: np.ndarray, ct: np.ndarray, affine: np.ndarray, sp: float
) -> None:
    """An ellipsoidal bladder above the pubic bones when the anatomy has (almost) none (< 20 mL)."""
    if np.count_nonzero(organ == ORGANS["bladder"]) * sp**3 / 1000.0 >= 20.0:
        return
    pelvis = np.argwhere(organ == ORGANS["pelvis"])
    if pelvis.size == 0:
        return
    c = pelvis.mean(axis=0)
    c[1] = np.percentile(pelvis[:, 1], 85)  # anterior
    semi = np.array([35.0, 28.0, 30.0]) / sp
    ii, jj, kk = np.ogrid[: organ.shape[0], : organ.shape[1], : organ.shape[2]]
    m = ((ii - c[0]) / semi[0]) ** 2 + ((jj - c[1]) / semi[1]) ** 2 + ((kk - c[2]) / semi[2]) ** 2 <= 1
    m &= tissue != TID["outside"]
    m &= ~np.isin(organ, [ORGANS["pelvis"], ORGANS["femurs"], ORGANS["spine"]])
    organ[m] = ORGANS["bladder"]
    tissue[m] = TID["bladder"]
    ct[m] = 10.0


def _split_kidneys(organ: np.ndarray, tissue: np.ndarray, sp: float) -> None:
    """Mark the renal pelvis (the deepest part of each kidney, urine activity) as its own tissue."""
    for name in ("kidney_left", "kidney_right"):
        m = organ == ORGANS[name]
        if not m.any():
            continue
        sl = ndimage.find_objects(m.astype(np.uint8))[0]
        edt = ndimage.distance_transform_edt(m[sl], sampling=sp)
        core = edt > 0.62 * float(edt.max())
        tissue[sl][core] = TID["renal_pelvis"]


def save_phantom(phantom: Phantom, out_dir: str | os.PathLike[str], dicom: bool = False) -> dict[str, Path]:
    """Write a phantom into ``out_dir`` (created if needed); each file is written atomically.

    Files: ``pet.nii.gz`` (float32 SUVbw), ``labels.nii.gz`` (int16) + ``labels.json``
    (``{"labels": {"1": {"name", "kind"}}}``), ``truth.nii.gz`` (float32 noiseless SUV),
    ``ct.nii.gz`` (int16 HU), ``phantom.json`` (generation info and lesion list) and, with
    ``dicom=True``, ``dicom/`` (a PT series in Bq/mL, see :mod:`seganypet.phantoms.dicom`).

    Returns:
        name -> path of everything written.
    """
    import nibabel as nib

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"phantom output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    affine = phantom.pet.affine
    written: dict[str, Path] = {}

    def _nifti(name: str, array: np.ndarray, dtype: type, units: str | None = None) -> None:
        img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
        img.header.set_xyzt_units("mm")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        if units:
            img.header["descrip"] = units.encode()[:79]
        with atomic_path(out / name) as tmp:
            nib.save(img, str(tmp))
        written[name] = out / name

    _nifti("pet.nii.gz", phantom.pet.array, np.float32, "SUVbw")
    _nifti("labels.nii.gz", phantom.labels, np.int16)
    _nifti("truth.nii.gz", phantom.truth, np.float32, "SUVbw noiseless truth")
    _nifti("ct.nii.gz", np.clip(np.round(phantom.ct), -1024, 3071), np.int16, "HU")
    labels_json = {"labels": {str(k): dict(v) for k, v in sorted(phantom.label_info.items())}}
    _json(out / "labels.json", labels_json)
    written["labels.json"] = out / "labels.json"
    meta = {"info": phantom.info, "metadata": phantom.pet.metadata, "lesions": phantom.lesions}
    _json(out / "phantom.json", meta)
    written["phantom.json"] = out / "phantom.json"
    if dicom:
        from seganypet.phantoms.dicom import write_pet_dicom

        written["dicom"] = write_pet_dicom(phantom.pet, out / "dicom", seed=int(phantom.info.get("seed", 0)))
    return written


def _json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
