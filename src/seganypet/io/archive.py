"""Safe extraction of a .zip input (a zipped DICOM folder) into a temporary folder."""

from __future__ import annotations

import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterator
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
            with zf:
                extract_members(
                    zf,
                    tmp,
                    error=ImageReadError,
                    prefix=f"{path} ",
                    max_members=MAX_ZIP_FILES,
                    max_bytes=max_bytes,
                    max_ratio=MAX_ZIP_RATIO,
                )
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError) as err:
            raise ImageReadError(f"{path} cannot be extracted ({type(err).__name__}: {err})") from None
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract_members(
    zf: zipfile.ZipFile,
    dest: Path,
    *,
    error: type[Exception],
    prefix: str,
    max_members: int,
    max_bytes: int,
    max_ratio: float,
    target_of: Callable[[int, list[str]], Path] | None = None,
) -> list[Path]:
    """Extract the files of an open zip archive into ``dest`` after safety checks; return them.

    Refuses, raising ``error(prefix + one sentence)``: more than ``max_members`` members, absolute
    names, ``..`` components or drive letters (path traversal), symbolic links, a member compressed
    more than ``max_ratio``:1 and more than ``max_bytes`` in all, counted while writing (a header can
    lie): zip bombs. ``target_of(index, path_parts)`` chooses where member ``index`` goes (default:
    its own path below ``dest``). Shared by the zipped-DICOM reader and the server's upload handler.
    """
    members = zf.infolist()
    if len(members) > max_members:
        raise error(f"{prefix}holds {len(members)} members, more than the {max_members} allowed.")
    out: list[Path] = []
    total = 0
    for n, info in enumerate(members):
        name = info.filename.replace("\\", "/")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
            raise error(f"{prefix}member {info.filename!r:.120} has an unsafe path (path traversal).")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise error(f"{prefix}member {info.filename!r:.120} is a symbolic link, which is not allowed.")
        if info.is_dir() or not parts:
            continue
        if info.compress_size > 0 and info.file_size / info.compress_size > max_ratio:
            raise error(
                f"{prefix}member {info.filename!r:.120} is compressed "
                f"{info.file_size / info.compress_size:.0f}:1, more than {max_ratio:.0f}:1 (a zip bomb?)."
            )
        target = target_of(n, parts) if target_of is not None else dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise error(
                        f"{prefix}expands to more than {max_bytes / 1e6:,.0f} MB (a zip bomb?); refused."
                    )
                dst.write(chunk)
        out.append(target)
    return out
