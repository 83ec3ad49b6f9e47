"""The JSON API over HTTP against a real server and the real Session (tiny model)."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from server_helpers import CENTRE, MAXW, SHAPE

from seganypet.inference import Session
from seganypet.io import read_pet


def _nifti(content: bytes) -> np.ndarray:
    if content[:2] == b"\x1f\x8b":
        content = gzip.decompress(content)
    return np.asarray(nib.Nifti1Image.from_bytes(content).dataobj)


def _upload(client: httpx.Client, path: Path) -> dict:
    with open(path, "rb") as f:
        r = client.post("/api/sessions", files={"file": (path.name, f)})
    assert r.status_code == 200, r.text
    return r.json()


def test_click_session_matches_direct_session(start_server, tiny_model, image_file):
    srv = start_server(tiny_model)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        info = c.get("/api/info").json()
        assert info["supports_boxes"] is True
        st = _upload(c, image_file)
        sid = st["id"]
        assert st["shape"] == list(SHAPE) and st["objects"] == []

        direct = Session(tiny_model, max_windows=MAXW)
        direct.set_image(read_pet(image_file))
        other = (CENTRE[0] + 3, CENTRE[1], CENTRE[2])
        steps = [
            ("points", {"ijk": list(CENTRE), "positive": True}, lambda: direct.add_point(CENTRE, True)),
            ("points", {"ijk": list(other), "positive": False}, lambda: direct.add_point(other, False)),
            ("undo", None, direct.undo),
            ("redo", None, direct.redo),
            (
                "boxes",
                {"a": [14, 12, 10], "b": [26, 24, 20]},
                lambda: direct.add_box((14, 12, 10), (26, 24, 20)),
            ),
        ]
        for route, body, local in steps:
            r = (
                c.post(f"/api/sessions/{sid}/{route}", json=body)
                if body
                else c.post(f"/api/sessions/{sid}/{route}")
            )
            assert r.status_code == 200, r.text
            expected = local()
            assert r.json()["voxels"] == int(expected.sum()), route
            labels = _nifti(c.get(f"/api/sessions/{sid}/labels.nii.gz").content)
            np.testing.assert_array_equal(labels, direct.label_map)

        # objects: add, rename, colour, select, delete
        r = c.post(f"/api/sessions/{sid}/objects", json={"name": "liver"})
        assert r.json()["active_label"] == 2
        r = c.patch(f"/api/sessions/{sid}/objects/2", json={"name": "spleen", "color": "#00ff00"})
        obj2 = [o for o in r.json()["objects"] if o["label"] == 2][0]
        assert obj2["name"] == "spleen" and obj2["color"] == "#00ff00"
        assert c.post(f"/api/sessions/{sid}/objects/1/select").json()["active_label"] == 1
        r = c.delete(f"/api/sessions/{sid}/objects/2")
        assert [o["label"] for o in r.json()["objects"]] == [1]
        assert c.post(f"/api/sessions/{sid}/objects/7/select").status_code == 400

        # statistics from seganypet.quant
        stats = c.get(f"/api/sessions/{sid}/stats").json()
        obj = stats["objects"][0]
        assert obj["voxels"] == int(direct.mask(1).sum())
        assert obj["suv_max"] == pytest.approx(
            float(read_pet(image_file).array[direct.mask(1)].max()), rel=1e-5
        )
        for key in ("volume_ml", "suv_mean", "suv_peak", "tlg"):
            assert key in obj

        # export NIfTI equals the label map, on the input grid
        r = c.get(f"/api/sessions/{sid}/export", params={"format": "nifti"})
        assert r.status_code == 200
        exported = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
        np.testing.assert_array_equal(np.asarray(exported.dataobj), direct.label_map)
        np.testing.assert_allclose(exported.affine, read_pet(image_file).affine, atol=1e-4)
        r = c.get(f"/api/sessions/{sid}/export", params={"format": "dicom-seg"})
        assert r.status_code == 400 and "DICOM" in r.json()["detail"]
        assert c.get(f"/api/sessions/{sid}/mip.png").content[:4] == b"\x89PNG"

        assert sid in [s["id"] for s in c.get("/api/sessions").json()["sessions"]]
        assert c.delete(f"/api/sessions/{sid}").status_code == 200
        assert c.get(f"/api/sessions/{sid}").status_code == 404


def test_open_from_data_dir_and_prompt_errors(start_server, tiny_model, image_file, tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / image_file.name).write_bytes(image_file.read_bytes())
    srv = start_server(tiny_model, data_dir=data)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/api/images").json()["images"] == [image_file.name]
        sid = c.post("/api/sessions/open", json={"image": image_file.name}).json()["id"]
        r = c.post(f"/api/sessions/{sid}/points", json={"ijk": [99, 0, 0]})
        assert r.status_code == 422 and "outside" in r.json()["detail"]
        r = c.post(f"/api/sessions/{sid}/points", json={"ijk": list(CENTRE), "positive": False})
        assert r.status_code == 422 and "positive" in r.json()["detail"]
        assert c.post(f"/api/sessions/{sid}/undo").status_code == 409
        r = c.post(f"/api/sessions/{sid}/points", json={"ijk": "nope"})
        assert r.status_code == 422 and r.json()["detail"].startswith("The request is malformed")
        r = c.post("/api/sessions/open", json={"image": "../../etc/passwd"})
        assert r.status_code == 400 and r.json()["detail"].startswith("There is no image")
        assert c.post("/api/sessions/open", json={"image": "nothere.nii.gz"}).status_code == 400


def test_box_refused_by_point_only_model(start_server, model_dir, image_file):
    srv = start_server(str(model_dir / "tiny_points.pt"))
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/api/info").json()["supports_boxes"] is False
        sid = _upload(c, image_file)["id"]
        r = c.post(f"/api/sessions/{sid}/boxes", json={"a": [10, 10, 10], "b": [20, 20, 20]})
        assert r.status_code == 422 and "boxes" in r.json()["detail"]


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "status", "words"),
    [
        ("random.nii.gz", b"\x00\x01garbage" * 100, 400, "random.nii.gz"),
        ("random.bin", b"\x13\x37" * 50, 400, "random.bin"),
        ("evil.zip", _zip({"../../escape.dcm": b"x"}), 400, "unsafe path"),
        ("huge.zip", _zip({"a.dcm": b"\0" * (50 << 20)}), 400, "unpack to"),
        ("bomb.zip", _zip({"a.dcm": b"\0" * (5 << 20)}), 400, "bomb"),
        ("notzip.zip", b"PK\x03\x04 but not really", 400, "zip"),
        ("empty.zip", _zip({}), 400, "zip"),
    ],
)
def test_hostile_uploads_get_one_sentence(start_server, tiny_model, tmp_path, name, content, status, words):
    srv = start_server(tiny_model, max_upload_bytes=2 << 20)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/api/sessions", files={"file": (name, content)})
        assert r.status_code == status, r.text
        detail = r.json()["detail"]
        assert words.lower() in detail.lower()
        assert "Traceback" not in detail and str(srv.data_dir) not in detail and "\n" not in detail
    assert not any((srv.data_dir / "sessions").iterdir())
    assert not (tmp_path / "escape.dcm").exists() and not (srv.data_dir / "escape.dcm").exists()


def test_limits_size_voxels_sessions(start_server, tiny_model, image_file):
    srv = start_server(tiny_model, max_upload_bytes=1_000_000, max_image_voxels=1000, max_sessions=1)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/api/sessions", files={"file": ("big.nii.gz", b"\0" * 2_000_000)})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        r = c.post("/api/sessions", files={"file": (image_file.name, image_file.read_bytes())})
        assert r.status_code == 400 and "voxels" in r.json()["detail"]
    srv2 = start_server(tiny_model, max_sessions=1)
    with httpx.Client(base_url=srv2.url, timeout=60) as c:
        _upload(c, image_file)
        r = c.post("/api/sessions", files={"file": (image_file.name, image_file.read_bytes())})
        assert r.status_code == 503 and "maximum" in r.json()["detail"]


def test_ids_are_checked(start_server, tiny_model):
    srv = start_server(tiny_model)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/api/sessions/..%2F..%2Fetc").status_code in (400, 404)
        r = c.get("/api/sessions/a.b")
        assert r.status_code == 400 and "not valid" in r.json()["detail"]
        assert c.get("/api/sessions/doesnotexist").status_code == 404


def test_token_auth(start_server, tiny_model, image_file):
    srv = start_server(tiny_model, token="s3cret-token")
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/").status_code in (200, 503)  # the page itself is public (it asks for the token)
        r = c.get("/api/info")
        assert r.status_code == 401 and "token" in r.json()["detail"]
        assert c.get("/api/info", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert c.get("/api/info", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.post("/claim").status_code == 401
        assert c.get("/info/").status_code == 401


def test_serve_refuses_public_host_without_token(monkeypatch):
    from seganypet.cli import main

    monkeypatch.delenv("SEGANYPET_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--model", "nothing.pt"]) == 2
    import argparse

    from seganypet.commands.serve import add_arguments, make_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    monkeypatch.setenv("SEGANYPET_TOKEN", "from-the-environment")
    cfg = make_config(p.parse_args(["--host", "0.0.0.0"]))
    assert cfg.token == "from-the-environment"
    cfg = make_config(p.parse_args([]))
    assert cfg.host == "127.0.0.1"


def test_index_explains_missing_bundle(start_server, tiny_model, monkeypatch, tmp_path):
    from seganypet.server import app as app_module

    monkeypatch.setattr(app_module, "BUNDLE", tmp_path / "absent.js")
    srv = start_server(tiny_model)
    r = httpx.get(srv.url + "/")
    assert r.status_code == 503 and "not built" in r.text and "setup_web.sh" in r.text


def test_dicom_zip_upload_and_dicom_seg_export(start_server, tiny_model, tmp_path):
    import pydicom
    from server_helpers import make_volume

    from seganypet.image import PETImage
    from seganypet.phantoms.dicom import write_pet_dicom

    arr, affine = make_volume()
    meta = {
        "patient_weight_kg": 70.0,
        "injected_dose_bq": 3.0e8,
        "half_life_s": 6586.2,
        "uptake_time_s": 3600.0,
    }
    folder = write_pet_dicom(PETImage(arr, affine, units="SUVbw", metadata=meta), tmp_path / "series")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file():
                z.write(f, f"PET/{f.name}")
    srv = start_server(tiny_model)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        st = _upload(c, archive)
        assert st["dicom"] is True and st["units"] == "SUVbw"
        sid = st["id"]
        ref = read_pet(folder)
        centre = np.unravel_index(np.argmax(ref.array), ref.shape)
        r = c.post(f"/api/sessions/{sid}/points", json={"ijk": [int(v) for v in centre]})
        assert r.status_code == 200 and r.json()["voxels"] > 0
        r = c.get(f"/api/sessions/{sid}/export", params={"format": "dicom-seg"})
        assert r.status_code == 200, r.text
        seg = pydicom.dcmread(io.BytesIO(r.content))
        assert seg.Modality == "SEG" and len(seg.SegmentSequence) == 1
        uid = pydicom.dcmread(next(p for p in Path(folder).rglob("*") if p.is_file())).SeriesInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid


def test_concurrent_requests_on_one_session_are_serialised(start_server, tiny_model, image_file):
    from concurrent.futures import ThreadPoolExecutor

    srv = start_server(tiny_model)
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        sid = _upload(c, image_file)["id"]
        c.post(f"/api/sessions/{sid}/points", json={"ijk": list(CENTRE)})
        points = [[CENTRE[0] + d, CENTRE[1], CENTRE[2]] for d in (-2, -1, 1, 2)]

        def click(p):
            with httpx.Client(base_url=srv.url, timeout=120) as cc:
                return cc.post(f"/api/sessions/{sid}/points", json={"ijk": p, "positive": True}).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(click, points)) == [200] * 4
        journal = srv.manager._sessions[sid].session.journal()
        clicks = [e["ijk"] for e in journal if e["op"] == "add_point"]
        assert len(clicks) == 5
        assert sorted(clicks[1:]) == sorted([float(v) for v in p] for p in points)
        saved = json.loads((srv.data_dir / "sessions" / sid / "journal.json").read_text())
        assert saved == journal


def test_mip_orientation_and_overlay():
    import matplotlib.image

    from seganypet.image import PETImage
    from seganypet.server.api import mip_png

    arr = np.zeros((20, 10, 30), np.float32)
    arr[18, 5, 27] = 10.0  # patient right (high x), superior (high z)
    labels = np.zeros(arr.shape, np.uint16)
    labels[1, 5, 2] = 1  # patient left, inferior
    png = mip_png(PETImage(arr, np.diag([2.0, 2.0, 2.0, 1.0])), labels, {1: "#ff0000"}, wmax=5.0)
    rgb = matplotlib.image.imread(io.BytesIO(png))[..., :3]
    assert rgb.shape[:2] == (30, 20)  # rows z (superior first), columns x (patient left first)
    assert np.allclose(rgb[30 - 1 - 27, 18], 0.0)  # the hot voxel is black (inverted grey), top right
    red = rgb[30 - 1 - 2, 1]
    assert red[0] > 0.9 and red[1] < 0.6  # the object is drawn in its colour, bottom left
