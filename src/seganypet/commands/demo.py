"""``seganypet demo``: a synthetic PET study segmented from simulated clicks with the default model.

Steps: make a phantom (``seganypet.phantoms``), open a :class:`seganypet.inference.Session` with the
model, segment one organ and one lesion from simulated clicks (click 1 at the object's deepest voxel,
later clicks at the deepest voxel of the largest error region, as the evaluation's ``center``
protocol), then write the image, the label map, the reference labels, the statistics
(``seganypet.quant``) and a JSON summary into the output folder, and print Dice per click and the times.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

HELP = "Segment an organ and a lesion of a synthetic PET study from simulated clicks (no data needed)."

logger = logging.getLogger("seganypet.demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--out", default="seganypet-demo", help="output folder (default ./seganypet-demo)"
    )
    parser.add_argument("--model", default="default", help="model: 'default' or a checkpoint path")
    parser.add_argument("--seed", type=int, default=7, help="phantom seed")
    parser.add_argument("--tracer", default="fdg", choices=["fdg", "psma"])
    parser.add_argument(
        "--organ",
        default="bladder",
        help="organ to segment (a label name of the phantom; default bladder, the organ the shipped model "
        "segments reliably on held-out phantoms: docs/model_card.md)",
    )
    parser.add_argument("--clicks", type=int, default=3, help="clicks per object")
    parser.add_argument(
        "--phantom",
        help="use this phantom folder (pet.nii.gz, labels.nii.gz, labels.json) instead of generating one",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--anatomy",
        default=None,
        help="phantom anatomy: a folder with organs.nii.gz and ct.nii.gz, or 'builtin' (default: the "
        "shared CT organ map when found, else the built-in parametric torso)",
    )


def _load_phantom(folder: Path) -> tuple[Any, np.ndarray, dict[int, dict[str, str]]]:
    from seganypet.errors import InputError
    from seganypet.io import read_pet

    for name in ("pet.nii.gz", "labels.nii.gz", "labels.json"):
        if not (folder / name).is_file():
            raise InputError(f"--phantom {folder}: {name} is missing.")
    pet = read_pet(folder / "pet.nii.gz")
    if pet.units == "unknown":
        pet.units = "SUVbw"
    import nibabel as nib

    labels = np.asarray(nib.load(str(folder / "labels.nii.gz")).dataobj).astype(np.int32)
    data = json.loads((folder / "labels.json").read_text())
    data = data.get("labels", data)
    info = {int(k): {"name": str(v["name"]), "kind": str(v.get("kind", "organ"))} for k, v in data.items()}
    return pet, labels, info


def _deepest(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), mask.shape))  # type: ignore[return-value]


def _pick_objects(
    labels: np.ndarray, info: dict[int, dict[str, str]], organ: str
) -> list[tuple[int, str, str]]:
    """(label, name, kind) of the organ asked for and of a mid-sized lesion (largest under 50 ml-ish)."""
    from seganypet.errors import InputError

    counts = np.bincount(labels.ravel(), minlength=max(info) + 1 if info else 1)
    present = {k: v for k, v in info.items() if k < len(counts) and counts[k] > 0}
    organs = [k for k, v in present.items() if v["kind"] == "organ" and v["name"] == organ]
    if not organs:
        names = sorted(v["name"] for v in present.values() if v["kind"] == "organ")
        raise InputError(f"--organ {organ!r} is not in the phantom; choose one of {', '.join(names)}.")
    out = [(organs[0], organ, "organ")]
    lesions = sorted((k for k, v in present.items() if v["kind"] == "lesion"), key=lambda k: -counts[k])
    if lesions:
        # the largest lesion that is not huge (a typical clickable lesion)
        median = int(np.median([counts[k] for k in lesions]))
        pick = next((k for k in lesions if counts[k] <= max(median * 4, 50)), lesions[0])
        out.append((pick, present[pick]["name"], "lesion"))
    return out


def run_demo(
    out: Path,
    model: Any = "default",
    seed: int = 7,
    tracer: str = "fdg",
    organ: str = "bladder",
    clicks: int = 3,
    phantom_dir: Path | None = None,
    device: str = "cpu",
    anatomy: str | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the summary written to ``out/demo.json``."""
    from seganypet.errors import InputError
    from seganypet.evaluation.clicks import next_click
    from seganypet.inference import Session
    from seganypet.io import write_image, write_label_map
    from seganypet.quant import compute_stats, write_stats
    from seganypet.utils import atomic_path

    if clicks < 1:
        raise InputError("--clicks must be at least 1.")
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if phantom_dir is not None:
        pet, labels, info = _load_phantom(Path(phantom_dir))
        source = str(phantom_dir)
    else:
        from seganypet.phantoms import make_phantom

        ph = make_phantom(seed, "torso", tracer, anatomy=anatomy)
        pet, labels, info = ph.pet, np.asarray(ph.labels).astype(np.int32), ph.label_info
        source = f"make_phantom({seed}, 'torso', {tracer!r}, anatomy={ph.info.get('anatomy_source')!r})"
    times["phantom_s"] = time.perf_counter() - t0
    objects = _pick_objects(labels, info, organ)
    t = time.perf_counter()
    session = Session(model, device=device)
    session.set_image(pet)
    times["model_load_s"] = time.perf_counter() - t
    results = []
    rng = np.random.default_rng(seed)
    for lab, name, kind in objects:
        ref = labels == lab
        session.new_object(name)
        pred = np.zeros_like(ref)
        dices, click_list, click_times = [], [], []
        for n in range(clicks):
            if n == 0:
                click: tuple[tuple[int, int, int], bool] | None = (_deepest(ref, pet.spacing), True)
            else:
                click = next_click(pred, ref, rng, "center", spacing=pet.spacing)
                if click is None:  # perfect already
                    dices.append(dices[-1])
                    continue
            tc = time.perf_counter()
            pred = session.add_point(click[0], positive=click[1])
            click_times.append(time.perf_counter() - tc)
            click_list.append({"ijk": list(click[0]), "positive": bool(click[1])})
            inter = np.logical_and(pred, ref).sum()
            dices.append(float(2 * inter / max(1, pred.sum() + ref.sum())))
        results.append(
            {
                "label": int(lab),
                "name": name,
                "kind": kind,
                "voxels": int(ref.sum()),
                "volume_ml": float(ref.sum() * pet.voxel_volume_ml),
                "dice_per_click": dices,
                "clicks": click_list,
                "click_s": click_times,
            }
        )
    t = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    label_map = session.label_map
    names = session.names
    write_image(pet, out / "pet.nii.gz")
    write_label_map(label_map, pet, out / "segmentation.nii.gz", names)
    ref_map = np.zeros(labels.shape, np.uint16)
    for i, (lab, _name, _) in enumerate(objects, start=1):
        ref_map[labels == lab] = i
    write_label_map(ref_map, pet, out / "reference.nii.gz", {i + 1: o[1] for i, o in enumerate(objects)})
    stats = compute_stats(pet, label_map, names)
    write_stats(stats, out / "stats.csv")
    write_stats(stats, out / "stats.json")
    times["write_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0
    model_meta = getattr(session.model, "metadata", {}) or {}
    summary = {
        "phantom": source,
        "model": str(model_meta.get("path", model if isinstance(model, str) else type(model).__name__)),
        "objects": results,
        "times_s": {k: round(v, 2) for k, v in times.items()},
        "files": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) + ["demo.json"],
    }
    with atomic_path(out / "demo.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def run(args: argparse.Namespace) -> int:
    s = run_demo(
        Path(args.out),
        model=args.model,
        seed=args.seed,
        tracer=args.tracer,
        organ=args.organ,
        clicks=args.clicks,
        phantom_dir=Path(args.phantom) if args.phantom else None,
        device=args.device,
        anatomy=args.anatomy,
    )
    print(f"seganypet demo: phantom {s['phantom']}, model {s['model']}")
    header = "  ".join(f"click {i + 1:d}" for i in range(len(s["objects"][0]["dice_per_click"])))
    print(f"{'object':<14} {'kind':<7} {'volume ml':>9}   Dice: {header}")
    for o in s["objects"]:
        d = "  ".join(f"{v:7.3f}" for v in o["dice_per_click"])
        print(f"{o['name']:<14} {o['kind']:<7} {o['volume_ml']:9.1f}         {d}")
    t = s["times_s"]
    per_click = [c for o in s["objects"] for c in o["click_s"]]
    print(
        f"times: phantom {t['phantom_s']:.1f} s, model + image {t['model_load_s']:.1f} s, "
        f"{np.mean(per_click):.2f} s per click, writing {t['write_s']:.1f} s, total {t['total_s']:.1f} s"
    )
    print(f"wrote {', '.join(s['files'])} to {args.out}")
    return 0
