"""Objects larger than one crop: auto-extension against a zoomed-out pass, on phantom organs.

The session's large-object strategies (``Session(large_objects=...)``, docs/session.md):

- ``extend``: further full-resolution windows along the faces the mask touches (default);
- ``zoom``: one zoomed-out window (384 mm at 3 mm voxels) then full-resolution refine windows;
- ``zoom-coarse``: the zoomed-out window only; ``none``: one crop.

Two measurements, each on every organ of the phantoms given (``--data``, phantom layout:
``labels.nii.gz`` + ``labels.json``; the PET itself is used only with ``--model``):

1. **Oracle network** (always): a stand-in with the model's interface whose low-res logits are the
   true fraction of the organ in each low-res cell of whatever window it is shown (so it is perfect
   up to the 4-voxel low-res grid, at either scale). This isolates what the *strategy* can recover:
   coverage of organs larger than a crop, the cost of the zoomed-out window's 12 mm logit cells, the
   number of windows (encoder passes). First click: the organ's deepest voxel.
2. **A trained model** (``--model``, e.g. ``default``): Dice after 1 and 3 clicks of the SAM-Med3D
   protocol is what ``seganypet evaluate --large-objects extend zoom zoom-coarse none`` measures; this
   script does not repeat it (see docs/session.md for those numbers).

Usage::

    python benchmarks/large_objects.py --data /path/to/heldout_phantoms   # folders of phantoms
    python benchmarks/large_objects.py --seeds 9001 9002                   # generate torso phantoms

Prints a table and writes ``benchmarks/results/large_objects.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "large_objects.json"
STRATEGIES = ("extend", "zoom", "zoom-coarse", "none")


@dataclass(frozen=True)
class OracleConfig:
    image_size: int = 128
    normalization: str = "none"
    supports_boxes: bool = False


class OracleNet:
    """The Session's model interface; the "image" it is given is the organ's 0/1 mask, and its
    logits are ``20 · (fraction of the organ in the low-res cell − 0.5)``: perfect at its resolution."""

    def __init__(self) -> None:
        import torch

        self.config = OracleConfig()
        self.supports_boxes = False
        self.encoder_calls = 0
        self._torch = torch

    def to(self, device):  # noqa: ANN001 - nn.Module-like
        return self

    def eval(self):
        return self

    def encode(self, crop):  # (1, 1, S, S, S) -> the crop itself
        self.encoder_calls += 1
        return crop

    def predict(self, emb, points, labels, boxes=None, mask_input=None, multimask=False):  # noqa: ANN001
        frac = self._torch.nn.functional.avg_pool3d(emb, 4)
        return (frac - 0.5) * 20.0, self._torch.zeros(1, 1)


def _deepest_voxel(mask: np.ndarray) -> tuple[int, int, int]:
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), mask.shape))


def _cases(args: argparse.Namespace, tmp: Path) -> list[Path]:
    if args.data:
        found = sorted({p.parent for d in args.data for p in Path(d).rglob("labels.json")})
        if not found:
            raise SystemExit(f"no phantom (labels.json) under {' '.join(args.data)}")
        return found
    from seganypet.phantoms.generator import make_phantom, save_phantom

    out = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        ph = make_phantom(seed, "torso", "fdg", 3.0)
        save_phantom(ph, tmp / f"torso_{seed}")
        out.append(tmp / f"torso_{seed}")
        print(f"  generated phantom {seed} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def run_oracle(case: Path, strategies: tuple[str, ...], max_windows: int) -> list[dict]:
    import nibabel as nib

    from seganypet.image import PETImage
    from seganypet.inference import Session

    img = nib.load(str(case / "labels.nii.gz"))
    labels = np.asarray(img.dataobj).astype(np.int32)
    info = json.loads((case / "labels.json").read_text())["labels"]
    spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    rows = []
    for key, meta in info.items():
        if meta.get("kind") != "organ":
            continue
        truth = labels == int(key)
        if truth.sum() < 10:
            continue
        extent_mm = (np.ptp(np.argwhere(truth), axis=0) + 1) * spacing
        click = _deepest_voxel(truth)
        image = PETImage(truth.astype(np.float32), img.affine)
        for strategy in strategies:
            net = OracleNet()
            session = Session(net, large_objects=strategy, max_windows=max_windows)
            session.set_image(image)
            t0 = time.perf_counter()
            mask = session.add_point(click)
            seconds = time.perf_counter() - t0
            inter = int((mask & truth).sum())
            rows.append(
                {
                    "case": case.name,
                    "organ": meta["name"],
                    "extent_mm": [round(float(v)) for v in extent_mm],
                    "larger_than_crop": bool(extent_mm.max() > 192.0),
                    "strategy": strategy,
                    "dice": 2 * inter / (int(mask.sum()) + int(truth.sum())),
                    "windows": len(session.windows()),
                    "encoder_calls": net.encoder_calls,
                    "seconds": seconds,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", nargs="+", help="phantom folders (default: generate --seeds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[9001, 9002], help="phantoms to generate")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--max-windows", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in _cases(args, Path(tmp)):
            t0 = time.perf_counter()
            rows += run_oracle(case, tuple(args.strategies), args.max_windows)
            print(f"  {case.name}: {time.perf_counter() - t0:.0f} s", flush=True)

    summary = []
    for group, keep in (("organs larger than a crop", True), ("organs within a crop", False)):
        for strategy in args.strategies:
            sel = [r for r in rows if r["strategy"] == strategy and r["larger_than_crop"] == keep]
            if not sel:
                continue
            dice = np.array([r["dice"] for r in sel])
            summary.append(
                {
                    "group": group,
                    "strategy": strategy,
                    "n": len(sel),
                    "dice_mean": float(dice.mean()),
                    "dice_min": float(dice.min()),
                    "windows_mean": float(np.mean([r["windows"] for r in sel])),
                    "encoder_calls_mean": float(np.mean([r["encoder_calls"] for r in sel])),
                    "seconds_median": float(np.median([r["seconds"] for r in sel])),
                }
            )
    header = (
        f"{'organs':27s} {'strategy':12s} {'n':>3} {'Dice mean':>9} {'min':>6} {'windows':>7} "
        f"{'enc':>5} {'s':>6}"
    )
    print("\noracle network (perfect at its low-res grid), first click at the deepest voxel\n")
    print(header + "\n" + "-" * len(header))
    for s in summary:
        print(
            f"{s['group']:27s} {s['strategy']:12s} {s['n']:>3} {s['dice_mean']:9.3f} {s['dice_min']:6.3f} "
            f"{s['windows_mean']:7.1f} {s['encoder_calls_mean']:5.1f} {s['seconds_median']:6.2f}"
        )
    out = {
        "summary": summary,
        "rows": rows,
        "max_windows": args.max_windows,
        "machine": {"platform": platform.platform()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
