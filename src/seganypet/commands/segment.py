"""``seganypet segment``: click-prompted segmentation of a PET image to NIfTI or DICOM SEG."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.errors import InputError, PromptError

HELP = "segment objects from clicks/boxes (NIfTI label map or DICOM SEG, optional statistics)"
logger = logging.getLogger("seganypet.commands.segment")

#: --model values that run a classical baseline instead of the network
BASELINES = {"threshold-41": "41pct", "threshold-2.5": "suv2.5", "percist": "percist"}


class _Ordered(argparse.Action):
    """Collect --point / --point-mm / --box in the order given on the command line."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        items = list(getattr(namespace, "cli_prompts", None) or [])
        items.append((self.dest, values))
        namespace.cli_prompts = items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i", "--input", required=True, help="PET image: NIfTI, MHA/NRRD, DICOM folder or .zip"
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="output .nii.gz label map, or a .dcm file / folder for DICOM SEG",
    )
    parser.add_argument(
        "--point",
        dest="point",
        action=_Ordered,
        metavar="I,J,K[,neg]",
        help="a click at voxel (i, j, k) of the input; append ',neg' for a negative click (repeatable)",
    )
    parser.add_argument(
        "--point-mm",
        dest="point_mm",
        action=_Ordered,
        metavar="X,Y,Z[,neg]",
        help="a click in RAS millimetres (repeatable); write --point-mm=X,Y,Z when X is negative",
    )
    parser.add_argument(
        "--box",
        dest="box",
        action=_Ordered,
        metavar="I0,J0,K0,I1,J1,K1",
        help="a box by two opposite corner voxels (models trained with boxes only)",
    )
    parser.add_argument(
        "--prompts", help="JSON file listing objects with their clicks/boxes (docs/session.md)"
    )
    parser.add_argument(
        "--name", default=None, help="name of the object given by --point/--box (default 'object N')"
    )
    parser.add_argument(
        "--model",
        default="default",
        help="'default', a checkpoint path, or a baseline: threshold-41, threshold-2.5, percist",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    parser.add_argument(
        "--output-type",
        choices=("nifti", "dicom-seg"),
        default=None,
        help="default: nifti for .nii/.nii.gz outputs, dicom-seg otherwise",
    )
    parser.add_argument(
        "--overlap",
        choices=("keep", "replace"),
        default="keep",
        help="where objects meet: the earlier object keeps its voxels (keep) or the later takes them",
    )
    parser.add_argument(
        "--max-windows",
        type=int,
        default=8,
        help="crops per object at most; objects touching a crop face extend into new crops (1: never)",
    )
    parser.add_argument(
        "--large-objects",
        choices=("extend", "zoom", "zoom-coarse", "none"),
        default="extend",
        help="objects larger than one crop: more full-resolution crops along the touched faces "
        "(extend, default), a zoomed-out 3 mm pass then refinement (zoom), the zoomed-out pass only "
        "(zoom-coarse), or nothing (none)",
    )
    parser.add_argument("--stats", default=None, help="also write per-object statistics (.csv or .json)")
    parser.add_argument(
        "--trust-checkpoint", action="store_true", help="allow full pickle loading of a checkpoint you trust"
    )
    parser.set_defaults(cli_prompts=[])


def _parse_cli_prompt(kind: str, text: str):
    from seganypet.inference.prompts import Prompt

    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    positive = True
    if kind in ("point", "point_mm") and len(parts) == 4:
        flag = parts.pop().lower()
        if flag in ("neg", "negative", "-", "0", "n"):
            positive = False
        elif flag not in ("pos", "positive", "+", "1", "p"):
            raise PromptError(f"--{kind.replace('_', '-')} {text!r}: the 4th field must be 'neg' or 'pos'.")
    n = 6 if kind == "box" else 3
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != n or not all(np.isfinite(values)):
        fmt = (
            "I0,J0,K0,I1,J1,K1" if kind == "box" else ("X,Y,Z[,neg]" if kind == "point_mm" else "I,J,K[,neg]")
        )
        raise PromptError(f"--{kind.replace('_', '-')} {text!r} is malformed; expected {fmt}.")
    return Prompt(kind, values, positive)


def _gather(args: argparse.Namespace):
    from seganypet.inference.prompts import ObjectPrompts, load_prompts

    objects = load_prompts(args.prompts) if args.prompts else []
    cli = [_parse_cli_prompt(kind, text) for kind, text in args.cli_prompts]
    if cli:
        if cli[0].kind != "box" and not cli[0].positive:
            raise PromptError("The first --point of an object must be positive.")
        objects.append(ObjectPrompts(args.name, cli))
    if not objects:
        raise PromptError("Give at least one --point, --point-mm, --box or a --prompts file.")
    return objects


def _output_type(args: argparse.Namespace) -> str:
    if args.output_type:
        return args.output_type
    name = str(args.output).lower()
    return "nifti" if name.endswith((".nii", ".nii.gz")) else "dicom-seg"


def _run_baseline(image: Any, objects: list, method: str) -> tuple[np.ndarray, dict[int, str], list[float]]:
    from seganypet.evaluation.baselines import segment_at_click

    if method == "percist":
        raise InputError(
            "--model percist needs a liver mask, which the segment command cannot provide; "
            "use threshold-41 or threshold-2.5."
        )
    label_map = np.zeros(image.shape, np.uint16)
    names, times = {}, []
    for n, obj in enumerate(objects, 1):
        t0 = time.perf_counter()
        clicks = []
        for p in obj.prompts:
            if p.kind == "box":
                raise PromptError("Baseline methods take clicks only, not boxes.")
            ijk = p.coords if p.kind == "point" else tuple(image.mm_to_ijk(p.coords))
            vox = np.floor(np.asarray(ijk, float) + 0.5).astype(int)
            if np.any(vox < 0) or np.any(vox >= np.asarray(image.shape)):
                raise PromptError(
                    f"Point {tuple(float(v) for v in ijk)} lies outside the image of shape {image.shape}."
                )
            clicks.append((tuple(int(v) for v in vox), p.positive))
        mask = segment_at_click(image.array, image.spacing, clicks, method=method)
        label_map[mask & (label_map == 0)] = n
        names[n] = obj.name or f"object {n}"
        times.append(time.perf_counter() - t0)
    return label_map, names, times


def segment_image(
    image: Any,
    objects: list,
    model: Any = "default",
    device: str = "cpu",
    overlap: str = "keep",
    trust_checkpoint: bool = False,
    max_windows: int = 8,
    large_objects: str = "extend",
) -> tuple[np.ndarray, dict[int, str], list[float]]:
    """Segment ``objects`` (:class:`~seganypet.inference.prompts.ObjectPrompts`) on ``image``.

    Returns ``(label_map uint16 (I, J, K), names {label: name}, seconds per object)``.
    """
    from seganypet.inference import Session
    from seganypet.inference.engine import resolve_device
    from seganypet.inference.prompts import apply_prompt
    from seganypet.utils import progress

    if isinstance(model, str) and model in BASELINES:
        return _run_baseline(image, objects, BASELINES[model])
    dev = resolve_device(device)
    if isinstance(model, str):
        from seganypet.build import load_model

        model = load_model(model, device=str(dev), trust_checkpoint=trust_checkpoint)
    if max_windows < 1:
        raise InputError(f"--max-windows must be at least 1, got {max_windows}.")
    session = Session(model, dev, overlap=overlap, max_windows=max_windows, large_objects=large_objects)
    session.set_image(image)
    times = []
    for obj in progress(objects, desc="objects", unit="object"):
        t0 = time.perf_counter()
        session.new_object(obj.name)
        for p in obj.prompts:
            apply_prompt(session, p)
        times.append(time.perf_counter() - t0)
    return session.label_map, session.names, times


def run(args: argparse.Namespace) -> int:
    from seganypet.io import read_pet, write_dicom_seg, write_label_map

    objects = _gather(args)
    out_type = _output_type(args)
    if args.stats and not str(args.stats).lower().endswith((".csv", ".json")):
        raise InputError(f"--stats {args.stats}: use a .csv or .json file name.")
    image = read_pet(args.input)
    if out_type == "dicom-seg" and not image.source_datasets:
        raise InputError(
            f"DICOM SEG output needs a DICOM input; {args.input} is not DICOM, so write a .nii.gz instead."
        )
    label_map, names, times = segment_image(
        image,
        objects,
        args.model,
        args.device,
        args.overlap,
        args.trust_checkpoint,
        args.max_windows,
        args.large_objects,
    )
    if out_type == "nifti":
        out = write_label_map(label_map, image, args.output, names)
    else:
        target = Path(args.output)
        if target.suffix.lower() != ".dcm":
            target = target / "segmentation.dcm"
        out = write_dicom_seg(label_map, image, target, names)
    stats = None
    if args.stats:
        from seganypet.quant import compute_stats, write_stats

        stats = compute_stats(image, label_map, names)
        write_stats(stats, args.stats)
    units = image.units
    for (label, name), seconds in zip(names.items(), times):
        mask = label_map == label
        voxels = int(mask.sum())
        vmax = float(image.array[mask].max()) if voxels else float("nan")
        print(
            f"{label:>3} {name}: {voxels} voxels, {voxels * image.voxel_volume_ml:.2f} mL, "
            f"{'SUVmax' if image.is_suv else 'max'} {vmax:.2f} {units if not image.is_suv else ''}".rstrip()
            + f", {seconds:.2f} s"
        )
    print(f"wrote {out}" + (f" and {args.stats}" if stats is not None else ""))
    return 0
