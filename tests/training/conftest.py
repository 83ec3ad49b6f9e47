"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import write_phantom_dataset


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), 3)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory, phantom_dataset: Path) -> Path:
    from seganypet.training.prepare import prepare

    out = tmp_path_factory.mktemp("store") / "store"
    prepare([phantom_dataset], out, val=["ph02"])
    return out
