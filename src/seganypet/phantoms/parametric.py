"""Parametric anatomy for what the shared field of view lacks (whole-body phantoms).

Above the deformed anatomy: thorax (lungs up to the apices, heart with left-ventricular myocardium and
blood pool, ascending/descending aorta with the arch, thoracic spine with cord), neck (cervical spine,
submandibular glands), head (skull, brain with cortical grey-matter ribbon, basal ganglia, cerebellum,
white matter, ventricles; parotid glands), usually both arms raised beside the head. Below it: both
thighs (femur, muscle, subcutaneous fat).
Shapes are placed relative to landmarks measured on the deformed anatomy (body outline, spine, aorta,
lungs, femurs at the boundary slices) so that they join it, and sized by the subject's scale.

All functions work on arrays ``(I, J, K)`` of the output grid; ``X, Y, Z`` are the voxel centres in RAS
millimetres (broadcastable ``(I,1,1)``, ``(1,J,1)``, ``(1,1,K)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seganypet.phantoms.anatomy import ORGANS, TID, TISSUE_HU


@dataclass
class Canvas:
    """Output label spaces being drawn into: organ ids, tissue ids, CT (HU); plus the grid in mm."""

    organ: np.ndarray
    tissue: np.ndarray
    ct: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    Z: np.ndarray

    def paint(self, mask: np.ndarray, tissue: str, organ: str | None = None, hu: float | None = None) -> None:
        """Set ``mask`` voxels to ``tissue`` (and ``organ``; None clears the organ label)."""
        self.tissue[mask] = TID[tissue]
        self.organ[mask] = ORGANS[organ] if organ else 0
        self.ct[mask] = TISSUE_HU.get(tissue, 40.0) if hu is None else hu


def ellipsoid(cv: Canvas, centre: tuple[float, float, float], semi: tuple[float, float, float]) -> np.ndarray:
    """Bool mask of the ellipsoid with the given centre and semi-axes (mm)."""
    return (
        ((cv.X - centre[0]) / semi[0]) ** 2
        + ((cv.Y - centre[1]) / semi[1]) ** 2
        + ((cv.Z - centre[2]) / semi[2]) ** 2
    ) <= 1.0


def cylinder(cv: Canvas, cx: float, cy: float, rx: float, ry: float, z0: float, z1: float) -> np.ndarray:
    """Bool mask of the vertical elliptic cylinder between heights ``z0`` and ``z1`` (mm)."""
    return ((((cv.X - cx) / rx) ** 2 + ((cv.Y - cy) / ry) ** 2) <= 1.0) & (cv.Z >= z0) & (cv.Z < z1)


def _centroid(mask2d: np.ndarray, X: np.ndarray, Y: np.ndarray) -> tuple[float, float] | None:
    if not mask2d.any():
        return None
    ii, jj = np.nonzero(mask2d)
    return float(X.ravel()[ii].mean()), float(Y.ravel()[jj].mean())


def extend_up(cv: Canvas, k_top: int, scale: tuple[float, float, float], rng: np.random.Generator) -> None:
    """Draw thorax, neck and head above slice ``k_top`` (the last slice fully covered by the anatomy)."""
    sx, sy, sz = scale
    s = (sx + sy) / 2.0
    X, Y, Z = cv.X, cv.Y, cv.Z
    z_top = float(Z.ravel()[k_top])
    body = cv.tissue[:, :, k_top] != TID["outside"]
    ii, jj = np.nonzero(body)
    xs, ys = X.ravel()[ii], Y.ravel()[jj]
    cx, cy = float(xs.mean()), float(ys.mean())
    ax, ay = float(xs.max() - xs.min()) / 2.0 + 2.0, float(ys.max() - ys.min()) / 2.0 + 2.0
    sp_mask = (cv.organ[:, :, max(0, k_top - 4) : k_top + 1] == ORGANS["spine"]).any(axis=2)
    spine = _centroid(sp_mask, X, Y) or (cx, cy - 0.55 * ay)
    ao_mask = (cv.organ[:, :, max(0, k_top - 4) : k_top + 1] == ORGANS["aorta"]).any(axis=2)
    aorta = _centroid(ao_mask, X, Y) or (spine[0] - 20.0 * s, spine[1] + 25.0 * s)
    spx, spy = spine
    upper = Z > z_top  # only draw where the anatomy is absent
    T = 190.0 * sz  # thorax height
    N = 95.0 * sz  # neck height
    z_neck = z_top + T
    z_head0 = z_neck + N

    # thorax body: elliptic cylinder, tapering to the shoulders over the last 40 mm
    taper = np.clip((Z - (z_neck - 40.0 * sz)) / (40.0 * sz), 0.0, 1.0)
    rx_t = ax * (1.0 - 0.55 * taper)
    ry_t = ay * (1.0 - 0.35 * taper)
    thorax = (((X - cx) / rx_t) ** 2 + ((Y - cy) / ry_t) ** 2 <= 1.0) & upper & (Z < z_neck)
    fat_ring = (((X - cx) / (rx_t - 12.0)) ** 2 + ((Y - cy) / (ry_t - 12.0)) ** 2 > 1.0) & thorax
    cv.paint(thorax, "soft_tissue")
    cv.paint(fat_ring, "fat")
    # back muscles (erector spinae) continue up to the neck
    top_org = cv.organ[:, :, k_top]
    top_tis = cv.tissue[:, :, k_top]
    musc = (top_org == ORGANS["muscles"])[:, :, None] & upper & (Z < z_neck) & thorax
    cv.paint(musc, "muscle", "muscles")
    # lungs (right lung at +x in RAS), connected to the bases below by a cylinder part
    zc = z_top + 0.42 * T
    for side, organ in ((1.0, "lung_right"), (-1.0, "lung_left")):
        lx = cx + side * 0.47 * ax
        semi = (0.36 * ax, 0.68 * ay, 0.58 * T)
        e = ellipsoid(cv, (lx, cy + 0.05 * ay, zc), semi)
        base = cylinder(cv, lx, cy + 0.05 * ay, semi[0], semi[1], z_top, zc)
        cv.paint((e | base) & thorax & ~fat_ring, "lung", organ)
    # organs cut by the anatomy's upper edge close as domes under the diaphragm
    _domes(cv, top_org, top_tis, z_top, sz)
    # heart: whole heart = blood (chambers), left-ventricular wall = myocardium
    hc = (cx - 0.12 * ax, cy + 0.22 * ay, z_top + 0.22 * T)
    heart = ellipsoid(cv, hc, (55.0 * s, 45.0 * s, 52.0 * sz)) & upper
    cv.paint(heart, "blood", "heart")
    lvc = (hc[0] - 18.0 * s, hc[1] + 5.0 * s, hc[2] - 5.0 * sz)
    lv_out = ellipsoid(cv, lvc, (30.0 * s, 28.0 * s, 40.0 * sz)) & heart
    lv_in = ellipsoid(cv, lvc, (19.0 * s, 17.0 * s, 28.0 * sz))
    cv.paint(lv_out & ~lv_in, "myocardium", "heart")
    # aorta: descending continues, arch, ascending down to the heart
    r_ao = 11.0 * s
    z_arch = z_top + 0.62 * T
    asc_y = hc[1] + 10.0 * s
    cv.paint(cylinder(cv, aorta[0], aorta[1], r_ao, r_ao, z_top, z_arch) & upper, "blood", "aorta")
    cv.paint(
        cylinder(cv, cx - 0.02 * ax, asc_y, r_ao * 1.1, r_ao * 1.1, hc[2], z_arch) & upper, "blood", "aorta"
    )
    ym, R = (aorta[1] + asc_y) / 2.0, abs(asc_y - aorta[1]) / 2.0
    xa = (aorta[0] + cx - 0.02 * ax) / 2.0
    d_ring = np.sqrt((Y - ym) ** 2 + np.maximum(Z - z_arch, -1e9) ** 2)
    arch = (np.abs(d_ring - R) <= r_ao) & (Z >= z_arch) & (np.abs(X - xa) <= r_ao * 1.4)
    cv.paint(arch, "blood", "aorta")

    # neck: ellipse over the spine, slightly anterior
    nx_c, ny_c = spx, spy + 38.0 * s
    neck = cylinder(cv, nx_c, ny_c, 58.0 * sx, 55.0 * sy, z_neck, z_head0 + 30.0 * sz)
    cv.paint(neck & ~thorax, "soft_tissue")
    cv.paint(neck & ~cylinder(cv, nx_c, ny_c, 50.0 * sx, 47.0 * sy, z_neck, z_head0 + 30.0 * sz), "fat")
    for side in (1.0, -1.0):  # submandibular glands
        cv.paint(
            ellipsoid(cv, (nx_c + side * 32.0 * s, ny_c + 28.0 * s, z_head0 - 12.0 * sz), (11.0, 14.0, 10.0)),
            "salivary",
            "salivary_glands",
        )

    # head
    hs = float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1))
    hcen = (spx, spy + 40.0 * s, z_head0 + 85.0 * sz)
    semi_h = (72.0 * hs, 92.0 * hs, 105.0 * hs)
    head = ellipsoid(cv, hcen, semi_h)
    cv.paint(head, "soft_tissue")
    above_base = Z > hcen[2] - 40.0 * hs
    skull = head & ellipsoid(cv, hcen, tuple(0.94 * a for a in semi_h)) & above_base
    cv.paint(skull, "skull", "skull")
    brain_semi = tuple(0.87 * a for a in semi_h)
    brain = ellipsoid(cv, hcen, brain_semi) & (Z > hcen[2] - 34.0 * hs)
    cv.paint(brain, "brain_gm", "brain")
    wm = ellipsoid(cv, hcen, tuple(a - 10.0 for a in brain_semi)) & (Z > hcen[2] - 24.0 * hs)
    cv.paint(wm, "brain_wm", "brain")
    for side in (1.0, -1.0):
        cv.paint(
            ellipsoid(cv, (hcen[0] + side * 22.0 * hs, hcen[1] + 8.0, hcen[2] + 8.0), (9.0, 14.0, 12.0)),
            "brain_gm",
            "brain",
        )  # basal ganglia / thalamus
        cv.paint(
            ellipsoid(cv, (hcen[0] + side * 9.0, hcen[1] + 5.0, hcen[2] + 22.0), (5.0, 24.0, 9.0)),
            "csf",
            "brain",
        )  # lateral ventricles
    cereb = ellipsoid(
        cv, (hcen[0], hcen[1] - 42.0 * hs, hcen[2] - 32.0 * hs), (44.0 * hs, 26.0 * hs, 18.0 * hs)
    )
    cv.paint(cereb & head & ~skull, "brain_gm", "brain")
    for side in (1.0, -1.0):  # parotid glands, lateral and in front of the ear
        cv.paint(
            ellipsoid(
                cv, (hcen[0] + side * 52.0 * hs, hcen[1] + 5.0, hcen[2] - 62.0 * hs), (11.0, 18.0, 22.0)
            ),
            "salivary",
            "salivary_glands",
        )

    # arms raised beside the head (the usual whole-body position) in 75 % of subjects, else out of view
    if rng.random() < 0.75:
        _arms_up(cv, (cx, cy), ax, z_neck, hcen, semi_h, s, rng)

    # cervical / thoracic spine continues (vertebral bodies, posterior elements, cord)
    r_sp = 17.0 * s
    sp_body = cylinder(cv, spx, spy, r_sp, r_sp * 0.9, z_top, hcen[2] - 45.0 * hs) & upper
    cv.paint(sp_body, "marrow", "spine")
    canal = cylinder(cv, spx, spy - 24.0 * s, 7.0, 7.0, z_top, hcen[2] - 45.0 * hs) & upper
    arch_b = cylinder(cv, spx, spy - 24.0 * s, 14.0, 13.0, z_top, hcen[2] - 45.0 * hs) & upper
    cv.paint(arch_b & ~canal, "bone", "spine")
    cv.paint(canal, "spinal_cord", "spinal_cord")


def extend_down(cv: Canvas, k_bot: int, scale: tuple[float, float, float]) -> None:
    """Draw both thighs below slice ``k_bot`` (the first slice fully covered by the anatomy)."""
    sx, sy, sz = scale
    X, Y, Z = cv.X, cv.Y, cv.Z
    z_bot = float(Z.ravel()[k_bot])
    lower = Z < z_bot
    body = cv.tissue[:, :, k_bot] != TID["outside"]
    ii, jj = np.nonzero(body)
    xs, ys = X.ravel()[ii], Y.ravel()[jj]
    cx = float(xs.mean())
    half_w = float(xs.max() - xs.min()) / 2.0
    fem = cv.organ[:, :, k_bot : k_bot + 3] == ORGANS["femurs"]
    fem = fem.any(axis=2)
    L = 200.0 * sz
    for side in (1.0, -1.0):
        sel = fem & ((X[:, :, 0] - cx) * side > 0)
        c = _centroid(sel, X, Y) or (cx + side * 0.45 * half_w, float(ys.mean()))
        leg_c = (cx + side * 0.48 * half_w, float(ys.mean()))
        r = 0.5 * half_w * (1.0 - 0.12 * np.clip((z_bot - Z) / L, 0, 1))
        thigh = ((X - leg_c[0]) ** 2 + ((Y - leg_c[1]) / 0.9) ** 2 <= r**2) & lower & (Z >= z_bot - L)
        cv.paint(thigh, "fat")
        cv.paint(
            thigh & ((X - leg_c[0]) ** 2 + ((Y - leg_c[1]) / 0.9) ** 2 <= (r - 14.0) ** 2),
            "muscle",
            "muscles",
        )
        # femoral shaft drifts medially going down
        t = np.clip((z_bot - Z) / L, 0, 1)
        fx = c[0] + (leg_c[0] - c[0]) * t
        shaft = ((X - fx) ** 2 + (Y - c[1]) ** 2 <= (14.0 * sx) ** 2) & thigh
        cv.paint(shaft, "bone", "femurs")
        cv.paint(((X - fx) ** 2 + (Y - c[1]) ** 2 <= (8.0 * sx) ** 2) & thigh, "femur", "femurs", hu=150.0)
        for off in (-20.0, 20.0):  # femoral vessels
            cv.paint(
                ((X - (fx - side * 12.0 + off * 0.35)) ** 2 + (Y - (c[1] + 28.0)) ** 2 <= 5.0**2) & thigh,
                "blood",
                "iliac_vessels",
            )


DOME_HEIGHT_MM = {"liver": 45.0, "spleen": 30.0, "stomach": 30.0, "vena_cava": 35.0}


def _domes(cv: Canvas, top_org: np.ndarray, top_tis: np.ndarray, z_top: float, sz: float) -> None:
    """Close organs cut by the top slice: the cross-section shrinks as ``EDT > R (1 - sqrt(1 - (h/H)^2))``
    with ``R`` its largest inner distance, over a height ``H`` per organ (15 mm by default)."""
    from scipy import ndimage

    dx = float(abs(cv.X.ravel()[1] - cv.X.ravel()[0])) if cv.X.size > 1 else 1.0
    zs = cv.Z.ravel()
    skip = {
        0,
        ORGANS["lung_left"],
        ORGANS["lung_right"],
        ORGANS["spine"],
        ORGANS["aorta"],
        ORGANS["ribs"],
        ORGANS["muscles"],
        ORGANS["spinal_cord"],
    }
    names = {v: k for k, v in ORGANS.items()}
    for oid in np.unique(top_org).tolist():
        if oid in skip:
            continue
        sect = top_org == oid
        edt = ndimage.distance_transform_edt(sect) * dx
        r_max = float(edt.max())
        height = DOME_HEIGHT_MM.get(names[oid], 15.0) * sz
        tis = np.bincount(top_tis[sect]).argmax()
        for k in np.nonzero((zs > z_top) & (zs < z_top + height))[0]:
            h = (zs[k] - z_top) / height
            m = edt > r_max * (1.0 - np.sqrt(max(0.0, 1.0 - h * h))) + 1e-3
            if not m.any():
                break
            cv.organ[:, :, k][m] = oid
            cv.tissue[:, :, k][m] = tis
            cv.ct[:, :, k][m] = 45.0


def _arms_up(
    cv: Canvas,
    body_c: tuple[float, float],
    ax: float,
    z_neck: float,
    hcen: tuple[float, float, float],
    semi_h: tuple[float, float, float],
    s: float,
    rng: np.random.Generator,
) -> None:
    """Both arms raised: tilted limbs (fat, muscle, humerus / forearm bones, no organ label) from the
    shoulders to above the head, passing beside it."""
    X, Y, Z = cv.X, cv.Y, cv.Z
    r_arm = 42.0 * s * float(rng.uniform(0.9, 1.1))
    z0, z1 = z_neck - 50.0, hcen[2] + semi_h[2] + 20.0
    for side in (1.0, -1.0):
        x_sh = body_c[0] + side * 0.85 * ax
        x_top = hcen[0] + side * (semi_h[0] + r_arm + 8.0)
        y_arm = hcen[1] - 10.0
        t = np.clip((Z - z0) / (z1 - z0), 0.0, 1.0)
        xc = x_sh + (x_top - x_sh) * t
        yc = body_c[1] + (y_arm - body_c[1]) * t
        d2 = (X - xc) ** 2 + (Y - yc) ** 2
        limb = (d2 <= r_arm**2) & (Z >= z0) & (Z <= z1) & (cv.tissue == TID["outside"])
        cv.paint(limb, "fat")
        cv.paint(limb & (d2 <= (r_arm - 10.0) ** 2), "muscle")
        cv.paint(limb & (d2 <= (11.0 * s) ** 2), "bone")
        cv.paint(limb & (d2 <= (6.0 * s) ** 2), "femur", hu=150.0)  # fatty marrow like the femur
