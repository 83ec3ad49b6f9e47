"""nnInteractive's own remote client (nninteractive-client 2.6.0) drives a whole session against our
server; the client's target buffer must hold the mask a direct Session computes, after every step."""

from __future__ import annotations

import time

import numpy as np
import pytest
from server_helpers import CENTRE, MAXW, make_volume, requires_in_ci

from seganypet.image import PETImage
from seganypet.inference import Session


@pytest.fixture
def remote_cls():
    requires_in_ci("nnInteractive.inference.remote")
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

    return nnInteractiveRemoteInferenceSession


def test_nninteractive_client_full_session(start_server, tiny_model, remote_cls):
    import httpx

    srv = start_server(tiny_model)
    arr, _ = make_volume()
    spacing = [3.0, 3.0, 3.0]
    direct = Session(tiny_model, max_windows=MAXW)
    direct.set_image(PETImage(arr, np.diag([*spacing, 1.0])))

    session = remote_cls(srv.url)
    try:
        assert session.supported_interactions["point"] is True
        assert session.supported_interactions["bbox"] is True
        assert session.supports_undo is True
        session.set_image(arr[None], {"spacing": spacing})
        assert session.original_image_shape == (1, *arr.shape)
        buffer = np.zeros(arr.shape, dtype=np.uint8)
        session.set_target_buffer(buffer)

        p1, p2, n1 = CENTRE, (CENTRE[0] + 1, CENTRE[1] - 1, CENTRE[2]), (CENTRE[0] + 3, CENTRE[1], CENTRE[2])
        session.add_point_interaction(p1, include_interaction=True)
        np.testing.assert_array_equal(buffer > 0, direct.add_point(p1, True))
        assert buffer.any()
        session.add_point_interaction(p2, include_interaction=True)
        np.testing.assert_array_equal(buffer > 0, direct.add_point(p2, True))
        session.add_point_interaction(n1, include_interaction=False)
        np.testing.assert_array_equal(buffer > 0, direct.add_point(n1, False))
        session.add_bbox_interaction([[14, 27], [12, 25], [10, 21]], include_interaction=True)
        np.testing.assert_array_equal(buffer > 0, direct.add_box((14, 12, 10), (26, 24, 20)))

        assert session.undo() is True
        np.testing.assert_array_equal(buffer > 0, direct.undo())

        # queued interaction (run_prediction=False), then /predict
        session.add_point_interaction(n1, include_interaction=False, run_prediction=False)
        session._predict()
        np.testing.assert_array_equal(buffer > 0, direct.add_point(n1, False))

        # a scribble is mapped to points; a lasso to its box
        scribble = np.zeros(arr.shape, dtype=np.uint8)
        scribble[CENTRE[0], CENTRE[1] - 2 : CENTRE[1] + 3, CENTRE[2]] = 1
        session.add_scribble_interaction(scribble, include_interaction=True)
        for j in (CENTRE[1] - 2, CENTRE[1], CENTRE[1] + 2):
            expected = direct.add_point((CENTRE[0], j, CENTRE[2]), True)
        np.testing.assert_array_equal(buffer > 0, expected)

        session.reset_interactions()
        assert not buffer.any()
        direct.reset()
        session.add_point_interaction(p1, include_interaction=True)
        np.testing.assert_array_equal(buffer > 0, direct.add_point(p1, True))

        # initial segmentation: the buffer (and the server's mask) becomes it
        init = np.zeros(arr.shape, dtype=np.uint8)
        init[15:25, 15:25, 10:20] = 1
        session.add_initial_seg_interaction(init)
        np.testing.assert_array_equal(buffer, init)
        np.testing.assert_array_equal(srv.manager._sessions[session._lease_token].session.mask(), init > 0)

        status = session.lease_status()
        assert 0 < status["remaining_seconds"] <= status["idle_timeout_seconds"]
        assert session.heartbeat() > 0
        assert session.ping()
        token = session._lease_token
    finally:
        session.close()
    # released: the lease is gone (410 = SessionExpiredError for the client) and its folder removed
    r = httpx.post(
        srv.url + "/set_target_buffer",
        json={"shape": [1], "dtype": "uint8"},
        headers={"X-Lease-Token": token},
    )
    assert r.status_code == 410
    assert not (srv.data_dir / "sessions" / token).exists()


def test_nninteractive_refusals(start_server, model_dir, remote_cls):
    import httpx

    srv = start_server(str(model_dir / "tiny_points.pt"), max_sessions=1)
    arr, _ = make_volume()
    session = remote_cls(srv.url)
    try:
        assert session.supported_interactions["bbox"] is False
        session.set_image(arr[None], {"spacing": [3, 3, 3]})
        buffer = np.zeros(arr.shape, dtype=np.uint8)
        session.set_target_buffer(buffer)
        with pytest.raises(httpx.HTTPStatusError) as err:
            session.add_bbox_interaction([[1, 5], [1, 5], [1, 5]], include_interaction=True)
        assert err.value.response.status_code == 422
        assert "boxes" in err.value.response.json()["detail"]
        with pytest.raises(httpx.HTTPStatusError) as err:
            session.add_lasso_interaction(buffer, include_interaction=True)
        assert "Lasso" in err.value.response.json()["detail"]
        with pytest.raises(httpx.HTTPStatusError) as err:
            session.add_point_interaction((99, 0, 0), include_interaction=True)
        assert "outside" in err.value.response.json()["detail"]
        assert session.undo() is False  # nothing to undo
        # the server is full (max_sessions=1): a second client is told so
        from nnInteractive.inference.remote import ServerAtCapacityError

        with pytest.raises(ServerAtCapacityError):
            remote_cls(srv.url)
        # a malformed packed array is refused with a sentence
        r = httpx.post(
            srv.url + "/set_image",
            content=b"NNIA\x01garbage",
            headers={"X-Lease-Token": session._lease_token, "X-Meta": "{}"},
        )
        assert r.status_code == 400 and "packed" in r.json()["detail"]
    finally:
        session.close()
    r = httpx.post(srv.url + "/undo", json={}, headers={"X-Lease-Token": "unknown-lease"})
    assert r.status_code == 410


def test_nninteractive_lease_expires_when_idle(start_server, tiny_model, remote_cls):
    from nnInteractive.inference.remote import SessionExpiredError

    srv = start_server(tiny_model, idle_timeout=0.5)
    arr, _ = make_volume()
    session = remote_cls(srv.url)
    try:
        session.set_image(arr[None], {"spacing": [3, 3, 3]})
        session.set_target_buffer(np.zeros(arr.shape, np.uint8))
        token = session._lease_token
        t0 = time.monotonic()
        while token in srv.manager.loaded and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        with pytest.raises(SessionExpiredError):
            session.add_point_interaction(CENTRE, include_interaction=True)
        assert not (srv.data_dir / "sessions" / token).exists()
    finally:
        session.close()
