"""Image formation of the phantom scanner: 2D projection per axial slice, attenuation, scatter and
randoms, Poisson counts, OSEM reconstruction with resolution (PSF) modelling, SUV calibration.

Design (see docs/phantoms.md):

- The projector is a Joseph-type line integral (one linear interpolation per row or column crossed)
  precomputed as a sparse matrix for one transaxial slice, shape ``(n_angles * n_bins, I * J)``; all
  axial slices are projected at once as the columns of a dense ``(I * J, K)`` matrix, so a projection
  costs one sparse-dense product. Forward and back projection are exact adjoints (``A`` and ``A.T``).
- The acquisition is 2D (direct planes only, as a scanner's rebinned sinograms); the axial part of
  the system response is applied to the object in image space before projection.
- Expected prompts: ``ybar = kappa * a * A (H x) + s + r`` with ``x`` the activity in SUV, ``H`` the
  3D system blur, ``a = exp(-A mu)`` the attenuation factors, ``s`` scatter (a broad convolution of the
  attenuated trues, scaled to a scatter fraction), ``r`` randoms (smooth, a fraction of the trues) and
  ``kappa`` the scanner calibration (counts per SUV) chosen to reach the requested count level.
- Reconstruction: OSEM with an in-plane Gaussian PSF ``G`` in the model
  ``x <- x / (G A_s^T kappa a_s) * G A_s^T (kappa a_s y_s / (kappa a_s A_s G x + s_s + r_s))``,
  with ``A G`` computed as ``B A`` (``B`` the same Gaussian along the radial bins: the projection of an
  isotropic 2D Gaussian blur is a 1D Gaussian blur of each projection);
  dividing by the known ``kappa`` is the SUV calibration. An optional 3D Gaussian post-filter follows.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from seganypet.utils import progress

logger = logging.getLogger("seganypet.phantoms")

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
MU_WATER_511 = 0.0096  # 1/mm
MU_BONE_511 = 0.0172  # 1/mm, cortical bone at 511 keV


def hu_to_mu(ct: np.ndarray) -> np.ndarray:
    """CT numbers (HU, any shape) -> linear attenuation at 511 keV in 1/mm (bilinear scaling).

    Below 0 HU: mixture of air and water, ``mu = mu_w (1 + HU/1000)``; above: water-bone mixture with
    the slope ``(mu_bone - mu_w) / 1000`` per HU (bone taken at +1000 HU), as in CT-based attenuation
    correction (Kinahan et al. 1998 / Burger et al. 2002 style bilinear conversion).
    """
    hu = np.clip(ct.astype(np.float32), -1000.0, 3000.0)
    mu = np.where(
        hu <= 0.0,
        MU_WATER_511 * (1.0 + hu / 1000.0),
        MU_WATER_511 + hu * (MU_BONE_511 - MU_WATER_511) / 1000.0,
    )
    return np.maximum(mu, 0.0).astype(np.float32)


@dataclass(frozen=True)
class Geometry:
    """Sinogram geometry for an ``(nx, ny)`` slice: ``n_angles`` over 180 degrees, ``n_bins`` radial
    bins of one pixel width; the system matrix is split into ``n_subsets`` interleaved angle subsets."""

    nx: int
    ny: int
    n_angles: int
    n_bins: int
    n_subsets: int


def make_geometry(nx: int, ny: int, n_subsets: int = 8, angle_factor: float = 1.0) -> Geometry:
    """Geometry with about ``angle_factor * max(nx, ny)`` angles (a multiple of ``n_subsets``)."""
    n_angles = int(np.ceil(angle_factor * max(nx, ny) / n_subsets) * n_subsets)
    n_bins = int(np.ceil(np.hypot(nx, ny))) + 2
    return Geometry(nx, ny, n_angles, n_bins, n_subsets)


def _joseph_coo(geom: Geometry, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (angle index within ``angles`` * n_bins + bin), columns (pixel i * ny + j), weights
    (path length in pixel units) of the Joseph projector for the given angles."""
    nx, ny, nb = geom.nx, geom.ny, geom.n_bins
    xc = (nx - 1) / 2.0
    yc = (ny - 1) / 2.0
    s = np.arange(nb, dtype=np.float64) - (nb - 1) / 2.0
    rows_l, cols_l, vals_l = [], [], []
    for a_idx, theta in enumerate(angles):
        c, sn = np.cos(theta), np.sin(theta)
        # ray {p : x c + y sn = s}, direction (-sn, c)
        if abs(c) >= abs(sn):
            # ray mostly along y: step over the pixel rows y_j, interpolate in x = (s - y sn) / c
            y = np.arange(ny, dtype=np.float64) - yc
            x = (s[:, None] - y[None, :] * sn) / c + xc  # (nb, ny) fractional i
            w = 1.0 / abs(c)
            i0 = np.floor(x).astype(np.int64)
            f = x - i0
            jj = np.broadcast_to(np.arange(ny), x.shape)
            for di, wt in ((0, 1.0 - f), (1, f)):
                ii = i0 + di
                ok = (ii >= 0) & (ii < nx) & (wt > 0)
                b = np.broadcast_to(np.arange(nb)[:, None], x.shape)[ok]
                rows_l.append(a_idx * nb + b)
                cols_l.append(ii[ok] * ny + jj[ok])
                vals_l.append(wt[ok] * w)
        else:
            x = np.arange(nx, dtype=np.float64) - xc
            y = (s[:, None] - x[None, :] * c) / sn + yc  # (nb, nx) fractional j
            w = 1.0 / abs(sn)
            j0 = np.floor(y).astype(np.int64)
            f = y - j0
            ii = np.broadcast_to(np.arange(nx), y.shape)
            for dj, wt in ((0, 1.0 - f), (1, f)):
                jj = j0 + dj
                ok = (jj >= 0) & (jj < ny) & (wt > 0)
                b = np.broadcast_to(np.arange(nb)[:, None], y.shape)[ok]
                rows_l.append(a_idx * nb + b)
                cols_l.append(ii[ok] * ny + jj[ok])
                vals_l.append(wt[ok] * w)
    return np.concatenate(rows_l), np.concatenate(cols_l), np.concatenate(vals_l)


@functools.lru_cache(maxsize=4)
def system_matrices(geom: Geometry) -> tuple[list[sp.csr_matrix], list[sp.csr_matrix]]:
    """Per subset: the forward matrix ``A_s`` (float32 CSR, ``(n_angles/n_subsets * n_bins, nx*ny)``)
    and its transpose (CSR) for back projection. Cached per geometry."""
    angles = np.arange(geom.n_angles) * np.pi / geom.n_angles
    fwd, back = [], []
    for s in range(geom.n_subsets):
        sub = angles[s :: geom.n_subsets]
        r, c, v = _joseph_coo(geom, sub)
        a = sp.csr_matrix(
            (v.astype(np.float32), (r, c)),
            shape=(len(sub) * geom.n_bins, geom.nx * geom.ny),
            dtype=np.float32,
        )
        fwd.append(a)
        back.append(a.T.tocsr())
    return fwd, back


def forward(geom: Geometry, image: np.ndarray, subset: int | None = None) -> np.ndarray:
    """Project ``image`` (nx, ny, K) -> sinogram (rows, K); all subsets stacked when ``subset`` is None
    (row order: subset-major). Units: image units x pixel lengths."""
    fwd, _ = system_matrices(geom)
    x = np.ascontiguousarray(image.reshape(geom.nx * geom.ny, -1), dtype=np.float32)
    if subset is not None:
        return fwd[subset] @ x
    return np.concatenate([a @ x for a in fwd], axis=0)


def back(geom: Geometry, sino: np.ndarray, subset: int | None = None) -> np.ndarray:
    """Adjoint of :func:`forward`: sinogram rows (rows, K) -> image (nx, ny, K)."""
    _, bk = system_matrices(geom)
    if subset is not None:
        out = bk[subset] @ np.ascontiguousarray(sino, dtype=np.float32)
    else:
        n = sino.shape[0] // geom.n_subsets
        out = sum(bk[s] @ np.ascontiguousarray(sino[s * n : (s + 1) * n]) for s in range(geom.n_subsets))
    return np.asarray(out).reshape(geom.nx, geom.ny, -1)


def blur(
    image: np.ndarray, fwhm_mm: tuple[float, float, float], spacing: tuple[float, float, float]
) -> np.ndarray:
    """Gaussian blur with the given FWHM (mm) per axis; zero FWHM leaves that axis alone."""
    sigma = [f * FWHM_TO_SIGMA / s for f, s in zip(fwhm_mm, spacing)]
    if not any(sg > 0 for sg in sigma):
        return image
    return ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)


@dataclass
class ScanParams:
    """Scanner and acquisition settings.

    counts: expected true (unscattered) coincidences per mm of axial length (clinical FDG whole-body
        scans record very roughly 1e5-3e5 per mm); lower means noisier.
    psf_fwhm_mm: (in-plane, axial) FWHM of the detector response applied to the object.
    recon_psf_fwhm_mm: in-plane FWHM of the PSF model used in OSEM (0 switches resolution modelling off).
    iterations, subsets: OSEM settings. post_fwhm_mm: 3D Gaussian post-filter FWHM (0: none).
    scatter_fraction: S / (T + S). randoms_fraction: R / T.
    """

    counts: float = 2e5
    psf_fwhm_mm: tuple[float, float] = (5.0, 5.0)
    recon_psf_fwhm_mm: float = 4.5
    iterations: int = 3
    subsets: int = 24
    post_fwhm_mm: float = 5.0
    scatter_fraction: float = 0.35
    randoms_fraction: float = 0.3
    angle_factor: float = 1.0


@dataclass
class ScanResult:
    """``image`` reconstructed SUV (nx, ny, K) float32; ``kappa`` counts per SUV unit; count totals."""

    image: np.ndarray
    kappa: float
    trues: float
    scatter: float
    randoms: float
    n_angles: int
    n_bins: int


def scan(
    activity: np.ndarray,
    mu: np.ndarray,
    spacing: tuple[float, float, float],
    params: ScanParams,
    rng: np.random.Generator,
) -> ScanResult:
    """Acquire and reconstruct one phantom.

    Args:
        activity: true activity in SUV, shape (nx, ny, K), float32, axes (i, j, k) with k axial.
        mu: attenuation at 511 keV in 1/mm, same shape.
        spacing: voxel size (mm) along i, j, k (i and j must be equal).
        params: :class:`ScanParams`.
        rng: random generator (Poisson draws).

    Returns:
        :class:`ScanResult` with the reconstruction in SUV on the same grid.
    """
    nx, ny, nz = activity.shape
    px = float(spacing[0])
    geom = make_geometry(nx, ny, params.subsets, params.angle_factor)
    nsub = geom.n_subsets
    fwd, bk = system_matrices(geom)

    # attenuation factors along every line of response (mu in 1/mm, path length in pixels * px mm)
    att = [np.exp(-(a @ np.ascontiguousarray(mu.reshape(nx * ny, nz))) * px).astype(np.float32) for a in fwd]
    # object seen through the detector response, then attenuated projections (trues, arbitrary units)
    obj = blur(activity, (params.psf_fwhm_mm[0], params.psf_fwhm_mm[0], params.psf_fwhm_mm[1]), spacing)
    x_obj = np.ascontiguousarray(np.maximum(obj, 0).reshape(nx * ny, nz), dtype=np.float32)
    trues = [att[s] * (fwd[s] @ x_obj) for s in range(nsub)]
    total_trues = float(sum(t.sum() for t in trues))
    if total_trues <= 0:
        raise ValueError("the phantom has no activity in the field of view")
    kappa = params.counts * nz * spacing[2] / total_trues
    # scatter: broad blur of the trues along the radial bins (sigma ~ 60 mm) and axially (~ 40 mm)
    nb = geom.n_bins
    s_sig = (0.0, 60.0 / px, 40.0 / spacing[2])
    scatter, randoms = [], []
    sf = params.scatter_fraction / max(1e-6, 1.0 - params.scatter_fraction)
    axial_profile = ndimage.gaussian_filter1d(
        np.asarray([t.sum(axis=0) for t in trues]).sum(axis=0), 60.0 / spacing[2], mode="nearest"
    )
    for s in range(nsub):
        t3 = trues[s].reshape(-1, nb, nz)
        sc = ndimage.gaussian_filter(t3, s_sig, mode="constant", truncate=3.0).reshape(-1, nz)
        scatter.append(sc)
    sc_total = float(sum(x.sum() for x in scatter))
    scatter = [x * (sf * total_trues / max(sc_total, 1e-12)) for x in scatter]
    r_slice = axial_profile / axial_profile.sum() * params.randoms_fraction * total_trues
    n_rows_total = geom.n_angles * nb
    for s in range(nsub):
        randoms.append(np.broadcast_to(r_slice / n_rows_total, (trues[s].shape[0], nz)).astype(np.float32))
    # Poisson prompts
    prompts = []
    for s in range(nsub):
        ybar = kappa * trues[s] + kappa * scatter[s] + kappa * randoms[s]
        prompts.append(rng.poisson(ybar).astype(np.float32))
    background = [kappa * (scatter[s] + randoms[s]) for s in range(nsub)]
    image = osem(geom, prompts, att, background, kappa, spacing, params)
    return ScanResult(
        image,
        float(kappa),
        float(kappa * total_trues),
        float(kappa * sf * total_trues),
        float(kappa * params.randoms_fraction * total_trues),
        geom.n_angles,
        nb,
    )


def osem(
    geom: Geometry,
    prompts: list[np.ndarray],
    att: list[np.ndarray],
    background: list[np.ndarray],
    kappa: float,
    spacing: tuple[float, float, float],
    params: ScanParams,
) -> np.ndarray:
    """OSEM with in-plane PSF modelling; returns SUV (nx, ny, K) float32 after the post-filter.

    ``prompts``, ``att`` and ``background`` are per-subset sinograms (rows, K); ``kappa`` the scanner
    calibration in counts per SUV (times pixel length)."""
    nx, ny, nb = geom.nx, geom.ny, geom.n_bins
    nz = prompts[0].shape[1]
    # An isotropic in-plane Gaussian image blur G commutes with projection: A G x = B A x, where B is
    # the same 1D Gaussian along the radial bins of each projection. B is applied in the (small)
    # sinogram, so PSF modelling costs almost nothing. B is symmetric, hence G A^T = A^T B.
    sigma_bins = float(params.recon_psf_fwhm_mm) * FWHM_TO_SIGMA / float(spacing[0])

    def b(sino: np.ndarray) -> np.ndarray:
        if sigma_bins <= 0:
            return sino
        s3 = sino.reshape(-1, nb, nz)
        return ndimage.gaussian_filter1d(s3, sigma_bins, axis=1, mode="constant", truncate=3.0).reshape(
            -1, nz
        )

    fwd, bk = system_matrices(geom)
    sens = []
    for s in range(geom.n_subsets):
        sv = (bk[s] @ b(kappa * att[s])).reshape(nx, ny, nz)
        sens.append(np.maximum(sv, 1e-9 * max(float(sv.max()), 1e-12)))
    x = np.ones((nx, ny, nz), dtype=np.float32) * float(
        sum(p.sum() for p in prompts) / max(1e-12, float(sum(sv.sum() for sv in sens)))
    )
    total_sens = sum(sens)
    fov = total_sens > 1e-6 * max(float(total_sens.max()), 1e-12)
    x *= fov
    steps = [(it, s) for it in range(params.iterations) for s in range(geom.n_subsets)]
    for _, s in progress(steps, desc="OSEM", unit="subset"):
        proj = b(fwd[s] @ np.ascontiguousarray(x.reshape(nx * ny, nz)))
        ybar = kappa * att[s] * proj + background[s]
        ratio = b((prompts[s] / np.maximum(ybar, 1e-6)) * (kappa * att[s]))
        upd = (bk[s] @ ratio).reshape(nx, ny, nz)
        x = np.where(fov, x * upd / sens[s], 0.0).astype(np.float32)
    if params.post_fwhm_mm > 0:
        f = params.post_fwhm_mm
        x = blur(x, (f, f, f), spacing)
    return x.astype(np.float32)
