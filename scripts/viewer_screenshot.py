"""Take the README's screenshot of the web viewer (docs/img/viewer.png).

Makes a synthetic torso phantom, starts the server on a free loopback port with ``--model``, opens the
phantom in headless Chromium (Playwright, /usr/bin/chromium), clicks on the hottest lesion and saves a
screenshot. Needs the set-up of scripts/setup_browser_tests.sh.

Usage: ``python scripts/viewer_screenshot.py [--model default|PATH] [--seed 0] [--out docs/img/viewer.png]``
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--object", default=None, help="phantom object to click (default: the hottest lesion)")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img" / "viewer.png"
    )
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    import httpx
    import nibabel as nib
    from playwright.sync_api import sync_playwright

    from seganypet.phantoms import make_phantom

    tmp = Path(tempfile.mkdtemp(prefix="seganypet_shot_"))
    phantom = make_phantom(args.seed)
    (tmp / "data" / "images").mkdir(parents=True)
    name = f"phantom_{args.seed}.nii.gz"
    nib.save(nib.Nifti1Image(phantom.pet.array, phantom.pet.affine), tmp / "data" / "images" / name)
    lesions = [lab for lab, info in phantom.label_info.items() if info["kind"] == "lesion"]
    hottest = max(lesions, key=lambda lab: float(phantom.pet.array[phantom.labels == lab].max()))
    by_name = {info["name"]: lab for lab, info in phantom.label_info.items()}
    if args.object is not None and args.object not in by_name:
        raise SystemExit(f"no object {args.object!r} in the phantom; it has {', '.join(sorted(by_name))}")
    chosen = by_name[args.object] if args.object else hottest
    vox = np.argwhere(phantom.labels == chosen)
    if args.object:  # the object's voxel nearest its centroid
        target = [int(v) for v in vox[np.argmin(((vox - vox.mean(0)) ** 2).sum(1))]]
    else:
        target = [int(v) for v in vox[np.argmax(phantom.pet.array[tuple(vox.T)])]]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seganypet",
            "serve",
            "--port",
            str(port),
            "--model",
            args.model,
            "--data-dir",
            str(tmp / "data"),
        ],
        env=dict(os.environ, SEGANYPET_NO_PROGRESS="1"),
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=args.chromium,
                args=["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.goto(url + "/")
            page.wait_for_function("document.body.dataset.ready === '1'", timeout=120_000)
            page.select_option("#images", name)
            page.click("#open-image")
            page.wait_for_function(
                "seganypet.state !== null && document.body.dataset.busy === '0'", timeout=300_000
            )
            page.fill("#wmax", "6")
            page.dispatch_event("#wmax", "change")
            xy = page.evaluate("(v) => viewer.canvasPointOfVoxel(v)", target)
            page.mouse.click(*xy)
            page.wait_for_function(
                "seganypet.clicks > 0 && document.body.dataset.busy === '0'", timeout=300_000
            )
            time.sleep(1.0)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            print(page.evaluate("document.getElementById('status').textContent"), "->", args.out)
            browser.close()
    finally:
        server.kill()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
