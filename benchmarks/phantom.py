"""Benchmark the phantom generator: time per phantom, image quality facts, system resolution.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/phantom.py [--seeds 3] [--wholebody 1] [--png mip.png]

Prints a table and writes ``benchmarks/results/phantom.json``. Measured:

- wall time of ``make_phantom`` (torso FDG / PSMA at 3 mm; whole body at 3 mm) and of ``save_phantom``
  (NIfTI, and with the DICOM series);
- liver: mean reconstructed SUV, true SUV and coefficient of variation (noise) inside the eroded liver;
- lesion recovery: reconstructed SUVmax / true lesion SUV per size class (partial-volume losses);
- system resolution: FWHM (mm) of the reconstruction of a point source in a warm water cylinder, with the
  default scanner settings at a high count level, from a Gaussian fit per axis.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seganypet.phantoms import ORGANS, make_phantom, save_phantom, scanner  # noqa: E402
from seganypet.utils import set_progress  # noqa: E402


def _fwhm_fit(profile: np.ndarray, spacing: float) -> float:
    x = np.arange(profile.size, dtype=np.float64)
    base = float(np.median(profile))

    def g(x, a, mu, s):
        return base + a * np.exp(-0.5 * ((x - mu) / s) ** 2)

    p0 = (float(profile.max() - base), float(np.argmax(profile)), 1.0)
    (a, mu, s), _ = optimize.curve_fit(g, x, profile, p0=p0)
    return float(abs(s) * 2.0 * np.sqrt(2.0 * np.log(2.0)) * spacing)


def resolution(spacing: float = 3.0) -> dict[str, float]:
    """FWHM (mm) along x, y, z of a point source (off-centre by 5 cm) in a 1-SUV water cylinder."""
    nx, ny, nz = 147, 124, 32
    xx, yy = np.mgrid[:nx, :ny]
    body = ((xx - 73) / 50.0) ** 2 + ((yy - 62) / 40.0) ** 2 < 1
    act = np.where(body[..., None], 1.0, 0.0).astype(np.float32) * np.ones((1, 1, nz), np.float32)
    act[90, 62, 16] += 300.0
    mu = np.where(act > 0, scanner.MU_WATER_511, 0.0).astype(np.float32)
    params = scanner.ScanParams(counts=1e8)
    img = scanner.scan(act, mu, (spacing,) * 3, params, np.random.default_rng(0)).image
    return {
        "fwhm_x_mm": round(_fwhm_fit(img[80:101, 62, 16], spacing), 2),
        "fwhm_y_mm": round(_fwhm_fit(img[90, 52:73, 16], spacing), 2),
        "fwhm_z_mm": round(_fwhm_fit(img[90, 62, 6:27], spacing), 2),
        "sim_psf_fwhm_mm": list(params.psf_fwhm_mm),
        "recon_psf_fwhm_mm": params.recon_psf_fwhm_mm,
        "post_fwhm_mm": params.post_fwhm_mm,
    }


def facts(ph) -> dict:
    liver = ndimage.binary_erosion(ph.labels == ORGANS["liver"], iterations=2)
    v = ph.pet.array[liver]
    rec = []
    for les in ph.lesions:
        m = ph.labels == les["label"]
        rec.append(
            {
                "diameter_mm": les["diameter_mm"],
                "site": les["site"],
                "true_suv": les["suv"],
                "recon_suvmax": round(float(ph.pet.array[m].max()), 3),
            }
        )
    return {
        "shape": list(ph.pet.shape),
        "liver_suv_mean": round(float(v.mean()), 3),
        "liver_truth_mean": round(float(ph.truth[liver].mean()), 3),
        "liver_cov": round(float(v.std() / v.mean()), 4),
        "n_lesions": len(ph.lesions),
        "lesions": rec,
        "times_s": ph.info["times_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="torso FDG phantoms to time (default 3)")
    ap.add_argument("--wholebody", type=int, default=1, help="whole-body phantoms to time (default 1)")
    ap.add_argument("--spacing", type=float, default=3.0)
    ap.add_argument("--png", type=Path, default=None, help="write coronal MIPs of the first phantoms here")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "phantom.json")
    args = ap.parse_args()
    set_progress(False)
    make_phantom(0, spacing=8.0, n_lesions=0, iterations=1, subsets=2)  # warm the anatomy cache
    runs = []
    mips = []
    configs = [("torso", "fdg", s) for s in range(args.seeds)] + [("torso", "psma", 100)]
    configs += [("wholebody", "fdg", 200 + s) for s in range(args.wholebody)]
    for kind, tracer, seed in configs:
        t0 = time.perf_counter()
        ph = make_phantom(seed, kind=kind, tracer=tracer, spacing=args.spacing)
        t_make = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.perf_counter()
            save_phantom(ph, Path(tmp) / "nifti")
            t_save = time.perf_counter() - t1
            t2 = time.perf_counter()
            save_phantom(ph, Path(tmp) / "dicom", dicom=True)
            t_dicom = time.perf_counter() - t2
        f = facts(ph)
        runs.append(
            {
                "kind": kind,
                "tracer": tracer,
                "seed": seed,
                "spacing_mm": args.spacing,
                "make_s": round(t_make, 2),
                "save_nifti_s": round(t_save, 2),
                "save_with_dicom_s": round(t_dicom, 2),
                **f,
            }
        )
        mips.append((f"{kind} {tracer} seed {seed}", ph.pet.array.max(axis=1), tracer))
        print(
            f"  {kind:9s} {tracer:4s} seed {seed:3d}: make {t_make:5.1f} s  save {t_save:4.1f} s "
            f"(+DICOM {t_dicom:4.1f} s)  liver {f['liver_suv_mean']:.2f} (truth {f['liver_truth_mean']:.2f}, "
            f"CoV {f['liver_cov']:.3f})  {f['n_lesions']} lesions",
            flush=True,
        )
    res = resolution(args.spacing)
    recovery = {}
    all_lesions = [les for r in runs for les in r["lesions"]]
    for lo, hi in ((4, 10), (10, 20), (20, 61)):
        rc = [les["recon_suvmax"] / les["true_suv"] for les in all_lesions if lo <= les["diameter_mm"] < hi]
        if rc:
            med = round(float(np.median(rc)), 3)
            recovery[f"{lo}-{hi}mm"] = {"n": len(rc), "median_suvmax_recovery": med}
    torso = [r["make_s"] for r in runs if r["kind"] == "torso"]
    summary = {
        "torso_make_s_median": round(float(np.median(torso)), 2),
        "torso_make_s_max": round(float(np.max(torso)), 2),
        "wholebody_make_s": [r["make_s"] for r in runs if r["kind"] == "wholebody"],
        "resolution": res,
        "lesion_recovery": recovery,
    }
    print()
    print(
        "| phantom | shape | make (s) | save NIfTI (s) | + DICOM (s) | liver SUV (truth) | liver CoV "
        "| lesions |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['kind']} {r['tracer']} seed {r['seed']} | {'x'.join(map(str, r['shape']))} "
            f"| {r['make_s']} | {r['save_nifti_s']} | {r['save_with_dicom_s']} "
            f"| {r['liver_suv_mean']} ({r['liver_truth_mean']}) | "
            f"{r['liver_cov']} | {r['n_lesions']} |"
        )
    print(
        f"\nresolution (point source, 3 mm voxels): FWHM x {res['fwhm_x_mm']} mm, y {res['fwhm_y_mm']} mm, "
        f"z {res['fwhm_z_mm']} mm"
    )
    for size, v in recovery.items():
        print(f"lesions {size}: median SUVmax recovery {v['median_suvmax_recovery']} (n={v['n']})")
    load = os.getloadavg()
    env = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_at_end": [round(x, 2) for x in load],
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": env, "summary": summary, "runs": runs}, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(mips), figsize=(3.2 * len(mips), 7))
        for ax, (title, mip, tracer) in zip(np.atleast_1d(axes), mips):
            ax.imshow(mip.T, origin="lower", cmap="gray_r", vmin=0, vmax=7 if tracer == "fdg" else 15)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(args.png, dpi=70)


if __name__ == "__main__":
    main()
