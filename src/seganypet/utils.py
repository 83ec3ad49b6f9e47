"""Small shared helpers: atomic file output and progress bars."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
logger = logging.getLogger("seganypet")

_PROGRESS_ENV = "SEGANYPET_NO_PROGRESS"


def progress_enabled() -> bool:
    """False when progress bars are switched off (``--no-progress`` or SEGANYPET_NO_PROGRESS=1)."""
    return os.environ.get(_PROGRESS_ENV, "") in ("", "0")


def set_progress(enabled: bool) -> None:
    """Switch progress bars on or off for this process (and its children)."""
    os.environ[_PROGRESS_ENV] = "0" if enabled else "1"


def progress(iterable: Iterable[T], **kwargs: Any) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar (on stderr) unless progress bars are off."""
    if not progress_enabled():
        return iterable
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Works for files and folders (e.g. a DICOM SEG output folder). On error nothing is left behind,
    so a failed run never leaves a half-written output.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        if final.is_dir() and tmp.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
