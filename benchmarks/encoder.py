"""Encoder and prompt+decoder speed / memory benchmark.

For each preset it times one 128³ crop through the image encoder with the fast (closed-form
padding) implementation and, in the same run, the naive published padded implementation, in float32
and (fast path) bfloat16 autocast; then prompt encoder + mask decoder for one click. Each
measurement runs in a fresh subprocess so that its peak memory (extra resident memory over the
built model, MB) is its own. "median ms" is wall-clock; "cpu ms" is the process CPU time of the same
runs (on a machine shared with other jobs, the 1-thread CPU time is the better estimate of the idle
single-core time; with 2 threads it includes OpenMP spin-waiting). Prints a table and writes JSON
to benchmarks/results/encoder.json.

The host's speed varies (shared CPUs: the same run can take 0.8 s or 1.3 s minutes apart), so each
measurement also times a float32 matrix product (512x768 @ 768x3072, the encoder's MLP shape) in the
same process and reports "GFLOP/s" achieved by the measured part next to that "sgemm"
reference: their ratio is the efficiency, which does not depend on how loaded the host is. "min ms"
is the best run. The allocator setting the CLI and server use (``seganypet.utils.tune_allocator``)
is applied unless ``--no-tune-malloc``.

    OMP_NUM_THREADS=2 nice python benchmarks/encoder.py                 # all presets, 2 threads
    python benchmarks/encoder.py --presets vit_b_ori --repeats 5 --naive-repeats 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "encoder.json"


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure(job: dict, queue: mp.Queue) -> None:
    """Child process: build the model, time ``job["kind"]``, report median ms and peak memory."""
    try:
        import torch

        from seganypet.build import build_model

        if job.get("tune_malloc", True):
            from seganypet.utils import tune_allocator

            tune_allocator()
        torch.set_num_threads(job["threads"])
        torch.manual_seed(0)
        model = build_model(job["preset"]).eval().to(job["device"])
        model.fast_window = job["impl"] == "fast"
        x = torch.randn(1, 1, 128, 128, 128, device=job["device"])
        autocast = job["dtype"] == "bfloat16"
        sync = torch.cuda.synchronize if job["device"].startswith("cuda") else (lambda: None)

        def encode() -> torch.Tensor:
            with torch.autocast(job["device"].split(":")[0], dtype=torch.bfloat16, enabled=autocast):
                return model.image_encoder(x)

        with torch.inference_mode():
            if job["kind"] == "encoder":
                base = _rss_mb()
                times, cpu = [], []
                for i in range(job["repeats"] + 1):  # first run is warm-up
                    t0, c0 = time.perf_counter(), time.process_time()
                    encode()
                    sync()
                    if i:
                        times.append(time.perf_counter() - t0)
                        cpu.append(time.process_time() - c0)
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
            else:  # prompt encoder + decoder for one click on a fixed embedding
                emb = model.image_encoder(x)
                pts = torch.tensor([[[64.0, 60.0, 70.0]]], device=job["device"])
                lab = torch.tensor([[1]], device=job["device"])
                mask = torch.zeros(1, 1, 32, 32, 32, device=job["device"])
                base = _rss_mb()
                times, cpu = [], []
                for i in range(job["repeats"] + 3):
                    t0, c0 = time.perf_counter(), time.process_time()
                    model.predict(emb, pts, lab, mask_input=mask)
                    sync()
                    if i >= 3:
                        times.append(time.perf_counter() - t0)
                        cpu.append(time.process_time() - c0)
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
            sgemm = _sgemm_gflops(job["device"], sync)  # after the peak-memory reading
            flops = _flops(model, x, job["kind"])
        queue.put(
            {
                "ms": 1000 * statistics.median(times),
                "min_ms": 1000 * min(times),
                "gflop": flops / 1e9,
                "gflops": flops / 1e9 / statistics.median(times),
                "sgemm_gflops": sgemm,
                "cpu_ms": 1000 * statistics.median(cpu),
                "runs": len(times),
                "peak_mb": max(peak, 0.0),
            }
        )
    except Exception as err:  # noqa: BLE001 - reported in the table
        queue.put({"error": f"{type(err).__name__}: {err}"})


def _sgemm_gflops(device: str, sync) -> float:
    """Median GFLOP/s of a float32 (512, 768) @ (768, 3072) product: the machine's speed right now."""
    import torch

    a, b = torch.randn(512, 768, device=device), torch.randn(768, 3072, device=device)
    times = []
    for i in range(12):
        t0 = time.perf_counter()
        a @ b
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 2 * 512 * 768 * 3072 / statistics.median(times) / 1e9


def _flops(model, x, kind: str) -> float:
    """Floating-point operations of one pass (torch's FlopCounterMode: matmuls, convolutions, SDPA)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        if kind == "encoder":
            model.image_encoder(x)
        else:
            emb = torch.zeros(
                1, model.config.prompt_embed_dim, *(model.config.grid_size,) * 3, device=x.device
            )
            model.predict(
                emb,
                torch.tensor([[[64.0, 60.0, 70.0]]], device=x.device),
                torch.tensor([[1]], device=x.device),
            )
    return float(counter.get_total_flops())


def run_job(job: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(job, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return {**job, **result}


def bf16_accuracy(preset: str, threads: int) -> dict:
    """Relative error of bf16-autocast low-res logits (one click) against float32."""
    import torch

    from seganypet.build import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(preset).eval()
    with torch.no_grad():  # random but non-trivial relative positions
        for name, p in model.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.05)
    x = torch.randn(1, 1, 128, 128, 128)
    pts, lab = torch.tensor([[[64.0, 60.0, 70.0]]]), torch.tensor([[1]])
    with torch.inference_mode():
        emb32 = model.image_encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb16 = model.image_encoder(x).float()
        lo32, _ = model.predict(emb32, pts, lab)
        lo16, _ = model.predict(emb16, pts, lab)
    return {
        "preset": preset,
        "embedding_rel_err": float((emb16 - emb32).norm() / emb32.norm()),
        "logits_rel_err": float((lo16 - lo32).norm() / lo32.norm()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["vit_b_ori", "small"])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the fast path (median)")
    parser.add_argument("--naive-repeats", type=int, default=2, help="timed runs of the naive path")
    parser.add_argument("--bf16-repeats", type=int, default=2, help="timed runs of the bf16 path")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--no-tune-malloc", action="store_true", help="leave glibc's allocator thresholds at their defaults"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    bf16_native = bool(
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    rows = []
    for preset in args.presets:
        for threads in args.threads:
            jobs = [
                ("encoder", "fast", "float32", args.repeats),
                ("encoder", "naive", "float32", args.naive_repeats),
            ]
            if not args.no_bf16:
                jobs.append(("encoder", "fast", "bfloat16", args.bf16_repeats))
            jobs.append(("prompt+decoder", "fast", "float32", 20))
            for kind, impl, dtype, repeats in jobs:
                job = dict(
                    preset=preset,
                    kind=kind,
                    impl=impl,
                    dtype=dtype,
                    threads=threads,
                    repeats=repeats,
                    device=args.device,
                    tune_malloc=not args.no_tune_malloc,
                )
                row = run_job(job)
                rows.append(row)
                if "error" in row:
                    print(f"{preset} {kind} {impl} {dtype}: {row['error']}", file=sys.stderr)
                else:
                    print(
                        f"  {preset:10s} {kind:15s} {impl:5s} {dtype:8s} t={threads} {row['ms']:9.1f} ms",
                        flush=True,
                    )
    # speed-ups measured side by side
    for row in rows:
        if row["kind"] == "encoder" and row["impl"] == "fast" and "ms" in row:
            naive = next(
                (
                    r
                    for r in rows
                    if r["kind"] == "encoder"
                    and r["impl"] == "naive"
                    and r["preset"] == row["preset"]
                    and r["threads"] == row["threads"]
                    and "ms" in r
                ),
                None,
            )
            if naive:
                row["speedup_vs_naive_f32"] = naive["ms"] / row["ms"]
                row["speedup_vs_naive_f32_cpu"] = naive["cpu_ms"] / row["cpu_ms"]
    accuracy = []
    if not args.no_bf16:
        accuracy = [bf16_accuracy(p, args.threads[0]) for p in args.presets]

    cols = (
        "preset", "part", "impl", "dtype", "thr", "runs", "median ms", "min ms", "cpu ms", "x naive",
        "peak MB", "GFLOP", "GFLOP/s", "sgemm",
    )  # fmt: skip
    fmt = "{:10s} {:15s} {:5s} {:8s} {:>3} {:>4} {:>10} {:>8} {:>9} {:>8} {:>8} {:>7} {:>8} {:>6}"
    header = fmt.format(*cols)
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:10s} {r['kind']:15s} {r['impl']:5s} {r['dtype']:8s} error: {r['error']}")
            continue
        ratio = f"{r['speedup_vs_naive_f32']:.1f}" if "speedup_vs_naive_f32" in r else ""
        vals = (r["preset"], r["kind"], r["impl"], r["dtype"], r["threads"], r["runs"])
        print(
            fmt.format(
                *vals,
                f"{r['ms']:.1f}",
                f"{r['min_ms']:.1f}",
                f"{r['cpu_ms']:.1f}",
                ratio,
                f"{r['peak_mb']:.0f}",
                f"{r['gflop']:.2f}",
                f"{r['gflops']:.0f}",
                f"{r['sgemm_gflops']:.0f}",
            )
        )
    for a in accuracy:
        emb_err, log_err = a["embedding_rel_err"], a["logits_rel_err"]
        print(f"bf16 vs f32 ({a['preset']}): embedding rel err {emb_err:.2e}, low-res logits {log_err:.2e}")
    print(f"native bf16 on this CPU: {bf16_native}")

    load = os.getloadavg()
    out = {
        "rows": rows,
        "bf16_accuracy": accuracy,
        "bf16_native": bf16_native,
        "tune_malloc": not args.no_tune_malloc,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "loadavg_at_end": load,
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
