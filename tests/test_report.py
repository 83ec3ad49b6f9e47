"""seganypet.report: MIP orientation and aspect, PNG and HTML outputs."""

from __future__ import annotations

import io

import numpy as np
import pytest

from seganypet.errors import InputError
from seganypet.image import PETImage
from seganypet.quant import compute_stats
from seganypet.report import mip_views, render_html, render_png, write_report


def _pet(shape, linear, units="SUVbw") -> PETImage:
    aff = np.eye(4)
    aff[:3, :3] = linear
    return PETImage(np.zeros(shape, np.float32), aff, units=units)


# (array shape, affine linear part, voxel that is most Right, Anterior and Superior, spacing x/y/z mm)
CASES = [
    ((6, 7, 8), np.diag([2.0, 3.0, 4.0]), (5, 6, 7), (2.0, 3.0, 4.0)),  # RAS
    ((6, 7, 8), np.diag([-2.0, -3.0, 4.0]), (0, 0, 7), (2.0, 3.0, 4.0)),  # LPS (DICOM-like)
    # permuted axes: i -> superior (4 mm), j -> left (-x, 2 mm), k -> anterior (3 mm)
    ((8, 6, 7), np.array([[0.0, -2.0, 0.0], [0.0, 0.0, 3.0], [4.0, 0.0, 0.0]]), (7, 0, 6), (2.0, 3.0, 4.0)),
]


@pytest.mark.parametrize("shape, linear, ras_voxel, spacing", CASES)
def test_mip_orientation_head_up_patient_right_on_image_left(shape, linear, ras_voxel, spacing):
    pet = _pet(shape, linear)
    pet.array[ras_voxel] = 9.0
    lm = np.zeros(shape, np.uint8)
    lm[ras_voxel] = 4
    coronal, sagittal = mip_views(pet, lm)
    assert coronal["sides"] == ("R", "L") and sagittal["sides"] == ("A", "P")
    # coronal: rows = z (superior first), columns = x (patient right first)
    assert coronal["mip"].shape == (shape_of(shape, linear, 2), shape_of(shape, linear, 0))
    assert coronal["mip"][0, 0] == 9.0 and coronal["mip"].sum() == 9.0
    assert sagittal["mip"][0, 0] == 9.0  # anterior first
    assert coronal["masks"][4][0, 0] and coronal["masks"][4].sum() == 1
    assert coronal["pixel_mm"] == pytest.approx((spacing[0], spacing[2]))
    assert sagittal["pixel_mm"] == pytest.approx((spacing[1], spacing[2]))


def shape_of(shape, linear, world_axis):
    """Number of voxels along the array axis that maps to world axis ``world_axis``."""
    return shape[int(np.argmax(np.abs(linear[world_axis])))]


def test_mip_inferior_left_posterior_corner():
    pet = _pet((5, 5, 5), np.diag([2.0, 2.0, 2.0]))
    pet.array[0, 0, 0] = 1.0  # most left, posterior, inferior
    coronal, sagittal = mip_views(pet, np.zeros((5, 5, 5), np.uint8))
    assert coronal["mip"][-1, -1] == 1.0 and sagittal["mip"][-1, -1] == 1.0


def _scene():
    rng = np.random.default_rng(1)
    shape = (30, 20, 40)
    pet = PETImage(rng.random(shape, dtype=np.float32), np.diag([4.0, 4.0, 2.5, 1.0]), units="SUVbw")
    lm = np.zeros(shape, np.uint8)
    lm[5:12, 5:10, 20:30] = 1
    lm[20:23, 10:13, 5:8] = 2
    lm[0:3, 0:3, 0:4] = 3  # touches the image corner
    pet.array[lm == 2] += 6.0
    return pet, lm


def test_write_report_png_and_html(tmp_path):
    import matplotlib.image as mpimg

    pet, lm = _scene()
    names = {1: "liver", 2: "node <b>", 3: "edge"}
    png = write_report(pet, lm, names, tmp_path / "r.png", html=tmp_path / "r.html", suv_max=4.0)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(io.BytesIO(data))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    page = (tmp_path / "r.html").read_text()
    assert "data:image/png;base64," in page and "SUVbw" in page
    assert "node &lt;b&gt;" in page and "<b>" not in page.replace("<b>SUVbw</b>", "")
    assert "liver" in page and page.count("<tr>") == 4  # header + 3 objects
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_report_contours_are_drawn_in_object_colours():
    from matplotlib.colors import to_rgb

    from seganypet.report import object_colours

    pet, lm = _scene()
    stats = compute_stats(pet, lm, {1: "a", 2: "b", 3: "c"})
    import matplotlib.image as mpimg

    pixels = mpimg.imread(io.BytesIO(render_png(pet, lm, stats)))[..., :3]
    colours = object_colours([1, 2, 3])
    assert len(set(colours.values())) == 3
    for lab in (1, 2, 3):
        colour = np.array(to_rgb(colours[lab]))
        assert (np.abs(pixels - colour).max(axis=-1) < 0.08).sum() > 20
    empty = compute_stats(pet, np.zeros_like(lm), {})
    pixels = mpimg.imread(io.BytesIO(render_png(pet, np.zeros_like(lm), empty)))[..., :3]
    assert (np.abs(pixels - np.array(to_rgb(colours[2]))).max(axis=-1) < 0.08).sum() == 0


def test_empty_label_map_and_bad_window(tmp_path):
    pet, lm = _scene()
    out = write_report(pet, np.zeros_like(lm), None, tmp_path / "e.png", html=tmp_path / "e.html")
    assert out.stat().st_size > 1000
    assert "no objects" in (tmp_path / "e.html").read_text()
    with pytest.raises(InputError, match="positive"):
        write_report(pet, lm, None, tmp_path / "x.png", suv_max=0.0)
    with pytest.raises(InputError, match="shape"):
        write_report(pet, lm[:-1], None, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_html_lists_reference_regions():
    pet, lm = _scene()
    lm[:] = 0
    lm[5:25, 3:17, 5:35] = 1
    stats = compute_stats(pet, lm, {1: "liver"})
    page = render_html(stats, b"png")
    assert "liver (liver): sphere 3 cm diameter" in page


def test_colours_distinct_for_many_labels():
    from seganypet.report import object_colours

    colours = object_colours(list(range(1, 61)))
    assert len(set(colours.values())) == 60
