import numpy as np
import pytest

from seganypet.image import PETImage
from seganypet.utils import atomic_path


def test_petimage_geometry():
    aff = np.diag([-4.0, -4.0, 3.0, 1.0])
    aff[:3, 3] = [10, 20, 30]
    img = PETImage(np.zeros((5, 6, 7)), aff, units="SUVbw")
    assert img.shape == (5, 6, 7)
    assert img.spacing == (4.0, 4.0, 3.0)
    assert img.voxel_volume_ml == pytest.approx(0.048)
    assert img.is_suv
    ijk = np.array([[1, 2, 3], [0, 0, 0]])
    np.testing.assert_allclose(img.mm_to_ijk(img.ijk_to_mm(ijk)), ijk, atol=1e-9)
    np.testing.assert_allclose(img.ijk_to_mm([1, 2, 3]), [6, 12, 39])
    assert img.array.dtype == np.float32


def test_petimage_refuses_2d():
    with pytest.raises(ValueError, match="3D"):
        PETImage(np.zeros((5, 6)), np.eye(4))


def test_atomic_path_success_and_failure(tmp_path):
    out = tmp_path / "a" / "x.txt"
    with atomic_path(out) as tmp:
        tmp.write_text("hello")
        assert not out.exists()
    assert out.read_text() == "hello"
    bad = tmp_path / "b.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(bad) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert not bad.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temp debris


def test_atomic_path_folder(tmp_path):
    out = tmp_path / "seg"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "1.dcm").write_bytes(b"x")
    assert (out / "1.dcm").exists()


def test_tune_allocator_applies_once_and_can_be_switched_off():
    import subprocess
    import sys

    code = "import sys; from seganypet.utils import tune_allocator as t; a = t(); b = t(); print(a, b)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == out[1]  # cached: the second call reports the first one's result
    if sys.platform.startswith("linux"):
        import ctypes.util

        if "libc.so.6" in (ctypes.util.find_library("c") or ""):
            assert out[0] == "True"  # glibc accepts both thresholds
    env = {**__import__("os").environ, "SEGANYPET_NO_TUNE_MALLOC": "1"}
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert off.stdout.split() == ["False", "False"]
