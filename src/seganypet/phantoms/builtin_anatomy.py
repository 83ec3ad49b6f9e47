"""A built-in parametric torso anatomy, for machines without the shared CT organ map.

The phantoms are best made from the real CT + TotalSegmentator map (:mod:`.anatomy`), but that file
is not part of the package. Without it, :func:`seganypet.phantoms.anatomy.load_anatomy` falls back to
this one (or it is asked for with ``anatomy="builtin"`` / ``--anatomy builtin``): the same field of
view (lower thorax to proximal femur, 366 x 291 x 336 mm at 3 mm), the same label space
(TotalSegmentator v2 ids) and a CT in HU, built from ellipsoids, cylinders and tubes whose positions
and sizes are those of an adult male torso (organ centres and extents rounded to 5–10 mm). It goes
through the same deformation, tracer and scanner simulation, so the phantoms are realistic in uptake,
noise and resolution; only the organ shapes are idealised (smooth, convex).

Coordinates are RAS+ mm (+x towards the patient's right, +y anterior, +z superior: the liver is at
+x), voxel axes ``(i, j, k)`` along x, y, z.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy import ndimage

SPACING = 3.0
ORIGIN = (-180.0, 10.0, 94.0)  # mm, centre of voxel (0, 0, 0)
SHAPE = (122, 97, 112)
BUILTIN = "builtin"

# HU of the CT the attenuation map and the unlabelled tissue classes come from
HU = {"air": -1000, "lung": -850, "fat": -100, "soft": 40, "fluid": 10, "organ": 55, "bone": 450}

# (TotalSegmentator id, centre (x, y, z) mm, semi-axes mm, HU kind); painted in this order
ELLIPSOIDS: list[tuple[int, tuple[float, float, float], tuple[float, float, float], str]] = [
    (86, (-38, 73, 330), (35, 28, 115), "soft"),  # autochthon left
    (87, (36, 75, 330), (35, 28, 115), "soft"),  # autochthon right
    (80, (-95, 78, 152), (60, 30, 62), "soft"),  # gluteus maximus left
    (81, (96, 80, 150), (60, 30, 62), "soft"),  # gluteus maximus right
    (82, (-122, 125, 193), (30, 45, 55), "soft"),  # gluteus medius left
    (83, (124, 129, 192), (30, 45, 55), "soft"),  # gluteus medius right
    (88, (-70, 150, 240), (22, 24, 110), "soft"),  # iliopsoas left
    (89, (66, 150, 240), (22, 24, 110), "soft"),  # iliopsoas right
    (18, (-20, 195, 265), (85, 38, 60), "soft"),  # small bowel
    (20, (108, 200, 300), (24, 28, 70), "soft"),  # colon ascending
    (20, (-112, 175, 305), (24, 28, 80), "soft"),  # colon descending
    (20, (0, 238, 355), (105, 22, 22), "soft"),  # colon transverse
    (20, (-40, 190, 200), (40, 28, 24), "soft"),  # sigmoid
    (11, (-85, 115, 430), (55, 65, 28), "lung"),  # lung lower lobe left
    (14, (75, 115, 428), (60, 72, 30), "lung"),  # lung lower lobe right
    (5, (62, 182, 388), (80, 78, 58), "organ"),  # liver
    (1, (-110, 122, 392), (30, 48, 38), "organ"),  # spleen
    (6, (-42, 208, 392), (38, 42, 38), "organ"),  # stomach
    (2, (68, 132, 345), (28, 32, 50), "organ"),  # kidney right
    (3, (-78, 126, 357), (27, 30, 47), "organ"),  # kidney left
    (4, (62, 214, 362), (14, 20, 16), "fluid"),  # gallbladder
    (7, (-28, 186, 368), (60, 11, 11), "organ"),  # pancreas
    (8, (30, 148, 398), (7, 11, 12), "organ"),  # adrenal right
    (9, (-47, 150, 402), (7, 11, 12), "organ"),  # adrenal left
    (64, (-10, 190, 388), (50, 8, 7), "organ"),  # portal and splenic vein
    (21, (2, 170, 147), (44, 44, 40), "fluid"),  # urinary bladder
    (22, (0, 134, 103), (17, 14, 10), "organ"),  # prostate
    (25, (0, 85, 200), (42, 22, 48), "bone"),  # sacrum
]
# (id, first point, second point, radius mm, HU kind)
TUBES: list[tuple[int, tuple[float, float, float], tuple[float, float, float], float, str]] = [
    (52, (-17, 160, 275), (-17, 160, 440), 11.0, "organ"),  # aorta
    (63, (12, 172, 262), (12, 172, 440), 12.0, "organ"),  # inferior vena cava
    (65, (-17, 160, 277), (-62, 168, 110), 5.5, "organ"),  # iliac artery left
    (66, (-17, 160, 277), (45, 172, 108), 5.5, "organ"),  # iliac artery right
    (67, (12, 170, 264), (-50, 158, 105), 7.5, "organ"),  # iliac vein left
    (68, (12, 170, 264), (52, 162, 105), 7.5, "organ"),  # iliac vein right
    (79, (-2, 102, 215), (-2, 102, 440), 6.0, "fluid"),  # spinal cord
    (75, (-102, 135, 85), (-85, 130, 160), 19.0, "bone"),  # femur left (neck towards the hip)
    (76, (102, 138, 85), (85, 133, 160), 19.0, "bone"),  # femur right
]
VERTEBRAE = [(26, 222.0), (27, 248.0), (28, 280.0), (29, 315.0), (30, 349.0), (31, 383.0), (32, 414.0)]


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(  # type: ignore[return-value]
        (ORIGIN[a] + SPACING * np.arange(SHAPE[a], dtype=np.float32)).reshape(
            [-1 if b == a else 1 for b in range(3)]
        )
        for a in range(3)
    )


def _ellipsoid(g, centre, semi) -> np.ndarray:
    return sum(((g[a] - centre[a]) / semi[a]) ** 2 for a in range(3)) <= 1.0


def _tube(g, p0, p1, radius) -> np.ndarray:
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    d = p1 - p0
    t = sum((g[a] - p0[a]) * d[a] for a in range(3)) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    dist2 = sum((g[a] - (p0[a] + t * d[a])) ** 2 for a in range(3))
    return dist2 <= radius**2


def build_builtin_anatomy() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """``(labels uint8 (I, J, K) TotalSegmentator ids, ct int16 HU, affine (4, 4) RAS mm, names)``."""
    g = _grid()
    x, y, z = g
    # body: an elliptic cylinder, wider over the pelvis, with a subcutaneous fat layer
    widen = np.clip((220.0 - z) / 120.0, 0.0, 1.0)
    ax, ay = 168.0 + 12.0 * widen, 128.0 + 8.0 * widen
    cx, cy = 3.0, 155.0
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    body = np.broadcast_to(r <= 1.0, SHAPE)
    fat = body & np.broadcast_to(r > 0.86, SHAPE)
    labels = np.zeros(SHAPE, np.uint8)
    ct = np.full(SHAPE, HU["air"], np.float32)
    ct[body] = HU["soft"]
    ct[fat] = HU["fat"]
    ct[body & np.broadcast_to(((x - cx) / 120) ** 2 + ((y - 195) / 70) ** 2 <= 1, SHAPE)] = HU["fat"] + 40
    inner = body & ~fat
    # hip bones: ellipsoidal shells (the iliac wings) plus the pubic rami, as TotalSegmentator hip_left/right
    for lab, sx in ((77, -1), (78, 1)):
        c = (sx * 82.0, 132.0, 185.0)
        outer = _ellipsoid(g, c, (58, 62, 85))
        shell = outer & ~_ellipsoid(g, c, (47, 51, 74))
        shell &= np.broadcast_to(sx * x > 25.0, SHAPE) & np.broadcast_to(z < 270.0, SHAPE)
        pubis = _tube(g, (sx * 70.0, 150.0, 130.0), (sx * 10.0, 190.0, 110.0), 10.0)
        acetabulum = _ellipsoid(g, (sx * 88.0, 134.0, 150.0), (26, 26, 22))
        part = (shell | pubis | acetabulum) & inner
        labels[part] = lab
        ct[part] = HU["bone"]
    for lab, centre, semi, kind in ELLIPSOIDS:
        part = _ellipsoid(g, centre, semi) & inner
        labels[part] = lab
        ct[part] = HU[kind]
    for lab, zc in VERTEBRAE:  # vertebral bodies with their posterior arches
        body_v = _ellipsoid(g, (0.0, 128.0, zc), (22, 17, 13))
        arch = _ellipsoid(g, (0.0, 92.0, zc), (18, 16, 10)) & ~_tube(
            g, (-2, 102, zc - 20), (-2, 102, zc + 20), 7.0
        )
        part = (body_v | arch) & inner
        labels[part] = lab
        ct[part] = HU["bone"]
    for lab, p0, p1, radius, kind in TUBES:
        part = _tube(g, p0, p1, radius) & inner
        labels[part] = lab
        ct[part] = HU[kind]
    # lower ribs: the posterior-lateral arc of the body wall at a few levels (left 100, right 112)
    ring = np.broadcast_to((r > 0.74) & (r <= 0.8) & (y < 240.0), SHAPE)
    for zc in (360.0, 385.0, 410.0, 432.0):
        level = ring & np.broadcast_to(np.abs(z - zc) <= 5.0, SHAPE)
        for lab, side in ((100, x < -20.0), (112, x > 20.0)):
            part = level & np.broadcast_to(side, SHAPE) & (labels == 0)
            labels[part] = lab
            ct[part] = HU["bone"]
    ct = ndimage.gaussian_filter(ct, 0.6)  # partial-volume edges like a reconstructed CT
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = ORIGIN
    names = {lab: _NAMES.get(lab, f"label_{lab}") for lab in np.unique(labels) if lab}
    return labels, np.clip(np.rint(ct), -1024, 3071).astype(np.int16), affine, names


_NAMES = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach",
    7: "pancreas", 8: "adrenal_gland_right", 9: "adrenal_gland_left", 11: "lung_lower_lobe_left",
    14: "lung_lower_lobe_right", 18: "small_bowel", 20: "colon", 21: "urinary_bladder", 22: "prostate",
    25: "sacrum", 26: "vertebrae_S1", 27: "vertebrae_L5", 28: "vertebrae_L4", 29: "vertebrae_L3",
    30: "vertebrae_L2", 31: "vertebrae_L1", 32: "vertebrae_T12", 52: "aorta", 63: "inferior_vena_cava",
    64: "portal_vein_and_splenic_vein", 65: "iliac_artery_left", 66: "iliac_artery_right",
    67: "iliac_vena_left", 68: "iliac_vena_right", 75: "femur_left", 76: "femur_right", 77: "hip_left",
    78: "hip_right", 79: "spinal_cord", 80: "gluteus_maximus_left", 81: "gluteus_maximus_right",
    82: "gluteus_medius_left", 83: "gluteus_medius_right", 86: "autochthon_left", 87: "autochthon_right",
    88: "iliopsoas_left", 89: "iliopsoas_right", 100: "rib_left_9", 112: "rib_right_9",
}  # fmt: skip


@functools.lru_cache(maxsize=1)
def builtin_anatomy():  # -> SourceAnatomy (imported lazily: anatomy.py imports this module)
    """The built-in anatomy as a :class:`~seganypet.phantoms.anatomy.SourceAnatomy` (cached)."""
    from seganypet.phantoms.anatomy import SourceAnatomy

    labels, ct, affine, names = build_builtin_anatomy()
    labels.setflags(write=False)
    ct.setflags(write=False)
    return SourceAnatomy(labels, ct, affine, names, Path(BUILTIN))
