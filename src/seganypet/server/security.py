"""Security helpers of the server: tokens, loopback checks, safe names and paths, safe zip extraction.

Everything a client sends that could reach the file system (session ids, image ids, file names, zip
members) passes through one of these functions first. They raise :class:`UnsafeInputError` (an
:class:`~seganypet.errors.InputError`, so the server answers HTTP 400 with one sentence).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
import socket
import zipfile
from pathlib import Path

from seganypet.errors import InputError
from seganypet.io.archive import extract_members

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


class UnsafeInputError(InputError):
    """A name, path or archive sent by a client is unsafe (traversal, bomb, odd characters)."""


def new_token(nbytes: int = 24) -> str:
    """A random hexadecimal token of ``nbytes`` random bytes (session ids, lease tokens)."""
    return secrets.token_hex(nbytes)


def tokens_equal(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison of two tokens (``hmac.compare_digest`` on UTF-8 bytes)."""
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_from_header(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (any scheme word is accepted)."""
    if not value:
        return None
    parts = value.strip().split(None, 1)
    if len(parts) == 2:
        return parts[1].strip()
    return parts[0]


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (an address or name) only listens on the loopback interface."""
    host = host.strip().strip("[]")
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_id(value: str, what: str = "session id") -> str:
    """Return ``value`` if it is a plain id (letters, digits, ``_``, ``-``; at most 64), else raise."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise UnsafeInputError(f"The {what} {value!r:.80} is not valid (letters, digits, '_' and '-' only).")
    return value


def sanitize_filename(name: str | None, default: str = "upload") -> str:
    """A safe file name from a client's: the last path component, odd characters replaced by ``_``.

    Keeps double suffixes such as ``.nii.gz``; never returns ``''``, ``'.'`` or ``'..'``; at most 120
    characters.
    """
    base = (name or "").replace("\\", "/").split("/")[-1]
    base = _SAFE_NAME_RE.sub("_", base).lstrip(".")
    if not base or set(base) <= {".", "_"}:
        base = default
    if len(base) > 120:
        base = base[-120:]
    return base


def safe_join(root: Path, *parts: str) -> Path:
    """``root / parts`` resolved, guaranteed to stay inside ``root`` (else :class:`UnsafeInputError`)."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise UnsafeInputError(f"The path {'/'.join(parts)!r:.120} leaves the allowed folder.")
    return path


def safe_extract_zip(
    archive: Path,
    dest: Path,
    *,
    max_total_bytes: int,
    max_members: int = 20000,
    max_ratio: float = 200.0,
) -> list[Path]:
    """Extract a client's zip archive into ``dest`` safely; return the extracted files.

    Refuses (with one sentence) archives that are not zips, members with absolute paths or ``..``,
    links, more than ``max_members`` members, a total uncompressed size above ``max_total_bytes``, or
    a member whose compression ratio exceeds ``max_ratio`` (zip bombs). Sizes are checked while
    extracting too, so a lying header cannot get past the limit.
    """
    if not zipfile.is_zipfile(archive):
        raise UnsafeInputError("The uploaded file is not a valid zip archive.")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise UnsafeInputError(f"The uploaded zip archive cannot be opened ({err}).") from None
    with zf:
        infos = zf.infolist()
        declared = sum(i.file_size for i in infos)
        if declared > max_total_bytes:
            raise UnsafeInputError(
                f"The zip archive would unpack to {declared / 1e6:.0f} MB, above the limit "
                f"{max_total_bytes / 1e6:.0f} MB."
            )
        try:
            out = extract_members(
                zf,
                dest,
                error=UnsafeInputError,
                prefix="The zip archive ",
                max_members=max_members,
                max_bytes=max_total_bytes,
                max_ratio=max_ratio,
                target_of=lambda n, parts: dest / f"{n:06d}_{sanitize_filename('/'.join(parts))}",
            )
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as err:
            raise UnsafeInputError(f"The zip archive is corrupt ({err}).") from None
    if not out:
        raise UnsafeInputError("The zip archive contains no files.")
    return out
