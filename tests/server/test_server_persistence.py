"""Persistence: kill -9 a real ``seganypet serve`` process mid-session, start it again on the same data
folder, and every session (JSON API and nnInteractive lease) comes back with the same mask; idle
sessions are unloaded from memory and restored on their next request."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from server_helpers import CENTRE, MAXW, free_port, make_volume


def _labels(c: httpx.Client, sid: str) -> np.ndarray:
    r = c.get(f"/api/sessions/{sid}/labels.nii.gz")
    assert r.status_code == 200, r.text
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(r.content)).dataobj)


def _serve(model: str, data: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", SEGANYPET_NO_PROGRESS="1")
    env.pop("SEGANYPET_TOKEN", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seganypet",
            "serve",
            "--model",
            model,
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--max-windows",
            str(MAXW),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {proc.stdout.read().decode(errors='replace')}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("serve did not start in 60 s")


@pytest.mark.slow
def test_kill_9_and_restart_restores_every_session(tiny_model, image_file, tmp_path):
    data, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tiny_model, data, port)
    other = (CENTRE[0] + 3, CENTRE[1], CENTRE[2])
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            with open(image_file, "rb") as f:
                sid = c.post("/api/sessions", files={"file": (image_file.name, f)}).json()["id"]
            c.post(f"/api/sessions/{sid}/points", json={"ijk": list(CENTRE)})
            c.post(f"/api/sessions/{sid}/points", json={"ijk": list(other), "positive": False})
            c.post(f"/api/sessions/{sid}/undo")
            c.post(f"/api/sessions/{sid}/objects", json={"name": "second", "color": "#123456"})
            state = c.post(f"/api/sessions/{sid}/boxes", json={"a": [5, 5, 5], "b": [12, 12, 12]}).json()
            before = _labels(c, sid)
            assert set(np.unique(before)) >= {1, 2}

            # an nnInteractive lease in the middle of its session
            arr, _ = make_volume()
            from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

            remote = nnInteractiveRemoteInferenceSession(url)
            remote.set_image(arr[None], {"spacing": [3, 3, 3]})
            buffer = np.zeros(arr.shape, np.uint8)
            remote.set_target_buffer(buffer)
            remote.add_point_interaction(CENTRE, include_interaction=True)
    finally:
        proc.kill()  # SIGKILL: no shutdown handler runs
        proc.wait(timeout=30)

    proc = _serve(tiny_model, data, port)
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            np.testing.assert_array_equal(_labels(c, sid), before)
            again = c.get(f"/api/sessions/{sid}").json()
            assert again["objects"] == state["objects"] and again["active_label"] == 2
            # the session goes on where it stopped: redo history aside, undo removes the box
            assert c.post(f"/api/sessions/{sid}/undo").status_code == 200
            assert not (_labels(c, sid) == 2).any()

        # the nnInteractive client goes on with its lease; the result equals a fresh lease doing the same
        remote.add_point_interaction(other, include_interaction=False)
        fresh = nnInteractiveRemoteInferenceSession(url)
        fresh.set_image(arr[None], {"spacing": [3, 3, 3]})
        buffer2 = np.zeros(arr.shape, np.uint8)
        fresh.set_target_buffer(buffer2)
        fresh.add_point_interaction(CENTRE, include_interaction=True)
        fresh.add_point_interaction(other, include_interaction=False)
        np.testing.assert_array_equal(buffer, buffer2)
        fresh.close()
        remote.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_idle_sessions_are_unloaded_and_restored(start_server, tiny_model, image_file):
    srv = start_server(tiny_model, idle_timeout=0.5)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        with open(image_file, "rb") as f:
            sid = c.post("/api/sessions", files={"file": (image_file.name, f)}).json()["id"]
        c.post(f"/api/sessions/{sid}/points", json={"ijk": list(CENTRE)})
        before = _labels(c, sid)
        t0 = time.monotonic()
        while sid in srv.manager.loaded and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        assert sid not in srv.manager.loaded  # memory returned
        np.testing.assert_array_equal(_labels(c, sid), before)  # restored from its folder
        assert sid in srv.manager.loaded
