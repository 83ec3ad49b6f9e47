"""The web viewer in a real browser: headless Debian Chromium (/usr/bin/chromium) driven by Playwright.

Open the page, upload a synthetic PET with a bright sphere, click the lesion (a real mouse click on the
NiiVue canvas), see the overlay appear (page state + NiiVue's label volume + a screenshot), shift-click
a negative point (the mask shrinks), Ctrl+Z (restored), export NIfTI (equal to the server's label map).
Skips when Chromium, Playwright or the NiiVue bundle is absent, except under CI=true, where it fails.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from server_helpers import CENTRE

CHROMIUM = os.environ.get("SEGANYPET_CHROMIUM", "/usr/bin/chromium")
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_browser() -> None:
    import importlib.util

    from seganypet.server.app import BUNDLE

    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("Playwright for Python")
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        missing.append(f"Chromium ({CHROMIUM})")
    if not BUNDLE.exists():
        missing.append(f"the NiiVue bundle ({BUNDLE})")
    if missing:
        msg = ", ".join(missing) + " missing: run scripts/setup_browser_tests.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


STATE = """() => ({
  busy: document.body.dataset.busy, clicks: seganypet.clicks, error: seganypet.error,
  voxels: seganypet.state && seganypet.state.objects.length ? seganypet.state.objects[0].voxels : 0,
  overlay: seganypet.labels ? Array.from(seganypet.labels.img).filter((v) => v > 0).length : -1,
  labelVersion: seganypet.labelVersion || 0,
})"""


def _settle(page, clicks: int | None = None) -> dict:
    cond = "document.body.dataset.busy === '0'" + (f" && seganypet.clicks >= {clicks}" if clicks else "")
    page.wait_for_function(cond, timeout=120_000)
    return page.evaluate(STATE)


def test_viewer_click_negative_undo_export(start_server, tiny_model, image_file, tmp_path):
    _require_browser()
    from playwright.sync_api import sync_playwright

    srv = start_server(tiny_model)
    shots = Path(os.environ.get("SEGANYPET_SCREENSHOTS", tmp_path))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 850}, accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url + "/")
            page.wait_for_function("document.body.dataset.ready === '1'", timeout=120_000)

            page.set_input_files("#file", str(image_file))
            page.wait_for_function("window.seganypet.state !== null", timeout=120_000)
            st = _settle(page)
            assert st["error"] == "" and st["voxels"] == 0
            page.select_option("#view", "axial")  # software WebGL: one slice view keeps the test fast

            # positive click on the lesion: a real mouse click where NiiVue draws voxel CENTRE
            xy = page.evaluate("(v) => viewer.canvasPointOfVoxel(v)", list(CENTRE))
            page.mouse.click(*xy)
            st = _settle(page, clicks=1)
            assert st["error"] == "", st
            assert st["voxels"] > 0 and st["overlay"] == st["voxels"], st
            page.screenshot(path=str(shots / "viewer_positive.png"))
            first = st["voxels"]
            sid = page.evaluate("seganypet.sid")
            manager = srv.manager
            assert int(manager._sessions[sid].session.mask(1).sum()) == first
            assert page.locator("#stats tbody tr").count() == 1

            # shift-click = negative point: the mask shrinks
            other = [CENTRE[0] + 3, CENTRE[1], CENTRE[2]]
            xy = page.evaluate("(v) => viewer.canvasPointOfVoxel(v)", other)
            page.keyboard.down("Shift")
            page.mouse.click(*xy)
            page.keyboard.up("Shift")
            st = _settle(page, clicks=2)
            assert st["error"] == "" and 0 < st["voxels"] < first and st["overlay"] == st["voxels"], st
            events = manager._sessions[sid].session.journal()
            assert events[-1]["op"] == "add_point" and events[-1]["positive"] is False
            assert [round(v) for v in events[-1]["ijk"]] == other

            # Ctrl+Z undoes it: the first mask is back
            version = st["labelVersion"]
            page.keyboard.press("Control+z")
            page.wait_for_function(f"(seganypet.labelVersion || 0) > {version}", timeout=120_000)
            st = _settle(page)
            assert st["voxels"] == first and st["overlay"] == first, st
            page.screenshot(path=str(shots / "viewer_undo.png"))

            # export downloads a NIfTI equal to the server's label map
            with page.expect_download(timeout=120_000) as dl:
                page.click("#export-nifti")
            path = tmp_path / "export.nii.gz"
            dl.value.save_as(path)
            exported = np.asarray(nib.load(path).dataobj)
            np.testing.assert_array_equal(exported, manager._sessions[sid].session.label_map)
            r = httpx.get(f"{srv.url}/api/sessions/{sid}/labels.nii.gz")
            np.testing.assert_array_equal(
                exported, np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(r.content)).dataobj)
            )

            # an error is shown as a sentence, not swallowed
            page.evaluate("viewer.clickAt([999, 0, 0], true)")
            page.wait_for_function("seganypet.error !== ''", timeout=30_000)
            assert "outside" in page.evaluate("seganypet.error")
            assert errors == [], errors
        finally:
            browser.close()
