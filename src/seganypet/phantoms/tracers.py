"""Tracer uptake profiles (SUVbw) with between-subject variation.

Each tissue has a population mean SUV and a between-subject coefficient of variation; a subject's
value is drawn from a log-normal with that mean and CV. Within a tissue, uptake varies smoothly
(a correlated multiplicative texture with a tissue-specific amplitude, strong in bowel and stomach).

Sources for the typical values: FDG normal-organ SUVs in adults (e.g. Zincirkeser et al. 2007;
Wang et al. 2007: liver ~2, blood pool ~1.6-1.8, muscle ~0.7, fat ~0.3, lung ~0.4-0.5, brain 8-10),
PSMA-11 / DCFPyL biodistribution (e.g. Prasad et al. 2016; Werner et al. 2020: kidneys ~30-40,
salivary glands ~12-18, liver ~5, spleen ~6, low brain).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seganypet.phantoms.anatomy import TID, TISSUES

# tissue -> (mean SUV, between-subject CV)
PROFILES: dict[str, dict[str, tuple[float, float]]] = {
    "fdg": {
        "outside": (0.0, 0.0),
        "fat": (0.30, 0.25),
        "soft_tissue": (0.75, 0.2),
        "bone": (0.55, 0.2),
        "air": (0.05, 0.0),
        "liver": (2.1, 0.15),
        "spleen": (1.8, 0.15),
        "kidney": (2.8, 0.25),
        "renal_pelvis": (12.0, 0.6),
        "bladder": (25.0, 0.6),
        "lung": (0.45, 0.25),
        "myocardium": (5.0, 0.0),  # drawn separately: suppressed or avid
        "blood": (1.65, 0.15),
        "brain_gm": (13.0, 0.15),
        "brain_wm": (5.5, 0.2),
        "marrow": (1.7, 0.2),
        "femur": (0.9, 0.25),
        "muscle": (0.75, 0.2),
        "stomach": (1.8, 0.3),
        "bowel": (1.6, 0.35),
        "pancreas": (1.4, 0.2),
        "gallbladder": (0.9, 0.3),
        "prostate": (1.8, 0.2),
        "spinal_cord": (1.4, 0.15),
        "adrenal": (1.5, 0.2),
        "salivary": (1.9, 0.3),
        "skull": (0.6, 0.2),
        "ribs": (0.9, 0.2),
        "csf": (0.3, 0.2),
    },
    "psma": {
        "outside": (0.0, 0.0),
        "fat": (0.15, 0.3),
        "soft_tissue": (0.45, 0.25),
        "bone": (0.35, 0.25),
        "air": (0.02, 0.0),
        "liver": (5.0, 0.3),
        "spleen": (6.0, 0.4),
        "kidney": (35.0, 0.35),
        "renal_pelvis": (60.0, 0.6),
        "bladder": (40.0, 0.8),
        "lung": (0.3, 0.25),
        "myocardium": (1.2, 0.25),
        "blood": (1.5, 0.25),
        "brain_gm": (0.2, 0.3),
        "brain_wm": (0.15, 0.3),
        "marrow": (1.0, 0.3),
        "femur": (0.6, 0.3),
        "muscle": (0.6, 0.25),
        "stomach": (2.5, 0.35),
        "bowel": (4.0, 0.5),
        "pancreas": (1.5, 0.3),
        "gallbladder": (1.0, 0.4),
        "prostate": (2.5, 0.3),
        "spinal_cord": (0.3, 0.3),
        "adrenal": (2.0, 0.3),
        "salivary": (15.0, 0.35),
        "skull": (0.3, 0.3),
        "ribs": (0.8, 0.3),
        "csf": (0.1, 0.3),
    },
}
TRACERS = tuple(PROFILES)

# relative amplitude (std) of the smooth within-tissue texture
TEXTURE: dict[str, float] = {
    "bowel": 0.35,
    "stomach": 0.2,
    "muscle": 0.12,
    "marrow": 0.12,
    "myocardium": 0.15,
    "kidney": 0.08,
    "lung": 0.12,
    "fat": 0.15,
    "soft_tissue": 0.12,
}
DEFAULT_TEXTURE = 0.06


def draw_uptake(tracer: str, rng: np.random.Generator) -> dict[str, float]:
    """One subject's mean SUV per tissue (log-normal around the population mean)."""
    out: dict[str, float] = {}
    for tissue, (mean, cv) in PROFILES[tracer].items():
        if cv > 0:
            sigma = np.sqrt(np.log1p(cv * cv))
            out[tissue] = float(mean * np.exp(rng.normal(0.0, sigma) - sigma * sigma / 2.0))
        else:
            out[tissue] = float(mean)
    if tracer == "fdg":  # myocardium: suppressed after fasting in ~40 %, otherwise avid and variable
        out["myocardium"] = float(rng.uniform(1.5, 2.8) if rng.random() < 0.4 else rng.uniform(3.5, 12.0))
    return out


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field (float32) with correlation ``sigma_vox`` voxels."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    sd = float(f.std())
    return f / sd if sd > 0 else f


def activity_map(
    tissue: np.ndarray, uptake: dict[str, float], rng: np.random.Generator, spacing: float
) -> np.ndarray:
    """Noiseless activity (SUV, float32, same shape as ``tissue``) from the tissue map, the subject's
    uptake per tissue and a smooth within-tissue texture (correlation ~ 10 mm)."""
    lut = np.array([uptake.get(name, 0.0) for name in TISSUES], dtype=np.float32)
    amp = np.array([TEXTURE.get(name, DEFAULT_TEXTURE) for name in TISSUES], dtype=np.float32)
    act = lut[tissue]
    tex = smooth_noise(rng, tissue.shape, max(1.0, 10.0 / spacing))
    act *= np.clip(1.0 + amp[tissue] * tex, 0.2, 3.0)
    act[tissue == TID["outside"]] = 0.0
    return act.astype(np.float32)
