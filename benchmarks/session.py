"""Session speed and memory on a whole-body-sized synthetic PET (CPU).

Image: 200 x 200 x 400 voxels at 4 x 4 x 3 mm (800 x 800 x 1200 mm), SUV: a body ellipsoid of SUV 1,
a "liver" of SUV 2.5 (larger than one 192 mm crop) and small lesions. Networks with random weights
(``build_model``): the published size ``vit_b_ori`` and our ``small`` preset, float32.

Measured per model (each model in its own process, so peak memory is per model):
- ``set_image``: geometry of the 1.5 mm model grid;
- first click: crop resampling + normalisation + encoder + prompt encoder/decoder + paste-back
  (median over new crops, ``extend=False``);
- further click in the same crop: prompt encoder + decoder + paste-back (median);
- a click with auto-extension on (random weights give masks touching the crop faces, so this is the
  bounded worst case: up to ``max_windows`` windows);
- peak resident memory of the process.

Usage: ``python benchmarks/session.py [--threads 2] [--models vit_b_ori small] [--repeats 3]``
Writes ``benchmarks/results/session.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "session.json"


def synthetic_image():
    from seganypet.image import PETImage

    shape = (200, 200, 400)
    aff = np.diag([4.0, 4.0, 3.0, 1.0])
    aff[:3, 3] = (-400.0, -400.0, -600.0)
    i = (np.arange(shape[0]) * 4.0 - 400.0)[:, None, None]
    j = (np.arange(shape[1]) * 4.0 - 400.0)[None, :, None]
    k = (np.arange(shape[2]) * 3.0 - 600.0)[None, None, :]
    arr = np.zeros(shape, np.float32)
    body = (i / 180) ** 2 + (j / 120) ** 2 + (k / 900) ** 2 <= 1
    arr[body] = 1.0
    liver = ((i + 60) / 110) ** 2 + ((j - 10) / 90) ** 2 + ((k - 150) / 110) ** 2 <= 1
    arr[liver] = 2.5
    for c in [(80, 0, -200), (-90, 20, 300), (30, -40, 0)]:
        lesion = (i - c[0]) ** 2 + (j - c[1]) ** 2 + (k - c[2]) ** 2 <= 12**2
        arr[lesion] = 8.0
    rng = np.random.default_rng(0)
    arr += (rng.standard_normal(shape).astype(np.float32) * 0.1) * (arr > 0)
    return PETImage(arr, aff, units="SUVbw")


def world_to_ijk(img, xyz):
    return [int(round(v)) for v in img.mm_to_ijk(np.asarray(xyz, float))]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_one(preset: str, threads: int, repeats: int, tune_malloc: bool = True) -> dict:
    import torch

    from seganypet.build import build_model
    from seganypet.inference import Session
    from seganypet.utils import tune_allocator

    if tune_malloc:  # as the CLI and the server do
        tune_allocator()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    img = synthetic_image()
    model = build_model(preset).eval()
    rss_model = peak_rss_mb()
    s = Session(model, "cpu", extend=False)
    s.set_image(img)  # warm-up: one-off imports and allocations are not part of set_image's cost
    t0 = time.perf_counter()
    s.set_image(img)
    t_set = time.perf_counter() - t0
    # warm-up (first call pays one-off costs: thread pools, allocator)
    s.add_point(world_to_ijk(img, (-80, 0, 400)))
    firsts, furthers, phases = [], [], []
    centres = [(80, 0, -200), (-90, 20, 300), (30, -40, 0), (-60, 10, 150), (0, 0, -450)][:repeats]
    for c in centres:
        s.new_object()
        t0 = time.perf_counter()
        s.add_point(world_to_ijk(img, c))
        firsts.append(time.perf_counter() - t0)
        phases.append(dict(s.last_timing))
        for d in range(3):
            t0 = time.perf_counter()
            s.add_point(world_to_ijk(img, (c[0] + 4 * (d + 1), c[1], c[2])), positive=d % 2 == 0)
            furthers.append(time.perf_counter() - t0)
    further_phase = dict(s.last_timing)
    # auto-extension (fresh session so nothing is cached)
    s2 = Session(model, "cpu", extend=True, max_windows=8)
    s2.set_image(img)
    t0 = time.perf_counter()
    s2.add_point(world_to_ijk(img, (-60, 10, 150)))
    t_ext = time.perf_counter() - t0
    n_windows = len(s2.windows())
    t0 = time.perf_counter()
    s2.add_point(world_to_ijk(img, (-56, 10, 150)))
    t_ext_further = time.perf_counter() - t0
    return {
        "model": preset,
        "threads": threads,
        "set_image_s": t_set,
        "first_click_s_median": statistics.median(firsts),
        "first_click_s_all": firsts,
        "first_click_phases": phases[len(phases) // 2],
        "further_click_ms_median": 1000 * statistics.median(furthers),
        "further_click_ms_all": [1000 * v for v in furthers],
        "further_click_phases": further_phase,
        "extension_click_s": t_ext,
        "extension_windows": n_windows,
        "further_click_with_extensions_s": t_ext_further,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_model_mb": rss_model,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["vit_b_ori", "small"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-tune-malloc", action="store_true", help="leave glibc's allocator thresholds at their defaults"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(bench_one(args.one, args.threads, args.repeats, not args.no_tune_malloc)))
        return 0
    rows = []
    for preset in args.models:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        cmd = [
            sys.executable,
            __file__,
            "--one",
            preset,
            "--threads",
            str(args.threads),
            "--repeats",
            str(args.repeats),
            *(["--no-tune-malloc"] if args.no_tune_malloc else []),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    load = os.getloadavg()
    result = {
        "benchmark": "session",
        "image": {"shape": [200, 200, 400], "spacing_mm": [4.0, 4.0, 3.0]},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_after": load},
        "command": "python benchmarks/session.py " + " ".join(sys.argv[1:]),
        "tune_malloc": not args.no_tune_malloc,
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    hdr = (
        f"{'model':<10} {'set_image s':>11} {'1st click s':>11} {'further ms':>10} "
        f"{'ext click s':>11} {'windows':>7} {'peak MB':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['model']:<10} {r['set_image_s']:>11.3f} {r['first_click_s_median']:>11.3f} "
            f"{r['further_click_ms_median']:>10.1f} {r['extension_click_s']:>11.2f} "
            f"{r['extension_windows']:>7d} {r['peak_rss_mb']:>8.0f}"
        )
    print(f"threads={args.threads}, load average after: {load[0]:.1f}; wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
