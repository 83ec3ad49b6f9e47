"""Synthetic lesions: count, site, size, shape and contrast drawn per subject.

- Sites: liver, lung, bone (spine, pelvis, femurs, ribs), lymph nodes (beside the aorta, vena cava and
  iliac / femoral vessels), soft tissue (muscle, subcutaneous and visceral fat), and the prostate for
  PSMA. Each site has its own size range inside 4-60 mm.
- Shapes: ellipsoids with random axes and orientation whose boundary is perturbed by a smooth random
  field (irregular outline); large lesions may have a necrotic (photopenic) core; nodal "clusters"
  are 2-4 overlapping lobes labelled as one conglomerate.
- Contrast: lesion-to-local-background ratio, log-uniform in [1.5, 15], with the background taken as
  the median true uptake in a shell around the lesion; the lesion SUV is at least 1.2 where the range
  allows it (a lesion in fat at SUV 0.45 is invisible and useless for training).
- Truth: partial voxel occupancy from 3x supersampling, so small lesions have realistic true
  partial-volume activity; a voxel belongs to the lesion label when at least half of it is lesion (the
  voxel nearest the centre always does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from seganypet.phantoms.anatomy import LESION_BASE, ORGANS, TID

logger = logging.getLogger("seganypet.phantoms")

SIZE_RANGE_MM = (4.0, 60.0)
CONTRAST_RANGE = (1.5, 15.0)

# site -> (diameter range mm, weight FDG, weight PSMA)
SITES: dict[str, tuple[tuple[float, float], float, float]] = {
    "liver": ((5.0, 60.0), 0.25, 0.05),
    "lung": ((4.0, 45.0), 0.2, 0.05),
    "bone": ((6.0, 40.0), 0.17, 0.35),
    "lymph_node": ((5.0, 35.0), 0.23, 0.4),
    "soft_tissue": ((8.0, 60.0), 0.15, 0.05),
    "prostate": ((6.0, 25.0), 0.0, 0.1),
}


@dataclass
class Lesion:
    """One lesion as drawn (JSON-able via ``asdict``)."""

    label: int
    name: str
    site: str
    shape: str
    diameter_mm: float
    contrast: float
    background_suv: float
    suv: float
    centre_mm: list[float]
    voxels: int = 0
    volume_ml: float = 0.0  # labelled voxels x voxel volume
    necrotic: bool = False
    extra: dict = field(default_factory=dict)


def _site_masks(organ: np.ndarray, tissue: np.ndarray, spacing: float) -> dict[str, np.ndarray]:
    o = organ
    bone = np.isin(o, [ORGANS["spine"], ORGANS["pelvis"], ORGANS["femurs"], ORGANS["ribs"]])
    vessels = np.isin(o, [ORGANS["aorta"], ORGANS["vena_cava"], ORGANS["iliac_vessels"]])
    near = ndimage.binary_dilation(vessels, iterations=max(1, int(round(14.0 / spacing))))
    soft = np.isin(tissue, [TID["fat"], TID["soft_tissue"]]) & (o == 0)
    nodes = near & ~ndimage.binary_dilation(vessels, iterations=1) & soft
    return {
        "liver": o == ORGANS["liver"],
        "lung": np.isin(o, [ORGANS["lung_left"], ORGANS["lung_right"]]),
        "bone": bone,
        "lymph_node": nodes,
        "soft_tissue": (o == ORGANS["muscles"]) | (soft & ~near),
        "prostate": o == ORGANS["prostate"],
    }


def _shape_occupancy(
    rng: np.random.Generator, semi: np.ndarray, shape_kind: str, spacing: float, irregular: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Occupancy fraction (0..1), necrotic-core fraction and the box half-size in voxels.

    The box is centred on the lesion centre voxel; shapes are evaluated on a 3x supersampled grid.
    """
    lobes: list[tuple[np.ndarray, np.ndarray]] = []  # (centre offset mm, semi axes)
    rot = Rotation.random(random_state=int(rng.integers(2**31)))
    lobes.append((np.zeros(3), semi))
    if shape_kind == "cluster":
        for _ in range(int(rng.integers(1, 4))):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            r = semi * rng.uniform(0.55, 0.85)
            lobes.append((direction * float(semi.mean()) * rng.uniform(0.8, 1.3), r))
    extent = max(float(np.linalg.norm(c) + s.max()) for c, s in lobes) * (1.0 + irregular) + spacing
    half = int(np.ceil(extent / spacing)) + 1
    ss = 3
    ax = (np.arange((2 * half + 1) * ss) - ((2 * half + 1) * ss - 1) / 2.0) * (spacing / ss)
    P = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1)  # (n,n,n,3) mm
    n = P.shape[0]
    noise = ndimage.gaussian_filter(rng.standard_normal((n, n, n)).astype(np.float32), max(1.0, n / 6.0))
    noise /= max(float(noise.std()), 1e-6)
    inside = np.zeros((n, n, n), bool)
    core = np.zeros((n, n, n), bool)
    rmat = rot.as_matrix()
    for centre, s in lobes:
        q = (P - centre) @ rmat  # rotate into the lobe's frame
        rho = np.sqrt(((q / s) ** 2).sum(-1))
        inside |= rho <= 1.0 + irregular * noise
        if shape_kind == "necrotic" and not np.any(centre):
            core |= rho <= rng.uniform(0.4, 0.65)
    occ = inside.reshape(2 * half + 1, ss, 2 * half + 1, ss, 2 * half + 1, ss).mean(axis=(1, 3, 5))
    cor = core.reshape(2 * half + 1, ss, 2 * half + 1, ss, 2 * half + 1, ss).mean(axis=(1, 3, 5))
    return occ.astype(np.float32), cor.astype(np.float32), np.array([half] * 3)


def draw_lesion_count(rng: np.random.Generator) -> int:
    """1-15 lesions, mostly 2-8 (Poisson(4) + 1)."""
    return int(min(15, 1 + rng.poisson(4.0)))


def add_lesions(
    organ: np.ndarray,
    tissue: np.ndarray,
    activity: np.ndarray,
    labels: np.ndarray,
    spacing: float,
    affine: np.ndarray,
    rng: np.random.Generator,
    tracer: str = "fdg",
    n_lesions: int | None = None,
) -> list[Lesion]:
    """Insert lesions in place.

    Args:
        organ, tissue: (I,J,K) organ and tissue id maps (read only).
        activity: (I,J,K) float32 true SUV, modified in place.
        labels: (I,J,K) int label map (organs), lesion voxels overwritten with ``LESION_BASE + n``.
        spacing: isotropic voxel size (mm); affine: voxel -> RAS mm (for the reported centres).
        n_lesions: how many (None: drawn, see :func:`draw_lesion_count`).

    Returns:
        The inserted lesions (fewer than asked when no room was found).
    """
    if n_lesions is None:
        n_lesions = draw_lesion_count(rng)
    masks = _site_masks(organ, tissue, spacing)
    names = list(SITES)
    col = 1 if tracer == "fdg" else 2
    w = np.array([SITES[s][col] if masks[s].any() else 0.0 for s in names], dtype=np.float64)
    if w.sum() == 0 or n_lesions <= 0:
        return []
    w /= w.sum()
    cand_cache: dict[str, np.ndarray] = {}
    lesions: list[Lesion] = []
    shape = np.array(activity.shape)
    for _ in range(n_lesions):
        for _attempt in range(25):
            site = names[int(rng.choice(len(names), p=w))]
            (dmin, dmax) = SITES[site][0]
            d = float(np.exp(rng.uniform(np.log(dmin), np.log(dmax))))
            if site not in cand_cache:
                cand_cache[site] = np.argwhere(masks[site])
            cands = cand_cache[site]
            centre = cands[int(rng.integers(len(cands)))]
            aspect = rng.uniform(0.7, 1.3, size=3)
            aspect /= np.prod(aspect) ** (1 / 3)
            semi = d / 2.0 * aspect
            if site == "lymph_node" and d > 12 and rng.random() < 0.4:
                kind = "cluster"
                semi = semi * 0.7
                d *= 0.7  # nominal diameter of the main lobe
            elif d >= 20.0 and rng.random() < 0.45:
                kind = "necrotic"
            else:
                kind = "ellipsoid"
            irregular = float(rng.uniform(0.05, 0.3))
            occ, core, half = _shape_occupancy(rng, semi, kind, spacing, irregular)
            lo = centre - half
            hi = centre + half + 1
            if np.any(lo < 0) or np.any(hi > shape):
                continue
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            lab_box = labels[box]
            member = occ >= 0.5
            member[tuple(half)] = True
            if np.any(lab_box[member | (occ > 0)] >= LESION_BASE):
                continue  # would touch another lesion
            if np.any(tissue[box][member] == TID["outside"]):
                continue  # would stick out of the body
            act_box = activity[box]
            shell = ndimage.binary_dilation(occ > 0, iterations=max(1, int(round(6.0 / spacing)))) & (
                occ == 0
            )
            bg_vals = act_box[shell & (tissue[box] != TID["outside"])]
            bg = float(np.median(bg_vals)) if bg_vals.size else float(act_box[tuple(half)])
            bg = max(bg, 0.05)
            c = float(np.exp(rng.uniform(np.log(CONTRAST_RANGE[0]), np.log(CONTRAST_RANGE[1]))))
            c = float(np.clip(max(c, 1.2 / bg), CONTRAST_RANGE[0], CONTRAST_RANGE[1]))
            suv = c * bg
            het = ndimage.gaussian_filter(rng.standard_normal(occ.shape), 1.0)
            het = 1.0 + 0.12 * het / max(float(het.std()), 1e-6)
            lesion_act = suv * np.clip(het, 0.6, 1.4)
            if kind == "necrotic":
                lesion_act = lesion_act * (1.0 - core) + core * bg * float(rng.uniform(0.2, 0.8))
            act_box[...] = act_box * (1.0 - occ) + occ * lesion_act
            label = LESION_BASE + len(lesions)
            lab_box[member] = label
            voxels = int(member.sum())
            true_ml = float(occ.sum()) * spacing**3 / 1000.0
            centre_mm = (affine[:3, :3] @ centre + affine[:3, 3]).round(1).tolist()
            lesions.append(
                Lesion(
                    label=label,
                    name=f"lesion_{len(lesions) + 1:02d}",
                    site=site,
                    shape=kind,
                    diameter_mm=round(d, 2),
                    contrast=round(c, 3),
                    background_suv=round(bg, 3),
                    suv=round(suv, 3),
                    centre_mm=centre_mm,
                    voxels=voxels,
                    volume_ml=round(voxels * spacing**3 / 1000.0, 3),
                    necrotic=kind == "necrotic",
                    extra={
                        "true_volume_ml": round(true_ml, 4),
                        "equivalent_diameter_mm": round(
                            float((6.0 * true_ml * 1000.0 / np.pi) ** (1 / 3)), 2
                        ),
                        "irregularity": round(irregular, 3),
                    },
                )
            )
            break
        else:
            logger.info("no room found for a lesion after 25 attempts; skipping it")
    return lesions
