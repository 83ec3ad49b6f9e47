"""Unit tests of the server's safety helpers and of the nnInteractive wire format."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from server_helpers import requires_in_ci

from seganypet.errors import InputError
from seganypet.server.nninteractive import pack_array, unpack_array
from seganypet.server.security import (
    UnsafeInputError,
    bearer_from_header,
    check_id,
    is_loopback_host,
    safe_extract_zip,
    safe_join,
    sanitize_filename,
    tokens_equal,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("scan.nii.gz", "scan.nii.gz"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\pet.nii", "pet.nii"),
        ("..", "upload"),
        ("", "upload"),
        (".hidden", "hidden"),
        ("a b;rm -rf.nii", "a_b_rm_-rf.nii"),
    ],
)
def test_sanitize_filename(name, expected):
    assert sanitize_filename(name) == expected


def test_safe_join_and_ids(tmp_path):
    assert safe_join(tmp_path, "a", "b.txt") == (tmp_path / "a" / "b.txt").resolve()
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(UnsafeInputError):
            safe_join(tmp_path, bad)
    assert check_id("abc-DEF_1") == "abc-DEF_1"
    for bad in ("../a", "a/b", "", ".x", "x" * 65, "a b"):
        with pytest.raises(UnsafeInputError):
            check_id(bad)


def test_tokens_and_hosts():
    assert tokens_equal("abc", "abc") and not tokens_equal("abc", "abd") and not tokens_equal(None, "x")
    assert bearer_from_header("Bearer tok") == "tok" and bearer_from_header("tok") == "tok"
    assert bearer_from_header(None) is None
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("192.168.1.10")


def _zip_bytes(members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in members:
            z.writestr(info, data)
    return buf.getvalue()


def test_safe_extract_zip(tmp_path):
    ok = tmp_path / "ok.zip"
    ok.write_bytes(_zip_bytes([("series/1.dcm", b"a" * 10), ("series/2.dcm", b"b" * 10)]))
    files = safe_extract_zip(ok, tmp_path / "out", max_total_bytes=1000)
    assert len(files) == 2 and all(f.parent == tmp_path / "out" for f in files)

    link = zipfile.ZipInfo("evil_link")
    link.external_attr = 0o120777 << 16
    bad = tmp_path / "link.zip"
    bad.write_bytes(_zip_bytes([(link, b"/etc/passwd")]))
    with pytest.raises(UnsafeInputError, match="symbolic link"):
        safe_extract_zip(bad, tmp_path / "out2", max_total_bytes=1000)

    many = tmp_path / "many.zip"
    many.write_bytes(_zip_bytes([(f"{i}.dcm", b"x") for i in range(30)]))
    with pytest.raises(UnsafeInputError, match="members"):
        safe_extract_zip(many, tmp_path / "out3", max_total_bytes=1000, max_members=10)


def test_wire_format_matches_the_nninteractive_client():
    requires_in_ci("nnInteractive.inference.remote")
    from nnInteractive.inference.remote.serialization import pack_array as client_pack
    from nnInteractive.inference.remote.serialization import unpack_array as client_unpack

    rng = np.random.default_rng(0)
    for arr in (rng.random((1, 7, 5, 3), dtype=np.float32), (rng.random((6, 4, 2)) > 0.5).astype(np.uint8)):
        np.testing.assert_array_equal(unpack_array(client_pack(arr), 10_000), arr)
        np.testing.assert_array_equal(client_unpack(pack_array(arr)), arr)
    with pytest.raises(InputError, match="limit"):
        unpack_array(client_pack(np.zeros((100, 100), np.float32)), 1000)
    with pytest.raises(InputError, match="packed"):
        unpack_array(b"NNIA" + bytes(20), 1000)
