"""Helpers shared by the server tests (a uniquely named module: ``from conftest import`` would pick
whichever conftest.py pytest imported first)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

SHAPE = (40, 40, 32)
SPACING = (3.0, 3.0, 3.0)
CENTRE = (20, 18, 15)
MAXW = 2  # Session(max_windows=...) of the test servers and of the direct sessions they are compared with


def requires_in_ci(module: str) -> None:
    """Skip when ``module`` is absent, except under CI=true, where it is a failure."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                f"{module} is not installed, and CI must run this test (scripts/setup_browser_tests.sh)"
            )
        pytest.skip(f"{module} is not installed (scripts/setup_browser_tests.sh installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (40, 40, 32) SUV volume (3 mm voxels): noisy background ~1, a sphere of SUV ~8, radius 4 voxels."""
    rng = np.random.default_rng(seed)
    arr = (1.0 + 0.1 * rng.standard_normal(SHAPE)).astype(np.float32)
    g = np.indices(SHAPE)
    r2 = sum((g[a] - CENTRE[a]) ** 2 for a in range(3))
    arr[r2 <= 16] += 7.0
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-60.0, -60.0, -48.0]
    return arr, affine
