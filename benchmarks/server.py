"""Server latency under concurrent users (loopback only, bounded in time).

Starts ``seganypet serve`` as a subprocess on 127.0.0.1 (a free port, its own data folder), then N
simulated users (threads, default 8) each upload their own synthetic PET (a torso-sized volume with
lesions, SUV, different seed per user) through the JSON API and make 20 clicks on it (positive on a
lesion, then alternating negative/positive corrections around it). Measured: per-click latency as the
client sees it (p50/p95/max, including queueing behind the other users), upload+open time, errors
(must be 0), and the server's resident memory (VmRSS after the run, VmHWM peak) from /proc.

Every request has a timeout and the whole run stops after ``--time-limit`` seconds.

Usage: ``python benchmarks/server.py [--users 8] [--clicks 20] [--model small|tiny|PATH] [--workers 1]``
(a preset name builds a randomly initialised model of that size: latency does not depend on the weights).
Writes ``benchmarks/results/server.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "server.json"
SHAPE = (128, 96, 160)  # 3 x 3 x 3 mm voxels: 384 x 288 x 480 mm
LESIONS = [(40, 48, 60), (90, 40, 100), (64, 60, 130)]


def synthetic(seed: int, path: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    g = np.indices(SHAPE, dtype=np.float32)
    c = [(s - 1) / 2 for s in SHAPE]
    body = ((g[0] - c[0]) / 58) ** 2 + ((g[1] - c[1]) / 40) ** 2 + ((g[2] - c[2]) / 78) ** 2 <= 1
    arr = np.where(body, 1.0, 0.0).astype(np.float32)
    for lc in LESIONS:
        r = 3 + rng.integers(0, 3)
        arr[((g[0] - lc[0]) ** 2 + (g[1] - lc[1]) ** 2 + (g[2] - lc[2]) ** 2) <= r * r] = 6 + 4 * rng.random()
    arr += (0.15 * rng.standard_normal(SHAPE)).astype(np.float32) * body
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(arr, aff), path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_mem(pid: int) -> dict[str, float]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS", "VmHWM")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) / 1024.0  # MiB
    except OSError:
        pass
    return out


def model_path(name: str, folder: Path) -> str:
    if Path(name).exists() or name == "default":
        return name
    import torch

    from seganypet.build import build_model, save_model

    torch.manual_seed(0)
    path = folder / f"{name}.pt"
    save_model(build_model(name).eval(), path, {"purpose": "benchmark (random weights)"})
    return str(path)


def user(url: str, image: Path, clicks: int, deadline: float, out: dict) -> None:
    import httpx

    lat, errors = [], []
    try:
        with httpx.Client(base_url=url, timeout=max(1.0, deadline - time.monotonic())) as c:
            t0 = time.perf_counter()
            with open(image, "rb") as f:
                r = c.post("/api/sessions", files={"file": (image.name, f)})
            out["open_s"] = time.perf_counter() - t0
            if r.status_code != 200:
                errors.append(f"open {r.status_code}: {r.text[:120]}")
                return
            sid = r.json()["id"]
            centre = np.array(LESIONS[0])
            rng = np.random.default_rng(len(str(image)))
            for n in range(clicks):
                if time.monotonic() > deadline:
                    errors.append("time limit reached")
                    break
                positive = n == 0 or n % 2 == 0
                offset = (
                    rng.integers(-1, 2, 3) if positive else rng.integers(4, 8, 3) * rng.choice([-1, 1], 3)
                )
                ijk = [int(v) for v in np.clip(centre + offset, 0, np.array(SHAPE) - 1)]
                t0 = time.perf_counter()
                r = c.post(f"/api/sessions/{sid}/points", json={"ijk": ijk, "positive": bool(positive)})
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"click {r.status_code}: {r.text[:120]}")
    except Exception as err:  # counted, never hidden
        errors.append(f"{type(err).__name__}: {err}")
    finally:
        out["latencies"] = lat
        out["errors"] = errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--model", default="small")
    ap.add_argument("--workers", type=int, default=1, help="server compute threads (--workers of serve)")
    ap.add_argument("--time-limit", type=float, default=900.0, help="seconds for the whole run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="seganypet_bench_server_"))
    model = model_path(args.model, tmp)
    images = []
    for u in range(args.users):
        images.append(tmp / f"user{u}.nii.gz")
        synthetic(u, images[-1])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, SEGANYPET_NO_PROGRESS="1")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seganypet",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            model,
            "--data-dir",
            str(tmp / "data"),
            "--max-sessions",
            str(args.users + 1),
            "--workers",
            str(args.workers),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        import httpx

        t0 = time.monotonic()
        while True:
            if server.poll() is not None or time.monotonic() - t0 > 120:
                raise SystemExit(
                    f"server did not start: {server.stderr.read().decode(errors='replace')[-500:]}"
                )
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        idle = proc_mem(server.pid)
        load_start = os.getloadavg()[0]
        deadline = time.monotonic() + args.time_limit
        outs = [dict() for _ in range(args.users)]
        threads = [
            threading.Thread(target=user, args=(url, images[u], args.clicks, deadline, outs[u]))
            for u in range(args.users)
        ]
        t_run = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.monotonic() + 30))
        wall = time.perf_counter() - t_run
        mem = proc_mem(server.pid)
    finally:
        server.kill()
        server.wait(timeout=30)

    lat = sorted(x for o in outs for x in o.get("latencies", []))
    errors = [e for o in outs for e in o.get("errors", [])]

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))] if lat else float("nan")

    result = {
        "users": args.users,
        "clicks_per_user": args.clicks,
        "clicks_done": len(lat),
        "model": args.model,
        "server_workers": args.workers,
        "image_shape": list(SHAPE),
        "click_latency_s": {
            "p50": q(0.5),
            "p95": q(0.95),
            "max": lat[-1] if lat else None,
            "mean": statistics.fmean(lat) if lat else None,
        },
        "open_s_median": statistics.median(o["open_s"] for o in outs if "open_s" in o) if outs else None,
        "throughput_clicks_per_s": len(lat) / wall if wall else None,
        "wall_s": wall,
        "errors": len(errors),
        "error_samples": errors[:5],
        "server_rss_mib": {"idle": idle.get("VmRSS"), "after": mem.get("VmRSS"), "peak": mem.get("VmHWM")},
        "machine": {
            "load_avg_1min_start": round(load_start, 2),
            "load_avg_1min_end": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lt = result["click_latency_s"]
    rss = result["server_rss_mib"]
    print(
        f"{'users':>5} {'clicks':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'clicks/s':>8} "
        f"{'errors':>6} {'RSS MiB':>8} {'peak MiB':>8}"
    )
    print(
        f"{args.users:>5} {len(lat):>6} {lt['p50']:>7.3f} {lt['p95']:>7.3f} {lt['max'] or 0:>7.3f} "
        f"{result['throughput_clicks_per_s'] or 0:>8.2f} {len(errors):>6} {rss['after'] or 0:>8.0f} "
        f"{rss['peak'] or 0:>8.0f}"
    )
    print(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
