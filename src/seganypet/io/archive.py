"""Safe extraction of a .zip input (a zipped DICOM folder) into a temporary folder."""

from __future__ import annotations

import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from seganypet.errors import ImageReadError

MAX_ZIP_BYTES = 8 * 1024**3
MAX_ZIP_FILES = 100_000
MAX_ZIP_RATIO = 1000.0


@contextmanager
def extracted_zip(path: Path, max_bytes: int = MAX_ZIP_BYTES) -> Iterator[Path]:
    """Extract ``path`` safely into a temporary folder (removed afterwards) and yield it.

    Refuses absolute names, ``..`` components, links, more than MAX_ZIP_FILES members, more than
    ``max_bytes`` uncompressed (counted while extracting, not trusted from the header) and members
    whose compression ratio exceeds MAX_ZIP_RATIO (zip bombs).
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ImageReadError(f"{path} is not a readable zip archive ({err})") from None
    tmp = Path(tempfile.mkdtemp(prefix="seganypet-zip-"))
    try:
        try:
            _extract(zf, path, tmp, max_bytes)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError) as err:
            raise ImageReadError(f"{path} cannot be extracted ({type(err).__name__}: {err})") from None
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(zf: zipfile.ZipFile, path: Path, tmp: Path, max_bytes: int) -> None:
    with zf:
        members = zf.infolist()
        if len(members) > MAX_ZIP_FILES:
            raise ImageReadError(f"{path} holds {len(members)} files, more than the {MAX_ZIP_FILES} allowed")
        total = 0
        for info in members:
            name = info.filename.replace("\\", "/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
                raise ImageReadError(f"{path} holds an unsafe member name {info.filename!r} (path traversal)")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ImageReadError(f"{path} holds a symbolic link {info.filename!r}, which is not allowed")
            if info.is_dir() or not parts:
                continue
            if info.compress_size > 0 and info.file_size / info.compress_size > MAX_ZIP_RATIO:
                raise ImageReadError(
                    f"{path} member {info.filename!r} expands "
                    f"{info.file_size / info.compress_size:.0f}-fold (a zip bomb?); refused"
                )
            target = tmp.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > max_bytes:
                        raise ImageReadError(
                            f"{path} expands to more than {max_bytes / 1024**3:.3g} GiB; refused (zip bomb?)"
                        )
                    dst.write(chunk)
