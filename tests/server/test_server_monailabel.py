"""MONAI Label's own client (monailabel 0.8.5, ``MONAILabelClient``) against our server."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from server_helpers import CENTRE, MAXW, requires_in_ci

from seganypet.inference import Session
from seganypet.io import read_pet


@pytest.fixture
def client_cls():
    requires_in_ci("requests")
    requires_in_ci("monailabel.client")
    from monailabel.client import MONAILabelClient

    return MONAILabelClient


def test_monailabel_client_upload_infer_save_download(
    start_server, tiny_model, image_file, tmp_path, client_cls
):
    srv = start_server(tiny_model)
    client = client_cls(srv.url, tmpdir=str(tmp_path))
    info = client.info()
    assert info["models"]["deepedit"]["type"] == "deepedit"
    assert "seganypet_tiny_boxes" in info["models"]
    assert "lesion" in info["labels"]

    assert client.upload_image(str(image_file), "case_001") == {"image": "case_001"}
    ds = client.datastore()
    assert "case_001" in ds["objects"]

    direct = Session(tiny_model, max_windows=MAXW)
    direct.set_image(read_pet(image_file))
    other = (CENTRE[0] + 3, CENTRE[1], CENTRE[2])
    params = {"foreground": [list(CENTRE)], "background": [], "label": "lesion"}
    out, result = client.infer("deepedit", "case_001", params)
    expected = direct.add_point(CENTRE, True)
    label = nib.load(out)
    assert label.shape == read_pet(image_file).shape
    np.testing.assert_array_equal(np.asarray(label.dataobj) == 1, expected)
    assert result["voxels"] == int(expected.sum())

    # Slicer sends the growing click lists: only the new click runs (incremental, like the direct session)
    params = {"foreground": [list(CENTRE)], "background": [list(other)], "label": "lesion"}
    out, _ = client.infer("deepedit", "case_001", params)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj) == 1, direct.add_point(other, False))

    saved = client.save_label("case_001", out, tag="final")
    assert saved["image"] == "case_001"
    assert client.datastore()["objects"]["case_001"]["labels"]["final"]["ext"] == ".nii.gz"
    downloaded = client.download_label("case_001", "final")
    np.testing.assert_array_equal(np.asarray(nib.load(downloaded).dataobj), np.asarray(nib.load(out).dataobj))

    # a MONAI Label session (image uploaded with PUT /session/) works too
    sess = client.create_session(str(image_file))
    assert client.get_session(sess["session_id"])["name"] == sess["session_id"]
    out2, _ = client.infer(
        "deepedit", "", {"foreground": [list(CENTRE)], "label": "lesion"}, session_id=sess["session_id"]
    )
    np.testing.assert_array_equal(np.asarray(nib.load(out2).dataobj) == 1, expected)
    client.remove_session(sess["session_id"])


def test_monailabel_errors(start_server, tiny_model, image_file, tmp_path, client_cls):
    from monailabel.client.client import MONAILabelClientException

    srv = start_server(tiny_model)
    client = client_cls(srv.url, tmpdir=str(tmp_path))
    client.upload_image(str(image_file), "case_001")
    with pytest.raises(MONAILabelClientException) as err:
        client.infer("deepedit", "case_001", {"foreground": [[999, 0, 0]]})
    assert "outside" in err.value.msg
    with pytest.raises(MONAILabelClientException) as err:
        client.infer("nosuchmodel", "case_001", {"foreground": [list(CENTRE)]})
    assert "no model" in err.value.msg
    with pytest.raises(MONAILabelClientException) as err:
        client.infer("deepedit", "../../etc/passwd", {"foreground": [list(CENTRE)]})
    assert "no image" in err.value.msg
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(MONAILabelClientException) as err:
        client.upload_image(str(bad), "bad")
    assert "bad.nii.gz" in err.value.msg
    assert "bad" not in client.datastore()["objects"]
