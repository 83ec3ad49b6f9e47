"""Shared fixtures. Real-data tests read ../shared/data; they skip when it is absent, except under
CI (CI=true), where a missing folder is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGANYPET_SHARED", ROOT.parent / "shared"))


def _shared_dir(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} is missing, and CI must run the real-data tests")
        pytest.skip(f"{path} is absent (real data is only beside the repository in CI and dev)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (skip or fail as described above)."""
    return _shared_dir("data")


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """``../shared/reference``: the published-format parity fixture."""
    return _shared_dir("reference")


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGANYPET_NO_PROGRESS", "1")


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    try:
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
    except ImportError:  # pragma: no cover
        pass
