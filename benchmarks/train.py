"""Training throughput: samples/s and peak memory per optimiser step.

CPU: the ``small`` preset with the published interaction settings (5 prompt iterations, CPCL with 3
prompt sets, loss on the 128^3 grid) and with the settings of the shipped CPU run (4 iterations,
2 prompt sets, loss on 64^3). With a CUDA GPU also ``vit_b_ori`` at batch 2 in bf16.

Data: a synthetic store (NIfTI volumes with an organ and a lesion, prepared with ``seganypet
prepare``) in a temporary folder, so the benchmark needs nothing else.

    python benchmarks/train.py [--steps 6] [--threads 2]

Prints a table and writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _synthetic_dataset(root: Path, n: int = 3) -> Path:
    import nibabel as nib

    for c in range(n):
        rng = np.random.default_rng(c)
        shape = (90, 90, 90)
        ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
        organ = ((ii - 45) / 20) ** 2 + ((jj - 40) / 15) ** 2 + ((kk - 45) / 18) ** 2 <= 1
        lesion = (ii - 65) ** 2 + (jj - 60) ** 2 + (kk - 50) ** 2 <= 16
        suv = (0.5 + 0.1 * rng.standard_normal(shape) + 2.0 * organ + 6.0 * lesion).clip(0).astype(np.float32)
        labels = (organ * 1 + lesion * 2).astype(np.uint8)
        labels[lesion] = 2
        d = root / f"case{c}"
        d.mkdir(parents=True)
        aff = np.diag([2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(suv, aff), d / "pet.nii.gz")
        nib.save(nib.Nifti1Image(labels, aff), d / "labels.nii.gz")
        (d / "labels.json").write_text(
            json.dumps({"1": {"name": "organ", "kind": "organ"}, "2": {"name": "lesion", "kind": "lesion"}})
        )
    return root


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def bench(
    store: Path, out: Path, preset: str, interaction, steps: int, batch: int, device: str, amp: str
) -> dict:
    from seganypet.training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(
        store=str(store),
        out=str(out),
        preset=preset,
        steps=steps + 1,
        batch_size=batch,
        warmup=1,
        val_every=10**6,
        ckpt_every=10**6,
        interaction=interaction,
        device=device,
        amp=amp,
    )
    tr = Trainer(cfg)
    tr._t0 = time.perf_counter()
    tr.train_step()  # warm-up (allocations, lazy imports)
    times, peaks = [], []
    for _ in range(steps):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t = time.perf_counter()
        tr.train_step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated() / 2**20)
        else:
            peaks.append(_rss_mb())
        times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in tr.model.parameters())
    return {
        "preset": preset,
        "device": device,
        "amp": amp,
        "batch": batch,
        "num_clicks": interaction.num_clicks,
        "cpcl_prompts": interaction.cpcl_prompts,
        "loss_size": interaction.loss_size or 128,
        "parameters": params,
        "steps_timed": steps,
        "s_per_step_median": float(np.median(times)),
        "samples_per_s": float(batch / np.median(times)),
        "peak_memory_mb": float(max(peaks)),
        "memory_kind": "GPU max_memory_allocated" if device.startswith("cuda") else "peak RSS of the process",
    }


def _runs() -> list[tuple]:
    from seganypet.training.loop import InteractionConfig

    runs = [
        ("small", InteractionConfig(num_clicks=5, cpcl_prompts=3), 1, "cpu", "none"),
        ("small", InteractionConfig(num_clicks=4, cpcl_prompts=2, loss_size=64), 1, "cpu", "none"),
    ]
    if torch.cuda.is_available():
        runs += [
            ("small", InteractionConfig(num_clicks=5, cpcl_prompts=3), 4, "cuda", "bf16"),
            ("vit_b_ori", InteractionConfig(num_clicks=5, cpcl_prompts=3), 2, "cuda", "bf16"),
        ]
    return runs


def main(argv: list[str] | None = None) -> int:
    from seganypet.training.prepare import prepare
    from seganypet.utils import set_progress

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one configuration, JSON out
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    set_progress(False)
    torch.set_num_threads(args.threads)
    runs = _runs()
    if args.one is not None:  # a child process: its peak RSS belongs to this configuration alone
        preset, inter, batch, device, amp = runs[args.one]
        with tempfile.TemporaryDirectory() as tmp:
            row = bench(Path(args.store), Path(tmp) / "run", preset, inter, args.steps, batch, device, amp)
        print(json.dumps(row))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare([_synthetic_dataset(tmp / "data")], tmp / "store")
        for i in range(len(runs)):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                str(i),
                "--store",
                str(tmp / "store"),
                "--steps",
                str(args.steps),
                "--threads",
                str(args.threads),
            ]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(
        f"{'preset':<10} {'device':<6} {'amp':<5} {'batch':>5} {'clicks':>6} {'cpcl':>4} {'loss grid':>9} "
        f"{'s/step':>7} {'samples/s':>9} {'peak MB':>8}"
    )
    for r in rows:
        print(
            f"{r['preset']:<10} {r['device']:<6} {r['amp']:<5} {r['batch']:>5} {r['num_clicks']:>6} "
            f"{r['cpcl_prompts']:>4} {r['loss_size']:>9} {r['s_per_step_median']:>7.2f} "
            f"{r['samples_per_s']:>9.3f} {r['peak_memory_mb']:>8.0f}"
        )
    result = {
        "benchmark": "train",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "load_avg_1min_at_end": os.getloadavg()[0],
        },
        "note": "CPU shared with other jobs while measured; see load_avg_1min_at_end",
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
